"""Recording a response matrix with scripted experts and a real answer cache."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from avengers_graph.errors import InvalidInputError
from avengers_graph.eval.recording import (
    PACKAGES,
    PROVENANCE_FILE,
    QUESTIONS_FILE,
    RESPONSES_FILE,
    Response,
    ResponseMatrix,
    contract_snapshot,
    record,
)
from avengers_graph.experts.cache import AnswerCache
from tests.fakes import ScriptedExpert

GOOD_CODE = '```python\ndef add(a, b):\n    """Add."""\n    return a + b\n```'
BAD_CODE = "```python\ndef add(a, b):\n    return a - b\n```"

ITEMS: list[dict[str, str]] = [
    {
        "id": "gsm8k-1",
        "dataset": "gsm8k",
        "kind": "number",
        "question": "Q-number: how many?",
        "answer": "42",
        "source": "gsm8k/main test #1",
    },
    {
        "id": "arc-1",
        "dataset": "arc",
        "kind": "choice",
        "question": "Q-choice: which?\n\nA) one\nB) two\nC) three",
        "answer": "B",
        "source": "arc #1",
    },
    {
        "id": "mbpp-1",
        "dataset": "mbpp",
        "kind": "code",
        "question": "Q-code: write a function add(a, b).",
        "answer": "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n",
        "source": "mbpp #1",
    },
    {
        "id": "sst2-1",
        "dataset": "sst2",
        "kind": "text",
        "question": "Q-text: positive or negative?",
        "answer": "positive",
        "source": "sst2 #1",
    },
]

RIGHT = {
    "Q-number": "6 * 7 = 42, so \\boxed{42}.",
    "Q-choice": "Two it is.\nAnswer: B",
    "Q-code": GOOD_CODE,
    "Q-text": "positive",
}
WRONG = {
    "Q-number": "6 * 7 = 41, so \\boxed{41}.",
    "Q-choice": "Answer: C",
    "Q-code": BAD_CODE,
    "Q-text": "negative",
}


def _by_prefix(replies: dict[str, str], *, fail_on: str | None = None) -> Any:
    def respond(question: str, seed: int | None) -> str:
        prefix = question.split(":", 1)[0]
        if prefix == fail_on:
            raise ValueError(f"cannot answer {prefix}")
        return replies[prefix]

    return respond


def _numbers(n: int) -> list[dict[str, str]]:
    return [
        {
            "id": f"q{i}",
            "dataset": "gsm8k",
            "kind": "number",
            "question": f"Q{i}: what is {i} + {i}?",
            "answer": str(2 * i),
        }
        for i in range(n)
    ]


def _doubler(*, fail_on: str | None = None, model: str = "doubler-1b") -> ScriptedExpert:
    def respond(question: str, seed: int | None) -> str:
        name, _, rest = question.partition(":")
        if name == fail_on:
            raise ValueError(f"cannot answer {name}")
        return f"Seed {seed}: \\boxed{{{2 * int(rest.split()[2])}}}"

    return ScriptedExpert(model=model, respond=respond)


@pytest.fixture
def cache(tmp_path: Path) -> AnswerCache:
    return AnswerCache(tmp_path / "c.sqlite")


def test_one_row_per_question_expert_and_sample(cache: AnswerCache) -> None:
    experts = {"a": _doubler(model="a-1b"), "b": _doubler(model="b-1b")}
    items = _numbers(3)
    report = record(experts, items, cache, samples={"a": 3, "b": 1}, seed=10)
    rows = report.matrix.responses
    assert {(r.question_id, r.expert, r.sample) for r in rows} == {
        (q["id"], expert, j)
        for q in items
        for expert, count in (("a", 3), ("b", 1))
        for j in range(count)
    }
    assert len(rows) == 12
    assert all(r.seed == 10 + r.sample for r in rows)
    assert all(r.output.startswith(f"Seed {r.seed}:") for r in rows)  # the seed reached it
    assert experts["a"].calls == 9
    assert experts["b"].calls == 3
    assert Counter(call["seed"] for call in experts["a"].seen) == {10: 3, 11: 3, 12: 3}
    assert [call["seed"] for call in experts["b"].seen] == [10, 10, 10]
    assert all(call["temperature"] == 0.7 for call in experts["a"].seen)
    assert report.calls == 12
    assert report.cached == 0
    assert report.missing == 0
    assert report.error is None
    assert report.matrix.experts == ["a", "b"]
    assert report.matrix.datasets == ["gsm8k"]
    assert [q["id"] for q in report.matrix.questions] == ["q0", "q1", "q2"]


def test_rows_in_the_calibration_format_are_recorded(cache: AnswerCache) -> None:
    """A user's validation rows: no id (a hash of question and answer), no dataset (the kind)."""
    from avengers_graph.calibration import load_dataset

    rows = [{k: v for k, v in q.items() if k not in {"id", "dataset"}} for q in _numbers(2)]
    rows[1]["dataset"] = "sums"
    report = record({"a": _doubler()}, rows, cache, samples=1)
    ids = [item.id for item in load_dataset(rows)]
    assert [q["id"] for q in report.matrix.questions] == ids
    assert [q["dataset"] for q in report.matrix.questions] == ["number", "sums"]
    assert {r.question_id for r in report.matrix.responses} == set(ids)
    assert all(r.correct for r in report.matrix.responses)
    with pytest.raises(InvalidInputError, match="has no 'answer'"):
        record({"a": _doubler()}, [{"question": "Q0: what is 1 + 1?", "kind": "number"}], cache)


