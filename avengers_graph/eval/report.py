"""Tables and sweeps of the offline replay (``avengers eval replay``), as CSV, Markdown, PNG.

:func:`write_report` runs :func:`avengers_graph.eval.replay.evaluate` for the baselines and
the default configurations, then the sweeps, and writes into one folder:

- ``summary.csv`` / ``summary.md``: accuracy per dataset and on average, gain over
  Random and over Best-Single, gap to Oracle, expert calls, generated tokens, compute
  (tokens times the expert's cost per token) and expert seconds per question;
- ``sweep_clusters``: the paper's configuration for K = 2 ... 64;
- ``sweep_pool``: every sub-pool of 1 ... 4 experts (mean and best over sub-pools);
- ``sweep_samples``: 1 ... 10 samples per question, on one expert or split over 2-3;
- ``sweep_cost``: the cost-aware ranking's weight ``a`` from 1 (accuracy) to 0 (compute);
- ``headline``: the experts of at most 0.5B parameters together against the 1.5B alone;
  ``headline_compute``: the same as accuracy against compute, 1 ... 10 samples per
  question;
- ``paired.csv`` / ``paired.md``: every strategy against Best-Single, and the small
  models' systems against the 1.5B alone, paired on the same test questions: the gain,
  its 95 % bootstrap interval over questions (:func:`~avengers_graph.eval.replay.compare`),
  the questions per split each side gets right where the other does not, the test
  questions compared and how many it would take for the interval to be +/- 3 points
  wide (:meth:`~avengers_graph.eval.replay.Comparison.questions_for`);
- ``budgets``: per expert and dataset, the share of samples that stopped at the token
  budget; ``experts``: the share of right samples (what one sample of each expert is
  worth, over every recorded question);
- with the nested selection, ``chosen.csv`` (the configuration each calibration split
  chose; the most accurate challenger of the incumbent, its gain in standard errors
  ``t`` and the ``bar`` it had to clear) and ``calibration``: the chosen ensemble's
  confidence against its accuracy.

Each sweep is a ``.csv`` and a ``.png`` (with the ``plot`` extra). Next to each accuracy,
a ``<column> std`` column holds its standard deviation over the seeded splits; the plots
draw it as error bars, with Best-Single and Oracle of the same splits as horizontal lines.
"""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from avengers_graph.errors import InvalidInputError, MissingExtraError
from avengers_graph.eval.plots import ACCURACY_LABEL, Reference, Series
from avengers_graph.eval.recording import Response, ResponseMatrix
from avengers_graph.eval.replay import (
    AVERAGE,
    BASELINES,
    CHOSEN,
    AdaptiveConfig,
    Comparison,
    EnsembleConfig,
    Outcome,
    Summary,
    calibration_curve,
    calibration_floor,
    choose_on_calibration,
    compare,
    default_configs,
    default_grid,
    evaluate,
    subsets,
)

__all__ = ["RECOMMENDED", "ReportOptions", "paired_rows", "summary_rows", "write_report"]

Row = dict[str, Any]
Vectors = Mapping[str, np.ndarray]
PAPER = "Paper: top-1 cluster, top-1 expert, SC"
STD = " std"
"""Suffix of the column holding a column's standard deviation over splits."""
RECOMMENDED = "recommended.yaml"
"""The report's pool-file snippet: the routing the selection chose on every question."""


@dataclass(frozen=True)
class ReportOptions:
    """What :func:`write_report` evaluates."""

    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    n_clusters: int = 16
    folds: int | None = 5
    """Cross-validation folds (every question tested once) instead of seeded 70/30
    splits; ``None``: the splits of ``seeds``."""
    select: bool = True
    """Choose an adaptive configuration on each calibration split alone (nested) and
    report it as ``Ensemble (chosen on calibration)``."""
    grid_clusters: tuple[int, ...] = (8, 16, 32)
    """The values of K the nested selection tries."""
    reference: str | None = None
    """The model whose self-consistency the chosen ensemble must not out-spend (default:
    the largest model of the matrix, by ``cost``)."""
    sweeps: bool = True
    cluster_grid: tuple[int, ...] = (2, 4, 8, 16, 32, 64)
    sample_grid: tuple[int, ...] = tuple(range(1, 11))
    cost_grid: tuple[float, ...] = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0)
    small_params: float = 0.5
    """The headline's "small" experts: a ``cost`` (billions of parameters) at most this."""


