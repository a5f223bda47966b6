"""Tool-calling accuracy of the local pool: each expert alone against the ensemble's vote.

    python tools/bench_tool_calls.py [--samples 3] [--record docs/tool_calling_samples.jsonl]
        [--out docs/tool_calling.md] [--replay]

31 prompts (:data:`CASES`) with four tools bound: 14 that need one call, 9 that need
no call and 8 that need two independent calls at once. Each expected call is checked
semantically: the tool's name, and its arguments by meaning (the calculator's
expression must evaluate to the expected number, a conversion's value must be equal and
its units the same after normalising ``miles``/``mi``, a city matches without case...).
A reply is right when its set of calls matches the expected set exactly (no call
missing, none extra); a no-call case is right when the reply has no call.

Two steps, so the comparison is side by side on the same samples:

1. **Record** (skipped with ``--replay``): for each prompt, ChatAvengers over the pool
   of ``avengers_graph/data/tools_pool.yaml`` (the two Qwen2.5-Coder models served by
   llama.cpp, tool calls parsed client-side with ``tool_call_parser: hermes``) samples
   every expert ``--samples`` times; every sample (expert, seed, content, tool calls)
   is written to the record file as it comes. A killed run resumes: recorded prompts are
   not asked again.
2. **Score**, from the record alone: each expert's first sample (its lowest seed) is the
   single-expert answer; the vote is ChatAvengers run again over the recorded samples
   (experts that replay them, the same seeds, the same routing), so the vote is the
   library's own, on exactly the samples the single experts are scored on. The best
   single expert is the most accurate one on this set (chosen after the fact, which
   favours the baseline). "Rescued": the vote is right where the best single expert is
   wrong; "broken": the reverse.

Writes the tables to ``--out`` with the command, the settings and the machine.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import operator
import platform
import re
import sys
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool, tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict

from avengers_graph import ChatAvengers, ClusterStore
from avengers_graph.app.config import PoolConfig
from avengers_graph.app.embedded import bundled
from avengers_graph.app.settings import Settings
from avengers_graph.experts.openai_compatible import HERMES_STOP, ChatOpenAICompatible
from avengers_graph.experts.tool_parsers import (
    ToolCallParser,
    bound_tool_parameters,
    parse_message_tool_calls,
)

ROOT = Path(__file__).resolve().parents[1]
POOL = bundled("tools_pool.yaml")
SYSTEM_PROMPT = (
    "You are a helpful assistant with tools. Call a tool whenever the request needs one: "
    "calculator for arithmetic, convert_units for unit conversions, get_weather for the "
    "current weather of a city, get_exchange_rate for currency exchange rates. When the "
    "request needs several independent tool calls, make all of them at once. When no "
    "tool is needed, answer directly without calling any tool."
)
SEED = 0
TEMPERATURE = 0.7
MAX_TOKENS = 192
TIMEOUT = 1200.0
"""Seconds per expert call: accuracy is measured here, not speed, and a sample that
waits behind the others on a busy CPU must not be lost."""


# -- the tools (schemas only: the benchmark checks calls, it never runs them) ----------


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression, e.g. '234 * 17' or '(5 + 7) / 2'."""
    raise NotImplementedError


@tool
def convert_units(value: float, from_unit: str, to_unit: str) -> str:
    """Convert a value between units of length, mass or temperature (e.g. miles to km)."""
    raise NotImplementedError


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    raise NotImplementedError


@tool
def get_exchange_rate(from_currency: str, to_currency: str) -> str:
    """Get the exchange rate between two currencies, given as ISO codes like USD or EUR."""
    raise NotImplementedError


TOOLS: list[BaseTool] = [calculator, convert_units, get_weather, get_exchange_rate]


# -- semantic argument checks ------------------------------------------------------------

_BINARY: Mapping[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}


