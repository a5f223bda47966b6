"""Ctrl-C stops ``avengers calibrate`` waiting on a hung expert, and loses no answer.

Real parts: the CLI in its own process (MiniLM embeddings, the embedded store, the
SQLite answer cache) and an OpenAI-compatible HTTP server on 127.0.0.1 spoken to
through langchain-openai, which answers the first requests and then accepts
requests without ever answering them.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest

from avengers_graph import ClusterStore
from tests.processes import terminal_signals
from tests.reliability._store_fixtures import (
    CLI,
    ROOT,
    FakeOpenAI,
    child_env,
    fake_openai,
    wait_for,
    write_dataset,
    write_pool_file,
)

pytestmark = [pytest.mark.enable_socket]

ANSWERED = 3


def cached_answers(path: Path) -> int:
    if not path.exists():
        return 0
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
        try:
            (count,) = conn.execute("SELECT COUNT(*) FROM answers").fetchone()
        except sqlite3.OperationalError:  # the table is not created yet
            return 0
    return int(count)


@pytest.mark.parametrize("signals", [1, 2])
def test_sigint_stops_a_calibration_waiting_on_a_hung_expert(tmp_path: Path, signals: int) -> None:
    cache = tmp_path / "answers.sqlite"
    with fake_openai(FakeOpenAI(answer_first=ANSWERED)) as server:
        pool = write_pool_file(
            tmp_path / "pool.json",
            {"one": server.base_url, "two": server.base_url},
            tmp_path / "store",
            cache=cache,
            calibration={"samples": 2, "n_clusters": 1, "max_concurrency": 2},
        )
        dataset = write_dataset(tmp_path / "data.jsonl", 6)
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and CLI
            [
                *CLI,
                "calibrate",
                "--config",
                str(pool),
                "--dataset",
                str(dataset),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=child_env(AVENGERS_CACHE_DIR=str(tmp_path / "cache-dir")),
            cwd=ROOT,
            preexec_fn=terminal_signals,  # noqa: PLW1509 - only resets two signals
        )
        try:
            # Three answers arrived and were cached; two more calls hang in the server.
            wait_for(lambda: cached_answers(cache) == ANSWERED, 180, "the answered calls")
            wait_for(lambda: server.requests >= ANSWERED + 2, 60, "the hung calls")
            for _ in range(signals):
                process.send_signal(signal.SIGINT)
            output, _ = process.communicate(timeout=15)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    assert process.returncode == 130, output
    assert "interrupted:" in output
    assert "run the same command again" in " ".join(output.split())
    assert "Traceback" not in output
    assert cached_answers(cache) == server.answered == ANSWERED  # every answer kept
    assert ClusterStore(path=tmp_path / "store", name="rel").is_empty()  # nothing half-written
