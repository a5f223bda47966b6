"""Client-side tool-call parsing: tool calls that a server returned as text.

Some OpenAI-compatible servers render the tools into the prompt but do not parse the
model's answer: llama-cpp-python's server with a GGUF's own chat template and
``tool_choice="auto"`` returns Qwen2.5's calls as plain ``content``. vLLM parses the
same answers server-side with ``--tool-call-parser hermes``; :func:`parse_hermes_tool_calls`
does it client-side, for :class:`~avengers_graph.openai_compatible.ChatOpenAICompatible`.

A *call object* is a JSON object ``{"name": <a bound tool>, "arguments": {...}}``
(``arguments`` may also be a JSON string holding an object; ``parameters`` is read as a
synonym). The text is parsed in two ways, the first that applies wins:

1. **Tagged** (Hermes): every ``<tool_call>...</tool_call>`` block holds one call
   object (or a JSON list of them). The tags say the model meant to call, so text
   around them is kept as the message's content. One block that does not parse, or
   that names a tool that is not bound, makes the whole text count as no call.
2. **Bare**: the whole text, once ```` ```json ```` fences and ``<tools>`` wrappers
   are removed, is call objects and nothing else: one object, a JSON list of them, or
   several one after another. The content becomes empty. Text that also holds prose
   (an explanation around a JSON example, say) counts as no call: a model that
   describes a call has not made it.

Anything else (no JSON, JSON that is not a call object, an unknown tool name, broken
JSON) gives ``None``: the message stays as the server sent it.

The way back, :func:`format_hermes_tool_calls`, writes the calls of earlier assistant
turns into their text in the same format, for servers whose template would otherwise
render them wrongly (llama-cpp-python renders OpenAI's JSON-string ``arguments``
JSON-encoded a second time, and the model then imitates the quoted string).
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any, Literal, NamedTuple

from langchain_core.messages import ToolCall
from langchain_core.messages.tool import tool_call

__all__ = [
    "TOOL_CALL_PARSERS",
    "ParsedToolCalls",
    "ToolCallParser",
    "bound_tool_names",
    "format_hermes_tool_calls",
    "new_call_id",
    "parse_hermes_tool_calls",
    "parse_tool_calls",
]

ToolCallParser = Literal["hermes"]
"""Names of the client-side parsers (``hermes``: Qwen2.5, Hermes, and models like them)."""

TOOL_CALL_PARSERS: tuple[ToolCallParser, ...] = ("hermes",)
"""Every parser name, for validation and error messages."""

_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?|```")
_WRAPPER_TAG = re.compile(r"</?tools>|</?tool_call>")
_DECODER = json.JSONDecoder()


class ParsedToolCalls(NamedTuple):
    """Tool calls found in a text, and the text that remains as the message's content."""

    content: str
    """The text outside the calls (empty when the text was calls only)."""
    tool_calls: list[ToolCall]
    """The calls, in order, each with a new id."""


def new_call_id() -> str:
    """A tool-call id in OpenAI's shape: ``call_`` and a random uuid4 in hex."""
    return f"call_{uuid.uuid4().hex}"


def bound_tool_names(tools: Sequence[Mapping[str, Any]] | None) -> frozenset[str]:
    """Names of the function tools of a request's ``tools`` (OpenAI format)."""
    names: set[str] = set()
    for tool in tools or ():
        function = tool.get("function")
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            names.add(function["name"])
    return frozenset(names)


