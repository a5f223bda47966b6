"""docs/benchmarks.md is rendered from the tables the replay wrote (tools/benchmarks_doc.py)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from avengers_graph import AvengersOptions
from avengers_graph.app.config import load_pool_config
from avengers_graph.eval.recording import ResponseMatrix
from avengers_graph.eval.replay import CHOSEN, INCUMBENT, default_grid
from avengers_graph.eval.report import RECOMMENDED, ReportOptions, write_report
from tests.tools import load_tool
from tests.unit.test_replay import MATRIX, VECTORS

pytestmark = pytest.mark.filterwarnings("ignore:Number of distinct clusters")

COSTS = {"math": 0.5, "facts": 1.5, "cheap": 0.1}


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    matrix = ResponseMatrix(
        MATRIX.questions,
        MATRIX.responses,
        provenance={"experts": {name: {"cost": c} for name, c in COSTS.items()}},
    )
    tables = tmp_path_factory.mktemp("benchmarks") / "report"  # the report makes it
    options = ReportOptions(n_clusters=2, folds=4, select=True, grid_clusters=(2,), sweeps=False)
    write_report(matrix, VECTORS, tables, options)
    tool = load_tool("benchmarks_doc")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tool, "TABLES", tables)
        return tool.render(matrix), tables


def _summary(tables: Path) -> dict[str, dict[str, str]]:
    with (tables / "summary.csv").open(encoding="utf-8") as file:
        return {row["strategy"]: row for row in csv.DictReader(file)}


def test_the_headline_is_the_ensemble_chosen_on_calibration(page: tuple[str, Path]) -> None:
    text, tables = page
    summary = _summary(tables)
    headline = text.split("## Headline numbers", 1)[1].split("\n## ", 1)[0]
    chosen = f"**{CHOSEN}**: **{float(summary[CHOSEN]['average']) * 100:.1f} %**"
    assert chosen in headline
    assert "Against facts SC" in headline  # the largest model's self-consistency
    assert "95 % interval" in headline
    with (tables / "paired.csv").open(encoding="utf-8") as file:
        paired = next(
            row
            for row in csv.DictReader(file)
            if (row["strategy"], row["against"]) == (CHOSEN, "Best-Single")
        )
    assert f"from about **{paired['questions for +/-3 points']} questions** on" in headline
    assert f"this replay tested {paired['questions']}." in headline


def test_each_written_table_has_its_section_and_no_other(page: tuple[str, Path]) -> None:
    text, _ = page
    titles = ("What the nested selection chose", "Routing for service")
    for title in (*titles, "Is the confidence a probability?"):
        assert f"## {title}" in text
    for title in ("The experts", "Budgets", "Ensemble against its members"):
        assert f"## {title}" in text
    assert "## Clusters (K)" not in text  # no sweeps were run
    assert text.count("| fold | configuration | Best-Single |") == 1
    assert "| 3 | K=2 " in text  # the fourth fold's choice
    assert text.count(" | facts |") == 4  # each fold's Best-Single


def test_the_headline_says_in_how_many_folds_the_incumbent_was_kept(
    page: tuple[str, Path], tmp_path: Path
) -> None:
    text, _ = page
    assert "the selection kept" not in text  # routing by cluster won every fold
    tool = load_tool("benchmarks_doc")
    (tmp_path / "chosen.csv").write_text(
        "split,configuration,best single\n"
        f'0,"{INCUMBENT}",facts\n1,K=2 top_n=1,facts\n2,"{INCUMBENT}",facts\n',
        encoding="utf-8",
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tool, "TABLES", tmp_path)
        assert f"In 2 of 3 folds the selection kept `{INCUMBENT}`" in tool._incumbent_folds()


def test_a_recording_short_of_its_draw_is_marked_interim() -> None:
    tool = load_tool("benchmarks_doc")
    draw = {"names": ["algebra", "trivia"], "per_dataset": 10, "more": 5}
    grown = ResponseMatrix(MATRIX.questions, MATRIX.responses, provenance={"benchmarks": draw})
    # all 20 recorded questions are complete, but the draw holds 2 x (10 + 5)
    assert "the 20 of 30 planned questions" in tool._interim(grown, grown.complete())
    whole = ResponseMatrix(MATRIX.questions, MATRIX.responses, provenance={})
    assert tool._interim(whole, whole.complete()) == ""


def test_the_report_recommends_the_routing_chosen_on_every_question(
    page: tuple[str, Path], tmp_path: Path
) -> None:
    _, tables = page
    snippet = (tables / RECOMMENDED).read_text(encoding="utf-8")
    assert snippet.startswith("# Chosen by `avengers eval replay` on all 20 questions")
    # a pool file with the snippet pasted in loads, and routes with those options
    pool_file = tmp_path / "pool.yaml"
    pool_file.write_text(
        "experts:\n  - {name: math, base_url: 'http://h/v1', model: m}\n" + snippet,
        encoding="utf-8",
    )
    pool = load_pool_config(pool_file)
    routing = yaml.safe_load(snippet)["routing"]
    assert pool.routing.as_kwargs() == routing
    assert routing["weighted"] is True
    assert pool.calibration.as_kwargs() == {"n_clusters": 2}  # the grid's only K


def test_every_configuration_of_the_grid_is_a_valid_graph_configuration() -> None:
    for config in default_grid():
        options = AvengersOptions(**config.options())
        assert (options.samples, options.reliability_prior) == (
            config.per_expert,
            config.prior_strength,
        )


def test_the_page_shows_each_folds_best_challenger_against_the_bar(
    page: tuple[str, Path],
) -> None:
    text, tables = page
    with (tables / "chosen.csv").open(encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert "| fold | configuration | Best-Single | best challenger | its t | bar |" in text
    for row in rows:
        if row["best challenger"]:  # a guard ran: the choice follows from t and the bar
            won = float(row["t"]) > float(row["bar"])
            assert (row["configuration"] == row["best challenger"]) == won
        else:
            assert row["t"] == row["bar"] == ""
        line = f"| {row['split']} | {row['configuration']} | {row['best single']} "
        assert line + f"| {row['best challenger']} | {row['t']} | {row['bar']} |" in text
