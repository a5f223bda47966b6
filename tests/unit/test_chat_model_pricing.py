"""ChatAvengers by LangChain's conventions: token counts that count, models that can be priced."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.messages.utils import trim_messages
from langchain_core.tracers.run_collector import RunCollectorCallbackHandler

from avengers_graph import ChatAvengers, Expert
from avengers_graph.experts.openai_compatible import ChatOpenAICompatible
from avengers_graph.experts.tokens import TokenCounter, estimate_message_tokens
from tests.fakes import ScriptedExpert

QUESTION = "a math problem: what is 6 * 7?"


@pytest.fixture
def llm(experts, embeddings, store) -> ChatAvengers:
    return ChatAvengers(
        experts=experts, embeddings=embeddings, store=store, top_n=2, samples=2, seed=3
    )


# -- pricing ------------------------------------------------------------------------------


def test_response_metadata_names_the_expert_models_that_answered(llm: ChatAvengers) -> None:
    message = llm.invoke(QUESTION)
    assert message.response_metadata["model_name"] == "avengers"
    by_model = message.response_metadata["expert_models"]
    selected = {e["name"] for e in message.response_metadata["avengers"]["experts"]}
    assert set(by_model) == {f"{name}-7b" for name in selected}
    assert sum(entry["calls"] for entry in by_model.values()) == 4
    assert message.usage_metadata is not None
    for key in ("input_tokens", "output_tokens", "total_tokens"):  # the split adds up
        assert sum(entry[key] for entry in by_model.values()) == message.usage_metadata[key]


async def test_async_calls_name_their_expert_models_too(llm: ChatAvengers) -> None:
    message = await llm.ainvoke(QUESTION)
    assert sum(e["calls"] for e in message.response_metadata["expert_models"].values()) == 4


def test_streamed_answers_name_their_expert_models_too(llm: ChatAvengers) -> None:
    chunks = list(llm.stream(QUESTION, early_stop=False))
    by_model = chunks[-1].response_metadata["expert_models"]
    assert sum(entry["calls"] for entry in by_model.values()) == 4


async def test_async_streams_name_their_expert_models_too(llm: ChatAvengers) -> None:
    chunks = [chunk async for chunk in llm.astream(QUESTION, early_stop=False)]
    by_model = chunks[-1].response_metadata["expert_models"]
    assert sum(entry["calls"] for entry in by_model.values()) == 4


def test_ls_params_name_the_pool_models_and_the_nested_runs_are_priced(
    llm: ChatAvengers,
) -> None:
    assert llm._get_ls_params()["ls_expert_models"] == ["mathy-7b", "coder-7b", "bard-7b"]  # type: ignore[typeddict-item]
    collector = RunCollectorCallbackHandler()
    llm.invoke(QUESTION, config={"callbacks": [collector]})
    root = collector.traced_runs[0]
    assert root.extra["metadata"]["ls_model_name"] == "avengers"

    def walk(run: Any) -> list[Any]:
        return [run, *(r for child in run.child_runs for r in walk(child))]

    experts = [r for r in walk(root) if r.name == "ScriptedExpert"]
    assert len(experts) == 4
    for run in experts:  # each expert call carries its own model and usage: priceable
        assert run.extra["metadata"]["ls_model_name"] in {"mathy-7b", "coder-7b", "bard-7b"}
        message = run.outputs["generations"][0][0]["message"]["kwargs"]
        assert message["usage_metadata"]["total_tokens"] > 0


def test_expert_models_of_strategy_experts_are_listed_once(embeddings, store) -> None:
    model = ScriptedExpert(model="qwen")
    llm = ChatAvengers(
        experts={"mathy": Expert(model, "direct"), "coder": Expert(model, "reason")},
        embeddings=embeddings,
        store=store,
    )
    assert llm.expert_models() == ["qwen"]


# -- token counts -------------------------------------------------------------------------


def test_token_counts_estimate_without_a_tokenizer(llm: ChatAvengers) -> None:
    assert llm.get_num_tokens("") == 0
    assert llm.get_num_tokens("x" * 40) == 10
    messages = [SystemMessage("Be brief."), HumanMessage("What is 6 * 7?")]
    assert llm.get_num_tokens_from_messages(messages) == estimate_message_tokens(messages)
    assert llm.get_num_tokens_from_messages(messages) > llm.get_num_tokens("What is 6 * 7?")


def test_trim_messages_trims_with_the_ensemble_as_counter(llm: ChatAvengers) -> None:
    history = [
        HumanMessage("word " * 200),
        AIMessage("reply " * 200),
        HumanMessage("and now a short follow-up?"),
    ]
    kept = trim_messages(history, token_counter=llm, max_tokens=50, strategy="last")
    assert kept == [history[-1]]


class FakeLlamaServer:
    """``/apply-template`` and ``/tokenize`` of llama.cpp, one token per word."""

    def __init__(self, root: str, *, missing: bool = False) -> None:
        self.root = root
        self.missing = missing
        self.requests: list[str] = []

    def post(self, url: str, *, json: dict[str, Any], **kwargs: Any) -> httpx.Response:
        del kwargs
        self.requests.append(url)
        request = httpx.Request("POST", url)
        if self.missing:
            return httpx.Response(404, request=request)
        if url.endswith("/apply-template"):
            prompt = " ".join(f"<|{m['role']}|> {m['content']} <|end|>" for m in json["messages"])
            return httpx.Response(200, json={"prompt": prompt}, request=request)
        return httpx.Response(200, json={"tokens": json["content"].split()}, request=request)


@pytest.fixture
def fake_servers(monkeypatch: pytest.MonkeyPatch) -> dict[str, FakeLlamaServer]:
    """``httpx.post`` answered by a llama.cpp look-alike on :1 and a server without it on :2."""
    servers = {
        "http://127.0.0.1:1": FakeLlamaServer("http://127.0.0.1:1"),
        "http://127.0.0.1:2": FakeLlamaServer("http://127.0.0.1:2", missing=True),
    }

    def post(url: str, **kwargs: Any) -> httpx.Response:
        return servers[url.rsplit("/", 1)[0]].post(url, **kwargs)

    monkeypatch.setattr(httpx, "post", post)
    return servers


def client(port: int, model: str = "m") -> ChatOpenAICompatible:
    return ChatOpenAICompatible(
        model=model, base_url=f"http://127.0.0.1:{port}/v1", api_key="EMPTY"
    )


ELEVEN = [HumanMessage("one two three four five six seven eight nine ten eleven")]


def test_token_counts_come_from_the_llama_servers_tokenizer(
    fake_servers: dict[str, FakeLlamaServer],
) -> None:
    near = client(1)
    counter = TokenCounter([near, Expert(near, "direct").model])
    assert counter.count_text("one two three") == 3
    assert counter.count_messages(ELEVEN) == 13  # the template's two tokens included
    assert fake_servers["http://127.0.0.1:1"].requests == [
        "http://127.0.0.1:1/tokenize",  # one client, asked once per count
        "http://127.0.0.1:1/apply-template",
        "http://127.0.0.1:1/tokenize",
    ]


def test_a_server_without_a_tokenizer_counts_the_estimate_and_is_not_asked_again(
    fake_servers: dict[str, FakeLlamaServer],
) -> None:
    counter = TokenCounter([client(1), client(2)])
    assert counter.count_messages(ELEVEN) == max(13, estimate_message_tokens(ELEVEN))
    assert counter.count_text("one two three") == 4  # 13 characters estimated beat 3 words
    assert fake_servers["http://127.0.0.1:2"].requests == ["http://127.0.0.1:2/apply-template"]


def test_a_server_that_does_not_answer_is_estimated_for_that_count_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []

    def refused(url: str, **kwargs: Any) -> httpx.Response:
        calls.append(url)
        raise httpx.ConnectError("refused")

    monkeypatch.setattr(httpx, "post", refused)
    counter = TokenCounter([client(9)])
    assert counter.count_text("x" * 8) == 2
    assert counter.count_text("x" * 8) == 2
    assert len(calls) == 2  # asked again: it may be up by then
