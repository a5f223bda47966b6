"""One retry layer and one timeout mechanism for expert calls.

OpenAI experts are real ``langchain_openai.ChatOpenAI`` models over an
``httpx.MockTransport`` (no socket): the openai SDK's own retry loop runs for real,
and the mock counts the HTTP requests it makes. Stuck experts are held on an event
that the test releases, so whether a call waits is a matter of logic, not timing.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.outputs import ChatResult
from langchain_openai import ChatOpenAI
from langgraph.types import RetryPolicy
from pydantic import PrivateAttr

from avengers_graph import AllExpertsFailedError, ChatAvengers, create_avengers_graph
from avengers_graph.app.config import ExpertConfig
from avengers_graph.experts.calls import request_timeout, retry_free
from avengers_graph.graph import is_transient_error
from tests.fakes import ScriptedExpert, constant

QUESTION = "a math problem: what is 6 * 7?"
MATH = {"messages": [HumanMessage(QUESTION)]}
NO_WAIT = RetryPolicy(
    max_attempts=11, initial_interval=0.0, jitter=False, retry_on=is_transient_error
)
"""The default policy's ceiling without its backoff (the run's max_retries still decides)."""
_HOLD_S = 30.0
"""Longest a held expert waits for its release (every wait in a test is bounded)."""


def _completion(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


class Endpoint:
    """A scripted OpenAI-compatible endpoint behind ``httpx.MockTransport``."""

    def __init__(self, respond: Callable[[httpx.Request], httpx.Response]) -> None:
        self.respond = respond
        self.requests: list[httpx.Request] = []
        self._lock = threading.Lock()

    def handle(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.requests.append(request)
        return self.respond(request)

    def expert(self, **kwargs: Any) -> ChatOpenAI:
        """A real ChatOpenAI (SDK default: 2 retries of its own) talking to this endpoint."""
        return ChatOpenAI(
            model="m",
            api_key="EMPTY",  # type: ignore[arg-type]
            base_url="http://expert.invalid/v1",
            http_client=httpx.Client(transport=httpx.MockTransport(self.handle)),
            http_async_client=httpx.AsyncClient(transport=httpx.MockTransport(self.handle)),
            **kwargs,
        )


def _unavailable(request: httpx.Request) -> httpx.Response:
    del request
    return httpx.Response(503, json={"error": {"message": "busy", "type": "server_error"}})


def _answer(request: httpx.Request) -> httpx.Response:
    del request
    return httpx.Response(200, json=_completion("\\boxed{42}"))


def _read_timeout(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out", request=request)


def _pool(expert: Any) -> dict[str, Any]:
    return {"mathy": expert, "coder": expert, "bard": expert}


def _other_threads() -> set[threading.Thread]:
    return set(threading.enumerate())


# retry-free twins -----------------------------------------------------------------------
def test_an_openai_expert_gets_a_retry_free_twin_and_keeps_its_own_retries() -> None:
    expert = Endpoint(_answer).expert()
    twin = retry_free(expert)
    assert type(twin) is type(expert)
    assert twin is not expert
    assert twin.root_client.max_retries == 0
    assert twin.root_async_client.max_retries == 0
    assert twin.client is not expert.client
    assert twin.max_retries == 0
    assert expert.root_client.max_retries == 2  # the user's object is untouched
    assert expert.root_async_client.max_retries == 2
    # the twin shares the connection pool
    assert twin.root_client._client is expert.root_client._client
    assert retry_free(twin) is twin  # nothing left to turn off


def test_the_pool_files_experts_get_twins_too() -> None:
    config = ExpertConfig(name="a", base_url="http://h/v1", model="m")
    expert = config.build()
    twin = retry_free(expert)
    assert type(twin) is type(expert)
    assert twin.root_client.max_retries == 0  # type: ignore[attr-defined]


def test_other_experts_are_called_as_they_are() -> None:
    expert = ScriptedExpert()
    assert retry_free(expert) is expert
    assert request_timeout(expert, 5.0) is None


def test_an_openai_expert_takes_the_shorter_timeout() -> None:
    endpoint = Endpoint(_answer)
    assert request_timeout(endpoint.expert(), 42.0) == 42.0
    assert request_timeout(endpoint.expert(timeout=5), 42.0) == 5.0


# one retry layer ------------------------------------------------------------------------
@pytest.mark.parametrize("max_retries", [0, 2])
def test_a_503_gets_max_retries_plus_one_requests_per_sample_through_the_graph(
    embeddings, store, max_retries: int
) -> None:
    endpoint = Endpoint(_unavailable)
    graph = create_avengers_graph(
        _pool(endpoint.expert()),
        embeddings,
        store,
        top_n=1,
        samples=3,
        max_retries=max_retries,
        retry_policy=NO_WAIT,
    )
    with pytest.raises(AllExpertsFailedError, match="503"):
        graph.invoke(MATH)
    assert len(endpoint.requests) == 3 * (max_retries + 1)


@pytest.mark.parametrize("max_retries", [0, 2])
def test_a_503_gets_max_retries_plus_one_requests_per_sample_through_chat_avengers(
    embeddings, store, max_retries: int
) -> None:
    endpoint = Endpoint(_unavailable)
    llm = ChatAvengers(
        experts=_pool(endpoint.expert()),
        embeddings=embeddings,
        store=store,
        top_n=1,
        samples=2,
        max_retries=max_retries,
    )
    with pytest.raises(AllExpertsFailedError, match="503"):
        llm.invoke(QUESTION)
    assert len(endpoint.requests) == 2 * (max_retries + 1)


async def test_a_503_gets_max_retries_plus_one_requests_async(embeddings, store) -> None:
    endpoint = Endpoint(_unavailable)
    graph = create_avengers_graph(
        _pool(endpoint.expert()), embeddings, store, top_n=1, samples=2, retry_policy=NO_WAIT
    )
    with pytest.raises(AllExpertsFailedError):
        await graph.ainvoke(MATH)
    assert len(endpoint.requests) == 2 * 3
    endpoint.requests.clear()
    with pytest.raises(AllExpertsFailedError):
        await graph.ainvoke(MATH, context={"max_retries": 0})  # per run
    assert len(endpoint.requests) == 2


def test_max_retries_set_on_the_chat_model_after_construction_applies(embeddings, store) -> None:
    endpoint = Endpoint(_unavailable)
    llm = ChatAvengers(
        experts=_pool(endpoint.expert()), embeddings=embeddings, store=store, top_n=1, samples=1
    )
    llm.max_retries = 0
    with pytest.raises(AllExpertsFailedError):
        llm.invoke(QUESTION)
    assert len(endpoint.requests) == 1


# one timeout mechanism ------------------------------------------------------------------
def test_the_deadline_travels_with_the_request(embeddings, store) -> None:
    endpoint = Endpoint(_answer)
    graph = create_avengers_graph(
        _pool(endpoint.expert()), embeddings, store, top_n=1, samples=1, timeout=42
    )
    assert graph.invoke(MATH)["avengers"]["votes"] == {"42": 1}
    assert endpoint.requests[0].extensions["timeout"]["read"] == 42


def test_a_request_that_times_out_fails_its_sample_once_and_leaves_no_thread(
    embeddings, store
) -> None:
    endpoint = Endpoint(_read_timeout)
    graph = create_avengers_graph(
        _pool(endpoint.expert()), embeddings, store, top_n=1, samples=2, timeout=0.5
    )
    before = _other_threads()
    with pytest.raises(AllExpertsFailedError, match=r"ExpertTimeoutError: no answer within 0\.5 s"):
        graph.invoke(MATH)
    assert _other_threads() == before  # the call ran on the run's own worker
    assert len(endpoint.requests) == 2  # a timeout is a budget: not retried


class HeldExpert(ScriptedExpert):
    """Hangs until ``release`` is set (at most ``_HOLD_S``); counts the calls waiting."""

    _release: threading.Event = PrivateAttr(default_factory=threading.Event)
    _waiting: threading.Condition = PrivateAttr(default_factory=threading.Condition)
    _entered: int = PrivateAttr(default=0)

    def hold(self, release: threading.Event) -> HeldExpert:
        self._release = release
        return self

    def wait_for_calls(self, count: int) -> bool:
        with self._waiting:
            return self._waiting.wait_for(lambda: self._entered >= count, timeout=_HOLD_S)

    def _enter(self) -> None:
        with self._waiting:
            self._entered += 1
            self._waiting.notify_all()

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self._enter()
        self._release.wait(_HOLD_S)
        return self._reply(messages, stop, kwargs)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self._enter()
        for _ in range(int(_HOLD_S / 0.01)):  # cancellable, unlike a thread's wait
            if self._release.is_set():
                break
            await asyncio.sleep(0.01)
        return self._reply(messages, stop, kwargs)


@pytest.fixture
def release() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()  # held calls end with the test


def _healthy(embeddings: Any, store: Any) -> ChatAvengers:
    experts = {
        name: ScriptedExpert(respond=constant("\\boxed{42}")) for name in ("mathy", "coder", "bard")
    }
    # an instant expert answers long before 10 s; the timeout only bounds the wait
    return ChatAvengers(
        experts=experts, embeddings=embeddings, store=store, top_n=2, samples=3, timeout=10
    )


def _stuck(
    embeddings: Any, store: Any, release: threading.Event
) -> tuple[ChatAvengers, HeldExpert]:
    held = HeldExpert(respond=constant("\\boxed{1}")).hold(release)
    llm = ChatAvengers(
        experts=_pool(held), embeddings=embeddings, store=store, top_n=2, samples=3, timeout=0.2
    )
    return llm, held


def test_a_stuck_instance_never_fails_a_healthy_one(embeddings, store, release) -> None:
    stuck, held = _stuck(embeddings, store, release)
    healthy = _healthy(embeddings, store)
    with ThreadPoolExecutor(max_workers=8) as threads:
        stuck_runs = [threads.submit(stuck.invoke, QUESTION) for _ in range(4)]
        # the stuck instance's calls now hang (a process-wide pool held 6 of them)
        assert held.wait_for_calls(6)
        healthy_runs = [threads.submit(healthy.invoke, QUESTION) for _ in range(12)]
        answers = [run.result(timeout=60) for run in healthy_runs]
        for run in stuck_runs:
            with pytest.raises(AllExpertsFailedError, match="ExpertTimeoutError"):
                run.result(timeout=60)
    for answer in answers:
        record = answer.response_metadata["avengers"]
        assert record["failures"] == {}
        assert len(record["samples"]) == 6


def test_a_sync_batch_loses_no_sample_while_another_instance_is_stuck(
    embeddings, store, release
) -> None:
    stuck, held = _stuck(embeddings, store, release)
    with pytest.raises(AllExpertsFailedError):
        stuck.batch([QUESTION] * 2)  # 12 calls left hanging, abandoned by their runs
    assert held.wait_for_calls(6)
    answers = _healthy(embeddings, store).batch([QUESTION] * 20)
    records = [answer.response_metadata["avengers"] for answer in answers]
    assert [r["failures"] for r in records] == [{}] * 20
    assert [len(r["samples"]) for r in records] == [6] * 20


def test_an_abandoned_sync_call_ends_its_thread_when_the_call_ends(
    embeddings, store, release
) -> None:
    stuck, held = _stuck(embeddings, store, release)
    with pytest.raises(AllExpertsFailedError, match=r"no answer within 0\.2 s"):
        stuck.invoke(QUESTION, samples=1, top_n=1)
    abandoned = [t for t in threading.enumerate() if t.name == "avengers-expert"]
    assert len(abandoned) == 1  # the held call, on its own thread
    release.set()
    abandoned[0].join(timeout=_HOLD_S)
    assert not abandoned[0].is_alive()
    assert held.calls == 1


async def test_async_timeouts_cancel_the_call(embeddings, store, release) -> None:
    stuck, _ = _stuck(embeddings, store, release)
    with pytest.raises(AllExpertsFailedError, match=r"no answer within 0\.2 s"):
        await stuck.ainvoke(QUESTION, samples=1, top_n=1)
    answer = await _healthy(embeddings, store).ainvoke(QUESTION)
    assert answer.response_metadata["avengers"]["failures"] == {}


def test_endpoint_helper_answers_like_an_openai_server() -> None:
    endpoint = Endpoint(_answer)
    assert endpoint.expert().invoke("hi").text == "\\boxed{42}"
    assert json.loads(endpoint.requests[0].content)["model"] == "m"
