"""Early decision and the graph's custom stream events.

A "held" expert answers only when the test lets it: whether the graph waits for it is
then a matter of logic, not of timing.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.outputs import ChatResult
from pydantic import PrivateAttr

from avengers_graph import ChatAvengers, ClusterStore, create_avengers_graph, formats, voting
from tests.fakes import KeywordEmbeddings, ScriptedExpert, constant

MATH = {"messages": [HumanMessage("a math problem: what is 6 * 7?")]}


class HeldExpert(ScriptedExpert):
    """Answers once ``release`` is set; counts the async calls that were cancelled."""

    _release: threading.Event = PrivateAttr(default_factory=threading.Event)
    _cancelled: int = PrivateAttr(default=0)

    @property
    def release(self) -> threading.Event:
        return self._release

    @property
    def cancelled(self) -> int:
        return self._cancelled

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self._release.wait(timeout=30)
        return self._reply(messages, stop, kwargs)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        try:
            while not self._release.is_set():
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            self._cancelled += 1
            raise
        return self._reply(messages, stop, kwargs)


def pool(held_answer: str = "\\boxed{7}") -> dict[str, ScriptedExpert]:
    # on MATH: mathy rank 0, bard rank 1, coder rank 2 (the held one)
    return {
        "mathy": ScriptedExpert(respond=constant("\\boxed{42}")),
        "bard": ScriptedExpert(respond=constant("so \\boxed{42}")),
        "coder": HeldExpert(respond=constant(held_answer)),
    }


def early(experts: dict[str, Any], embeddings: KeywordEmbeddings, store: ClusterStore) -> Any:
    return create_avengers_graph(
        experts, embeddings, store, top_n=3, samples=2, seed=3, early_stop=True
    )


# pure decision ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("keys", "pending", "decided"),
    [
        (["42", "42", "42", "42"], 2, True),
        (["42", "42", "42"], 3, False),  # three to come could tie it
        (["42", "42", "42", "7"], 1, True),
        (["42", "42", "7"], 1, False),
        (["42", None, None], 0, True),
        ([None, None], 1, False),
        ([], 3, False),
    ],
)
def test_is_decided(keys, pending, decided) -> None:
    assert voting.is_decided(keys, pending) is decided


def test_auto_extractor_is_settled_only_when_the_rest_cannot_flip_it() -> None:
    boxed = ["\\boxed{42}"] * 4
    assert voting.settled_extractor(boxed, "auto", 2) is formats.extract_number
    # one boxed number, one to come: a boxed letter would make it a choice question
    assert voting.settled_extractor(boxed[:1], "auto", 1) is voting.UNSETTLED
    # short answers so far: a long one to come would make it free text
    assert voting.settled_extractor(["Paris", "Paris"], "auto", 1) is voting.UNSETTLED
    assert voting.settled_extractor(["Paris", "Paris"], "auto", 0) is formats.extract_text
    assert voting.settled_extractor(["Paris"], "text", 5) is formats.extract_text
    # with nothing to come it is resolve_extractor
    texts = ["The answer is (B).", "Answer: B", "I think it is C, maybe"]
    assert voting.settled_extractor(texts, "auto", 0) is voting.resolve_extractor(texts)


def test_early_keys_waits_for_tools_code_and_free_text() -> None:
    call = [{"name": "add", "args": {"a": 1}, "id": "x", "type": "tool_call"}]
    keyed = voting.early_keys(["", "4"], [call, []], "auto", 2, tools=True)
    assert keyed == [voting.tool_call_key(call), voting.TEXT_ANSWER_KEY]
    # tools bound and no call yet: a later sample could still call one
    assert voting.early_keys(["4", "4"], [[], []], "auto", 1, tools=True) is None
    assert voting.early_keys(["4", "4"], [[], []], "number", 1) == ["4", "4"]
    code = ["```python\ndef f():\n    return 1\n```"] * 3
    assert voting.early_keys(code, [[]] * 3, "auto", 1) is None
    prose = ["A long free text answer about the causes of the war."] * 3
    assert voting.early_keys(prose, [[]] * 3, "auto", 1) is None


# graph ----------------------------------------------------------------------------------
def test_sync_run_stops_waiting_once_decided(embeddings, store) -> None:
    experts = pool()
    try:
        out = early(experts, embeddings, store).invoke(MATH)
    finally:
        experts["coder"].release.set()
    record = out["avengers"]
    assert record["votes"] == {"42": 4}
    assert record["cancelled"] == 2
    assert out["messages"][-1].text == "\\boxed{42}"
    assert record["failures"] == {}


def test_async_run_cancels_the_samples_it_no_longer_needs(embeddings, store) -> None:
    experts = pool()
    try:
        out = asyncio.run(early(experts, embeddings, store).ainvoke(MATH))
    finally:
        experts["coder"].release.set()
    assert out["avengers"]["votes"] == {"42": 4}
    assert out["avengers"]["cancelled"] == 2
    held = experts["coder"]
    assert isinstance(held, HeldExpert)
    assert held.cancelled == 2  # both its requests were cancelled, not abandoned
    assert held.calls == 0  # and neither got to answer


def test_undecided_vote_waits_for_every_sample(embeddings, store) -> None:
    experts = pool(held_answer="\\boxed{7}")
    experts["bard"] = ScriptedExpert(respond=constant("\\boxed{7}"))  # 2 vs 2: undecided
    experts["coder"].release.set()  # answers as soon as it is asked
    out = early(experts, embeddings, store).invoke(MATH)
    assert out["avengers"]["votes"] == {"42": 2, "7": 4}
    assert out["avengers"]["cancelled"] == 0


def test_without_early_stop_every_sample_is_kept(experts, embeddings, store) -> None:
    g = create_avengers_graph(experts, embeddings, store, top_n=3, samples=2, seed=3)
    record = g.invoke(MATH)["avengers"]
    assert sum(record["votes"].values()) == 6
    assert record["cancelled"] == 0


def test_custom_stream_events_follow_the_run(experts, embeddings, store) -> None:
    g = create_avengers_graph(experts, embeddings, store, top_n=2, samples=2, seed=3)
    events = [event for _, event in g.stream(MATH, stream_mode=["custom"])]
    kinds = [event["avengers"] for event in events]
    assert kinds == ["routing", "sample", "sample", "sample", "sample", "vote"]
    routing, vote = events[0], events[-1]
    assert [e["name"] for e in routing["experts"]] == ["mathy", "bard"]
    assert routing["seed"] == 3
    assert all(e["status"] == "ok" and "\\boxed{42}" in e["text"] for e in events[1:5])
    assert vote["votes"] == {"42": 4}
    assert vote["answer"] == "42"
    assert vote["cancelled"] == 0


def test_failed_and_cancelled_samples_are_streamed(embeddings, store) -> None:
    experts = pool()
    experts["bard"] = ScriptedExpert(
        respond=constant("\\boxed{42}"), always_fail=True, fail_with=lambda: ValueError("boom")
    )
    experts["extra"] = ScriptedExpert(respond=constant("\\boxed{42}"))
    try:
        events = [
            event
            for _, event in early(experts, embeddings, store).stream(
                MATH, stream_mode=["custom"], context={"top_n": 4, "samples": 2}
            )
        ]
    finally:
        experts["coder"].release.set()
    statuses = sorted(e["status"] for e in events if e["avengers"] == "sample")
    assert statuses.count("failed") == 2
    assert events[-1]["avengers"] == "vote"
    assert events[-1]["votes"] == {"42": 4}


def test_chat_model_stream_decides_early_and_invoke_does_not(embeddings, store) -> None:
    experts = pool()
    llm = ChatAvengers(experts=experts, embeddings=embeddings, store=store, top_n=3, samples=2)
    try:
        chunks = list(llm.stream("a math problem: what is 6 * 7?"))
    finally:
        experts["coder"].release.set()
    record = chunks[-1].response_metadata["avengers"]
    assert record["cancelled"] == 2
    assert chunks[-1].text == "\\boxed{42}"
    # invoke waits for every sample (the held expert now answers at once)
    assert (
        llm.invoke("a math problem: what is 6 * 7?").response_metadata["avengers"]["cancelled"] == 0
    )
