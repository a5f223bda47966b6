"""``avengers serve`` as a real process on 127.0.0.1, spoken to with the openai SDK and httpx.

The fake pool (``tests/integration/serve_pool.py``: instant experts, a real Chroma store
on disk) is served through ``avengers serve --factory``; the last test serves the local
pool (a real ``llama-server`` with SmolLM2-135M) through ``avengers serve --config``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from typer.testing import CliRunner

from avengers_graph import ClusterStore
from avengers_graph.app.cli import app
from tests.integration.conftest import requires_llama_server

ROOT = Path(__file__).resolve().parents[2]
KEY = "integration-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
FACTORY = "tests.integration.serve_pool:instant_avengers"
MATH = [{"role": "user", "content": "a math problem: what is 6 * 7?"}]
START_TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Served:
    """A running ``avengers serve`` process."""

    process: subprocess.Popen[str]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, timeout: float = START_TIMEOUT_S
) -> Served:
    """Start ``python -m avengers_graph serve ARGS`` on a free port; wait for /health."""
    port = _free_port()
    log = tmp_path / f"serve-{port}.log"
    environment = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "AVENGERS_API_KEYS": KEY,
        "AVENGERS_STORE_PATH": str(tmp_path / "store"),
        **(env or {}),
    }
    with log.open("w") as sink:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and CLI
            [sys.executable, "-m", "avengers_graph", "serve", "--port", str(port), *args],
            cwd=ROOT,
            env=environment,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"avengers serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return Served(process, url, log)
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    stop(Served(process, url, log))
    pytest.fail(f"avengers serve did not answer /health in {timeout:g} s:\n{log.read_text()}")


def stop(served: Served) -> int:
    """SIGTERM, then wait (bounded) for the exit status."""
    if served.process.poll() is None:
        served.process.send_signal(signal.SIGTERM)
        try:
            served.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            served.process.kill()
            served.process.wait(timeout=10)
    return served.process.returncode


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp_path = tmp_path_factory.mktemp("serve")
    served = start(tmp_path, "--factory", FACTORY, "--max-concurrency", "2", "--max-body", "65536")
    try:
        yield served
    finally:
        stop(served)


@pytest.fixture
def sdk(server: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=30)


def in_flight(server: Served) -> float:
    for line in httpx.get(f"{server.url}/metrics", headers=AUTH, timeout=5).text.splitlines():
        if line.startswith("avengers_requests_in_flight "):
            return float(line.split()[1])
    return -1.0


def wait_in_flight(server: Served, count: int) -> None:
    deadline = time.monotonic() + 20
    while in_flight(server) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"{count} requests never were in flight")
        time.sleep(0.05)


def post_in_background(url: str, body: dict[str, Any]) -> tuple[threading.Thread, list[Any]]:
    result: list[Any] = []

    def post() -> None:
        result.append(httpx.post(url, headers=AUTH, json=body, timeout=60))

    thread = threading.Thread(target=post)
    thread.start()
    return thread, result


def test_the_sdk_gets_a_voted_answer_with_usage_and_routing(sdk: openai.OpenAI) -> None:
    models = [model.id for model in sdk.models.list()]
    assert models == ["avengers", "mathy", "coder", "bard"]
    answer = sdk.chat.completions.create(model="avengers", messages=MATH, seed=1)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "So it is \\boxed{42}."
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert answer.usage.total_tokens > 0
    routing = (answer.model_extra or {})["avengers"]
    assert routing["votes"] == {"42": 4}
    # four samples of four agree: a majority's share, which no calibrated map changes
    assert routing["confidence"] == routing["posterior"] == 1.0
    assert [e["name"] for e in routing["experts"]] == ["mathy", "bard"]
    assert routing["seed"] == 1


def test_the_sdk_streams_the_answer(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model="avengers",
        messages=MATH,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "So it is \\boxed{42}."
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens > 0
    assert len({c.id for c in chunks}) == 1


def test_raw_stream_ends_with_done_and_shows_progress(server: Served) -> None:
    body = {"model": "avengers", "messages": MATH, "stream": True}
    with httpx.stream(
        "POST", f"{server.url}/v1/chat/completions", headers=AUTH, json=body, timeout=30
    ) as response:
        lines = [line for line in response.iter_lines() if line]
    assert response.status_code == 200
    assert lines[-1] == "data: [DONE]"
    progress = [json.loads(line[1:]) for line in lines if line.startswith(":")]
    assert progress[0]["avengers"] == "routing"
    assert progress[-1]["avengers"] == "vote"


def test_tools_through_the_sdk(sdk: openai.OpenAI) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "Weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    answer = sdk.chat.completions.create(
        model="avengers",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[tool],  # type: ignore[list-item]
        tool_choice="required",
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.function.name == "weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]


def test_json_schema_through_the_sdk(sdk: openai.OpenAI) -> None:
    answer = sdk.chat.completions.create(
        model="avengers",
        messages=MATH,  # type: ignore[arg-type]
        response_format={
            "type": "json_schema",
            "json_schema": {
                "name": "result",
                "schema": {
                    "type": "object",
                    "properties": {"answer": {"type": "integer"}},
                    "required": ["answer"],
                },
            },
        },
    )
    assert json.loads(answer.choices[0].message.content or "") == {"answer": 42}
    assert (answer.model_extra or {})["avengers"]["answer_format"] == "json"


def test_a_single_expert_by_name(sdk: openai.OpenAI) -> None:
    answer = sdk.chat.completions.create(model="coder", messages=MATH)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "I get \\boxed{41}."
    assert (answer.model_extra or {})["avengers"] == {"expert": "coder"}


def test_without_a_key_every_route_but_health_is_401(server: Served) -> None:
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
    for path in ("/v1/models", "/metrics"):
        assert httpx.get(f"{server.url}{path}", timeout=5).status_code == 401
    refused = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": "avengers", "messages": MATH},
        headers={"Authorization": "Bearer not-the-key-0123456789"},
        timeout=5,
    )
    assert refused.status_code == 401
    assert refused.json()["error"]["type"] == "authentication_error"
    wrong = openai.OpenAI(
        base_url=f"{server.url}/v1", api_key="not-the-key-0123456789", max_retries=0
    )
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model="avengers", messages=MATH)  # type: ignore[arg-type]


def test_an_oversize_body_is_413(server: Served) -> None:
    body = {"model": "avengers", "messages": [{"role": "user", "content": "x" * 131_072}]}
    response = httpx.post(f"{server.url}/v1/chat/completions", headers=AUTH, json=body, timeout=30)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_beyond_the_concurrency_limit_is_429(server: Served) -> None:
    url = f"{server.url}/v1/chat/completions"
    slow = {"model": "avengers", "messages": [{"role": "user", "content": "math: sleep 3"}]}
    running = [post_in_background(url, slow) for _ in range(2)]
    wait_in_flight(server, 2)
    refused = httpx.post(url, headers=AUTH, json={"model": "avengers", "messages": MATH})
    for thread, _ in running:
        thread.join(timeout=60)
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert [result[0].status_code for _, result in running] == [200, 200]
    sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
    assert sdk.chat.completions.create(model="avengers", messages=MATH).choices  # type: ignore[arg-type]


def test_feedback_is_persisted_in_the_store(server: Served, sdk: openai.OpenAI) -> None:
    answer = sdk.chat.completions.create(model="avengers", messages=MATH)  # type: ignore[arg-type]
    verdict = httpx.post(
        f"{server.url}/v1/feedback",
        headers=AUTH,
        json={"id": answer.id, "correct": False},
        timeout=30,
    )
    assert verdict.status_code == 200
    total = verdict.json()["updated"]["0"]["mathy"]["total"]
    assert total > 10
    store_path = Path(server.log).parent / "store"
    assert ClusterStore(path=store_path, name="serve-test").stats()[0]["mathy"].total == total
    # the README's way, through the SDK's client
    again = sdk.post("/feedback", cast_to=httpx.Response, body={"id": answer.id, "correct": False})
    assert again.json()["duplicate"] is True


def test_metrics_and_logs_never_show_the_key(server: Served, sdk: openai.OpenAI) -> None:
    sdk.chat.completions.create(model="avengers", messages=MATH)  # type: ignore[arg-type]
    text = httpx.get(f"{server.url}/metrics", headers=AUTH, timeout=5).text
    assert 'avengers_expert_calls_total{expert="mathy",status="ok"}' in text
    assert "avengers_votes_total" in text
    assert "avengers_request_seconds_bucket" in text
    assert KEY not in text
    assert KEY not in server.output()
    assert "POST /v1/chat/completions" in server.output()  # the access log is on


def test_shutdown_finishes_the_requests_in_flight(tmp_path: Path) -> None:
    served = start(tmp_path, "--factory", FACTORY)
    try:
        body = {"model": "avengers", "messages": [{"role": "user", "content": "math: sleep 2"}]}
        thread, result = post_in_background(f"{served.url}/v1/chat/completions", body)
        wait_in_flight(served, 1)
        served.process.send_signal(signal.SIGTERM)
        thread.join(timeout=60)
        status = served.process.wait(timeout=60)
    finally:
        stop(served)
    assert result[0].status_code == 200
    assert result[0].json()["choices"][0]["message"]["content"] == "So it is \\boxed{42}."
    assert status == 0
    assert "Waiting for connections to close" in served.output()


def test_no_key_refuses_to_serve_beyond_loopback() -> None:
    env = {"AVENGERS_API_KEYS": "", "AVENGERS_API_KEYS_FILE": ""}
    refused = CliRunner().invoke(
        app,
        ["serve", "--host", "0.0.0.0", "--factory", FACTORY],  # noqa: S104 - refused
        env=env,
    )
    assert refused.exit_code == 1
    assert "without an API key" in " ".join(refused.output.split())


@requires_llama_server
def test_the_local_pool_streams_through_the_sdk(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = {"AVENGERS_CACHE_DIR": str(cache)}
    config = tmp_path / "pool.yaml"
    config.write_text(
        "experts:\n  - {name: smol, local: smollm2-135m, max_tokens: 24}\n"
        f"store: {{path: '{tmp_path / 'store'}', name: serve-local}}\n"
        "routing: {top_n: 1, samples: 2, seed: 0}\n"
        "calibration: {n_clusters: 1, samples: 1}\n"
    )
    dataset = tmp_path / "tiny.jsonl"
    dataset.write_text(
        json.dumps({"id": "a", "question": "What is 1 + 1?", "answer": "2", "kind": "number"})
    )
    runner = CliRunner()
    served: Served | None = None
    try:
        up = runner.invoke(app, ["local", "up", "--config", str(config)], env=env)
        assert up.exit_code == 0, up.output
        calibrated = runner.invoke(
            app, ["calibrate", "--config", str(config), "--dataset", str(dataset)], env=env
        )
        assert calibrated.exit_code == 0, calibrated.output
        served = start(tmp_path, "--config", str(config), env=env, timeout=180)
        sdk = openai.OpenAI(base_url=f"{served.url}/v1", api_key=KEY, max_retries=0, timeout=300)
        chunks = list(
            sdk.chat.completions.create(
                model="avengers",
                messages=[{"role": "user", "content": "What is 2 + 2?"}],
                stream=True,
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text.strip()
        final = [c for c in chunks if c.choices and c.choices[0].finish_reason]
        routing = (final[-1].model_extra or {})["avengers"]
        assert routing["experts"][0]["name"] == "smol"
        assert routing["samples"]
        listed = [model.id for model in sdk.models.list()]
        assert listed == ["avengers", "smol"]
    finally:
        if served is not None:
            assert stop(served) == 0, served.output()
        down = runner.invoke(app, ["local", "down"], env=env)
    assert "stopped: smollm2-135m" in down.output
