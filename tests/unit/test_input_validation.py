"""Inputs validated at the edge: any Unicode is answered or refused clearly, and so are
the command line's numeric options.

A lone surrogate (text decoded with ``errors="surrogateescape"``, or broken UTF-16)
can be neither embedded (MiniLM's tokenizer raised a raw ``TypeError``) nor sent as
UTF-8 JSON: the graph and ``ChatAvengers`` refuse it with an ``InvalidInputError``
naming the message. Every other code point is text and gets an answer.
"""

from __future__ import annotations

import asyncio
import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import typer
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from typer.testing import CliRunner

from avengers_graph import ChatAvengers, create_avengers_graph
from avengers_graph.app import cli as cli_module
from avengers_graph.errors import InvalidInputError
from tests.fakes import ScriptedExpert, constant

ANSWER = "So the result is \\boxed{42}."

LONE_SURROGATES: dict[str, tuple[list[BaseMessage], str]] = {
    "high surrogate in the question": (
        [HumanMessage("a math problem \ud800: what is 6 * 7?")],
        "messages[0] (human message) holds a lone surrogate U+D800 at character 15",
    ),
    "low surrogate (surrogateescape of a 0xFF byte)": (
        [HumanMessage(b"math \xff".decode("utf-8", "surrogateescape"))],
        "messages[0] (human message) holds a lone surrogate U+DCFF at character 5",
    ),
    "reversed pair": (
        [HumanMessage("math \udc00\ud800")],
        "U+DC00 at character 5 (after 'math ')",
    ),
    "in the system prompt": (
        [SystemMessage("be brief \udfff"), HumanMessage("math: 6 * 7?")],
        "messages[0] (system message) holds a lone surrogate U+DFFF",
    ),
    "in an earlier answer's tool call": (
        [
            HumanMessage("math: look it up"),
            AIMessage(
                "",
                tool_calls=[{"name": "lookup", "args": {"q": "x\ud83d"}, "id": "c1"}],
            ),
            ToolMessage("42", tool_call_id="c1"),
            HumanMessage("math: so, 6 * 7?"),
        ],
        "messages[1] (ai message) holds a lone surrogate U+D83D",
    ),
    "in a content block": (
        [HumanMessage(content=[{"type": "text", "text": "math \udabc"}])],
        "messages[0] (human message) holds a lone surrogate U+DABC",
    ),
}

VALID_ODDITIES = {
    "NUL and C0 controls": "math \x00\x01\x1b[2J what is 6 * 7?",
    "C1 controls (8-bit CSI, OSC)": "math \x9b31m \x9d0;t\x9c 6 * 7?",
    "right-to-left override": "math \u202e?7 * 6 si tahw",
    "byte order mark and zero-width space": "\ufeffmath\u200b 6 * 7?",
    "only a zero-width space after the keyword": "math\u200b",
    "noncharacters": "math \ufffe\uffff\U0010ffff",
    "a surrogate pair written properly (emoji with ZWJ)": "math \U0001f468\u200d\U0001f469 6*7",
    "combining marks": "math e\u0301\u0301\u0301 6 * 7",
    "a replacement character": "math \ufffd 6 * 7",
    "private use": "math \ue000\U000f0000",
    "one long word": "math " + "x" * 200_000,
    "many lines": "math\n" * 20_000,
}


@pytest.fixture
def pool() -> dict[str, ScriptedExpert]:
    return {
        name: ScriptedExpert(model=name, respond=constant(ANSWER))
        for name in ("mathy", "coder", "bard")
    }


def _graph_runs(graph: Any) -> dict[str, Callable[[list[BaseMessage]], Any]]:
    return {
        "graph.invoke": lambda m: graph.invoke({"messages": m}),
        "graph.ainvoke": lambda m: asyncio.run(graph.ainvoke({"messages": m})),
    }


def _chat_runs(llm: ChatAvengers) -> dict[str, Callable[[list[BaseMessage]], Any]]:
    return {
        "invoke": llm.invoke,
        "ainvoke": lambda m: asyncio.run(llm.ainvoke(m)),
        "stream": lambda m: list(llm.stream(m)),
        "batch": lambda m: llm.batch([m]),
    }


@pytest.mark.parametrize("case", list(LONE_SURROGATES))
def test_a_lone_surrogate_is_refused_naming_the_message(embeddings, store, pool, case) -> None:
    messages, expected = LONE_SURROGATES[case]
    graph = create_avengers_graph(pool, embeddings, store, top_n=1, samples=1)
    llm = ChatAvengers(experts=pool, embeddings=embeddings, store=store, top_n=1, samples=1)
    for path, run in {**_graph_runs(graph), **_chat_runs(llm)}.items():
        with pytest.raises(InvalidInputError) as raised:
            run(messages)
        message = str(raised.value)
        assert expected in message, (path, message)
        assert "errors='replace'" in message
    assert sum(expert.calls for expert in pool.values()) == 0  # refused before any call


