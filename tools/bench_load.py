"""Load: waves of concurrent ``ChatAvengers.ainvoke`` calls with instant experts.

Each wave starts ``--concurrency`` calls at once (``asyncio.gather``), each asking its
own question (``What is i plus one?``); three in-process experts answer at once with
``\\boxed{i + 1}``, read from the question they were sent. The graph, the chat model,
MiniLM-free routing (a small deterministic embedding) and an embedded Chroma store run
for real, so what is measured is the ensemble's own machinery under load.

Checks, per wave (the script exits with status 1 if one fails):

- every call got exactly one answer, and it is its own question's (none lost,
  duplicated or crossed with another call's);
- every question got exactly ``top_n * samples`` expert calls (no sample lost or made
  twice);
- the routing record of every answer counts ``top_n * samples`` samples and no failure.

Memory, after each wave and a full garbage collection: the process's resident set
(``VmRSS``), the objects the collector tracks, and (``--tracemalloc``) the bytes
Python has allocated. Flat means the last waves do not grow over the second one (the
first wave pays one-time imports and caches).

Usage: ``PYTHONPATH=. python tools/bench_load.py --concurrency 200 --waves 10``
(results in docs/reliability.md).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import os
import platform
import re
import sys
import tempfile
import threading
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import PrivateAttr

from avengers_graph import ChatAvengers
from avengers_graph.stores.chroma import ClusterStore, ExpertStats, StoredQuestion, StoreInfo

_DIM = 16
_QUESTION = re.compile(r"What is (\d+) plus one\?")
_EXPERTS = ("first", "second", "third")


class HashEmbeddings(Embeddings):
    """A deterministic, instant embedding: a text's SHA-256 bytes as a unit vector."""

    model_name = "hash-16"

    def _vector(self, text: str) -> list[float]:
        digest = hashlib.sha256(text.encode()).digest()[:_DIM]
        vector = np.frombuffer(digest, dtype=np.uint8).astype(float) + 1.0
        return (vector / np.linalg.norm(vector)).tolist()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """One vector per text."""
        return [self._vector(text) for text in texts]

    def embed_query(self, text: str) -> list[float]:
        """The text's vector."""
        return self._vector(text)


