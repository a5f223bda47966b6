"""Run untrusted, model-written Python in an isolated, resource-limited process.

:func:`run_python` never executes code in the calling process. Each call:

1. creates a temporary directory holding the program file, the files for stdin,
   stdout and stderr, and the path of the program's working directory;
2. starts the interpreter (``-s -S -P -B``: isolated mode minus ``-E``, so that the
   fixed environment we set takes effect; without ``site`` only the standard library
   is importable, plus the installed distributions the caller offers, ``packages``,
   read-only under ``/packages``) with a minimal environment (no variable of the
   calling process: no API keys, no ``PATH``), inside the best isolation the host
   offers (:func:`isolation`):

   * :attr:`Isolation.BUBBLEWRAP`, where ``bwrap`` works (:func:`_bubblewrap_argv`):
     new mount, pid, network, IPC and UTS namespaces. The file system is a fresh,
     empty root holding only, read-only, ``/usr``, the ``/bin`` and ``/lib*``
     links or folders, the interpreter's installation (``sys.base_prefix``) and the
     program file; plus a minimal ``/dev``, the namespace's own ``/proc`` and three
     small tmpfs that are the only writable places: the working directory, ``/tmp``
     and ``/dev/shm`` (64 MiB each, gone with the sandbox). No ``/etc``, ``/home``,
     ``/root`` content, project folder or other user's file exists inside. When the
     caller is root, the program runs as an unprivileged uid of its own, chosen per
     run, with no capability and no supplementary group (bubblewrap starts as root,
     keeping only ``CAP_SETUID``/``CAP_SETGID`` until the bootstrap drops them); a
     non-root caller's program keeps the caller's uid in a user namespace.
     ``no_new_privs`` is set (setuid binaries and file capabilities give nothing)
     and a seccomp filter (:func:`_seccomp_filter`, x86-64 and AArch64) refuses new
     user namespaces, so the program can neither gain privileges nor mount its own
     unbounded tmpfs. The program sees only its own processes and bubblewrap's
     init (pid 1), cannot signal anything outside, and has no network interface but
     its own loopback;
   * :attr:`Isolation.PROCESS`, the fallback where bubblewrap is missing or cannot
     start (a warning is logged once): a plain subprocess in its own session; the
     bootstrap moves it into an empty network namespace where ``unshare(2)``
     allows it. It can read every file the calling user can (as root: all of them,
     ``/etc/shadow`` included), see the host's processes and signal the calling
     user's, write wherever the user can, and, as root, fork without limit.
     ``require_isolation=True`` refuses to run in this mode;

3. the bootstrap (``_BOOTSTRAP``), before running the program: sets resource limits
   (address space ``memory_mb``, CPU seconds, size of written files, open files and,
   where the kernel enforces it, processes: not for root in the fallback), drops to
   the run's uid (bubblewrap as root), and installs a guard that replaces the
   ``socket`` constructors and resolver functions by ones raising
   ``PermissionError("network disabled in sandbox")``. The guard is no boundary (the
   program can undo it); it makes the common case fail fast with a clear message;
4. runs the program as ``__main__`` and waits at most the run's wall-clock budget:
   ``timeout`` seconds, or less when the caller's ``deadline`` comes first (sandbox
   start-up included). At the budget, or as soon as the program exits, every
   process it left is killed: with bubblewrap the namespace's init is killed through
   a pidfd and the kernel kills the whole pid namespace (children that called
   ``setsid`` included) before we return; in the fallback the program's process
   group is killed, which a descendant that started its own session escapes;
5. returns the exit status and the (bounded) output, and removes the directory.

What remains with bubblewrap: the program shares the host kernel (a kernel bug is
an escape); it can read what ``/usr`` and the interpreter's installation hold
(world-readable system files); memory limits are per process (``memory_mb`` times
the process limit, plus the three tmpfs, in the worst case); CPU time is per
process (bounded by the wall-clock kill). docs/reliability.md lists the escape
attempts that are tested and their outcome.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import json
import logging
import math
import os
import platform
import secrets
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO, NamedTuple

from packaging.requirements import Requirement

from avengers_graph.errors import AvengersError, InvalidInputError

__all__ = [
    "Isolation",
    "SandboxError",
    "SandboxResult",
    "SandboxUnavailableError",
    "isolation",
    "run_python",
]

logger = logging.getLogger(__name__)

_MAX_OUTPUT_BYTES = 1 << 20
"""At most this much of stdout and of stderr is returned."""
_MAX_FILE_BYTES = 64 << 20
"""The program may not write a file (including its stdout/stderr) larger than this."""
_MAX_OPEN_FILES = 256
_MAX_PROCESSES = 64
"""Processes and threads of the program (enforced where the program's uid is its own)."""
_FALLBACK_MAX_PROCESSES = 1024
"""The fallback's per-user process limit for non-root users (shared with their others)."""
_TMPFS_BYTES = 64 << 20
"""Size of each writable tmpfs inside bubblewrap (working directory, /tmp, /dev/shm)."""
_KILL_GRACE_SECONDS = 5.0
_PROBE_TIMEOUT_SECONDS = 30.0
_TRUNCATION_NOTE = "\n[output truncated]"

_UID_BASE = 0x71000000
"""First uid of the per-run uids (bubblewrap as root): unused by Linux distributions
(systemd leaves 0x70000000-0x7FFDFFFF unassigned); no /etc/passwd entry is needed."""
_UID_RANGE = 1 << 20

_READ_ONLY_HOST_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
"""System folders mounted read-only inside bubblewrap (a symlink is recreated as such)."""

_ENVIRONMENT = {
    "PYTHONHASHSEED": "0",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUTF8": "1",
    "PYTHONIOENCODING": "utf-8",
    # One thread per numerical library: a process limit of 64 and one core's worth of
    # work (OpenBLAS starts a thread per host core at import otherwise).
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}

_SCRATCH_FOLDERS = ("/tmp", "/dev/shm")  # noqa: S108 - inside the sandbox, not the host
"""Writable tmpfs of every bubblewrap sandbox besides its working directory."""

_PACKAGES_FOLDER = "/packages"
"""Where bubblewrap mounts the installed packages a run may import (``packages``)."""

# Runs inside the child before the program. argv: isolation mode, program path, the
# limits (address space, CPU seconds, file size, open files, processes; -1: not set),
# then the uid to drop to (-1: keep).
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
    import resource

    limits = [
        (resource.RLIMIT_AS, memory),
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_FSIZE, file_size),
        (resource.RLIMIT_NOFILE, open_files),
        (resource.RLIMIT_CORE, 0),
    ]
    if processes >= 0 and hasattr(resource, "RLIMIT_NPROC"):
        limits.append((resource.RLIMIT_NPROC, processes))
    for which, value in limits:
        _, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, value))


