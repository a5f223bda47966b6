"""The recorded answers shipped with the bundled set cover the demo's calibration exactly."""

from __future__ import annotations

import json

from avengers_graph.app.config import load_pool_config
from avengers_graph.app.embedded import RECORDED_ANSWERS, bundled, read_jsonl
from avengers_graph.calibration import _plan_calls, load_dataset


def test_recorded_answers_hit_every_call_of_the_bundled_calibration() -> None:
    pool = load_pool_config(bundled("local_pool.yaml"))
    urls = {name: f"http://127.0.0.1:{9000 + i}/v1" for i, name in enumerate(pool.local_models())}
    experts = pool.build_experts(urls)
    options = pool.calibration
    calls = _plan_calls(
        experts,
        load_dataset(read_jsonl(bundled("validation.jsonl"))),
        options.samples,
        options.seed,
        options.temperature,
        options.max_tokens,
    )
    recorded = [json.loads(line) for line in bundled(RECORDED_ANSWERS).read_text().splitlines()]
    keys = {row["key"] for row in recorded}
    # direct answers of the three models to all 40 questions, programs of the two Qwen
    # models to the 8 number questions (the only format the program strategy serves)
    assert len(calls) == 40 * 3 + 8 * 2
    assert {call.key for call in calls} == keys
    assert all(row["message"]["type"] == "ai" for row in recorded)
    assert {row["expert"] for row in recorded} == set(experts)
