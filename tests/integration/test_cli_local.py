"""The CLI against a real llama-server: local build/up/status, calibrate, ask, inspect, down."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from avengers_graph.app.cli import app
from avengers_graph.local.server import find_server
from tests.integration.conftest import requires_llama_server

pytestmark = requires_llama_server
runner = CliRunner()


def flat(output: str) -> str:
    return " ".join(output.split())


def test_cli_lifecycle_on_a_real_server(tmp_path: Path) -> None:
    env = {"AVENGERS_CACHE_DIR": str(tmp_path / "cache")}
    config = tmp_path / "pool.yaml"
    config.write_text(
        "experts:\n  - {name: smol, local: smollm2-135m, max_tokens: 16}\n"
        f"store: {{path: '{tmp_path / 'store'}', name: cli}}\n"
        "routing: {top_n: 1, samples: 2, seed: 0}\n"
        "calibration: {n_clusters: 1, samples: 1}\n"
    )
    dataset = tmp_path / "tiny.jsonl"
    dataset.write_text(
        "\n".join(
            json.dumps(row)
            for row in [
                {"id": "a", "question": "What is 1 + 1?", "answer": "2", "kind": "number"},
                {"id": "b", "question": "Say yes.", "answer": "yes", "kind": "text"},
            ]
        )
    )
    try:
        built = runner.invoke(app, ["local", "build"], env=env)
        assert built.exit_code == 0, built.output
        assert str(find_server()) in flat(built.output)  # the user-wide build: no rebuild
        up = runner.invoke(app, ["local", "up", "--config", str(config)], env=env)
        assert up.exit_code == 0, up.output
        assert "smollm2-135m: http://127.0.0.1:" in up.output
        assert "2 slots" in up.output  # the pool's samples
        status = runner.invoke(app, ["local", "status"], env=env)
        assert "healthy" in status.output
        as_json = runner.invoke(app, ["local", "status", "--json"], env=env)
        [server] = [json.loads(line) for line in as_json.stdout.splitlines()]
        assert server["name"] == "smollm2-135m"
        assert server["url"].startswith("http://127.0.0.1:")
        assert server["url"].endswith("/v1")
        assert server["slots"] == 2
        assert server["threads"] >= 1
        assert server["state"] == "healthy"
        assert isinstance(server["pid"], int)

        calibrated = runner.invoke(
            app, ["calibrate", "--config", str(config), "--dataset", str(dataset)], env=env
        )
        assert calibrated.exit_code == 0, calibrated.output
        assert "2 expert calls made, 0 answers from the cache" in flat(calibrated.output)
        again = runner.invoke(
            app,
            ["calibrate", "--config", str(config), "--dataset", str(dataset), "--replace"],
            env=env,
        )
        assert "0 expert calls made, 2 answers from the cache" in flat(again.output)

        asked = runner.invoke(
            app, ["ask", "What is 2 + 2?", "--config", str(config), "--json"], env=env
        )
        assert asked.exit_code == 0, asked.output
        record = json.loads(asked.stdout)
        assert record["experts"][0]["name"] == "smol"
        assert len(record["samples"]) == 2
        assert record["answer"]

        explained = runner.invoke(app, ["ask", "What is 2 + 2?", "--config", str(config)], env=env)
        assert "clusters: #0" in flat(explained.output)
        assert "winner: smol" in flat(explained.output)

        table = runner.invoke(app, ["inspect", "--config", str(config)], env=env)
        assert "cli: 1 clusters" in flat(table.output)
    finally:
        down = runner.invoke(app, ["local", "down"], env=env)
    assert "stopped: smollm2-135m" in down.output
    status = runner.invoke(app, ["local", "status"], env=env)
    assert "healthy" not in status.output
