"""Shared helpers of the expert and server reliability tests: a one-cluster store, a
bounded wait on a run."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from avengers_graph.embeddings import MINILM_NAME
from avengers_graph.stores.chroma import ClusterStore, ExpertStats, StoreInfo

GUARD_S = 120.0
"""How long a test waits for a run before calling it hung (every wait is bounded)."""


def one_cluster_store(path: Path, experts: list[str]) -> ClusterStore:
    """A calibration of one cluster where ``experts`` are ranked in the order given."""
    vector = np.ones((1, 384)) / np.sqrt(384)
    store = ClusterStore(path=path, name="rel")  # the pool files' store name
    store.write(
        StoreInfo(
            name="",
            embedding_model=MINILM_NAME,
            embedding_dim=384,
            n_clusters=1,
            seed=0,
            experts=tuple(experts),
        ),
        centroids=vector,
        sizes=[0],
        stats={0: {name: ExpertStats(9 - i, 10) for i, name in enumerate(experts)}},
        questions=[],
        question_vectors=np.zeros((0, 384)),
    )
    return store


def finishes(call: Callable[[], Any], seconds: float = GUARD_S) -> Any:
    """Run ``call`` on a thread; return its result, raise what it raised; fail if it hangs."""
    outcome: list[tuple[bool, Any]] = []

    def target() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # noqa: BLE001 - re-raised for the assertions
            outcome.append((False, exc))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"the run was still waiting after {seconds} s"
    ok, value = outcome[0]
    if not ok:
        raise value
    return value
