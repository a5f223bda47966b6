"""A damaged store or answer cache is one line naming the file and the fix, not a traceback.

Real parts: the ``avengers`` CLI in its own process, an embedded Chroma store written
by a real calibration and then damaged on disk, an SQLite answer cache replaced by
garbage.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from avengers_graph.store import ClusterStore, ExpertStats, StoredQuestion, StoreInfo
from tests.reliability._store_fixtures import child_env, cli, write_dataset, write_pool_file

pytestmark = [pytest.mark.enable_socket]

DAMAGE = {
    "zero bytes": b"",
    "garbage": b"\x89 this is not a database \x00" * 400,
    "truncated header": b"SQLite format",
}


def calibrated(folder: Path) -> None:
    ClusterStore(path=folder, name="rel").write(
        StoreInfo(
            name="", embedding_model="tiny", embedding_dim=2, n_clusters=1, seed=0, experts=("a",)
        ),
        centroids=np.ones((1, 2)),
        sizes=[1],
        stats={0: {"a": ExpertStats(1, 1)}},
        questions=[StoredQuestion("q0", "x", "1", "number", 0)],
        question_vectors=np.ones((1, 2)),
    )


def one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, output
    assert "Traceback" not in output
    return " ".join(output[output.index("error:") :].split())


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_store_is_one_line_naming_the_database(tmp_path: Path, damage: str) -> None:
    store = tmp_path / "store"
    calibrated(store)
    database = store / "chroma.sqlite3"
    database.write_bytes(DAMAGE[damage])
    pool = write_pool_file(tmp_path / "pool.json", {"a": "http://127.0.0.1:9/v1"}, store)
    result = cli("inspect", "--config", str(pool), env=child_env())
    assert result.returncode == 1
    message = one_error_line(result.stdout + result.stderr)
    assert str(database) in message
    assert "is damaged" in message
    assert "run calibrate" not in message  # not mistaken for a store never calibrated
    assert "avengers calibrate" in message  # to rebuild it, once moved aside
    assert database.read_bytes() == DAMAGE[damage]  # left for the user to inspect


def test_a_damaged_answer_cache_is_one_line_naming_the_file(tmp_path: Path) -> None:
    cache = tmp_path / "answers.sqlite"
    cache.write_bytes(DAMAGE["garbage"])
    pool = write_pool_file(
        tmp_path / "pool.json", {"a": "http://127.0.0.1:9/v1"}, tmp_path / "store", cache=cache
    )
    dataset = write_dataset(tmp_path / "data.jsonl", 2)
    result = cli(
        "calibrate",
        "--config",
        str(pool),
        "--dataset",
        str(dataset),
        env=child_env(AVENGERS_CACHE_DIR=str(tmp_path / "c")),
    )
    assert result.returncode == 1
    message = one_error_line(result.stdout + result.stderr)
    assert str(cache) in message
    assert "damaged" in message
    assert "Move it aside" in message
