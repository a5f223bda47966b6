from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from avengers_graph.errors import InvalidInputError
from avengers_graph.sandbox import SandboxResult, run_python

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX sandbox")


def _run(code: str, **kwargs: float | int | str) -> SandboxResult:
    return run_python(textwrap.dedent(code), **kwargs)  # type: ignore[arg-type]


def test_success_output_and_stdin() -> None:
    result = _run(
        """
        import sys
        print(input()[::-1])
        print("to stderr", file=sys.stderr)
        """,
        stdin="abc\n",
    )
    assert result == SandboxResult(
        returncode=0, stdout="cba\n", stderr="to stderr\n", timed_out=False
    )
    assert result.ok


@pytest.mark.parametrize(
    ("code", "returncode"), [("raise SystemExit(3)", 3), ("import sys; sys.exit(0)", 0)]
)
def test_exit_codes(code: str, returncode: int) -> None:
    result = _run(code)
    assert result.returncode == returncode
    assert result.ok is (returncode == 0)


def test_exception_fails_with_traceback() -> None:
    result = _run("raise ValueError('boom')")
    assert result.returncode == 1
    assert not result.ok
    assert "ValueError: boom" in result.stderr
    assert "main.py" in result.stderr


def test_future_import_in_program_works() -> None:
    result = _run("from __future__ import annotations\nx: undefined_name = 1\nprint(x)")
    assert result.ok, result.stderr
    assert result.stdout == "1\n"


def test_stdlib_importable() -> None:
    result = _run("import json, math, collections, re\nprint(json.dumps([math.isqrt(16)]))")
    assert result.ok, result.stderr
    assert result.stdout == "[4]\n"


def _process_gone(pid: int) -> bool:
    """True when the process no longer runs (exited, or a zombie awaiting its reaper)."""
    stat = Path(f"/proc/{pid}/stat")
    try:
        content = stat.read_text()
    except FileNotFoundError:
        return True
    return content.rsplit(")", 1)[1].split()[0] in {"Z", "X"}


def test_timeout_kills_loop() -> None:
    result = _run("while True:\n    pass", timeout=1)
    assert result.timed_out
    assert not result.ok
    assert result.returncode is not None
    assert result.returncode < 0


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_timeout_kills_spawned_child() -> None:
    result = _run(
        """
        import subprocess, sys, time
        sleeper = "import time\\nwhile True: time.sleep(0.05)"
        child = subprocess.Popen([sys.executable, "-c", sleeper])
        print(child.pid, flush=True)
        while True:
            time.sleep(0.05)
        """,
        timeout=2,
    )
    assert result.timed_out
    pid = int(result.stdout.split()[0])
    deadline = time.monotonic() + 10
    while not _process_gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _process_gone(pid)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_child_left_running_after_exit_is_killed() -> None:
    result = _run(
        """
        import subprocess, sys
        sleeper = "import time\\nwhile True: time.sleep(0.05)"
        child = subprocess.Popen([sys.executable, "-c", sleeper])
        print(child.pid)
        """
    )
    assert result.ok
    assert not result.timed_out
    pid = int(result.stdout.split()[0])
    deadline = time.monotonic() + 10
    while not _process_gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _process_gone(pid)


def test_memory_limit() -> None:
    result = _run("block = bytearray(1024 * 1024 * 1024)\nprint('allocated')", memory_mb=256)
    assert not result.ok
    assert "allocated" not in result.stdout
    assert "MemoryError" in result.stderr
    # Control: a small allocation is fine under the same limit.
    assert _run("block = bytearray(16 * 1024 * 1024)", memory_mb=256).ok


def test_environment_has_no_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    result = _run(
        """
        import os
        print(os.environ.get("OPENAI_API_KEY"))
        print("PATH" in os.environ, "HOME" in os.environ)
        """
    )
    assert result.ok, result.stderr
    assert result.stdout.split() == ["None", "False", "False"]
    assert "sk-test" not in result.stdout + result.stderr


