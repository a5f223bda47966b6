"""Run untrusted, model-written Python in a separate, restricted process.

:func:`run_python` never executes code in the calling process. Each call:

1. creates a temporary directory holding an empty working directory for the program
   and, beside it, the program file and files for stdin, stdout and stderr;
2. starts ``sys.executable -s -S -P -B -c <bootstrap>`` in a new session (so it
   leads its own process group) with a minimal environment: no variable of the
   calling process (no API keys, no ``PATH``) is passed on. The flags are those of
   isolated mode (``-I``) minus ``-E``, so that the environment we set ourselves
   (a fixed ``PYTHONHASHSEED``, UTF-8 I/O) takes effect; without ``site`` (``-S``)
   the standard library is importable but installed packages are not;
3. the bootstrap, before running the program:

   a. moves the process into a new, empty network namespace with ``unshare(2)``:
      first ``CLONE_NEWUSER | CLONE_NEWNET`` (works unprivileged where user
      namespaces are enabled; as root it also drops the capabilities that would let
      the program re-enter the host's namespace), then plain ``CLONE_NEWNET``
      (needs ``CAP_SYS_ADMIN``). In an empty namespace only a downed loopback
      interface exists, so no packet can leave, whatever the program does (raw
      syscalls through ``ctypes``, child processes, other interpreters);
   b. sets resource limits: address space (``memory_mb``), CPU seconds, size of
      written files, open files and, for non-root users, processes;
   c. installs a guard that replaces ``socket.socket`` and ``_socket.socket``
      (unless wrapping an existing descriptor, as ``socket.socketpair`` does),
      ``socket.create_connection``, ``socket.create_server``, ``getaddrinfo`` and the
      other resolver functions by ones raising
      ``PermissionError("network disabled in sandbox")``;
4. runs the program as ``__main__`` and waits for it at most ``timeout`` seconds of
   wall-clock time, then kills the whole process group (the program and any child
   it started) with ``SIGKILL``;
5. returns the exit status and the (bounded) output, and removes the directory.

The guard alone is **not** a security boundary: the program can undo it, call the
C library through ``ctypes`` or start another process. It makes the common case
fail fast with a clear message; the network namespace is what actually cuts the
network. Where namespaces are unavailable (for instance in a container without
``CAP_SYS_ADMIN`` and without user namespaces) only the guard remains, so run
untrusted code in a container or VM without network in that case. The sandbox does
not isolate the file system: the program can read whatever the user can, so run it
as an unprivileged user. A descendant that starts its own session escapes the
process-group kill.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from avengers_graph.errors import InvalidInputError

__all__ = ["SandboxResult", "run_python"]

_MAX_OUTPUT_BYTES = 1 << 20
"""At most this much of stdout and of stderr is returned."""
_MAX_FILE_BYTES = 64 << 20
"""The program may not write a file (including its stdout/stderr) larger than this."""
_MAX_OPEN_FILES = 256
_MAX_PROCESSES = 1024
"""Per-user process limit for non-root users (root ignores it); bounds fork bombs."""
_KILL_GRACE_SECONDS = 5.0
_TRUNCATION_NOTE = "\n[output truncated]"

_ENVIRONMENT = {
    "PYTHONHASHSEED": "0",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUTF8": "1",
    "PYTHONIOENCODING": "utf-8",
}

# Runs inside the child before the program. argv: program path, then the limits.
_BOOTSTRAP = r"""
import sys


def _isolate_network():
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        unshare = libc.unshare
    except (OSError, AttributeError):
        return
    clone_newuser, clone_newnet = 0x10000000, 0x40000000
    for flags in (clone_newuser | clone_newnet, clone_newnet):
        if unshare(flags) == 0:
            return


def _limit_resources(memory, cpu, file_size, open_files, processes):
    import os
    import resource

    limits = [
        (resource.RLIMIT_AS, memory),
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_FSIZE, file_size),
        (resource.RLIMIT_NOFILE, open_files),
        (resource.RLIMIT_CORE, 0),
    ]
    if os.getuid() != 0 and hasattr(resource, "RLIMIT_NPROC"):
        limits.append((resource.RLIMIT_NPROC, processes))
    for which, value in limits:
        _, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, value))


