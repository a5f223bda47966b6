"""Programs that try to escape the sandbox, and fail; ordinary programs that still work.

Each escape program reports what each attempt got (an exception name, or what it
managed), and the test checks the host side as well: files not written, secrets not
printed, a victim process alive, no process of the run left over, no connection
received. docs/reliability.md lists these cases and their outcomes.

The tests run only where bubblewrap isolates programs (``make test`` installs it);
elsewhere they are skipped with the reason the probe gave. The programs run with
``require_isolation=True``, so a broken bubblewrap fails them instead of running an
escape attempt (``kill(-1)`` as root) unisolated.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import avengers_graph
from avengers_graph import sandbox
from avengers_graph.sandbox import Isolation, SandboxResult, run_python

_PROJECT_ROOT = Path(avengers_graph.__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _bubblewrap_isolation() -> None:
    if sandbox.isolation() is not Isolation.BUBBLEWRAP:
        pytest.skip(f"bubblewrap unavailable: {sandbox._bubblewrap()[1]}")


def _run(
    code: str, *, stdin: object = "", timeout: float = 10, memory_mb: int = 512
) -> SandboxResult:
    """Run ``code`` isolated; ``stdin`` is sent as one JSON line unless it is a string."""
    text = stdin if isinstance(stdin, str) else json.dumps(stdin) + "\n"
    result = run_python(
        textwrap.dedent(code),
        stdin=text,
        timeout=timeout,
        memory_mb=memory_mb,
        require_isolation=True,
    )
    assert result.isolation is Isolation.BUBBLEWRAP
    return result


def _report(result: SandboxResult) -> dict[str, Any]:
    """The JSON object the program printed last."""
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def _host_processes(*, token: str | None = None, uid: int | None = None) -> list[int]:
    """Host pids of live processes with ``token`` in their command line, or run as ``uid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # exited meanwhile
            continue
        state = next(line.split()[1] for line in status.splitlines() if line.startswith("State:"))
        real_uid = next(
            int(line.split()[1]) for line in status.splitlines() if line.startswith("Uid:")
        )
        if state in {"Z", "X"}:  # a zombie no longer runs
            continue
        if (token is not None and token.encode() in cmdline) or real_uid == uid:
            found.append(int(entry.name))
    return found


# --- the file system -----------------------------------------------------------------

_TRY_WRITES = """
import json, os
results = {}
for path in json.loads(input()) + [__file__, os.path.join(os.path.dirname(__file__), "x")]:
    try:
        with open(path, "w") as handle:
            handle.write("escaped")
        results[path] = "WRITTEN"
    except OSError as error:
        results[path] = type(error).__name__
for path in json.loads(input()):
    with open(path, "w") as handle:
        handle.write("fine")
    results[path] = open(path).read()
print(json.dumps(results))
"""


def test_cannot_write_outside_its_folders(tmp_path: Path) -> None:
    outside = [
        tmp_path / "outside.txt",  # a host folder the test (root) can write
        Path(sys.base_prefix) / "escape.txt",  # the interpreter's installation
        Path("/usr/escape.txt"),
        Path("/escape.txt"),
        Path("/etc/escape.txt"),
        Path.home() / "escape.txt",
        _PROJECT_ROOT / "escape.txt",
    ]
    try:
        inside = ["inside.txt", *(f"{folder}/inside.txt" for folder in sandbox._SCRATCH_FOLDERS)]
        lines = [json.dumps([str(path) for path in outside]), json.dumps(inside)]
        report = _report(_run(_TRY_WRITES, stdin="\n".join(lines) + "\n"))
        for path in outside:
            assert report[str(path)] in {"PermissionError", "OSError", "FileNotFoundError"}, path
            assert not path.exists(), path
        written = [path for path, outcome in report.items() if outcome == "WRITTEN"]
        assert written == []
        assert [report[path] for path in inside] == ["fine"] * 3
    finally:
        for path in outside:
            if path.exists():
                path.unlink()


_TRY_READS = """
import json, os
results = {}
for path in json.loads(input()):
    try:
        if os.path.isdir(path):
            results[path] = "LISTED " + " ".join(sorted(os.listdir(path)))
        else:
            with open(path, "rb") as handle:
                results[path] = "READ " + handle.read(200).decode("utf-8", "replace")
    except OSError as error:
        results[path] = type(error).__name__
print(json.dumps(results))
"""


