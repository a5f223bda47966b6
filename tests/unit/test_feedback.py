"""Feedback: grading verdicts, counting them into the store, routing moving away."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from avengers_graph import ChatAvengers, ClusterStore, ExpertStats, MemoryStore
from avengers_graph import chat_models as chat_models_module
from avengers_graph.errors import FeedbackConflictError, InvalidInputError, UnknownRunError
from avengers_graph.stores.base import Feedback, apply_feedback, grade_feedback
from tests.fakes import KeywordEmbeddings, ScriptedExpert

MATH = "a math problem: what is 6 * 7?"


def test_a_right_answer_grades_agreeing_samples_right_and_the_others_wrong() -> None:
    graded = grade_feedback({"a": ["42", "42", "41"], "b": ["41", None]}, "42", correct=True)
    assert graded["a"] == Feedback(correct=1, total=1, sample_correct=2, samples=3)
    assert graded["b"] == Feedback(correct=0, total=1, sample_correct=0, samples=2)


def test_a_wrong_answer_grades_only_what_it_can() -> None:
    graded = grade_feedback(
        {"a": ["42", "42"], "b": ["41", "41"], "c": ["41", None], "d": [None]},
        "42",
        correct=False,
    )
    assert graded["a"] == Feedback(total=1, samples=2)  # gave the wrong answer
    assert "b" not in graded  # another answer: the verdict does not say it was right
    assert graded["c"] == Feedback(total=0, samples=1)  # its unanswered sample was wrong
    assert graded["d"] == Feedback(total=1, samples=1)


def test_feedback_counts_are_checked() -> None:
    with pytest.raises(InvalidInputError):
        Feedback(correct=2, total=1)
    with pytest.raises(InvalidInputError):
        Feedback(samples=-1)


def test_feedback_updates_only_experts_calibrated_in_the_cluster() -> None:
    stats = {0: {"a": ExpertStats(5, 10, sample_correct=10, samples=20)}, 1: {}}
    updated = apply_feedback(
        stats,
        {0: {"a": Feedback(total=1, samples=2), "new": Feedback(1, 1)}, 1: {"a": Feedback(1, 1)}},
    )
    assert updated == {0: {"a": ExpertStats(5, 11, sample_correct=10, samples=22)}}


def test_sample_counts_are_added_only_where_they_are_kept() -> None:
    old = ExpertStats(5, 10)  # recorded before per-sample counts were kept
    assert Feedback(1, 1, 2, 3).added_to(old) == ExpertStats(6, 11)


def _store(path: Path, embeddings: KeywordEmbeddings) -> ClusterStore:
    from tests.unit.conftest import write_two_domain_store

    return write_two_domain_store(path, embeddings)


@pytest.fixture
def keyword_embeddings() -> KeywordEmbeddings:
    return KeywordEmbeddings({"math": 0, "code": 1})


def _llm(store: object, embeddings: KeywordEmbeddings, **options: object) -> ChatAvengers:
    experts = {
        name: ScriptedExpert(model=name, respond=lambda q, s, n=name: f"{n} says \\boxed{{41}}")
        for name in ("mathy", "coder", "bard")
    }
    settings = {"top_n": 1, "samples": 2, "seed": 0, **options}
    return ChatAvengers(experts=experts, embeddings=embeddings, store=store, **settings)


def test_repeated_wrong_feedback_moves_routing_away_and_persists(
    tmp_path: Path, keyword_embeddings: KeywordEmbeddings
) -> None:
    path = tmp_path / "store"
    llm = _llm(_store(path, keyword_embeddings), keyword_embeddings)
    chosen = []
    for _ in range(12):
        answer = llm.invoke(MATH)
        expert = answer.response_metadata["avengers"]["winner"]
        chosen.append(expert)
        if expert == "mathy":
            result = llm.record_feedback(answer.id, correct=False)
            assert result.clusters == [0]
            assert result.graded == {"mathy": Feedback(total=1, samples=2)}
    # mathy starts at 9/10 in the math cluster, bard at 5/10: nine "wrong" verdicts
    # (9/19 < 5/10) move routing to bard, and it stays there
    assert chosen[:9] == ["mathy"] * 9
    assert chosen[9:] == ["bard"] * 3
    reopened = ClusterStore(path=path, name="unit").stats()
    assert reopened[0]["mathy"] == ExpertStats(9, 19)
    assert reopened[0]["bard"] == ExpertStats(5, 10)
    assert reopened[1]["mathy"] == ExpertStats(2, 10)  # the code cluster did not route it


def test_a_right_verdict_counts_the_samples_that_agreed(
    tmp_path: Path, keyword_embeddings: KeywordEmbeddings
) -> None:
    store = _store(tmp_path / "store", keyword_embeddings)
    llm = _llm(store, keyword_embeddings, top_n=2)
    answer = llm.invoke(MATH)
    result = llm.record_feedback(answer.id, correct=True)
    assert set(result.graded) == {"mathy", "bard"}
    assert store.stats()[0]["mathy"] == ExpertStats(10, 11)
    assert store.stats()[0]["bard"] == ExpertStats(6, 11)


def test_a_verdict_is_recorded_once(tmp_path: Path, keyword_embeddings: KeywordEmbeddings) -> None:
    store = _store(tmp_path / "store", keyword_embeddings)
    llm = _llm(store, keyword_embeddings)
    answer = llm.invoke(MATH)
    first = llm.record_feedback(answer.id, correct=False)
    again = llm.record_feedback(answer.id, correct=False)
    assert not first.duplicate
    assert again.duplicate
    assert again.updated == first.updated
    assert store.stats()[0]["mathy"] == ExpertStats(9, 11)  # counted once
    with pytest.raises(FeedbackConflictError, match="already marked wrong"):
        llm.record_feedback(answer.id, correct=True)


def test_answers_are_found_by_id_run_id_and_from_streams(
    tmp_path: Path, keyword_embeddings: KeywordEmbeddings
) -> None:
    llm = _llm(
        MemoryStore.from_store(_store(tmp_path / "s", keyword_embeddings)), keyword_embeddings
    )
    run_id = uuid.uuid4()
    invoked = llm.invoke(MATH, config={"run_id": run_id})
    assert llm.routing_record(run_id) == invoked.response_metadata["avengers"]
    assert llm.routing_record(str(run_id))["winner"] == "mathy"
    assert llm.routing_record(invoked.id)["winner"] == "mathy"
    chunks = list(llm.stream(MATH))
    assert llm.record_feedback(chunks[-1].id, correct=False).updated[0]["mathy"].total == 11
    with pytest.raises(UnknownRunError):
        llm.record_feedback(uuid.uuid4(), correct=False)
    with pytest.raises(InvalidInputError):
        llm.record_feedback("", correct=False)
    with pytest.raises(InvalidInputError):
        llm.record_feedback(invoked.id, correct="no")  # type: ignore[arg-type]


async def test_async_streams_are_remembered_too(
    tmp_path: Path, keyword_embeddings: KeywordEmbeddings
) -> None:
    llm = _llm(
        MemoryStore.from_store(_store(tmp_path / "s", keyword_embeddings)), keyword_embeddings
    )
    chunks = [chunk async for chunk in llm.astream(MATH)]
    assert llm.record_feedback(chunks[-1].id, correct=True).graded["mathy"].correct == 1


def test_only_the_most_recent_answers_are_kept(
    tmp_path: Path, keyword_embeddings: KeywordEmbeddings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chat_models_module, "FEEDBACK_RUNS", 2)
    llm = _llm(
        MemoryStore.from_store(_store(tmp_path / "s", keyword_embeddings)), keyword_embeddings
    )
    answers = [llm.invoke(MATH) for _ in range(3)]
    with pytest.raises(UnknownRunError, match="last 2 answers"):
        llm.record_feedback(answers[0].id, correct=False)
    assert not llm.record_feedback(answers[2].id, correct=False).duplicate


def test_a_store_without_feedback_is_a_clear_error(
    tmp_path: Path, keyword_embeddings: KeywordEmbeddings
) -> None:
    class ReadOnly:
        """A store that forwards reads only (no add_feedback)."""

        def __init__(self, inner: MemoryStore) -> None:
            self._inner = inner
            self.name = inner.name

        def __getattr__(self, name: str) -> object:
            if name == "add_feedback":
                raise AttributeError(name)
            return getattr(self._inner, name)

    inner = MemoryStore.from_store(_store(tmp_path / "s", keyword_embeddings))
    llm = _llm(ReadOnly(inner), keyword_embeddings)
    answer = llm.invoke(MATH)
    with pytest.raises(InvalidInputError, match="takes no feedback"):
        llm.record_feedback(answer.id, correct=False)
