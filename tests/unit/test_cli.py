"""The ``avengers`` CLI through typer's runner (commands that need no model server)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from avengers_graph.app.cli import app, explain
from avengers_graph.app.embedded import read_jsonl
from avengers_graph.errors import InvalidInputError
from tests.unit.conftest import write_two_domain_store

runner = CliRunner()


def flat(output: str) -> str:
    """Rich wraps lines at the terminal width: compare on single-spaced text."""
    return " ".join(output.split())


@pytest.fixture
def pool_file(tmp_path: Path, embeddings) -> Path:
    write_two_domain_store(tmp_path / "store", embeddings)
    config = tmp_path / "pool.yaml"
    config.write_text(
        "experts:\n"
        "  - {name: mathy, base_url: 'http://127.0.0.1:9/v1', model: m}\n"
        "  - {name: coder, base_url: 'http://127.0.0.1:9/v1', model: c}\n"
        "  - {name: bard, base_url: 'http://127.0.0.1:9/v1', model: b}\n"
        f"store: {{path: '{tmp_path / 'store'}', name: unit}}\n"
    )
    return config


def test_inspect_prints_the_cluster_table(pool_file: Path) -> None:
    result = runner.invoke(app, ["inspect", "--config", str(pool_file)])
    assert result.exit_code == 0, result.output
    assert "unit: 2 clusters, keyword-embeddings" in flat(result.output)
    assert "90% (9/10)" in result.output  # mathy on the math cluster
    assert "20% (2/10)" in result.output  # mathy on the code cluster


def test_inspect_plot_writes_pngs(pool_file: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the plot extra is not installed")
    result = runner.invoke(
        app, ["inspect", "--config", str(pool_file), "--plot", str(tmp_path / "png")]
    )
    assert result.exit_code == 0, result.output
    for name in ("accuracy.png", "clusters.png"):
        png = tmp_path / "png" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_empty_store_is_one_clear_line(tmp_path: Path) -> None:
    config = tmp_path / "pool.yaml"
    config.write_text(
        "experts:\n  - {name: a, base_url: 'http://127.0.0.1:9/v1', model: m}\n"
        f"store: {{path: '{tmp_path / 'empty'}'}}\n"
    )
    result = runner.invoke(app, ["inspect", "--config", str(config)])
    assert result.exit_code == 1
    assert "error:" in result.output
    assert "calibrate" in flat(result.output)
    assert "Traceback" not in result.output


def test_malformed_pool_file_is_one_clear_line(tmp_path: Path) -> None:
    config = tmp_path / "pool.yaml"
    config.write_text("experts: [\n")
    result = runner.invoke(app, ["inspect", "--config", str(config)])
    assert result.exit_code == 1
    assert "is not valid yaml" in flat(result.output)


def test_local_expert_that_is_not_running_says_how_to_start_it(tmp_path: Path) -> None:
    config = tmp_path / "pool.yaml"
    config.write_text(
        f"experts:\n  - {{name: s, local: smollm2-135m}}\nstore: {{path: '{tmp_path / 's'}'}}\n"
    )
    result = runner.invoke(
        app, ["ask", "hi", "--config", str(config)], env={"AVENGERS_CACHE_DIR": str(tmp_path / "c")}
    )
    assert result.exit_code == 1
    assert "start it with `avengers local up smollm2-135m`" in flat(result.output)


def test_read_jsonl_names_the_bad_line(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "q", "answer": "1", "kind": "number"}\n\n{oops\n')
    with pytest.raises(InvalidInputError, match=r"d.jsonl:3"):
        read_jsonl(data)
    with pytest.raises(InvalidInputError, match="does not exist"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_explain_shows_routing_votes_and_failures() -> None:
    record = {
        "clusters": [{"id": 3, "distance": 0.12, "weight": 1.0}],
        "experts": [{"name": "mathy", "score": 10.0}, {"name": "bard", "score": 0.9}],
        "samples": [{"expert": "mathy", "text": "It is \\boxed{42}", "answer": "42"}],
        "votes": {"42": 1},
        "confidence": 1.0,
        "failures": {"bard": "ConnectionError: down"},
        "winner": "mathy",
        "answer_format": "number",
        "seed": 1,
    }
    from rich.console import Console

    console = Console(record=True, width=120)
    for renderable in explain("what?", "It is \\boxed{42}", record):  # type: ignore[arg-type]
        console.print(renderable)
    text = console.export_text()
    for fragment in (
        "#3 (distance 0.120",
        "mathy (10.00)",
        "'42': 1",
        "confidence: 100%",
        "bard: ConnectionError",
    ):
        assert fragment in text