def test_cannot_read_host_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = f"avengers-secret-{secrets.token_hex(8)}"
    home = tmp_path / "home" / "someone"
    home.mkdir(parents=True)
    (home / ".env").write_text(f"OPENAI_API_KEY={token}\n")
    private = home / "private.txt"  # another user's file, readable by its owner only
    private.write_text(token)
    private.chmod(0o600)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("OPENAI_API_KEY", token)
    secret_paths = [
        "/etc/shadow",
        "/etc/passwd",
        str(home / ".env"),
        str(private),
        str(home),
        str(Path.home() / ".bashrc"),
        "/home",
        str(_PROJECT_ROOT / "pyproject.toml"),
        str(_PROJECT_ROOT / ".env"),
        "/proc/1/environ",
    ]
    result = _run(_TRY_READS, stdin=secret_paths)
    report = _report(result)
    assert token not in result.stdout + result.stderr
    for path in secret_paths:
        assert report[path] in {"FileNotFoundError", "PermissionError"}, (path, report[path])
    assert Path("/etc/shadow").exists()  # the host has it: not seeing it is the sandbox
    assert (_PROJECT_ROOT / "pyproject.toml").exists()


def test_root_folder_holds_only_system_files() -> None:
    report = _report(_run(_TRY_READS, stdin=["/", "/etc", "/root"]))
    assert set(report["/"].removeprefix("LISTED ").split()) <= {
        *("bin", "dev", "lib", "lib32", "lib64", "libx32", "proc", "root", "sbin", "tmp", "usr"),
    }
    assert report["/etc"] == "FileNotFoundError"
    # /root holds only the path down to the interpreter's installation (pyenv here).
    assert report["/root"] in {"FileNotFoundError", "LISTED .pyenv"}


# --- /bin/sh: allowed, and confined like the program -----------------------------------

_SHELL = """
import json, subprocess
victim, target = json.loads(input())
script = f"id -u; cat /etc/shadow; echo escaped > {target}; kill -9 {victim}; echo done"
shell = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True)
print(json.dumps({"stdout": shell.stdout, "stderr": shell.stderr}))
"""


def test_shell_runs_but_is_confined(tmp_path: Path) -> None:
    target = tmp_path / "written-by-shell.txt"
    with _victim() as victim:
        report = _report(_run(_SHELL, stdin=[victim.pid, str(target)]))
        assert victim.poll() is None
    uid, done = report["stdout"].split()
    assert done == "done"
    if os.geteuid() == 0:
        assert uid != "0"
    assert "No such file" in report["stderr"]  # /etc/shadow does not exist inside
    assert not target.exists()


# --- processes -------------------------------------------------------------------------


@contextlib.contextmanager
def _victim() -> Iterator[subprocess.Popen[bytes]]:
    """A sleeping host process a program will try to kill; stopped afterwards."""
    process = subprocess.Popen([sys.executable, "-c", "import time\ntime.sleep(300)"])
    try:
        yield process
    finally:
        process.kill()
        process.wait(timeout=10)


_TRY_KILLS = """
import json, os, signal
victim = json.loads(input())
results = {"visible_pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit())}
attempts = {
    "victim": lambda: os.kill(victim, signal.SIGKILL),
    "victim_group": lambda: os.killpg(victim, signal.SIGKILL),
    "parent": lambda: os.kill(os.getppid(), signal.SIGKILL),
    "init": lambda: os.kill(1, signal.SIGKILL),
    "everyone": lambda: os.kill(-1, signal.SIGKILL),
}
for name, attempt in attempts.items():
    try:
        attempt()
        results[name] = "SENT"
    except OSError as error:
        results[name] = type(error).__name__
print(json.dumps(results))
"""


def test_cannot_see_or_kill_host_processes() -> None:
    with _victim() as victim:
        report = _report(_run(_TRY_KILLS, stdin=victim.pid))
        assert victim.poll() is None  # alive
    assert report["victim"] == report["victim_group"] == "ProcessLookupError"
    assert report["parent"] == report["init"] == "PermissionError"  # bwrap's init, root
    # kill(-1) reaches only the program's own processes (there are none): ESRCH.
    assert report["everyone"] == "ProcessLookupError"
    assert report["visible_pids"] == [1, 2]  # bwrap's init and the program


_SETSID_GRANDCHILD = """
import os, sys, time
token = input().strip()
child = os.fork()
if child == 0:
    os.setsid()
    if os.fork() == 0:
        sleeper = "import time\\nwhile True: time.sleep(1)"
        os.execv(sys.executable, [sys.executable, "-c", sleeper, token])
    os._exit(0)
os.waitpid(child, 0)
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    pids = [p for p in os.listdir("/proc") if p.isdigit() and p != str(os.getpid())]
    running = [p for p in pids if token.encode() in open(f"/proc/{p}/cmdline", "rb").read()]
    if running:
        print("grandchild", running[0], os.getsid(int(running[0])), os.getsid(0), flush=True)
        break
    time.sleep(0.01)
"""