def _as_call(value: Any, tool_names: Collection[str]) -> tuple[str, dict[str, Any]] | None:
    """``(name, args)`` when ``value`` is a call object of a bound tool, else ``None``."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    if value["name"] not in tool_names:
        return None
    arguments = value.get("arguments", value.get("parameters"))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    if set(value) - {"name", "arguments", "parameters", "id", "type"}:
        return None  # other keys: some other object that happens to have a name
    return value["name"], arguments


def _json_values(text: str) -> Iterator[Any] | None:
    """The JSON values that make up ``text`` one after another, or ``None``.

    Values may be separated by whitespace or commas; anything else (prose, broken
    JSON) makes the text not a sequence of values.
    """
    values: list[Any] = []
    position = 0
    while True:
        while position < len(text) and (text[position].isspace() or text[position] == ","):
            position += 1
        if position == len(text):
            return iter(values)
        try:
            value, position = _DECODER.raw_decode(text, position)
        except json.JSONDecodeError:
            return None
        values.append(value)


def _calls_of(text: str, tool_names: Collection[str]) -> list[tuple[str, dict[str, Any]]] | None:
    """The call objects ``text`` consists of (lists flattened), or ``None``."""
    values = _json_values(text)
    if values is None:
        return None
    calls: list[tuple[str, dict[str, Any]]] = []
    for value in values:
        for item in value if isinstance(value, list) else [value]:
            call = _as_call(item, tool_names)
            if call is None:
                return None
            calls.append(call)
    return calls or None


def _build(
    content: str, calls: list[tuple[str, dict[str, Any]]], make_id: Callable[[], str]
) -> ParsedToolCalls:
    return ParsedToolCalls(
        content=content,
        tool_calls=[tool_call(name=name, args=args, id=make_id()) for name, args in calls],
    )


def parse_hermes_tool_calls(
    text: str,
    tool_names: Collection[str],
    *,
    make_id: Callable[[], str] = new_call_id,
) -> ParsedToolCalls | None:
    """Find the tool calls a model wrote as text (Hermes / Qwen2.5 style).

    See the module docstring for the shapes that count as calls.

    Args:
        text: The message content the server returned.
        tool_names: Names of the tools bound for the call; other names are no call.
        make_id: Makes each call's id (default ``call_<uuid4 hex>``).

    Returns:
        The calls and the remaining content, or ``None`` when the text holds no call
        (or anything that is not quite one): leave the message as it is.
    """
    if not tool_names or not text.strip():
        return None
    if "<tool_call>" in text:
        calls: list[tuple[str, dict[str, Any]]] = []
        for block in _TAGGED.findall(text):
            found = _calls_of(_FENCE.sub("", block), tool_names)
            if found is None:
                return None
            calls.extend(found)
        if calls:
            rest = _TAGGED.sub("", text)
            rest = _WRAPPER_TAG.sub("", rest).strip()
            return _build("" if not _FENCE.sub("", rest).strip() else rest, calls, make_id)
        return None
    bare = _WRAPPER_TAG.sub("", _FENCE.sub("", text))
    found = _calls_of(bare, tool_names)
    return None if found is None else _build("", found, make_id)


def format_hermes_tool_calls(content: str, tool_calls: Sequence[Mapping[str, Any]]) -> str:
    """An assistant turn's text with its calls written back in the Hermes format.

    The inverse of :func:`parse_hermes_tool_calls`, for the request's history: each
    call becomes ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, the
    shape Qwen2.5's chat template writes and the model was trained to read.

    Args:
        content: The turn's text (kept first, when there is any).
        tool_calls: Calls in OpenAI's request format (``{"function": {"name",
            "arguments": "<JSON string>"}}``) or LangChain's (``{"name", "args"}``).
    """
    blocks = []
    for call in tool_calls:
        function = call.get("function", call)
        arguments = function.get("arguments", function.get("args", {}))
        if isinstance(arguments, str):
            with contextlib.suppress(json.JSONDecodeError):  # else kept as the string it was
                arguments = json.loads(arguments)
        body = json.dumps({"name": function.get("name"), "arguments": arguments})
        blocks.append(f"<tool_call>\n{body}\n</tool_call>")
    return "\n".join([content, *blocks] if content else blocks)


_PARSERS: Mapping[ToolCallParser, Callable[[str, Collection[str]], ParsedToolCalls | None]] = {
    "hermes": parse_hermes_tool_calls,
}


def parse_tool_calls(
    parser: ToolCallParser, text: str, tool_names: Collection[str]
) -> ParsedToolCalls | None:
    """Run the parser named ``parser`` (see :data:`TOOL_CALL_PARSERS`).

    Raises:
        ValueError: An unknown parser name.
    """
    try:
        function = _PARSERS[parser]
    except KeyError:
        raise ValueError(
            f"Unknown tool-call parser {parser!r}; known parsers: {', '.join(TOOL_CALL_PARSERS)}."
        ) from None
    return function(text, tool_names)
