"""The examples run for real, each as its own process, on the bundled local pool.

The module starts the pool's three llama.cpp servers once in a cache folder of its
own (model files joined from the installed model packages, as ``avengers local up``
does); each example finds them running through ``AVENGERS_CACHE_DIR``, so
``local_avengers()`` leaves them alone. The first example to run calibrates the store
at ``AVENGERS_STORE_PATH`` by replaying the bundled recorded answers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import requires_llama_server

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
TESTS = ROOT / "tests"
pytestmark = requires_llama_server

_HANG_GUARD_S = 1800  # not a timing assertion: only stops a wedged example


@pytest.fixture(scope="module")
def example_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """A working folder and the environment of an example; the pool's servers up."""
    from avengers_graph.app.config import load_pool_config
    from avengers_graph.app.embedded import bundled
    from avengers_graph.local.pool import LocalPool

    work = tmp_path_factory.mktemp("examples")
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"AVENGERS_CONFIG", "AVENGERS_CHROMA_HOST", "AVENGERS_POOL"}
    }
    env |= {
        "AVENGERS_CACHE_DIR": str(work / "cache"),
        "AVENGERS_STORE_PATH": str(work / "store"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "ANONYMIZED_TELEMETRY": "False",
    }
    servers = LocalPool(work / "cache")
    try:
        servers.up(load_pool_config(bundled("local_pool.yaml")).local_models())
        yield work, env
    finally:
        servers.down()


def run_example(name: str, example_env: tuple[Path, dict[str, str]]) -> str:
    """Run ``examples/<name>``; fail with its output unless it exits with 0."""
    work, env = example_env
    result = subprocess.run(  # noqa: S603 - our interpreter, our example
        [sys.executable, str(EXAMPLES / name)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=_HANG_GUARD_S,
        check=False,
    )
    assert result.returncode == 0, (
        f"{name} exited with {result.returncode}\n--- stdout\n{result.stdout}"
        f"\n--- stderr (tail)\n{result.stderr[-4000:]}"
    )
    return result.stdout


def test_rag_pipeline(example_env: tuple[Path, dict[str, str]]) -> None:
    out = run_example("rag_pipeline.py", example_env)
    # exit status 0 already means every answer holds its expected fact
    assert "3 of 3 answers contain the expected fact." in out
    sources = [line for line in out.splitlines() if line.strip().startswith("sources:")]
    assert len(sources) == 3
    for source, document in zip(sources, ["history.md", "telescope.md", "visits.md"], strict=True):
        assert document in source
    assert out.count("votes: {") == 3


def test_graph_node(example_env: tuple[Path, dict[str, str]]) -> None:
    out = run_example("graph_node.py", example_env)
    state = out.split("State of thread 'example':", 1)[1].splitlines()
    roles = [line.strip().split(":", 1)[0] for line in state if line.startswith("  ")]
    # both turns are in the checkpoint of the one thread: the parent graph remembers
    assert roles[:4] == ["human", "ai", "human", "ai"]
    assert "I have 3 cats and 2 dogs" in state[1]
    assert any(line.strip().startswith("turn 1 (") for line in state)
    assert any(line.strip().startswith("turn 2 (") for line in state)


def test_structured_output(example_env: tuple[Path, dict[str, str]]) -> None:
    out = run_example("structured_output.py", example_env)
    # exit status 0 already means both quantities were extracted right
    assert "Order(customer='Priya" in out
    assert "quantity=3" in out
    assert "quantity=12" in out
    assert out.count("votes (tool_calls") == 2


def test_every_example_script_is_run_by_a_test() -> None:
    scripts = sorted(path.name for path in EXAMPLES.glob("*.py"))
    tests = [path.read_text(encoding="utf-8") for path in TESTS.rglob("test_*.py")]
    untested = [name for name in scripts if not any(name in text for text in tests)]
    assert scripts, "no example scripts found"
    assert not untested, f"examples no test runs: {untested}"
