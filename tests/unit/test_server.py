"""The OpenAI-compatible app, in process (FastAPI's TestClient, httpx's ASGI transport)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from pydantic import PrivateAttr

from avengers_graph import ChatAvengers, ClusterStore
from avengers_graph.app.serve import ServeSettings, check_binding, create_app
from avengers_graph.errors import InvalidInputError
from tests.fakes import KeywordEmbeddings, ScriptedExpert, constant

KEY = "unit-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
MATH = [{"role": "user", "content": "a math problem: what is 6 * 7?"}]


class TokenExpert(ScriptedExpert):
    """Streams its reply word by word (a real model's token stream)."""

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        text = self._reply(messages, stop, kwargs).generations[0].message.text
        for word in text.split(" "):
            yield ChatGenerationChunk(message=AIMessageChunk(content=word + " "))


class HeldExpert(ScriptedExpert):
    """Answers once ``release`` is set (a request in flight, without timing)."""

    _release: threading.Event = PrivateAttr(default_factory=threading.Event)
    _started: threading.Event = PrivateAttr(default_factory=threading.Event)

    @property
    def release(self) -> threading.Event:
        return self._release

    @property
    def started(self) -> threading.Event:
        return self._started

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self._started.set()
        for _ in range(3000):
            if self._release.is_set():
                break
            await asyncio.sleep(0.01)
        return self._reply(messages, stop, kwargs)


@pytest.fixture
def experts() -> dict[str, ScriptedExpert]:
    return {
        "mathy": TokenExpert(model="mathy", respond=constant("So the result is \\boxed{42}.")),
        "coder": TokenExpert(model="coder", respond=constant("I get \\boxed{41}.")),
        "bard": TokenExpert(model="bard", respond=constant("Clearly \\boxed{42}")),
    }


@pytest.fixture
def llm(
    store: ClusterStore, embeddings: KeywordEmbeddings, experts: dict[str, Any]
) -> ChatAvengers:
    return ChatAvengers(
        experts=experts, embeddings=embeddings, store=store, top_n=2, samples=2, seed=3
    )


def client(llm: ChatAvengers, **settings: Any) -> TestClient:
    return TestClient(create_app(llm, ServeSettings(api_keys=(KEY,), **settings)))


@pytest.fixture
def api(llm: ChatAvengers) -> Iterator[TestClient]:
    with client(llm) as test_client:
        yield test_client


def ask(api: TestClient, **body: Any) -> httpx.Response:
    return api.post(
        "/v1/chat/completions", headers=AUTH, json={"model": "avengers", "messages": MATH, **body}
    )


def events(response: httpx.Response) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """The data events (JSON), the comment lines and the raw data lines of an SSE body."""
    data, comments, raw = [], [], []
    for line in response.text.splitlines():
        if line.startswith("data: "):
            raw.append(line[6:])
            if line[6:] != "[DONE]":
                data.append(json.loads(line[6:]))
        elif line.startswith(":"):
            comments.append(line[1:].strip())
    return data, comments, raw


def test_models_lists_the_ensemble_then_its_experts(api: TestClient) -> None:
    listed = api.get("/v1/models", headers=AUTH).json()
    assert [m["id"] for m in listed["data"]] == ["avengers", "mathy", "coder", "bard"]
    assert api.get("/v1/models/coder", headers=AUTH).json()["id"] == "coder"
    missing = api.get("/v1/models/gpt-4", headers=AUTH)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"


def test_a_completion_has_the_answer_usage_and_routing_record(
    api: TestClient, llm: ChatAvengers
) -> None:
    response = ask(api)
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "So the result is \\boxed{42}.",
    }
    assert body["choices"][0]["finish_reason"] == "stop"
    record = body["avengers"]
    assert [e["name"] for e in record["experts"]] == ["mathy", "bard"]
    assert record["votes"] == {"42": 4}
    assert record["confidence"] == 1.0
    assert record["clusters"][0]["id"] == 0
    assert "text" not in record["samples"][0]
    # usage sums every expert call: the same as the chat model's own answer
    expected = llm.invoke(MATH[0]["content"]).usage_metadata
    assert expected is not None
    assert body["usage"] == {
        "prompt_tokens": expected["input_tokens"],
        "completion_tokens": expected["output_tokens"],
        "total_tokens": expected["total_tokens"],
    }


