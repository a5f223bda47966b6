"""LocalPool without real servers: state file, ownership, command line, start failures, signals.

A fake ``llama-server`` (a small Python script given as ``server_binary``) stands in
for the real one; ``_probe`` is replaced, so no socket is opened.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from avengers_graph.local import pool as local_pool
from avengers_graph.local.pool import LocalPool, ServerError, ServerInfo, ServerSpec
from avengers_graph.local.server import ServerBinaryError
from tests.processes import terminal_signals

Spawn = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start harmless long-lived processes; kill the survivors after the test."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(*args: str, **kwargs: object) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(  # noqa: S603 - fixed test commands
            list(args),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=terminal_signals,  # noqa: PLW1509 - only resets two signals
            **kwargs,
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def _started(pid: int) -> float:
    return float(psutil.Process(pid).create_time())


def _info(name: str, pid: int, port: int = 8123, **fields: object) -> ServerInfo:
    info = ServerInfo(
        model=name,
        port=port,
        pid=pid,
        host="127.0.0.1",
        model_path=f"/models/{name}.gguf",
        started_at="2026-01-01T00:00:00+00:00",
        slots=3,
        threads=1,
        create_time=_started(pid) if psutil.pid_exists(pid) else 1.0,
    )
    return replace(info, **fields)  # type: ignore[arg-type]


def _gone(pid: int) -> bool:
    """Whether ``pid`` ended (a zombie nobody reaped, orphaned under an init that does not
    reap, counts as ended)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _sleeper(spawn: Spawn) -> subprocess.Popen[bytes]:
    return spawn(sys.executable, "-c", "import time; time.sleep(120)")


@pytest.fixture
def fake_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Path]:
    """Write a fake llama-server whose body is given (``args``: its parsed options)."""
    monkeypatch.setattr(local_pool, "_free_port", lambda host: 1)
    monkeypatch.setattr(local_pool, "_probe", lambda info, timeout=2.0: False)

    def write(body: str) -> Path:
        path = tmp_path / "fake-llama-server"
        path.write_text(
            f"#!{sys.executable}\n"
            "import sys\n"
            "argv = sys.argv[1:]\n"
            "args = {k: v for k, v in zip(argv, argv[1:] + [''], strict=True) "
            "if k.startswith('--')}\n" + textwrap.dedent(body)
        )
        path.chmod(0o755)
        return path

    return write


def _model(tmp_path: Path) -> str:
    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"GGUF")
    return str(model)


# -- the state file -------------------------------------------------------------------


def test_state_file_round_trip(tmp_path: Path) -> None:
    pool = LocalPool(tmp_path)
    servers = {
        "b-model": _info("b-model", 12, 9001, create_time=5.5),
        "a-model": _info("a-model", 34, 9002, create_time=6.25, draft_path="/models/d.gguf"),
    }
    pool._write_state(servers)
    assert pool._read_state() == servers
    record = json.loads((tmp_path / "servers.json").read_text())
    assert record["version"] == 2
    assert list(record["servers"]) == ["a-model", "b-model"]
    assert record["servers"]["a-model"] == {
        "model": "a-model",
        "port": 9002,
        "pid": 34,
        "host": "127.0.0.1",
        "model_path": "/models/a-model.gguf",
        "started_at": "2026-01-01T00:00:00+00:00",
        "transient": False,
        "holders": [],
        "slots": 3,
        "threads": 1,
        "draft_path": "/models/d.gguf",
        "create_time": 6.25,
        "engine": "llama-server",
        "log_path": str(tmp_path / "logs" / "a-model.log"),
    }
    assert servers["a-model"].base_url == "http://127.0.0.1:9002/v1"
    held = {"a-model": replace(servers["a-model"], transient=True, holders=("12:3.45", "67:8"))}
    pool._write_state(held)
    assert pool._read_state() == held


def test_an_unreadable_state_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "servers.json").write_text("{not json")
    with pytest.raises(ServerError, match=r"servers\.json is unreadable"):
        LocalPool(tmp_path).status()


def test_no_state_file_means_no_servers(tmp_path: Path) -> None:
    pool = LocalPool(tmp_path / "absent")
    assert pool.status() == []
    assert pool.servers() == {}
    assert pool.down() == []


