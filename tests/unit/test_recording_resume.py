"""A recording resumes from a matrix it wrote earlier, on a machine whose cache is gone."""

from __future__ import annotations

from pathlib import Path

import pytest

from avengers_graph import InvalidInputError
from avengers_graph.eval.recording import ResponseMatrix, record
from avengers_graph.experts.cache import AnswerCache
from tests.fakes import ScriptedExpert

ITEMS = [
    {
        "id": f"q{i}",
        "dataset": "toy",
        "kind": "number",
        "question": f"{i} + 1?",
        "answer": str(i + 1),
    }
    for i in range(4)
]


def _expert() -> ScriptedExpert:
    return ScriptedExpert(model="toy", respond=lambda q, seed: f"The answer is {q.split()[0]}")


def _seeded_only(
    items: list[dict[str, str]], matrix: ResponseMatrix, tmp_path: Path
) -> ResponseMatrix:
    """What a resume from ``matrix`` keeps with a fresh cache and no expert called."""
    return record(
        {"a": _expert()},
        items,
        AnswerCache(tmp_path / "fresh.sqlite"),
        samples=2,
        resume_from=matrix,
        call_experts=False,
    ).matrix


def test_a_saved_matrix_seeds_a_fresh_cache(tmp_path: Path) -> None:
    first = _expert()
    report = record({"a": first}, ITEMS, AnswerCache(tmp_path / "one.sqlite"), samples=2)
    assert first.calls == 8
    folder = report.matrix.save(tmp_path / "matrix")

    again = _expert()
    resumed = record(
        {"a": again},
        ITEMS,
        AnswerCache(tmp_path / "fresh.sqlite"),
        samples=3,
        resume_from=ResponseMatrix.load(folder),
    )
    assert again.calls == 4  # only the third sample of each question is new
    assert len(resumed.matrix.responses) == 12
    old = {(r.question_id, r.sample): r for r in report.matrix.responses}
    for response in resumed.matrix.responses:
        if response.sample < 2:
            kept = old[(response.question_id, response.sample)]
            assert (response.output, response.tokens, response.seconds) == (
                kept.output,
                kept.tokens,
                kept.seconds,
            )
            assert response.correct is False  # "The answer is i" is one short


def test_a_matrix_recorded_with_other_settings_is_refused(tmp_path: Path) -> None:
    report = record({"a": _expert()}, ITEMS, AnswerCache(tmp_path / "one.sqlite"), samples=1)
    with pytest.raises(InvalidInputError, match="another prompt contract, temperature or caps"):
        record(
            {"a": _expert()},
            ITEMS,
            AnswerCache(tmp_path / "two.sqlite"),
            samples=1,
            temperature=0.2,
            resume_from=report.matrix,
        )


def test_a_contract_change_asks_again_only_what_it_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from avengers_graph.eval import recording

    items = [
        *ITEMS[:2],
        {
            "id": "c1",
            "dataset": "toy",
            "kind": "choice",
            "question": "Pick?\nA) 1\nB) 2",
            "answer": "B",
        },
    ]
    report = record({"a": _expert()}, items, AnswerCache(tmp_path / "one.sqlite"), samples=2)
    assert len(report.matrix.responses) == 6
    snapshot = recording.contract_snapshot()
    changed = {
        **snapshot,
        "choice": {
            **snapshot["choice"],
            "instructions": {**snapshot["choice"]["instructions"], "reason": "New words."},
        },
    }
    monkeypatch.setattr(recording, "contract_snapshot", lambda: changed)
    resumed = _seeded_only(items, report.matrix, tmp_path)
    # the number questions' samples are seeded; the choice question's are not
    assert sorted({r.question_id for r in resumed.responses}) == ["q0", "q1"]


def test_a_question_now_read_as_another_format_is_asked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from avengers_graph.eval import recording
    from avengers_graph.formats import Detected

    report = record({"a": _expert()}, ITEMS[:2], AnswerCache(tmp_path / "one.sqlite"), samples=2)
    detect = recording.detect

    def reads_q1_as_text(question: str) -> Detected:
        return Detected("text") if question.startswith("1 ") else detect(question)

    monkeypatch.setattr(recording, "detect", reads_q1_as_text)
    resumed = _seeded_only(ITEMS[:2], report.matrix, tmp_path)
    assert [r.question_id for r in resumed.responses] == ["q0", "q0"]
