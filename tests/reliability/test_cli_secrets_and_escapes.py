"""No secret and no terminal escape reaches the CLI's output.

Real parts: ``avengers calibrate`` and ``avengers ask`` in their own processes
(MiniLM, the embedded store), experts behind OpenAI-compatible HTTP servers on
127.0.0.1 spoken to through langchain-openai: one fails with a body that echoes the
request's ``Authorization`` header and the bare key, another answers with
clear-screen and OSC 52 clipboard sequences.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from avengers_graph.embeddings import MINILM_NAME
from avengers_graph.store import ClusterStore, ExpertStats, StoreInfo
from tests.reliability._store_fixtures import (
    FakeOpenAI,
    child_env,
    cli,
    fake_openai,
    write_dataset,
    write_pool_file,
)

pytestmark = [pytest.mark.enable_socket]

KEY = "opaque-key-0123456789-abcdef"  # no well-known shape: only the configured value hides it
ESCAPES = "\x1b]52;c;ZXZpbA==\x07\x1b[2J\x1b[H\x9b31m\x9d0;title\x9c"
FORBIDDEN = ("\x1b", "\x9b", "\x9d", "\x9c", "\x07")


def echoing_key(request: dict[str, object]) -> str:  # pragma: no cover - never answers
    del request
    return ""


@pytest.fixture
def servers() -> Iterator[tuple[FakeOpenAI, FakeOpenAI]]:
    failing = FakeOpenAI(fail_status=401, reply=echoing_key)
    escaping = FakeOpenAI(reply=lambda request: f"{ESCAPES}The answer is \\boxed{{7}}.{ESCAPES}")
    with fake_openai(failing) as bad, fake_openai(escaping) as good:
        yield bad, good


def assert_clean(output: str) -> None:
    assert KEY not in output
    assert "Bearer ***" in output or "***" in output
    for control in FORBIDDEN:
        assert control not in output, repr(control)
    assert "Traceback" not in output


def test_calibrate_errors_hide_the_key_an_upstream_server_echoes(
    tmp_path: Path, servers: tuple[FakeOpenAI, FakeOpenAI]
) -> None:
    bad, _ = servers
    pool = write_pool_file(
        tmp_path / "pool.json",
        {"keyed": bad.base_url},
        tmp_path / "store",
        cache=tmp_path / "answers.sqlite",
        api_key_env="REL_TEST_KEY",
        calibration={"samples": 1, "n_clusters": 1},
    )
    dataset = write_dataset(tmp_path / "data.jsonl", 2)
    result = cli(
        "calibrate",
        "--config",
        str(pool),
        "--dataset",
        str(dataset),
        env=child_env(REL_TEST_KEY=KEY, AVENGERS_CACHE_DIR=str(tmp_path / "c")),
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert bad.requests >= 1  # the server did get the key, and echoed it
    assert "error:" in output
    assert "401" in output
    assert_clean(output)


def calibrated_store(path: Path) -> None:
    vector = np.ones((1, 384)) / np.sqrt(384)
    ClusterStore(path=path, name="rel").write(
        StoreInfo(
            name="",
            embedding_model=MINILM_NAME,
            embedding_dim=384,
            n_clusters=1,
            seed=0,
            experts=("good", "keyed"),
        ),
        centroids=vector,
        sizes=[0],
        stats={0: {"good": ExpertStats(1, 1), "keyed": ExpertStats(0, 1)}},
        questions=[],
        question_vectors=np.zeros((0, 384)),
    )


@pytest.mark.parametrize("as_json", [False, True])
def test_ask_prints_no_escape_sequence_and_no_key(
    tmp_path: Path, servers: tuple[FakeOpenAI, FakeOpenAI], as_json: bool
) -> None:
    bad, good = servers
    calibrated_store(tmp_path / "store")
    pool = write_pool_file(
        tmp_path / "pool.json",
        {"good": good.base_url, "keyed": bad.base_url},
        tmp_path / "store",
        api_key_env="REL_TEST_KEY",
    )
    question = "What is 3 + 4?\x1b[2J\x1b]52;c;cXVlc3Rpb24=\x07"
    args = ["ask", question, "--config", str(pool), "--top-n", "2", "--samples", "1"]
    result = cli(
        *args,
        *(["--json"] if as_json else []),
        env=child_env(REL_TEST_KEY=KEY, AVENGERS_CACHE_DIR=str(tmp_path / "c")),
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert good.answered == 1
    assert bad.requests == 1
    assert_clean(output)
    if as_json:
        record = json.loads(result.stdout.strip().splitlines()[-1])
        assert record["answer"] == f"{ESCAPES}The answer is \\boxed{{7}}.{ESCAPES}"  # exact text
        assert KEY not in json.dumps(record)
        assert "***" in record["failures"]["keyed"]
    else:
        assert "The answer is \\boxed{7}." in output
        assert "failed: keyed:" in " ".join(output.split())
        assert "What is 3 + 4?" in output