def test_expert_left_out_of_samples_is_not_asked(cache: AnswerCache) -> None:
    experts = {"a": _doubler(), "b": _doubler()}
    report = record(experts, _numbers(2), cache, samples={"a": 2})
    assert experts["b"].calls == 0
    assert report.matrix.experts == ["a"]
    assert report.matrix.provenance["experts"]["b"]["samples"] == 0


def test_samples_naming_an_unknown_expert_is_refused(cache: AnswerCache) -> None:
    expert = _doubler()
    with pytest.raises(InvalidInputError, match=r"not in the pool: \['c'\]"):
        record({"a": expert}, _numbers(1), cache, samples={"a": 1, "c": 2})
    assert expert.calls == 0


def test_the_contracts_budgets_reach_the_expert(cache: AnswerCache) -> None:
    expert = ScriptedExpert(model="m", respond=_by_prefix(RIGHT))
    # one worker: calls are made in plan order, which is item order
    record({"a": expert}, ITEMS, cache, samples=1, max_concurrency=1)
    # the reason strategy's budgets for number, choice, code and label questions
    assert [call["max_tokens"] for call in expert.seen] == [1024, 1024, 1024, 512]


def test_max_tokens_caps_the_budget_of_the_kinds_it_names(cache: AnswerCache) -> None:
    expert = ScriptedExpert(model="m", respond=_by_prefix(RIGHT))
    record(
        {"a": expert},
        ITEMS,
        cache,
        samples=1,
        max_concurrency=1,
        max_tokens={"number": 7, "code": 9},
        temperature=None,
    )
    assert [call.get("max_tokens") for call in expert.seen] == [7, 1024, 9, 512]
    assert all("temperature" not in call for call in expert.seen)