def _drop_privileges(uid):
    import ctypes
    import os

    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)  # clears the permitted, effective and ambient capabilities
    if os.getresuid() != (uid, uid, uid) or os.getgroups():
        raise SystemExit("sandbox: could not drop privileges")
    # A uid change makes the process non-dumpable (/proc/self owned by root); undo that.
    ctypes.CDLL(None, use_errno=True).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE


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


_mode, _program = sys.argv[1], sys.argv[2]
_memory, _cpu, _file_size, _open_files, _processes, _uid = (int(v) for v in sys.argv[3:9])
if _mode == "process":
    _isolate_network()
_limit_resources(_memory, _cpu, _file_size, _open_files, _processes)
if _uid >= 0:
    _drop_privileges(_uid)
_install_network_guard()
sys.argv = [_program]

import runpy

runpy.run_path(_program, run_name="__main__")
"""


class Isolation(StrEnum):
    """How :func:`run_python` isolates the program (see the module documentation)."""

    BUBBLEWRAP = "bubblewrap"
    """Namespaces, a read-only minimal file system and an unprivileged uid (bwrap)."""
    PROCESS = "process"
    """The fallback: a plain subprocess with resource limits; no file-system isolation."""


class SandboxError(AvengersError, RuntimeError):
    """The sandbox itself failed (not the program): bubblewrap could not set it up."""


class SandboxUnavailableError(SandboxError):
    """Isolation was required but bubblewrap is missing or cannot start on this host.

    Install it (``apt-get install bubblewrap``; ``make install`` does as root) or run
    where user namespaces, or root, are available.
    """


@dataclass(frozen=True)
class SandboxResult:
    """The outcome of one sandboxed run."""

    returncode: int | None
    """Exit status (negative: killed by that signal); None if the process could not be
    reaped, or never started because the caller's deadline had passed."""
    stdout: str
    """Standard output, decoded as UTF-8 and truncated to a bound."""
    stderr: str
    """Standard error, decoded as UTF-8 and truncated to a bound."""
    timed_out: bool
    """Whether the program was still running at the end of its budget and was killed."""
    isolation: Isolation = field(default=Isolation.PROCESS, compare=False)
    """How the program was isolated (not part of equality: it describes the run)."""

    @property
    def ok(self) -> bool:
        """Whether the program exited with status 0 before the deadline."""
        return self.returncode == 0 and not self.timed_out