@pytest.mark.parametrize("then", ["exit", "loop"])
def test_no_process_survives_the_run(then: str) -> None:
    token = f"avengers-survivor-{secrets.token_hex(8)}"
    code = _SETSID_GRANDCHILD + ("while True:\n    time.sleep(0.05)\n" if then == "loop" else "")
    result = _run(code, stdin=token + "\n", timeout=3)
    assert result.timed_out is (then == "loop")
    _, _, grandchild_session, own_session = result.stdout.split()
    assert grandchild_session != own_session  # it did escape the process group
    # Checked at once: run_python returns after the pid namespace is gone.
    assert _host_processes(token=token) == []


_FORKS = """
import json, os, time
forked, error = 0, None
for _ in range(200):
    try:
        pid = os.fork()
    except OSError as exc:
        error = type(exc).__name__
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    forked += 1
print(json.dumps({"forked": forked, "error": error, "uid": os.getuid()}))
"""


def test_fork_bomb_is_stopped_and_cleaned_up() -> None:
    report = _report(_run(_FORKS))
    assert 0 < report["forked"] < sandbox._MAX_PROCESSES < 200
    assert report["error"] == "BlockingIOError"  # EAGAIN from RLIMIT_NPROC
    if os.geteuid() == 0:  # the run's own uid: nothing of it is left on the host
        assert _host_processes(uid=int(report["uid"])) == []


def test_exponential_fork_bomb_is_contained() -> None:
    code = """
    import os
    print(os.getuid(), flush=True)
    while True:
        try:
            os.fork()
        except OSError:
            pass
    """
    result = _run(code, timeout=2)
    assert result.timed_out
    if os.geteuid() == 0:
        assert _host_processes(uid=int(result.stdout.split()[0])) == []


def test_a_fork_bomb_does_not_starve_a_concurrent_run() -> None:
    ordinary = """
    import subprocess, sys
    for _ in range(10):
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    print("ok")
    """
    with ThreadPoolExecutor(max_workers=2) as pool:
        bomb = pool.submit(_run, _FORKS)
        neighbour = pool.submit(_run, ordinary)
        assert neighbour.result().stdout == "ok\n", neighbour.result().stderr
        assert 0 < _report(bomb.result())["forked"] < 200


_TRY_PRIVILEGES = """
import ctypes, errno, json, os
libc = ctypes.CDLL(None, use_errno=True)
status = {
    line.split(":")[0]: line.split(":", 1)[1].strip()
    for line in open("/proc/self/status")
    if line.startswith(("Uid", "Gid", "Groups", "CapPrm", "CapEff", "CapAmb", "NoNewPrivs"))
}
results = {"status": status}
for name, flags in [("user", 0x10000000), ("user+mount", 0x10000000 | 0x00020000)]:
    outcome = libc.unshare(flags)
    results[name] = "UNSHARED" if outcome == 0 else errno.errorcode[ctypes.get_errno()]
numbers = {"x86_64": (56, 435), "aarch64": (220, 435)}.get(os.uname().machine)
if numbers is not None:  # raw clone(CLONE_NEWUSER | SIGCHLD) and clone3
    pid = libc.syscall(numbers[0], 0x10000000 | 17, 0, 0, 0, 0)
    if pid == 0:
        os._exit(0)
    results["clone"] = "CLONED" if pid > 0 else errno.errorcode[ctypes.get_errno()]
    outcome = libc.syscall(numbers[1], 0, 0)
    results["clone3"] = errno.errorcode[ctypes.get_errno()] if outcome < 0 else "CLONED"
for name, call in [("setuid0", lambda: os.setuid(0)), ("chroot", lambda: os.chroot("/tmp"))]:
    try:
        call()
        results[name] = "DONE"
    except OSError as error:
        results[name] = type(error).__name__
print(json.dumps(results))
"""


