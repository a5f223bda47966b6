"""The run's deadline (``run_timeout``): what the whole run may take, shared by its parts.

Slow experts, retries, adaptive sampling rounds and the programs a run executes (the
``program`` strategy's answers, code votes by behaviour) all end by the deadline; at
the deadline the run votes on what it has, or names the experts still pending.

Whether a run waits is decided by logic, not timing: stuck experts are held on an
event the test releases afterwards (every hold bounded), and the rounds test moves
the graph's clock forward from inside the experts (:class:`FakeClock`).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.outputs import ChatResult
from pydantic import PrivateAttr, SecretStr

from avengers_graph import AllExpertsFailedError, ChatAvengers, create_avengers_graph
from avengers_graph.errors import ExpertTimeoutError, InvalidInputError
from avengers_graph.experts import calls as expert_calls
from avengers_graph.experts import contract as contract_module
from avengers_graph.experts.contract import Expert
from avengers_graph.experts.openai_compatible import ChatOpenAICompatible
from avengers_graph.formats import behaviour as behaviour_module
from avengers_graph.graph import nodes as nodes_module
from avengers_graph.options import AvengersOptions
from avengers_graph.sandbox import Isolation, SandboxResult
from avengers_graph.stores.chroma import ClusterStore, ExpertStats, StoredQuestion, StoreInfo
from tests.fakes import KeywordEmbeddings, ScriptedExpert, constant

QUESTION = "a math problem: what is 6 * 7?"
MATH = {"messages": [HumanMessage(QUESTION)]}
_HOLD_S = 30.0
"""Longest a held expert waits for its release (every wait in a test is bounded)."""


class HeldExpert(ScriptedExpert):
    """Hangs until ``release`` is set (at most ``_HOLD_S``), then answers."""

    _release: threading.Event = PrivateAttr(default_factory=threading.Event)

    def hold(self, release: threading.Event) -> HeldExpert:
        self._release = release
        return self

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self._release.wait(_HOLD_S)
        return self._reply(messages, stop, kwargs)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
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


def _answers(text: str) -> ScriptedExpert:
    return ScriptedExpert(respond=constant(text))


async def _run(graph: Any, inputs: Any, asynchronous: bool, **kwargs: Any) -> Any:
    if asynchronous:
        return await graph.ainvoke(inputs, **kwargs)
    return await asyncio.to_thread(graph.invoke, inputs, **kwargs)


# the option ------------------------------------------------------------------------------
def test_run_timeout_has_a_default_and_bounds() -> None:
    assert AvengersOptions().run_timeout == 900.0
    assert AvengersOptions(run_timeout=0.5).run_timeout == 0.5
    for bad in (0, -1, math.nan, math.inf, 86401):
        with pytest.raises(InvalidInputError, match="run_timeout"):
            AvengersOptions(run_timeout=bad)


def test_chat_avengers_and_a_runs_context_take_it(embeddings, store) -> None:
    llm = ChatAvengers(
        experts={"mathy": _answers("\\boxed{42}")}, embeddings=embeddings, store=store
    )
    assert llm.run_timeout == 900.0
    with pytest.raises(InvalidInputError, match="run_timeout"):
        llm.invoke(QUESTION, run_timeout=-1)


# a stuck expert ----------------------------------------------------------------------------
@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
async def test_a_stuck_expert_costs_the_run_its_deadline_not_its_timeout(
    embeddings, store, release, asynchronous: bool
) -> None:
    experts = {
        "mathy": HeldExpert(respond=constant("\\boxed{1}")).hold(release),
        "coder": _answers("\\boxed{42}"),
        "bard": _answers("\\boxed{42}"),
    }
    graph = create_avengers_graph(
        experts, embeddings, store, top_n=3, samples=2, timeout=300, run_timeout=2
    )
    result = await _run(graph, MATH, asynchronous)
    assert not release.is_set()  # the run did not wait for the held expert
    record = result["avengers"]
    assert record["votes"] == {"42": 4}
    assert set(record["failures"]) == {"mathy"}
    assert "ExpertTimeoutError: no answer before the run's deadline" in record["failures"]["mathy"]


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
async def test_with_no_sample_at_the_deadline_the_error_names_the_experts_pending(
    embeddings, store, release, asynchronous: bool
) -> None:
    experts = {
        "mathy": HeldExpert(respond=constant("\\boxed{1}")).hold(release),
        "coder": HeldExpert(respond=constant("\\boxed{1}")).hold(release),
        "bard": ScriptedExpert(always_fail=True, fail_with=lambda: ValueError("bad request")),
    }
    graph = create_avengers_graph(
        experts, embeddings, store, top_n=3, samples=1, timeout=300, run_timeout=2
    )
    with pytest.raises(ExpertTimeoutError) as raised:
        await _run(graph, MATH, asynchronous)
    assert not release.is_set()
    message = str(raised.value)
    assert "run's deadline (run_timeout=2 s)" in message
    pending = message.partition("Still pending:")[2].partition("Failed:")[0]
    assert "mathy" in pending
    assert "coder" in pending
    assert "bard" not in pending
    assert "Failed: bard: ValueError: bad request" in message


def test_without_the_deadline_every_failure_is_still_all_experts_failed(embeddings, store) -> None:
    experts = {"mathy": ScriptedExpert(always_fail=True, fail_with=lambda: ValueError("no"))}
    graph = create_avengers_graph(experts, embeddings, store, top_n=1, samples=1)
    with pytest.raises(AllExpertsFailedError, match="ValueError: no"):
        graph.invoke(MATH)


def test_a_call_past_the_deadline_is_not_made() -> None:
    expert = _answers("\\boxed{1}")
    with pytest.raises(ExpertTimeoutError, match="deadline had passed"):
        expert_calls.invoke(
            expert, "hi", {}, {}, client=expert, timeout=5, deadline=time.monotonic() - 1
        )
    with pytest.raises(ExpertTimeoutError, match="deadline had passed"):
        asyncio.run(
            expert_calls.ainvoke(expert, "hi", {}, {}, timeout=5, deadline=time.monotonic() - 1)
        )
    assert expert.calls == 0
    assert expert_calls.call_budget(5.0, None) == (5.0, False)
    left, by_deadline = expert_calls.call_budget(5.0, time.monotonic() + 1)
    assert by_deadline
    assert 0 < left <= 1


# a client that queues calls (a slot limit) -----------------------------------------------------
# langchain-openai probes which socket options the platform supports when it builds its HTTP
# client (no connection); pytest-socket refuses the probe and warns.
@pytest.mark.filterwarnings("ignore:A test tried to use socket.socket:UserWarning")
def test_calls_queued_behind_a_slot_limit_wait_no_longer_than_the_deadline(
    embeddings, store, release
) -> None:
    entered: list[httpx.Request] = []

    def hang(request: httpx.Request) -> httpx.Response:
        entered.append(request)
        release.wait(_HOLD_S)
        return httpx.Response(500, json={"error": {"message": "released"}})

    expert = ChatOpenAICompatible(
        model="m",
        base_url="http://expert.invalid/v1",
        api_key=SecretStr("EMPTY"),
        max_concurrent_requests=1,  # the samples queue in the client, one request at a time
        http_client=httpx.Client(transport=httpx.MockTransport(hang)),
    )
    graph = create_avengers_graph(
        {"mathy": expert}, embeddings, store, top_n=1, samples=3, timeout=300, run_timeout=0.5
    )
    with pytest.raises(ExpertTimeoutError, match="Still pending: mathy"):
        graph.invoke(MATH)
    assert not release.is_set()
    assert len(entered) == 1  # the other two were still queued for the slot


# retries ------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:A test tried to use socket.socket:UserWarning")
def test_no_retry_whose_backoff_would_end_past_the_deadline(embeddings, store) -> None:
    requests: list[httpx.Request] = []

    def unavailable(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(503, json={"error": {"message": "busy", "type": "server_error"}})

    expert = ChatOpenAICompatible(
        model="m",
        base_url="http://expert.invalid/v1",
        api_key=SecretStr("EMPTY"),
        http_client=httpx.Client(transport=httpx.MockTransport(unavailable)),
    )
    # the default policy would sleep 0.5-1.5 s, then 1-3 s, ... (up to 129 s) ten times
    graph = create_avengers_graph(
        {"mathy": expert}, embeddings, store, top_n=1, samples=1, max_retries=10, run_timeout=1.4
    )
    with pytest.raises(AllExpertsFailedError, match="503"):
        graph.invoke(MATH)
    assert len(requests) == 1


# adaptive sampling rounds ---------------------------------------------------------------------
class FakeClock:
    """The graph's clocks (``nodes`` and ``calls``), moved forward by hand."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.offset = 0.0
        clock = types.SimpleNamespace(
            monotonic=lambda: time.monotonic() + self.offset,
            perf_counter=lambda: time.perf_counter() + self.offset,
        )
        monkeypatch.setattr(nodes_module, "time", clock)
        monkeypatch.setattr(expert_calls, "time", clock)

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def _adaptive_store(path: Path, embeddings: KeywordEmbeddings) -> ClusterStore:
    store = ClusterStore(path=path, name="rounds")
    vectors = np.asarray(embeddings.embed_documents(["math question"]))
    store.write(
        StoreInfo(
            name="rounds",
            embedding_model=embeddings.model_name,
            embedding_dim=embeddings.dim,
            n_clusters=1,
            seed=0,
            experts=("mathy", "coder"),
        ),
        centroids=vectors,
        sizes=[1],
        stats={0: {n: ExpertStats(6, 10, 10.0, 0.1, 6, 10) for n in ("mathy", "coder")}},
        questions=[StoredQuestion("q", "math question", "42", "number", 0)],
        question_vectors=vectors,
    )
    return store


