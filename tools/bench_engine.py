"""Engine benchmark: llama.cpp's ``llama-server`` against llama-cpp-python's server.

Measured side by side in one run, on the same GGUF files and the same prompt (a long
story, ``--engine-tokens`` generated tokens per sample, temperature 0.7, one seed per
sample), each number the median of ``--engine-repeats`` runs:

1. one expert (Qwen2.5-Coder-0.5B, one server with all the cores): 1, 3 and 6
   samples sent at once; wall time, ratio to one sample, generated tokens per second;
2. the default ensemble's sampling step: 2 experts x 3 samples sent at once (the
   default pool's Qwen2.5-Coder-0.5B and Gemma-3-270M, while its three servers run
   with the cores split among them), against one call of its slowest expert;
3. speculative decoding on llama-server: Qwen2.5-Coder-1.5B alone against the same
   with Qwen2.5-Coder-0.5B drafting, 1 and 3 samples (``--spec-repeats`` runs each);
4. peak memory (VmHWM) of every server, and the cost of the llama-server build
   (from its ``build.json``).

The old engine runs with ``--old-engine-python`` (an interpreter that has
``llama-cpp-python[server]``, e.g. a separate venv); without it that column is skipped
with a message. Every server started here is stopped at the end.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from avengers_graph.app.config import KEYLESS_API_KEY
from avengers_graph.experts.openai_compatible import ChatOpenAICompatible
from avengers_graph.local.models import MODELS, ensure_model
from avengers_graph.local.pool import LocalPool, ServerSpec
from avengers_graph.local.server import install_dir, server_binary

ONE = "qwen2.5-coder-0.5b"
PAIR = ("qwen2.5-coder-0.5b", "gemma3-270m")
POOL = ("smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b")
TARGET, DRAFT = "qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b"
PROMPT = "Write a long story about a dragon who learns to bake bread. Use many details."
TEMPERATURE = 0.7


@dataclass(frozen=True)
class Row:
    """One line of the engine table."""

    engine: str
    case: str
    seconds: float
    ratio: float | None
    """To the reference of its group (one sample, or one call of the slowest expert)."""
    tokens: float
    """Generated tokens of the whole case (all samples), median run."""

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def _client(name: str, base_url: str, tokens: int, limit: int | None) -> ChatOpenAICompatible:
    return ChatOpenAICompatible(
        model=name,
        base_url=base_url,
        api_key=SecretStr(KEYLESS_API_KEY),
        max_completion_tokens=tokens,
        temperature=TEMPERATURE,
        timeout=900,
        max_retries=0,
        max_concurrent_requests=limit,
    )


def _at_once(calls: Sequence[tuple[ChatOpenAICompatible, int]]) -> tuple[float, int]:
    """Send every (client, seed) call at once; wall seconds and generated tokens."""

    def one(call: tuple[ChatOpenAICompatible, int]) -> int:
        client, seed = call
        reply = client.invoke(PROMPT, seed=seed)
        usage = reply.usage_metadata
        return usage["output_tokens"] if usage else 0

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(calls)) as threads:
        tokens = sum(threads.map(one, calls))
    return time.perf_counter() - started, tokens


def _median_run(
    calls: Sequence[tuple[ChatOpenAICompatible, int]], repeats: int
) -> tuple[float, float]:
    runs = []
    for repeat in range(repeats):
        shifted = [(client, seed + 1000 * repeat) for client, seed in calls]
        runs.append(_at_once(shifted))
    seconds = statistics.median(run[0] for run in runs)
    tokens = statistics.median(run[1] for run in runs)
    return seconds, tokens


def peak_rss_mib(pid: int) -> float:
    """Peak resident memory of a process (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- the old engine ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _models_answer(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@contextmanager
def old_servers(
    python: str, names: Sequence[str], threads: int, work: Path
) -> Iterator[dict[str, tuple[str, int]]]:
    """llama-cpp-python servers (one per model, as the old LocalPool ran them).

    Yields model name to (base URL, pid).
    """
    processes: list[subprocess.Popen[bytes]] = []
    started: dict[str, tuple[str, int]] = {}
    try:
        for name in names:
            spec = MODELS[name]
            port = _free_port()
            model: dict[str, Any] = {
                "model": str(ensure_model(name, work)),
                "model_alias": name,
                "n_ctx": spec.n_ctx,
                "n_threads": threads,
                "n_threads_batch": threads,
                "logits_all": False,
                "verbose": False,
            }
            if spec.chat_format is not None:
                model["chat_format"] = spec.chat_format
            config = work / f"old-{name}.json"
            config.write_text(
                json.dumps(
                    {
                        "host": "127.0.0.1",
                        "port": port,
                        "interrupt_requests": False,
                        "models": [model],
                    }
                )
            )
            env = {k: v for k, v in os.environ.items() if k not in {"CONFIG_FILE", "HOST", "PORT"}}
            with (work / f"old-{name}.log").open("wb") as log:
                process = subprocess.Popen(
                    [python, "-m", "llama_cpp.server", "--config_file", str(config)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,
                )
            processes.append(process)
            deadline = time.monotonic() + 180
            while not _models_answer(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the old server of {name} did not start: see {work / f'old-{name}.log'}"
                    )
                time.sleep(0.2)
            started[name] = (f"http://127.0.0.1:{port}/v1", process.pid)
        yield started
    finally:
        for process in processes:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)


def has_old_engine(python: str) -> bool:
    """Whether ``python`` can import llama-cpp-python's server."""
    result = subprocess.run(
        [python, "-c", "import llama_cpp.server.app"],
        capture_output=True,
        check=False,
        timeout=120,
    )
    return result.returncode == 0


# -- the cases ----------------------------------------------------------------------------


def one_expert_rows(
    engine: str, base_url: str, samples: Sequence[int], tokens: int, repeats: int, limit: int | None
) -> list[Row]:
    client = _client(ONE, base_url, tokens, limit)
    _at_once([(client, 999)])  # warm up: the prompt is in the cache for every case
    rows: list[Row] = []
    reference = None
    for n in samples:
        seconds, generated = _median_run([(client, seed) for seed in range(n)], repeats)
        reference = reference or seconds
        rows.append(
            Row(engine, f"{ONE}: {n} sample(s) at once", seconds, seconds / reference, generated)
        )
    return rows


def ensemble_rows(
    engine: str, urls: dict[str, str], tokens: int, repeats: int, limit: int | None
) -> list[Row]:
    clients = {name: _client(name, urls[name], tokens, limit) for name in PAIR}
    _at_once([(clients[name], 999) for name in PAIR])
    singles = {name: _median_run([(clients[name], 0)], repeats) for name in PAIR}
    slowest = max(PAIR, key=lambda name: singles[name][0])
    one_seconds, one_tokens = singles[slowest]
    calls = [(clients[name], seed) for name in PAIR for seed in range(3)]
    seconds, generated = _median_run(calls, repeats)
    return [
        Row(
            engine,
            f"ensemble: one call of its slowest expert ({slowest})",
            one_seconds,
            1.0,
            one_tokens,
        ),
        Row(
            engine,
            "ensemble: 2 experts x 3 samples at once",
            seconds,
            seconds / one_seconds,
            generated,
        ),
    ]


def engine_rows(
    work: Path,
    *,
    old_python: str | None,
    tokens: int,
    repeats: int,
    samples: Sequence[int] = (1, 3, 6),
    spec_repeats: int = 1,
    say: Any = print,
) -> tuple[list[Row], dict[str, float], dict[str, Any]]:
    """Every case on both engines; also peak memory per server (MiB) and the build's cost."""
    cores = len(os.sched_getaffinity(0))
    rows: list[Row] = []
    memory: dict[str, float] = {}
    record = json.loads((install_dir_of_binary() / "build.json").read_text())
    build = {
        "build_seconds": record.get("build_seconds"),
        "binary_mib": round(record["size"] / 2**20, 1),
        "llama_cpp_commit": record.get("llama_cpp_commit"),
        "cmake_flags": record.get("cmake_flags"),
    }

    pool = LocalPool(work / "engine-pool")
    try:
        say(f"(e) llama-server: {ONE}, {max(samples)} slots, {cores} threads")
        [info] = pool.up([ServerSpec(ONE, slots=max(samples), threads=cores)], timeout=300)
        rows += one_expert_rows("llama-server", info.base_url, samples, tokens, repeats, info.slots)
        memory[f"llama-server {ONE} ({info.slots} slots)"] = peak_rss_mib(info.pid)
        pool.down()

        say("(e) llama-server: the default pool's three servers, 3 slots each")
        infos = pool.up(list(POOL), slots=3, timeout=300)
        urls = {i.model: i.base_url for i in infos}
        rows += ensemble_rows("llama-server", urls, tokens, repeats, 3)
        for i in infos:
            memory[f"llama-server {i.model} (3 slots, {i.threads} thread)"] = peak_rss_mib(i.pid)
        pool.down()

        for draft in (None, DRAFT):
            label = f"{TARGET}" + (f" + {DRAFT} drafting" if draft else " alone")
            say(f"(e) llama-server: {label}")
            spec = ServerSpec(TARGET, slots=3, threads=cores, draft=draft or "")
            [info] = pool.up([spec], timeout=300)
            client = _client(TARGET, info.base_url, tokens, info.slots)
            _at_once([(client, 999)])
            for n in (1, 3):
                calls = [(client, s) for s in range(n)]
                seconds, generated = _median_run(calls, spec_repeats)
                rows.append(
                    Row(
                        "llama-server",
                        f"speculative: {label}, {n} sample(s)",
                        seconds,
                        None,
                        generated,
                    )
                )
            memory[f"llama-server {label}"] = peak_rss_mib(info.pid)
            pool.down()
    finally:
        pool.down()

    if old_python is None:
        say("(e) old engine skipped: no interpreter with llama-cpp-python[server] given")
        return rows, memory, build
    say(f"(e) llama-cpp-python's server ({old_python}): {ONE}, {cores} threads")
    models = work / "engine-pool"
    with old_servers(old_python, [ONE], cores, models) as servers:
        url, pid = servers[ONE]
        rows += one_expert_rows("llama-cpp-python", url, samples, tokens, repeats, None)
        memory[f"llama-cpp-python {ONE}"] = peak_rss_mib(pid)
    say("(e) llama-cpp-python's server: the default pool's three servers, 1 thread each")
    with old_servers(old_python, list(POOL), max(1, cores // len(POOL)), models) as servers:
        rows += ensemble_rows(
            "llama-cpp-python", {n: u for n, (u, _) in servers.items()}, tokens, repeats, None
        )
        for name, (_, pid) in servers.items():
            memory[f"llama-cpp-python {name}"] = peak_rss_mib(pid)
    return rows, memory, build


def install_dir_of_binary() -> Path:
    """The folder of the checked llama-server build in use."""
    binary = server_binary()
    return binary.parent if (binary.parent / "build.json").is_file() else install_dir(binary.parent)