def test_a_server_of_the_old_engine_is_still_found_and_stopped(
    tmp_path: Path, spawn: Spawn
) -> None:
    """State files of version 1 named llama-cpp-python servers by their config file."""
    config = tmp_path / "servers" / "smollm2-135m.json"
    old = spawn(
        sys.executable,
        "-c",
        "import time; time.sleep(120)",
        "-m",
        "llama_cpp.server",
        "--config_file",
        str(config),
    )
    deadline = time.monotonic() + 30
    while str(config) not in psutil.Process(old.pid).cmdline():
        if time.monotonic() > deadline:  # a hang guard, not a speed check
            pytest.fail("the fake old server did not start")
        time.sleep(0.01)
    entry = {
        "model": "smollm2-135m",
        "port": 8123,
        "pid": old.pid,
        "host": "127.0.0.1",
        "model_path": "/m.gguf",
        "started_at": "2026-01-01T00:00:00+00:00",
        "transient": False,
        "holders": [],
    }
    (tmp_path / "servers.json").write_text(
        json.dumps({"version": 1, "servers": {"smollm2-135m": entry}})
    )
    pool = LocalPool(tmp_path)
    [info] = pool.servers().values()
    assert info.engine == "llama-cpp-python"
    assert pool.down() == ["smollm2-135m"]
    assert old.wait(timeout=15) is not None


# -- ownership --------------------------------------------------------------------------


def test_down_never_kills_a_process_that_is_not_our_server(tmp_path: Path, spawn: Spawn) -> None:
    sleeper = _sleeper(spawn)
    pool = LocalPool(tmp_path)
    # the recorded start time is not this process's: its pid was reused
    stale = _info("smollm2-135m", sleeper.pid, create_time=_started(sleeper.pid) - 100)
    pool._write_state({"smollm2-135m": stale})
    assert pool.status() == [(stale, "dead")]
    assert pool.servers() == {}
    assert pool.down() == []
    assert sleeper.poll() is None  # still running
    assert pool._read_state() == {}  # the stale entry is forgotten


def test_down_stops_our_server_and_only_the_ones_named(
    tmp_path: Path, spawn: Spawn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_pool, "_probe", lambda info, timeout=2.0: False)
    pool = LocalPool(tmp_path)
    first, second = _sleeper(spawn), _sleeper(spawn)
    pool._write_state(
        {"first": _info("first", first.pid), "second": _info("second", second.pid, 8124)}
    )
    assert set(pool.servers()) == {"first", "second"}
    # Alive, but not answering: unhealthy.
    assert {info.model: state for info, state in pool.status()} == {
        "first": "unhealthy",
        "second": "unhealthy",
    }

    assert pool.down(["first"]) == ["first"]
    assert first.wait(timeout=15) is not None
    assert second.poll() is None
    assert set(pool._read_state()) == {"second"}
    assert pool.down() == ["second"]
    assert second.wait(timeout=15) is not None
    assert pool.status() == []


