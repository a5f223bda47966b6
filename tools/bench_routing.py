"""Routing overhead benchmark: embed / locate_cluster / select_experts and the whole graph.

Runs on the embedded default (MiniLM from PyPI, Chroma on disk) with instant experts
(LangChain's ``FakeListChatModel``), so what it measures is our overhead, not model
time. Every number comes from the same run, side by side.

    python tools/bench_routing.py [--questions 200] [--clusters 16] [--chroma-server]

Prints median (p50) and p95 milliseconds per question for each routing step, the
whole graph (sync and async) with ``top_n * samples`` instant expert calls, and the
ratios between them. ``tools/bench_perf.py`` reuses these functions.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import HumanMessage

from avengers_graph import ClusterStore, LocalEmbeddings, calibrate, create_avengers_graph
from avengers_graph.embeddings import normalise
from avengers_graph.graph.state import InputState
from avengers_graph.routing import match_clusters, score_experts, select_experts

T = TypeVar("T")
R = TypeVar("R")

Row = tuple[str, float, float]
"""(step, p50 ms, p95 ms)."""

EMBED = "embed (MiniLM, 1 question)"
LOCATE_DISK = "locate_cluster (chroma on disk, top_k=1)"
LOCATE_NUMPY = "locate_cluster (numpy baseline)"
SELECT = "select_experts"
GRAPH_SYNC = "whole graph, sync"
GRAPH_ASYNC = "whole graph, async"

TOPICS = {
    "math": "What is {a} plus {b} times {c}?",
    "code": "Write a Python function that returns the {a}th Fibonacci number modulo {b}.",
    "medicine": "A {a}-year-old patient presents with fever of {b} days and rash. Diagnosis?",
    "history": "In which year did event number {a} of the {b}th century take place?",
    "sentiment": "Is the review 'I liked movie {a}, {b} stars out of {c}' positive or negative?",
    "chemistry": "How many moles are in {a} grams of a compound with molar mass {b}?",
}


def questions(n: int, seed: int) -> list[dict[str, str]]:
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        topic = list(TOPICS)[i % len(TOPICS)]
        a, b, c = (int(x) for x in rng.integers(2, 99, size=3))
        items.append(
            {
                "id": f"{topic}-{i}",
                "question": TOPICS[topic].format(a=a, b=b, c=c),
                "answer": str(a),
                "kind": "number",
            }
        )
    return items


def instant_experts(n: int = 4) -> dict[str, BaseChatModel]:
    """``n`` experts that answer at once, two different numbers between them."""
    return {
        f"expert{i}": FakeListChatModel(responses=[f"The answer is \\boxed{{{40 + i % 2}}}."])
        for i in range(n)
    }


def percentiles(samples: list[float]) -> tuple[float, float]:
    ms = sorted(s * 1000 for s in samples)
    return statistics.median(ms), ms[min(len(ms) - 1, int(0.95 * len(ms)))]


def timed_results(fn: Callable[[T], R], items: Sequence[T]) -> tuple[list[float], list[R]]:
    """Seconds of one call of ``fn`` on each item, and what each call returned."""
    seconds, results = [], []
    for item in items:
        start = time.perf_counter()
        results.append(fn(item))
        seconds.append(time.perf_counter() - start)
    return seconds, results


def per_item(fn: Callable[[T], object], items: Sequence[T]) -> list[float]:
    """Seconds of one call of ``fn`` on each item."""
    return timed_results(fn, items)[0]


def free_port() -> int:
    """A TCP port on the loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_chroma(path: Path, port: int) -> subprocess.Popen[bytes]:
    chroma = Path(sys.executable).with_name("chroma")
    proc = subprocess.Popen(
        [str(chroma), "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    import chromadb

    for _ in range(100):
        try:
            chromadb.HttpClient(host="127.0.0.1", port=port).heartbeat()
            return proc
        except Exception:  # noqa: BLE001 - server not up yet
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("chroma run did not come up")


def serve_store(store: ClusterStore, path: Path) -> tuple[subprocess.Popen[bytes], ClusterStore]:
    """Start ``chroma run`` on ``path`` (a free port) and copy ``store`` into it.

    The caller stops the returned process (``terminate``, then ``wait``).
    """
    port = free_port()
    server = start_chroma(path, port)
    try:
        remote = ClusterStore(host="127.0.0.1", port=port, name=store.name)
        info = store.info()
        remote.write(
            info,
            store.centroids(),
            [store.sizes()[c] for c in range(info.n_clusters)],
            store.stats(),
            store.questions(),
            store.question_vectors(),
        )
    except BaseException:
        server.kill()
        server.wait(timeout=10)
        raise
    return server, remote


def stop(server: subprocess.Popen[bytes]) -> None:
    """Stop a server this script started, and reap it."""
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=10)


def measure_routing(
    embeddings: Embeddings,
    stores: Mapping[str, ClusterStore],
    experts: Mapping[str, BaseChatModel],
    probe: Sequence[str],
    *,
    top_n: int,
    samples: int,
) -> list[Row]:
    """p50/p95 of each routing step on every store, then of the whole graph (first store).

    ``stores`` must name the on-disk store ``"chroma on disk"`` (the ratios use it).
    """
    store = stores["chroma on disk"]
    embeddings.embed_query("warm up")
    vectors = [normalise(embeddings.embed_query(text)) for text in probe]
    rows: list[Row] = [
        (EMBED, *percentiles(per_item(lambda text: normalise(embeddings.embed_query(text)), probe)))
    ]
    centroids = store.centroids()
    for label, s in stores.items():
        s.nearest(vectors[0], 1)
        locate = functools.partial(
            lambda v, store_: match_clusters(store_.nearest(v, 1), 3.0), store_=s
        )
        rows.append((f"locate_cluster ({label}, top_k=1)", *percentiles(per_item(locate, vectors))))
    rows.append(
        (
            LOCATE_NUMPY,
            *percentiles(
                per_item(lambda v: np.argsort(1 - centroids @ np.asarray(v))[:1], vectors)
            ),
        )
    )
    stats = store.stats()
    names = list(experts)
    clusters = [match_clusters(store.nearest(v, 1), 3.0) for v in vectors]
    rows.append(
        (
            SELECT,
            *percentiles(
                per_item(lambda c: select_experts(score_experts(c, stats, names), top_n), clusters)
            ),
        )
    )

    graph = create_avengers_graph(experts, embeddings, store, top_n=top_n, samples=samples, seed=0)
    inputs: list[InputState] = [{"messages": [HumanMessage(text)]} for text in probe]
    graph.invoke(inputs[0])
    calls = top_n * samples
    rows.append(
        (
            f"{GRAPH_SYNC} ({calls} instant calls)",
            *percentiles(per_item(graph.invoke, inputs)),
        )
    )

    async def run_async() -> list[float]:
        out = []
        for x in inputs:
            start = time.perf_counter()
            await graph.ainvoke(x)
            out.append(time.perf_counter() - start)
        return out

    rows.append((f"{GRAPH_ASYNC} ({calls} instant calls)", *percentiles(asyncio.run(run_async()))))
    return rows


@dataclass(frozen=True)
class RoutingSummary:
    """Ratios between the p50s of :func:`measure_routing`'s rows."""

    routing_ms: float
    """embed + locate_cluster (on disk) + select_experts."""
    graph_over_routing: float
    """Whole graph (sync, instant experts) / routing steps."""
    embed_share: float
    """embed / routing steps."""
    chroma_over_numpy: float
    """locate_cluster on disk / the numpy baseline."""


def summarise(rows: Sequence[Row]) -> RoutingSummary:
    by_name = {name: p50 for name, p50, _ in rows}
    routing = by_name[EMBED] + by_name[LOCATE_DISK] + by_name[SELECT]
    sync = next(p50 for name, p50, _ in rows if name.startswith(GRAPH_SYNC))
    return RoutingSummary(
        routing_ms=routing,
        graph_over_routing=sync / routing,
        embed_share=by_name[EMBED] / routing,
        chroma_over_numpy=by_name[LOCATE_DISK] / by_name[LOCATE_NUMPY],
    )


def print_rows(rows: Sequence[Row]) -> None:
    print(f"{'step':<52} {'p50 ms':>9} {'p95 ms':>9}")
    for name, p50, p95 in rows:
        print(f"{name:<52} {p50:>9.2f} {p95:>9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--clusters", type=int, default=16)
    parser.add_argument("--top-n", type=int, default=2)
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--chroma-server", action="store_true", help="also measure a Chroma server")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="avengers-bench-"))
    server = None
    try:
        embeddings = LocalEmbeddings()
        experts = instant_experts()
        store = ClusterStore(path=work / "store", name="bench")
        started = time.perf_counter()
        calibrate(
            experts,
            embeddings,
            questions(args.questions, seed=0),
            store,
            n_clusters=args.clusters,
            samples=1,
            cache=work / "cache.sqlite",
        )
        print(
            f"calibration of {args.questions} questions x {len(experts)} instant experts: "
            f"{time.perf_counter() - started:.2f} s"
        )

        stores = {"chroma on disk": store}
        if args.chroma_server:
            server, stores["chroma server"] = serve_store(store, work / "server")
        probe = [q["question"] for q in questions(args.questions, seed=1)]
        rows = measure_routing(
            embeddings, stores, experts, probe, top_n=args.top_n, samples=args.samples
        )

        shape = f"K={args.clusters}, top_n={args.top_n}, samples={args.samples}"
        print(f"\n{len(probe)} questions, {shape}")
        print_rows(rows)
        summary = summarise(rows)
        print(f"\nrouting steps (embed + locate + select), p50 sum: {summary.routing_ms:.2f} ms")
        print(f"whole graph / routing steps (p50): {summary.graph_over_routing:.2f}x")
        print(f"embed share of routing (p50): {summary.embed_share:.0%}")
        print(f"chroma on disk / numpy for locate (p50): {summary.chroma_over_numpy:.0f}x")
    finally:
        if server is not None:
            stop(server)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
