"""Performance benchmark: routing, orchestration, real ensembles, calibration and caching.

One run measures, side by side:

(a) routing overhead per question, split into embed / locate_cluster / select_experts
    (p50, p95), and the whole graph with instant experts (the functions of
    ``bench_routing.py``, on a store calibrated from its synthetic questions);
(b) on real llama.cpp servers (SmolLM2-135M, two experts, started here in a temporary
    pool and always stopped): one expert call against the ensemble graph (``top_n``
    experts, ``samples`` 1..N) on the same bundled validation questions: wall time
    p50/p95, ensemble/single ratios, generated tokens;
(c) calibration throughput (questions/s, expert calls/s): instant experts on the
    synthetic questions, the real servers on the validation questions;
(d) each of those calibrations run again on the same answer cache (``replace=True``):
    wall time, ratio to the first run, and the expert calls it made (expected: 0);
(e) the engine (``tools/bench_engine.py``): llama.cpp's ``llama-server`` against
    llama-cpp-python's server for 1, 3 and 6 samples of one expert and for the default
    ensemble (2 experts x 3 samples), generated tokens per second, memory, the
    speculative-decoding speed-up and the cost of the build. The old engine's column
    needs ``--old-engine-python`` (an interpreter with ``llama-cpp-python[server]``);
    without it, it is skipped with a message.

    python tools/bench_perf.py [--questions 200] [--llama-questions 10] [--samples 3]
        [--max-tokens 128] [--no-llama] [--no-engine] [--old-engine-python PY]
        [--engine-tokens 128] [--engine-repeats 3] [--chroma-server] [--out perf.json|perf.md]

Ends with one summary table; ``--out`` also writes it as JSON or markdown (by suffix),
with the settings, the machine's load and the library versions.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from itertools import chain, zip_longest
from pathlib import Path
from types import FrameType
from typing import Any

from bench_engine import ONE, Row, engine_rows, has_old_engine
from bench_routing import (
    instant_experts,
    measure_routing,
    percentiles,
    print_rows,
    questions,
    serve_store,
    stop,
    summarise,
    timed_results,
)
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage

from avengers_graph import (
    AvengersContext,
    CalibrationReport,
    ClusterStore,
    LocalEmbeddings,
    calibrate,
    create_avengers_graph,
)
from avengers_graph.app.embedded import bundled, read_jsonl
from avengers_graph.calibration import DEFAULT_INSTRUCTIONS, build_prompt, load_dataset
from avengers_graph.local.models import ensure_model
from avengers_graph.local.pool import LocalPool

MODEL = "smollm2-135m"
"""The llama.cpp model of section (b): the smallest of the registry."""
TEMPERATURE = 0.7
"""Sampling temperature of every real call (calibration, single call, ensemble)."""
SEED = 0
"""Base seed of K-means and of every sample."""
SECTIONS = {
    "a": "routing + orchestration",
    "b": "llama.cpp ensemble",
    "c": "calibration throughput",
    "d": "cached re-run",
    "e": "engine",
}
DIGITS = {"ms": 2, "s": 2, "x": 2, "/s": 1, "tokens": 1, "calls": 0, "%": 0}


@dataclass(frozen=True)
class Measure:
    """One line of the summary table."""

    section: str
    name: str
    value: float
    """The p50 for timings, else the value itself."""
    unit: str
    p95: float | None = None

    def cells(self) -> tuple[str, str]:
        digits = DIGITS.get(self.unit, 2)
        p95 = "" if self.p95 is None else f"{self.p95:.{digits}f}"
        return f"{self.value:.{digits}f}", p95


@dataclass(frozen=True)
class CalibrationRun:
    """One timed :func:`calibrate` call."""

    seconds: float
    call_seconds: float
    """From the first to the last progress report: the expert calls, without embedding,
    clustering and writing the store."""
    report: CalibrationReport


class CallClock:
    """A ``progress`` callback of :func:`calibrate` noting when its expert calls start and end.

    The first report comes once the cache has been read, the last after the last call.
    """

    def __init__(self) -> None:
        self.first: float | None = None
        self.last: float | None = None

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        self.first = now if self.first is None else self.first
        self.last = now

    @property
    def seconds(self) -> float:
        return 0.0 if self.first is None or self.last is None else self.last - self.first


# -- interrupts -----------------------------------------------------------------------


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds the ``finally`` blocks that stop servers


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM while servers start or stop, then raise ``KeyboardInterrupt``.

    ``LocalPool.up`` records a server only once it answers: an interrupt while one
    loads would leave it running, unknown to ``LocalPool.down``.
    """
    received: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        raise KeyboardInterrupt


