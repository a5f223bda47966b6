"""A ReAct agent whose model is the ensemble: ``create_agent`` with ChatAvengers and two tools.

Run it (after ``make install-local``)::

    python examples/agent_with_tools.py

The pool is ``avengers_graph/data/tools_pool.yaml``: Qwen2.5-Coder 1.5B and 0.5B, the
two models of the local registry whose chat template renders tools (SmolLM2's and
Gemma's do not, so they cannot call tools). llama.cpp returns their calls as text;
each expert parses them (``tool_call_parser: hermes``, see
``avengers_graph/experts/tool_parsers.py``). ``local_avengers`` starts one llama.cpp server per
model and calibrates the pool once on the bundled validation set, from the answers
recorded with it (``tools_pool_answers.jsonl``: no model call).

``langchain.agents.create_agent`` runs the loop: at each step ChatAvengers samples both
experts at temperature 0.2, the samples vote on their tool calls (name plus
arguments) or on answering in text, and the winning calls run; the tool results go
back to the experts. A middleware asks for one tool call per step
(``parallel_tool_calls=False``, enforced by the experts' parser). The task needs two
steps (a unit conversion, then arithmetic on its result).
The tools are real and local: a calculator that parses the expression with ``ast``
(never ``eval``) and a unit converter. Every step is printed: the votes, the tool
calls, their results and the final answer. The example exits with status 1 unless
the final answer holds the right number and the agent used the tools to get it.
"""

from __future__ import annotations

import ast
import math
import operator
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

from langchain.agents import create_agent
from langchain.agents.middleware import ModelRequest, ModelResponse, wrap_model_call
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.errors import GraphRecursionError

from avengers_graph.app.embedded import bundled, load, local_avengers
from avengers_graph.experts.cache import AnswerCache

POOL = bundled("tools_pool.yaml")
RECORDED = bundled("tools_pool_answers.jsonl")
"""The 1.5B's answers to the bundled validation set (tools/record_pool_answers.py)."""

SYSTEM_PROMPT = (
    "You are a careful assistant that solves tasks step by step with tools. Use "
    "convert_units for every unit conversion and calculator for every arithmetic step; "
    "never compute in your head. Make exactly one tool call per reply. After each tool "
    "result, if a step of the task is left, call the tool for that step with the "
    "numbers the tools gave you; when no step is left, reply with only the final number "
    "and its unit, without calling a tool."
)
TASK = (
    "A marathon is 26.2 miles long. First use convert_units to convert 26.2 miles to "
    "kilometers. Then use calculator to multiply that number of kilometers by 3, the "
    "distance a runner covers in 3 marathons."
)
EXPECTED_KM = 26.2 * 1609.344 / 1000 * 3  # 126.49443... km
TOLERANCE = 0.05  # km: the answer may round to two decimals
RECURSION_LIMIT = 16  # graph steps: a model turn and a tool turn each take one


# -- tools --------------------------------------------------------------------------

