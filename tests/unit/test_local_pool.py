"""LocalPool without servers: the state file, ownership checks, start failures, clients."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from avengers_graph import local_pool
from avengers_graph.errors import MissingExtraError
from avengers_graph.local_pool import LocalPool, ServerError, ServerInfo

Spawn = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start harmless long-lived processes; kill the survivors after the test."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(  # noqa: S603 - fixed test commands
            list(args), stdin=subprocess.DEVNULL, start_new_session=True
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def _info(name: str, pid: int, port: int = 8123) -> ServerInfo:
    return ServerInfo(
        model=name,
        port=port,
        pid=pid,
        host="127.0.0.1",
        model_path=f"/models/{name}.gguf",
        started_at="2026-01-01T00:00:00+00:00",
    )


def _fake_server(pool: LocalPool, spawn: Spawn, name: str) -> subprocess.Popen[bytes]:
    """A sleeping process whose command line looks like the pool's server of ``name``."""
    process = spawn(
        sys.executable,
        "-c",
        "import time; time.sleep(120)",
        "-m",
        "llama_cpp.server",
        "--config_file",
        str(pool.config_path(name)),
    )
    # until exec, /proc shows the parent's command line: wait for the child's own
    cmdline = Path(f"/proc/{process.pid}/cmdline")
    deadline = time.monotonic() + 30
    while str(pool.config_path(name)).encode() not in cmdline.read_bytes():
        if time.monotonic() > deadline:
            pytest.fail(f"the fake server {name} did not start")
        time.sleep(0.01)
    return process


def test_state_file_round_trip(tmp_path: Path) -> None:
    pool = LocalPool(tmp_path)
    servers = {"b-model": _info("b-model", 12, 9001), "a-model": _info("a-model", 34, 9002)}
    pool._write_state(servers)
    assert pool._read_state() == servers
    record = json.loads((tmp_path / "servers.json").read_text())
    assert record["version"] == 1
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
        "config_path": str(tmp_path / "servers" / "a-model.json"),
        "log_path": str(tmp_path / "logs" / "a-model.log"),
    }
    assert servers["a-model"].base_url == "http://127.0.0.1:9002/v1"
    held = {"a-model": replace(servers["a-model"], transient=True, holders=("12:345", "67:8"))}
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


def test_down_never_kills_a_process_that_is_not_our_server(tmp_path: Path, spawn: Spawn) -> None:
    sleeper = spawn("sleep", "60")
    pool = LocalPool(tmp_path)
    pool._write_state({"smollm2-135m": _info("smollm2-135m", sleeper.pid)})
    assert pool.status() == [(_info("smollm2-135m", sleeper.pid), "dead")]
    assert pool.servers() == {}
    assert pool.down() == []
    assert sleeper.poll() is None  # still running
    assert pool._read_state() == {}  # the stale entry is forgotten


def test_down_stops_our_server_and_only_the_ones_named(
    tmp_path: Path, spawn: Spawn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_pool, "_probe", lambda info, timeout=2.0: False)
    pool = LocalPool(tmp_path)
    first = _fake_server(pool, spawn, "first")
    second = _fake_server(pool, spawn, "second")
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


def test_a_server_of_another_config_is_not_ours(tmp_path: Path, spawn: Spawn) -> None:
    other = LocalPool(tmp_path / "other")
    process = _fake_server(other, spawn, "smollm2-135m")
    pool = LocalPool(tmp_path / "mine")
    pool._write_state({"smollm2-135m": _info("smollm2-135m", process.pid)})
    assert pool.down() == []
    assert process.poll() is None


def test_a_recorded_running_server_makes_up_a_no_op(
    tmp_path: Path, spawn: Spawn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_pool, "_require_server", lambda: None)

    def no_start(*args: object, **kwargs: object) -> ServerInfo:
        raise AssertionError("started a second server")

    monkeypatch.setattr(LocalPool, "_start", no_start)
    pool = LocalPool(tmp_path)
    process = _fake_server(pool, spawn, "smollm2-135m")
    info = _info("smollm2-135m", process.pid)
    pool._write_state({"smollm2-135m": info})
    assert pool.up(["smollm2-135m", "smollm2-135m"]) == [info]


