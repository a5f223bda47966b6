"""The CLI against a real llama-server: local build/up/status, calibrate, ask, inspect, down.

The terminal is 80 columns wide: no view may cut a number, a name or a URL.
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

from typer.testing import CliRunner

from avengers_graph.app.cli import app
from avengers_graph.local.server import find_server
from tests.integration.conftest import requires_llama_server

pytestmark = requires_llama_server
runner = CliRunner()


def flat(output: str) -> str:
    return " ".join(re.sub(r"[\u2500-\u257f]", " ", output).split())


def assert_fits(output: str) -> None:
    """Every line fits 80 columns, and nothing was cut short with an ellipsis."""
    assert all(len(line) <= 80 for line in output.splitlines()), output
    assert "\u2026" not in output, output


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def check_status(env: dict[str, str], port: int) -> None:
    """`local status` shows the server, its whole URL on its line; --json all of it."""
    status = runner.invoke(app, ["local", "status"], env=env)
    assert "healthy" in status.output
    assert_fits(status.output)
    assert any(
        "smollm2-135m" in line and f"http://127.0.0.1:{port}/v1" in line
        for line in status.output.splitlines()
    )
    as_json = runner.invoke(app, ["local", "status", "--json"], env=env)
    [server] = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert server["name"] == "smollm2-135m"
    assert server["url"] == f"http://127.0.0.1:{port}/v1"
    assert server["slots"] == 2
    assert server["threads"] >= 1
    assert server["state"] == "healthy"
    assert isinstance(server["pid"], int)


def test_cli_lifecycle_on_a_real_server(tmp_path: Path) -> None:
    env = {"AVENGERS_CACHE_DIR": str(tmp_path / "cache"), "COLUMNS": "80"}
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
        # the build the CLI finds with its environment (the user-wide one): no rebuild
        assert str(find_server({**os.environ, **env})) in flat(built.output)
        port = free_port()
        up = runner.invoke(
            app, ["local", "up", "--config", str(config), "--port", str(port)], env=env
        )
        assert up.exit_code == 0, up.output
        assert f"smollm2-135m: http://127.0.0.1:{port}/v1" in up.output
        assert "2 slots" in up.output  # the pool's samples
        check_status(env, port)

        calibrated = runner.invoke(
            app, ["calibrate", "--config", str(config), "--dataset", str(dataset)], env=env
        )
        assert calibrated.exit_code == 0, calibrated.output
        assert "2 expert calls made, 0 answers from the cache" in flat(calibrated.output)
        assert_fits(calibrated.output)
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
        assert "smol reason" in flat(explained.output)  # the expert and its strategy
        assert_fits(explained.output.split("A: ", 1)[0])  # the answer itself may be long

        table = runner.invoke(app, ["inspect", "--config", str(config)], env=env)
        assert "cli: 1 clusters" in flat(table.output)
        assert_fits(table.output)
    finally:
        down = runner.invoke(app, ["local", "down"], env=env)
    assert "stopped: smollm2-135m" in down.output
    status = runner.invoke(app, ["local", "status"], env=env)
    assert "healthy" not in status.output