# -- helpers ----------------------------------------------------------------------------


def timed_calibration(
    experts: Mapping[str, BaseChatModel],
    embeddings: Embeddings,
    dataset: Sequence[Mapping[str, Any]],
    store: ClusterStore,
    cache: Path,
    **options: Any,
) -> CalibrationRun:
    """Calibrate from scratch (``replace=True``) and time it."""
    clock = CallClock()
    started = time.perf_counter()
    report = calibrate(
        experts,
        embeddings,
        dataset,
        store,
        cache=cache,
        seed=SEED,
        replace=True,
        progress=clock,
        **options,
    )
    return CalibrationRun(time.perf_counter() - started, clock.seconds, report)


def calibration_measures(label: str, first: CalibrationRun, again: CalibrationRun) -> list[Measure]:
    """Section (c): throughput of the first run; section (d): cost of the cached re-run."""
    n = first.report.n_questions
    measures = [
        Measure("c", f"{label}: wall", first.seconds, "s"),
        Measure("c", f"{label}: questions/s", n / first.seconds, "/s"),
        Measure("c", f"{label}: expert calls/s", first.report.calls / first.seconds, "/s"),
    ]
    if first.call_seconds > 0:
        calls_only = first.report.calls / first.call_seconds
        measures.append(Measure("c", f"{label}: expert calls/s, calls only", calls_only, "/s"))
    measures += [
        Measure("d", f"{label}: cached re-run wall", again.seconds, "s"),
        Measure("d", f"{label}: cached re-run / first run", again.seconds / first.seconds, "x"),
        Measure("d", f"{label}: expert calls in the re-run", again.report.calls, "calls"),
    ]
    if again.report.calls:
        print(f"WARNING: the cached re-run of {label} made {again.report.calls} expert calls")
    return measures


def validation_questions(n: int) -> list[dict[str, Any]]:
    """``n`` bundled validation questions, taken in turn from each domain (no randomness)."""
    by_domain: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in read_jsonl(bundled("validation.jsonl")):
        by_domain[str(row.get("domain", row["kind"]))].append(row)
    interleaved = chain.from_iterable(zip_longest(*by_domain.values()))
    return [row for row in interleaved if row is not None][:n]


def output_tokens(message: BaseMessage) -> int:
    usage = message.usage_metadata if isinstance(message, AIMessage) else None
    return usage["output_tokens"] if usage else 0


def seconds(samples: list[float]) -> tuple[float, float]:
    """p50 and p95 in seconds."""
    p50, p95 = percentiles(samples)
    return p50 / 1000, p95 / 1000


# -- sections ---------------------------------------------------------------------------