def test_no_privileges_and_no_user_namespaces() -> None:
    report = _report(_run(_TRY_PRIVILEGES))
    status = report["status"]
    assert status["CapPrm"] == status["CapEff"] == status["CapAmb"] == "0000000000000000"
    assert status["NoNewPrivs"] == "1"
    if os.geteuid() == 0:  # the run's own uid, no group of the host's
        assert set(status["Uid"].split()) == set(status["Gid"].split()) != {"0"}
        assert len(set(status["Uid"].split())) == 1
        assert status["Groups"] == ""
    # No user namespace, so no tmpfs of the program's own beyond the limits.
    assert report["user"] == report["user+mount"] == "EPERM"
    if "clone" in report:
        assert report["clone"] == "EPERM"
        assert report["clone3"] == "ENOSYS"  # the C library then falls back to clone
    assert report["setuid0"] == report["chroot"] == "PermissionError"


# --- memory, time, output --------------------------------------------------------------


def test_memory_limit_applies_to_the_program_and_its_children() -> None:
    code = """
    import json, mmap, subprocess, sys
    results = {}
    try:
        block = bytearray(2 << 30)
        results["bytearray"] = "ALLOCATED"
    except MemoryError:
        results["bytearray"] = "MemoryError"
    try:
        mapping = mmap.mmap(-1, 2 << 30)
        results["mmap"] = "MAPPED"
    except OSError as error:
        results["mmap"] = type(error).__name__
    child = subprocess.run(
        [sys.executable, "-c", "bytearray(2 << 30)"], capture_output=True, text=True
    )
    results["child"] = child.stderr.strip().splitlines()[-1]
    print(json.dumps(results))
    """
    report = _report(_run(code, memory_mb=256))
    assert report == {"bytearray": "MemoryError", "mmap": "OSError", "child": "MemoryError"}


def test_writable_space_is_bounded() -> None:
    code = """
    import errno, json
    results = {}
    for folder in json.loads(input()):
        written = 0
        try:
            for index in range(1000):
                with open(f"{folder}/fill-{index}", "wb") as handle:
                    handle.write(b"0" * (1 << 20))
                written += 1
        except OSError as error:
            results[folder] = [written, errno.errorcode[error.errno]]
    print(json.dumps(results))
    """
    folders = [".", *sandbox._SCRATCH_FOLDERS]
    report = _report(_run(code, stdin=folders))
    limit_mib = sandbox._TMPFS_BYTES >> 20
    for folder in folders:
        assert report[folder] == [limit_mib, "ENOSPC"], folder


@pytest.mark.parametrize("code", ["while True:\n    pass", "import time\ntime.sleep(600)"])
def test_endless_program_is_killed_at_the_wall_clock_limit(code: str) -> None:
    result = _run(code, timeout=1)
    assert result.timed_out
    assert result.returncode == -signal.SIGKILL


def test_output_is_bounded() -> None:
    code = """
    import sys
    chunk = "x" * (1 << 20)
    for _ in range(100):
        sys.stdout.write(chunk)
    """
    result = _run(code)
    assert not result.ok  # stopped at the 64 MiB file-size limit (Python ignores SIGXFSZ)
    assert "OSError: [Errno 27] File too large" in result.stderr
    assert result.stdout.endswith("[output truncated]")
    assert len(result.stdout) < 1_100_000


# --- network ---------------------------------------------------------------------------

_TRY_CONNECT = """
import _socket, ctypes, errno, json, socket, struct
port = json.loads(input())
results = {}
# The guard is no boundary: take the real socket class back from under it.
real_socket = _socket.socket.__mro__[1]
for name, family, kind, address in [
    ("tcp", socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", port)),
    ("udp", socket.AF_INET, socket.SOCK_DGRAM, ("127.0.0.1", port)),
    ("tcp6", socket.AF_INET6, socket.SOCK_STREAM, ("::1", port)),
    ("outside", socket.AF_INET, socket.SOCK_STREAM, ("1.1.1.1", 53)),
]:
    sock = real_socket(family, kind)
    try:
        if kind == socket.SOCK_DGRAM:
            sock.sendto(b"escaped", address)
            results[name] = "SENT"
        else:
            sock.settimeout(2)
            sock.connect(address)
            results[name] = "CONNECTED"
    except OSError as error:
        results[name] = errno.errorcode.get(error.errno, type(error).__name__)
    finally:
        sock.close()
# Raw system calls through libc, below any Python-level guard.
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
raw = struct.pack("<HH4s8x", socket.AF_INET, socket.htons(port), bytes([127, 0, 0, 1]))
status = libc.connect(fd, raw, len(raw))
results["raw"] = errno.errorcode.get(ctypes.get_errno(), "?") if status else "CONNECTED"
print(json.dumps(results))
"""