def test_request_options_reach_the_experts(api: TestClient, experts: dict[str, Any]) -> None:
    response = ask(api, temperature=0.2, max_tokens=50, stop="STOP", seed=7, top_p=0.9)
    assert response.status_code == 200
    seen = experts["mathy"].seen
    assert {call["temperature"] for call in seen} == {0.2}
    assert {call["stop"][0] for call in seen} == {"STOP"}
    assert all(call["max_tokens"] <= 50 for call in seen)
    assert sorted(call["seed"] for call in seen) == [7, 8]  # seed + rank * samples + index
    assert response.json()["avengers"]["seed"] == 7


def test_a_stream_shows_progress_then_only_the_voted_answer(api: TestClient) -> None:
    response = ask(api, stream=True, stream_options={"include_usage": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    data, comments, raw = events(response)
    assert raw[-1] == "[DONE]"
    assert data[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    contents = [c["choices"][0]["delta"].get("content") for c in data if c["choices"]]
    # the experts stream word by word, but only the voted answer reaches the client
    assert [c for c in contents if c] == ["So the result is \\boxed{42}."]
    final = next(c for c in data if c["choices"] and c["choices"][0]["finish_reason"])
    assert final["choices"][0]["finish_reason"] == "stop"
    assert final["avengers"]["votes"]
    assert data[-1]["choices"] == []
    assert data[-1]["usage"]["total_tokens"] > 0
    progress = [json.loads(c) for c in comments]
    assert progress[0]["avengers"] == "routing"
    assert {p["avengers"] for p in progress} == {"routing", "sample", "vote"}
    assert all("text" not in p for p in progress)
    assert len({c["id"] for c in data}) == 1


def test_tools_and_tool_choice_give_voted_tool_calls(
    store: ClusterStore, embeddings: KeywordEmbeddings
) -> None:
    def call(messages: Any, tools: Any, seed: int | None) -> list[dict[str, Any]]:
        return [{"name": tools[0]["function"]["name"], "args": {"city": "Paris"}}]

    experts = {name: ScriptedExpert(model=name, call_tools=call) for name in ("mathy", "bard")}
    llm = ChatAvengers(experts=experts, embeddings=embeddings, store=store, top_n=2, samples=2)
    tool = {
        "type": "function",
        "function": {
            "name": "weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    with client(llm) as api:
        response = ask(
            api, tools=[tool], tool_choice={"type": "function", "function": {"name": "weather"}}
        )
        streamed = ask(api, tools=[tool], tool_choice="required", stream=True)
    body = response.json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    [call_out] = choice["message"]["tool_calls"]
    assert call_out["type"] == "function"
    assert call_out["function"]["name"] == "weather"
    assert json.loads(call_out["function"]["arguments"]) == {"city": "Paris"}
    assert body["avengers"]["answer_format"] == "tool_calls"
    assert experts["mathy"].seen[0]["tool_choice"] == "weather"
    data, _, _ = events(streamed)
    deltas = [c["choices"][0]["delta"] for c in data if c["choices"]]
    [calls] = [d["tool_calls"] for d in deltas if "tool_calls" in d]
    assert calls[0]["function"]["name"] == "weather"
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}


def test_json_schema_answers_vote_on_objects(
    store: ClusterStore, embeddings: KeywordEmbeddings
) -> None:
    experts = {
        "mathy": ScriptedExpert(respond=constant('{"answer": 42}')),
        "bard": ScriptedExpert(respond=constant('{"answer": 42}')),
    }
    llm = ChatAvengers(experts=experts, embeddings=embeddings, store=store, top_n=2, samples=1)
    schema = {
        "type": "json_schema",
        "json_schema": {
            "name": "result",
            "schema": {"type": "object", "properties": {"answer": {"type": "integer"}}},
        },
    }
    with client(llm) as api:
        response = ask(api, response_format=schema)
    body = response.json()
    assert json.loads(body["choices"][0]["message"]["content"]) == {"answer": 42}
    assert body["avengers"]["answer_format"] == "json"
    assert experts["mathy"].seen[0]["response_format"] == schema


def test_every_route_but_health_needs_a_valid_key(api: TestClient) -> None:
    assert api.get("/health").status_code == 200
    for method, path in [
        ("GET", "/v1/models"),
        ("GET", "/metrics"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/feedback"),
        ("GET", "/nowhere"),
    ]:
        for headers in [
            {},
            {"Authorization": "Bearer wrong-key-0123456789"},
            {"Authorization": KEY},
        ]:
            response = api.request(method, path, headers=headers)
            assert response.status_code == 401, (path, headers)
            assert response.headers["www-authenticate"] == "Bearer"
            assert response.json()["error"]["type"] == "authentication_error"
            assert KEY not in response.text
    assert api.get("/nowhere", headers=AUTH).status_code == 404


def test_without_keys_only_loopback_may_serve() -> None:
    open_settings = ServeSettings()
    check_binding("127.0.0.1", open_settings)
    check_binding("::1", open_settings)
    check_binding("localhost", open_settings)
    for host in ("0.0.0.0", "192.0.2.10", "example.org", "::"):  # noqa: S104 - refused here
        with pytest.raises(InvalidInputError, match="without an API key"):
            check_binding(host, open_settings)
    check_binding("0.0.0.0", ServeSettings(api_keys=(KEY,)))  # noqa: S104 - a key is set


def test_keys_come_from_the_environment_and_a_file(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("# team keys\nfile-key-0123456789abcdef\n\n")
    settings = ServeSettings.from_env(
        {"AVENGERS_API_KEYS": f"{KEY}, env-key-0123456789abcdef"}, keys_file=key_file
    )
    assert settings.secrets() == [KEY, "env-key-0123456789abcdef", "file-key-0123456789abcdef"]
    assert KEY not in repr(settings)
    with pytest.raises(InvalidInputError, match="shorter than 16") as refused:
        ServeSettings.from_env({"AVENGERS_API_KEYS": "tiny-key"})
    assert "tiny-key" not in str(refused.value)
    with pytest.raises(InvalidInputError, match="Cannot read"):
        ServeSettings.from_env({"AVENGERS_API_KEYS_FILE": str(tmp_path / "missing")})


def test_an_oversize_body_is_413(llm: ChatAvengers, experts: dict[str, Any]) -> None:
    with client(llm, max_body_bytes=2048) as api:
        big = [{"role": "user", "content": "math " * 1000}]
        response = api.post(
            "/v1/chat/completions", headers=AUTH, json={"model": "avengers", "messages": big}
        )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert experts["mathy"].calls == 0


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"model": "avengers", "messages": []}, 400, "messages"),
        ({"model": "avengers", "messages": MATH, "n": 2}, 400, "n:"),
        ({"model": "avengers", "messages": MATH, "temperature": 3}, 400, "temperature"),
        ({"model": "avengers", "messages": MATH, "logprobs": True}, 400, "logprobs"),
        ({"model": "gpt-4", "messages": MATH}, 404, "does not exist"),
        ({"model": "avengers", "messages": MATH, "tool_choice": "sometimes"}, 400, "tool_choice"),
        (
            {"model": "avengers", "messages": MATH, "response_format": {"type": "xml"}},
            400,
            "response_format",
        ),
        (
            {
                "model": "avengers",
                "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
            },
            400,
            "only text",
        ),
        (
            {"model": "avengers", "messages": [{"role": "tool", "content": "x"}]},
            400,
            "tool_call_id",
        ),
        ({"model": "avengers", "messages": MATH * 300}, 400, "at most 256"),
    ],
)
def test_bad_requests_get_openai_errors(
    api: TestClient, body: dict[str, Any], status: int, fragment: str
) -> None:
    response = api.post("/v1/chat/completions", headers=AUTH, json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert fragment in error["message"]
    assert set(error) == {"message", "type", "param", "code"}


def test_a_body_that_is_not_json_is_400(api: TestClient) -> None:
    response = api.post("/v1/chat/completions", headers=AUTH, content=b"{not json")
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]["message"]


async def test_requests_beyond_the_concurrency_limit_get_429(
    store: ClusterStore, embeddings: KeywordEmbeddings
) -> None:
    held = HeldExpert(respond=constant("\\boxed{1}"))
    llm = ChatAvengers(experts={"held": held}, embeddings=embeddings, store=store, samples=1)
    app = create_app(llm, ServeSettings(api_keys=(KEY,), max_concurrency=1, retry_after=3))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        body = {"model": "avengers", "messages": MATH}
        first = asyncio.ensure_future(http.post("/v1/chat/completions", headers=AUTH, json=body))
        for _ in range(500):
            if held.started.is_set():
                break
            await asyncio.sleep(0.01)
        assert held.started.is_set()
        refused = await http.post("/v1/chat/completions", headers=AUTH, json=body)
        held.release.set()
        answered = await first
        after = await http.post("/v1/chat/completions", headers=AUTH, json=body)
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "3"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert answered.status_code == 200
    assert after.status_code == 200  # the slot was given back


def test_a_request_past_its_timeout_is_504(
    store: ClusterStore, embeddings: KeywordEmbeddings
) -> None:
    held = HeldExpert(respond=constant("\\boxed{1}"))
    llm = ChatAvengers(experts={"held": held}, embeddings=embeddings, store=store, samples=1)
    with client(llm, timeout=0.2) as api:
        response = ask(api)
        streamed = ask(api, stream=True)
    held.release.set()
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "timeout"
    data, _, raw = events(streamed)
    assert data[-1]["error"]["code"] == "timeout"
    assert raw[-1] == "[DONE]"


def test_failures_are_502_with_secrets_redacted(
    store: ClusterStore, embeddings: KeywordEmbeddings
) -> None:
    leaked = "sk-proj-abcdefghijklmnopqrstuvwxyz012345"

    def refuse() -> Exception:
        return PermissionError(f"upstream said: bad key {leaked}")

    experts = {"mathy": ScriptedExpert(always_fail=True, fail_with=refuse)}
    llm = ChatAvengers(experts=experts, embeddings=embeddings, store=store, samples=1)
    with client(llm) as api:
        response = ask(api)
        streamed = ask(api, stream=True)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "all_experts_failed"
    assert leaked not in response.text
    assert "***" in response.json()["error"]["message"]
    data, _, raw = events(streamed)
    assert data[-1]["error"]["code"] == "all_experts_failed"
    assert leaked not in streamed.text
    assert raw[-1] == "[DONE]"


def test_naming_an_expert_streams_its_own_tokens(api: TestClient, experts: dict[str, Any]) -> None:
    response = api.post(
        "/v1/chat/completions",
        headers=AUTH,
        json={"model": "coder", "messages": MATH, "stream": True},
    )
    data, comments, _ = events(response)
    contents = [c["choices"][0]["delta"].get("content") for c in data if c["choices"]]
    assert "".join(c for c in contents if c).strip() == "I get \\boxed{41}."
    assert len([c for c in contents if c]) == 3  # word by word
    assert comments == []
    assert data[-1]["avengers"] == {"expert": "coder"}
    plain = api.post(
        "/v1/chat/completions", headers=AUTH, json={"model": "coder", "messages": MATH}
    ).json()
    assert plain["choices"][0]["message"]["content"].strip() == "I get \\boxed{41}."
    assert experts["mathy"].calls == 0


def test_feedback_through_the_api(api: TestClient, store: ClusterStore) -> None:
    completion = ask(api).json()
    verdict = {"id": completion["id"], "correct": False}
    first = api.post("/v1/feedback", headers=AUTH, json=verdict)
    assert first.status_code == 200
    assert first.json()["duplicate"] is False
    assert first.json()["clusters"] == [0]
    assert first.json()["updated"]["0"]["mathy"]["total"] == 11
    assert store.stats()[0]["mathy"].total == 11
    again = api.post("/v1/feedback", headers=AUTH, json=verdict)
    assert again.json()["duplicate"] is True
    assert store.stats()[0]["mathy"].total == 11
    conflict = api.post("/v1/feedback", headers=AUTH, json={**verdict, "correct": True})
    assert conflict.status_code == 409
    unknown = api.post("/v1/feedback", headers=AUTH, json={"id": "chatcmpl-0", "correct": True})
    assert unknown.status_code == 404
    bad = api.post("/v1/feedback", headers=AUTH, json={"id": completion["id"]})
    assert bad.status_code == 400


def test_metrics_count_requests_expert_calls_and_votes(api: TestClient) -> None:
    ask(api)
    ask(api, stream=True)
    api.get("/v1/models")  # refused: no key
    text = api.get("/metrics", headers=AUTH).text
    assert 'avengers_requests_total{route="/v1/chat/completions",status="200"} 2.0' in text
    assert 'avengers_requests_total{route="/v1/models",status="401"} 1.0' in text
    assert 'avengers_expert_calls_total{expert="mathy",status="ok"} 4.0' in text
    assert 'avengers_votes_total{early="false"} 2.0' in text
    assert 'avengers_time_to_first_token_seconds_count{target="ensemble"} 1.0' in text
    assert "avengers_requests_in_flight 0.0" in text
    assert KEY not in text