def test_up_without_llama_cpp_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        local_pool, "find_spec", lambda name: None if name == "llama_cpp" else object()
    )
    with pytest.raises(MissingExtraError, match=r"pip install 'avengers-graph\[local\]'"):
        LocalPool(tmp_path).up(["smollm2-135m"])


@pytest.fixture
def fake_server_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Replace ``llama_cpp.server`` by a module whose body is given; no sockets needed."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setattr(local_pool, "_SERVER_MODULE", "avengers_fake_server")
    monkeypatch.setattr(local_pool, "_require_server", lambda: None)
    monkeypatch.setattr(local_pool, "_free_port", lambda host: 1)
    monkeypatch.setattr(local_pool, "_probe", lambda info, timeout=2.0: False)

    def write(body: str) -> None:
        (site / "avengers_fake_server.py").write_text(body)

    return write


def test_a_server_that_exits_at_start_reports_its_log(
    tmp_path: Path, fake_server_module: Callable[[str], None]
) -> None:
    fake_server_module(
        "import json, sys\n"
        "config = json.load(open(sys.argv[2]))\n"
        "print('loading', config['models'][0]['model_alias'])\n"
        "sys.exit('llama_model_load: error loading model: bad magic')\n"
    )
    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"GGUF")
    pool = LocalPool(tmp_path / "cache")
    with pytest.raises(ServerError) as raised:
        pool.up([str(model)], timeout=30)
    message = str(raised.value)
    assert "exited with code 1" in message
    assert "loading tiny" in message
    assert message.endswith("bad magic")
    assert pool.status() == []
    config = json.loads(pool.config_path("tiny").read_text())
    assert config == {
        "host": "127.0.0.1",
        "port": 1,
        "interrupt_requests": False,
        "models": [
            {
                "model": str(model.resolve()),
                "model_alias": "tiny",
                "n_ctx": 2048,
                "n_threads": config["models"][0]["n_threads"],
                "n_threads_batch": config["models"][0]["n_threads"],
                "logits_all": False,
                "verbose": False,
            }
        ],
    }
    assert config["models"][0]["n_threads"] >= 1


def test_a_server_that_never_answers_is_stopped(
    tmp_path: Path, fake_server_module: Callable[[str], None]
) -> None:
    fake_server_module("import time\nprint('stuck', flush=True)\ntime.sleep(120)\n")
    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"GGUF")
    pool = LocalPool(tmp_path / "cache")
    with pytest.raises(ServerError, match=r"did not answer .* within 1 s \(stopped it\)"):
        pool.up([str(model)], timeout=1.0, threads=3)
    assert pool._children == {}
    assert json.loads(pool.config_path("tiny").read_text())["models"][0]["n_threads"] == 3
    assert pool.status() == []


