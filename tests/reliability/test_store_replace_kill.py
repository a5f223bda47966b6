"""A calibration killed during ``replace`` leaves a store that serves, never empty or mixed.

A real calibration runs in a subprocess against an embedded store that holds an older
calibration. The child pauses at its k-th Chroma write (create, add, modify, delete)
and is killed there with SIGKILL, for every k of a full run. After each kill a new
process-local store must serve either the old calibration or the new one, complete:
its K, its experts, its statistics, its questions and centroids all from one run.
Then the next calibration must go through (the dead writer's lock is gone) and leave
no collection of the killed one behind.
"""

from __future__ import annotations

import queue
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import chromadb
import numpy as np
from chromadb.config import Settings

from avengers_graph import ChatAvengers, ClusterStore, calibrate
from tests.fakes import KeywordEmbeddings, ScriptedExpert, constant
from tests.reliability._store_fixtures import ROOT, child_env

KEYWORDS = {"math": 0, "code": 1, "poem": 2}
DATASET = [
    {"id": f"{topic}{i}", "question": f"{topic} item {i}", "answer": "1", "kind": "number"}
    for topic in KEYWORDS
    for i in range(4)
]
OLD = {"experts": ("alpha", "beta"), "k": 2}
NEW = {"experts": ("gamma",), "k": 3}

CHILD = textwrap.dedent(
    """
    import sys, time
    from chromadb.api.client import Client
    from chromadb.api.models.Collection import Collection
    from avengers_graph import ClusterStore, calibrate
    from tests.fakes import KeywordEmbeddings, ScriptedExpert, constant
    from tests.reliability.test_store_replace_kill import DATASET, KEYWORDS

    folder, pause_at = sys.argv[1], int(sys.argv[2])
    writes = 0

    def pausing(name, original):
        def call(*args, **kwargs):
            global writes
            writes += 1
            if writes == pause_at:
                print(f"PAUSED {writes} {name}", flush=True)
                time.sleep(600)
            return original(*args, **kwargs)
        return call

    for name in ("add", "modify", "delete"):
        setattr(Collection, name, pausing(name, getattr(Collection, name)))
    for name in ("create_collection", "delete_collection"):
        setattr(Client, name, pausing(name, getattr(Client, name)))

    experts = {"gamma": ScriptedExpert(model="gamma", respond=constant("\\\\boxed{1}"))}
    calibrate(experts, KeywordEmbeddings(KEYWORDS), DATASET, ClusterStore(path=folder),
              n_clusters=3, samples=1, replace=True, cache=folder + "-cache.sqlite")
    print(f"DONE {writes}", flush=True)
    """
)


def old_store(folder: Path) -> None:
    experts = {
        name: ScriptedExpert(model=name, respond=constant("\\boxed{1}")) for name in OLD["experts"]
    }
    calibrate(
        experts,
        KeywordEmbeddings(KEYWORDS),
        DATASET,
        ClusterStore(path=folder),
        n_clusters=OLD["k"],
        samples=1,
        cache=folder.parent / "old-cache.sqlite",
    )


def run_child(folder: Path, pause_at: int) -> tuple[str, subprocess.Popen[str]]:
    """Start the child; return its first line (PAUSED... or DONE...) and the process."""
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", CHILD, str(folder), str(pause_at)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
        cwd=ROOT,
    )
    lines: queue.SimpleQueue[str] = queue.SimpleQueue()
    assert process.stdout is not None
    stdout = process.stdout
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    try:
        line = lines.get(timeout=120)
    except queue.Empty:
        process.kill()
        raise AssertionError("the calibration child printed nothing within 120 s") from None
    if not line:
        process.wait(timeout=30)
        assert process.stderr is not None
        raise AssertionError(f"the child exited {process.returncode}: {process.stderr.read()}")
    return line.strip(), process


def served(folder: Path) -> str:
    """Which calibration the store serves ("old" or "new"), checking it is complete."""
    store = ClusterStore(path=folder)
    info = store.info()
    which = "old" if info.experts == OLD["experts"] else "new"
    expected = OLD if which == "old" else NEW
    assert info.experts == expected["experts"]
    k = int(expected["k"])
    assert info.n_clusters == k
    assert store.centroids().shape == (k, len(KEYWORDS) + 1)
    assert sorted(store.stats()) == list(range(k))
    assert {e for by_expert in store.stats().values() for e in by_expert} == set(info.experts)
    questions = store.questions()
    assert [q.id for q in questions] == [row["id"] for row in DATASET]
    assert {q.cluster for q in questions} == set(range(k))  # labels from the same K-means
    assert sum(store.sizes().values()) == len(DATASET)
    assert store.question_vectors().shape == (len(DATASET), len(KEYWORDS) + 1)
    # and it routes: a real graph answers through it
    llm = ChatAvengers(
        experts={
            name: ScriptedExpert(model=name, respond=constant("\\boxed{1}"))
            for name in info.experts
        },
        embeddings=KeywordEmbeddings(KEYWORDS),
        store=store,
    )
    assert llm.invoke("math item 9").text == "\\boxed{1}"
    return which


def test_a_replace_killed_at_every_write_leaves_a_complete_calibration(tmp_path: Path) -> None:
    template = tmp_path / "template" / "store"
    old_store(template)
    assert served(template) == "old"

    probe = tmp_path / "probe" / "store"
    shutil.copytree(template, probe)
    line, process = run_child(probe, pause_at=0)
    assert process.wait(timeout=120) == 0
    assert line.startswith("DONE ")
    writes = int(line.split()[1])
    assert served(probe) == "new"
    assert writes >= 7  # two generations created and filled, the switch, the deletes

    seen: dict[str, list[int]] = {"old": [], "new": []}
    for pause_at in range(1, writes + 1):
        folder = tmp_path / f"kill-{pause_at}" / "store"
        shutil.copytree(template, folder)
        line, process = run_child(folder, pause_at)
        assert line.startswith(f"PAUSED {pause_at} "), line
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        seen[served(folder)].append(pause_at)
    # Killed before the switch: the old calibration; after it: the new one. Never empty.
    assert seen["old"]
    assert seen["new"]
    assert max(seen["old"]) < min(seen["new"])
    np.testing.assert_array_equal(sorted(seen["old"] + seen["new"]), range(1, writes + 1))

    # The dead writers' locks are gone: the next calibration completes and deletes
    # everything the killed one left.
    for pause_at in range(1, writes + 1):
        folder = tmp_path / f"kill-{pause_at}" / "store"
        line, process = run_child(folder, pause_at=0)
        assert process.wait(timeout=120) == 0, line
        assert served(folder) == "new"
        raw = chromadb.PersistentClient(str(folder), settings=Settings(anonymized_telemetry=False))
        live = set(ClusterStore(path=folder).collection_names().values())
        assert {c.name for c in raw.list_collections()} == live