def test_extracted_and_correct_by_kind(cache: AnswerCache) -> None:
    experts = {
        "right": ScriptedExpert(model="right-1b", respond=_by_prefix(RIGHT)),
        "wrong": ScriptedExpert(model="wrong-1b", respond=_by_prefix(WRONG)),
    }
    report = record(experts, ITEMS, cache, samples=1)
    table = {(r.question_id, r.expert): r for r in report.matrix.responses}
    expected = {
        ("gsm8k-1", "right"): ("42", True),
        ("gsm8k-1", "wrong"): ("41", False),
        ("arc-1", "right"): ("B", True),
        ("arc-1", "wrong"): ("C", False),
        ("mbpp-1", "right"): ("def add(a, b):\n    return a + b", True),
        ("mbpp-1", "wrong"): ("def add(a, b):\n    return a - b", False),
        ("sst2-1", "right"): ("positive", True),
        ("sst2-1", "wrong"): ("negative", False),
    }
    assert {key: (r.extracted, r.correct) for key, r in table.items()} == expected
    prefix = {item["id"]: item["question"].split(":")[0] for item in ITEMS}
    for (question_id, expert), response in table.items():
        assert response.dataset == question_id.split("-")[0]
        replies = RIGHT if expert == "right" else WRONG
        assert response.output == replies[prefix[question_id]]
        assert response.tokens == len(response.output.split())
    formats = {"gsm8k-1": "number", "arc-1": "choice", "mbpp-1": "code", "sst2-1": "label"}
    assert report.matrix.questions == [
        {**item, "format": formats[item["id"]], "options": options}
        for item, options in zip(
            ITEMS, [[], ["A", "B", "C"], [], ["positive", "negative"]], strict=True
        )
    ]


def test_a_label_in_a_sentence_is_graded_as_the_vote_reads_it(cache: AnswerCache) -> None:
    # SST-2's kind is "text" (normalised exact match), its questions' format "label":
    # the grade reads the key, the label the vote counts, not the whole sentence.
    # Recorded replies of Qwen2.5-Coder-0.5B (reason) to SST-2.
    replies = {
        "0": "The sentiment of this review is positive.",
        "1": "There are no negative comments in the review, so it is a positive review.",
        "2": "The review calls the film dull and tiresome.\nAnswer: negative",
    }
    expert = ScriptedExpert(model="reasoner-1b", respond=lambda q, seed: replies[str(seed)])
    report = record({"r": expert}, [ITEMS[3]], cache, samples=3)
    assert [(r.extracted, r.correct) for r in report.matrix.responses] == [
        ("positive", True),
        ("positive", True),
        ("negative", False),
    ]


def test_failed_calls_are_reported_and_retried_alone(cache: AnswerCache) -> None:
    items = _numbers(3)
    flaky = {"a": _doubler(fail_on="Q1", model="a-1b"), "b": _doubler(model="b-1b")}
    first = record(flaky, items, cache, samples=2)
    assert first.error is not None
    assert "ValueError: cannot answer Q1" in first.error
    assert first.missing == 2  # a's two samples of q1
    answered = {(r.question_id, r.expert, r.sample) for r in first.matrix.responses}
    assert len(answered) == 10
    assert not any(q == "q1" and e == "a" for q, e, _ in answered)
    assert all(r.correct for r in first.matrix.responses)

    healthy = {"a": _doubler(model="a-1b"), "b": _doubler(model="b-1b")}
    second = record(healthy, items, cache, samples=2)
    assert healthy["a"].calls == 2
    assert healthy["b"].calls == 0
    assert sorted(call["seed"] for call in healthy["a"].seen) == [0, 1]
    assert second.error is None
    assert (second.calls, second.cached, second.missing) == (2, 10, 0)
    assert len(second.matrix.responses) == 12
    # answers taken from the cache are the first run's, wall-clock seconds included
    earlier = {(r.question_id, r.expert, r.sample): r for r in first.matrix.responses}
    for response in second.matrix.responses:
        key = (response.question_id, response.expert, response.sample)
        if key in earlier:
            assert response == earlier[key]


def test_transient_failures_are_resumed(cache: AnswerCache) -> None:
    items = _numbers(4)
    down = ScriptedExpert(model="m", respond=_doubler().respond, fail_first=3)
    first = record({"a": down}, items, cache, samples=2)
    assert first.error is not None
    assert "ConnectionError: server down" in first.error
    assert first.missing == 3
    assert len(first.matrix.responses) == 5
    up = ScriptedExpert(model="m", respond=_doubler().respond)
    second = record({"a": up}, items, cache, samples=2)
    assert up.calls == 3
    assert (second.calls, second.missing, second.error) == (3, 0, None)