@pytest.fixture
def listeners() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A TCP and a UDP socket on the host's 127.0.0.1, on the same free port."""
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen(8)
        udp.bind(("127.0.0.1", tcp.getsockname()[1]))
        tcp.setblocking(False)
        udp.setblocking(False)
        yield tcp, udp
    finally:
        tcp.close()
        udp.close()


@pytest.mark.enable_socket
def test_nothing_reaches_a_host_listener(listeners: tuple[socket.socket, socket.socket]) -> None:
    tcp, udp = listeners
    report = _report(_run(_TRY_CONNECT, stdin=tcp.getsockname()[1]))
    # The sandbox has its own loopback (nothing listens there) and no other interface.
    assert report["tcp"] == report["tcp6"] == report["raw"] == "ECONNREFUSED"
    assert report["outside"] == "ENETUNREACH"
    # A datagram to the sandbox's own loopback is "sent" to nobody.
    assert report["udp"] in {"SENT", "ECONNREFUSED"}
    # The program has exited: a connection or datagram that reached the host would
    # already be queued on these sockets.
    with pytest.raises(BlockingIOError):
        tcp.accept()
    with pytest.raises(BlockingIOError):
        udp.recvfrom(64)


# --- ordinary programs still work ------------------------------------------------------


def test_ordinary_program_works() -> None:
    code = r"""
    import collections, concurrent.futures, datetime, decimal, fractions, functools
    import hashlib, heapq, itertools, json, math, multiprocessing, os, re, sqlite3
    import statistics, subprocess, sys, tempfile, threading, unittest

    descriptors = sorted(os.listdir("/proc/self/fd"))  # before the program opens any
    numbers = [int(x) for x in sys.stdin.readline().split()]
    with open("scratch.txt", "w") as handle:
        handle.write(" ".join(map(str, sorted(numbers))))
    with tempfile.NamedTemporaryFile("w+") as handle:
        handle.write("tmp ok")
        handle.seek(0)
        temporary = handle.read()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        squares = list(pool.map(lambda x: x * x, numbers))
    with multiprocessing.get_context("fork").Pool(2) as pool:
        cubes = pool.map(functools.partial(pow, exp=3), numbers)
    child = subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True)
    database = sqlite3.connect(":memory:")
    database.execute("create table t (x)")
    database.executemany("insert into t values (?)", [(n,) for n in numbers])
    print(json.dumps({
        "sum": sum(numbers),
        "mean": str(statistics.mean(numbers)),
        "comb": math.comb(10, 3),
        "fraction": str(fractions.Fraction(1, 3) + fractions.Fraction(1, 6)),
        "decimal": str(decimal.Decimal("0.1") + decimal.Decimal("0.2")),
        "heap": heapq.nsmallest(2, numbers),
        "counter": collections.Counter("abca").most_common(1)[0][0],
        "regex": re.findall(r"\d+", "a1b22"),
        "sha": hashlib.sha256(b"x").hexdigest()[:8],
        "date": datetime.date(2024, 2, 28).toordinal(),
        "file": open("scratch.txt").read(),
        "tmp": temporary,
        "squares": squares,
        "cubes": cubes,
        "child": child.stdout.decode().strip(),
        "sql": database.execute("select sum(x) from t").fetchone()[0],
        "fds": descriptors,
        "environment": sorted(os.environ),
        "unittest": unittest.TestCase.__name__,
        "pairs": len(list(itertools.combinations(numbers, 2))),
    }))
    """
    report = _report(_run(code, stdin="3 1 2\n"))
    assert report["sum"] == 6
    assert report["mean"] == "2"
    assert report["comb"] == 120
    assert report["fraction"] == "1/2"
    assert report["decimal"] == "0.3"
    assert report["heap"] == [1, 2]
    assert report["counter"] == "a"
    assert report["regex"] == ["1", "22"]
    assert report["sha"] == "2d711642"
    assert report["date"] == 738944
    assert report["file"] == "1 2 3"
    assert report["tmp"] == "tmp ok"
    assert report["squares"] == [9, 1, 4]
    assert report["cubes"] == [27, 1, 8]
    assert report["child"] == "42"
    assert report["sql"] == 6
    # stdin, stdout, stderr and the descriptor listing the folder: nothing of bwrap's
    assert report["fds"] == ["0", "1", "2", "3"]
    # Our fixed variables; bwrap sets PWD (--chdir), the interpreter LC_CTYPE (C
    # locale coercion).
    assert set(report["environment"]) <= {
        *("PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED", "PYTHONIOENCODING", "PYTHONUTF8"),
        *("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"),
        *("PWD", "LC_CTYPE"),
    }
