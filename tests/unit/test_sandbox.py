from __future__ import annotations

import dataclasses
import importlib.metadata
import secrets
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from avengers_graph import sandbox
from avengers_graph.errors import InvalidInputError
from avengers_graph.sandbox import (
    Isolation,
    SandboxError,
    SandboxResult,
    SandboxUnavailableError,
    isolation,
    run_python,
)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX sandbox")


@pytest.fixture(autouse=True, params=[Isolation.BUBBLEWRAP, Isolation.PROCESS])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Isolation:
    """Every test runs with bubblewrap (where it works) and with the fallback."""
    if request.param is Isolation.PROCESS:
        monkeypatch.setattr(sandbox, "_bubblewrap", lambda: (None, "disabled by the test"))
    elif isolation() is not Isolation.BUBBLEWRAP:
        pytest.skip(f"bubblewrap unavailable: {sandbox._bubblewrap()[1]}")
    return Isolation(request.param)


def _run(code: str, **kwargs: float | int | str) -> SandboxResult:
    return run_python(textwrap.dedent(code), **kwargs)  # type: ignore[arg-type]


def _processes_with(token: str) -> list[int]:
    """Host pids of the live processes whose command line contains ``token``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if token.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:  # exited meanwhile
            continue
    return found


def test_success_output_and_stdin(mode: Isolation) -> None:
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
    assert result.isolation is mode


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


def test_installed_packages_are_importable_only_when_offered() -> None:
    code = "import numpy, sympy\nprint(int(numpy.prod([2, 3])), sympy.factorint(12))"
    offered = run_python(code, packages=("numpy", "sympy"))
    assert offered.ok, offered.stderr
    assert offered.stdout == "6 {2: 2, 3: 1}\n"
    alone = run_python(code)
    assert "ModuleNotFoundError: No module named 'numpy'" in alone.stderr


def test_offered_packages_bring_their_requirements_and_nothing_else() -> None:
    paths = sandbox._package_paths(["sympy"])
    assert {"sympy", "mpmath", "isympy.py"} <= set(paths)  # sympy requires mpmath
    assert "numpy" not in paths
    result = run_python("import mpmath\nimport yaml", packages=("sympy",))
    assert "No module named 'yaml'" in result.stderr  # installed, but not offered


def test_offered_packages_cannot_be_changed(mode: Isolation) -> None:
    if mode is not Isolation.BUBBLEWRAP:
        pytest.skip("the fallback can write wherever the calling user can (documented)")
    name = f"written-by-the-sandbox-{secrets.token_hex(4)}"
    target = Path(str(importlib.metadata.distribution("numpy").locate_file("numpy")), name)
    code = (
        "import numpy, pathlib\n"
        f"pathlib.Path(numpy.__file__).with_name({name!r}).write_text('')\nprint('wrote')"
    )
    try:
        result = run_python(code, packages=("numpy",))
        assert not target.exists()
    finally:
        target.unlink(missing_ok=True)
    assert "wrote" not in result.stdout
    assert "Read-only file system" in result.stderr


def test_a_package_that_is_not_installed_is_a_clear_error() -> None:
    with pytest.raises(InvalidInputError, match="'no-such-package' is not installed"):
        run_python("pass", packages=("no-such-package",))


def test_timeout_kills_loop() -> None:
    result = _run("while True:\n    pass", timeout=1)
    assert result.timed_out
    assert not result.ok
    assert result.returncode is not None
    assert result.returncode < 0


def test_killed_by_a_signal_is_a_negative_status() -> None:
    result = _run("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)")
    assert result.returncode == -signal.SIGTERM
    assert not result.timed_out


def test_high_exit_status_above_the_signal_range_is_kept() -> None:
    assert _run("raise SystemExit(200)").returncode == 200


_SPAWN_SLEEPER = """
import subprocess, sys, time
sleeper = "import time\\nwhile True: time.sleep(0.05)"
child = subprocess.Popen([sys.executable, "-c", sleeper, sys.stdin.readline().strip()])
print(child.pid, flush=True)
"""


def _wait_until_gone(token: str) -> list[int]:
    """Live processes carrying ``token`` after at most 10 s (the fallback kills async)."""
    deadline = time.monotonic() + 10
    while (left := _processes_with(token)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_timeout_kills_spawned_child() -> None:
    token = f"avengers-sleeper-{secrets.token_hex(8)}"
    code = _SPAWN_SLEEPER + "while True:\n    time.sleep(0.05)\n"
    result = run_python(code, timeout=2, stdin=token + "\n")
    assert result.timed_out
    assert result.stdout.split()[0].isdigit()  # the child did start
    assert _wait_until_gone(token) == []


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_child_left_running_after_exit_is_killed() -> None:
    token = f"avengers-sleeper-{secrets.token_hex(8)}"
    result = run_python(_SPAWN_SLEEPER, stdin=token + "\n")
    assert result.ok, result.stderr
    assert not result.timed_out
    assert result.stdout.split()[0].isdigit()
    assert _wait_until_gone(token) == []


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


def _interfaces(proc_net_dev: str) -> list[str]:
    return [line.split(":")[0].strip() for line in proc_net_dev.splitlines()[2:] if line.strip()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="network namespaces are Linux")
def test_network_namespace_blocks_raw_syscalls(mode: Isolation) -> None:
    if not _namespaces_available():
        pytest.skip("this host allows no network namespaces; only the guard applies")
    # The guard does not see libc calls: only the empty namespace can stop them.
    result = _run(_RAW_CONNECT + "print(open('/proc/net/dev').read())")
    assert result.ok, result.stderr
    verdict, proc_net_dev = result.stdout.split("\n", 1)
    # The fallback's namespace has a downed loopback; bwrap brings the sandbox's own
    # loopback up, where nothing listens (tests/reliability checks the host's listener).
    assert verdict == ("ENETUNREACH" if mode is Isolation.PROCESS else "ECONNREFUSED")
    assert _interfaces(proc_net_dev) == ["lo"]


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


def test_deadline_shortens_the_budget() -> None:
    code = "import time\ntime.sleep(5)\nprint('finished')"
    result = run_python(code, timeout=60, deadline=time.monotonic() + 1)
    assert result.timed_out
    assert "finished" not in result.stdout


def test_past_deadline_runs_nothing(mode: Isolation) -> None:
    result = run_python("print('ran')", deadline=time.monotonic() - 1)
    assert result == SandboxResult(returncode=None, stdout="", stderr="", timed_out=True)
    assert result.isolation is mode


def test_rejects_infinite_deadline() -> None:
    with pytest.raises(InvalidInputError):
        run_python("pass", deadline=float("inf"))


def test_require_isolation(mode: Isolation) -> None:
    if mode is Isolation.PROCESS:
        with pytest.raises(SandboxUnavailableError, match="disabled by the test"):
            run_python("print('ran')", require_isolation=True)
    else:
        result = run_python("print('ran')", require_isolation=True)
        assert result.ok, result.stderr
        assert result.isolation is Isolation.BUBBLEWRAP


def test_isolation_reports_the_mode(mode: Isolation) -> None:
    assert isolation() is mode


def test_bubblewrap_set_up_failure_is_a_sandbox_error(mode: Isolation) -> None:
    if mode is not Isolation.BUBBLEWRAP:
        pytest.skip("bubblewrap only")
    config, _ = sandbox._bubblewrap()
    assert config is not None
    broken = dataclasses.replace(config, interpreter="/nonexistent/python3")
    with pytest.raises(SandboxError, match=r"could not set up the sandbox.*/nonexistent"):
        sandbox._execute("print('ran')", 5, 256, "", broken)


def test_missing_bubblewrap_falls_back_with_one_warning(
    mode: Isolation, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    if mode is not Isolation.PROCESS:
        pytest.skip("fallback only")
    monkeypatch.undo()  # the real probe, on a host without bwrap
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    monkeypatch.setattr(sandbox, "_PROBED", [])
    with caplog.at_level("WARNING", logger="avengers_graph.sandbox"):
        assert isolation() is Isolation.PROCESS
        result = run_python("print('ran')")
    assert result.ok
    assert result.isolation is Isolation.PROCESS
    warnings = [record for record in caplog.records if record.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "WITHOUT isolation" in warnings[0].getMessage()
    assert "not installed" in warnings[0].getMessage()


def test_a_caller_with_more_than_1024_open_files_can_still_run_programs() -> None:
    # Bug: the waits used select(), which refuses descriptors above 1023; a long test
    # session (or a server) holding many files failed every run with a ValueError.
    import os
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the open-files limit ({hard}) is too low to open 1100 files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held = []
    try:
        while not held or held[-1] < 1100:
            held.append(os.open(os.devnull, os.O_RDONLY))
        result = run_python("print(6 * 7)", timeout=10)
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert result.ok
    assert result.stdout == "42\n"
