"""Two calibrations into one store at once: the second is refused, the first stays whole.

Real parts: two calibration processes, an embedded Chroma store (file lock) or a
``chroma run`` server (writer lease).
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from avengers_graph import ClusterStore
from tests.reliability._store_fixtures import ROOT, child_env, chroma_server

pytestmark = [pytest.mark.enable_socket]

N_QUESTIONS = 24
CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    from avengers_graph import ClusterStore, calibrate
    from avengers_graph.errors import AvengersError
    from tests.fakes import KeywordEmbeddings, ScriptedExpert

    location, k = json.loads(sys.argv[1]), int(sys.argv[2])
    gate, cache = sys.argv[3], sys.argv[4]
    words = ["math", "code", "poem", "law", "bio", "art"]
    dataset = [{"id": f"q{i}", "question": f"{words[i % 6]} {words[(i // 6) % 6]} {i}",
                "answer": "1", "kind": "number"} for i in range(24)]

    def respond(question, seed):
        deadline = time.monotonic() + 120
        while gate and not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.05)  # held until the test lets it go
        return "\\\\boxed{1}"

    experts = {f"e{k}": ScriptedExpert(model=f"e{k}", respond=respond)}
    started = []

    def progress(done, total):
        if not started:
            started.append(True)
            print("STARTED", flush=True)

    outcome = {"error": None, "message": ""}
    try:
        calibrate(experts, KeywordEmbeddings({w: i for i, w in enumerate(words)}), dataset,
                  ClusterStore(**location, name="shared"), n_clusters=k, samples=2,
                  max_concurrency=1, cache=cache, progress=progress)
    except AvengersError as exc:
        outcome = {"error": type(exc).__name__, "message": str(exc)}
    print(json.dumps(outcome), flush=True)
    """
)


class Child:
    def __init__(self, location: dict[str, Any], k: int, gate: str, cache: Path) -> None:
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and script
            [sys.executable, "-c", CHILD, json.dumps(location), str(k), gate, str(cache)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
            cwd=ROOT,
        )
        self.lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.strip())
        self.lines.put("")

    def line(self, timeout: float = 120) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            self.process.kill()
            raise AssertionError("the calibration child printed nothing in time") from None

    def outcome(self) -> dict[str, Any]:
        line = self.line(300)
        while line == "STARTED":
            line = self.line(300)
        assert line, self.process.stderr.read() if self.process.stderr else ""
        self.process.wait(timeout=60)
        result: dict[str, Any] = json.loads(line)
        return result

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture(params=["embedded", "server"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    if request.param == "embedded":
        yield {"path": str(tmp_path / "store")}
        return
    with chroma_server(tmp_path / "chroma") as server:
        yield {"host": server.host, "port": server.port}


def test_a_second_calibration_is_refused_and_the_first_stays_whole(
    location: dict[str, Any], tmp_path: Path
) -> None:
    gate = tmp_path / "let-the-first-finish"
    first = Child(location, k=4, gate=str(gate), cache=tmp_path / "first.sqlite")
    second: Child | None = None
    try:
        assert first.line() == "STARTED"  # it holds the store, its experts are waiting
        second = Child(location, k=6, gate="", cache=tmp_path / "second.sqlite")
        refused = second.outcome()
        gate.touch()
        assert refused["error"] == "StoreBusyError", refused
        assert "one writer at a time" in refused["message"]
        assert "pool 'shared'" in refused["message"]
        done = first.outcome()
        assert done["error"] is None, done
    finally:
        first.kill()
        if second is not None:
            second.kill()
    store = ClusterStore(**location, name="shared")
    info = store.info()
    assert info.n_clusters == 4
    assert info.experts == ("e4",)
    assert store.centroids().shape[0] == 4
    assert sorted(store.stats()) == [0, 1, 2, 3]
    assert {q.cluster for q in store.questions()} <= {0, 1, 2, 3}
    assert sum(store.sizes().values()) == N_QUESTIONS
