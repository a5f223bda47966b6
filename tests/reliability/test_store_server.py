"""A Chroma server that stops answering, and two writers on one server store.

Real parts: ``chroma run`` in its own process, stopped with SIGSTOP (it keeps its
socket open and never answers), and writers in separate processes.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from avengers_graph import store as store_module
from avengers_graph.errors import StoreBusyError, StoreTimeoutError
from avengers_graph.store import ClusterStore, ExpertStats, StoredQuestion, StoreInfo
from tests.reliability._store_fixtures import ROOT, ChromaServer, child_env, chroma_server

pytestmark = [pytest.mark.enable_socket]


def write(store: ClusterStore, experts: tuple[str, ...] = ("a",)) -> None:
    store.write(
        StoreInfo(
            name="",
            embedding_model="tiny",
            embedding_dim=2,
            n_clusters=2,
            seed=0,
            experts=experts,
        ),
        centroids=np.eye(2),
        sizes=[1, 1],
        stats={0: {experts[0]: ExpertStats(1, 1)}},
        questions=[StoredQuestion("q0", "x", "1", "number", 0)],
        question_vectors=np.eye(2)[:1],
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ChromaServer]:
    with chroma_server(tmp_path / "chroma") as running:
        yield running


def outcome_within(call: Callable[[], Any], seconds: float) -> BaseException | None:
    """Run ``call`` on a thread; return what it raised, failing if it is still running."""
    caught: list[BaseException] = []

    def target() -> None:
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - returned for the assertions
            caught.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"the store call was still waiting after {seconds} s"
    return caught[0] if caught else None


@pytest.mark.parametrize("when", ["before the first call", "after connecting"])
def test_a_stopped_server_fails_within_the_timeout_naming_the_server(
    server: ChromaServer, when: str
) -> None:
    store = ClusterStore(host=server.host, port=server.port, name="hang", timeout=2)
    if when == "after connecting":
        write(store)
        store.refresh()
    server.stop()
    try:
        for call in (store.info, store.is_empty, lambda: write(store, ("b",))):
            error = outcome_within(call, 30)
            assert isinstance(error, StoreTimeoutError), error
            message = str(error)
            assert server.url in message
            assert "did not answer within 2 s" in message
    finally:
        server.resume()
    # Once the server answers again, so does the store.
    store.refresh()
    assert store.is_empty() == (when == "before the first call")


HOLDER = textwrap.dedent(
    """
    import sys, time
    from avengers_graph.store import ClusterStore
    store = ClusterStore(host=sys.argv[1], port=int(sys.argv[2]), name="shared")
    with store.write_lock():
        print("holding", flush=True)
        time.sleep(600)
    """
)


def test_a_second_writer_on_a_server_store_is_refused_until_the_lease_expires(
    server: ChromaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    holder = subprocess.Popen(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", HOLDER, server.host, str(server.port)],
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
        cwd=ROOT,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "holding"
        second = ClusterStore(host=server.host, port=server.port, name="shared")
        with pytest.raises(StoreBusyError) as excinfo:
            write(second)
        message = str(excinfo.value)
        assert f"pid {holder.pid}" in message
        assert server.url in message
        assert second.is_empty()  # the refused writer wrote nothing
        # The holder dies without releasing the lease: it is taken over once stale.
        holder.kill()
        holder.wait(timeout=10)
        monkeypatch.setattr(store_module, "LEASE_TTL_S", 0.5)
        threading.Event().wait(1.0)
        write(second)
        assert ClusterStore(host=server.host, port=server.port, name="shared").info().experts == (
            "a",
        )
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=10)
