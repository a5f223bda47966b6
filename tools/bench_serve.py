"""Load benchmark of ``avengers serve``: concurrent requests against the real server process.

    python tools/bench_serve.py [--requests 200] [--local 50] [--out docs/benchmarks/serve.md]

1. **Instant experts** (always): ``avengers serve --factory bench_serve:instant_pool``
   on 127.0.0.1 serves three experts that answer at once, routed with the real MiniLM
   embeddings and a Chroma store on disk (calibrated on the bundled validation set),
   ``top_n=2``, ``samples=3``: what is measured is the server and the ensemble's own
   overhead. ``--requests`` requests are sent at once, first plain, then streamed;
   every one must be answered exactly once: status 200, a distinct completion id,
   and the server's own counters (``/metrics``) grown by exactly that many answers and
   ``6 x`` that many expert calls. Reports p50/p99 latency, p50/p99 time to first
   token of the streams, and the server's resident memory before and after.
2. **The local pool** (``--local N``): ``avengers serve`` on the bundled pool (three
   ``llama-server`` processes, in a cache folder of its own): time to first token of a
   streamed answer of the ensemble against each expert alone streaming its own tokens,
   one request at a time; then, unless ``N`` is 0 or the 1-minute load is above
   ``--max-load``, ``N`` concurrent short requests, each answered exactly once,
   p50/p99 latency.

Every request loop is bounded in count and time and sends traffic to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult

ROOT = Path(__file__).resolve().parents[1]
TOOLS = Path(__file__).resolve().parent
INSTANT_STORE = "AVENGERS_BENCH_STORE"
START_TIMEOUT_S = 600.0
REQUEST_TIMEOUT_S = 900.0


class InstantModel(BaseChatModel):
    """An expert that answers at once, sync and async (no thread hop)."""

    answer: str = "The answer is \\boxed{42}."

    @property
    def _llm_type(self) -> str:
        return "instant"

    def _result(self) -> ChatResult:
        message = AIMessage(
            self.answer,
            usage_metadata={"input_tokens": 20, "output_tokens": 8, "total_tokens": 28},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._result()

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._result()


def instant_pool() -> Any:
    """The served pool of part 1 (``--factory bench_serve:instant_pool``)."""
    from avengers_graph import ChatAvengers, ClusterStore, LocalEmbeddings, calibrate
    from avengers_graph.app.embedded import bundled, read_jsonl

    experts = {name: InstantModel() for name in ("alpha", "beta", "gamma")}
    embeddings = LocalEmbeddings()
    store = ClusterStore(path=os.environ[INSTANT_STORE], name="bench-serve")
    if store.is_empty():
        rows = read_jsonl(bundled("validation.jsonl"))
        calibrate(experts, embeddings, rows, store, n_clusters=4, samples=1)
    return ChatAvengers(
        experts=experts, embeddings=embeddings, store=store, top_n=2, samples=3, seed=0
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def rss_mib(self) -> float:
        return psutil.Process(self.process.pid).memory_info().rss / 2**20

    def counter(self, name: str, **labels: str) -> float:
        text = httpx.get(f"{self.url}/metrics", headers=self.headers, timeout=30).text
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        total = 0.0
        for line in text.splitlines():
            match = re.fullmatch(rf"{name}(?:{{(.*)}})? (\S+)", line)
            if match and all(part in (match.group(1) or "") for part in wanted.split(",")):
                total += float(match.group(2))
        return total

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)


def start(args: Sequence[str], env: dict[str, str], log: Path) -> Server:
    port, key = free_port(), secrets.token_urlsafe(24)
    environment = {**os.environ, **env, "AVENGERS_API_KEYS": key}
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "avengers_graph", "serve", "--port", str(port), *args],
            cwd=ROOT,
            env=environment,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    server = Server(process, f"http://127.0.0.1:{port}", key)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"avengers serve exited:\n{log.read_text(errors='replace')}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    server.stop()
    raise SystemExit(f"avengers serve did not start in {START_TIMEOUT_S:g} s")


@dataclass
class Round:
    """The outcome of one batch of concurrent requests."""

    latencies: list[float] = field(default_factory=list)
    first_tokens: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    wall: float = 0.0


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] if values else 0.0


async def one(http: httpx.AsyncClient, server: Server, body: dict[str, Any], result: Round) -> None:
    started = time.perf_counter()
    if not body.get("stream"):
        response = await http.post(
            f"{server.url}/v1/chat/completions", headers=server.headers, json=body
        )
        result.latencies.append(time.perf_counter() - started)
        result.statuses.append(response.status_code)
        if response.status_code == 200:
            result.ids.append(response.json()["id"])
        return
    first: float | None = None
    completion_id = ""
    async with http.stream(
        "POST", f"{server.url}/v1/chat/completions", headers=server.headers, json=body
    ) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            if not completion_id:
                completion_id = re.search(r'"id": "([^"]+)"', line).group(1)  # type: ignore[union-attr]
            if first is None and re.search(r'"content": "[^"]', line):
                first = time.perf_counter() - started
    result.latencies.append(time.perf_counter() - started)
    result.statuses.append(response.status_code)
    result.ids.append(completion_id)
    if first is not None:
        result.first_tokens.append(first)


async def burst(server: Server, bodies: Sequence[dict[str, Any]]) -> Round:
    result = Round()
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
    async with httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT_S) as http:
        started = time.perf_counter()
        await asyncio.gather(*(one(http, server, body, result) for body in bodies))
        result.wall = time.perf_counter() - started
    return result


def check_once(
    server: Server, result: Round, n: int, before: float, calls: tuple[int, float]
) -> str:
    answered = server.counter("avengers_requests_total", route="/v1/chat/completions", status="200")
    per_request, calls_before = calls
    expert_calls = server.counter("avengers_expert_calls_total")
    problems = []
    if result.statuses.count(200) != n:
        problems.append(f"statuses {sorted(set(result.statuses))}")
    if len(set(result.ids)) != n:
        problems.append(f"{len(set(result.ids))} distinct ids")
    if answered - before != n:
        problems.append(f"server counted {answered - before:g} answers")
    if per_request and expert_calls - calls_before != n * per_request:
        problems.append(f"server counted {expert_calls - calls_before:g} expert calls")
    return "yes" if not problems else "NO: " + "; ".join(problems)


def load_average() -> float:
    return os.getloadavg()[0]


def instant(n: int, workdir: Path) -> list[str]:
    env = {
        "PYTHONPATH": os.pathsep.join([str(TOOLS), str(ROOT)]),
        INSTANT_STORE: str(workdir / "store"),
        "HF_HUB_OFFLINE": "1",
        "ANONYMIZED_TELEMETRY": "False",
    }
    args = ["--factory", "bench_serve:instant_pool", "--max-concurrency", str(max(n, 16))]
    server = start(args, env, workdir / "instant.log")
    lines = []
    try:
        warm = asyncio.run(burst(server, [body(0)]))
        if warm.statuses != [200]:
            raise SystemExit(f"warm-up failed: {warm.statuses}")
        rss_before = server.rss_mib()
        load = load_average()
        rows = []
        for stream in (False, True):
            before = server.counter(
                "avengers_requests_total", route="/v1/chat/completions", status="200"
            )
            calls = (6, server.counter("avengers_expert_calls_total"))
            result = asyncio.run(burst(server, [body(i, stream=stream) for i in range(1, n + 1)]))
            once = check_once(server, result, n, before, calls)
            rows.append((stream, result, once))
        rss_after = server.rss_mib()
    finally:
        server.stop()
    lines += [
        f"{n} concurrent requests, instant experts (MiniLM routing, Chroma on disk, "
        f"`top_n=2`, `samples=3`: 6 expert calls each); 1-min load before: {load:.2f}.",
        "",
        "| requests | answered exactly once | wall s | p50 ms | p99 ms | TTFT p50 ms "
        "| TTFT p99 ms |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for stream, result, once in rows:
        ttft = (
            f"{pct(result.first_tokens, 50) * 1000:.0f} | {pct(result.first_tokens, 99) * 1000:.0f}"
            if stream
            else "- | -"
        )
        lines.append(
            f"| {n} {'streamed' if stream else 'plain'} | {once} | {result.wall:.2f} | "
            f"{pct(result.latencies, 50) * 1000:.0f} | {pct(result.latencies, 99) * 1000:.0f} | "
            f"{ttft} |"
        )
    lines += [
        "",
        f"Server resident memory: {rss_before:.0f} MiB after one warm-up request, "
        f"{rss_after:.0f} MiB after both rounds.",
    ]
    return lines


def body(i: int, *, stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {
        "model": extra.pop("model", "avengers"),
        "messages": [{"role": "user", "content": f"Question {i}: what is {i} + {i}?"}],
        "stream": stream,
        **extra,
    }


LOCAL_QUESTIONS = (
    "What is {i} + {i}? Answer with the number only.",
    "Which planet is known as the Red Planet?\nA) Venus\nB) Mars\nC) Jupiter\nD) Saturn",
    "Is this review positive or negative? 'Film number {i} was a joy to watch.'",
)


def local(n: int, workdir: Path, max_tokens: int, max_load: float) -> list[str]:
    """The local pool: time to first token (ensemble against one expert), then ``n`` at once.

    The concurrent part runs only while the 1-minute load is at most ``max_load``.
    """
    env = {
        "AVENGERS_CACHE_DIR": str(workdir / "cache"),
        "AVENGERS_STORE_PATH": str(workdir / "store"),
        "HF_HUB_OFFLINE": "1",
        "ANONYMIZED_TELEMETRY": "False",
    }
    server = start(["--max-concurrency", str(max(n, 16))], env, workdir / "local.log")
    lines = []
    try:
        listed = httpx.get(f"{server.url}/v1/models", headers=server.headers).json()["data"]
        experts = [model["id"] for model in listed[1:]]
        load = load_average()
        ttft: dict[str, list[float]] = {"avengers": [], **{name: [] for name in experts}}
        total: dict[str, list[float]] = {name: [] for name in ttft}
        for i in range(3):
            question = {"role": "user", "content": LOCAL_QUESTIONS[i % 3].format(i=i)}
            for model in ttft:
                request = {
                    "model": model,
                    "messages": [question],
                    "stream": True,
                    "max_tokens": max_tokens,
                }
                result = asyncio.run(burst(server, [request]))
                ttft[model] += result.first_tokens
                total[model] += result.latencies
        lines += [
            f"Streamed answers, one at a time, 3 questions each (`max_tokens={max_tokens}`); "
            f"1-min load before: {load:.2f}.",
            "",
            "| model | first token, median s | whole answer, median s |",
            "| --- | --- | --- |",
        ]
        for model, firsts in ttft.items():
            name = "ensemble (`avengers`)" if model == "avengers" else f"`{model}` alone"
            first = statistics.median(firsts) if firsts else float("nan")
            lines.append(f"| {name} | {first:.2f} | {statistics.median(total[model]):.2f} |")
        lines.append("")
        load = load_average()
        if not n:
            return lines
        if load > max_load:
            lines.append(
                f"{n} concurrent requests: not run, the 1-minute load was {load:.2f} (above "
                f"{max_load}); llama.cpp on shared cores measures the neighbours."
            )
            return lines
        before = server.counter(
            "avengers_requests_total", route="/v1/chat/completions", status="200"
        )
        bodies = [
            {
                "model": "avengers",
                "messages": [{"role": "user", "content": LOCAL_QUESTIONS[i % 3].format(i=i)}],
                "max_tokens": max_tokens,
            }
            for i in range(n)
        ]
        result = asyncio.run(burst(server, bodies))
        once = check_once(server, result, n, before, (0, 0.0))
    finally:
        server.stop()
    lines.append(
        f"{n} concurrent requests to the ensemble (`max_tokens={max_tokens}`), 1-min load "
        f"before: {load:.2f}: answered exactly once: {once}; wall {result.wall:.1f} s, "
        f"p50 {pct(result.latencies, 50):.1f} s, p99 {pct(result.latencies, 99):.1f} s."
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument(
        "--local", type=int, default=-1, help="concurrent requests to the local pool (0: TTFT only)"
    )
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--max-load", type=float, default=0.5)
    parser.add_argument("--out", type=Path)
    options = parser.parse_args()
    lines = [f"Command: `python tools/bench_serve.py {' '.join(sys.argv[1:])}`", ""]
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as folder:
        workdir = Path(folder)
        lines += ["## Instant experts", "", *instant(options.requests, workdir), ""]
        if options.local >= 0:
            lines += ["## The local pool", ""]
            lines += local(options.local, workdir, options.max_tokens, options.max_load)
    text = "\n".join(lines) + "\n"
    print(text)
    if options.out is not None:
        options.out.write_text(text)


if __name__ == "__main__":
    main()