def instant_sections(args: argparse.Namespace, embeddings: Embeddings, work: Path) -> list[Measure]:
    """Sections (a), (c) and (d) with instant experts; returns their measures."""
    experts = instant_experts()
    dataset = questions(args.questions, seed=0)
    store = ClusterStore(path=work / "instant-store", name="bench")
    options = {"n_clusters": args.clusters, "samples": args.calibration_samples}
    label = f"{args.questions} questions x {len(experts)} instant experts"
    print(f"(c) calibrating {label}...")
    first = timed_calibration(
        experts, embeddings, dataset, store, work / "instant.sqlite", **options
    )
    print("(d) the same calibration again on its cache...")
    again = timed_calibration(
        experts, embeddings, dataset, store, work / "instant.sqlite", **options
    )
    measures = calibration_measures(label, first, again)

    stores = {"chroma on disk": store}
    server = None
    try:
        if args.chroma_server:
            server, stores["chroma server"] = serve_store(store, work / "chroma-server")
        probe = [q["question"] for q in questions(args.questions, seed=1)]
        print(f"(a) routing {len(probe)} questions...")
        rows = measure_routing(
            embeddings, stores, experts, probe, top_n=args.top_n, samples=args.samples
        )
    finally:
        if server is not None:
            stop(server)
    print(f"\n(a) K={args.clusters}, top_n={args.top_n}, samples={args.samples}")
    print_rows(rows)
    print()
    summary = summarise(rows)
    measures += [Measure("a", name, p50, "ms", p95) for name, p50, p95 in rows]
    measures += [
        Measure("a", "routing steps (embed + locate + select), p50 sum", summary.routing_ms, "ms"),
        Measure("a", "whole graph sync / routing steps", summary.graph_over_routing, "x"),
        Measure("a", "embed share of routing", 100 * summary.embed_share, "%"),
        Measure("a", "chroma on disk / numpy for locate", summary.chroma_over_numpy, "x"),
    ]
    return measures


def start_experts(
    pool: LocalPool, servers: int, threads: int | None, max_tokens: int
) -> dict[str, BaseChatModel]:
    """Two SmolLM2 experts: on one server, or on two (the second serves a symlinked file)."""
    path = ensure_model(MODEL, pool.cache_dir)
    models = [MODEL]
    if servers == 2:
        twin = path.with_name(f"{MODEL}-b.gguf")  # served under its stem, "smollm2-135m-b"
        twin.symlink_to(path)
        models.append(str(twin))
    with interrupts_deferred():
        infos = pool.up(models, threads=threads)
    clients = pool.experts([info.model for info in infos], max_tokens=max_tokens)
    first, second = infos[0].model, infos[-1].model
    return {"smollm2-a": clients[first], "smollm2-b": clients[second]}


def llama_section(args: argparse.Namespace, embeddings: Embeddings, work: Path) -> list[Measure]:
    """Section (b), and sections (c) and (d) on the real servers; returns their measures."""
    pool = LocalPool(work / "pool")
    try:
        print(f"\n(b) starting {args.llama_servers} llama.cpp server(s) of {MODEL}...")
        experts = start_experts(pool, args.llama_servers, args.threads, args.max_tokens)
        return llama_measures(args, experts, embeddings, work)
    finally:
        with interrupts_deferred():
            stopped = pool.down()
        print(f"(b) stopped the llama.cpp server(s): {', '.join(stopped) or 'none running'}")


