"""llama.cpp's own HTTP server (``llama-server``), built once from a pinned registry package.

The source is the sdist of ``llama-cpp-python`` (:data:`LLAMA_CPP_PYTHON`) on PyPI,
which vendors the whole llama.cpp tree (MIT) under ``vendor/llama.cpp``; nothing is
downloaded from anywhere else. :func:`build_server` makes the binary in five steps:

1. it takes a lock on ``<root>/llama-server/.build.lock`` (``filelock``): a second
   builder waits, then finds the build done;
2. ``pip download --no-deps --no-binary :all: --require-hashes`` fetches the pinned
   sdist through pip's configured index (pip checks :data:`SDIST_SHA256`, and we check
   it again before unpacking);
3. only ``vendor/llama.cpp`` and its git folder (which names the commit) are unpacked
   (tarfile's ``data`` filter);
4. cmake configures and builds the ``llama-server`` target with CPU-portable flags
   (:data:`CMAKE_FLAGS`: no ``-march=native``, a static binary), with Ninja if it is
   found, else Make; ``progress(done, total)`` follows the build steps;
5. the new binary must print the pinned llama.cpp commit on ``--version``; its
   sha256 goes into a ``build.json`` sidecar, and the staging folder is renamed into
   place, ``<root>/llama-server/llama-cpp-python-<version>/``, in one atomic step.

Everything happens in a temporary folder beside the final one, so a killed build never
leaves a half binary where one is looked for; the next build removes its leftovers.
A new pin gets a new folder: the build runs again only when the pin changes.

:func:`server_binary` finds the binary before each use and checks it: the sidecar's
size and sha256 against the file, and ``--version`` against the pin (once per process
and file). ``<root>`` is the project's cache folder (``AVENGERS_CACHE_DIR``, else
``$XDG_CACHE_HOME/avengers-graph`` or ``~/.cache/avengers-graph``, see
:func:`avengers_graph.experts.cache.cache_root`); when ``AVENGERS_CACHE_DIR`` points
elsewhere and holds no build, the user-wide one
(:func:`avengers_graph.experts.cache.user_cache_root`) is used, so a temporary cache folder
does not cost a rebuild.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from avengers_graph.errors import AvengersError
from avengers_graph.experts.cache import cache_root, user_cache_root

__all__ = [
    "CMAKE_FLAGS",
    "LLAMA_CPP_COMMIT",
    "LLAMA_CPP_PYTHON",
    "SDIST_SHA256",
    "ServerBinaryError",
    "ToolchainError",
    "build_server",
    "find_server",
    "install_dir",
    "server_binary",
]

LLAMA_CPP_PYTHON = "0.3.36"
"""The pinned ``llama-cpp-python`` release whose sdist carries llama.cpp's source."""
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
"""sha256 of ``llama_cpp_python-0.3.36.tar.gz`` (76,589,250 bytes) as published on PyPI."""
LLAMA_CPP_COMMIT = "0c1e570"
"""The llama.cpp commit that sdist vendors: ``llama-server --version`` must name it."""
CMAKE_FLAGS: tuple[str, ...] = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=OFF",  # portable: no -march=native (AVX2/FMA/F16C baseline on x86-64)
    "-DBUILD_SHARED_LIBS=OFF",  # one self-contained binary to hash and to move
    "-DLLAMA_CURL=OFF",  # never downloads models
    "-DLLAMA_OPENSSL=OFF",  # serves plain HTTP on the loopback
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
)
"""cmake options of the build (the same CPU-portable choices as the old pip build)."""

_BINARY = "llama-server"
_SIDECAR = "build.json"
_TARGET = "llama-server"
_SOURCE_PREFIX = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
_GIT_PREFIX = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/.git/modules/vendor/llama.cpp/"
"""The submodule's git folder (``vendor/llama.cpp/.git`` points there): cmake reads the
commit from it, and ``--version`` prints it."""
_VERSION_TIMEOUT_S = 30.0
_DOWNLOAD_TIMEOUT_S = 900.0
_CONFIGURE_TIMEOUT_S = 600.0
_BUILD_TIMEOUT_S = 3600.0
_LOCK_TIMEOUT_S = 3600.0
_LOG_TAIL_LINES = 25
_CHUNK_BYTES = 8 * 1024 * 1024
_NINJA_STEP = re.compile(r"^\[(\d+)/(\d+)\]")
_MAKE_STEP = re.compile(r"^\[\s*(\d+)%\]")

