"""The bundled tool pool: two Qwen models that parse tool calls, calibrated by replay."""

from __future__ import annotations

import json

from avengers_graph.app.config import load_pool_config
from avengers_graph.app.embedded import RECORDED_ANSWERS, bundled, read_jsonl
from avengers_graph.calibration import _plan_calls, load_dataset

TOOLS_ANSWERS = "tools_pool_answers.jsonl"


def _urls(models: list[str]) -> dict[str, str]:
    return {name: f"http://127.0.0.1:{9000 + i}/v1" for i, name in enumerate(models)}


def test_the_tool_pool_is_the_two_qwen_models_with_the_hermes_parser() -> None:
    pool = load_pool_config(bundled("tools_pool.yaml"))
    experts = pool.build_experts(_urls(pool.local_models()))
    assert list(experts) == ["qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b"]
    assert {e.model.tool_call_parser for e in experts.values()} == {"hermes"}  # type: ignore[attr-defined]


def test_recorded_answers_cover_the_tool_pools_calibration_exactly() -> None:
    pool = load_pool_config(bundled("tools_pool.yaml"))
    experts = pool.build_experts(_urls(pool.local_models()))
    options = pool.calibration
    calls = _plan_calls(
        experts,
        load_dataset(read_jsonl(bundled("validation.jsonl"))),
        options.samples,
        options.seed,
        options.temperature,
        options.max_tokens,
    )
    recorded = [
        json.loads(line)
        for name in (RECORDED_ANSWERS, TOOLS_ANSWERS)
        for line in bundled(name).read_text(encoding="utf-8").splitlines()
    ]
    keys = {row["key"] for row in recorded}
    assert len(calls) == 40 * 2
    assert {call.key for call in calls} <= keys
    # each expert reasons (the pool's one strategy), which the demo pool's answers never do
    tools_rows = [json.loads(line) for line in bundled(TOOLS_ANSWERS).read_text().splitlines()]
    assert {row["expert"] for row in tools_rows} == {"qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b"}
    assert {row["key"] for row in tools_rows} == {call.key for call in calls}
