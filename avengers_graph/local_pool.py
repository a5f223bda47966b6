"""A pool of local llama.cpp servers, one process per model, reachable through ``ChatOpenAI``.

:class:`LocalPool` keeps its files in one cache folder:

- ``models/``: the verified GGUF files (:func:`avengers_graph.local_models.ensure_model`);
- ``servers/<name>.json``: the llama.cpp server config of each model;
- ``logs/<name>.log``: each server's output;
- ``servers.json``: the state file, a reviewable JSON record of the running servers
  (model, port, pid, host, file, start time, holders), so another process (the CLI)
  can find and stop them later.

:meth:`LocalPool.up` joins the model file if needed, writes the config (one model
per server, ``logits_all`` off, ``interrupt_requests`` off, a share of the cores),
starts ``python -m llama_cpp.server --config_file <config>`` in its own session and
polls ``GET /v1/models`` until the server answers. :meth:`LocalPool.experts` makes
the ``ChatOpenAI`` clients; :meth:`LocalPool.down` stops only processes whose
``/proc/<pid>/cmdline`` still names the server module and this pool's config file,
so a reused pid is never killed. Process checks read ``/proc``: Linux only.

Servers started by :meth:`LocalPool.up` run until :meth:`LocalPool.down`. The ones
started by :meth:`LocalPool.hold` (what :func:`~avengers_graph.embedded.local_avengers`
uses) are shared: every process that holds a server is recorded with it, and the
server stops when the last live holder lets go. Two scripts on one cache folder share
one set of servers, and the first to finish does not stop the other's.

llama.cpp quirks handled here: the server ignores ``max_completion_tokens`` (what
``ChatOpenAI`` sends for ``max_tokens``), so the clients are
:class:`~avengers_graph.openai_compatible.ChatOpenAICompatible`; its ``/v1/models``
waits while a request is generating, so a busy server can probe as ``"unhealthy"``; the
``CONFIG_FILE``, ``HOST`` and ``PORT`` environment variables override its config, so
they are removed from the server's environment.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel

from avengers_graph.config import KEYLESS_API_KEY
from avengers_graph.errors import AvengersError, InvalidInputError, MissingExtraError
from avengers_graph.local_models import MODELS, _exclusive, ensure_model

__all__ = ["LocalPool", "PortInUseError", "ServerError", "ServerInfo", "ServerState"]

logger = logging.getLogger(__name__)

ServerState = Literal["healthy", "unhealthy", "dead"]

_STATE_VERSION = 1
_SERVER_MODULE = "llama_cpp.server"
_SERVER_IMPORTS = (
    "llama_cpp",
    "uvicorn",
    "fastapi",
    "sse_starlette",
    "starlette_context",
    "pydantic_settings",
)
_OVERRIDING_ENV = ("CONFIG_FILE", "HOST", "PORT")
_PROBE_TIMEOUT_S = 2.0
_POLL_INTERVAL_S = 0.2
_STOP_GRACE_S = 10.0
_LOG_TAIL_LINES = 20
_PORT_ATTEMPTS = 3
_PORT_RACE_MARKER = "address already in use"


class ServerError(AvengersError):
    """A local llama.cpp server could not be started, found or stopped."""


class PortInUseError(ServerError):
    """The port asked for a server is taken by another process."""


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
    """The processes holding it, as ``pid:start-ticks`` (a reused pid is another key)."""

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible endpoint (``http://host:port/v1``)."""
        return f"http://{self.host}:{self.port}/v1"


def server_name(model: str) -> str:
    """The name a model's server gets: the registry name, or a ``.gguf`` file's stem."""
    return model if model in MODELS else Path(model).stem


def _require_server() -> None:
    missing = [module for module in _SERVER_IMPORTS if find_spec(module) is None]
    if missing:
        raise MissingExtraError(
            f"Local llama.cpp servers need llama-cpp-python's server ({', '.join(missing)} "
            "missing): pip install 'avengers-graph[local]' (it compiles llama.cpp, "
            "which takes several minutes)."
        )