Progress = Callable[[int, int], None]
"""``progress(done, total)`` of the build steps."""


class ServerBinaryError(AvengersError):
    """``llama-server`` is not built, or the built file is not the pinned one."""


class ToolchainError(ServerBinaryError):
    """A tool the build needs (cmake, a C++ compiler, Ninja or Make) is missing."""


@dataclass(frozen=True)
class _Toolchain:
    cmake: str
    generator: str
    """``Ninja`` or ``Unix Makefiles``."""


def install_dir(root: Path) -> Path:
    """Where the build of the pinned version lives under the cache folder ``root``."""
    return Path(root) / "llama-server" / f"llama-cpp-python-{LLAMA_CPP_PYTHON}"


def _roots(env: Mapping[str, str] | None = None) -> list[Path]:
    """The cache folders searched for a build: the project's, then the user-wide one."""
    env = os.environ if env is None else env
    own = cache_root(env)
    user = user_cache_root(env)
    return [own] if own == user else [own, user]


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(_CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def _version_output(binary: Path) -> str:
    """What ``binary --version`` prints (llama.cpp prints it on stderr)."""
    try:
        result = subprocess.run(  # noqa: S603 - a binary we built and hashed
            [str(binary), "--version"],
            capture_output=True,
            text=True,
            timeout=_VERSION_TIMEOUT_S,
            env={"PATH": os.environ.get("PATH", "")},
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServerBinaryError(f"{binary} --version did not run: {exc}") from exc
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0 or LLAMA_CPP_COMMIT not in output:
        raise ServerBinaryError(
            f"{binary} --version exited with {result.returncode} and did not name llama.cpp "
            f"commit {LLAMA_CPP_COMMIT}: {output[-400:]!r}. Rebuild it with "
            "`avengers local build --force`."
        )
    return output


_verified: dict[tuple[str, int, int, int], str] = {}
"""Binaries checked in this process: (path, inode, size, mtime_ns) to their sha256."""


def _check(folder: Path) -> Path:
    """The binary of a build folder, checked against its sidecar and the pin.

    Raises:
        ServerBinaryError: The sidecar is missing or unreadable, or the binary's size,
            sha256 or ``--version`` does not match.
    """
    binary = folder / _BINARY
    try:
        record = json.loads((folder / _SIDECAR).read_text(encoding="utf-8"))
        stat = binary.stat()
    except (OSError, ValueError) as exc:
        raise ServerBinaryError(
            f"The llama-server build in {folder} is incomplete ({exc}). Rebuild it with "
            "`avengers local build --force`."
        ) from exc
    key = (str(binary), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if _verified.get(key) == record.get("sha256"):
        return binary
    if (
        not isinstance(record, dict)
        or record.get("llama_cpp_python") != LLAMA_CPP_PYTHON
        or record.get("size") != stat.st_size
        or _hash_file(binary) != record.get("sha256")
    ):
        raise ServerBinaryError(
            f"{binary} does not match its build record {folder / _SIDECAR} (changed or "
            "damaged since it was built). Rebuild it with `avengers local build --force`."
        )
    _version_output(binary)
    _verified[key] = str(record["sha256"])
    return binary


def find_server(env: Mapping[str, str] | None = None) -> Path | None:
    """The checked ``llama-server`` binary of the pinned version, or ``None`` if unbuilt.

    Raises:
        ServerBinaryError: A build exists but fails its check.
    """
    for root in _roots(env):
        folder = install_dir(root)
        if (folder / _SIDECAR).is_file():
            return _check(folder)
    return None


def server_binary(env: Mapping[str, str] | None = None) -> Path:
    """The checked ``llama-server`` binary; an error that says how to build it if absent.

    Raises:
        ServerBinaryError: Not built yet, or the build fails its check.
    """
    binary = find_server(env)
    if binary is None:
        where = install_dir(_roots(env)[0])
        raise ServerBinaryError(
            f"llama-server is not built yet (looked in {where}). Build it once with "
            "`avengers local build` (about 10 minutes on 2 cores; `make install-local` "
            "does it), which compiles llama.cpp from the pinned llama-cpp-python sdist."
        )
    return binary


# -- the build ------------------------------------------------------------------------


def _toolchain() -> _Toolchain:
    cmake = shutil.which("cmake")
    compiler = next((c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)
    c_compiler = next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
    ninja = shutil.which("ninja") or shutil.which("ninja", path=str(Path(sys.executable).parent))
    make = shutil.which("make")
    missing = [
        tool
        for tool, found in (
            ("cmake", cmake),
            ("a C++ compiler (c++, g++ or clang++)", compiler),
            ("a C compiler (cc, gcc or clang)", c_compiler),
            ("ninja or make", ninja or make),
        )
        if not found
    ]
    if cmake is None or missing:
        raise ToolchainError(
            f"Building llama-server needs {', '.join(missing)}, which cannot be found on "
            "PATH. On Debian or Ubuntu: `apt-get install cmake g++ ninja-build`; then run "
            "`avengers local build` again."
        )
    return _Toolchain(cmake=cmake, generator="Ninja" if ninja else "Unix Makefiles")


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.strip().splitlines()[-lines:]) or "(empty log)"


def _run(
    command: list[str],
    log: Path,
    *,
    timeout: float,
    what: str,
    progress: Progress | None = None,
    cwd: Path | None = None,
) -> None:
    """Run a build step, its output appended to ``log``; its progress lines reported.

    A watchdog kills the step after ``timeout`` seconds, so no step waits forever.
    """
    with log.open("a", encoding="utf-8") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        process = subprocess.Popen(  # noqa: S603 - cmake/pip with fixed arguments
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=cwd,
        )
        watchdog = threading.Timer(timeout, process.kill)
        watchdog.start()
        try:
            for line in process.stdout or ():
                out.write(line)
                out.flush()  # the log shows how far a running build is
                step = _NINJA_STEP.match(line) or _MAKE_STEP.match(line)
                if progress is not None and step is not None:
                    done = int(step.group(1))
                    total = int(step.group(2)) if step.re is _NINJA_STEP else 100
                    progress(done, total)
            code = process.wait()
        finally:
            timed_out = not watchdog.is_alive() and process.returncode != 0
            watchdog.cancel()
            if process.poll() is None:
                process.kill()
                process.wait()
    if timed_out:
        raise ServerBinaryError(
            f"{what} took longer than {timeout:.0f} s and was stopped. Log {log}:\n{_tail(log)}"
        )
    if code != 0:
        raise ServerBinaryError(f"{what} failed (exit code {code}). Log {log}:\n{_tail(log)}")


def _download_sdist(folder: Path, log: Path) -> Path:
    requirements = folder / "requirements.txt"
    requirements.write_text(
        f"llama-cpp-python=={LLAMA_CPP_PYTHON} --hash=sha256:{SDIST_SHA256}\n", encoding="utf-8"
    )
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--require-hashes",
            "--disable-pip-version-check",
            "-r",
            str(requirements),
            "-d",
            str(folder),
        ],
        log,
        timeout=_DOWNLOAD_TIMEOUT_S,
        what=f"Downloading the llama-cpp-python {LLAMA_CPP_PYTHON} sdist with pip",
    )
    sdist = folder / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    if not sdist.is_file() or _hash_file(sdist) != SDIST_SHA256:
        raise ServerBinaryError(
            f"{sdist} is missing or its sha256 is not the pinned {SDIST_SHA256}: the package "
            "index served another file. Check pip's index configuration."
        )
    return sdist


def _unpack(sdist: Path, folder: Path) -> Path:
    """Extract ``vendor/llama.cpp`` (and its git folder) into ``folder``; return its root."""
    with tarfile.open(sdist, "r:gz") as archive:
        members = [
            m for m in archive.getmembers() if m.name.startswith((_SOURCE_PREFIX, _GIT_PREFIX))
        ]
        if not members:
            raise ServerBinaryError(f"{sdist} holds no {_SOURCE_PREFIX}.")
        archive.extractall(folder, members=members, filter="data")
    return folder / _SOURCE_PREFIX


def _remove_leftovers(parent: Path) -> None:
    """Remove the staging folders of builds that were killed (called under the lock)."""
    for leftover in parent.glob(".build-*"):
        shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def _build_lock(parent: Path) -> Iterator[None]:
    from filelock import FileLock, Timeout

    try:
        with FileLock(parent / ".build.lock", timeout=_LOCK_TIMEOUT_S):
            yield
    except Timeout as exc:
        raise ServerBinaryError(
            f"Another llama-server build in {parent} held its lock for over "
            f"{_LOCK_TIMEOUT_S:.0f} s. If no build runs, delete {parent / '.build.lock'}."
        ) from exc


def build_server(
    root: Path | None = None,
    *,
    jobs: int | None = None,
    force: bool = False,
    progress: Progress | None = None,
    on_step: Callable[[str], None] | None = None,
) -> Path:
    """Build ``llama-server`` of the pinned version into the cache, once; return the binary.

    Args:
        root: Cache folder (default: the project's, see the module docstring).
        jobs: Parallel compile jobs (default: the cores available).
        force: Build again even if a checked build exists.
        progress: Told ``(done, total)`` of the compile steps.
        on_step: Told the name of each step (download, unpack, configure, compile).

    Raises:
        ToolchainError: cmake, a compiler or a build tool is missing.
        ServerBinaryError: A step failed (the message ends with the build log's tail).
    """
    root = _roots()[0] if root is None else Path(root)
    final = install_dir(root)
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    say = on_step or (lambda step: None)
    with _build_lock(parent):
        if not force and (final / _SIDECAR).is_file():
            with contextlib.suppress(ServerBinaryError):
                return _check(final)
        toolchain = _toolchain()
        _remove_leftovers(parent)
        staging = Path(tempfile.mkdtemp(prefix=".build-", dir=parent))
        log = parent / "build.log"
        log.write_text("", encoding="utf-8")
        try:
            started = time.monotonic()
            say(f"downloading the llama-cpp-python {LLAMA_CPP_PYTHON} sdist (pip)")
            sdist = _download_sdist(staging, log)
            say("unpacking vendor/llama.cpp")
            source = _unpack(sdist, staging / "src")
            sdist.unlink()
            build = staging / "build"
            say(f"configuring ({toolchain.generator})")
            _run(
                [
                    toolchain.cmake,
                    "-S",
                    str(source),
                    "-B",
                    str(build),
                    "-G",
                    toolchain.generator,
                    *CMAKE_FLAGS,
                ],
                log,
                timeout=_CONFIGURE_TIMEOUT_S,
                what="Configuring llama.cpp with cmake",
            )
            say("compiling llama-server")
            _run(
                [
                    toolchain.cmake,
                    "--build",
                    str(build),
                    "--target",
                    _TARGET,
                    "-j",
                    str(jobs or os.cpu_count() or 1),
                ],
                log,
                timeout=_BUILD_TIMEOUT_S,
                what="Compiling llama-server",
                progress=progress,
            )
            built = build / "bin" / _BINARY
            version = _version_output(built)
            out = staging / "install"
            out.mkdir()
            shutil.copy2(built, out / _BINARY)
            shutil.copy2(source / "LICENSE", out / "LICENSE")
            record = {
                "llama_cpp_python": LLAMA_CPP_PYTHON,
                "sdist_sha256": SDIST_SHA256,
                "llama_cpp_commit": LLAMA_CPP_COMMIT,
                "cmake_flags": list(CMAKE_FLAGS),
                "generator": toolchain.generator,
                "version": version,
                "size": (out / _BINARY).stat().st_size,
                "sha256": _hash_file(out / _BINARY),
                "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "build_seconds": round(time.monotonic() - started, 1),
            }
            (out / _SIDECAR).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
            if final.exists():  # a damaged build (or --force): set aside, then removed
                final.rename(staging / "old")
            os.replace(out, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return _check(final)