class InstantExpert(BaseChatModel):
    """Answers ``What is i plus one?`` with ``\\boxed{i + 1}`` at once; counts its calls."""

    _calls: Counter[int] = PrivateAttr(default_factory=Counter)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "instant"

    @property
    def calls(self) -> Counter[int]:
        """Calls per question number."""
        return self._calls

    def _answer(self, messages: list[BaseMessage]) -> ChatResult:
        human = next(m for m in reversed(messages) if isinstance(m, HumanMessage))
        found = _QUESTION.search(human.text)
        number = int(found.group(1)) if found else -1
        with self._lock:
            self._calls[number] += 1
        message = AIMessage(
            f"So the answer is \\boxed{{{number + 1}}}.",
            usage_metadata={"input_tokens": 8, "output_tokens": 6, "total_tokens": 14},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._answer(messages)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._answer(messages)


def _store(path: Path, embeddings: HashEmbeddings) -> ClusterStore:
    """One calibrated cluster per expert strength (an embedded Chroma store)."""
    texts = [f"What is {i} plus one?" for i in range(4)]
    vectors = np.asarray(embeddings.embed_documents(texts))
    store = ClusterStore(path=path, name="load")
    store.write(
        StoreInfo(
            name="load",
            embedding_model=embeddings.model_name,
            embedding_dim=_DIM,
            n_clusters=4,
            seed=0,
            experts=_EXPERTS,
        ),
        centroids=vectors,
        sizes=[1] * 4,
        stats={
            cluster: {
                name: ExpertStats(5 + (rank + cluster) % 3, 10)
                for rank, name in enumerate(_EXPERTS)
            }
            for cluster in range(4)
        },
        questions=[
            StoredQuestion(f"q{i}", t, str(i + 1), "number", i) for i, t in enumerate(texts)
        ],
        question_vectors=vectors,
    )
    return store


def _rss_mib() -> float:
    """The process's resident set now (``VmRSS``), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _wave(
    llm: ChatAvengers, experts: dict[str, InstantExpert], start: int, count: int
) -> tuple[float, list[str]]:
    """One wave of ``count`` concurrent calls; returns its seconds and the problems found."""
    numbers = range(start, start + count)
    began = time.perf_counter()
    answers = await asyncio.gather(
        *(llm.ainvoke(f"What is {n} plus one?") for n in numbers), return_exceptions=True
    )
    seconds = time.perf_counter() - began
    problems: list[str] = []
    planned = llm.top_n * llm.samples
    for number, answer in zip(numbers, answers, strict=True):
        if isinstance(answer, BaseException):
            problems.append(f"q{number}: {type(answer).__name__}: {answer}")
            continue
        if answer.text != f"So the answer is \\boxed{{{number + 1}}}.":
            problems.append(f"q{number}: answered {answer.text!r}")
        record = answer.response_metadata["avengers"]
        if len(record["samples"]) != planned or record["failures"]:
            problems.append(f"q{number}: {len(record['samples'])} samples, {record['failures']}")
        calls = sum(expert.calls[number] for expert in experts.values())
        if calls != planned:
            problems.append(f"q{number}: {calls} expert calls, {planned} planned")
    return seconds, problems


async def _main(args: argparse.Namespace) -> int:
    embeddings = HashEmbeddings()
    experts = {name: InstantExpert() for name in _EXPERTS}
    with tempfile.TemporaryDirectory(prefix="avengers-load-") as folder:
        llm = ChatAvengers(
            experts=experts,
            embeddings=embeddings,
            store=_store(Path(folder) / "store", embeddings),
            top_n=args.top_n,
            samples=args.samples,
            seed=0,
        )
        if args.tracemalloc:
            tracemalloc.start()
        print(
            f"# {args.waves} waves of {args.concurrency} concurrent ChatAvengers.ainvoke calls, "
            f"top_n={args.top_n}, samples={args.samples}; Python {platform.python_version()}, "
            f"{os.cpu_count()} cores, 1-min load {os.getloadavg()[0]:.2f} before the run"
        )
        print("| wave | calls | seconds | calls/s | RSS MiB | gc objects | traced MiB | problems |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        failed = 0
        rows: list[tuple[float, int, float]] = []
        for wave in range(args.waves):
            seconds, problems = await _wave(llm, experts, wave * args.concurrency, args.concurrency)
            gc.collect()
            traced = tracemalloc.get_traced_memory()[0] / 2**20 if args.tracemalloc else 0.0
            rows.append((_rss_mib(), len(gc.get_objects()), traced))
            rss, objects, _ = rows[-1]
            print(
                f"| {wave + 1} | {args.concurrency} | {seconds:.2f} | "
                f"{args.concurrency / seconds:.0f} | {rss:.1f} | {objects} | "
                f"{f'{traced:.1f}' if args.tracemalloc else '-'} | "
                f"{len(problems)} |"
            )
            for problem in problems[:5]:
                print(f"  {problem}", file=sys.stderr)
            failed += len(problems)
        second, last = rows[min(1, len(rows) - 1)], rows[-1]
        print(
            f"\nanswered {args.waves * args.concurrency - failed} of "
            f"{args.waves * args.concurrency} calls correctly and exactly once; from wave 2 to "
            f"wave {args.waves}: RSS {last[0] - second[0]:+.1f} MiB, gc objects "
            f"{last[1] - second[1]:+d}"
            + (f", traced {last[2] - second[2]:+.2f} MiB" if args.tracemalloc else "")
        )
    return 1 if failed else 0


def main() -> None:
    """Parse the options, run the waves, exit 1 if a call was lost, duplicated or crossed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--waves", type=int, default=10)
    parser.add_argument("--top-n", type=int, default=2)
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument(
        "--tracemalloc", action="store_true", help="Also count Python's allocations (slower)."
    )
    args = parser.parse_args()
    raise SystemExit(asyncio.run(_main(args)))


if __name__ == "__main__":
    main()