_BINARY: Mapping[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: Mapping[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
_MAX_EXPONENT = 100


def _evaluate(node: ast.AST) -> float:
    """Value of an arithmetic syntax tree: numbers, + - * / // % ** and parentheses only."""
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, int | float)
        and not isinstance(node.value, bool)
    ):
        return float(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:
            raise ValueError(f"exponent {right:g} is too large")
        return float(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return float(_UNARY[type(node.op)](_evaluate(node.operand)))
    raise ValueError(f"unsupported element {ast.dump(node)[:40]!r}")


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression and return its value.

    Args:
        expression: The expression: numbers, + - * / // % ** and parentheses.
    """
    try:
        value = _evaluate(ast.parse(expression.replace("^", "**"), mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError) as exc:
        return f"error: cannot evaluate {expression!r}: {exc}"
    return f"{value:.10g}"


_LENGTH_M = {
    "m": 1.0,
    "km": 1000.0,
    "cm": 0.01,
    "mm": 0.001,
    "mi": 1609.344,
    "yd": 0.9144,
    "ft": 0.3048,
    "in": 0.0254,
}
_MASS_KG = {"kg": 1.0, "g": 0.001, "lb": 0.45359237, "oz": 0.028349523125}
_ALIASES = {
    "meter": "m",
    "metre": "m",
    "kilometer": "km",
    "kilometre": "km",
    "centimeter": "cm",
    "millimeter": "mm",
    "mile": "mi",
    "yard": "yd",
    "foot": "ft",
    "feet": "ft",
    "inch": "in",
    "inches": "in",
    "kilogram": "kg",
    "gram": "g",
    "pound": "lb",
    "lbs": "lb",
    "ounce": "oz",
    "celsius": "c",
    "fahrenheit": "f",
    "kelvin": "k",
}


def _unit(name: str) -> str:
    key = name.strip().lower().replace("°", "")
    return _ALIASES.get(key, _ALIASES.get(key.removesuffix("s"), key))


def _celsius(value: float, unit: str) -> float:
    return {"c": value, "f": (value - 32) * 5 / 9, "k": value - 273.15}[unit]


@tool
def convert_units(value: float, from_unit: str, to_unit: str) -> str:
    """Convert a value between units of length, mass or temperature.

    Args:
        value: The number to convert.
        from_unit: Its unit, e.g. 'miles', 'km', 'lb', 'celsius'.
        to_unit: The unit wanted, e.g. 'kilometers', 'kg', 'fahrenheit'.
    """
    source, target = _unit(from_unit), _unit(to_unit)
    if source in _LENGTH_M and target in _LENGTH_M:
        result = value * _LENGTH_M[source] / _LENGTH_M[target]
    elif source in _MASS_KG and target in _MASS_KG:
        result = value * _MASS_KG[source] / _MASS_KG[target]
    elif {source, target} <= {"c", "f", "k"}:
        celsius = _celsius(value, source)
        result = {"c": celsius, "f": celsius * 9 / 5 + 32, "k": celsius + 273.15}[target]
    else:
        return f"error: cannot convert {from_unit!r} to {to_unit!r}"
    return f"{result:.10g} {to_unit}"


# -- the run --------------------------------------------------------------------------


@wrap_model_call
def one_tool_call_per_step(
    request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
) -> ModelResponse:
    """Ask for one tool call per step (``parallel_tool_calls=False``).

    Small models plan ahead: asked to convert and then multiply, they write both calls
    at once, the second with a guessed number. llama.cpp cannot hold them to one call;
    with the flag set, each expert's parser keeps the first, and the next step sees its
    result. It also makes the samples agree, so the vote has a majority to find.
    """
    settings = {**request.model_settings, "parallel_tool_calls": False}
    return handler(request.override(model_settings=settings))


def _print_step(message: BaseMessage) -> None:
    if isinstance(message, AIMessage):
        routing = message.response_metadata.get("avengers", {})
        votes = routing.get("votes", {})
        print(f"[model] winner {routing.get('winner')}, votes {dict(votes)}")
        for call in message.tool_calls:
            print(f"  tool call: {call['name']}({call['args']})")
        if message.text:
            print(f"  answer: {message.text}")
    elif isinstance(message, ToolMessage):
        print(f"[tool {message.name}] {message.content}")


def _numbers(text: str) -> list[float]:
    return [float(n.replace(",", "")) for n in re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)]


def main() -> int:
    """Run the agent on :data:`TASK`; 1 unless it answered right with the tools."""
    settings, _ = load(POOL)
    # The tool pool's recorded calibration answers: calibrating makes no model call.
    AnswerCache(settings.cache_dir / "answers.sqlite").import_jsonl(RECORDED)
    # A tool loop wants its samples to agree on the next call: at the pool's 0.7 the
    # six samples of a step scattered over six different answers in one CI run.
    with local_avengers(POOL, seed=0, temperature=0.2) as llm:
        agent = create_agent(
            llm,
            tools=[calculator, convert_units],
            system_prompt=SYSTEM_PROMPT,
            middleware=[one_tool_call_per_step],
        )
        print(f"task: {TASK}\n")
        messages: list[BaseMessage] = []
        try:
            for update in agent.stream(
                {"messages": [HumanMessage(TASK)]},
                {"recursion_limit": RECURSION_LIMIT},
                stream_mode="updates",
            ):
                for step in update.values():
                    for message in (step or {}).get("messages", []):
                        _print_step(message)
                        messages.append(message)
        except GraphRecursionError:
            print(f"\nthe agent did not finish within {RECURSION_LIMIT} graph steps")
            messages.append(AIMessage(content=""))
    used = [m.name for m in messages if isinstance(m, ToolMessage)]
    final = messages[-1] if messages else None
    answer = final.text if isinstance(final, AIMessage) and not final.tool_calls else ""
    right = any(math.isclose(n, EXPECTED_KM, abs_tol=TOLERANCE) for n in _numbers(answer))
    print(f"\nexpected: {EXPECTED_KM:.2f} km; tools used: {used}")
    if right and used:
        print("task completed: the final answer holds the right distance.")
        return 0
    print("task NOT completed: " + ("wrong or no final number." if used else "no tool was used."))
    return 1


if __name__ == "__main__":
    sys.exit(main())
