"""examples/agent_with_tools.py runs for real: create_agent over the local tool pool.

The example is run as its own process with a cache folder and a store of its own, so
``local_avengers`` joins the two Qwen2.5-Coder GGUF files from their installed
packages, starts their llama.cpp servers, calibrates the pool on the bundled
validation set (for real: the shipped answers predate the prompt contract), runs the
agent, and stops the servers. The mechanics must hold (tools called, each call run in
order, servers stopped); an agent that ran but missed the final number is an xfail
with the reason seen.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from avengers_graph.app.config import load_pool_config
from avengers_graph.app.embedded import bundled
from avengers_graph.local.models import MODELS, missing_packages
from tests.integration.conftest import requires_llama_server

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "agent_with_tools.py"
POOL_MODELS = load_pool_config(bundled("tools_pool.yaml")).local_models()
_HANG_GUARD_S = 1800  # not a timing assertion: only stops a wedged example

pytestmark = [
    requires_llama_server,
    pytest.mark.skipif(
        any(missing_packages(MODELS[name].packages) for name in POOL_MODELS),
        reason=f"the packages of {', '.join(POOL_MODELS)} are not installed "
        f"(`avengers local fetch {' '.join(POOL_MODELS)}`)",
    ),
]


def test_the_agent_completes_its_two_step_task(tmp_path: Path) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"AVENGERS_CONFIG", "AVENGERS_CHROMA_HOST", "AVENGERS_POOL"}
    }
    env |= {
        "AVENGERS_CACHE_DIR": str(tmp_path / "cache"),
        "AVENGERS_STORE_PATH": str(tmp_path / "store"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "ANONYMIZED_TELEMETRY": "False",
    }
    result = subprocess.run(  # noqa: S603 - our interpreter, our example
        [sys.executable, str(EXAMPLE)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=_HANG_GUARD_S,
        check=False,
    )
    out = result.stdout
    shown = f"--- stdout\n{out}\n--- stderr (tail)\n{result.stderr[-4000:]}"
    # 0: the final answer holds 3 marathons in km; 1: the agent ran but did not get there
    assert result.returncode in {0, 1}, f"the example exited with {result.returncode}\n{shown}"
    calls = re.findall(r"^  tool call: (\w+)\(", out, flags=re.MULTILINE)
    results = re.findall(r"^\[tool (\w+)\] (.*)$", out, flags=re.MULTILINE)
    assert calls, shown
    assert [name for name, _ in results] == calls  # every call ran, in order
    # the servers the example started are stopped again
    from avengers_graph.local.pool import LocalPool

    assert LocalPool(tmp_path / "cache").servers() == {}
    if result.returncode == 1:
        pytest.xfail(
            "the agent ran its tools but its final answer missed 126.49 km: the six samples of "
            "a step can scatter over differently worded texts, each one vote, and a wrong "
            "tool call of three votes wins (seen in CI; the vote keys free text verbatim)"
        )
    assert "task completed" in out