def test_a_recorded_running_server_makes_up_a_no_op(
    tmp_path: Path, spawn: Spawn, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_start(*args: object, **kwargs: object) -> ServerInfo:
        raise AssertionError("started a second server")

    monkeypatch.setattr(LocalPool, "_start", no_start)
    pool = LocalPool(tmp_path)
    info = _info("smollm2-135m", _sleeper(spawn).pid)
    pool._write_state({"smollm2-135m": info})
    assert pool.up(["smollm2-135m", "smollm2-135m"]) == [info]


def test_up_without_a_built_server_says_how_to_build_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AVENGERS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    with pytest.raises(ServerBinaryError, match=r"`avengers local build`"):
        LocalPool(tmp_path / "cache").up([_model(tmp_path)])


# -- the command line ---------------------------------------------------------------------


def _command(pool: LocalPool, name: str, **options: object) -> list[str]:
    defaults: dict[str, object] = {"slots": 3, "threads": 1, "n_ctx": 2048, "draft_path": None}
    return pool._command(name, Path("/m.gguf"), 9000, **{**defaults, **options})  # type: ignore[arg-type]


def _option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_the_command_line_gives_slots_context_threads_and_the_jinja_template(
    tmp_path: Path,
) -> None:
    pool = LocalPool(tmp_path, server_binary=Path("/opt/llama-server"))
    command = _command(pool, "qwen2.5-coder-0.5b", slots=4, threads=2)
    assert command[0] == "/opt/llama-server"
    assert _option(command, "--alias") == "qwen2.5-coder-0.5b"
    assert _option(command, "--host") == "127.0.0.1"
    assert _option(command, "--port") == "9000"
    assert _option(command, "--parallel") == "4"
    assert _option(command, "--ctx-size") == str(4 * 2048)  # n_ctx per slot
    assert _option(command, "--threads") == "2"
    assert _option(command, "--threads-batch") == "2"
    assert "--jinja" in command
    assert _option(command, "--repeat-penalty") == "1.1"  # llama-cpp-python's sampling
    assert "--chat-template" not in command
    assert "--spec-draft-model" not in command


def test_gemma_gets_a_builtin_chat_template(tmp_path: Path) -> None:
    command = _command(LocalPool(tmp_path, server_binary=Path("/x")), "gemma3-270m")
    assert _option(command, "--chat-template") == "gemma"
    assert command.index("--no-jinja") < command.index("--chat-template")
    assert "--jinja" not in command


def test_a_draft_model_decodes_speculatively(tmp_path: Path) -> None:
    command = _command(
        LocalPool(tmp_path, server_binary=Path("/x")),
        "qwen2.5-coder-1.5b",
        slots=2,
        threads=2,
        draft_path=Path("/d.gguf"),
    )
    assert _option(command, "--spec-type") == "draft-simple"
    assert _option(command, "--spec-draft-model") == "/d.gguf"
    assert _option(command, "--spec-draft-threads") == "2"
    assert _option(command, "--spec-draft-n-max") == str(local_pool.DRAFT_MAX)


def test_threads_are_split_so_the_servers_never_oversubscribe_the_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_pool, "_cpu_count", lambda: 2)
    pool = LocalPool(tmp_path)
    specs = [ServerSpec(m) for m in ("smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b")]
    assert {p.threads for p in pool._plans(specs, None, None).values()} == {1}
    assert {p.threads for p in pool._plans(specs[:2], None, None).values()} == {1}
    [alone] = pool._plans(specs[:1], None, None).values()
    assert alone.threads == 2
    assert alone.slots == local_pool.DEFAULT_SLOTS
    [given] = pool._plans([ServerSpec("smollm2-135m", slots=6, threads=3)], 2, 1).values()
    assert (given.slots, given.threads) == (6, 3)  # the spec wins over the call's defaults
    with pytest.raises(ValueError, match="slots must be >= 1"):
        pool._plans(specs, 0, None)


# -- starting -------------------------------------------------------------------------------


def test_a_server_that_exits_at_start_reports_its_log(
    tmp_path: Path, fake_binary: Callable[[str], Path]
) -> None:
    binary = fake_binary(
        "print('loading', args['--alias'], 'slots', args['--parallel'])\n"
        "sys.exit('llama_model_load: error loading model: bad magic')\n"
    )
    pool = LocalPool(tmp_path / "cache", server_binary=binary)
    with pytest.raises(ServerError) as raised:
        pool.up([_model(tmp_path)], timeout=30, slots=2)
    message = str(raised.value)
    assert "exited with code 1" in message
    assert "loading tiny slots 2" in message
    assert message.endswith("bad magic")
    assert pool.status() == []


def test_a_server_that_never_answers_is_stopped(
    tmp_path: Path, fake_binary: Callable[[str], Path]
) -> None:
    binary = fake_binary("import time\nprint('stuck', flush=True)\ntime.sleep(120)\n")
    pool = LocalPool(tmp_path / "cache", server_binary=binary)
    with pytest.raises(ServerError, match=r"did not answer .* within 1 s \(stopped it\)"):
        pool.up([_model(tmp_path)], timeout=1.0, threads=3)
    assert pool._children == {}
    assert pool.status() == []