def llama_measures(
    args: argparse.Namespace,
    experts: Mapping[str, BaseChatModel],
    embeddings: Embeddings,
    work: Path,
) -> list[Measure]:
    dataset = validation_questions(args.llama_questions)
    store = ClusterStore(path=work / "llama-store", name="llama")
    options = {
        "samples": args.calibration_samples,
        "temperature": TEMPERATURE,
        "max_tokens": args.max_tokens,
    }
    label = f"{len(dataset)} questions x {len(experts)} llama.cpp experts"
    print(f"(c) calibrating {label}...")
    first = timed_calibration(experts, embeddings, dataset, store, work / "llama.sqlite", **options)
    print("(d) the same calibration again on its cache...")
    again = timed_calibration(experts, embeddings, dataset, store, work / "llama.sqlite", **options)
    measures = calibration_measures(label, first, again)

    prompts = [build_prompt(item, DEFAULT_INSTRUCTIONS) for item in load_dataset(dataset)]
    name, single = next(iter(experts.items()))
    print(f"(b) one call of {name} per question...")
    call = functools.partial(
        single.invoke, temperature=TEMPERATURE, seed=SEED, max_tokens=args.max_tokens
    )
    single_times, answers = timed_results(call, prompts)
    single_tokens = statistics.mean(output_tokens(answer) for answer in answers)
    single_p50, single_p95 = seconds(single_times)
    measures += [
        Measure("b", f"single call ({name})", single_p50, "s", single_p95),
        Measure("b", "single call: output tokens per question, mean", single_tokens, "tokens"),
    ]

    graph = create_avengers_graph(
        experts,
        embeddings,
        store,
        top_n=args.top_n,
        seed=SEED,
        temperature=TEMPERATURE,
        max_tokens=args.max_tokens,
    )
    inputs = [{"messages": messages} for messages in prompts]
    top_n = min(args.top_n, len(experts))
    for samples in range(1, args.samples + 1):
        tag = f"ensemble top_n={top_n} samples={samples} ({top_n * samples} calls)"
        print(f"(b) {tag} per question...")
        run = functools.partial(graph.invoke, context=AvengersContext(samples=samples))
        times, results = timed_results(run, inputs)
        tokens = statistics.mean(output_tokens(result["messages"][-1]) for result in results)
        p50, p95 = seconds(times)
        ratios = [ensemble / one for ensemble, one in zip(times, single_times, strict=True)]
        measures += [
            Measure("b", tag, p50, "s", p95),
            Measure("b", f"{tag} / single: ratio of the p50s", p50 / single_p50, "x"),
            Measure(
                "b", f"{tag} / single: p50 of per-question ratios", statistics.median(ratios), "x"
            ),
            Measure("b", f"{tag}: output tokens per question, mean", tokens, "tokens"),
        ]
        if single_tokens:
            measures.append(
                Measure("b", f"{tag} / single: output tokens", tokens / single_tokens, "x")
            )
        failed = sum(len(result["avengers"]["failures"]) for result in results)
        if failed:
            measures.append(Measure("b", f"{tag}: experts that failed a call", failed, "calls"))
    return measures


