"""The replay report: tables, sweeps and headline on the hand-built matrix of test_replay."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from avengers_graph.eval.recording import ResponseMatrix
from avengers_graph.eval.report import PAPER, ReportOptions, markdown, write_report
from tests.unit.test_replay import MATRIX, VECTORS

pytestmark = pytest.mark.filterwarnings("ignore:Number of distinct clusters")

COSTS = {"math": 0.5, "facts": 1.5, "cheap": 0.1}
OPTIONS = ReportOptions(
    seeds=(0, 1),
    folds=None,
    select=False,
    n_clusters=2,
    cluster_grid=(2, 4, 64),
    sample_grid=(1, 3, 6),
    cost_grid=(1.0, 0.0),
)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as file:
        return list(csv.DictReader(file))


FIGURES: dict[str, Any] = {}
"""PNG name to the matplotlib Figure the report saved under it."""


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("matplotlib")
    from avengers_graph.eval import plots

    matrix = replace(
        MATRIX, provenance={"experts": {name: {"cost": c} for name, c in COSTS.items()}}
    )
    out = tmp_path_factory.mktemp("report")
    save = plots.save_figure

    def keep(fig: Any, path: Path, **kwargs: Any) -> Path:
        FIGURES[path.name] = fig
        return save(fig, path, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plots, "save_figure", keep)
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
    # Random: one sample in expectation, 2/9 on algebra and 1/3 on trivia (test_baselines)
    assert float(rows["Random"]["gap to Oracle"]) == pytest.approx(1 - (2 / 9 + 1 / 3) / 2)
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


PLOTS = ["sweep_clusters", "sweep_pool", "sweep_samples", "sweep_cost", "headline_compute"]


@pytest.mark.parametrize("name", PLOTS)
def test_every_plot_is_titled_labelled_with_error_bars_and_reference_lines(
    report: Path, name: str
) -> None:
    from matplotlib.container import ErrorbarContainer
    from matplotlib.image import imread

    png = report / f"{name}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert imread(png).shape[0] > 100
    ax = FIGURES[png.name].axes[0]
    title = ax.get_title()
    assert title.splitlines()[0]
    assert "mean of 2 seeded 70/30 splits" in title
    assert ax.get_xlabel()
    assert ax.get_ylabel() == "average test accuracy (%)"
    assert any(isinstance(c, ErrorbarContainer) for c in ax.containers)
    legend = ax.get_legend()
    assert legend is not None
    assert legend.get_title().get_text() == "error bars and bands: \u00b1 1 std over 2 splits"
    labels = [line.get_label() for line in ax.lines]
    # Best-Single is 50 % and Oracle 100 % on these splits (test_summary...)
    assert any(label.startswith("Best-Single: 50.0%") for label in labels)
    assert any(label.startswith("Oracle: 100.0%") for label in labels)
    texts = [t.get_text() for t in legend.get_texts()]
    assert any(t.startswith("Best-Single") for t in texts)


def test_sweep_plots_show_each_accuracy_column_with_its_spread(report: Path) -> None:
    ax = FIGURES["sweep_samples.png"].axes[0]
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts[:3] == [
        "top-1 expert, all samples from it",
        "top 2 experts, samples split between them",
        "top 3 experts, samples split between them",
    ]
    assert next(t for t in ax.get_xticklabels() if t.get_text()).get_text() == "1"
    rows = _rows(report / "sweep_samples.csv")
    assert {"top-1 expert std", "top_n=2, split std"} <= set(rows[0])
    assert float(rows[0]["top-1 expert std"]) == 0.0  # the same accuracy in both splits
    pool = _rows(report / "sweep_pool.csv")
    assert {"ensemble mean std", "ensemble best std", "best single of that pool std"} <= set(
        pool[0]
    )
    cost = FIGURES["sweep_cost.png"]
    assert cost.axes[1].get_ylabel().startswith("compute per question")  # the right axis
    assert FIGURES["sweep_clusters.png"].axes[0].get_xscale() == "log"


def test_compute_plot_labels_the_big_models_self_consistency(report: Path) -> None:
    ax = FIGURES["headline_compute.png"].axes[0]
    assert ax.get_xlabel().startswith("compute per question")
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "facts alone: majority of its samples (SC)" in texts
    points = [t.get_text() for t in ax.texts if "Oracle" not in t.get_text()]
    # the small systems' lines end at 3 and 6 samples; facts alone: 1 and 3 (all recorded)
    assert sorted(points) == ["1 sample", "3 samples", "6 samples", "SC of 3"]
    rows = _rows(report / "headline_compute.csv")
    assert "accuracy std" in rows[0]


def test_the_chosen_ensemble_is_reported_with_its_calibration(tmp_path: Path) -> None:
    matrix = ResponseMatrix(
        MATRIX.questions,
        MATRIX.responses,
        provenance={"experts": {name: {"cost": c} for name, c in COSTS.items()}},
    )
    options = ReportOptions(n_clusters=2, folds=4, select=True, grid_clusters=(2,), sweeps=False)
    summary, written = write_report(matrix, VECTORS, tmp_path, options)
    names = {path.name for path in written}
    assert {"calibration.csv", "calibration.md", "chosen.csv", "paired.csv"} <= names
    assert len(summary.chosen) == 4
    paired = {(row["strategy"], row["against"]) for row in _rows(tmp_path / "paired.csv")}
    # the reference is the largest model (by cost): its self-consistency is a yardstick
    assert ("Ensemble (chosen on calibration)", "facts SC") in paired
    assert ("Ensemble (chosen on calibration)", "Best-Single") in paired
    assert "Expected calibration error" in (tmp_path / "calibration.md").read_text()
    # facts's first sample is right on every trivia question, math's on no algebra one
    assert {row["best single"] for row in _rows(tmp_path / "chosen.csv")} == {"facts"}
    assert summary.best_single == ["facts"] * 4


def test_budget_table_counts_samples_at_the_cap() -> None:
    from dataclasses import replace as with_

    from avengers_graph.eval.report import budget_rows

    capped = [with_(r, capped=r.expert == "cheap" and r.sample == 0) for r in MATRIX.responses]
    rows = {row["expert"]: row for row in budget_rows(ResponseMatrix(MATRIX.questions, capped))}
    # cheap's first of three samples stopped at its budget on every question
    assert rows["cheap"]["all"] == pytest.approx(1 / 3)
    assert rows["math"]["all"] == 0
    assert rows["facts"]["tokens/sample"] == 20


def test_expert_table_is_each_experts_share_of_right_samples() -> None:
    from avengers_graph.eval.report import expert_rows

    rows = {row["expert"]: row for row in expert_rows(MATRIX)}
    # math gets samples 1 and 2 of 3 right on algebra; facts every trivia sample; cheap none
    assert (rows["math"]["algebra"], rows["math"]["trivia"]) == (pytest.approx(2 / 3), 0)
    assert rows["math"]["all"] == pytest.approx(1 / 3)
    assert (rows["facts"]["algebra"], rows["facts"]["trivia"], rows["facts"]["all"]) == (0, 1, 0.5)
    assert rows["cheap"]["all"] == 0
    assert rows["cheap"]["samples"] == 60
