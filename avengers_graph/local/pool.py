"""A pool of local ``llama-server`` processes, one per model, reachable through ``ChatOpenAI``.

:class:`LocalPool` keeps its files in one cache folder:

- ``models/``: the verified GGUF files (:func:`avengers_graph.local.models.ensure_model`;
  none when the user-wide cache folder already holds them);
- ``logs/<name>.log``: each server's output;
- ``servers.json``: the state file, a reviewable JSON record of the servers (model,
  port, pid and process start time, slots, threads, draft model, holders), so another
  process (the CLI) can find and stop them later.

:meth:`LocalPool.up` joins the model files if needed and starts llama.cpp's own server
(:mod:`avengers_graph.local.server` builds it) for each model::

    llama-server --model FILE --alias NAME --host 127.0.0.1 --port P
        --parallel S --ctx-size S*n_ctx --threads T --threads-batch T --jinja
        [--spec-type draft-simple --spec-draft-model DRAFT ...]

- ``--parallel S``: ``S`` slots decode ``S`` requests together in one batch; the
  default is :data:`DEFAULT_SLOTS`, the graph's default ``samples``, so one expert's
  samples run at once. The clients :meth:`LocalPool.experts` makes never send more
  than ``S`` at a time (``max_concurrent_requests``).
- ``--ctx-size``: llama.cpp splits it over the slots, so each slot gets the model's
  ``n_ctx``.
- ``--threads``: the cores are split over the servers started together, never more
  threads in all than cores when there are fewer servers than cores: llama.cpp's
  threads wait for each other at every step, and a core shared with another busy
  server turned a 5 s call into 100 s.
- ``--jinja``: the GGUF's own chat template; tool calls are parsed by the server.
  A GGUF without a template gets a llama.cpp built-in one instead (Gemma).
- ``--spec-draft-model``: speculative decoding with a small model of the same tokenizer.

Each server starts in its own session with an environment cut down to
:data:`_PASSED_ENV` (``LLAMA_ARG_*``, ``LLAMA_API_KEY``, ``HOST``, ``PORT`` or proxy
variables of the user cannot reconfigure it). Its pid and start time are recorded in
the state file before it is polled for health (``GET /health``), so a launcher that is
killed meanwhile leaves a server :meth:`LocalPool.down` (or the next hold) can stop;
SIGINT, SIGTERM or SIGHUP during :meth:`LocalPool.up` stop the servers that call
started, then take their usual effect. :meth:`LocalPool.down` signals only a process
whose start time still matches the record (``psutil``), so a reused pid is never
killed.

Servers started by :meth:`LocalPool.up` run until :meth:`LocalPool.down`. The ones
started by :meth:`LocalPool.hold` (what :func:`~avengers_graph.app.embedded.local_avengers`
uses) are shared: every process that holds a server is recorded with it, and the
server stops when the last live holder lets go. Two scripts on one cache folder share
one set of servers, and the first to finish does not stop the other's.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel

from avengers_graph.errors import AvengersError, InvalidInputError, MissingExtraError
from avengers_graph.experts.openai_compatible import KEYLESS_API_KEY
from avengers_graph.local.models import MODELS, ensure_model

__all__ = [
    "DEFAULT_SLOTS",
    "LocalPool",
    "PortInUseError",
    "ServerError",
    "ServerInfo",
    "ServerSpec",
    "ServerState",
]

logger = logging.getLogger(__name__)

ServerState = Literal["healthy", "unhealthy", "dead"]

DEFAULT_SLOTS = 3
"""Parallel slots of a server unless told otherwise: the graph's default ``samples``."""
DRAFT_MAX = 8
"""Tokens the draft model proposes per step (``--spec-draft-n-max``)."""

REPEAT_PENALTY = "1.1"
"""``--repeat-penalty`` of every server: llama-cpp-python's server's default, the sampling
the bundled answers and the benchmark matrix were recorded with."""