def evaluate(expression: str) -> float | None:
    """The value of an arithmetic expression (``ast``, never ``eval``), or ``None``."""

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return float(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 100:
                raise ValueError("exponent too large")
            return float(_BINARY[type(node.op)](left, right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            operand = value(node.operand)
            return -operand if isinstance(node.op, ast.USub) else operand
        raise ValueError("not arithmetic")

    text = expression.replace("^", "**").replace("\u00d7", "*").replace("\u00f7", "/")
    text = re.sub(r"(\d(?:\.\d+)?)\s*%\s*of\s*", r"\1/100*", text)  # "15% of 80"
    try:
        return value(ast.parse(text.strip(), mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, TypeError):
        return None


_UNITS = {
    "mi": {"mi", "mile", "miles"},
    "km": {"km", "kms", "kilometer", "kilometers", "kilometre", "kilometres"},
    "m": {"m", "meter", "meters", "metre", "metres"},
    "cm": {"cm", "centimeter", "centimeters", "centimetre", "centimetres"},
    "ft": {"ft", "foot", "feet"},
    "in": {"in", "inch", "inches"},
    "kg": {"kg", "kgs", "kilogram", "kilograms"},
    "lb": {"lb", "lbs", "pound", "pounds"},
    "c": {"c", "°c", "celsius", "degrees celsius", "centigrade"},
    "f": {"f", "°f", "fahrenheit", "degrees fahrenheit"},
}
_UNIT_OF = {alias: unit for unit, aliases in _UNITS.items() for alias in aliases}
_CURRENCIES = {
    "USD": {"usd", "dollar", "dollars", "us dollar", "us dollars", "u.s. dollar"},
    "EUR": {"eur", "euro", "euros"},
    "GBP": {"gbp", "pound", "pounds", "british pound", "british pounds", "pound sterling"},
    "JPY": {"jpy", "yen", "japanese yen"},
}
_CURRENCY_OF = {alias: code for code, aliases in _CURRENCIES.items() for alias in aliases}


def _norm(text: Any) -> str:
    return " ".join(str(text).strip().lower().split())


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.replace(",", ""))
        except ValueError:
            return None
    return None


def _close(a: float | None, b: float) -> bool:
    return a is not None and math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def _city(value: Any) -> str:
    return _norm(value).split(",")[0]


@dataclass(frozen=True)
class Expected:
    """One expected call: the tool and a check of its arguments."""

    name: str
    check: Callable[[Mapping[str, Any]], bool]
    shown: str

    def matches(self, call: Mapping[str, Any]) -> bool:
        """Whether ``call`` is this call (same tool, equivalent arguments)."""
        args = call.get("args") or {}
        return call.get("name") == self.name and isinstance(args, dict) and self.check(args)


def calc(value: float) -> Expected:
    """A calculator call whose expression evaluates to ``value``."""
    return Expected(
        "calculator", lambda a: _close(evaluate(str(a.get("expression", ""))), value), f"={value:g}"
    )


def convert(value: float, source: str, target: str) -> Expected:
    """A conversion of ``value`` from ``source`` to ``target`` (normalised unit names)."""
    return Expected(
        "convert_units",
        lambda a: (
            _close(_number(a.get("value")), value)
            and _UNIT_OF.get(_norm(a.get("from_unit"))) == source
            and _UNIT_OF.get(_norm(a.get("to_unit"))) == target
        ),
        f"{value:g} {source}->{target}",
    )


def weather(city: str) -> Expected:
    """A weather lookup for ``city`` (case and a ", country" suffix ignored)."""
    return Expected("get_weather", lambda a: _city(a.get("city", "")) == city, city)


def rate(source: str, target: str) -> Expected:
    """An exchange-rate lookup from ``source`` to ``target`` (codes or names)."""
    return Expected(
        "get_exchange_rate",
        lambda a: (
            _CURRENCY_OF.get(_norm(a.get("from_currency"))) == source
            and _CURRENCY_OF.get(_norm(a.get("to_currency"))) == target
        ),
        f"{source}->{target}",
    )


@dataclass(frozen=True)
class Case:
    """A prompt and the calls it needs (none: answer without a tool)."""

    id: str
    prompt: str
    expected: tuple[Expected, ...] = ()

    @property
    def kind(self) -> str:
        """``no call``, ``one call`` or ``two calls``."""
        return ("no call", "one call", "two calls")[len(self.expected)]


CASES: tuple[Case, ...] = (
    # one call
    Case("calc-mul", "What is 234 * 17?", (calc(3978),)),
    Case("calc-paren", "Compute (125 + 375) / 4.", (calc(125),)),
    Case("calc-pow", "What is 2 to the power of 10?", (calc(1024),)),
    Case("calc-percent", "How much is 15% of 80?", (calc(12),)),
    Case("calc-sum", "What is 1234 + 5678 - 910?", (calc(6002),)),
    Case("conv-mi-km", "Convert 10 miles to kilometers.", (convert(10, "mi", "km"),)),
    Case("conv-kg-lb", "How many pounds is 5 kilograms?", (convert(5, "kg", "lb"),)),
    Case("conv-f-c", "Convert 100 degrees Fahrenheit to Celsius.", (convert(100, "f", "c"),)),
    Case("conv-m-ft", "How many feet are in 3 meters?", (convert(3, "m", "ft"),)),
    Case("conv-in-cm", "Convert 72 inches to centimeters.", (convert(72, "in", "cm"),)),
    Case("weather-paris", "What's the weather like in Paris right now?", (weather("paris"),)),
    Case("weather-tokyo", "Is it raining in Tokyo at the moment?", (weather("tokyo"),)),
    Case(
        "rate-usd-eur",
        "What is the current exchange rate from US dollars to euros?",
        (rate("USD", "EUR"),),
    ),
    Case(
        "rate-gbp-jpy",
        "How many Japanese yen do I get for one British pound today?",
        (rate("GBP", "JPY"),),
    ),
    # no call
    Case("none-greeting", "Hello! How are you today?"),
    Case("none-capital", "What is the capital of Italy?"),
    Case("none-haiku", "Write a haiku about autumn leaves."),
    Case("none-author", "Who wrote Pride and Prejudice?"),
    Case("none-translate", "Translate 'good morning' into French."),
    Case("none-acronym", "What does HTTP stand for?"),
    Case("none-thanks", "Thanks, that's all I needed!"),
    Case("none-code", "Write a Python function that reverses a string."),
    Case("none-definition", "In one sentence, what is photosynthesis?"),
    # two calls at once
    Case(
        "two-weather",
        "What's the weather in Berlin and in Madrid?",
        (weather("berlin"), weather("madrid")),
    ),
    Case("two-calc", "Compute 45 * 12 and also 999 / 3.", (calc(540), calc(333))),
    Case(
        "two-conv",
        "Convert 5 miles to kilometers and 20 kilograms to pounds.",
        (convert(5, "mi", "km"), convert(20, "kg", "lb")),
    ),
    Case(
        "two-calc-weather",
        "What is 17 * 23, and what's the weather in London?",
        (calc(391), weather("london")),
    ),
    Case(
        "two-rates",
        "Give me the exchange rates from USD to EUR and from USD to GBP.",
        (rate("USD", "EUR"), rate("USD", "GBP")),
    ),
    Case(
        "two-conv-weather",
        "Convert 30 degrees Celsius to Fahrenheit and tell me the weather in Rome.",
        (convert(30, "c", "f"), weather("rome")),
    ),
    Case("two-pow", "What are 2 ** 16 and 3 ** 7?", (calc(65536), calc(2187))),
    Case(
        "two-weather-rate",
        "What's the weather in New York, and what is the EUR to USD exchange rate?",
        (weather("new york"), rate("EUR", "USD")),
    ),
)


def is_right(case: Case, calls: Sequence[Mapping[str, Any]]) -> bool:
    """Whether ``calls`` are exactly the calls ``case`` needs (in any order)."""
    if len(calls) != len(case.expected):
        return False
    unmatched = list(calls)
    for expected in case.expected:
        match = next((call for call in unmatched if expected.matches(call)), None)
        if match is None:
            return False
        unmatched.remove(match)
    return True


# -- recording and replaying experts -----------------------------------------------------


def _question(messages: Sequence[BaseMessage]) -> str:
    return next(str(m.content) for m in reversed(messages) if isinstance(m, HumanMessage))


class _ToolBinding(BaseChatModel):
    """A chat model whose ``bind_tools`` binds the tools the way ``ChatOpenAI`` does."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    expert: str

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | dict[str, Any] | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        formatted = [convert_to_openai_tool(t) for t in tools]
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return self.bind(tools=formatted, **kwargs)

    @property
    def _llm_type(self) -> str:
        return "bench-tool-calls"


def as_answer(
    sample: Mapping[str, Any], tool_names: Collection[str], parser: ToolCallParser | None
) -> AIMessage:
    """The message an expert with ``parser`` gives for a recorded raw sample.

    What ``ChatOpenAICompatible`` does with the server's answer: calls the server
    parsed are kept, else the text is parsed (the library's own parser, so a replay
    scores the parser as it is now).
    """
    message = AIMessage(content=sample["raw_content"], tool_calls=sample["server_tool_calls"])
    return parse_message_tool_calls(message, parser, tool_names)


class Sink:
    """Where the recording experts put their samples (one object, shared, never copied)."""

    def __init__(self) -> None:
        self.samples: list[dict[str, Any]] = []


class Recording(_ToolBinding):
    """A real expert whose every raw answer is appended to ``sink`` with its seed."""

    inner: ChatOpenAICompatible
    sink: Sink

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        del run_manager
        tools = kwargs.pop("tools", None)
        # the raw text, from the request the parsing expert would send (its stop too)
        raw = self.inner.model_copy(update={"tool_call_parser": None})
        if tools and self.inner.tool_call_parser == "hermes":
            stop = [*(stop or []), *HERMES_STOP]
        started = time.perf_counter()
        message = (raw.bind_tools(tools) if tools else raw).invoke(messages, stop=stop, **kwargs)
        if not isinstance(message, AIMessage):
            raise TypeError(f"{self.expert} returned {type(message).__name__}")
        sample = {
            "expert": self.expert,
            "seed": kwargs.get("seed"),
            "raw_content": message.text,
            "server_tool_calls": [
                {"name": c["name"], "args": c["args"], "id": c["id"]} for c in message.tool_calls
            ],
            "seconds": round(time.perf_counter() - started, 2),
        }
        self.sink.samples.append(sample)
        answer = as_answer(sample, bound_tool_parameters(tools), self.inner.tool_call_parser)
        return ChatResult(generations=[ChatGeneration(message=answer)])


class Replay(_ToolBinding):
    """An expert that answers with the recorded sample of the same question and seed."""

    samples: Mapping[tuple[str, int], Mapping[str, Any]]
    parser: ToolCallParser | None

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        del stop, run_manager
        sample = self.samples[(_question(messages), int(kwargs["seed"]))]
        answer = as_answer(sample, bound_tool_parameters(kwargs.get("tools")), self.parser)
        return ChatResult(generations=[ChatGeneration(message=answer)])


# -- the record file -----------------------------------------------------------------------


def read_record(path: Path) -> dict[str, dict[str, Any]]:
    """Recorded prompts by case id (the last line of a case wins)."""
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return {row["case"]: row for row in rows}


def _llm_options(samples: int) -> dict[str, Any]:
    return {
        "seed": SEED,
        "samples": samples,
        "temperature": TEMPERATURE,
        "max_tokens": MAX_TOKENS,
    }


def _experts(pool: PoolConfig, urls: Mapping[str, str]) -> dict[str, ChatOpenAICompatible]:
    experts = pool.build_experts(urls)
    if not all(isinstance(e, ChatOpenAICompatible) for e in experts.values()):
        raise TypeError("the benchmark records OpenAI-compatible experts only")
    return {name: e for name, e in experts.items() if isinstance(e, ChatOpenAICompatible)}


def _parsers(pool: PoolConfig) -> dict[str, ToolCallParser | None]:
    return {expert.name: expert.resolved_tool_call_parser() for expert in pool.experts}


def calibrated_store(settings: Settings, pool: PoolConfig) -> ClusterStore:
    """The pool's store, calibrated on the bundled set from the recorded answers if empty.

    Every calibration answer of the pool is recorded (``local_answers.jsonl`` and
    ``tools_pool_answers.jsonl``), so no expert is called: experts whose server is not
    running get an address that cannot resolve (``.invalid``), and a missing answer
    fails loudly with a connection error instead of calling anything.
    """
    from avengers_graph.app.embedded import RECORDED_ANSWERS, local_urls, read_jsonl
    from avengers_graph.calibration import calibrate
    from avengers_graph.experts.cache import AnswerCache

    store = pool.build_store(settings)
    if not store.is_empty():
        return store
    cache = AnswerCache(settings.cache_dir / "answers.sqlite")
    for name in (RECORDED_ANSWERS, "tools_pool_answers.jsonl"):
        cache.import_jsonl(bundled(name))
    urls = dict.fromkeys(pool.local_models(), "http://recorded-answers-only.invalid/v1")
    urls |= local_urls(settings, pool)
    report = calibrate(
        pool.build_experts(urls),
        pool.embeddings.build(),
        read_jsonl(bundled("validation.jsonl")),
        store,
        cache=cache,
        **pool.calibration.as_kwargs(),
    )
    print(f"calibrated {store}: {report.calls} expert calls, {report.cached} recorded answers")
    return store


def record(path: Path, samples: int, threads: int | None) -> None:
    """Ask the real pool every prompt not recorded yet; append each to ``path``."""
    from avengers_graph.app.embedded import fetch_models, load, local_urls
    from avengers_graph.local.pool import LocalPool

    settings, pool = load(POOL)
    done = read_record(path)
    todo = [case for case in CASES if case.id not in done]
    print(f"{len(done)} prompts recorded in {path}, {len(todo)} to ask")
    if not todo:
        return
    local = pool.local_models()
    fetch_models(local, settings.cache_dir)
    servers = LocalPool(settings.cache_dir)
    started = [name for name in local if name not in servers.servers()]
    try:
        servers.up(local, threads=threads)
        store = calibrated_store(settings, pool)
        sink = Sink()
        experts = {
            name: Recording(expert=name, inner=expert, sink=sink)
            for name, expert in _experts(pool, local_urls(settings, pool)).items()
        }
        routing = {
            k: v for k, v in pool.routing.as_kwargs().items() if k not in _llm_options(samples)
        }
        routing["timeout"] = TIMEOUT
        llm = ChatAvengers(
            experts=experts,
            embeddings=pool.embeddings.build(),
            store=store,
            **routing,
            **_llm_options(samples),
        ).bind_tools(TOOLS)
        path.parent.mkdir(parents=True, exist_ok=True)
        for number, case in enumerate(todo, start=1):
            sink.samples.clear()
            started_at = time.perf_counter()
            answer = llm.invoke([SystemMessage(SYSTEM_PROMPT), HumanMessage(case.prompt)])
            row = {
                "case": case.id,
                "prompt": case.prompt,
                "samples": sorted(sink.samples, key=lambda s: (s["expert"], s["seed"])),
                "vote": {"content": answer.text, "tool_calls": answer.tool_calls},
                "failures": answer.response_metadata["avengers"]["failures"],
                "seconds": round(time.perf_counter() - started_at, 1),
            }
            if not row["samples"]:
                raise RuntimeError(f"{case.id}: no sample was recorded")
            with path.open("a", encoding="utf-8") as out:
                out.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
            print(f"[{number}/{len(todo)}] {case.id}: {row['seconds']} s", flush=True)
    finally:
        if started:
            servers.down(started)


# -- scoring ---------------------------------------------------------------------------------


@dataclass
class Scores:
    """Per-case correctness of every expert's first sample, of every sample and of the vote."""

    first: dict[str, dict[str, bool]] = field(default_factory=dict)
    """Expert -> case id -> whether its first sample (lowest seed) is right."""
    every: dict[str, list[bool]] = field(default_factory=dict)
    """Expert -> correctness of all its samples."""
    vote: dict[str, bool] = field(default_factory=dict)
    """Case id -> whether the replayed vote is right."""
    voted: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Case id -> the calls the replayed vote chose."""
    parsed: int = 0
    """Samples whose calls were parsed client-side from text."""
    calls: int = 0
    """Samples with at least one tool call."""
    server: int = 0
    """Samples whose calls the server parsed itself."""
    total: int = 0


def _replayed_vote(
    rows: Mapping[str, Mapping[str, Any]], samples: int
) -> Iterator[tuple[str, AIMessage]]:
    """The vote of ChatAvengers over the recorded samples of each prompt."""
    from avengers_graph.app.embedded import load

    settings, pool = load(POOL)
    store = calibrated_store(settings, pool)
    by_expert: dict[str, dict[tuple[str, int], Mapping[str, Any]]] = {}
    for row in rows.values():
        for sample in row["samples"]:
            by_expert.setdefault(sample["expert"], {})[(row["prompt"], int(sample["seed"]))] = (
                sample
            )
    parsers = _parsers(pool)
    # in the pool file's order, as when recording: it breaks ties between equal experts
    experts = {
        e.name: Replay(expert=e.name, samples=by_expert[e.name], parser=parsers[e.name])
        for e in pool.experts
        if e.name in by_expert
    }
    routing = {k: v for k, v in pool.routing.as_kwargs().items() if k not in _llm_options(samples)}
    routing.pop("timeout", None)
    llm = ChatAvengers(
        experts=experts,
        embeddings=pool.embeddings.build(),
        store=store,
        **routing,
        **_llm_options(samples),
    ).bind_tools(TOOLS)
    for case_id, row in rows.items():
        answer = llm.invoke([SystemMessage(SYSTEM_PROMPT), HumanMessage(row["prompt"])])
        yield case_id, answer


def score(rows: Mapping[str, Mapping[str, Any]], samples: int) -> Scores:
    """Score the recorded samples and the vote replayed over them."""
    from avengers_graph.app.embedded import load

    parsers = _parsers(load(POOL)[1])
    names = {t.name for t in TOOLS}
    cases = {case.id: case for case in CASES}
    scores = Scores()
    for case_id, row in rows.items():
        case = cases[case_id]
        seen: set[str] = set()
        for sample in sorted(row["samples"], key=lambda s: (s["expert"], s["seed"])):
            answer = as_answer(sample, names, parsers[sample["expert"]])
            right = is_right(case, answer.tool_calls)
            scores.every.setdefault(sample["expert"], []).append(right)
            if sample["expert"] not in seen:
                seen.add(sample["expert"])
                scores.first.setdefault(sample["expert"], {})[case_id] = right
            scores.total += 1
            scores.calls += bool(answer.tool_calls)
            scores.parsed += "tool_call_parser" in answer.response_metadata
            scores.server += bool(sample["server_tool_calls"])
    for case_id, answer in _replayed_vote(rows, samples):
        scores.vote[case_id] = is_right(cases[case_id], answer.tool_calls)
        scores.voted[case_id] = [{"name": c["name"], "args": c["args"]} for c in answer.tool_calls]
        recorded = rows[case_id]["vote"]["tool_calls"]
        if is_right(cases[case_id], recorded) != scores.vote[case_id]:
            print(f"note: {case_id}: the replayed vote differs from the recorded run's")
    return scores


def _pct(right: int, total: int) -> str:
    return f"{right}/{total} ({right / total:.0%})" if total else "-"


def report(scores: Scores, rows: Mapping[str, Mapping[str, Any]], args: argparse.Namespace) -> str:
    """The markdown report."""
    cases = [case for case in CASES if case.id in rows]
    kinds = ["one call", "no call", "two calls"]
    best = max(scores.first, key=lambda name: (sum(scores.first[name].values()), name))
    rescued = [c.id for c in cases if scores.vote[c.id] and not scores.first[best][c.id]]
    broken = [c.id for c in cases if not scores.vote[c.id] and scores.first[best][c.id]]

    def row(label: str, right: Mapping[str, bool]) -> str:
        cells = [_pct(sum(right[c.id] for c in cases), len(cases))]
        for kind in kinds:
            of_kind = [c for c in cases if c.kind == kind]
            cells.append(_pct(sum(right[c.id] for c in of_kind), len(of_kind)))
        return f"| {label} | " + " | ".join(cells) + " |"

    lines = [
        "| answer | all | one call | no call | two calls |",
        "| --- | --- | --- | --- | --- |",
        *(
            row(f"{name}, first sample" + (" (best single)" if name == best else ""), right)
            for name, right in sorted(scores.first.items())
        ),
        row(
            f"ChatAvengers vote ({args.samples} samples x {len(scores.first)} experts)", scores.vote
        ),
    ]
    every = [
        f"- {name}: {_pct(sum(values), len(values))} of all its samples right"
        for name, values in sorted(scores.every.items())
    ]
    detail = ["| case | expected | " + " | ".join(sorted(scores.first)) + " | vote |"]
    detail.append("| --- | --- | " + " | ".join("---" for _ in scores.first) + " | --- |")
    for case in cases:
        expected = ", ".join(f"{e.name}({e.shown})" for e in case.expected) or "no call"
        marks = ["ok" if scores.first[name][case.id] else "wrong" for name in sorted(scores.first)]
        vote = "ok" if scores.vote[case.id] else "wrong"
        detail.append(f"| {case.id} | {expected} | " + " | ".join(marks) + f" | {vote} |")
    wrong = [
        f"- {case.id}: "
        + (
            ", ".join(f"{c['name']}({json.dumps(c['args'])})" for c in scores.voted[case.id])
            or "no call (a text answer)"
        )
        for case in cases
        if not scores.vote[case.id]
    ] or ["- none"]
    seconds = sum(r.get("seconds", 0) for r in rows.values())
    versions = ", ".join(
        f"{p} {metadata.version(p)}" for p in ("langchain-core", "langgraph", "llama_cpp_python")
    )
    return "\n".join(
        [
            "# Tool calling on the local pool",
            "",
            "Produced by (the first records every prompt not in the record yet, on the "
            "local servers, then scores; the second scores the committed record only, "
            "without calling a model):",
            "",
            "```bash",
            f"python tools/bench_tool_calls.py --samples {args.samples}",
            f"python tools/bench_tool_calls.py --samples {args.samples} --replay",
            "```",
            "",
            f"{len(cases)} prompts with four tools bound (calculator, convert_units, "
            "get_weather, get_exchange_rate): "
            + ", ".join(f"{sum(c.kind == k for c in cases)} needing {k}" for k in kinds)
            + ". A reply is right when its tool calls are exactly the expected ones, "
            "arguments compared by meaning (an expression by its value, units and "
            "currencies by normalised name, a city without case); a no-call prompt is "
            "right when the reply calls nothing. One turn per prompt: a model that "
            "makes one of two needed calls is wrong.",
            "",
            f"Pool: `avengers_graph/data/tools_pool.yaml` (Qwen2.5-Coder 1.5B and 0.5B "
            "Instruct, Q4_K_M GGUF, each behind its own llama.cpp server; the servers return "
            "calls as text and `tool_call_parser: hermes` parses them client-side). "
            f"Every expert sampled {args.samples} times per prompt, temperature "
            f"{TEMPERATURE}, at most {MAX_TOKENS} tokens, base seed {SEED}. The single "
            "expert is scored on its first sample (its lowest seed); the vote is "
            "ChatAvengers replayed over the same recorded samples "
            f"(`{args.record_shown}`), so both are scored on the same answers.",
            "",
            *lines,
            "",
            f"Best single expert (chosen on this set, which favours it): **{best}**. "
            f"Rescued by the vote (vote right, best single wrong): **{len(rescued)}**"
            + (f" ({', '.join(rescued)})" if rescued else "")
            + f"; broken (vote wrong, best single right): **{len(broken)}**"
            + (f" ({', '.join(broken)})" if broken else "")
            + ".",
            "",
            *every,
            f"- samples with tool calls: {scores.calls} of {scores.total}; calls parsed "
            f"client-side from text: {scores.parsed}; parsed by the server: {scores.server}",
            "",
            "Per prompt (first sample of each expert, and the vote):",
            "",
            *detail,
            "",
            "Where the vote is wrong, what it chose:",
            "",
            *wrong,
            "",
            f"Recorded on {args.recorded} on {platform.machine()} with {_cpus()} cores, "
            f"no GPU, {seconds / 60:.0f} min of ensemble calls in all; scored on "
            f"{args.when} ({versions}).",
            *([f"{args.note}"] if args.note else []),
            "",
        ]
    )


def _cpus() -> int:
    import os

    return os.cpu_count() or 1


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=3, help="samples per expert")
    parser.add_argument("--record", type=Path, default=ROOT / "docs" / "tool_calling_samples.jsonl")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "tool_calling.md")
    parser.add_argument("--replay", action="store_true", help="score the record only")
    parser.add_argument("--threads", type=int, default=None, help="threads per server")
    parser.add_argument("--note", default="", help="a sentence for the report's end")
    args = parser.parse_args(argv)
    args.when = datetime.now(UTC).strftime("%Y-%m-%d")
    args.recorded = args.when
    try:
        args.record_shown = args.record.resolve().relative_to(ROOT)
    except ValueError:
        args.record_shown = args.record
    if not args.replay:
        record(args.record, args.samples, args.threads)
    rows = read_record(args.record)
    missing = [case.id for case in CASES if case.id not in rows]
    if missing:
        sys.exit(f"{len(missing)} prompts are not recorded yet ({', '.join(missing[:5])}...)")
    args.recorded = datetime.fromtimestamp(args.record.stat().st_mtime, UTC).strftime("%Y-%m-%d")
    text = report(score(rows, args.samples), rows, args)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
