"""The README's quick start runs as written, on the servers `avengers local up` started.

A fresh user (``newcomer``: no ``AVENGERS_*`` variable, an empty cache folder) runs the
section's ``bash`` block (``avengers local up``: the bundled pool's three models, each
in a llama.cpp server on a free port), then its first ``python`` block, unchanged, in an
empty working folder: experts from ``pool_experts("local")``, a calibration on the
README's four questions, one answer with its votes.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.integration.conftest import Newcomer, readme_blocks, requires_llama_server

pytestmark = requires_llama_server
_HANG_GUARD_S = 1800  # not a timing assertion: only stops a wedged run


def test_the_quick_start_runs_as_written(newcomer: Newcomer, tmp_path: Path) -> None:
    python = [code for language, code in readme_blocks("Quick start") if language == "python"]
    assert "pool_experts" in python[0]
    result = subprocess.run(  # noqa: S603 - our interpreter running the README's code
        [sys.executable, "-c", python[0]],
        cwd=tmp_path,
        env=newcomer.env,
        capture_output=True,
        text=True,
        timeout=_HANG_GUARD_S,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    accuracy, *answer, votes = result.stdout.strip().splitlines()
    # report.experts: every expert of the bundled pool, with an accuracy
    experts = ast.literal_eval(accuracy)
    assert set(experts) == {
        "qwen2.5-coder-1.5b:direct",
        "qwen2.5-coder-1.5b:program",
        "qwen2.5-coder-0.5b:direct",
        "qwen2.5-coder-0.5b:program",
        "smollm2-135m",
    }
    assert all(0.0 <= value <= 1.0 for value in experts.values())
    assert "\n".join(answer).strip()  # the voted answer's text
    assert isinstance(ast.literal_eval(votes), dict)  # e.g. {'144': 3.0}
    # everything the code wrote is where it said: its store, in its working folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my-store"]
    assert (newcomer.cache / "servers.json").is_file()  # the servers of `avengers local up`


def test_init_avengers_says_what_to_run_before_calibrating(newcomer: Newcomer) -> None:
    code = "from avengers_graph import init_avengers\ninit_avengers('local')\n"
    result = subprocess.run(  # noqa: S603 - our interpreter
        [sys.executable, "-c", code],
        env=newcomer.env,
        capture_output=True,
        text=True,
        timeout=_HANG_GUARD_S,
        check=False,
    )
    assert result.returncode == 1
    assert "EmptyStoreError" in result.stderr
    assert "run `avengers calibrate`" in result.stderr