def engine_section(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Section (e), in a pool folder of its own; the old engine only if it can run."""
    old = args.old_engine_python
    skipped = None
    if old is None:
        skipped = "no --old-engine-python given (an interpreter with llama-cpp-python[server])"
    elif not has_old_engine(old):
        skipped = f"{old} cannot import llama_cpp.server (pip install 'llama-cpp-python[server]')"
        old = None
    if skipped:
        print(f"(e) WARNING: the old engine's column is skipped: {skipped}")
    rows, memory, build = engine_rows(
        work / "engine",
        old_python=old,
        tokens=args.engine_tokens,
        repeats=args.engine_repeats,
        spec_repeats=args.spec_repeats,
    )
    return {
        "rows": rows,
        "memory": memory,
        "build": build,
        "tokens": args.engine_tokens,
        "repeats": args.engine_repeats,
        "spec_repeats": args.spec_repeats,
        "old_engine_skipped": skipped,
    }


# -- output -----------------------------------------------------------------------------


def table(measures: Sequence[Measure]) -> list[tuple[str, str, str, str, str]]:
    """Rows of the summary: section, measure, p50 or value, p95, unit."""
    return [(f"({m.section}) {SECTIONS[m.section]}", m.name, *m.cells(), m.unit) for m in measures]


def print_table(measures: Sequence[Measure]) -> None:
    rows = [("section", "measure", "p50/value", "p95", "unit"), *table(measures)]
    widths = [max(len(cells[i]) for cells in rows) for i in range(len(rows[0]))]
    for cells in rows:  # text columns left-aligned, numbers right-aligned
        print(
            "  ".join(
                c.ljust(w) if i < 2 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
        )


def environment(load_start: tuple[float, float, float]) -> dict[str, Any]:
    """The machine and versions the numbers come from."""
    versions = {}
    for package in (
        "avengers-graph",
        "langgraph",
        "langchain-core",
        "chromadb",
        "torch",
        "sentence-transformers",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": len(os.sched_getaffinity(0)),
        "load_average_start": list(load_start),
        "load_average_end": list(os.getloadavg()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        # MiniLM's intra-op threads: on cores busy with llama.cpp, more threads are slower
        "torch_threads": torch.get_num_threads() if (torch := sys.modules.get("torch")) else None,
    }


def engine_markdown(engine: Mapping[str, Any] | None) -> list[str]:
    """Section (e) as markdown: the side-by-side table, every case, memory, build cost."""
    if engine is None:
        return []
    rows: list[Row] = engine["rows"]
    by = {(row.engine, row.case): row for row in rows}
    engines = [e for e in ("llama-cpp-python", "llama-server") if any(r.engine == e for r in rows)]
    cases = list(dict.fromkeys(row.case for row in rows if not row.case.startswith("speculative")))
    lines = [
        "",
        "## (e) The engine: llama-server against llama-cpp-python's server",
        "",
        f"Same GGUF files, same prompt, {engine['tokens']} generated tokens at most per sample, "
        f"temperature 0.7, medians of {engine['repeats']} runs; every sample its own seed, "
        "sent at once (as the graph sends one expert's samples). Ratio: to one sample of the "
        "same expert on the same engine, or to one call of the ensemble's slowest expert.",
        "",
    ]
    if engine.get("old_engine_skipped"):
        lines += [f"Old engine not measured: {engine['old_engine_skipped']}", ""]
    header = "| case | " + " | ".join(f"{e}: wall s (ratio), tok/s" for e in engines) + " |"
    lines += [header, "| --- |" + " ---: |" * len(engines)]
    for case in cases:
        cells = []
        for e in engines:
            row = by.get((e, case))
            if row is None:
                cells.append("-")
                continue
            ratio = "" if row.ratio is None else f" ({row.ratio:.2f}x)"
            cells.append(f"{row.seconds:.2f}{ratio}, {row.tokens_per_second:.1f}")
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    three = by.get(("llama-server", f"{ONE}: 3 sample(s) at once"))
    pair = by.get(("llama-server", "ensemble: 2 experts x 3 samples at once"))
    if three is not None and three.ratio is not None and pair is not None and pair.ratio:
        lines += [
            "",
            f"Goals on llama-server: 3 samples within 1.5x one call: {three.ratio:.2f}x "
            f"({'met' if three.ratio <= 1.5 else 'missed'}); the 2 x 3 ensemble within 2.0x "
            f"one call of its slowest expert: {pair.ratio:.2f}x "
            f"({'met' if pair.ratio <= 2.0 else 'missed'}).",
        ]
    spec = [row for row in rows if row.case.startswith("speculative")]
    if spec:
        lines += [
            "",
            f"Speculative decoding, {engine['spec_repeats']} run(s) per case:",
            "",
            "| speculative decoding (llama-server) | wall s | generated tokens | tok/s |",
            "| --- | ---: | ---: | ---: |",
        ]
        lines += [
            f"| {row.case.removeprefix('speculative: ')} | {row.seconds:.2f} | {row.tokens:.0f} | "
            f"{row.tokens_per_second:.1f} |"
            for row in spec
        ]
    lines += ["", "| server | peak RSS MiB |", "| --- | ---: |"]
    lines += [f"| {name} | {mib:.0f} |" for name, mib in engine["memory"].items()]
    build = engine["build"]
    lines += [
        "",
        f"The llama-server build (`avengers local build`, once per pinned version): "
        f"{build['build_seconds']} s on this machine, a {build['binary_mib']} MiB static binary "
        f"(llama.cpp commit {build['llama_cpp_commit']}, flags {' '.join(build['cmake_flags'])}).",
    ]
    return lines


def write_out(
    path: Path,
    measures: Sequence[Measure],
    settings: Mapping[str, Any],
    env: Mapping[str, Any],
    engine: Mapping[str, Any] | None = None,
) -> None:
    if path.suffix == ".md":
        load = ", ".join(f"{x:.2f}" for x in env["load_average_start"])
        lines = [
            "# avengers-graph performance benchmark",
            "",
            f"{env['created']}, {env['cpus']} cores, load average at start {load}, at end "
            f"{', '.join(f'{x:.2f}' for x in env['load_average_end'])}; "
            f"settings: {json.dumps(settings)}",
            "",
            f"Command: `python tools/bench_perf.py {' '.join(sys.argv[1:])}` (`make bench-perf "
            "OLD_ENGINE_PYTHON=/path/to/python` runs it; that interpreter needs "
            "`pip install 'llama-cpp-python[server]==0.3.36'` for the old engine's column).",
            "",
            "| section | measure | p50/value | p95 | unit |",
            "| --- | --- | ---: | ---: | --- |",
            *(f"| {' | '.join(cells)} |" for cells in table(measures)),
            *engine_markdown(engine),
        ]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        record = {**env, "settings": settings, "results": [asdict(m) for m in measures]}
        if engine is not None:
            record["engine"] = {
                **{k: v for k, v in engine.items() if k != "rows"},
                "rows": [asdict(row) for row in engine["rows"]],
            }
        path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {path}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=200, help="synthetic questions (a, c, d)")
    parser.add_argument("--clusters", type=int, default=16, help="K of the synthetic store")
    parser.add_argument("--top-n", type=int, default=2)
    parser.add_argument(
        "--samples", type=int, default=3, help="samples per expert: (a), and (b) runs 1..N"
    )
    parser.add_argument("--calibration-samples", type=int, default=1)
    parser.add_argument("--chroma-server", action="store_true", help="(a) also on a Chroma server")
    parser.add_argument("--no-llama", action="store_true", help="skip the llama.cpp measures")
    parser.add_argument("--llama-questions", type=int, default=10, help="validation questions (b)")
    parser.add_argument("--llama-servers", type=int, choices=(1, 2), default=2)
    parser.add_argument("--threads", type=int, default=None, help="per server (default: shared)")
    parser.add_argument("--max-tokens", type=int, default=128, help="cap of every real call")
    parser.add_argument("--no-engine", action="store_true", help="skip the engine section (e)")
    parser.add_argument(
        "--old-engine-python",
        default=None,
        help="an interpreter with llama-cpp-python[server], for the old engine's column (e)",
    )
    parser.add_argument("--engine-tokens", type=int, default=128, help="tokens per sample (e)")
    parser.add_argument("--engine-repeats", type=int, default=3, help="runs per case (e)")
    parser.add_argument(
        "--spec-repeats", type=int, default=1, help="runs per speculative-decoding case (e)"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the summary (.json or .md)")
    args = parser.parse_args()
    if args.out is not None and args.out.suffix not in {".json", ".md"}:
        parser.error("--out must end in .json or .md")
    available = len(read_jsonl(bundled("validation.jsonl")))
    if not 1 <= args.llama_questions <= available:
        parser.error(f"--llama-questions must be between 1 and {available}")
    for name in ("questions", "clusters", "top_n", "samples", "calibration_samples", "max_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.clusters > args.questions:
        parser.error("--clusters must not exceed --questions")
    return args


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    load_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="avengers-perf-"))
    try:
        embeddings = LocalEmbeddings()
        embeddings.embed_query("warm up")  # loads the model, so that no timing includes it
        measures = instant_sections(args, embeddings, work)
        if not args.no_llama:
            measures += llama_section(args, embeddings, work)
        measures.sort(key=lambda m: m.section)  # stable: each section keeps its order
        engine = None if args.no_engine else engine_section(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    env = environment(load_start)
    print(f"\nsummary ({env['cpus']} cores, load average {load_start[0]:.2f} at start)")
    print_table(measures)
    if engine is not None:
        print("\n".join(engine_markdown(engine)))
    if args.out is not None:
        settings = {
            key: str(value) if isinstance(value, Path) else value
            for key, value in vars(args).items()
        }
        write_out(args.out, measures, settings, env, engine)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("\ninterrupted (every server started here is stopped)", file=sys.stderr)
        raise SystemExit(130) from None
