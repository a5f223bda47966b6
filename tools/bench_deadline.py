"""How far past its budget a run goes when experts hang and programs loop.

Each case runs the real graph (an embedded Chroma store, a small deterministic
embedding, langchain-openai clients over HTTP on 127.0.0.1) ``--runs`` times and
prints the wall time of the whole ``invoke`` and its overshoot: the time past the
budget the case sets (``run_timeout``, or the call's ``timeout`` for code).

- ``hung``: one expert's server accepts requests and never answers, the other answers
  at once (``run_timeout=3``, ``timeout=300``): sync, async, and sync with the hung
  expert's client limited to one request at a time (its second sample queues).
- ``code vote``: six samples answer with programs that loop for ever; the vote runs
  them by behaviour (real sandbox) with ``timeout=2``.
- ``program``: a ``program`` expert's answer loops for ever (``timeout=0.5``).

The code cases take no ``run_timeout``, so the same script measures the code before
the deadline existed (``PYTHONPATH`` at an older checkout): ``--cases code`` there.

Usage: ``PYTHONPATH=. python tools/bench_deadline.py --runs 3`` (results in
docs/reliability.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from bench_load import HashEmbeddings
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from avengers_graph import create_avengers_graph
from avengers_graph.stores.chroma import ClusterStore, ExpertStats, StoreInfo

_DIM = 16
"""The dimension of :class:`bench_load.HashEmbeddings`."""
_CODE_QUESTION = (
    "Complete this function.\n\ndef add(a: int, b: int) -> int:\n"
    '    """Add two numbers.\n    >>> add(2, 3)\n    5\n    """\n'
)


class Constant(BaseChatModel):
    """A chat model that answers ``reply`` at once."""

    reply: str

    @property
    def _llm_type(self) -> str:
        return "constant"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=AIMessage(self.reply))])


@contextlib.contextmanager
def _server(reply: str | None) -> Iterator[str]:
    """An OpenAI-compatible server on 127.0.0.1 answering ``reply`` (None: never answers)."""
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            del format, args

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if reply is None:
                release.wait(600)
                return
            body = json.dumps(
                {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 0,
                    "model": "m",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": reply},
                            "finish_reason": "stop",
                        }
                    ],
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        release.set()
        httpd.shutdown()
        httpd.server_close()


def _store(path: Path, experts: list[str]) -> ClusterStore:
    vector = np.ones((1, _DIM)) / np.sqrt(_DIM)
    store = ClusterStore(path=path, name="deadline")
    store.write(
        StoreInfo(
            name="deadline",
            embedding_model=HashEmbeddings.model_name,
            embedding_dim=_DIM,
            n_clusters=1,
            seed=0,
            experts=tuple(experts),
        ),
        centroids=vector,
        sizes=[0],
        stats={0: {name: ExpertStats(9 - i, 10) for i, name in enumerate(experts)}},
        questions=[],
        question_vectors=np.zeros((0, _DIM)),
    )
    return store


def _client(url: str, **kwargs: Any) -> BaseChatModel:
    if kwargs:
        from avengers_graph.experts.openai_compatible import ChatOpenAICompatible

        return ChatOpenAICompatible(model="m", base_url=url, api_key=SecretStr("EMPTY"), **kwargs)
    return ChatOpenAI(model="m", base_url=url, api_key=SecretStr("EMPTY"))


def _timed(run: Callable[[], Any]) -> float:
    began = time.perf_counter()
    with contextlib.suppress(Exception):  # a run may end in an error: its time still counts
        run()
    return time.perf_counter() - began


def _hung_cases(folder: Path) -> Iterator[tuple[str, float, Callable[[], Any]]]:
    with _server(None) as hung, _server("So \\boxed{7}.") as good:
        store = _store(folder / "hung", ["hung", "good"])
        question = {"messages": [HumanMessage("What is 3 + 4?")]}
        options = {"top_n": 2, "samples": 2, "timeout": 300, "run_timeout": 3}
        embeddings = HashEmbeddings()
        plain = create_avengers_graph(
            {"hung": _client(hung), "good": _client(good)}, embeddings, store, **options
        )
        queued = create_avengers_graph(
            {"hung": _client(hung, max_concurrent_requests=1), "good": _client(good)},
            embeddings,
            store,
            **options,
        )
        yield "hung server, sync (run_timeout=3)", 3.0, lambda: plain.invoke(question)
        yield (
            "hung server, async (run_timeout=3)",
            3.0,
            lambda: asyncio.run(plain.ainvoke(question)),
        )
        yield (
            "hung server, sync, one slot (run_timeout=3)",
            3.0,
            lambda: queued.invoke(question),
        )


def _code_cases(folder: Path) -> Iterator[tuple[str, float, Callable[[], Any]]]:
    from avengers_graph.experts.contract import Expert

    def looping(i: int) -> Constant:
        code = f"def add(a, b):\n    n = {i}\n    while True:\n        n += 1\n"
        return Constant(reply=f"```python\n{code}```")

    names = ["first", "second", "third"]
    vote = create_avengers_graph(
        {name: looping(i) for i, name in enumerate(names)},
        HashEmbeddings(),
        _store(folder / "code", names),
        top_n=3,
        samples=2,
        timeout=2,
    )
    program = Expert(Constant(reply="```python\nwhile True:\n    pass\n```"), "program")
    answer = create_avengers_graph(
        {"program": program},
        HashEmbeddings(),
        _store(folder / "program", ["program"]),
        top_n=1,
        samples=1,
        timeout=0.5,
    )
    yield (
        "code vote, six looping programs (timeout=2)",
        2.0,
        lambda: vote.invoke({"messages": [HumanMessage(_CODE_QUESTION)]}),
    )
    yield (
        "program answer that loops (timeout=0.5)",
        0.5,
        lambda: answer.invoke({"messages": [HumanMessage("What is 6 * 7?")]}),
    )


def main() -> None:
    """Run the cases and print one Markdown row per case."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cases", choices=["all", "hung", "code"], default="all")
    args = parser.parse_args()
    print(
        f"# {args.runs} runs per case; {os.cpu_count()} cores, "
        f"1-min load {os.getloadavg()[0]:.2f} before the run"
    )
    print("| case | budget s | median s | max s | max overshoot s |")
    print("|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="avengers-deadline-") as folder:
        groups = []
        if args.cases in ("all", "hung"):
            groups.append(_hung_cases(Path(folder)))
        if args.cases in ("all", "code"):
            groups.append(_code_cases(Path(folder)))
        for group in groups:
            for name, budget, run in group:
                times = [_timed(run) for _ in range(args.runs)]
                print(
                    f"| {name} | {budget:g} | {statistics.median(times):.2f} | "
                    f"{max(times):.2f} | {max(times) - budget:+.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
