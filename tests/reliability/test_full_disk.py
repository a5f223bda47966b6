"""A full disk under the answer cache stops calibration before it calls more experts.

Real parts: a 1 MiB tmpfs mounted for the test (root only: skipped where mounting is
not allowed; ``tests/unit/test_calibration.py`` makes SQLite's writes fail instead),
the SQLite answer cache on it, a calibration in its own process.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from avengers_graph import AnswerCache, ClusterStore
from tests.reliability._store_fixtures import ROOT, child_env

CHILD = textwrap.dedent(
    """
    import json, sys
    from avengers_graph import ClusterStore, calibrate
    from avengers_graph.errors import AvengersError
    from tests.fakes import KeywordEmbeddings, ScriptedExpert

    cache, store = sys.argv[1], sys.argv[2]
    big = "x" * 30_000 + " \\\\boxed{1}"
    experts = {n: ScriptedExpert(model=n, respond=lambda q, s: big) for n in ("a", "b")}
    dataset = [{"id": f"q{i}", "question": f"math {i}", "answer": "1", "kind": "number"}
               for i in range(20)]
    outcome = {"error": None, "message": ""}
    try:
        calibrate(experts, KeywordEmbeddings({"math": 0}), dataset, ClusterStore(path=store),
                  n_clusters=1, samples=2, max_concurrency=1, cache=cache)
    except AvengersError as exc:
        outcome = {"error": type(exc).__name__, "message": str(exc)}
    outcome["calls"] = sum(e.calls for e in experts.values())
    print(json.dumps(outcome))
    """
)
TOTAL = 2 * 20 * 2


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: the unit tests simulate the full disk instead")
    mounted = subprocess.run(  # noqa: S603 - fixed command
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if mounted.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({mounted.stderr.strip()}): the unit tests "
            "simulate the full disk instead"
        )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30)  # noqa: S603, S607


def run_child(cache: Path, store: Path) -> dict[str, object]:
    result = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", CHILD, str(cache), str(store)],
        capture_output=True,
        text=True,
        check=False,
        env=child_env(),
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    outcome: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return outcome


def test_a_full_disk_stops_the_run_and_keeps_every_saved_answer(
    small_disk: Path, tmp_path: Path
) -> None:
    cache = small_disk / "answers.sqlite"
    store = tmp_path / "store"
    outcome = run_child(cache, store)
    assert outcome["error"] == "CacheError", outcome
    message = str(outcome["message"])
    assert "before calling more experts" in message
    assert str(cache) in message
    assert "full" in message

    saved = AnswerCache(cache)
    kept = len(saved)
    assert 0 < kept < TOTAL
    assert outcome["calls"] == kept + 1  # the one answer that could not be written, no more
    assert saved._conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    saved.close()
    assert ClusterStore(path=store).is_empty()

    # With room again, the same run resumes: only the missing calls are made.
    subprocess.run(  # noqa: S603 - fixed command
        ["mount", "-o", "remount,size=16m", str(small_disk)],  # noqa: S607
        check=True,
        timeout=30,
    )
    again = run_child(cache, store)
    assert again["error"] is None, again
    assert again["calls"] == TOTAL - kept
    assert len(AnswerCache(cache)) == TOTAL