def test_no_round_is_drawn_after_the_deadline(
    tmp_path: Path, embeddings, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock(monkeypatch)
    seen: list[int | None] = []

    def slow(answer: str) -> Callable[[str, int | None], str]:
        def respond(question: str, seed: int | None) -> str:
            seen.append(seed)
            clock.advance(1.0)  # each answer takes a second of the run's time
            return f"\\boxed{{{answer}}}"

        return respond

    experts = {
        "mathy": ScriptedExpert(respond=slow("41")),
        "coder": ScriptedExpert(respond=slow("42")),
    }
    store = _adaptive_store(tmp_path / "store", embeddings)
    options = {"top_n": 2, "samples": 3, "threshold": 0.99, "round_size": 2, "seed": 0}
    # disagreeing samples: without a deadline, every round is drawn
    clock_free = create_avengers_graph(experts, embeddings, store, **options)
    assert clock_free.invoke(MATH)["avengers"]["rounds"] == 3
    assert len(seen) == 6
    seen.clear()
    graph = create_avengers_graph(experts, embeddings, store, run_timeout=1.5, **options)
    record = graph.invoke(MATH)["avengers"]
    assert len(seen) == 2  # round 1 took the run past its deadline
    assert record["rounds"] == 1
    assert record["cancelled"] == 4  # the planned samples not drawn
    assert sum(record["votes"].values()) > 0  # voted on what it had


# programs within the call's budget ----------------------------------------------------------
class SandboxSpy:
    """Stands in for ``run_python``: records each run's budget, reports a time-out."""

    def __init__(self) -> None:
        self.runs: list[tuple[float, float | None, float]] = []

    def __call__(
        self, code: str, *, timeout: float = 10.0, deadline: float | None = None, **_: Any
    ) -> SandboxResult:
        self.runs.append((timeout, deadline, time.monotonic()))
        return SandboxResult(None, "", "", timed_out=True, isolation=Isolation.BUBBLEWRAP)


CODE_QUESTION = (
    'code: complete this function\ndef add(a, b):\n    """>>> add(2, 3)\n    5\n    """\n'
)


def test_the_code_vote_runs_every_program_within_one_calls_budget(
    embeddings, store, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = SandboxSpy()
    monkeypatch.setattr(behaviour_module, "run_python", spy)
    loops = [
        ScriptedExpert(respond=constant(f"```python\ndef add(a, b):\n    while {i}: pass\n```"))
        for i in range(1, 7)
    ]
    experts = dict(zip(("mathy", "coder", "bard"), loops, strict=False))
    graph = create_avengers_graph(experts, embeddings, store, top_n=3, samples=2, timeout=2)
    graph.invoke({"messages": [HumanMessage(CODE_QUESTION)]})
    assert len(spy.runs) == 6  # six programs, each up to 5 s: 30 s before this change
    deadlines = {deadline for _, deadline, _ in spy.runs}
    assert len(deadlines) == 1  # one budget for all of them
    (deadline,) = deadlines
    assert deadline is not None
    assert deadline - spy.runs[0][2] <= 2  # counted from the vote, before the first program


def test_a_program_answer_runs_only_within_what_is_left_of_its_call(
    embeddings, store, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = SandboxSpy()
    monkeypatch.setattr(contract_module, "run_python", spy)
    program = Expert(
        ScriptedExpert(respond=constant("```python\nwhile True: pass\n```")), "program"
    )
    graph = create_avengers_graph(
        {"mathy": program}, embeddings, store, top_n=1, samples=1, timeout=0.5
    )
    record = graph.invoke(MATH)["avengers"]
    assert record["samples"][0]["text"] == ""  # a timed-out program answers nothing
    [(timeout, deadline, at)] = spy.runs
    assert deadline is not None
    assert deadline - at <= 0.5  # not the 1 s floor nor PROGRAM_TIMEOUT
    assert timeout == contract_module.PROGRAM_TIMEOUT


def test_a_program_answer_gets_no_time_past_the_runs_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spy = SandboxSpy()
    monkeypatch.setattr(contract_module, "run_python", spy)
    terms = contract_module.contract("What is 2 + 3?", "program")
    from langchain_core.messages import AIMessage

    deadline = time.monotonic() + 0.25
    answer = terms.answer(AIMessage("```python\nprint(5)\n```"), deadline=deadline)
    assert spy.runs[0][1] == deadline
    assert answer.text == ""
    assert answer.response_metadata["program"]["timed_out"] is True