def test_an_interrupt_while_a_server_starts_stops_it(
    tmp_path: Path, fake_server_module: Callable[[str], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_server_module("import time\nprint('loading', flush=True)\ntime.sleep(120)\n")
    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"GGUF")
    pool = LocalPool(tmp_path / "cache")
    started: list[int] = []

    def interrupted(info: ServerInfo, timeout: float = 2.0) -> bool:
        started.append(info.pid)
        raise KeyboardInterrupt  # Ctrl-C while the model loads

    monkeypatch.setattr(local_pool, "_probe", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pool.up([str(model)], timeout=30)
    assert len(started) == 1
    assert local_pool._proc_cmdline(started[0]) is None  # the server process is gone
    assert pool._children == {}
    assert pool.status() == []


def test_the_environment_cannot_override_the_config(
    tmp_path: Path, fake_server_module: Callable[[str], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_server_module(
        "import os, sys\n"
        "print(sorted(k for k in ('CONFIG_FILE', 'HOST', 'PORT') if k in os.environ))\n"
        "sys.exit(3)\n"
    )
    for key in ("CONFIG_FILE", "HOST", "PORT"):
        monkeypatch.setenv(key, "elsewhere")
    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"GGUF")
    with pytest.raises(ServerError, match=r"exited with code 3") as raised:
        LocalPool(tmp_path / "cache").up([str(model)], timeout=30)
    assert str(raised.value).endswith("[]")


def test_gemma_gets_its_chat_format(tmp_path: Path) -> None:
    config = LocalPool(tmp_path)._server_config("gemma3-270m", tmp_path / "g.gguf", 9000, 1)
    assert config["models"][0]["chat_format"] == "gemma"
    config = LocalPool(tmp_path)._server_config("smollm2-135m", tmp_path / "s.gguf", 9000, 1)
    assert "chat_format" not in config["models"][0]


# langchain-openai probes which socket options the platform supports when it builds
# its HTTP client (no connection); pytest-socket refuses the probe and warns.
@pytest.mark.filterwarnings("ignore:A test tried to use socket.socket:UserWarning")
def test_experts_point_at_the_running_servers(tmp_path: Path, spawn: Spawn) -> None:
    from langchain_openai import ChatOpenAI

    pool = LocalPool(tmp_path)
    process = _fake_server(pool, spawn, "smollm2-135m")
    pool._write_state({"smollm2-135m": _info("smollm2-135m", process.pid, 8555)})
    experts = pool.experts(max_tokens=32, timeout=12.0)
    assert list(experts) == ["smollm2-135m"]
    expert = experts["smollm2-135m"]
    assert isinstance(expert, ChatOpenAI)
    assert expert.model_name == "smollm2-135m"
    assert expert.openai_api_base == "http://127.0.0.1:8555/v1"
    assert expert.max_tokens == 32
    assert expert.request_timeout == 12.0
    assert expert.max_retries == 1
    with pytest.raises(ServerError, match=r"No running server for gemma3-270m"):
        pool.experts(["gemma3-270m"])


@pytest.mark.filterwarnings("ignore:A test tried to use socket.socket:UserWarning")
def test_qwen_experts_parse_tool_calls_and_smollm2_does_not(tmp_path: Path, spawn: Spawn) -> None:
    pool = LocalPool(tmp_path)
    names = ["smollm2-135m", "qwen2.5-coder-0.5b"]
    processes = {name: _fake_server(pool, spawn, name) for name in names}
    pool._write_state(
        {name: _info(name, processes[name].pid, 8555 + i) for i, name in enumerate(names)}
    )
    experts = pool.experts()
    assert experts["qwen2.5-coder-0.5b"].tool_call_parser == "hermes"  # type: ignore[attr-defined]
    assert experts["smollm2-135m"].tool_call_parser is None  # type: ignore[attr-defined]


# -- servers held by several processes ----------------------------------------------


@pytest.fixture
def fake_start(
    tmp_path: Path, spawn: Spawn, monkeypatch: pytest.MonkeyPatch
) -> Callable[[str], subprocess.Popen[bytes]]:
    """``LocalPool._start`` spawns a fake server (``ServerError`` for names in ``failing``).

    Returns the fake server process of a name, once started.
    """
    processes: dict[str, subprocess.Popen[bytes]] = {}
    failing = {"broken"}
    monkeypatch.setattr(local_pool, "_require_server", lambda: None)
    monkeypatch.setattr(local_pool, "ensure_model", lambda name, cache: cache / f"{name}.gguf")

    def start(
        pool: LocalPool, name: str, path: Path, port: int | None, threads: int, timeout: float
    ) -> ServerInfo:
        if name in failing:
            raise ServerError(f"{name} exited while starting")
        processes[name] = _fake_server(pool, spawn, name)
        return _info(name, processes[name].pid)

    monkeypatch.setattr(LocalPool, "_start", start)
    return processes.__getitem__


def _holder(process: subprocess.Popen[bytes]) -> str:
    key = local_pool._process_key(process.pid)
    assert key is not None
    return key


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
        # the other process holds it too (what its own hold() records)
        pool._up(["smollm2-135m"], threads=None, ports=None, timeout=1, holder=_holder(other))
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

    def hold(model: str, holder: subprocess.Popen[bytes]) -> None:  # what its hold() records
        pool._up([model], threads=None, ports=None, timeout=1, holder=_holder(holder))

    hold("smollm2-135m", crashed)
    orphan = fake_start("smollm2-135m")
    hold("gemma3-270m", crashed)
    hold("gemma3-270m", survivor)
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
    pid, _, ticks = me.partition(":")
    assert not local_pool._holder_alive(f"{pid}:{int(ticks) + 1}")  # the pid, reused later
    gone = spawn("true")
    gone.wait(timeout=10)
    assert local_pool._process_key(gone.pid) is None
    assert not local_pool._holder_alive("not-a-pid:1")
