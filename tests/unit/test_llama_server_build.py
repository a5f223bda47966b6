"""The llama-server build and its checks, with fake build steps (no compiler, no network)."""

from __future__ import annotations

import io
import json
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from avengers_graph.local import server as llama_server
from avengers_graph.local.server import (
    LLAMA_CPP_COMMIT,
    LLAMA_CPP_PYTHON,
    ServerBinaryError,
    ToolchainError,
    build_server,
    find_server,
    install_dir,
    server_binary,
)

VERSION = f"version: 0.5.0-dev (build 1, commit {LLAMA_CPP_COMMIT})"


def _fake_binary(path: Path, version: str = VERSION) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{sys.executable}\nimport sys\nprint({version!r}, file=sys.stderr)\n")
    path.chmod(0o755)
    return path


def _installed(root: Path, version: str = VERSION) -> Path:
    """A build folder as build_server leaves it, with a fake binary."""
    folder = install_dir(root)
    binary = _fake_binary(folder / "llama-server", version)
    record = {
        "llama_cpp_python": LLAMA_CPP_PYTHON,
        "size": binary.stat().st_size,
        "sha256": llama_server._hash_file(binary),
    }
    (folder / "build.json").write_text(json.dumps(record))
    return binary


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A cache folder of our own and a user-wide one, both empty."""
    return {"AVENGERS_CACHE_DIR": str(tmp_path / "own"), "XDG_CACHE_HOME": str(tmp_path / "xdg")}


@pytest.fixture(autouse=True)
def _fresh_checks() -> None:
    llama_server._verified.clear()


def test_nothing_built_is_none_and_an_error_that_says_how_to_build(env: dict[str, str]) -> None:
    assert find_server(env) is None
    with pytest.raises(ServerBinaryError, match=r"`avengers local build`"):
        server_binary(env)


def test_the_own_cache_comes_first_then_the_user_wide_build(
    tmp_path: Path, env: dict[str, str]
) -> None:
    user = _installed(tmp_path / "xdg" / "avengers-graph")
    assert find_server(env) == user  # a temporary cache folder costs no rebuild
    own = _installed(tmp_path / "own")
    assert find_server(env) == own


def test_a_changed_binary_is_refused(tmp_path: Path, env: dict[str, str]) -> None:
    binary = _installed(tmp_path / "own")
    assert server_binary(env) == binary
    with binary.open("a") as file:
        file.write("# tampered\n")
    with pytest.raises(ServerBinaryError, match=r"does not match its build record"):
        server_binary(env)


def test_a_binary_of_another_commit_is_refused(tmp_path: Path, env: dict[str, str]) -> None:
    _installed(tmp_path / "own", version="version: 0.5.0 (build 9, commit abcdef0)")
    with pytest.raises(
        ServerBinaryError, match=f"did not name llama.cpp commit {LLAMA_CPP_COMMIT}"
    ):
        server_binary(env)


def test_a_missing_toolchain_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(llama_server.shutil, "which", lambda name, path=None: None)
    with pytest.raises(ToolchainError, match=r"needs cmake, a C\+\+ compiler.*apt-get install"):
        build_server(tmp_path)
    assert not install_dir(tmp_path).exists()


def test_a_step_reports_its_progress_and_fails_with_its_log(tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    seen: list[tuple[int, int]] = []
    script = "print('[1/3] a'); print('[2/3] b'); print('[3/3] c')"
    llama_server._run(
        [sys.executable, "-c", script],
        log,
        timeout=60,
        what="step",
        progress=lambda *a: seen.append(a),
    )
    assert seen == [(1, 3), (2, 3), (3, 3)]
    with pytest.raises(ServerBinaryError, match=r"(?s)step failed \(exit code 2\).*boom"):
        llama_server._run(
            [sys.executable, "-c", "import sys; print('boom'); sys.exit(2)"],
            log,
            timeout=60,
            what="step",
        )


def test_a_step_that_hangs_is_stopped(tmp_path: Path) -> None:
    with pytest.raises(ServerBinaryError, match=r"took longer than 1 s"):
        llama_server._run(
            [sys.executable, "-c", "import time; time.sleep(60)"],
            tmp_path / "build.log",
            timeout=1,
            what="hang",
        )


def _sdist(path: Path) -> Path:
    """A tiny sdist: the vendored tree, its git folder, and a file outside both."""
    with tarfile.open(path, "w:gz") as archive:
        for name in (
            f"{llama_server._SOURCE_PREFIX}CMakeLists.txt",
            f"{llama_server._SOURCE_PREFIX}LICENSE",
            f"{llama_server._GIT_PREFIX}HEAD",
            f"llama_cpp_python-{LLAMA_CPP_PYTHON}/llama_cpp/llama.py",
        ):
            data = b"x\n"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_only_the_vendored_tree_is_unpacked(tmp_path: Path) -> None:
    source = llama_server._unpack(_sdist(tmp_path / "s.tar.gz"), tmp_path / "src")
    assert (source / "CMakeLists.txt").is_file()
    assert (tmp_path / "src" / llama_server._GIT_PREFIX / "HEAD").is_file()
    assert not (tmp_path / "src" / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "llama_cpp").exists()


@pytest.fixture
def fake_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[[Callable[[list[str]], None] | None], list[list[str]]]:
    """Download, configure and compile replaced: the compile step writes a fake binary."""
    monkeypatch.setattr(
        llama_server, "_toolchain", lambda: llama_server._Toolchain("cmake", "Ninja")
    )
    monkeypatch.setattr(
        llama_server, "_download_sdist", lambda folder, log: _sdist(folder / "s.tar.gz")
    )

    def install(on_compile: Callable[[list[str]], None] | None = None) -> list[list[str]]:
        commands: list[list[str]] = []

        def run(command: list[str], log: Path, **options: object) -> None:
            commands.append(command)
            if "--build" in command:
                if on_compile is not None:
                    on_compile(command)
                build = Path(command[command.index("--build") + 1])
                _fake_binary(build / "bin" / "llama-server")
                progress = options.get("progress")
                if callable(progress):
                    progress(206, 206)

        monkeypatch.setattr(llama_server, "_run", run)
        return commands

    return install


def test_a_build_lands_in_place_once_with_its_record(
    tmp_path: Path, fake_steps: Callable[..., list[list[str]]]
) -> None:
    commands = fake_steps()
    progress: list[tuple[int, int]] = []
    binary = build_server(tmp_path, progress=lambda *a: progress.append(a))
    assert binary == install_dir(tmp_path) / "llama-server"
    record = json.loads((install_dir(tmp_path) / "build.json").read_text())
    assert record["sha256"] == llama_server._hash_file(binary)
    assert record["llama_cpp_commit"] == LLAMA_CPP_COMMIT
    assert record["version"] == VERSION
    assert "-DGGML_NATIVE=OFF" in record["cmake_flags"]
    assert (install_dir(tmp_path) / "LICENSE").is_file()
    assert progress == [(206, 206)]
    configure, compile_ = commands
    assert "-DGGML_NATIVE=OFF" in configure
    assert compile_[compile_.index("--target") + 1] == "llama-server"
    assert list(install_dir(tmp_path).parent.glob(".build-*")) == []  # staging removed

    assert build_server(tmp_path) == binary  # built: nothing runs again
    assert len(commands) == 2


def test_a_killed_build_leaves_no_binary_and_the_next_one_cleans_up(
    tmp_path: Path, fake_steps: Callable[..., list[list[str]]]
) -> None:
    def killed(command: list[str]) -> None:
        raise KeyboardInterrupt  # the build is interrupted while compiling

    fake_steps(killed)
    with pytest.raises(KeyboardInterrupt):
        build_server(tmp_path)
    assert not install_dir(tmp_path).exists()
    assert (
        find_server({"AVENGERS_CACHE_DIR": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path)}) is None
    )

    leftover = install_dir(tmp_path).parent / ".build-killed"  # as a SIGKILL leaves it
    (leftover / "build" / "bin").mkdir(parents=True)
    fake_steps()
    binary = build_server(tmp_path)
    assert not leftover.exists()
    assert binary.is_file()


def test_a_damaged_build_is_replaced(
    tmp_path: Path, fake_steps: Callable[..., list[list[str]]]
) -> None:
    commands = fake_steps()
    binary = build_server(tmp_path)
    binary.write_text("damaged")
    llama_server._verified.clear()
    assert build_server(tmp_path) == binary
    assert len(commands) == 4  # built again
    assert llama_server._check(install_dir(tmp_path)) == binary


def test_a_wrong_sdist_is_refused_before_unpacking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def pip(command: list[str], log: Path, **options: object) -> None:
        folder = Path(command[command.index("-d") + 1])
        (folder / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz").write_bytes(b"not it")

    monkeypatch.setattr(llama_server, "_run", pip)
    with pytest.raises(ServerBinaryError, match=r"sha256 is not the pinned"):
        llama_server._download_sdist(tmp_path, tmp_path / "log")
