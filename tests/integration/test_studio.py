"""``langgraph dev`` in a fresh checkout, with no environment set; driven by ``langgraph_sdk``.

The user is the ``newcomer`` (no ``AVENGERS_*`` variable; the bundled pool's models
served by ``avengers local up`` in their own cache folder). The checkout is a copy of
the repository's tracked files, with no ``.env`` and nothing built. ``langgraph dev``
starts there twice:

1. before ``avengers calibrate``: the server starts anyway, logs one line saying what
   to run (no traceback), and a run fails with that line;
2. after it: the bundled pool's graph, through ``langgraph_sdk``.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from avengers_graph.local.models import DEMO_MODELS
from tests.integration.conftest import ROOT, Newcomer, requires_llama_server

pytestmark = requires_llama_server
_START_TIMEOUT_S = 180.0  # not a timing assertion: only stops waiting for a wedged server
DATASET = (
    '{"id": "a", "question": "What is 2 + 3?", "answer": "5", "kind": "number"}\n'
    '{"id": "b", "question": "Which is a fruit?\\nA) Car\\nB) Apple", "answer": "B", '
    '"kind": "choice"}\n'
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository's tracked files, as a fresh clone has them."""
    target = tmp_path_factory.mktemp("checkout")
    listed = subprocess.run(
        ["git", "ls-files", "-z"],  # noqa: S607 - the system's git
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    )
    for name in listed.stdout.decode().split("\0"):
        source = ROOT / name
        if name and source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    assert not (target / ".env").exists()
    return target


@contextmanager
def langgraph_dev(user: Newcomer, checkout: Path, log: Path) -> Iterator[str]:
    """``langgraph dev`` in ``checkout`` as ``user``; yields its URL once it answers."""
    from langgraph_sdk import get_sync_client

    port = _free_port()
    env = {**user.env, "LANGGRAPH_CLI_NO_ANALYTICS": "1", "LANGGRAPH_NO_VERSION_CHECK": "1"}
    with log.open("wb") as output:
        proc = subprocess.Popen(  # noqa: S603 - the venv's langgraph CLI
            ["langgraph", "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1",  # noqa: S607
             "--port", str(port)],
            cwd=checkout,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        client = get_sync_client(url=url, timeout=30)
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"langgraph dev exited: {log.read_text()[-3000:]}")
            try:
                client.assistants.search(graph_id="avengers")
                break
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    pytest.fail(f"langgraph dev did not start: {log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def _ask(url: str, question: str, **context: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """One run on a new thread: ``(the run's output, the thread)``."""
    from langgraph_sdk import get_sync_client

    client = get_sync_client(url=url, timeout=900)
    (assistant,) = client.assistants.search(graph_id="avengers")
    thread = client.threads.create()
    out = client.runs.wait(
        thread["thread_id"],
        assistant["assistant_id"],
        input={"messages": [{"role": "user", "content": question}]},
        context=context or None,
    )
    return out, thread


def test_studio_says_what_to_run_then_serves_the_bundled_pool(
    newcomer: Newcomer, checkout: Path, tmp_path: Path
) -> None:
    from langgraph_sdk import get_sync_client

    before = tmp_path / "before.log"
    with (
        langgraph_dev(newcomer, checkout, before) as url,
        pytest.raises(Exception, match=r"run `avengers calibrate` to build it"),
    ):
        _ask(url, "What is 4 + 4?")  # the run fails with what to run
    text = before.read_text()
    [line] = [line for line in text.splitlines() if "avengers-graph is not ready" in line]
    assert "run `avengers calibrate`" in line
    assert "restart `langgraph dev`" in line
    assert "Traceback" not in text.split("avengers-graph is not ready", 1)[0]

    (tmp_path / "tiny.jsonl").write_text(DATASET)
    calibrated = newcomer.shell(
        f"avengers calibrate --dataset {tmp_path / 'tiny.jsonl'} --clusters 1 --samples 1"
    )
    assert calibrated.returncode == 0, calibrated.stdout + calibrated.stderr

    with langgraph_dev(newcomer, checkout, tmp_path / "after.log") as url:
        client = get_sync_client(url=url, timeout=60)
        (assistant,) = client.assistants.search(graph_id="avengers")
        graph = client.assistants.get_graph(assistant["assistant_id"])
        assert {n["id"] for n in graph["nodes"]} >= {
            "embed",
            "locate_cluster",
            "select_experts",
            "sample",
            "vote",
        }
        out, thread = _ask(url, "What is 4 + 4?", top_n=1, samples=2, seed=0)
        assert out["messages"][-1]["type"] == "ai"
        record = out["avengers"]
        [expert] = record["experts"]
        assert expert["name"].split(":")[0] in DEMO_MODELS  # a model of the bundled pool
        assert len(record["samples"]) + len(record["failures"]) >= 1
        state = client.threads.get_state(thread["thread_id"])
        assert len(state["values"]["messages"]) == 2
        assert state["values"]["avengers"]["seed"] == 0
    assert not (checkout / ".avengers").exists()  # nothing written to the working folder
