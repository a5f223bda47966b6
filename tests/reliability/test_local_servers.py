"""Real llama.cpp servers killed mid-request, launchers killed while they wait, and an
environment that must not reach the server.

Real parts: ``llama-server`` (the shared build) serving SmolLM2-135M from its PyPI
package, joined into this module's own cache folder (never the default one, where
other servers may run); ``LocalPool`` and the ``avengers local up`` command in its own
process; langchain-openai clients; MiniLM and an embedded Chroma store; an
OpenAI-compatible HTTP server on 127.0.0.1 standing in for a second, healthy expert.
Skipped (with the reason) where llama-server is not built or the model's package is
not installed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from langchain_core.messages import HumanMessage
from pydantic import SecretStr

from avengers_graph import create_avengers_graph
from avengers_graph.embeddings import LocalEmbeddings
from avengers_graph.experts.openai_compatible import KEYLESS_API_KEY, ChatOpenAICompatible
from avengers_graph.local.models import MODELS, ensure_model, missing_packages
from avengers_graph.local.pool import LocalPool, ServerInfo
from avengers_graph.local.server import find_server
from tests.reliability._run_fixtures import finishes, one_cluster_store
from tests.reliability._store_fixtures import CLI, ROOT, FakeOpenAI, child_env, fake_openai

MODEL = "smollm2-135m"

pytestmark = [
    pytest.mark.enable_socket,
    pytest.mark.skipif(find_server() is None, reason="llama-server is not built"),
    pytest.mark.skipif(
        bool(missing_packages(MODELS[MODEL].packages)),
        reason=f"{MODEL}'s package is not installed ({', '.join(MODELS[MODEL].packages)})",
    ),
]

HOSTILE_ENV = {
    "API_KEY": "x-api-key-from-the-environment",
    "LLAMA_API_KEY": "x-llama-api-key",
    "LLAMA_ARG_API_KEY": "x-llama-arg-api-key",
    "OPENAI_API_KEY": "x-openai-key",
}
"""Keys a user may have set: any that reached llama-server would make it demand one."""


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's cache folder, with SmolLM2's file joined once."""
    folder = tmp_path_factory.mktemp("llama-cache")
    ensure_model(MODEL, folder)
    return folder


@pytest.fixture
def pool(cache: Path) -> Iterator[LocalPool]:
    pool = LocalPool(cache)
    try:
        yield pool
    finally:
        pool.down()


@pytest.fixture(scope="module")
def embeddings() -> LocalEmbeddings:
    return LocalEmbeddings()


def busy_slots(info: ServerInfo) -> int:
    """The server's slots processing a request now (``GET /slots``); 0 once it is gone."""
    try:
        slots = httpx.get(f"http://{info.host}:{info.port}/slots", timeout=2).json()
    except httpx.HTTPError:
        return 0
    return sum(bool(slot.get("is_processing")) for slot in slots)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# killed mid-request -------------------------------------------------------------------------
@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_server_killed_mid_request_fails_its_samples_and_the_vote_goes_on(
    tmp_path: Path, pool: LocalPool, embeddings: LocalEmbeddings, asynchronous: bool
) -> None:
    [info] = pool.up([MODEL], slots=2, threads=1)
    killed = threading.Event()

    def kill_once_both_requests_run() -> None:
        deadline = time.monotonic() + 120
        while busy_slots(info) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        if busy_slots(info) == 2:
            os.kill(info.pid, signal.SIGKILL)
            killed.set()

    with fake_openai(FakeOpenAI(reply=lambda request: "So \\boxed{7}.")) as good:
        experts = {
            MODEL: ChatOpenAICompatible(
                model=MODEL, base_url=info.base_url, api_key=SecretStr(KEYLESS_API_KEY)
            ),
            "good": ChatOpenAICompatible(
                model="m", base_url=good.base_url, api_key=SecretStr(KEYLESS_API_KEY)
            ),
        }
        store = one_cluster_store(tmp_path / "store", [MODEL, "good"])
        graph = create_avengers_graph(
            experts, embeddings, store, top_n=2, samples=2, max_tokens=2000
        )
        question = {
            "messages": [HumanMessage("Tell a very long story about a cat, then: what is 3 + 4?")]
        }
        killer = threading.Thread(target=kill_once_both_requests_run, daemon=True)
        killer.start()
        if asynchronous:
            result = finishes(lambda: asyncio.run(graph.ainvoke(question)))
        else:
            result = finishes(lambda: graph.invoke(question))
        killer.join(5)
    record = result["avengers"]
    assert killed.is_set(), "the server answered before both requests ran at once"
    assert set(record["failures"]) == {MODEL}  # its retries found nothing listening
    assert "Connection" in record["failures"][MODEL]
    assert [sample["expert"] for sample in record["samples"]] == ["good", "good"]
    assert record["votes"] == {"7": 2}
    assert gone(info.pid)
    assert pool.status() == [(info, "dead")]


# the launcher killed while it waits for the server ---------------------------------------------
@pytest.mark.parametrize(
    "signum", [signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name
)
def test_local_up_stopped_while_it_waits_leaves_no_orphan(cache: Path, signum: int) -> None:
    pool = LocalPool(cache)
    launcher = subprocess.Popen(  # noqa: S603 - our own interpreter and CLI
        [*CLI, "local", "up", MODEL, "--threads", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=child_env(AVENGERS_CACHE_DIR=str(cache)),
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 120
        while not (recorded := pool.status()):
            assert launcher.poll() is None, launcher.communicate()[0]
            if time.monotonic() > deadline:  # a hang guard, not a speed check
                pytest.fail("the server was never recorded")
            time.sleep(0.02)
        [(info, state)] = recorded
        assert state != "healthy"  # the model is still loading: up() waits for it
        launcher.send_signal(signum)
        output, _ = launcher.communicate(timeout=60)
        started = f"{MODEL}: {info.base_url}" in output  # up() was done before the signal
        if signum != signal.SIGKILL and not started:
            # the launcher stopped the server it started, then took the signal
            assert gone(info.pid), output
            assert pool.status() == []
            assert "Traceback" not in output
        else:  # killed outright (or already done): the server runs until `down`
            assert not gone(info.pid)
            assert pool.down() == [MODEL]
        assert gone(info.pid)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait(timeout=10)
        pool.down()


# the environment -----------------------------------------------------------------------------
def test_keys_in_the_environment_do_not_reach_the_server(
    pool: LocalPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in HOSTILE_ENV.items():
        monkeypatch.setenv(key, value)
    [info] = pool.up([MODEL], slots=1, threads=1)
    environ = Path(f"/proc/{info.pid}/environ").read_bytes().split(b"\0")
    names = {entry.partition(b"=")[0].decode() for entry in environ if entry}
    assert not names & set(HOSTILE_ENV)
    assert not any(value.encode() in entry for entry in environ for value in HOSTILE_ENV.values())
    # llama-server given a key refuses requests without it; this one asks for none
    response = httpx.get(f"{info.base_url}/models", timeout=10)
    assert response.status_code == 200, response.text
    answer = ChatOpenAICompatible(
        model=MODEL, base_url=info.base_url, api_key=SecretStr(KEYLESS_API_KEY), max_tokens=4
    ).invoke("Say hi.")
    assert answer.text
