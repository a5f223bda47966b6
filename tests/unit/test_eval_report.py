"""The replay report: tables, sweeps and headline on the hand-built matrix of test_replay."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import pytest

from avengers_graph.eval.report import PAPER, ReportOptions, markdown, write_report
from tests.unit.test_replay import MATRIX, VECTORS

pytestmark = pytest.mark.filterwarnings("ignore:Number of distinct clusters")

COSTS = {"math": 0.5, "facts": 1.5, "cheap": 0.1}
OPTIONS = ReportOptions(
    seeds=(0, 1),
    n_clusters=2,
    cluster_grid=(2, 4, 64),
    sample_grid=(1, 3, 6),
    cost_grid=(1.0, 0.0),
)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("matplotlib")
    matrix = replace(
        MATRIX, provenance={"experts": {name: {"cost": c} for name, c in COSTS.items()}}
    )
    out = tmp_path_factory.mktemp("report")
    write_report(matrix, VECTORS, out, OPTIONS)
    return out


def test_summary_has_every_strategy_with_known_numbers(report: Path) -> None:
    rows = {row["strategy"]: row for row in _rows(report / "summary.csv")}
    assert {"Random", "Best-Single", "Best-Single SC", "Max-Expert", "Oracle", PAPER} <= set(rows)
    paper = rows[PAPER]
    assert float(paper["algebra"]) == 1.0
    assert float(paper["average"]) == 1.0
    assert float(paper["gain vs Best-Single"]) == pytest.approx(0.5)
    assert float(paper["gap to Oracle"]) == 0.0
    assert float(rows["Random"]["gap to Oracle"]) == pytest.approx(1 - 1 / 6)
    assert float(paper["calls/q"]) == 3
    assert float(rows["Best-Single"]["calls/q"]) == 1
    assert "| strategy |" in (report / "summary.md").read_text()


def test_sweeps_are_written_and_skip_impossible_k(report: Path) -> None:
    clusters = _rows(report / "sweep_clusters.csv")
    assert [row["K"] for row in clusters] == ["2", "4"]  # 64 > 14 calibration questions
    assert float(clusters[0][PAPER]) == 1.0
    pool = _rows(report / "sweep_pool.csv")
    assert [row["pool size"] for row in pool] == ["1", "2", "3"]
    assert [row["sub-pools"] for row in pool] == ["3", "3", "1"]
    assert float(pool[1]["ensemble best"]) == 1.0
    assert pool[1]["best sub-pool"] == "math + facts"
    samples = _rows(report / "sweep_samples.csv")
    assert float(samples[0]["top-1 expert"]) == 0.5  # one sample: math's first is wrong
    assert float(samples[1]["top-1 expert"]) == 1.0  # three: the majority is right
    assert float(samples[2]["top-1 expert calls"]) == 3  # capped by what was recorded
    cost = {row["a"]: row for row in _rows(report / "sweep_cost.csv")}
    assert float(cost["0.0"]["accuracy"]) == 0.0  # the cheapest expert is always wrong
    assert float(cost["0.0"]["tokens/q"]) == 1.0
    for name in ("sweep_clusters", "sweep_pool", "sweep_samples", "sweep_cost"):
        assert (report / f"{name}.png").read_bytes().startswith(b"\x89PNG")


def test_headline_compares_small_models_with_the_big_one(report: Path) -> None:
    rows = {row["system"]: row for row in _rows(report / "headline.csv")}
    small = rows[f"2 models <= 0.5B: {PAPER}"]
    assert float(small["accuracy"]) == 0.5  # algebra right (math SC), trivia wrong
    big = rows["facts alone, 1 sample"]
    assert float(big["accuracy"]) == 0.5
    assert float(big["tokens/q"]) == 20


def test_paired_table_has_each_strategy_against_best_single_and_the_headline(
    report: Path,
) -> None:
    rows = {(row["strategy"], row["against"]): row for row in _rows(report / "paired.csv")}
    paper = rows[(PAPER, "Best-Single")]
    assert [float(paper[c]) for c in ("gain", "95 % low", "95 % high")] == [0.5, 0.5, 0.5]
    assert (float(paper["wins/split"]), float(paper["losses/split"])) == (3.0, 0.0)
    assert ("Best-Single", "Best-Single") not in rows
    # the small models get algebra right and trivia wrong, facts alone the reverse
    small = rows[(f"2 models <= 0.5B: {PAPER}", "facts alone, 1 sample")]
    assert [float(small[c]) for c in ("gain", "95 % low", "95 % high")] == [0.0, 0.0, 0.0]
    assert (float(small["wins/split"]), float(small["losses/split"])) == (3.0, 3.0)
    assert "| strategy | against |" in (report / "paired.md").read_text()


def test_compute_curve_puts_both_sides_on_one_compute_axis(report: Path) -> None:
    # small: math (0.5) and cheap (0.1), 3 samples each; big: facts (1.5), 20 tokens
    rows = _rows(report / "headline_compute.csv")
    curve = {(row["system"], int(row["samples/q"])): row for row in rows}
    top1 = "2 models <= 0.5B, top-1 expert"
    split = "2 models <= 0.5B, top_n=2, split"
    assert sorted(k for k in curve if k[0] == top1) == [(top1, 1), (top1, 3)]  # 3 recorded
    assert sorted(b for name, b in curve if name == split) == [1, 3, 6]
    # math routed on both datasets (ties go to pool order): 3 samples x 10 tokens x 0.5
    assert float(curve[(top1, 3)]["compute/q"]) == pytest.approx(15)
    assert float(curve[(top1, 3)]["accuracy"]) == 0.5  # SC rescues algebra
    assert float(curve[(top1, 1)]["accuracy"]) == 0.0
    assert float(curve[(split, 6)]["compute/q"]) == pytest.approx(15 + 3 * 1 * 0.1)
    big = curve[("facts alone", 1)]
    assert (float(big["accuracy"]), float(big["compute/q"])) == (0.5, pytest.approx(30))
    assert (report / "headline_compute.png").read_bytes().startswith(b"\x89PNG")


def test_markdown_formats_percent_columns() -> None:
    table = markdown([{"name": "x", "acc": 0.5, "n": 3}], percent=["acc"])
    assert table.splitlines()[2] == "| x | 50.0 | 3 |"