def test_report_of_a_partly_failed_run_counts_its_calls(cache: AnswerCache) -> None:
    # Bug: when some calls fail, run_experts raises, `made` stays 0, and every answer
    # this run fetched is reported as taken from the (empty) cache.
    expert = _doubler(fail_on="Q1")
    report = record({"a": expert}, _numbers(3), cache, samples=2)
    assert report.error is not None
    assert len(report.matrix.responses) == 4
    assert report.cached == 0
    assert report.calls >= 4


def test_call_experts_false_exports_only_the_cache(cache: AnswerCache) -> None:
    items = _numbers(3)
    record({"a": _doubler(model="a-1b")}, items[:2], cache, samples=2)
    idle = {"a": _doubler(model="a-1b"), "b": _doubler(model="b-1b")}
    report = record(idle, items, cache, samples=2, call_experts=False)
    assert idle["a"].calls == 0
    assert idle["b"].calls == 0
    assert {(r.question_id, r.expert) for r in report.matrix.responses} == {
        ("q0", "a"),
        ("q1", "a"),
    }
    assert (report.calls, report.cached, report.missing, report.error) == (0, 4, 8, None)
    assert len(report.matrix.questions) == 3  # every question is listed


class _WrittenMeanwhile(AnswerCache):
    """A cache another recorder fills while an export reads it: each key is missing once."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.seen: set[str] = set()

    def get(self, key: str) -> Any:
        if key not in self.seen:
            self.seen.add(key)
            return None
        return super().get(key)


def test_an_export_counts_no_call_even_when_the_cache_grows_meanwhile(tmp_path: Path) -> None:
    items = _numbers(2)
    shared = _WrittenMeanwhile(tmp_path / "shared.sqlite")
    record({"a": _doubler(model="a-1b")}, items, AnswerCache(tmp_path / "shared.sqlite"), samples=1)
    report = record({"a": _doubler(model="a-1b")}, items, shared, samples=1, call_experts=False)
    assert len(report.matrix.responses) == 2
    assert (report.calls, report.cached, report.missing) == (0, 2, 0)


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 5},
        {"temperature": 0.1},
        {"max_tokens": 100},
    ],
)
def test_changed_prompt_or_sampling_misses_the_cache(
    cache: AnswerCache, change: dict[str, Any]
) -> None:
    items = _numbers(2)
    record({"a": _doubler(model="m")}, items, cache, samples=1)
    same = record({"a": _doubler(model="m")}, items, cache, samples=1, call_experts=False)
    assert len(same.matrix.responses) == 2
    changed = record(
        {"a": _doubler(model="m")}, items, cache, samples=1, call_experts=False, **change
    )
    assert changed.matrix.responses == []
    assert changed.missing == 2


def _matrix(cache: AnswerCache) -> ResponseMatrix:
    experts = {
        "right": ScriptedExpert(model="right-1b", respond=_by_prefix(RIGHT)),
        "wrong": ScriptedExpert(model="wrong-1b", respond=_by_prefix(WRONG)),
    }
    return record(experts, ITEMS, cache, samples=2, provenance={"note": "héllo"}).matrix


def test_save_load_round_trip_is_byte_identical(cache: AnswerCache, tmp_path: Path) -> None:
    matrix = _matrix(cache)
    first = matrix.save(tmp_path / "one")
    second = matrix.save(tmp_path / "two")
    names = sorted(path.name for path in first.iterdir())
    assert names == sorted([QUESTIONS_FILE, RESPONSES_FILE, PROVENANCE_FILE])
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert (first / RESPONSES_FILE).read_bytes()[4:8] == b"\0\0\0\0"  # gzip mtime
    loaded = ResponseMatrix.load(first)
    assert loaded == matrix
    assert loaded.provenance["note"] == "héllo"
    # saving what was loaded, over the same folder, changes no byte
    before = {name: (first / name).read_bytes() for name in names}
    loaded.save(first)
    assert {name: (first / name).read_bytes() for name in names} == before
    assert sorted(path.name for path in first.iterdir()) == names  # no partial files left


def test_saved_rows_are_plain_jsonl(cache: AnswerCache, tmp_path: Path) -> None:
    folder = _matrix(cache).save(tmp_path / "m")
    with gzip.open(folder / RESPONSES_FILE, "rt", encoding="utf-8") as lines:
        rows = [json.loads(line) for line in lines]
    assert len(rows) == 16
    assert set(rows[0]) == set(Response.__dataclass_fields__)


@pytest.mark.parametrize("missing", [QUESTIONS_FILE, RESPONSES_FILE])
def test_load_refuses_a_folder_missing_a_file(
    cache: AnswerCache, tmp_path: Path, missing: str
) -> None:
    folder = _matrix(cache).save(tmp_path / "m")
    (folder / missing).unlink()
    with pytest.raises(InvalidInputError, match=f"not a response matrix: {missing} is missing"):
        ResponseMatrix.load(folder)


def test_load_without_provenance_gives_empty_provenance(cache: AnswerCache, tmp_path: Path) -> None:
    matrix = _matrix(cache)
    folder = matrix.save(tmp_path / "m")
    (folder / PROVENANCE_FILE).unlink()
    loaded = ResponseMatrix.load(folder)
    assert loaded.provenance == {}
    assert loaded.responses == matrix.responses


def test_load_refuses_responses_to_unlisted_questions(cache: AnswerCache, tmp_path: Path) -> None:
    matrix = _matrix(cache)
    folder = ResponseMatrix(matrix.questions[1:], matrix.responses).save(tmp_path / "m")
    unlisted = r"responses to 1 questions it does not list, e\.g\. 'gsm8k-1'"
    with pytest.raises(InvalidInputError, match=unlisted):
        ResponseMatrix.load(folder)


def test_load_refuses_malformed_rows(cache: AnswerCache, tmp_path: Path) -> None:
    folder = _matrix(cache).save(tmp_path / "m")
    with gzip.open(folder / RESPONSES_FILE, "wt", encoding="utf-8") as out:
        out.write(json.dumps({"question_id": "gsm8k-1"}) + "\n")
    with pytest.raises(InvalidInputError, match="malformed row"):
        ResponseMatrix.load(folder)
    with gzip.open(folder / RESPONSES_FILE, "wt", encoding="utf-8") as out:
        out.write("{not json\n")
    with pytest.raises(InvalidInputError, match=r"responses\.jsonl\.gz:1 is not valid JSON"):
        ResponseMatrix.load(folder)


def test_complete_keeps_questions_every_expert_answered(cache: AnswerCache) -> None:
    experts = {"a": _doubler(fail_on="Q1", model="a-1b"), "b": _doubler(model="b-1b")}
    partial = record(experts, _numbers(3), cache, samples=2).matrix
    assert [q["id"] for q in partial.questions] == ["q0", "q1", "q2"]
    assert ("q1", "b") in partial.samples()
    core = partial.complete()
    assert [q["id"] for q in core.questions] == ["q0", "q2"]
    assert {r.question_id for r in core.responses} == {"q0", "q2"}
    assert len(core.responses) == 8
    assert core.provenance == partial.provenance
    assert core.complete() == core


def test_samples_are_grouped_in_sample_order() -> None:
    question = {"id": "q", "dataset": "d", "kind": "number", "question": "?", "answer": "1"}
    base = Response("q", "d", "a", 0, 0, "1", "1", correct=True, tokens=1, seconds=0.1)
    shuffled = [replace(base, sample=2, seed=2), base, replace(base, sample=1, seed=1)]
    matrix = ResponseMatrix([question], shuffled)
    assert [r.sample for r in matrix.samples()[("q", "a")]] == [0, 1, 2]


def test_provenance(cache: AnswerCache) -> None:
    experts = {"a": _doubler(model="a-1b"), "b": _doubler(model="b-1b")}
    report = record(
        experts,
        _numbers(2),
        cache,
        samples={"a": 3, "b": 1},
        seed=7,
        temperature=0.5,
        provenance={
            "experts": {"a": {"file": "a-1b.Q4_K_M.gguf", "sha256": "ab12"}},
            "benchmark": {"names": ["gsm8k"], "per_dataset": 2, "seed": 3},
        },
    )
    provenance = report.matrix.provenance
    assert provenance["experts"] == {
        "a": {"samples": 3, "strategy": "reason", "file": "a-1b.Q4_K_M.gguf", "sha256": "ab12"},
        "b": {"samples": 1, "strategy": "reason"},
    }
    assert provenance["benchmark"] == {"names": ["gsm8k"], "per_dataset": 2, "seed": 3}
    assert provenance["sampling"]["temperature"] == 0.5
    assert provenance["sampling"]["seed"] == 7
    assert provenance["sampling"]["max_tokens"] is None
    assert "seed + j" in provenance["sampling"]["seeds"]
    assert provenance["prompt"]["contract"] == contract_snapshot()
    assert provenance["prompt"]["program_packages"] == ["numpy", "sympy"]
    assert set(provenance["packages"]) == set(PACKAGES)
    assert isinstance(provenance["packages"]["avengers-graph"], str)
    assert isinstance(provenance["packages"]["langchain-core"], str)
    assert datetime.fromisoformat(provenance["created"]).tzinfo is not None


def test_provenance_records_the_prompt_contract(cache: AnswerCache) -> None:
    report = record({"a": _doubler()}, _numbers(1), cache, samples=1)
    provenance = report.matrix.provenance
    contract = provenance["prompt"]["contract"]
    assert contract["number"]["instructions"]["reason"].endswith("in \\boxed{}.")
    assert contract["choice"]["max_tokens"] == {"direct": 16, "reason": 1024}
    assert provenance["experts"] == {"a": {"samples": 1, "strategy": "reason"}}
    json.dumps(provenance)  # serialisable as recorded


def test_read_only_max_tokens_mapping_can_be_saved(cache: AnswerCache, tmp_path: Path) -> None:
    # Bug: provenance keeps max_tokens as passed; a read-only Mapping (MappingProxyType,
    # as the package's own registries are) is not JSON serialisable, so save() fails
    # after writing the two row files, leaving a folder that loads with no provenance.
    caps = MappingProxyType({"number": 7, "choice": 5})
    report = record({"a": _doubler()}, _numbers(1), cache, samples=1, max_tokens=caps)
    folder = report.matrix.save(tmp_path / "m")
    assert ResponseMatrix.load(folder).provenance["sampling"]["max_tokens"] == dict(caps)


def test_the_default_matrix_is_the_packaged_folder() -> None:
    from avengers_graph.eval.recording import DEFAULT_MATRIX

    assert (DEFAULT_MATRIX / "README.md").is_file()
    assert DEFAULT_MATRIX.parent.name == "data"


def test_complete_does_not_wait_for_experts_whose_strategy_does_not_serve() -> None:
    questions = [
        {"id": "n", "dataset": "gsm8k", "kind": "number", "format": "number", "question": "?"},
        {"id": "c", "dataset": "arc", "kind": "choice", "format": "choice", "question": "?"},
    ]
    rows = [
        Response("n", "gsm8k", "q:reason", 0, 0, "1", "1", correct=True, tokens=1, seconds=0.1),
        Response("n", "gsm8k", "q:program", 0, 0, "1", "1", correct=True, tokens=1, seconds=0.1),
        Response("c", "arc", "q:reason", 0, 0, "B", "B", correct=True, tokens=1, seconds=0.1),
    ]
    provenance = {
        "experts": {"q:reason": {"strategy": "reason"}, "q:program": {"strategy": "program"}}
    }
    matrix = ResponseMatrix(questions, rows, provenance)
    # programs do not answer choice questions: "c" is complete without one
    assert [q["id"] for q in matrix.complete().questions] == ["n", "c"]
    assert matrix.expected(questions[1]) == ["q:reason"]
    partial = ResponseMatrix(questions, rows[1:], provenance)
    assert [q["id"] for q in partial.complete().questions] == ["c"]