def _install_network_guard():
    import _socket
    import socket

    message = "network disabled in sandbox"

    def blocked(*args, **kwargs):
        raise PermissionError(message)

    real_socket = _socket.socket

    class GuardedSocket(real_socket):
        def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
            if fileno is None:
                raise PermissionError(message)
            real_socket.__init__(self, family, type, proto, fileno)

    class GuardedPythonSocket(socket.socket):
        def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
            if fileno is None:
                raise PermissionError(message)
            super().__init__(family, type, proto, fileno)

    _socket.socket = _socket.SocketType = GuardedSocket
    socket.socket = GuardedPythonSocket
    for name in (
        "create_connection",
        "create_server",
        "getaddrinfo",
        "gethostbyname",
        "gethostbyname_ex",
        "gethostbyaddr",
        "getnameinfo",
    ):
        for module in (socket, _socket):
            if hasattr(module, name):
                setattr(module, name, blocked)


_program = sys.argv[1]
_isolate_network()
_limit_resources(*(int(value) for value in sys.argv[2:7]))
_install_network_guard()
sys.argv = [_program]

import runpy

runpy.run_path(_program, run_name="__main__")
"""


@dataclass(frozen=True)
class SandboxResult:
    """The outcome of one sandboxed run."""

    returncode: int | None
    """Exit status (negative: killed by that signal); None if the process could not be reaped."""
    stdout: str
    """Standard output, decoded as UTF-8 and truncated to a bound."""
    stderr: str
    """Standard error, decoded as UTF-8 and truncated to a bound."""
    timed_out: bool
    """Whether the program was still running at the deadline and was killed."""

    @property
    def ok(self) -> bool:
        """Whether the program exited with status 0 before the deadline."""
        return self.returncode == 0 and not self.timed_out


def _read_bounded(path: Path) -> str:
    with path.open("rb") as stream:
        data = stream.read(_MAX_OUTPUT_BYTES + 1)
    text = data[:_MAX_OUTPUT_BYTES].decode("utf-8", errors="replace")
    return text + _TRUNCATION_NOTE if len(data) > _MAX_OUTPUT_BYTES else text


def _kill_group(pgid: int) -> None:
    """Send SIGKILL to a process group that may already be gone."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return


def run_python(
    code: str, *, timeout: float = 10.0, memory_mb: int = 512, stdin: str = ""
) -> SandboxResult:
    """Run untrusted Python code in a fresh, restricted interpreter.

    See the module documentation for what is restricted and what is not.

    Args:
        code: The program's source.
        timeout: Seconds of wall-clock time before the program and every process it
            started are killed.
        memory_mb: Address-space limit of the program in MiB (the interpreter alone
            takes some tens of MiB).
        stdin: Text fed to the program's standard input.

    Returns:
        The exit status, the output and whether the program timed out.

    Raises:
        InvalidInputError: If ``timeout`` or ``memory_mb`` is not positive.
    """
    if not timeout > 0 or not math.isfinite(timeout):
        msg = f"`timeout` must be a positive number of seconds, got {timeout!r}."
        raise InvalidInputError(msg)
    if memory_mb <= 0:
        msg = f"`memory_mb` must be a positive number of MiB, got {memory_mb!r}."
        raise InvalidInputError(msg)
    limits = (
        memory_mb << 20,
        math.ceil(timeout) + 1,
        _MAX_FILE_BYTES,
        _MAX_OPEN_FILES,
        _MAX_PROCESSES,
    )
    with tempfile.TemporaryDirectory(
        prefix="avengers-sandbox-", ignore_cleanup_errors=True
    ) as root:
        workdir, io = Path(root, "work"), Path(root, "io")
        workdir.mkdir()
        io.mkdir()
        program = io / "main.py"
        program.write_text(code, encoding="utf-8")
        (io / "stdin").write_text(stdin, encoding="utf-8")
        with (
            (io / "stdin").open("rb") as stdin_file,
            (io / "stdout").open("wb") as stdout_file,
            (io / "stderr").open("wb") as stderr_file,
        ):
            process = subprocess.Popen(  # noqa: S603 - fixed argv, the code is a file argument
                [
                    sys.executable,
                    "-s",
                    "-S",
                    "-P",
                    "-B",
                    "-c",
                    _BOOTSTRAP,
                    str(program),
                    *(str(limit) for limit in limits),
                ],
                stdin=stdin_file,
                stdout=stdout_file,
                stderr=stderr_file,
                cwd=workdir,
                env=_ENVIRONMENT,
                start_new_session=True,
            )
            timed_out = False
            try:
                returncode: int | None = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
            # Kill the whole group: on timeout, and also any child left running after
            # a normal exit (the group id stays reserved while a member lives).
            _kill_group(process.pid)
            if timed_out:
                try:
                    returncode = process.wait(timeout=_KILL_GRACE_SECONDS)
                except subprocess.TimeoutExpired:
                    returncode = None
        return SandboxResult(
            returncode=returncode,
            stdout=_read_bounded(io / "stdout"),
            stderr=_read_bounded(io / "stderr"),
            timed_out=timed_out,
        )