def _cpu_count() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # pragma: no cover - not Linux


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` (the way uvicorn binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _proc_cmdline(pid: int) -> list[str] | None:
    """The arguments of process ``pid``, or ``None`` if it is gone, a zombie or unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] in {"Z", "X"}:
        return None
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def _process_key(pid: int) -> str | None:
    """``pid:start-ticks`` of a live process (``None`` if gone or a zombie).

    The start time tells a process from a later one that got its pid back.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # fields 3 (state) onwards
    if len(fields) < 20 or fields[0] in {"Z", "X"}:
        return None
    return f"{pid}:{fields[19]}"  # field 22: start time, in clock ticks since boot


def _holder_alive(key: str) -> bool:
    pid, _, _ = key.partition(":")
    return pid.isdigit() and _process_key(int(pid)) == key


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.strip().splitlines()[-lines:]) or "(empty log)"


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _probe(info: ServerInfo, timeout: float = _PROBE_TIMEOUT_S) -> bool:
    """Whether the server answers ``GET /v1/models`` and lists its model."""
    try:
        with _NO_PROXY.open(f"{info.base_url}/models", timeout=timeout) as response:
            body = json.loads(response.read())
    except (OSError, ValueError):  # URLError, refused, timeouts, bad JSON
        return False
    data = body.get("data") if isinstance(body, dict) else None
    return isinstance(data, list) and any(
        isinstance(entry, dict) and entry.get("id") == info.model for entry in data
    )


class LocalPool:
    """Start, probe and stop local llama.cpp servers (one process per model).

    Args:
        cache_dir: Folder of the model files, server configs, logs and the state
            file ``servers.json``.
        host: IPv4 address the servers listen on (keep the loopback unless you mean it).
    """

    def __init__(self, cache_dir: Path, *, host: str = "127.0.0.1") -> None:
        self.cache_dir = Path(cache_dir)
        self.host = host
        self.state_path = self.cache_dir / "servers.json"
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    # -- files --------------------------------------------------------------------

    def config_path(self, name: str) -> Path:
        """The llama.cpp server config of model ``name``."""
        return self.cache_dir / "servers" / f"{name}.json"

    def log_path(self, name: str) -> Path:
        """The server log of model ``name``."""
        return self.cache_dir / "logs" / f"{name}.log"

    def _read_state(self) -> dict[str, ServerInfo]:
        try:
            text = self.state_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            record = json.loads(text)
            return {
                name: ServerInfo(
                    model=str(entry["model"]),
                    port=int(entry["port"]),
                    pid=int(entry["pid"]),
                    host=str(entry["host"]),
                    model_path=str(entry["model_path"]),
                    started_at=str(entry["started_at"]),
                    transient=bool(entry.get("transient", False)),
                    holders=tuple(str(key) for key in entry.get("holders", ())),
                )
                for name, entry in record["servers"].items()
            }
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ServerError(
                f"The server state file {self.state_path} is unreadable ({exc}). Stop its "
                "servers by hand if any run, then delete the file."
            ) from exc

    def _write_state(self, servers: Mapping[str, ServerInfo]) -> None:
        record = {
            "version": _STATE_VERSION,
            "servers": {
                name: {
                    **asdict(info),
                    "config_path": str(self.config_path(name)),
                    "log_path": str(self.log_path(name)),
                }
                for name, info in sorted(servers.items())
            },
        }
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        temporary = self.state_path.with_name(self.state_path.name + ".tmp")
        temporary.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        os.replace(temporary, self.state_path)

    # -- processes ----------------------------------------------------------------

    def _is_ours(self, info: ServerInfo) -> bool:
        """Whether ``info.pid`` is alive and still this pool's server of ``info.model``."""
        child = self._children.get(info.pid)
        if child is not None and child.poll() is not None:
            del self._children[info.pid]  # reaped: its pid may be reused from now on
            return False
        cmdline = _proc_cmdline(info.pid)
        return (
            cmdline is not None
            and _SERVER_MODULE in cmdline
            and str(self.config_path(info.model)) in cmdline
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
        while _proc_cmdline(pid) is not None:
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

    def _server_config(
        self, name: str, model_path: Path, port: int, threads: int
    ) -> dict[str, Any]:
        spec = MODELS.get(name)
        model: dict[str, Any] = {
            "model": str(model_path),
            "model_alias": name,
            "n_ctx": spec.n_ctx if spec else 2048,
            "n_threads": threads,
            "n_threads_batch": threads,
            "logits_all": False,  # True costs ~4x the memory and only serves logprobs
            "verbose": False,
        }
        if spec is not None and spec.chat_format is not None:
            model["chat_format"] = spec.chat_format
        return {
            "host": self.host,
            "port": port,
            # A new request must not cut off a running one (the graph sends several).
            "interrupt_requests": False,
            "models": [model],
        }

    def _launch(self, name: str, model_path: Path, port: int, threads: int) -> ServerInfo:
        config = self.config_path(name)
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(
            json.dumps(self._server_config(name, model_path, port, threads), indent=2) + "\n",
            encoding="utf-8",
        )
        log = self.log_path(name)
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {key: value for key, value in os.environ.items() if key not in _OVERRIDING_ENV}
        with log.open("wb") as output:
            process = subprocess.Popen(  # noqa: S603 - our interpreter, our config file
                [sys.executable, "-m", _SERVER_MODULE, "--config_file", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self.cache_dir,
                env=env,
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
        self, name: str, model_path: Path, port: int | None, threads: int, timeout: float
    ) -> ServerInfo:
        attempt = 0
        while True:
            attempt += 1
            chosen = _free_port(self.host) if port is None else port
            if port is not None and not _port_is_free(self.host, port):
                raise PortInUseError(
                    f"Port {port} on {self.host} is in use by another process, so the server "
                    f"of {name!r} cannot listen there. Stop that process, give another port, "
                    "or give none to pick a free one."
                )
            info = self._launch(name, model_path, chosen, threads)
            try:
                self._wait_healthy(info, timeout)
            except (KeyboardInterrupt, SystemExit):
                # not recorded in the state file yet: stop it, or nothing ever would
                if info.pid in self._children:
                    self._stop(info, grace=2.0)
                raise
            except ServerError:
                # A free port picked by us can be taken before the server binds it.
                raced = _PORT_RACE_MARKER in _tail(self.log_path(name)).lower()
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
        models: Sequence[str],
        *,
        threads: int | None = None,
        ports: Mapping[str, int] | None = None,
        timeout: float = 120.0,
    ) -> list[ServerInfo]:
        """Start a server for each model not running yet; return every model's server.

        The servers run until :meth:`down`. A server already running for a model is
        left alone, except that one a :meth:`hold` started now runs until
        :meth:`down` too. The servers started before a failure keep running and are
        recorded; :meth:`down` stops them.

        Args:
            models: Registry names (see :data:`avengers_graph.local_models.MODELS`) or
                paths of ``.gguf`` files (served under their stem).
            threads: Threads per server; default: the cores shared among ``models``.
            ports: Port of some models (by name); the others get a free port.
            timeout: Seconds to wait for each server to answer.

        Raises:
            MissingExtraError: llama-cpp-python's server is not installed.
            ModelFileError: A model file cannot be provided (packages missing...).
            PortInUseError: A port given in ``ports`` is taken.
            ServerError: A server exited or did not answer in time; the message ends
                with its log.
        """
        return self._up(models, threads=threads, ports=ports, timeout=timeout, holder=None)

    @contextmanager
    def hold(
        self, models: Sequence[str], *, threads: int | None = None, timeout: float = 120.0
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
        if holder is None:  # pragma: no cover - /proc is unreadable: not Linux
            raise ServerError("Holding servers needs /proc (Linux).")
        names = [server_name(model) for model in dict.fromkeys(models)]
        try:
            yield self._up(models, threads=threads, ports=None, timeout=timeout, holder=holder)
        finally:
            self._let_go(names, holder)

    def _up(
        self,
        models: Sequence[str],
        *,
        threads: int | None,
        ports: Mapping[str, int] | None,
        timeout: float,
        holder: str | None,
    ) -> list[ServerInfo]:
        names = list(dict.fromkeys(models))
        if not names:
            return []
        if threads is not None and threads < 1:
            raise InvalidInputError(f"threads must be >= 1, got {threads!r}.")
        _require_server()
        per_server = threads or max(1, _cpu_count() // len(names))
        given_ports = dict(ports or {})
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        started: list[ServerInfo] = []
        with _exclusive(self.cache_dir / ".servers.lock"):
            state = self._read_state()
            self._reap(state, keep={server_name(model) for model in names})
            for model in names:
                name = server_name(model)
                running = state.get(name)
                if running is not None and self._is_ours(running):
                    info = (
                        replace(running, transient=False)
                        if holder is None
                        else replace(running, holders=(*running.holders, holder))
                    )
                    state[name] = info
                    started.append(info)
                    continue
                state.pop(name, None)
                model_path = ensure_model(model, self.cache_dir)
                port = given_ports.get(model, given_ports.get(name))
                info = self._start(name, model_path, port, per_server, timeout)
                if holder is not None:
                    info = replace(info, transient=True, holders=(holder,))
                state[name] = info
                self._write_state(state)
                started.append(info)
            self._write_state(state)
        return started

    def _let_go(self, names: Sequence[str], holder: str) -> None:
        """Drop ``holder`` from the servers, then stop every idle transient one."""
        if not names or not self.state_path.exists():
            return
        with _exclusive(self.cache_dir / ".servers.lock"):
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
        with _exclusive(self.cache_dir / ".servers.lock"):
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
        ``"healthy"``: it answers ``GET /v1/models``; ``"unhealthy"``: it runs but does
        not answer in time (loading, or busy generating).
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

        Registry models whose answers hold tool calls as text get their
        ``tool_call_parser`` (see :class:`~avengers_graph.local_models.LocalModelSpec`).

        Args:
            models: Names of the servers to use; each must be running.
            max_tokens: Default generation cap (a call's ``max_tokens=`` overrides it).
            timeout: Seconds to wait for one answer.

        Raises:
            ServerError: A named model has no running server.
        """
        from pydantic import SecretStr

        from avengers_graph.openai_compatible import ChatOpenAICompatible

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
                tool_call_parser=MODELS[name].tool_call_parser if name in MODELS else None,
            )
            for name in names
        }