_STATE_VERSION = 2
_ENGINE = "llama-server"
_LEGACY_ENGINE = "llama-cpp-python"
_LEGACY_MODULE = "llama_cpp.server"
_PASSED_ENV = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR")
"""The only variables (with ``LC_*``) a server inherits: llama-server reads many others
(``LLAMA_ARG_*``, ``LLAMA_API_KEY``...) as its own options."""
_PROBE_TIMEOUT_S = 2.0
_POLL_INTERVAL_S = 0.2
_STOP_GRACE_S = 10.0
_LOCK_TIMEOUT_S = 3600.0
_LOG_TAIL_LINES = 20
_PORT_ATTEMPTS = 3
_PORT_RACE_MARKERS = ("address already in use", "couldn't bind")
_START_TIME_TOLERANCE_S = 0.05
_STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


class ServerError(AvengersError):
    """A local llama.cpp server could not be started, found or stopped."""


class PortInUseError(ServerError):
    """The port asked for a server is taken by another process."""


@dataclass(frozen=True)
class ServerSpec:
    """How to serve one model: the fields left ``None`` take :meth:`LocalPool.up`'s defaults."""

    model: str
    """Registry name or path of a ``.gguf`` file (served under its stem)."""
    slots: int | None = None
    """Parallel slots (``--parallel``); default :data:`DEFAULT_SLOTS`."""
    threads: int | None = None
    """Threads (``--threads`` and ``--threads-batch``); default: a share of the cores."""
    draft: str | None = None
    """Draft model for speculative decoding (registry name or ``.gguf``); default: the
    registry's ``draft`` of the model, if any. ``""`` turns it off."""
    n_ctx: int | None = None
    """Context per slot, in tokens; default: the registry's, else 2048."""


