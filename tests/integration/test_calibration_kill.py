"""A calibration killed with SIGKILL resumes without repeating any cached expert call."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from avengers_graph import AnswerCache, ClusterStore, calibrate
from tests.fakes import KeywordEmbeddings, ScriptedExpert

ROOT = Path(__file__).resolve().parents[2]
N_ITEMS, SAMPLES = 8, 2
SCRIPT = textwrap.dedent(
    """
    import sys
    from avengers_graph import ClusterStore, calibrate
    from tests.fakes import KeywordEmbeddings, ScriptedExpert, constant

    work, n_items, samples = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    dataset = [{"id": f"q{i}", "question": f"math item {i}", "answer": str(i), "kind": "number"}
               for i in range(n_items)]
    experts = {name: ScriptedExpert(model=name, respond=constant("\\\\boxed{1}"), delay=0.2)
               for name in ("a", "b")}
    calibrate(experts, KeywordEmbeddings({"math": 0}), dataset, ClusterStore(path=work + "/store"),
              n_clusters=1, samples=samples, max_concurrency=1, cache=work + "/cache.sqlite")
    """
)


def test_sigkilled_calibration_resumes_from_the_cache(tmp_path: Path) -> None:
    total = 2 * N_ITEMS * SAMPLES
    cache_path = tmp_path / "cache.sqlite"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", SCRIPT, str(tmp_path), str(N_ITEMS), str(SAMPLES)], cwd=ROOT, env=env
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if cache_path.exists() and len(AnswerCache(cache_path)) >= 6:
                break
            if proc.poll() is not None:
                raise AssertionError(f"calibration exited early with {proc.returncode}")
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    cached = len(AnswerCache(cache_path))
    assert 6 <= cached < total
    store = ClusterStore(path=tmp_path / "store")
    assert store.is_empty()  # killed before writing: nothing half-written

    experts = {
        name: ScriptedExpert(model=name, respond=lambda q, s: "\\boxed{1}") for name in ("a", "b")
    }
    dataset = [
        {"id": f"q{i}", "question": f"math item {i}", "answer": str(i), "kind": "number"}
        for i in range(N_ITEMS)
    ]
    report = calibrate(
        experts,
        KeywordEmbeddings({"math": 0}),
        dataset,
        store,
        n_clusters=1,
        samples=SAMPLES,
        cache=cache_path,
    )
    assert sum(e.calls for e in experts.values()) == total - cached
    assert report.cached == cached
    assert report.experts == {"a": 1 / N_ITEMS, "b": 1 / N_ITEMS}  # only item 1 is right