def test_the_pid_is_recorded_before_the_server_is_healthy(
    tmp_path: Path, fake_binary: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = fake_binary("import time\ntime.sleep(120)\n")
    pool = LocalPool(tmp_path / "cache", server_binary=binary)
    seen: list[dict[str, ServerInfo]] = []

    def probe(info: ServerInfo, timeout: float = 2.0) -> bool:
        seen.append(pool._read_state())
        return True

    monkeypatch.setattr(local_pool, "_probe", probe)
    [info] = pool.up([_model(tmp_path)], timeout=30)
    assert seen[0] == {"tiny": info}  # on disk before the first health probe
    assert info.create_time == pytest.approx(_started(info.pid))
    assert pool.down() == ["tiny"]


def test_an_interrupt_while_a_server_starts_stops_it(
    tmp_path: Path, fake_binary: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = fake_binary("import time\nprint('loading', flush=True)\ntime.sleep(120)\n")
    pool = LocalPool(tmp_path / "cache", server_binary=binary)
    started: list[int] = []

    def interrupted(info: ServerInfo, timeout: float = 2.0) -> bool:
        started.append(info.pid)
        raise KeyboardInterrupt  # Ctrl-C while the model loads

    monkeypatch.setattr(local_pool, "_probe", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pool.up([_model(tmp_path)], timeout=30)
    assert len(started) == 1
    assert not psutil.pid_exists(started[0])  # the server process is gone
    assert pool._children == {}
    assert pool.status() == []


def test_an_interrupt_stops_the_servers_this_up_already_started(
    tmp_path: Path, fake_binary: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = fake_binary("import time\ntime.sleep(120)\n")
    pool = LocalPool(tmp_path / "cache", server_binary=binary)
    first, second = tmp_path / "first.gguf", tmp_path / "second.gguf"
    first.write_bytes(b"GGUF")
    second.write_bytes(b"GGUF")
    pids: list[int] = []

    def probe(info: ServerInfo, timeout: float = 2.0) -> bool:
        pids.append(info.pid)
        if info.model == "second":
            raise KeyboardInterrupt
        return True  # the first one is ready

    monkeypatch.setattr(local_pool, "_probe", probe)
    with pytest.raises(KeyboardInterrupt):
        pool.up([str(first), str(second)], timeout=30)
    assert len(pids) == 2
    assert not any(psutil.pid_exists(pid) for pid in pids)
    assert pool._read_state() == {}


UP_SCRIPT = """
import sys
from pathlib import Path
from avengers_graph.local import pool as local_pool
from avengers_graph.local.pool import LocalPool
local_pool._probe = lambda info, timeout=2.0: False  # never healthy: up() keeps waiting
local_pool._free_port = lambda host: 1
LocalPool(Path(sys.argv[1]), server_binary=Path(sys.argv[2])).up([sys.argv[3]], timeout=300)
"""


def _launcher(
    spawn: Spawn, cache: Path, binary: Path, model: str
) -> tuple[subprocess.Popen[bytes], ServerInfo]:
    """``up()`` in another process, once its (never healthy) server is recorded."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    launcher = spawn(sys.executable, "-c", UP_SCRIPT, str(cache), str(binary), model, env=env)
    deadline = time.monotonic() + 60
    while not (servers := LocalPool(cache)._read_state()):
        assert launcher.poll() is None, "the launcher exited"
        if time.monotonic() > deadline:  # a hang guard, not a speed check
            pytest.fail("the server was never recorded")
        time.sleep(0.05)
    [info] = servers.values()
    return launcher, info


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_during_up_stops_what_it_started(
    tmp_path: Path, spawn: Spawn, fake_binary: Callable[[str], Path], signum: int
) -> None:
    binary = fake_binary("import time\ntime.sleep(120)\n")
    cache = tmp_path / "cache"
    launcher, info = _launcher(spawn, cache, binary, _model(tmp_path))
    assert psutil.pid_exists(info.pid)
    launcher.send_signal(signum)
    code = launcher.wait(timeout=60)
    # the signal takes its usual effect once the servers are stopped (Python ends an
    # uncaught KeyboardInterrupt by SIGINT too)
    assert code == -signum
    assert _gone(info.pid)
    assert LocalPool(cache)._read_state() == {}


def test_a_killed_launcher_leaves_a_server_down_can_stop(
    tmp_path: Path, spawn: Spawn, fake_binary: Callable[[str], Path]
) -> None:
    binary = fake_binary("import time\ntime.sleep(120)\n")
    cache = tmp_path / "cache"
    launcher, info = _launcher(spawn, cache, binary, _model(tmp_path))
    launcher.kill()  # SIGKILL: no cleanup can run
    launcher.wait(timeout=30)
    pool = LocalPool(cache)
    assert set(pool.servers()) == {"tiny"}
    assert pool.down() == ["tiny"]
    assert _gone(info.pid)


def test_the_environment_cannot_reconfigure_the_server(
    tmp_path: Path, fake_binary: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = fake_binary("import os\nprint(sorted(os.environ))\nsys.exit(3)\n")
    hostile = {
        "LLAMA_ARG_PORT": "1",
        "LLAMA_ARG_HOST": "0.0.0.0",  # noqa: S104 - what must not reach the server
        "LLAMA_ARG_MODEL": "/elsewhere.gguf",
        "LLAMA_API_KEY": "k",
        "API_KEY": "k",
        "HOST": "0.0.0.0",  # noqa: S104
        "PORT": "1",
        "HTTP_PROXY": "http://proxy:1",
        "OMP_NUM_THREADS": "64",
    }
    for key, value in hostile.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    pool = LocalPool(tmp_path / "cache", server_binary=binary)
    with pytest.raises(ServerError, match=r"exited with code 3") as raised:
        pool.up([_model(tmp_path)], timeout=30)
    seen = set(json.loads(str(raised.value).splitlines()[-1].replace("'", '"')))
    assert not seen & set(hostile)
    assert {"PATH", "LC_ALL"} <= seen


# -- clients ----------------------------------------------------------------------------


# langchain-openai probes which socket options the platform supports when it builds
# its HTTP client (no connection); pytest-socket refuses the probe and warns.
@pytest.mark.filterwarnings("ignore:A test tried to use socket.socket:UserWarning")
def test_experts_point_at_the_running_servers_and_respect_their_slots(
    tmp_path: Path, spawn: Spawn
) -> None:
    from langchain_openai import ChatOpenAI

    pool = LocalPool(tmp_path)
    names = ["smollm2-135m", "qwen2.5-coder-0.5b"]
    pool._write_state(
        {
            name: _info(name, _sleeper(spawn).pid, 8555 + i, slots=2 + i)
            for i, name in enumerate(names)
        }
    )
    experts = pool.experts(max_tokens=32, timeout=12.0)
    assert list(experts) == sorted(names)
    expert = experts["smollm2-135m"]
    assert isinstance(expert, ChatOpenAI)
    assert expert.model_name == "smollm2-135m"
    assert expert.openai_api_base == "http://127.0.0.1:8555/v1"
    assert expert.max_tokens == 32
    assert expert.request_timeout == 12.0
    assert expert.max_retries == 1
    assert expert.max_concurrent_requests == 2  # type: ignore[attr-defined]
    assert experts["qwen2.5-coder-0.5b"].max_concurrent_requests == 3  # type: ignore[attr-defined]
    # the server parses <tool_call> JSON; the Qwen models' bare JSON is parsed client-side
    assert experts["qwen2.5-coder-0.5b"].tool_call_parser == "hermes"  # type: ignore[attr-defined]
    assert experts["smollm2-135m"].tool_call_parser is None  # type: ignore[attr-defined]
    with pytest.raises(ServerError, match=r"No running server for gemma3-270m"):
        pool.experts(["gemma3-270m"])


# -- servers held by several processes ----------------------------------------------


@pytest.fixture
def fake_start(
    tmp_path: Path, spawn: Spawn, monkeypatch: pytest.MonkeyPatch
) -> Callable[[str], subprocess.Popen[bytes]]:
    """``LocalPool._start`` spawns a sleeping process (``ServerError`` for ``broken``).

    Returns the fake server process of a name, once started.
    """
    processes: dict[str, subprocess.Popen[bytes]] = {}
    monkeypatch.setattr(local_pool, "ensure_model", lambda name, cache: cache / f"{name}.gguf")

    def start(
        pool: LocalPool,
        name: str,
        plan: object,
        files: object,
        port: int | None,
        timeout: float,
        record: Callable[[ServerInfo | None], None],
    ) -> ServerInfo:
        if name == "broken":
            raise ServerError(f"{name} exited while starting")
        processes[name] = _sleeper(spawn)
        info = _info(name, processes[name].pid)
        record(info)
        return info

    monkeypatch.setattr(LocalPool, "_start", start)
    return processes.__getitem__


def _holder(process: subprocess.Popen[bytes]) -> str:
    key = local_pool._process_key(process.pid)
    assert key is not None
    return key


def _hold_as(pool: LocalPool, model: str, holder: subprocess.Popen[bytes]) -> None:
    """What another process's ``hold()`` records."""
    pool._up([model], slots=None, threads=None, ports=None, timeout=1, holder=_holder(holder))


def test_a_held_server_outlives_its_first_holder_and_stops_with_the_last(
    tmp_path: Path, spawn: Spawn, fake_start: Callable[[str], subprocess.Popen[bytes]]
) -> None:
    pool = LocalPool(tmp_path)
    other = spawn("sleep", "60")  # another process on the same cache folder
    with pool.hold(["smollm2-135m"]) as [info]:
        server = fake_start("smollm2-135m")
        assert info.pid == server.pid
        assert info.transient
        assert info.holders == (local_pool._process_key(os.getpid()),)
        _hold_as(pool, "smollm2-135m", other)
    assert server.poll() is None  # we let go, the other still holds it
    assert pool.servers()["smollm2-135m"].holders == (_holder(other),)

    other.kill()  # dies without letting go
    other.wait(timeout=10)
    with pool.hold(["smollm2-135m"]) as [again]:
        assert again.pid == server.pid  # shared, not restarted
    assert server.wait(timeout=15) is not None  # last live holder gone: stopped
    assert pool._read_state() == {}


def test_a_killed_holders_servers_stop_with_the_next_hold_of_any_model(
    tmp_path: Path, spawn: Spawn, fake_start: Callable[[str], subprocess.Popen[bytes]]
) -> None:
    pool = LocalPool(tmp_path)
    crashed = spawn("sleep", "60")
    survivor = spawn("sleep", "60")
    _hold_as(pool, "smollm2-135m", crashed)
    orphan = fake_start("smollm2-135m")
    _hold_as(pool, "gemma3-270m", crashed)
    _hold_as(pool, "gemma3-270m", survivor)
    shared = fake_start("gemma3-270m")
    [kept] = pool.up(["qwen2.5-coder-0.5b"])  # `local up`: runs until `local down`
    crashed.kill()  # dies holding both, without letting go
    crashed.wait(timeout=10)
    assert orphan.poll() is None  # nothing has noticed yet

    with pool.hold(["qwen2.5-coder-0.5b"]) as [held]:
        assert held.pid == kept.pid
        assert orphan.wait(timeout=15) is not None  # held by the dead process alone
        assert shared.poll() is None  # the survivor still holds it
        assert pool.servers()["gemma3-270m"].holders == (_holder(survivor),)
    assert set(pool.servers()) == {"gemma3-270m", "qwen2.5-coder-0.5b"}
    assert pool.down() == ["gemma3-270m", "qwen2.5-coder-0.5b"]


def test_the_same_process_may_hold_a_server_twice(
    tmp_path: Path, fake_start: Callable[[str], subprocess.Popen[bytes]]
) -> None:
    pool = LocalPool(tmp_path)
    with pool.hold(["smollm2-135m"]):
        with pool.hold(["smollm2-135m"]) as [inner]:
            assert len(inner.holders) == 2
        server = fake_start("smollm2-135m")
        assert server.poll() is None
    assert server.wait(timeout=15) is not None
    assert pool.status() == []


def test_up_makes_a_held_server_run_until_down(
    tmp_path: Path, fake_start: Callable[[str], subprocess.Popen[bytes]]
) -> None:
    pool = LocalPool(tmp_path)
    with pool.hold(["smollm2-135m"]):
        [kept] = pool.up(["smollm2-135m"])
        assert not kept.transient
    server = fake_start("smollm2-135m")
    assert server.poll() is None
    assert pool.servers()["smollm2-135m"].holders == ()
    assert pool.down() == ["smollm2-135m"]
    assert server.wait(timeout=15) is not None


def test_a_server_started_by_up_survives_its_holders(
    tmp_path: Path, fake_start: Callable[[str], subprocess.Popen[bytes]]
) -> None:
    pool = LocalPool(tmp_path)
    [info] = pool.up(["smollm2-135m"])
    with pool.hold(["smollm2-135m"]) as [held]:
        assert held.pid == info.pid
        assert not held.transient
    assert set(pool.servers()) == {"smollm2-135m"}
    assert pool.down() == ["smollm2-135m"]


def test_a_failed_start_lets_go_of_the_servers_already_held(
    tmp_path: Path, fake_start: Callable[[str], subprocess.Popen[bytes]]
) -> None:
    pool = LocalPool(tmp_path)
    entered = []
    with (
        pytest.raises(ServerError, match="broken exited while starting"),
        pool.hold(["smollm2-135m", "broken"]),
    ):
        entered.append(True)
    assert entered == []
    server = fake_start("smollm2-135m")
    assert server.wait(timeout=15) is not None
    assert pool._read_state() == {}


def test_a_holder_key_names_one_process_not_a_pid(spawn: Spawn) -> None:
    me = local_pool._process_key(os.getpid())
    assert me is not None
    assert me.startswith(f"{os.getpid()}:")
    assert local_pool._holder_alive(me)
    pid, _, started = me.partition(":")
    assert not local_pool._holder_alive(f"{pid}:{float(started) + 1:.2f}")  # reused pid
    gone = spawn("true")
    gone.wait(timeout=10)
    assert local_pool._process_key(gone.pid) is None
    assert not local_pool._holder_alive("not-a-pid:1")