@dataclass(frozen=True)
class ServerInfo:
    """A llama.cpp server started by a :class:`LocalPool`."""

    model: str
    """Model name, also the alias the server answers to."""
    port: int
    pid: int
    host: str
    model_path: str
    started_at: str
    """UTC start time, ISO 8601."""
    transient: bool = False
    """Started by :meth:`LocalPool.hold`: stops when its last holder lets go."""
    holders: tuple[str, ...] = ()
    """The processes holding it, as ``pid:start-time`` (a reused pid is another key)."""
    slots: int = 1
    """Parallel slots: requests it decodes at once."""
    threads: int = 1
    draft_path: str | None = None
    """The draft model's file, when it decodes speculatively."""
    create_time: float | None = None
    """The process's start time (``psutil``): tells it from a later one with its pid."""
    engine: str = _ENGINE
    """``llama-server``; ``llama-cpp-python`` for servers recorded by older versions."""

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible endpoint (``http://host:port/v1``)."""
        return f"http://{self.host}:{self.port}/v1"


def server_name(model: str) -> str:
    """The name a model's server gets: the registry name, or a ``.gguf`` file's stem."""
    return model if model in MODELS else Path(model).stem


def _psutil() -> ModuleType:
    try:
        import psutil
    except ImportError as exc:
        raise MissingExtraError(
            "Managing local llama.cpp servers needs psutil: pip install 'avengers-graph[local]'."
        ) from exc
    return psutil


def _cpu_count() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # pragma: no cover - not Linux


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _process(pid: int) -> Any:
    """The live process ``pid`` (a ``psutil.Process``), or ``None`` if gone or a zombie."""
    psutil = _psutil()
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return process


def _create_time(pid: int) -> float | None:
    process = _process(pid)
    if process is None:
        return None
    psutil = _psutil()
    try:
        return float(process.create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _cmdline(pid: int) -> list[str] | None:
    """The arguments of the live process ``pid``, or ``None``."""
    process = _process(pid)
    if process is None:
        return None
    psutil = _psutil()
    try:
        return [str(arg) for arg in process.cmdline()]
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def _process_key(pid: int) -> str | None:
    """``pid:start-time`` of a live process (``None`` if gone or a zombie).

    The start time tells a process from a later one that got its pid back.
    """
    started = _create_time(pid)
    return None if started is None else f"{pid}:{started:.2f}"


def _holder_alive(key: str) -> bool:
    pid, _, _ = key.partition(":")
    return pid.isdigit() and _process_key(int(pid)) == key


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.strip().splitlines()[-lines:]) or "(empty log)"


def _server_env() -> dict[str, str]:
    """The environment of a server: :data:`_PASSED_ENV` and ``LC_*`` only."""
    return {
        key: value
        for key, value in os.environ.items()
        if key in _PASSED_ENV or key.startswith("LC_")
    }


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _probe(info: ServerInfo, timeout: float = _PROBE_TIMEOUT_S) -> bool:
    """Whether the server answers ``GET /health`` with status ``ok`` (model loaded)."""
    url = f"http://{info.host}:{info.port}/health"
    if info.engine == _LEGACY_ENGINE:
        url = f"{info.base_url}/models"
    try:
        with _NO_PROXY.open(url, timeout=timeout) as response:
            body = json.loads(response.read())
    except (OSError, ValueError):  # URLError (503 while loading), refused, timeouts, bad JSON
        return False
    if info.engine == _LEGACY_ENGINE:
        return isinstance(body, dict) and isinstance(body.get("data"), list)
    return isinstance(body, dict) and body.get("status") == "ok"


class _StopSignal(BaseException):
    """SIGTERM or SIGHUP arrived while servers were starting."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextmanager
def _stop_signals_raise() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into an exception while the block runs, then re-deliver.

    The exception unwinds the block's cleanup (stopping the servers it started); the
    signal is then raised again with its previous handler in place, so it takes its
    usual effect. SIGINT already raises ``KeyboardInterrupt``. Signals the process
    ignores, or handles itself, are left alone; so is everything outside the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_stop(signum: int, frame: FrameType | None) -> None:
        raise _StopSignal(signum)

    previous: dict[int, Any] = {}
    for name in _STOP_SIGNALS[1:]:
        number = getattr(signal, name, None)
        if number is not None and signal.getsignal(number) is signal.SIG_DFL:
            previous[number] = signal.signal(number, raise_stop)
    try:
        yield
    except _StopSignal as stopped:
        for number, handler in previous.items():
            signal.signal(number, handler)
        previous.clear()
        signal.raise_signal(stopped.signum)  # the default action: the process ends
        raise  # pragma: no cover - only if the default action did not end it
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


class LocalPool:
    """Start, probe and stop local ``llama-server`` processes (one per model).

    Args:
        cache_dir: Folder of the model files, logs and the state file ``servers.json``.
        host: IPv4 address the servers listen on (keep the loopback unless you mean it).
        server_binary: A ``llama-server`` executable to run instead of the checked
            build of :func:`avengers_graph.local.server.server_binary` (found when a
            server is started).
    """

    def __init__(
        self, cache_dir: Path, *, host: str = "127.0.0.1", server_binary: Path | None = None
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.host = host
        self.server_binary = server_binary
        self.state_path = self.cache_dir / "servers.json"
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    # -- files --------------------------------------------------------------------

    def log_path(self, name: str) -> Path:
        """The server log of model ``name``."""
        return self.cache_dir / "logs" / f"{name}.log"

    def _binary(self) -> Path:
        if self.server_binary is not None:
            return Path(self.server_binary)
        from avengers_graph.local.server import server_binary

        return server_binary()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        from filelock import FileLock, Timeout

        self.cache_dir.mkdir(parents=True, exist_ok=True)
        lock = self.cache_dir / ".servers.lock"
        try:
            with FileLock(lock, timeout=_LOCK_TIMEOUT_S):
                yield
        except Timeout as exc:
            raise ServerError(
                f"Another process held {lock} for over {_LOCK_TIMEOUT_S:.0f} s. If no "
                "`avengers local` command runs any more, delete the lock file."
            ) from exc

    def _read_state(self) -> dict[str, ServerInfo]:
        try:
            text = self.state_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            record = json.loads(text)
            legacy = record.get("version", 1) < _STATE_VERSION
            servers = {}
            for name, entry in record["servers"].items():
                draft = entry.get("draft_path")
                created = entry.get("create_time")
                servers[name] = ServerInfo(
                    model=str(entry["model"]),
                    port=int(entry["port"]),
                    pid=int(entry["pid"]),
                    host=str(entry["host"]),
                    model_path=str(entry["model_path"]),
                    started_at=str(entry["started_at"]),
                    transient=bool(entry.get("transient", False)),
                    holders=tuple(str(key) for key in entry.get("holders", ())),
                    slots=int(entry.get("slots", 1)),
                    threads=int(entry.get("threads", 1)),
                    draft_path=None if draft is None else str(draft),
                    create_time=None if created is None else float(created),
                    engine=_LEGACY_ENGINE if legacy else str(entry.get("engine", _ENGINE)),
                )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ServerError(
                f"The server state file {self.state_path} is unreadable ({exc}). Stop its "
                "servers by hand if any run, then delete the file."
            ) from exc
        return servers

    def _write_state(self, servers: Mapping[str, ServerInfo]) -> None:
        record = {
            "version": _STATE_VERSION,
            "servers": {
                name: {**asdict(info), "log_path": str(self.log_path(name))}
                for name, info in sorted(servers.items())
            },
        }
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        temporary = self.state_path.with_name(self.state_path.name + ".tmp")
        temporary.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        os.replace(temporary, self.state_path)

    # -- processes ----------------------------------------------------------------

    def _is_ours(self, info: ServerInfo) -> bool:
        """Whether ``info.pid`` is alive and still the process this pool started."""
        child = self._children.get(info.pid)
        if child is not None and child.poll() is not None:
            del self._children[info.pid]  # reaped: its pid may be reused from now on
            return False
        if info.engine == _LEGACY_ENGINE:  # recorded by an older version: by its arguments
            cmdline = _cmdline(info.pid)
            config = str(self.cache_dir / "servers" / f"{info.model}.json")
            return cmdline is not None and _LEGACY_MODULE in cmdline and config in cmdline
        started = _create_time(info.pid)
        return (
            started is not None
            and info.create_time is not None
            and abs(started - info.create_time) < _START_TIME_TOLERANCE_S
        )

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        child = self._children.get(pid)
        if child is not None:
            try:
                child.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return False
            del self._children[pid]
            return True
        deadline = time.monotonic() + timeout
        while _process(pid) is not None:
            if time.monotonic() > deadline:
                return False
            time.sleep(_POLL_INTERVAL_S)
        return True

    def _stop(self, info: ServerInfo, grace: float = _STOP_GRACE_S) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; the caller checked ownership."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(info.pid, sig)
            if self._wait_exit(info.pid, grace):
                return
        raise ServerError(f"Server {info.model!r} (pid {info.pid}) survived SIGKILL.")

    def _command(
        self,
        name: str,
        model_path: Path,
        port: int,
        *,
        slots: int,
        threads: int,
        n_ctx: int,
        draft_path: Path | None,
    ) -> list[str]:
        """The ``llama-server`` command line of one model (see the module docstring)."""
        spec = MODELS.get(name)
        command = [
            str(self._binary()),
            "--model",
            str(model_path),
            "--alias",
            name,
            "--host",
            self.host,
            "--port",
            str(port),
            "--parallel",
            str(slots),
            "--ctx-size",
            str(slots * n_ctx),  # split over the slots: n_ctx each
            "--threads",
            str(threads),
            "--threads-batch",
            str(threads),
            "--metrics",
            "--no-webui",
            # the sampling the pool was calibrated and recorded with: llama-cpp-python's
            # default penalty (llama-server's is off, and small models then loop)
            "--repeat-penalty",
            REPEAT_PENALTY,
        ]
        if spec is not None and spec.chat_format is not None:
            # the GGUF has no template: a built-in one (by name, which needs --no-jinja:
            # with Jinja on, the name itself would be taken as the template's text)
            command += ["--no-jinja", "--chat-template", spec.chat_format]
        else:
            command.append("--jinja")  # the GGUF's template; tool calls parsed server-side
        if draft_path is not None:
            command += [
                "--spec-type",
                "draft-simple",
                "--spec-draft-model",
                str(draft_path),
                "--spec-draft-threads",
                str(threads),
                "--spec-draft-n-max",
                str(DRAFT_MAX),
            ]
        return command

    def _launch(
        self, name: str, port: int, plan: _Plan, files: tuple[Path, Path | None]
    ) -> ServerInfo:
        model_path, draft_path = files
        command = self._command(
            name,
            model_path,
            port,
            slots=plan.slots,
            threads=plan.threads,
            n_ctx=plan.n_ctx,
            draft_path=draft_path,
        )
        log = self.log_path(name)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as output:
            process = subprocess.Popen(  # noqa: S603 - our checked binary, our arguments
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self.cache_dir,
                env=_server_env(),
                start_new_session=True,
            )
        self._children[process.pid] = process
        return ServerInfo(
            model=name,
            port=port,
            pid=process.pid,
            host=self.host,
            model_path=str(model_path),
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
            slots=plan.slots,
            threads=plan.threads,
            draft_path=None if draft_path is None else str(draft_path),
            create_time=_create_time(process.pid),
        )

    def _wait_healthy(self, info: ServerInfo, timeout: float) -> None:
        process = self._children[info.pid]
        deadline = time.monotonic() + timeout
        while not _probe(info):
            code = process.poll()
            if code is not None:
                del self._children[info.pid]
                raise ServerError(
                    f"The llama.cpp server of {info.model!r} exited with code {code} while "
                    f"starting. Last lines of {self.log_path(info.model)}:\n"
                    f"{_tail(self.log_path(info.model))}"
                )
            if time.monotonic() > deadline:
                self._stop(info, grace=2.0)
                raise ServerError(
                    f"The llama.cpp server of {info.model!r} did not answer on "
                    f"{info.base_url} within {timeout:.0f} s (stopped it); raise `timeout` "
                    f"if the machine is slow. Last lines of {self.log_path(info.model)}:\n"
                    f"{_tail(self.log_path(info.model))}"
                )
            time.sleep(_POLL_INTERVAL_S)

    def _start(
        self,
        name: str,
        plan: _Plan,
        files: tuple[Path, Path | None],
        port: int | None,
        timeout: float,
        record: Callable[[ServerInfo | None], None],
    ) -> ServerInfo:
        """Launch, record (``record(info)``, before waiting), wait until healthy.

        A free port we picked can be taken before the server binds it: then again, on
        another port. A server that fails is stopped and ``record(None)`` forgets it.
        """
        self._binary()  # built and checked? (before any port is picked)
        attempt = 0
        while True:
            attempt += 1
            if port is not None and not _port_is_free(self.host, port):
                raise PortInUseError(
                    f"Port {port} on {self.host} is in use by another process, so the server "
                    f"of {name!r} cannot listen there. Stop that process, give another port, "
                    "or give none to pick a free one."
                )
            chosen = _free_port(self.host) if port is None else port
            info = self._launch(name, chosen, plan, files)
            record(info)
            try:
                self._wait_healthy(info, timeout)
            except ServerError:
                record(None)
                # A free port picked by us can be taken before the server binds it.
                log = _tail(self.log_path(name)).lower()
                raced = any(marker in log for marker in _PORT_RACE_MARKERS)
                if port is None and raced and attempt < _PORT_ATTEMPTS:
                    continue
                if port is not None and raced:
                    raise PortInUseError(
                        f"Port {port} on {self.host} was taken while the server of {name!r} "
                        "started. Give another port, or none to pick a free one."
                    ) from None
                raise
            return info

    # -- public -------------------------------------------------------------------

    def up(
        self,
        models: Sequence[str | ServerSpec],
        *,
        slots: int | None = None,
        threads: int | None = None,
        ports: Mapping[str, int] | None = None,
        timeout: float = 120.0,
    ) -> list[ServerInfo]:
        """Start a server for each model not running yet; return every model's server.

        The servers run until :meth:`down`. A server already running for a model is
        left alone (with the slots it has), except that one a :meth:`hold` started now
        runs until :meth:`down` too. The servers started before a failure keep running
        and are recorded; :meth:`down` stops them. SIGINT, SIGTERM or SIGHUP while it
        runs stop the servers this call started, then take their usual effect.

        Args:
            models: Registry names (see :data:`avengers_graph.local.models.MODELS`),
                paths of ``.gguf`` files (served under their stem), or
                :class:`ServerSpec` with per-model slots, threads or draft model.
            slots: Parallel slots of each server (default :data:`DEFAULT_SLOTS`).
            threads: Threads per server; default: the cores shared among ``models``.
            ports: Port of some models (by name); the others get a free port.
            timeout: Seconds to wait for each server to answer.

        Raises:
            ServerBinaryError: llama-server is not built (``avengers local build``).
            MissingExtraError: psutil is not installed.
            ModelFileError: A model file cannot be provided (packages missing...).
            PortInUseError: A port given in ``ports`` is taken.
            ServerError: A server exited or did not answer in time; the message ends
                with its log.
        """
        with _stop_signals_raise():
            return self._up(
                models, slots=slots, threads=threads, ports=ports, timeout=timeout, holder=None
            )

    @contextmanager
    def hold(
        self,
        models: Sequence[str | ServerSpec],
        *,
        slots: int | None = None,
        threads: int | None = None,
        timeout: float = 120.0,
    ) -> Iterator[list[ServerInfo]]:
        """Servers for ``models`` while the block runs, shared with other processes.

        Starts the servers not running yet, as :meth:`up` does, and records this
        process as a holder of each one. On exit (or if starting fails) it lets go:
        a server that a ``hold`` started stops once no live process holds it, while
        the ones :meth:`up` started keep running. Holders that died without letting
        go are forgotten by the next hold or let-go of any process on this cache folder,
        which stops the servers only they held: a crashed script's servers do not
        outlive the next run.

        Raises:
            The errors of :meth:`up`.
        """
        holder = _process_key(os.getpid())
        if holder is None:  # pragma: no cover - our own process is always alive
            raise ServerError("Cannot read this process's start time.")
        names = [server_name(_spec(model).model) for model in models]
        with _stop_signals_raise():
            try:
                started = self._up(
                    models,
                    slots=slots,
                    threads=threads,
                    ports=None,
                    timeout=timeout,
                    holder=holder,
                )
            except BaseException:
                self._let_go(list(dict.fromkeys(names)), holder)
                raise
        try:
            yield started
        finally:
            self._let_go(list(dict.fromkeys(names)), holder)

    def _plans(
        self, specs: Sequence[ServerSpec], slots: int | None, threads: int | None
    ) -> dict[str, _Plan]:
        """The resolved options of each server to start (no file touched yet)."""
        for value, what in ((slots, "slots"), (threads, "threads")):
            if value is not None and value < 1:
                raise InvalidInputError(f"{what} must be >= 1, got {value!r}.")
        shared = max(1, _cpu_count() // len(specs))
        plans: dict[str, _Plan] = {}
        for spec in specs:
            name = server_name(spec.model)
            registry = MODELS.get(spec.model)
            draft = spec.draft
            if draft is None and registry is not None:
                draft = registry.draft
            n_ctx = spec.n_ctx or (registry.n_ctx if registry is not None else 2048)
            plans[name] = _Plan(
                spec=spec,
                slots=spec.slots or slots or DEFAULT_SLOTS,
                threads=spec.threads or threads or shared,
                n_ctx=n_ctx,
                draft=draft or None,
            )
        return plans

    def _up(
        self,
        models: Sequence[str | ServerSpec],
        *,
        slots: int | None,
        threads: int | None,
        ports: Mapping[str, int] | None,
        timeout: float,
        holder: str | None,
    ) -> list[ServerInfo]:
        specs = list({server_name(s.model): s for s in map(_spec, models)}.values())
        if not specs:
            return []
        plans = self._plans(specs, slots, threads)
        given_ports = dict(ports or {})
        result: list[ServerInfo] = []
        launched: list[ServerInfo] = []
        with self._locked():
            state = self._read_state()
            self._reap(state, keep=set(plans))

            def record(name: str, info: ServerInfo | None) -> None:
                if info is None:
                    state.pop(name, None)
                else:
                    if holder is not None:
                        info = replace(info, transient=True, holders=(holder,))
                    state[name] = info
                    launched.append(info)
                self._write_state(state)

            ready: set[str] = set()
            try:
                for name, plan in plans.items():
                    running = state.get(name)
                    if running is not None and self._is_ours(running):
                        if plan.slots > running.slots:
                            logger.warning(
                                "Server %r already runs with %d slots (asked for %d); its "
                                "clients send at most %d requests at once.",
                                name,
                                running.slots,
                                plan.slots,
                                running.slots,
                            )
                        state[name] = (
                            replace(running, transient=False)
                            if holder is None
                            else replace(running, holders=(*running.holders, holder))
                        )
                        result.append(state[name])
                        continue
                    state.pop(name, None)
                    model_path, draft_path = plan.files(self.cache_dir)
                    port = given_ports.get(plan.spec.model, given_ports.get(name))
                    self._start(
                        name,
                        plan,
                        (model_path, draft_path),
                        port,
                        timeout,
                        functools.partial(record, name),
                    )
                    ready.add(name)
                    result.append(state[name])
                self._write_state(state)
            except Exception:
                # the servers that were ready keep running, recorded; `down` stops them
                self._forget(state, [info for info in launched if info.model not in ready])
                raise
            except BaseException:
                # Ctrl-C, SIGTERM, SIGHUP: stop everything this call started
                self._forget(state, launched)
                raise
        return result

    def _forget(self, state: dict[str, ServerInfo], infos: Sequence[ServerInfo]) -> None:
        """Stop these launched servers (if still running) and drop them from the state."""
        for info in infos:
            if self._is_ours(info):
                self._stop(info, grace=2.0)
            current = state.get(info.model)
            if current is not None and current.pid == info.pid:
                del state[info.model]
        self._write_state(state)

    def _let_go(self, names: Sequence[str], holder: str) -> None:
        """Drop ``holder`` from the servers, then stop every idle transient one."""
        if not names or not self.state_path.exists():
            return
        with self._locked():
            state = self._read_state()
            for name in names:
                info = state.get(name)
                if info is not None and holder in info.holders:
                    holders = list(info.holders)
                    holders.remove(holder)  # one hold: the same process may hold twice
                    state[name] = replace(info, holders=tuple(holders))
            self._reap(state, keep=set())
            self._write_state(state)

    def _reap(self, state: dict[str, ServerInfo], keep: Collection[str]) -> None:
        """Forget dead holders; stop the transient servers no live process holds.

        Called under the state lock by every hold and let-go, so the servers of a
        process that died holding them stop the next time any process on this cache
        folder starts or leaves a hold. ``keep``: the servers about to be held again.
        """
        for name, info in list(state.items()):
            if name in keep:
                continue
            holders = tuple(key for key in info.holders if _holder_alive(key))
            if info.transient and not holders:
                if self._is_ours(info):
                    self._stop(info)
                del state[name]
            elif holders != info.holders:
                state[name] = replace(info, holders=holders)

    def down(self, models: Sequence[str] | None = None) -> list[str]:
        """Stop servers this pool started (all by default); return the names stopped.

        Held servers stop too: the processes holding them lose them.

        A recorded pid whose process is gone, or is now another program (a reused
        pid), is not signalled: its entry is only removed from the state file.
        """
        if not self.state_path.exists():
            return []
        stopped: list[str] = []
        with self._locked():
            state = self._read_state()
            wanted = list(state) if models is None else [server_name(m) for m in models]
            for name in wanted:
                info = state.get(name)
                if info is None:
                    continue
                if self._is_ours(info):
                    self._stop(info)
                    stopped.append(name)
                else:
                    logger.warning(
                        "Server %r (pid %d) was not running any more; forgetting it.",
                        name,
                        info.pid,
                    )
                del state[name]
                self._write_state(state)
        return stopped

    def servers(self) -> dict[str, ServerInfo]:
        """The recorded servers whose process is still running."""
        return {name: info for name, info in self._read_state().items() if self._is_ours(info)}

    def status(self) -> list[tuple[ServerInfo, ServerState]]:
        """Every recorded server with its state.

        ``"dead"``: the process is gone (or its pid is another program now);
        ``"healthy"``: it answers ``GET /health`` (model loaded); ``"unhealthy"``: it
        runs but does not answer in time (still loading, or stuck).
        """
        result: list[tuple[ServerInfo, ServerState]] = []
        for info in self._read_state().values():
            state: ServerState
            if not self._is_ours(info):
                state = "dead"
            else:
                state = "healthy" if _probe(info) else "unhealthy"
            result.append((info, state))
        return result

    def experts(
        self,
        models: Sequence[str] | None = None,
        *,
        max_tokens: int = 256,
        timeout: float = 300.0,
    ) -> dict[str, BaseChatModel]:
        """``ChatOpenAI`` clients of running servers (all by default), by model name.

        Each client sends at most as many requests at once as its server has slots
        (``max_concurrent_requests``); the others wait in the client.

        Args:
            models: Names of the servers to use; each must be running.
            max_tokens: Default generation cap (a call's ``max_tokens=`` overrides it).
            timeout: Seconds to wait for one answer.

        Raises:
            ServerError: A named model has no running server.
        """
        from pydantic import SecretStr

        from avengers_graph.experts.openai_compatible import ChatOpenAICompatible

        running = self.servers()
        names = list(running) if models is None else [server_name(m) for m in models]
        missing = [name for name in names if name not in running]
        if missing:
            raise ServerError(
                f"No running server for {', '.join(missing)} in {self.cache_dir}: start "
                "them with `avengers local up` (LocalPool.up)."
            )
        return {
            name: ChatOpenAICompatible(
                model=name,
                base_url=running[name].base_url,
                api_key=SecretStr(KEYLESS_API_KEY),
                max_completion_tokens=max_tokens,
                timeout=timeout,
                max_retries=1,
                max_concurrent_requests=running[name].slots,
                tool_call_parser=MODELS[name].tool_call_parser if name in MODELS else None,
            )
            for name in names
        }


def _spec(model: str | ServerSpec) -> ServerSpec:
    return model if isinstance(model, ServerSpec) else ServerSpec(model=model)


@dataclass(frozen=True)
class _Plan:
    """The resolved options of one server to start."""

    spec: ServerSpec
    slots: int
    threads: int
    n_ctx: int
    draft: str | None

    def files(self, cache_dir: Path) -> tuple[Path, Path | None]:
        """The verified model file and draft model file (joined if needed)."""
        model_path = ensure_model(self.spec.model, cache_dir)
        return model_path, None if self.draft is None else ensure_model(self.draft, cache_dir)