def summary_rows(summary: Summary) -> list[Row]:
    """One row per strategy: per-dataset and average accuracy, gains, calls, tokens."""
    best_single = summary.accuracy("Best-Single") if "Best-Single" in summary.results else None
    rows = []
    for name, results in summary.results.items():
        average = results[AVERAGE]
        row: Row = {"strategy": name}
        row.update({dataset: results[dataset].accuracy for dataset in summary.datasets})
        row["average"] = average.accuracy
        row["std over splits"] = summary.spread.get(name, 0.0)
        if "Random" in summary.results:
            row["gain vs Random"] = summary.gain(name, over="Random")
        if best_single is not None:
            row["gain vs Best-Single"] = average.accuracy - best_single
        if "Oracle" in summary.results:
            row["gap to Oracle"] = summary.accuracy("Oracle") - average.accuracy
        row["calls/q"] = average.calls
        row["tokens/q"] = average.tokens
        row["compute/q"] = average.compute
        row["expert s/q"] = average.seconds
        rows.append(row)
    return rows


def paired_rows(comparisons: Sequence[Comparison]) -> list[Row]:
    """One row per comparison: the gain, its bootstrap interval, wins and losses."""
    return [
        {
            "strategy": c.strategy,
            "against": c.over,
            "gain": c.gain,
            "95 % low": c.low,
            "95 % high": c.high,
            "wins/split": c.wins,
            "losses/split": c.losses,
            "questions": c.questions,
            "questions for +/-3 points": c.questions_for(0.03),
        }
        for c in comparisons
    ]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def markdown(rows: Sequence[Row], percent: Sequence[str] = ()) -> str:
    """A Markdown table of rows (columns in first-row order); ``percent`` columns as %."""
    if not rows:
        return ""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [
            f"{row[c] * 100:.1f}" if c in percent and isinstance(row[c], float) else _cell(row[c])
            for c in columns
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[Row], path: Path) -> Path:
    """Rows as CSV (columns in first-row order)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)
    return path


class _Sweeps:
    def __init__(self, matrix: ResponseMatrix, vectors: Vectors, options: ReportOptions) -> None:
        self.matrix = matrix
        self.vectors = vectors
        self.options = options
        calibration_size = round(0.7 * len(matrix.questions))
        self.cluster_grid = [k for k in options.cluster_grid if k <= calibration_size]
        self.samples_of: dict[str, int] = {}
        """Expert name to the most samples it has for one question."""
        for (_, expert), samples in matrix.samples().items():
            self.samples_of[expert] = max(self.samples_of.get(expert, 0), len(samples))
        self.max_samples = max(self.samples_of.values(), default=1)

    def _evaluate(
        self,
        configs: Sequence[EnsembleConfig],
        *,
        n_clusters: int | None = None,
        experts: Sequence[str] | None = None,
        baselines: Sequence[Any] = (),
    ) -> Summary:
        return evaluate(
            self.matrix,
            self.vectors,
            configs,
            baselines=baselines,
            n_clusters=n_clusters or self.options.n_clusters,
            seeds=self.options.seeds,
            folds=self.options.folds,
            experts=experts,
        )

    def clusters(self) -> list[Row]:
        paper = EnsembleConfig(PAPER, samples=self.max_samples)
        top2 = EnsembleConfig("top_n=2 x 3 samples", top_n=2, samples=3)
        rows = []
        for k in self.cluster_grid:
            summary = self._evaluate([paper, top2], n_clusters=k)
            row: Row = {"K": k}
            for name in (PAPER, top2.name):
                row.update(_accuracy(summary, name))
            rows.append(row)
        return rows

    def pool(self) -> list[Row]:
        """Every sub-pool of models (each with all its strategies), by size."""
        paper = EnsembleConfig(PAPER, samples=self.max_samples)
        models = list(dict.fromkeys(model_of(e) for e in self.matrix.experts))
        rows = []
        for size in range(1, len(models) + 1):
            pools = [
                tuple(e for e in self.matrix.experts if model_of(e) in chosen)
                for chosen in subsets(models, size)
            ]
            scores = []
            for pool in pools:
                summary = self._evaluate([paper], experts=pool, baselines=("Best-Single",))
                scores.append(
                    (summary.accuracy(PAPER), summary.accuracy("Best-Single"), pool, summary)
                )
            accuracy, _, best_pool, best = max(scores, key=lambda s: s[:3])
            # per split, the mean over sub-pools: its spread over splits
            per_split = np.mean([s[3].split_accuracy[PAPER] for s in scores], axis=0)
            rows.append(
                {
                    "pool size": size,
                    "sub-pools": len(pools),
                    "ensemble mean": float(np.mean([s[0] for s in scores])),
                    f"ensemble mean{STD}": float(np.std(per_split)),
                    "ensemble best": accuracy,
                    f"ensemble best{STD}": best.spread.get(PAPER, 0.0),
                    "best sub-pool": " + ".join(dict.fromkeys(model_of(e) for e in best_pool)),
                    **_accuracy(best, "Best-Single", "best single of that pool"),
                }
            )
        return rows

    def samples(self) -> list[Row]:
        rows = []
        for budget in self.options.sample_grid:
            configs = [
                EnsembleConfig("top-1 expert", budget=budget),
                EnsembleConfig("top_n=2, split", top_n=2, budget=budget),
                EnsembleConfig("top_n=3, split", top_n=3, budget=budget),
            ]
            summary = self._evaluate(configs)
            row: Row = {"samples/q": budget}
            for config in configs:
                row.update(_accuracy(summary, config.name))
                row[f"{config.name} calls"] = summary.results[config.name][AVERAGE].calls
            rows.append(row)
        return rows

    def cost(self) -> list[Row]:
        rows = []
        for weight in self.options.cost_grid:
            name = f"a={weight:.1f}"
            summary = self._evaluate([EnsembleConfig(name, quality_weight=weight)])
            outcome = summary.results[name][AVERAGE]
            rows.append(
                {"a": weight, **_costs(outcome, calls=False, std=summary.spread.get(name, 0.0))}
            )
        return rows

    def _by_size(self) -> tuple[list[str], list[str], str] | None:
        """The experts of at most ``small_params``, and the largest model's experts.

        Returns:
            ``(small experts, the largest model's experts, that model)``, or None.
        """
        params = self.matrix.expert_costs()
        if len(params) < len(self.matrix.experts):
            return None
        small = [e for e in self.matrix.experts if params[e] <= self.options.small_params]
        large = [e for e in self.matrix.experts if params[e] > self.options.small_params]
        if not small or not large:
            return None
        biggest = model_of(max(large, key=lambda e: params[e]))
        return small, [e for e in large if model_of(e) == biggest], biggest

    def headline(self) -> tuple[list[Row], list[Comparison]]:
        """The small models' systems and the big one alone; each small one paired with it."""
        sizes = self._by_size()
        if sizes is None:
            return [], []
        small, big, model = sizes
        rows = []
        small_configs = [
            EnsembleConfig(PAPER, samples=self.max_samples),
            EnsembleConfig("top_n=2 x 3 samples", top_n=2, samples=3),
            EnsembleConfig("top_n=3 x 2 samples", top_n=3, samples=2),
        ]
        small_summary = self._evaluate(small_configs, experts=small)
        for config in small_configs:
            outcome = small_summary.results[config.name][AVERAGE]
            system = f"{_models(small)} models <= {self.options.small_params}B: {config.name}"
            rows.append({"system": system, **_costs(outcome)})
        big_summary = self._evaluate([], experts=big, baselines=("Best-Single", "Best-Single SC"))
        comparisons = []
        for baseline, label in (("Best-Single", "1 sample"), ("Best-Single SC", "SC")):
            outcome = big_summary.results[baseline][AVERAGE]
            rows.append({"system": f"{model} alone, {label}", **_costs(outcome)})
            for config in small_configs:
                comparison = compare(small_summary, config.name, baseline, against=big_summary)
                comparisons.append(
                    replace(
                        comparison,
                        strategy=f"{_models(small)} models <= {self.options.small_params}B: "
                        f"{config.name}",
                        over=f"{model} alone, {label}",
                    )
                )
        return rows, comparisons

    def compute_curve(self) -> list[Row]:
        """Accuracy against compute as samples grow: the small models routed, the big alone."""
        sizes = self._by_size()
        if sizes is None:
            return []
        small, big, model = sizes
        label = f"{_models(small)} models <= {self.options.small_params}B"
        per_expert = max(self.samples_of.get(e, 1) for e in small)
        big_most = max(self.samples_of.get(e, 1) for e in big)
        curves = [
            (f"{label}, top-1 expert", small, 1, per_expert),
            (f"{label}, top_n=2, split", small, 2, 2 * per_expert),
            (f"{model} alone", big, 1, big_most),
        ]
        rows = []
        for name, experts, top_n, most in curves:
            for budget in [b for b in self.options.sample_grid if b <= most]:
                config = EnsembleConfig(name, top_n=top_n, budget=budget)
                summary = self._evaluate([config], experts=experts)
                outcome = summary.results[name][AVERAGE]
                std = summary.spread.get(name, 0.0)
                rows.append({"system": name, "samples/q": budget, **_costs(outcome, std=std)})
        return rows


def model_of(expert: str) -> str:
    """The model of an expert: its name before ``:strategy``."""
    return expert.split(":", 1)[0]


def _models(experts: Sequence[str]) -> int:
    """How many models the experts are (strategies of one model count once)."""
    return len({model_of(e) for e in experts})


def _accuracy(summary: Summary, name: str, column: str | None = None) -> Row:
    """A strategy's average accuracy and its std over splits, as two columns."""
    column = column or name
    return {column: summary.accuracy(name), f"{column}{STD}": summary.spread.get(name, 0.0)}


def _costs(outcome: Outcome, *, calls: bool = True, std: float | None = None) -> Row:
    """An outcome's accuracy (and its std over splits) and what it cost, per question."""
    row: Row = {"accuracy": outcome.accuracy}
    if std is not None:
        row[f"accuracy{STD}"] = std
    if calls:
        row["calls/q"] = outcome.calls
    row.update(
        {"tokens/q": outcome.tokens, "compute/q": outcome.compute, "expert s/q": outcome.seconds}
    )
    return row


def _plot(series: Sequence[Series], path: Path, **options: Any) -> Path | None:
    """:func:`~avengers_graph.eval.plots.plot_curves`, or None without the ``plot`` extra."""
    from avengers_graph.eval.plots import plot_curves

    try:
        return plot_curves(series, path, **options)
    except MissingExtraError:
        return None


def _references(summary: Summary) -> list[Reference]:
    """Best-Single and Oracle of the main evaluation (same splits): the plots' lines."""
    return [
        Reference(name, summary.accuracy(name), summary.spread.get(name, 0.0))
        for name in ("Best-Single", "Oracle")
        if name in summary.results
    ]


def _accuracy_series(
    rows: Sequence[Row],
    x: str,
    *,
    spread: bool,
    names: Mapping[str, str] | None = None,
    columns: Sequence[str] | None = None,
) -> list[Series]:
    """One series per accuracy column of a sweep (its ``std`` column as error bars)."""
    first = rows[0]
    columns = columns or [
        c
        for c, value in first.items()
        if c != x and isinstance(value, float) and not c.endswith(STD) and "calls" not in c
    ]
    xs = [row[x] for row in rows]
    return [
        Series(
            (names or {}).get(c, c),
            xs,
            [row[c] for row in rows],
            [row[f"{c}{STD}"] for row in rows] if spread and f"{c}{STD}" in first else None,
        )
        for c in columns
    ]


def _compute_curves(rows: Sequence[Row], *, spread: bool = True) -> list[Series]:
    """Accuracy against compute per question, one series per system.

    The points of a model alone (``"<model> alone"``) are its self-consistency over
    1, 2, ... samples, and each is labelled with its samples.
    """
    systems: dict[str, list[Row]] = {}
    for row in rows:
        systems.setdefault(row["system"], []).append(row)
    series = []
    for system, points in systems.items():
        alone = system.endswith(" alone")
        if alone:
            labels = [
                "1 sample" if row["samples/q"] == 1 else f"SC of {row['samples/q']}"
                for row in points
            ]
        else:  # where the line ends (the lines start together, at one sample)
            labels = [""] * len(points)
            labels[-1] = f"{points[-1]['samples/q']} samples"
        series.append(
            Series(
                f"{system}: majority of its samples (SC)" if alone else system,
                [row["compute/q"] for row in points],
                [row["accuracy"] for row in points],
                [row.get(f"accuracy{STD}", 0.0) for row in points] if spread else None,
                labels,
            )
        )
    return series


def _splits_note(summary: Summary) -> str | None:
    """The legend's title: what the error bars are (None with one split: no bars)."""
    if summary.splits < 2:
        return None
    return f"error bars and bands: ± 1 std over {summary.splits} splits"


SWEEP_NAMES: dict[str, dict[str, str]] = {
    "sweep_pool": {
        "ensemble mean": "paper's configuration, mean over the sub-pools",
        "ensemble best": "paper's configuration, best sub-pool (picked on test)",
        "best single of that pool": "Best-Single of that best sub-pool",
    },
    "sweep_samples": {
        "top-1 expert": "top-1 expert, all samples from it",
        "top_n=2, split": "top 2 experts, samples split between them",
        "top_n=3, split": "top 3 experts, samples split between them",
    },
    "sweep_cost": {"accuracy": "accuracy (top-1 expert by a x accuracy + (1 - a) x cheapness)"},
}
"""Legend names of the sweeps' columns (a column not named here is its own name)."""


def _share_rows(matrix: ResponseMatrix, attribute: Literal["capped", "correct"]) -> list[Row]:
    """Per expert: the share of its samples with ``attribute`` set, per dataset and in all.

    A dataset the expert was not asked (its strategy does not serve it) is left empty.
    Also the expert's samples and mean generated tokens per sample.
    """
    cells: dict[tuple[str, str], list[Response]] = defaultdict(list)
    for response in matrix.responses:
        cells[(response.expert, response.dataset)].append(response)

    def share(responses: Sequence[Response]) -> float | str:
        return sum(getattr(r, attribute) for r in responses) / len(responses) if responses else ""

    rows = []
    for expert in matrix.experts:
        row: Row = {"expert": expert}
        drawn = [r for d in matrix.datasets for r in cells.get((expert, d), [])]
        for dataset in matrix.datasets:
            row[dataset] = share(cells.get((expert, dataset), []))
        row["all"] = share(drawn)
        row["samples"] = len(drawn)
        row["tokens/sample"] = statistics.fmean(r.tokens for r in drawn) if drawn else ""
        rows.append(row)
    return rows


def budget_rows(matrix: ResponseMatrix) -> list[Row]:
    """Per expert and dataset: the share of samples at the budget, samples, mean tokens.

    A sample "at the budget" stopped at its token cap (``finish_reason == "length"``):
    the budgets are fair when competent answers never reach them.
    """
    return _share_rows(matrix, "capped")


def expert_rows(matrix: ResponseMatrix) -> list[Row]:
    """Per expert and dataset: the share of right samples (one sample's accuracy).

    Over every recorded question, calibration and test alike: it describes the pool,
    and no choice is made on it.
    """
    return _share_rows(matrix, "correct")


def _write_calibration(summary: Summary, out: Path) -> list[Path]:
    """The chosen ensemble's claimed confidence against its accuracy, and what was chosen."""
    rows, ece = calibration_curve(summary.confidence[CHOSEN])
    table = [
        {
            "confidence from": row["low"],
            "to": row["high"],
            "answers": int(row["count"]),
            "mean confidence": row["confidence"],
            "accuracy": row["accuracy"],
        }
        for row in rows
    ]
    written = [write_csv(table, out / "calibration.csv")]
    _, raw = calibration_curve(summary.posterior.get(CHOSEN, []))
    floor = calibration_floor([claimed for claimed, _ in summary.confidence[CHOSEN]])
    note = (
        f"\nExpected calibration error: {ece * 100:.1f} points (the votes' posteriors "
        f"before the map: {raw * 100:.1f}). A perfectly calibrated confidence would show "
        f"{floor * 100:.1f} points on these {len(summary.confidence[CHOSEN])} answers by "
        "chance alone (each drawn right with its confidence, mean of 1,000 draws).\n"
    )
    (out / "calibration.md").write_text(
        markdown(table, ["confidence from", "to", "mean confidence", "accuracy"]) + note,
        encoding="utf-8",
    )
    written.append(out / "calibration.md")
    chosen = [
        {
            "split": i,
            "configuration": selection.config.name,
            "best single": best,
            "best challenger": selection.challenger or "",
            "t": "" if selection.t is None else round(selection.t, 2),
            "bar": "" if selection.bar is None else round(selection.bar, 2),
        }
        for i, (selection, best) in enumerate(
            zip(summary.selections, summary.best_single, strict=True)
        )
    ]
    written.append(write_csv(chosen, out / "chosen.csv"))
    plotted = _plot(
        [
            Series(
                "Ensemble (chosen on calibration)",
                [row["confidence"] * 100 for row in rows],
                [row["accuracy"] * 100 for row in rows],
            ),
            Series("perfect calibration", [0.0, 100.0], [0.0, 100.0]),
        ],
        out / "calibration.png",
        title=(
            "Is the confidence a probability? Claimed against observed\n"
            f"expected calibration error {ece * 100:.1f} points"
        ),
        xlabel="claimed confidence (%), mean of each bin",
        ylabel="answers right (%)",
    )
    if plotted:
        written.append(plotted)
    return written


def _write_recommended(pick: AdaptiveConfig, questions: int, n_clusters: int, out: Path) -> Path:
    """The pool-file snippet that serves ``pick`` (:data:`RECOMMENDED`)."""
    import yaml

    snippet = {
        "calibration": {"n_clusters": pick.n_clusters or n_clusters},
        "routing": pick.options(),
    }
    header = (
        f"# Chosen by `avengers eval replay` on all {questions} questions of the matrix,\n"
        f"# by the rule its nested selection follows: {pick.name}.\n"
        "# How that rule does on questions it did not see: Ensemble (chosen on calibration)\n"
        "# in the report. Paste into a pool file.\n"
    )
    path = out / RECOMMENDED
    path.write_text(header + yaml.safe_dump(snippet, sort_keys=False), encoding="utf-8")
    return path


def _write_paired(comparisons: Sequence[Comparison], out: Path) -> list[Path]:
    rows = paired_rows(comparisons)
    percent = ["gain", "95 % low", "95 % high"]
    (out / "paired.md").write_text(markdown(rows, percent), encoding="utf-8")
    return [write_csv(rows, out / "paired.csv"), out / "paired.md"]


def write_report(  # noqa: PLR0915 - one step after the other, each writing its files
    matrix: ResponseMatrix,
    vectors: Vectors,
    out: Path,
    options: ReportOptions = ReportOptions(),
    progress: Callable[[str], None] | None = None,
) -> tuple[Summary, list[Path]]:
    """Evaluate, sweep and write every table and plot into ``out``.

    Args:
        matrix: A matrix (partial recordings: ``matrix.complete()``).
        vectors: Unit question vectors by id.
        out: The folder to write.
        options: Seeds, K and grids.
        progress: Called with the name of each step as it starts.

    Returns:
        The main summary and the written paths.
    """
    if not matrix.questions:
        raise InvalidInputError("The matrix holds no question every expert answered.")
    out.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda _: None)
    sweeps = _Sweeps(matrix, vectors, options)
    sizes = sweeps._by_size()
    reference = options.reference or (sizes[2] if sizes else None)
    say("summary" + (" and the nested selection" if options.select else ""))
    grid = default_grid(sweeps.max_samples, options.grid_clusters) if options.select else []
    summary = evaluate(
        matrix,
        vectors,
        default_configs(sweeps.max_samples),
        baselines=BASELINES,
        n_clusters=options.n_clusters,
        seeds=options.seeds,
        folds=options.folds,
        grid=grid,
        reference=reference,
    )
    written = []
    if grid:
        say("the routing for service")
        ids = [q["id"] for q in matrix.questions]
        pick = choose_on_calibration(
            matrix, vectors, ids, grid, n_clusters=options.n_clusters, reference=reference
        ).config
        written.append(_write_recommended(pick, len(ids), options.n_clusters, out))
    for name, table in (("budgets", budget_rows(matrix)), ("experts", expert_rows(matrix))):
        written.append(write_csv(table, out / f"{name}.csv"))
        (out / f"{name}.md").write_text(markdown(table, [*matrix.datasets, "all"]), "utf-8")
        written.append(out / f"{name}.md")
    rows = summary_rows(summary)
    percent = [*summary.datasets, "average", "std over splits", "gain vs Random"]
    percent += ["gain vs Best-Single", "gap to Oracle"]
    written.append(write_csv(rows, out / "summary.csv"))
    (out / "summary.md").write_text(markdown(rows, percent), encoding="utf-8")
    written.append(out / "summary.md")
    say("paired")
    paired = [
        compare(summary, name, "Best-Single") for name in summary.results if name != "Best-Single"
    ]
    sc = f"{reference} SC"
    if reference and sc in summary.results:
        paired += [
            compare(summary, name, sc)
            for name in (CHOSEN, "Best-Single")
            if name in summary.results
        ]
    if CHOSEN in summary.confidence:
        written += _write_calibration(summary, out)
    if not options.sweeps:
        written += _write_paired(paired, out)
        return summary, written
    spread = summary.splits > 1
    evaluation = (
        f"test accuracy, {summary.splits}-fold cross-validation"
        if options.folds
        else f"test accuracy, mean of {summary.splits} seeded 70/30 splits"
    )
    common: dict[str, Any] = {
        "references": _references(summary),
        "legend_title": _splits_note(summary),
    }
    steps: list[tuple[str, Callable[[], list[Row]], str, str, str]] = [
        (
            "sweep_clusters",
            sweeps.clusters,
            "K",
            "K: clusters of the calibration questions (log scale)",
            "Accuracy against the number of clusters K",
        ),
        (
            "sweep_pool",
            sweeps.pool,
            "pool size",
            "experts in the pool (every sub-pool of that size)",
            "Accuracy against the size of the pool",
        ),
        (
            "sweep_samples",
            sweeps.samples,
            "samples/q",
            "samples per question (an expert gives at most those recorded for it)",
            "Accuracy against the samples drawn per question",
        ),
        (
            "sweep_cost",
            sweeps.cost,
            "a",
            "quality weight a (1 = accuracy only, 0 = compute only)",
            "Cost-aware routing (Avengers-Pro): accuracy and compute against a",
        ),
    ]
    for name, run, x, xlabel, title in steps:
        say(name)
        sweep_rows = run()
        written.append(write_csv(sweep_rows, out / f"{name}.csv"))
        (out / f"{name}.md").write_text(markdown(sweep_rows), encoding="utf-8")
        names = SWEEP_NAMES.get(name)
        if name == "sweep_cost":
            series = _accuracy_series(
                sweep_rows, x, spread=spread, names=names, columns=["accuracy"]
            )
            series.append(
                Series(
                    "compute per question (right axis)",
                    [row[x] for row in sweep_rows],
                    [row["compute/q"] for row in sweep_rows],
                    secondary=True,
                )
            )
        else:
            series = _accuracy_series(sweep_rows, x, spread=spread, names=names)
        where = "" if name == "sweep_clusters" else f", K={options.n_clusters}"
        plotted = _plot(
            series,
            out / f"{name}.png",
            title=f"{title}\n{evaluation}{where}",
            xlabel=xlabel,
            ylabel=ACCURACY_LABEL,
            log_x=name == "sweep_clusters",
            secondary_label="compute per question (tokens x billions of parameters)",
            **common,
        )
        if plotted:
            written.append(plotted)
    say("headline")
    headline, headline_paired = sweeps.headline()
    written += _write_paired([*paired, *headline_paired], out)
    if headline:
        written.append(write_csv(headline, out / "headline.csv"))
        (out / "headline.md").write_text(markdown(headline, ["accuracy"]), encoding="utf-8")
        say("headline_compute")
        curve = sweeps.compute_curve()
        written.append(write_csv(curve, out / "headline_compute.csv"))
        (out / "headline_compute.md").write_text(
            markdown(curve, ["accuracy", f"accuracy{STD}"]), encoding="utf-8"
        )
        plotted = _plot(
            _compute_curves(curve, spread=spread),
            out / "headline_compute.png",
            title="Accuracy against compute: the small models routed, the largest alone\n"
            f"samples per question grow along each line; {evaluation}, K={options.n_clusters}",
            xlabel="compute per question (generated tokens x billions of parameters)",
            ylabel=ACCURACY_LABEL,
            **common,
        )
        if plotted:
            written.append(plotted)
    return summary, written