class _Streams(NamedTuple):
    """The program's standard streams (files in the run's directory)."""

    stdin: BinaryIO
    stdout: BinaryIO
    stderr: BinaryIO


@dataclass(frozen=True)
class _Bubblewrap:
    """A working bubblewrap set-up: the executable and how to call it."""

    executable: str
    interpreter: str
    """The resolved interpreter (a venv's ``python`` is a link to it)."""
    drop_uid: bool
    """Whether we run as root: the program then drops to a uid of its own."""
    seccomp: bytes | None
    """The compiled seccomp filter, None on an architecture we have none for."""


def _seccomp_filter() -> bytes | None:
    """A classic-BPF seccomp program refusing new user namespaces.

    ``unshare`` and ``clone`` with ``CLONE_NEWUSER`` fail with ``EPERM``; ``clone3``
    (whose flags sit in memory a filter cannot read) fails with ``ENOSYS``, so the C
    library falls back to ``clone``; another architecture's system calls (x32, i386
    on x86-64) kill the process. The array of ``struct sock_filter`` is what
    ``bwrap --seccomp FD`` loads.

    Returns:
        The filter, or None on an architecture other than x86-64 and AArch64.
    """
    machine = platform.machine().lower()
    # (AUDIT_ARCH_*, unshare, clone, clone3, whether syscall numbers >= 2**30 are x32)
    tables = {
        "x86_64": (0xC000003E, 272, 56, 435, True),
        "amd64": (0xC000003E, 272, 56, 435, True),
        "aarch64": (0xC00000B7, 97, 220, 435, False),
        "arm64": (0xC00000B7, 97, 220, 435, False),
    }
    if machine not in tables or sys.byteorder != "little":
        return None
    arch, unshare, clone, clone3, x32 = tables[machine]
    load, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|..|K
    allow, kill = 0x7FFF0000, 0x80000000  # SECCOMP_RET_ALLOW, SECCOMP_RET_KILL_PROCESS
    eperm, enosys = 0x00050000 | 1, 0x00050000 | 38  # SECCOMP_RET_ERRNO | errno
    clone_newuser = 0x10000000
    # struct seccomp_data: nr at 0, arch at 4, args[0] at 16 (low half, little-endian)
    program = [
        (load, 0, 0, 4),
        (jeq, 1, 0, arch),
        (ret, 0, 0, kill),
        (load, 0, 0, 0),
        *([(jge, 0, 1, 0x40000000), (ret, 0, 0, eperm)] if x32 else []),
        (jeq, 0, 1, clone3),
        (ret, 0, 0, enosys),
        (jeq, 2, 0, unshare),
        (jeq, 1, 0, clone),
        (ret, 0, 0, allow),
        (load, 0, 0, 16),
        (jset, 0, 1, clone_newuser),
        (ret, 0, 0, eperm),
        (ret, 0, 0, allow),
    ]
    return b"".join(struct.pack("=HBBI", *instruction) for instruction in program)


