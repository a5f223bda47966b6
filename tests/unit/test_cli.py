"""The ``avengers`` CLI through typer's runner (commands that need no model server)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import BaseMessage, SystemMessage
from rich.console import Console
from typer.testing import CliRunner

from avengers_graph import ChatAvengers
from avengers_graph.app import embedded
from avengers_graph.app.cli import (
    FORMAT_NAMES,
    REGISTRY_NAMES,
    StatusLine,
    app,
    explain,
    vote_labels,
)
from avengers_graph.app.embedded import read_jsonl
from avengers_graph.errors import InvalidInputError
from avengers_graph.formats import FORMATS
from avengers_graph.local.models import MODELS
from avengers_graph.local.pool import ServerInfo
from tests.fakes import KeywordEmbeddings, ScriptedExpert
from tests.unit.conftest import write_two_domain_store

runner = CliRunner()
NARROW = {"COLUMNS": "80"}
WIDE = {"COLUMNS": "200"}


def flat(output: str) -> str:
    """Rich wraps lines at the terminal width: compare on single-spaced text (no borders)."""
    return " ".join(re.sub(r"[\u2500-\u257f]", " ", output).split())


def assert_fits(output: str, width: int = 80) -> None:
    """Every line fits ``width`` columns and nothing was cut short with an ellipsis."""
    for line in output.splitlines():
        assert len(line) <= width, line
    assert "\u2026" not in output


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
    result = runner.invoke(app, ["inspect", "--config", str(pool_file)], env=NARROW)
    assert result.exit_code == 0, result.output
    assert "unit: 2 clusters, keyword-embeddings" in flat(result.output)
    assert "mathy 90% (9/10)" in flat(result.output)  # the math cluster's best
    assert "coder 90% (9/10)" in flat(result.output)  # the code cluster's best
    assert "mathy 55% (11/20) 1 clusters" in flat(result.output)  # overall
    assert_fits(result.output)
    wide = runner.invoke(app, ["inspect", "--config", str(pool_file), "--wide"], env=WIDE)
    assert "20% (2/10)" in wide.output  # mathy on the code cluster
    as_json = runner.invoke(app, ["inspect", "--config", str(pool_file), "--json"])
    record = json.loads(as_json.stdout)
    assert record["n_clusters"] == 2
    assert record["clusters"][1]["experts"]["mathy"] == {
        "correct": 2,
        "total": 10,
        "accuracy": 0.2,
    }


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
    assert f"start them with `avengers local up --config {config}`" in flat(result.output)


def test_read_jsonl_names_the_bad_line(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "q", "answer": "1", "kind": "number"}\n\n{oops\n')
    with pytest.raises(InvalidInputError, match=r"d.jsonl:3"):
        read_jsonl(data)
    with pytest.raises(InvalidInputError, match="does not exist"):
        read_jsonl(tmp_path / "missing.jsonl")


RECORD: dict[str, Any] = {
    "clusters": [
        {"id": 3, "distance": 0.12, "weight": 0.93},
        {"id": 12, "distance": 0.95, "weight": 0.07},
    ],
    "experts": [
        {"name": "qwen2.5-coder-1.5b:reason", "score": 10.0, "strategy": "reason", "weight": 2.5},
        {"name": "smollm2-135m:direct", "score": 0.9, "strategy": "direct", "weight": 0.25},
        {"name": "gemma3-270m", "score": 0.5, "strategy": "program", "weight": 0.125},
    ],
    "samples": [
        {"expert": "qwen2.5-coder-1.5b:reason", "text": "It is \\boxed{42}", "answer": "42"},
        {"expert": "qwen2.5-coder-1.5b:reason", "text": "So 42.", "answer": "42"},
        {"expert": "smollm2-135m:direct", "text": "41.75", "answer": "41.75"},
    ],
    "votes": {"42": 5.0, "41.75": 0.25},
    "confidence": 0.8765,
    "failures": {"gemma3-270m": "ConnectionError: down"},
    "cancelled": 1,
    "winner": "qwen2.5-coder-1.5b:reason",
    "answer_format": "number",
    "question_format": "number",
    "excluded": ["smollm2-135m:reason"],
    "rounds": 2,
    "seed": 1,
}


def rendered(record: dict[str, Any], *, wide: bool = False, width: int = 80) -> str:
    console = Console(record=True, width=width)
    for renderable in explain("what?", "It is \\boxed{42}", record, wide=wide):  # type: ignore[arg-type]
        console.print(renderable)
    return console.export_text()


def test_explain_fits_80_columns_and_shows_the_routing() -> None:
    text = rendered(RECORD)
    assert_fits(text)
    for fragment in (
        "format: number",
        "#3 (distance 0.120, weight 0.93), #12 (distance 0.950, weight 0.07)",
        "qwen2.5-coder-1.5b:reason reason 10.00 2.50",
        "smollm2-135m:direct direct 0.90 0.25",
        "42 5.00 2",
        "41.75 0.25 1",
        "confidence: 88%",
        "winner: qwen2.5-coder-1.5b:reason",
        "3 samples, 2 rounds, 1 not needed",
        "failed: gemma3-270m: ConnectionError: down",
        "A: It is \\boxed{42}",
    ):
        assert fragment in flat(text), fragment
    assert "seed" not in text  # the compact view leaves the details to --wide


@pytest.mark.parametrize(
    ("confidence", "shown"),
    [(0.9996, ">99%"), (0.995, ">99%"), (0.994, "99%"), (1.0, "100%"), (0.004, "<1%"), (0.0, "0%")],
)
def test_explain_never_rounds_a_confidence_to_a_certainty(confidence: float, shown: str) -> None:
    assert f"confidence: {shown} " in flat(rendered({**RECORD, "confidence": confidence}))


def test_explain_wide_shows_samples_excluded_and_seed() -> None:
    text = rendered(RECORD, wide=True, width=200)
    for fragment in ("excluded: smollm2-135m:reason", "So 42.", "seed: 1"):
        assert fragment in flat(text), fragment


def test_explain_names_both_formats_when_the_comparison_differs() -> None:
    record = {**RECORD, "question_format": "free", "answer_format": "semantic"}
    assert "format: free (answers compared as semantic)" in flat(rendered(record))


def test_long_vote_keys_are_shortened_but_never_look_alike() -> None:
    same_start = "def solve(numbers):\n    return sorted(numbers)["
    keys = [same_start + "0]", same_start + "-1]", "7"]
    labels = vote_labels(keys, width=24)
    assert labels["7"] == "7"
    assert len(set(labels.values())) == 3
    assert all(len(label) <= 32 for label in labels.values())
    record = {
        **RECORD,
        "votes": {keys[0]: 1.0, keys[1]: 1.0},
        "samples": [
            {"expert": "e", "text": "a", "answer": keys[0]},
            {"expert": "e", "text": "b", "answer": keys[1]},
        ],
    }
    text = rendered(record)
    assert_fits(text.replace("\u2026", "."))
    labels = re.findall(r"#[0-9a-f]{6}", text)
    assert len(set(labels)) == 2  # two different keys, two different labels


def test_help_is_plain_and_lists_what_it_takes() -> None:
    top = runner.invoke(app, ["--help"], env=NARROW)
    assert top.exit_code == 0
    for command in ("calibrate", "ask", "chat", "inspect", "local", "eval"):
        assert command in top.output
    asked = runner.invoke(app, ["ask", "--help"], env=NARROW)
    assert "<bool>" not in asked.output  # flags are flags
    for flag in ("--json", "--wide", "--system", "--format"):
        assert flag in asked.output
    fetched = runner.invoke(app, ["local", "fetch", "--help"], env=NARROW)
    for name in MODELS:
        assert name in flat(fetched.output)


def test_help_lists_stay_in_step_with_the_registry_and_the_formats() -> None:
    assert REGISTRY_NAMES.split(", ") == list(MODELS)
    assert set(FORMAT_NAMES.split(", ")) == {"auto", "semantic", *FORMATS}


def test_status_line_follows_the_events() -> None:
    now = iter([100.0, 101.2, 104.0, 109.6, 110.0])
    status = StatusLine(clock=lambda: next(now))
    routed = status.update({"avengers": "routing", "experts": [{"name": "a"}, {"name": "b"}]})
    assert routed == "1 s: asking a, b"
    assert status.update({"avengers": "sample", "expert": "a", "status": "ok"}) == (
        "4 s: 1 answer (last: a ok)"
    )
    text = status.update({"avengers": "sample", "expert": "b", "status": "failed"})
    assert text == "10 s: 2 answers, 1 failed (last: b failed)"
    assert status.update({"avengers": "other"}) is None


# -- ask and chat against scripted experts ---------------------------------------------


def math_or_code(messages: list[BaseMessage], seed: int | None) -> str:
    """Answers by topic; says so when a system prompt asked for French."""
    del seed
    french = any(isinstance(m, SystemMessage) and "French" in m.text for m in messages)
    asked = [m.text for m in messages if m.type == "human"]
    answer = "\\boxed{42}" if "math" in asked[-1] else "\\boxed{41}"
    return f"{'Voila' if french else 'So'} {answer} (turn {len(asked)})"


@pytest.fixture
def scripted(
    pool_file: Path, tmp_path: Path, embeddings: KeywordEmbeddings, monkeypatch: pytest.MonkeyPatch
) -> dict[str, ScriptedExpert]:
    """`ask` and `chat` get a ChatAvengers over scripted experts and the two-domain store."""
    experts = {
        name: ScriptedExpert(model=f"{name}-7b", respond_to=math_or_code)
        for name in ("mathy", "coder", "bard")
    }
    store = write_two_domain_store(tmp_path / "store", embeddings)

    def chat_model(settings: Any, pool: Any, overrides: Any = None) -> ChatAvengers:
        options = {k: v for k, v in (overrides or {}).items() if v is not None}
        return ChatAvengers(experts=experts, embeddings=embeddings, store=store, **options)

    monkeypatch.setattr(embedded, "chat_model", chat_model)
    return experts


def test_ask_explains_in_80_columns(scripted: dict[str, ScriptedExpert], pool_file: Path) -> None:
    args = ["ask", "a math question?", "--config", str(pool_file), "--samples", "2"]
    result = runner.invoke(app, args, env=NARROW)
    assert result.exit_code == 0, result.output
    assert_fits(result.output)
    text = flat(result.output)
    assert "Q: a math question?" in text
    assert "format: free" in text or "format: number" in text
    assert "mathy reason" in text
    assert "A: So \\boxed{42} (turn 1)" in text
    assert scripted["mathy"].calls == 2


def test_ask_takes_a_system_prompt_a_format_and_stdin(
    scripted: dict[str, ScriptedExpert], pool_file: Path
) -> None:
    args = ["ask", "-", "--config", str(pool_file), "--system", "Answer in French.", "--json"]
    args += ["--format", "number", "--top-n", "1", "--samples", "1"]
    result = runner.invoke(app, args, input="the math question, from a pipe\n")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["answer"] == "Voila \\boxed{42} (turn 1)"
    assert record["question_format"] == "number"
    assert record["votes"] == {"42": 1.0}
    assert record["usage"]["total_tokens"] > 0
    empty = runner.invoke(app, ["ask", "-", "--config", str(pool_file)], input="  \n")
    assert empty.exit_code == 1
    assert "empty" in empty.output


def test_ask_refuses_an_unknown_format_in_one_line(
    scripted: dict[str, ScriptedExpert], pool_file: Path
) -> None:
    result = runner.invoke(app, ["ask", "q", "--config", str(pool_file), "--format", "numbr"])
    assert result.exit_code == 1
    assert "error:" in result.output
    assert "Traceback" not in result.output


def test_chat_keeps_the_conversation_and_explains(
    scripted: dict[str, ScriptedExpert], pool_file: Path
) -> None:
    turns = "a math question?\n/explain\nand the code one?\n/system Answer in French.\n"
    turns += "again the math one\n/reset\nmath once more\n/quit\nnever read\n"
    args = ["chat", "--config", str(pool_file), "--top-n", "1", "--samples", "1"]
    result = runner.invoke(app, args, input=turns, env=NARROW)
    assert result.exit_code == 0, result.output
    assert_fits(result.output)
    text = flat(result.output)
    assert "avengers> So \\boxed{42} (turn 1)" in text
    assert "seed:" in text  # /explain: the full routing of the last answer
    assert "avengers> So \\boxed{41} (turn 2)" in text  # a follow-up sees the first turn
    assert "avengers> Voila \\boxed{42} (turn 3)" in text  # the system prompt applies
    assert "conversation forgotten" in text
    assert "avengers> Voila \\boxed{42} (turn 1)" in text  # reset: a new conversation
    assert "never read" not in text
    assert sum(e.calls for e in scripted.values()) == 4


def test_ask_on_an_uncalibrated_store_fails_at_once_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "pool.yaml"
    config.write_text("experts:\n  - {name: a, base_url: 'http://127.0.0.1:9/v1', model: m}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    env = {"AVENGERS_CACHE_DIR": str(tmp_path / "cache")}
    result = runner.invoke(app, ["ask", "hi", "--config", str(config)], env=env)
    assert result.exit_code == 1
    assert f"run `avengers calibrate --config {config}`" in flat(result.output)
    assert str(tmp_path / "cache" / "store") in flat(result.output)
    assert list(elsewhere.iterdir()) == []  # no .avengers/ in the working directory
    assert not (tmp_path / "cache" / "store").exists()


# -- local status, calibrate --------------------------------------------------------------


def test_local_status_shows_full_urls_in_80_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from avengers_graph.local import pool as local_pool

    servers = [
        (
            ServerInfo(
                model=name,
                port=49673 + i,
                pid=4242 + i,
                host="127.0.0.1",
                model_path=str(tmp_path / "models" / f"{name}.gguf"),
                started_at="2026-12-06T17:08:00+00:00",
                slots=3,
                threads=1,
            ),
            "healthy",
        )
        for i, name in enumerate(MODELS)
    ]
    monkeypatch.setattr(local_pool.LocalPool, "status", lambda self: servers)
    env = {**NARROW, "AVENGERS_CACHE_DIR": str(tmp_path)}
    result = runner.invoke(app, ["local", "status"], env=env)
    assert result.exit_code == 0, result.output
    assert_fits(result.output)
    lines = result.output.splitlines()
    for i, name in enumerate(MODELS):
        url = f"http://127.0.0.1:{49673 + i}/v1"
        assert any(name in line and url in line for line in lines), (name, url)
    wide = runner.invoke(app, ["local", "status", "--wide"], env={**env, **WIDE})
    assert "`local down`" in wide.output
    assert "3" in wide.output


def test_local_fetch_names_what_it_accepts(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["local", "fetch", "llama-70b"], env={"AVENGERS_CACHE_DIR": str(tmp_path)}
    )
    assert result.exit_code == 1
    assert "Unknown model 'llama-70b'" in flat(result.output)
    for name in MODELS:
        assert name in flat(result.output)


def test_local_up_ports_are_checked_before_anything_starts(tmp_path: Path) -> None:
    env = {"AVENGERS_CACHE_DIR": str(tmp_path)}
    both = ["local", "up", "smollm2-135m", "gemma3-270m"]
    result = runner.invoke(app, [*both, "--port", "8081"], env=env)
    assert result.exit_code == 1
    assert "give NAME=PORT" in flat(result.output)
    result = runner.invoke(app, [*both, "--port", "qwen=8081"], env=env)
    assert "not served: qwen" in flat(result.output)
    result = runner.invoke(app, [*both, "--port", "gemma3-270m=70000"], env=env)
    assert "1..65535" in flat(result.output)
