"""Integration fixtures: a real Chroma server, llama-server checks, sockets allowed.

Unit tests run with ``--disable-socket --allow-unix-socket``; every test collected
under ``tests/integration`` gets the ``enable_socket`` and ``integration`` markers.
``requires_llama_server`` skips a test when llama.cpp's ``llama-server`` is not built
(``avengers local build``, which ``make test`` runs first); a build that fails its
check is an error, not a skip.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from avengers_graph.local.server import find_server

_INTEGRATION_DIR = Path(__file__).resolve().parent
ROOT = _INTEGRATION_DIR.parents[1]
_STARTUP_TIMEOUT_S = 30.0
_COMMAND_TIMEOUT_S = 900.0  # not a timing assertion: only stops a wedged command


requires_llama_server = pytest.mark.skipif(
    find_server() is None,
    reason="llama-server is not built: run `avengers local build` (make install-local does)",
)


def server_metrics(base_url: str) -> dict[str, float]:
    """The Prometheus gauges and counters of a llama-server (``--metrics``), by name."""
    import httpx

    root = base_url.removesuffix("/v1")
    values: dict[str, float] = {}
    for line in httpx.get(f"{root}/metrics", timeout=5).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name.removeprefix("llamacpp:")] = float(value)
    return values


def busy_slots(base_url: str) -> int:
    """How many of a llama-server's slots are processing a request now (``GET /slots``)."""
    import httpx

    root = base_url.removesuffix("/v1")
    return sum(
        bool(slot.get("is_processing")) for slot in httpx.get(f"{root}/slots", timeout=5).json()
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Allow sockets for, and mark, the tests under ``tests/integration`` only."""
    del config
    for item in items:
        if Path(item.path).resolve().is_relative_to(_INTEGRATION_DIR):
            item.add_marker(pytest.mark.enable_socket)
            item.add_marker(pytest.mark.integration)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _chroma_executable() -> Path:
    # The console script sits next to the venv's interpreter (do not resolve symlinks:
    # the venv's python usually links to the base interpreter elsewhere).
    name = "chroma.exe" if sys.platform == "win32" else "chroma"
    return Path(sys.executable).parent / name


def _heartbeat(host: str, port: int) -> bool:
    """Return whether a Chroma server answers its heartbeat on ``host:port``.

    Chroma's HTTP client has no timeout: if something else grabbed the port and
    accepts without answering, ``heartbeat()`` would block forever. A plain HTTP probe
    with a timeout goes first.
    """
    import chromadb
    from chromadb.config import Settings

    url = f"http://{host}:{port}/api/v2/heartbeat"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            if response.status != 200:
                return False
        client = chromadb.HttpClient(
            host=host, port=port, settings=Settings(anonymized_telemetry=False)
        )
        client.heartbeat()
    except (ValueError, OSError):  # OSError covers URLError and socket timeouts
        return False
    return True


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """Start ``chroma run`` on a free local port; yield ``(host, port)``; stop it after."""
    executable = _chroma_executable()
    if not executable.exists():
        pytest.fail(f"The `chroma` executable is missing next to {sys.executable}.")
    workdir = tmp_path_factory.mktemp("chroma-server")
    host, port = "127.0.0.1", _free_port()
    stdout_path, stderr_path = workdir / "stdout.log", workdir / "stderr.log"
    command = [
        str(executable),
        "run",
        "--path",
        str(workdir / "data"),
        "--host",
        host,
        "--port",
        str(port),
    ]
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        # The server logs every request: write to files, never to an unread pipe.
        process = subprocess.Popen(  # noqa: S603 - fixed command, our own executable
            command, stdout=stdout, stderr=stderr, cwd=workdir
        )
    try:
        deadline = time.monotonic() + _STARTUP_TIMEOUT_S
        while process.poll() is not None or not _heartbeat(host, port):
            if process.poll() is not None:
                pytest.fail(
                    f"`chroma run` exited with code {process.returncode} at start:\n"
                    + stderr_path.read_text(errors="replace")
                    + stdout_path.read_text(errors="replace")
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"`chroma run` did not answer its heartbeat on {host}:{port} within "
                    f"{_STARTUP_TIMEOUT_S:.0f} s:\n" + stderr_path.read_text(errors="replace")
                )
            time.sleep(0.2)
        yield host, port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def readme_blocks(section: str) -> list[tuple[str, str]]:
    """The fenced code blocks of a README section, as ``(language, code)``, in order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", body, flags=re.DOTALL)


@dataclass(frozen=True)
class Newcomer:
    """A user who just installed the package: no ``AVENGERS_*`` variable, an empty cache.

    ``home`` is a HOME of its own: its cache folder (``~/.cache/avengers-graph``) holds
    only the machine's ``llama-server`` build (linked, read-only: compiling it again
    takes ten minutes); model files, servers, stores and answer caches start empty.
    """

    home: Path
    env: dict[str, str]

    @property
    def cache(self) -> Path:
        """The user's cache folder, as the package finds it with nothing set."""
        return self.home / ".cache" / "avengers-graph"

    def shell(self, script: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``script`` in bash as this user (``avengers`` is on the PATH)."""
        return subprocess.run(  # noqa: S603 - bash running our own commands
            ["bash", "-euo", "pipefail", "-c", script],  # noqa: S607 - the system's bash
            cwd=cwd or self.home,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=_COMMAND_TIMEOUT_S,
            check=False,
        )


@pytest.fixture(scope="session")
def newcomer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Newcomer]:
    """A fresh user whose bundled pool runs: the README quick start's ``bash`` block, as written.

    Stops the servers (``avengers local down``) at the end of the session.
    """
    binary = find_server()
    if binary is None:  # pragma: no cover - requires_llama_server skips the tests first
        pytest.skip("llama-server is not built")
    home = tmp_path_factory.mktemp("newcomer-home")
    cache = home / ".cache" / "avengers-graph"
    cache.mkdir(parents=True)
    (cache / "llama-server").symlink_to(binary.parents[1], target_is_directory=True)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("AVENGERS_") and key not in {"XDG_CACHE_HOME", "COLUMNS"}
    }
    env |= {
        "HOME": str(home),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        # a guard of this machine, not a setting the package needs: no hub, no telemetry
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "ANONYMIZED_TELEMETRY": "False",
    }
    user = Newcomer(home=home, env=env)
    [(language, script)] = [b for b in readme_blocks("Quick start") if b[0] == "bash"]
    assert language == "bash"
    try:
        started = user.shell(script)
        assert started.returncode == 0, started.stdout + started.stderr
        yield user
    finally:
        stopped = user.shell("avengers local down")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