def _ancestors(path: str) -> list[str]:
    """The folders above ``path``, outermost first (``/a/b/c`` -> ``/a``, ``/a/b``)."""
    parents = [str(parent) for parent in Path(path).parents if str(parent) != "/"]
    return parents[::-1]


def _package_paths(packages: Sequence[str]) -> dict[str, str]:
    """The installed files a run may import: top-level name to host path.

    Every top-level module, package and metadata folder of the named distributions and
    of everything they require (without extras), e.g. ``sympy`` brings ``mpmath`` and
    ``numpy`` its bundled libraries (``numpy.libs``).

    Raises:
        InvalidInputError: A distribution that is not installed, or whose files are not
            listed (an installer that writes no ``RECORD``).
    """
    return dict(_resolve_packages(tuple(sorted(set(packages)))))


@functools.cache
def _resolve_packages(packages: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    found: dict[str, str] = {}
    seen: set[str] = set()
    pending = list(packages)
    while pending:
        name = pending.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            msg = f"Package {name!r} is not installed, so a sandboxed program cannot import it."
            raise InvalidInputError(msg) from None
        if distribution.files is None:
            msg = f"Package {name!r} lists no files (no RECORD): cannot offer it to programs."
            raise InvalidInputError(msg)
        for file in distribution.files:
            top = file.parts[0]
            if top in {"..", "__pycache__"} or top.endswith(".pth"):
                continue  # scripts outside the installation, caches, path hooks
            found.setdefault(top, str(distribution.locate_file(top)))
        for line in distribution.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return tuple(sorted(found.items()))


def _bubblewrap_argv(
    config: _Bubblewrap,
    workdir: Path,
    program: Path,
    status_fd: int,
    seccomp_fd: int | None,
    packages: Mapping[str, str] | None = None,
) -> list[str]:
    """The ``bwrap`` command line up to (and including) ``--``.

    Args:
        config: The bubblewrap set-up.
        workdir: The program's working directory (a tmpfs mounted at this path).
        program: The program file (bound read-only at its own path).
        status_fd: Where bwrap writes its JSON status (the namespace init's pid first).
        seccomp_fd: A file descriptor to read the seccomp filter from, if any.
        packages: Top-level name to host path (:func:`_package_paths`), each bound
            read-only in ``/packages``.
    """
    argv = [
        config.executable,
        "--unshare-ipc",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--hostname",
        "sandbox",
        "--die-with-parent",
        "--new-session",
        "--json-status-fd",
        str(status_fd),
    ]
    if config.drop_uid:  # root: no user namespace, so the program's uid is a host uid
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        argv += ["--unshare-user", "--disable-userns"]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    bound: list[str] = []  # host folders mounted: the folders below them exist already
    made: set[str] = {"/dev"}  # folders created empty (by --dir, --tmpfs or --dev)

    def make_parents(path: str) -> list[str]:
        # bwrap would create missing parents with the host's modes (0700 for /root).
        folders = [
            folder
            for folder in _ancestors(path)
            if folder not in made and not any(Path(folder).is_relative_to(b) for b in bound)
        ]
        made.update(folders)
        return [arg for folder in folders for arg in ("--perms", "0755", "--dir", folder)]

    for path in _READ_ONLY_HOST_PATHS:
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
            bound.append(path)
    homes = {sys.base_prefix, sys.base_exec_prefix, str(Path(config.interpreter).parent)}
    for home in sorted(homes):
        if not any(Path(home).is_relative_to(root) for root in bound):
            argv += [*make_parents(home), "--ro-bind", home, home]
            bound.append(home)
    argv += ["--dev", "/dev", "--proc", "/proc"]
    for folder in (*_SCRATCH_FOLDERS, str(workdir)):
        argv += make_parents(folder)
        argv += ["--perms", "1777", "--size", str(_TMPFS_BYTES), "--tmpfs", folder]
        made.add(folder)
    argv += [*make_parents(str(program)), "--ro-bind", str(program), str(program)]
    if packages:
        argv += ["--perms", "0755", "--dir", _PACKAGES_FOLDER]
        for name, path in packages.items():
            argv += ["--ro-bind", path, f"{_PACKAGES_FOLDER}/{name}"]
    argv += ["--chdir", str(workdir), "--"]
    return argv


def _interpreter_command(
    interpreter: str, mode: Isolation, program: Path, limits: tuple[int, ...], uid: int
) -> list[str]:
    return [
        interpreter,
        "-s",
        "-S",
        "-P",
        "-B",
        "-c",
        _BOOTSTRAP,
        mode.value,
        str(program),
        *(str(limit) for limit in limits),
        str(uid),
    ]


_PROBE_LOCK = threading.Lock()
_PROBED: list[tuple[_Bubblewrap | None, str]] = []


def _bubblewrap() -> tuple[_Bubblewrap | None, str]:
    """The working bubblewrap set-up, or None and why; probed once per process.

    The probe runs a real sandboxed program (as a run would) that checks its uid, so a
    bwrap that is installed but cannot create namespaces here counts as missing.
    """
    with _PROBE_LOCK:
        if not _PROBED:
            config, reason = _probe_bubblewrap()
            if config is None:
                logger.warning(
                    "Model-written code runs WITHOUT isolation: %s. The fallback is a "
                    "plain subprocess that can read and write every file this user can, "
                    "see the host's processes and, as root, fork without limit.",
                    reason,
                )
            _PROBED.append((config, reason))
        return _PROBED[0]


def _probe_bubblewrap() -> tuple[_Bubblewrap | None, str]:
    if not sys.platform.startswith("linux"):
        return None, f"bubblewrap needs Linux, this is {sys.platform}"
    executable = shutil.which("bwrap")
    if executable is None:
        return None, (
            "bubblewrap (`bwrap`) is not installed: `apt-get install bubblewrap` "
            "(`make install` does it as root)"
        )
    cannot = (
        "bubblewrap cannot start a sandbox here (it needs root or unprivileged user namespaces)"
    )
    config = _Bubblewrap(
        executable=executable,
        interpreter=os.path.realpath(sys.executable),
        drop_uid=os.geteuid() == 0,
        seccomp=_seccomp_filter(),
    )
    # Runs as the program would: after the uid drop, importing from the interpreter's
    # installation, and it must not be root.
    check = "import json, os, sys\nsys.exit(3 if os.getuid() == 0 == os.getgid() else 0)"
    try:
        result = _execute(check, _PROBE_TIMEOUT_SECONDS, 256, "", config)
    except (SandboxError, OSError) as error:
        return None, f"{cannot}: {error}"
    if not result.ok:
        detail = result.stderr.strip() or f"exit status {result.returncode}"
        return None, f"{cannot}: {detail}"
    return config, "bubblewrap works"


def isolation() -> Isolation:
    """How :func:`run_python` isolates programs on this host (probes bubblewrap once)."""
    config, _ = _bubblewrap()
    return Isolation.PROCESS if config is None else Isolation.BUBBLEWRAP


def run_python(
    code: str,
    *,
    timeout: float = 10.0,
    memory_mb: int = 512,
    stdin: str = "",
    deadline: float | None = None,
    require_isolation: bool = False,
    packages: Sequence[str] = (),
) -> SandboxResult:
    """Run untrusted Python code in a fresh, isolated, resource-limited interpreter.

    See the module documentation for what is isolated, and what is not.

    Args:
        code: The program's source.
        timeout: Seconds of wall-clock time (sandbox start-up included) before the
            program and every process it started are killed.
        memory_mb: Address-space limit of each process of the program in MiB (the
            interpreter alone takes some tens of MiB).
        stdin: Text fed to the program's standard input.
        deadline: A :func:`time.monotonic` instant the run must end by, such as the
            end of the caller's own budget: the program gets ``min(timeout, deadline
            - now)`` seconds. Past it, nothing runs and the result is a time-out
            with ``returncode`` None.
        require_isolation: Raise instead of running the program in the fallback
            (:attr:`Isolation.PROCESS`) when bubblewrap is unavailable.
        packages: Installed distributions the program may import besides the
            standard library (``("numpy", "sympy")``), with what they require: their
            files are mounted read-only (bubblewrap) or linked (the fallback) in a
            folder on the program's ``PYTHONPATH``.

    Returns:
        The exit status, the output, whether the program timed out and how it was
        isolated.

    Raises:
        InvalidInputError: If ``timeout`` or ``memory_mb`` is not positive,
            ``deadline`` is not finite, or a package is not installed.
        SandboxUnavailableError: If ``require_isolation`` and bubblewrap is
            unavailable here.
        SandboxError: If bubblewrap failed to set up the sandbox.
    """
    if not timeout > 0 or not math.isfinite(timeout):
        msg = f"`timeout` must be a positive number of seconds, got {timeout!r}."
        raise InvalidInputError(msg)
    if memory_mb <= 0:
        msg = f"`memory_mb` must be a positive number of MiB, got {memory_mb!r}."
        raise InvalidInputError(msg)
    if deadline is not None and not math.isfinite(deadline):
        msg = f"`deadline` must be a finite time.monotonic() instant, got {deadline!r}."
        raise InvalidInputError(msg)
    paths = _package_paths(packages)
    config, reason = _bubblewrap()
    mode = Isolation.PROCESS if config is None else Isolation.BUBBLEWRAP
    if config is None and require_isolation:
        msg = f"Isolation is required but unavailable: {reason}."
        raise SandboxUnavailableError(msg)
    budget = timeout if deadline is None else min(timeout, deadline - time.monotonic())
    if budget <= 0:
        return SandboxResult(None, "", "", timed_out=True, isolation=mode)
    return _execute(code, budget, memory_mb, stdin, config, paths)


def _execute(
    code: str,
    budget: float,
    memory_mb: int,
    stdin: str,
    config: _Bubblewrap | None,
    packages: Mapping[str, str] | None = None,
) -> SandboxResult:
    """Run ``code`` for at most ``budget`` seconds, with bubblewrap if ``config``.

    ``packages`` (:func:`_package_paths`) go on the program's ``PYTHONPATH``.
    """
    mode = Isolation.PROCESS if config is None else Isolation.BUBBLEWRAP
    processes = _MAX_PROCESSES
    if config is None:
        processes = -1 if os.geteuid() == 0 else _FALLBACK_MAX_PROCESSES
    limits = (
        memory_mb << 20,
        math.ceil(budget) + 1,
        _MAX_FILE_BYTES,
        _MAX_OPEN_FILES,
        processes,
    )
    with tempfile.TemporaryDirectory(
        prefix="avengers-sandbox-", ignore_cleanup_errors=True
    ) as root:
        workdir, io = Path(root, "work"), Path(root, "io")
        workdir.mkdir()
        io.mkdir()
        program = io / "main.py"
        program.write_text(code, encoding="utf-8")
        program.chmod(0o644)  # readable by the run's uid whatever the caller's umask
        (io / "stdin").write_text(stdin, encoding="utf-8")
        environment = dict(_ENVIRONMENT)
        if packages and config is None:  # the fallback sees the host: links suffice
            linked = Path(root, "packages")
            linked.mkdir()
            for name, path in packages.items():
                (linked / name).symlink_to(path)
            environment["PYTHONPATH"] = str(linked)
        elif packages:
            environment["PYTHONPATH"] = _PACKAGES_FOLDER
        with (
            (io / "stdin").open("rb") as stdin_file,
            (io / "stdout").open("wb") as stdout_file,
            (io / "stderr").open("wb") as stderr_file,
        ):
            streams = _Streams(stdin_file, stdout_file, stderr_file)
            if config is None:
                command = _interpreter_command(sys.executable, mode, program, limits, -1)
                returncode, timed_out = _run_process_group(
                    command, workdir, streams, budget, environment
                )
            else:
                uid = _UID_BASE + secrets.randbelow(_UID_RANGE) if config.drop_uid else -1
                command = _interpreter_command(config.interpreter, mode, program, limits, uid)
                returncode, timed_out = _run_bubblewrap(
                    config, command, workdir, program, streams, budget, packages, environment
                )
        stderr = _read_bounded(io / "stderr")
        return SandboxResult(
            returncode=returncode,
            stdout=_read_bounded(io / "stdout"),
            stderr=stderr,
            timed_out=timed_out,
            isolation=mode,
        )


def _run_process_group(
    command: list[str],
    workdir: Path,
    streams: _Streams,
    budget: float,
    environment: Mapping[str, str] = _ENVIRONMENT,
) -> tuple[int | None, bool]:
    """The fallback: run in a new session, then kill the process group."""
    process = subprocess.Popen(  # noqa: S603 - fixed argv, the code is a file argument
        command,
        cwd=workdir,
        env=environment,
        start_new_session=True,
        stdin=streams.stdin,
        stdout=streams.stdout,
        stderr=streams.stderr,
    )
    timed_out = False
    returncode: int | None = None
    try:
        returncode = _wait(process, budget)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        # Kill the whole group: on timeout, on an interrupt, and also any child left
        # running after a normal exit (the group id stays reserved while a member lives).
        _kill_group(process.pid)
        if returncode is None:
            try:
                returncode = _wait(process, _KILL_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                returncode = None
    return returncode, timed_out


class _StatusReader:
    """Reads the JSON documents bwrap writes to ``--json-status-fd``, one per line."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = b""
        self._eof = False

    def next_document(self, until: float) -> dict[str, object] | None:
        """The next document, or None at end of file or at ``until`` (monotonic)."""
        while b"\n" not in self._buffer and not self._eof:
            remaining = until - time.monotonic()
            if remaining <= 0 or not _readable(self._fd, remaining):
                return None
            chunk = os.read(self._fd, 4096)
            self._eof = not chunk
            self._buffer += chunk
        if b"\n" not in self._buffer:
            return None
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            document = json.loads(line)
        except ValueError:
            return None
        return document if isinstance(document, dict) else None

    def documents(self, until: float) -> list[dict[str, object]]:
        """Every remaining document (until end of file or ``until``)."""
        found = []
        while (document := self.next_document(until)) is not None:
            found.append(document)
        return found


def _open_namespace_init(pid: object) -> int | None:
    """A pidfd on the sandbox's pid-namespace init (host pid ``pid``), if still there.

    The pid is checked to be pid 1 of a child namespace after the pidfd is open, so a
    recycled pid is never signalled.
    """
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:  # gone already (or a kernel without pidfds: rely on --die-with-parent)
        return None
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    except OSError:
        status = ""
    nspids = next(
        (line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), []
    )
    if len(nspids) < 2 or nspids[-1] != "1":
        os.close(pidfd)
        return None
    return pidfd


@contextlib.contextmanager
def _closing(fd: int | None) -> Iterator[int | None]:
    """Close a file descriptor on leaving the block."""
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


def _seccomp_pipe(data: bytes | None) -> contextlib.AbstractContextManager[int | None]:
    """A pipe's read end holding ``data`` (the seccomp filter), closed on leaving."""
    if data is None:
        return _closing(None)
    read_end, write_end = os.pipe()
    with _closing(write_end):
        os.write(write_end, data)  # a few hundred bytes, far below a pipe's capacity
    return _closing(read_end)


def _run_bubblewrap(
    config: _Bubblewrap,
    command: list[str],
    workdir: Path,
    program: Path,
    streams: _Streams,
    budget: float,
    packages: Mapping[str, str] | None = None,
    environment: Mapping[str, str] = _ENVIRONMENT,
) -> tuple[int | None, bool]:
    """Run ``command`` inside bubblewrap; kill the whole pid namespace afterwards."""
    end = time.monotonic() + budget
    status_read, status_write = os.pipe()
    with _closing(status_read):
        with _closing(status_write), _seccomp_pipe(config.seccomp) as seccomp_fd:
            process = subprocess.Popen(  # noqa: S603 - fixed argv, the code is a file argument
                _bubblewrap_argv(config, workdir, program, status_write, seccomp_fd, packages)
                + command,
                cwd=program.parent,
                env=environment,
                start_new_session=True,
                pass_fds=[fd for fd in (status_write, seccomp_fd) if fd is not None],
                stdin=streams.stdin,
                stdout=streams.stdout,
                stderr=streams.stderr,
            )
        # Only bwrap holds the write end now: end of file once it has exited.
        returncode, timed_out, finished = _wait_and_kill(process, _StatusReader(status_read), end)
    if not timed_out and not any("exit-code" in document for document in finished):
        # bwrap reports an exit code only once the command was started: this is a
        # set-up failure, whose message bwrap wrote to the program's stderr.
        detail = _read_bounded(program.parent / "stderr").strip()
        msg = f"bubblewrap could not set up the sandbox: {detail or returncode}"
        raise SandboxError(msg)
    # bwrap reports a command killed by signal N as exit status 128 + N.
    if returncode is not None and 128 < returncode <= 128 + 64:
        returncode = 128 - returncode
    return returncode, timed_out


def _wait_and_kill(
    process: subprocess.Popen[bytes], status: _StatusReader, end: float
) -> tuple[int | None, bool, list[dict[str, object]]]:
    """Wait for bwrap until ``end``, then kill what is left of the sandbox.

    Returns:
        bwrap's exit status (None if it could not be reaped), whether the program
        timed out, and bwrap's last status documents.
    """
    pidfd: int | None = None
    returncode: int | None = None
    timed_out = False
    try:
        started = status.next_document(end)
        if started is not None:
            pidfd = _open_namespace_init(started.get("child-pid"))
        returncode = _wait(process, max(0.0, end - time.monotonic()))
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        # The program exited, timed out, or we were interrupted: kill the namespace's
        # init, which makes the kernel kill every process left in the namespace.
        if pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        if returncode is None:
            _kill_group(process.pid)
            try:
                returncode = _wait(process, _KILL_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                returncode = None
        if pidfd is not None:
            # Readable once init has exited, which the kernel allows only after every
            # other process of the namespace is gone.
            _readable(pidfd, _KILL_GRACE_SECONDS)
            os.close(pidfd)
    finished = [] if returncode is None else status.documents(time.monotonic() + 1.0)
    return returncode, timed_out, finished


def _readable(fd: int, timeout: float) -> bool:
    """Whether ``fd`` becomes readable within ``timeout`` seconds.

    ``poll`` rather than ``select``: a process with more than 1024 open files (a
    long-running server) gets descriptors ``select`` refuses.
    """
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(timeout, 0.0) * 1000))


def _wait(process: subprocess.Popen[bytes], timeout: float) -> int:
    """``process.wait(timeout)``, woken by a pidfd at the exit where the OS has them.

    ``Popen.wait`` with a timeout polls with sleeps growing to 50 ms, which adds up to
    that much to every run.

    Raises:
        subprocess.TimeoutExpired: If the process is still running after ``timeout``.
    """
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):  # not Linux, or already reaped
        return process.wait(timeout=timeout)
    with _closing(pidfd):
        if not _readable(pidfd, timeout):
            raise subprocess.TimeoutExpired(process.args, timeout)
    return process.wait(timeout=_KILL_GRACE_SECONDS)


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