def test_network_is_blocked_by_the_guard() -> None:
    result = _run(
        """
        import socket
        socket.create_connection(("127.0.0.1", 9), timeout=1)
        """
    )
    assert not result.ok
    assert "PermissionError: network disabled in sandbox" in result.stderr


@pytest.mark.parametrize(
    "call",
    [
        "socket.socket(socket.AF_INET, socket.SOCK_STREAM)",
        "socket.getaddrinfo('example.com', 80)",
        "_socket.socket()",
        "urllib.request.urlopen('http://127.0.0.1:9', timeout=1)",
    ],
)
def test_network_guard_covers_common_entry_points(call: str) -> None:
    result = _run(f"import socket, _socket, urllib.request\n{call}")
    assert not result.ok
    assert "network disabled in sandbox" in result.stderr


def test_local_socketpair_and_asyncio_still_work() -> None:
    result = _run(
        """
        import asyncio, socket
        a, b = socket.socketpair()
        a.sendall(b"x")
        print(b.recv(1).decode())
        print(asyncio.run(asyncio.sleep(0, result="async")))
        """
    )
    assert result.ok, result.stderr
    assert result.stdout.split() == ["x", "async"]


_RAW_CONNECT = """
import ctypes, errno, socket, struct
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
address = struct.pack("<HH4s8x", socket.AF_INET, socket.htons(9), bytes([127, 0, 0, 1]))
status = libc.connect(fd, address, len(address))
print(errno.errorcode.get(ctypes.get_errno(), "OK") if status else "CONNECTED")
"""


def _namespaces_available() -> bool:
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import ctypes, sys\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "sys.exit(0 if libc.unshare(0x10000000 | 0x40000000) == 0"
            " or libc.unshare(0x40000000) == 0 else 1)",
        ],
        check=False,
        env={},
    )
    return probe.returncode == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="network namespaces are Linux")
def test_network_namespace_blocks_raw_syscalls() -> None:
    if not _namespaces_available():
        pytest.skip("this host allows no network namespaces; only the guard applies")
    # The guard does not see libc calls: only the empty namespace can stop them.
    result = _run(_RAW_CONNECT)
    assert result.ok, result.stderr
    assert result.stdout.strip() == "ENETUNREACH"


def test_cwd_is_an_empty_temporary_directory_removed_afterwards() -> None:
    result = _run(
        """
        import os
        print(os.getcwd())
        print(len(os.listdir(".")))
        with open("scratch.txt", "w") as handle:
            handle.write("data")
        """
    )
    assert result.ok, result.stderr
    cwd_line, count_line = result.stdout.splitlines()
    cwd = Path(cwd_line)
    assert count_line == "0"
    assert cwd != Path.cwd()
    assert cwd.is_relative_to(Path(tempfile.gettempdir()).resolve()) or cwd.is_relative_to(
        Path(tempfile.gettempdir())
    )
    assert not cwd.exists()


def test_output_is_truncated() -> None:
    result = _run("import sys\nsys.stdout.write('x' * 3_000_000)")
    assert result.ok
    assert result.stdout.endswith("[output truncated]")
    assert len(result.stdout) < 1_100_000


def test_huge_file_writes_are_stopped() -> None:
    result = _run(
        """
        with open("big.bin", "wb") as handle:
            for _ in range(200):
                handle.write(b"0" * (1 << 20))
        print("wrote everything")
        """,
    )
    assert not result.ok
    assert "wrote everything" not in result.stdout


@pytest.mark.parametrize(
    ("timeout", "memory_mb"), [(0, 512), (-1, 512), (float("inf"), 512), (1, 0)]
)
def test_rejects_bad_limits(timeout: float, memory_mb: int) -> None:
    with pytest.raises(InvalidInputError):
        run_python("pass", timeout=timeout, memory_mb=memory_mb)
