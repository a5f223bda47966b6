"""Real parts for the store, cache and secrets reliability tests.

A ``chroma run`` server of one's own (so a test may SIGSTOP it), an OpenAI-compatible
HTTP server on 127.0.0.1 that answers, hangs, or fails echoing the request's
``Authorization`` header, and helpers to run calibrations and the CLI in subprocesses.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: this checkout first, offline, no telemetry."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "ANONYMIZED_TELEMETRY": "False",
        "NO_COLOR": "1",
        "COLUMNS": "200",
    }
    env.update(extra)
    return env


@dataclass
class ChromaServer:
    """A ``chroma run`` process on a free local port."""

    host: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        """SIGSTOP: the server keeps its socket open and answers nothing."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)


def _heartbeat(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=2) as response:  # noqa: S310 - our http URL
            return bool(response.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def chroma_server(workdir: Path) -> Iterator[ChromaServer]:
    """Start ``chroma run`` in ``workdir``; yield it; stop it (resuming it if stopped)."""
    executable = Path(sys.executable).parent / "chroma"
    host, port = "127.0.0.1", free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    with (workdir / "chroma.log").open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - our own venv's chroma executable
            [
                str(executable),
                "run",
                "--path",
                str(workdir / "data"),
                "--host",
                host,
                "--port",
                str(port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
    server = ChromaServer(host, port, process)
    try:
        deadline = time.monotonic() + 60
        while not _heartbeat(server.url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "chroma run did not start:\n" + (workdir / "chroma.log").read_text()
                )
            time.sleep(0.2)
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGCONT)
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def completion(text: str) -> dict[str, Any]:
    """A minimal OpenAI chat completion carrying ``text``."""
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": "test-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


@dataclass
class FakeOpenAI:
    """An OpenAI-compatible ``/v1/chat/completions`` server on 127.0.0.1.

    ``answer_first`` requests get ``reply(request)``; later ones hang until the
    server stops (``answer_first=None``: every request is answered). With
    ``fail_status`` every request gets that HTTP status and a body quoting the
    request's ``Authorization`` header, like a careless upstream proxy.
    """

    reply: Callable[[dict[str, Any]], str] = lambda request: "\\boxed{1}"
    answer_first: int | None = None
    fail_status: int | None = None
    answered: int = 0
    requests: int = 0
    port: int = 0
    _released: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


@contextlib.contextmanager
def fake_openai(server: FakeOpenAI) -> Iterator[FakeOpenAI]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            del format, args

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            request = json.loads(self.rfile.read(length) or b"{}")
            with server._lock:
                server.requests += 1
                number = server.requests
            if server.fail_status is not None:
                auth = self.headers.get("Authorization", "")
                key = auth.removeprefix("Bearer ")
                message = f"invalid credentials in header '{auth}': key {key} is revoked"
                self._send(server.fail_status, {"error": {"message": message, "type": "auth"}})
                return
            if server.answer_first is not None and number > server.answer_first:
                server._released.wait(600)  # hang: accept, read, never answer
                return
            text = server.reply(request)
            self._send(200, completion(text))
            with server._lock:
                server.answered += 1

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    server.port = int(httpd.server_address[1])
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server._released.set()
        httpd.shutdown()
        httpd.server_close()


def write_pool_file(
    path: Path,
    experts: dict[str, str],
    store: Path | str,
    *,
    cache: Path | None = None,
    api_key_env: str | None = None,
    calibration: dict[str, Any] | None = None,
    routing: dict[str, Any] | None = None,
    timeout: float = 600,
) -> Path:
    """A pool file with OpenAI-compatible experts ``{name: base_url}``, no retries.

    ``timeout`` is each expert client's own (what calibration waits per call);
    ``routing`` the pool's routing options (``timeout``, ``run_timeout``...).
    """
    entries = []
    for name, url in experts.items():
        entry: dict[str, Any] = {
            "name": name,
            "base_url": url,
            "model": f"{name}-model",
            "max_retries": 0,
            "timeout": timeout,
        }
        if api_key_env:
            entry["api_key_env"] = api_key_env
        entries.append(entry)
    options = dict(calibration or {})
    if cache is not None:
        options["cache"] = str(cache)
    data: dict[str, Any] = {
        "experts": entries,
        "store": {"path": str(store), "name": "rel"},
        "calibration": options,
        **({"routing": routing} if routing else {}),
    }
    path.write_text(json.dumps(data, indent=1))
    return path


def write_dataset(path: Path, n: int) -> Path:
    rows = [
        {
            "id": f"q{i}",
            "question": f"What is {i} plus one?",
            "answer": str(i + 1),
            "kind": "number",
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


CLI = [
    sys.executable,
    "-c",
    "from avengers_graph.app.cli import app; app(prog_name='avengers')",
]
"""The ``avengers`` command of this checkout (the module has no ``__main__`` block)."""


def cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``avengers`` (this checkout) in a subprocess; bounded."""
    return subprocess.run(  # noqa: S603 - our own interpreter and module
        [*CLI, *args],
        capture_output=True,
        text=True,
        check=False,
        env=env or child_env(),
        cwd=cwd or ROOT,
        timeout=timeout,
    )


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
