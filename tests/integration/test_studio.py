"""``langgraph dev`` serves ``graphs/avengers.py``; driven through ``langgraph_sdk``.

The graph is configured by environment variables only (``AVENGERS_*``): a pool file
whose one expert is a real llama.cpp server running SmolLM2, and a store calibrated
through that server.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from avengers_graph import ClusterStore, LocalEmbeddings, calibrate
from tests.integration.conftest import requires_llama_server

ROOT = Path(__file__).resolve().parents[2]
pytestmark = requires_llama_server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from avengers_graph.app.config import load_pool_config
    from avengers_graph.local.pool import LocalPool

    work = tmp_path_factory.mktemp("studio")
    cache = work / "cache"
    pool_file = work / "pool.yaml"
    pool_file.write_text(
        "experts:\n  - {name: smollm2, local: smollm2-135m, max_tokens: 24}\n"
        f"store: {{path: '{work / 'store'}', name: studio}}\n"
        "routing: {top_n: 1, samples: 2, seed: 0}\n"
    )
    servers = LocalPool(cache)
    servers.up(["smollm2-135m"])
    try:
        pool = load_pool_config(pool_file)
        urls = {name: s.base_url for name, s in servers.servers().items()}
        dataset = [
            {"question": "What is 2 + 3?", "answer": "5", "kind": "number"},
            {"question": "Say hello.", "answer": "hello", "kind": "text"},
        ]
        calibrate(
            pool.build_experts(urls),
            LocalEmbeddings(),
            dataset,
            ClusterStore(path=work / "store", name="studio"),
            n_clusters=1,
            samples=1,
            max_tokens=16,
            cache=cache / "answers.sqlite",
        )
        port = _free_port()
        env = {
            **os.environ,
            "AVENGERS_CONFIG": str(pool_file),
            "AVENGERS_CACHE_DIR": str(cache),
            "LANGGRAPH_CLI_NO_ANALYTICS": "1",
            "LANGGRAPH_NO_VERSION_CHECK": "1",
            "HF_HUB_OFFLINE": "1",
        }
        log = (work / "langgraph.log").open("wb")
        cli = Path(sys.executable).parent / "langgraph"
        proc = subprocess.Popen(  # noqa: S603 - our own executable
            [str(cli), "dev", "--no-browser", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        from langgraph_sdk import get_sync_client

        client = get_sync_client(url=url)
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"langgraph dev exited: {(work / 'langgraph.log').read_text()[-3000:]}")
            try:
                client.assistants.search(graph_id="avengers")
                break
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    tail = (work / "langgraph.log").read_text()[-3000:]
                    pytest.fail(f"langgraph dev did not start: {tail}")
                time.sleep(0.5)
        yield url
        proc.terminate()
        proc.wait(timeout=20)
    finally:
        servers.down()


def test_studio_serves_the_graph_and_runs_it(studio: str) -> None:
    from langgraph_sdk import get_sync_client

    client = get_sync_client(url=studio)
    (assistant,) = client.assistants.search(graph_id="avengers")
    graph = client.assistants.get_graph(assistant["assistant_id"])
    assert {n["id"] for n in graph["nodes"]} >= {
        "embed",
        "locate_cluster",
        "select_experts",
        "sample",
        "vote",
    }

    thread = client.threads.create()
    out = client.runs.wait(
        thread["thread_id"],
        assistant["assistant_id"],
        input={"messages": [{"role": "user", "content": "What is 4 + 4?"}]},
    )
    assert out["messages"][-1]["type"] == "ai"
    record = out["avengers"]
    assert [e["name"] for e in record["experts"]] == ["smollm2"]
    assert len(record["samples"]) == 2
    state = client.threads.get_state(thread["thread_id"])
    assert len(state["values"]["messages"]) == 2
    assert state["values"]["avengers"]["seed"] == 0