@pytest.mark.parametrize("case", list(VALID_ODDITIES))
def test_every_other_code_point_is_answered(embeddings, store, pool, case) -> None:
    text = VALID_ODDITIES[case]
    graph = create_avengers_graph(pool, embeddings, store, top_n=2, samples=1)
    llm = ChatAvengers(experts=pool, embeddings=embeddings, store=store, top_n=2, samples=1)
    for run in (*_graph_runs(graph).values(), *_chat_runs(llm).values()):
        result = run([HumanMessage(text)])
        if isinstance(result, list):  # stream, batch
            result = result[0]
        answer = result["messages"][-1] if isinstance(result, dict) else result
        assert answer.text == ANSWER
    seen = [call for expert in pool.values() for call in expert.seen]
    assert seen  # every path called the experts with the text as it was


# the command line -------------------------------------------------------------------------
runner = CliRunner()


def _numeric_options() -> list[tuple[str, str]]:
    """(command, parameter) of every int or float option of the CLI, from the signatures."""
    found = []

    def walk(app: typer.Typer, path: str) -> None:
        for info in app.registered_commands:
            callback = inspect.unwrap(info.callback)
            name = info.name or callback.__name__.replace("_", "-")
            hints = typing.get_type_hints(callback)
            for parameter, hint in hints.items():
                kinds = set(typing.get_args(hint)) or {hint}
                if kinds & {int, float} and parameter != "return":
                    found.append((f"{path} {name}".strip(), parameter))
        for group in app.registered_groups:
            assert group.typer_instance is not None
            walk(group.typer_instance, f"{path} {group.name}".strip())

    walk(cli_module.app, "")
    return found


def test_every_numeric_option_has_a_minimum() -> None:
    options = _numeric_options()
    assert len(options) >= 15  # ask, calibrate, local up/build, eval record/replay
    missing = {(path, name) for path, name in options if name not in cli_module.OPTION_MINIMUMS}
    assert not missing


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["ask", "q", "--top-n", "0"], "error: --top-n must be at least 1, got 0."),
        (["ask", "q", "--samples", "-2"], "error: --samples must be at least 1, got -2."),
        (["calibrate", "--clusters", "0"], "error: --clusters must be at least 1, got 0."),
        (["calibrate", "--samples", "0"], "error: --samples must be at least 1, got 0."),
        (["calibrate", "--max-tokens", "0"], "error: --max-tokens must be at least 1, got 0."),
        (["calibrate", "--seed", "-1"], "error: --seed must be at least 0, got -1."),
        (["local", "up", "--slots", "0"], "error: --slots must be at least 1, got 0."),
        (["local", "up", "--threads", "-1"], "error: --threads must be at least 1, got -1."),
        (["local", "build", "--jobs", "0"], "error: --jobs must be at least 1, got 0."),
        (["eval", "record", "--limit", "-1"], "error: --limit must be at least 1, got -1."),
        (
            ["eval", "record", "--per-dataset", "0"],
            "error: --per-dataset must be at least 1, got 0.",
        ),
        (["eval", "record", "--more", "-1"], "error: --more must be at least 0, got -1."),
        (
            ["eval", "record", "--max-concurrency", "0"],
            "error: --max-concurrency must be at least 1, got 0.",
        ),
        (
            ["eval", "record", "--temperature", "nan"],
            "error: --temperature must be a finite number, got nan.",
        ),
        (
            ["eval", "record", "--temperature", "-1"],
            "error: --temperature must be at least 0, got -1.0.",
        ),
        (
            ["eval", "record", "--dataset", "mine.jsonl", "--benchmarks", "gsm8k"],
            "error: Give --dataset or --benchmarks, not both.",
        ),
        (
            ["eval", "record", "--dataset", "absent.jsonl"],
            "error: Dataset absent.jsonl does not exist.",
        ),
        (["eval", "replay", "--splits", "0"], "error: --splits must be at least 1, got 0."),
        (["eval", "replay", "--clusters", "0"], "error: --clusters must be at least 1, got 0."),
    ],
)
def test_an_option_out_of_range_is_one_line_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], line: str
) -> None:
    monkeypatch.setenv("AVENGERS_CACHE_DIR", str(tmp_path / "cache"))  # never the shared one
    monkeypatch.setenv("COLUMNS", "30")  # narrower than the line: it must not wrap
    result = runner.invoke(cli_module.app, args)
    assert result.exit_code == 1, result.output
    assert result.output.strip() == line
    assert not (tmp_path / "cache").exists()  # refused before doing anything


def test_a_long_error_stays_on_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "40")

    @cli_module.friendly
    def fails() -> None:
        raise InvalidInputError("word " * 40)

    with pytest.raises(typer.Exit):
        fails()
    output = capsys.readouterr().out
    assert output.count("\n") == 1
    assert output.startswith("error: word word")
