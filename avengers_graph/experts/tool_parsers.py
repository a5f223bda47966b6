"""Client-side tool-call parsing: tool calls that a server returned as text.

Some OpenAI-compatible servers render the tools into the prompt but do not parse the
model's answer: llama-cpp-python's server with a GGUF's own chat template and
``tool_choice="auto"`` returns Qwen2.5's calls as plain ``content``. vLLM parses the
same answers server-side with ``--tool-call-parser hermes``; :func:`parse_hermes_tool_calls`
does it client-side, for :class:`~avengers_graph.experts.openai_compatible.ChatOpenAICompatible`.

A *call object* is a JSON object ``{"name": <a bound tool>, "arguments": {...}}``
(``arguments`` may also be a JSON string holding an object; ``parameters`` is read as a
synonym unless it is a JSON schema; other keys are ignored), or a JSON list of them.
Given the tools' parameter schemas (:func:`bound_tool_parameters`), argument keys a
tool does not declare are dropped: small models echo the schema's ``type``,
``required`` or ``parameters`` next to their arguments, and a tool would refuse them.
:func:`parse_hermes_tool_calls` reads them in two ways, the first that applies wins:

1. **Tagged** (Hermes): every ``<tool_call>...</tool_call>`` block holds call objects.
   One block that does not parse makes the whole text count as no call: tags say a
   call was meant, and half of a planned set of calls is not run.
2. **Untagged** (what small models write more often): call objects anywhere in the
   text, bare, in ```` ```json ```` fences or ``<tools>`` wrappers, one after another
   or between sentences ("To convert it, I call: ```json {...}```"). JSON that is not
   a call object (``{"name": "Alice", "age": 3}``, a call nested inside another
   object) and broken JSON are not calls and stay text.

The calls are taken out of the text; what remains (fences, wrappers and stray braces
dropped) is the message's content, empty when the text was calls only. An object
shaped like a call (``name`` and ``arguments``) that names a tool that is not bound,
or whose arguments are not an object, makes the whole text count as no call: the model
meant a call that cannot be run. No call at all gives ``None``: the message stays as
the server sent it. The text before the first call is kept apart
(:attr:`ParsedToolCalls.lead`), for a reply held to one call.

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
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Literal, NamedTuple, TypeVar

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ToolCall
from langchain_core.messages.tool import tool_call, tool_call_chunk
from langchain_core.outputs import ChatGenerationChunk, ChatResult

__all__ = [
    "TOOL_CALL_PARSERS",
    "ParsedToolCalls",
    "ToolCallParser",
    "as_generation_chunk",
    "bound_tool_names",
    "bound_tool_parameters",
    "format_hermes_tool_calls",
    "new_call_id",
    "parse_hermes_tool_calls",
    "parse_message_tool_calls",
    "parse_tool_calls",
]

ToolCallParser = Literal["hermes"]
"""Names of the client-side parsers (``hermes``: Qwen2.5, Hermes, and models like them)."""

TOOL_CALL_PARSERS: tuple[ToolCallParser, ...] = ("hermes",)
"""Every parser name, for validation and error messages."""

_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?|```")
_WRAPPER_TAG = re.compile(r"</?tools>|</?tool_call>")
_STRAY_BRACES = re.compile(r"^[ \t{}\[\],]*[{}\[\]][ \t{}\[\],]*(?:\n|$)", re.MULTILINE)
_DECODER = json.JSONDecoder()


class ParsedToolCalls(NamedTuple):
    """Tool calls found in a text, and the text that remains as the message's content."""

    content: str
    """The text outside the calls (empty when the text was calls only)."""
    tool_calls: list[ToolCall]
    """The calls, in order, each with a new id."""
    lead: str = ""
    """The text before the first call: a reply held to one call (``parallel_tool_calls=
    False``) keeps only this, the rest being the calls it is not allowed to make."""


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


def bound_tool_parameters(
    tools: Sequence[Mapping[str, Any]] | None,
) -> dict[str, Mapping[str, Any]]:
    """Each function tool's name to its ``parameters`` JSON schema (``{}`` when absent)."""
    schemas: dict[str, Mapping[str, Any]] = {}
    for tool in tools or ():
        function = tool.get("function")
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            parameters = function.get("parameters")
            schemas[function["name"]] = parameters if isinstance(parameters, Mapping) else {}
    return schemas


def _declared_keys(tools: Collection[str], name: str) -> frozenset[str] | None:
    """The argument keys tool ``name`` declares, or ``None`` when any key may go through.

    Only a schema given (``tools`` a mapping) that lists ``properties`` and does not
    allow other keys (``additionalProperties`` absent or false) restricts the keys.
    """
    if not isinstance(tools, Mapping):
        return None
    schema = tools.get(name)
    if not isinstance(schema, Mapping):
        return None
    properties = schema.get("properties")
    if not isinstance(properties, Mapping) or schema.get("additionalProperties"):
        return None
    return frozenset(properties)


class _UnrunnableCallError(ValueError):
    """A call-shaped object that cannot be run (unknown tool, arguments not an object)."""


def _as_call(value: Any, tool_names: Collection[str]) -> tuple[str, dict[str, Any]] | None:
    """``(name, args)`` when ``value`` is a call object of a bound tool, else ``None``.

    Other keys are ignored (small models echo bits of the tool's schema next to their
    arguments), and so are argument keys the tool's schema does not declare (when
    ``tool_names`` maps names to schemas); an object whose only ``parameters`` are a
    JSON schema is the tool's definition echoed, not a call.

    Raises:
        _UnrunnableCallError: ``value`` is shaped like a call (a string ``name`` and
            ``arguments`` or ``parameters``) but names a tool that is not bound, or its
            arguments are not a JSON object.
    """
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    if "arguments" in value:
        arguments = value["arguments"]
    elif "parameters" in value:
        arguments = value["parameters"]
        if isinstance(arguments, dict) and "properties" in arguments:
            return None  # {"name", "description", "parameters": <schema>}: a definition
    else:
        return None
    if value["name"] not in tool_names:
        raise _UnrunnableCallError(f"unknown tool {value['name']!r}")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            raise _UnrunnableCallError("arguments are not JSON") from None
    if not isinstance(arguments, dict):
        raise _UnrunnableCallError("arguments are not an object")
    declared = _declared_keys(tool_names, value["name"])
    if declared is not None:
        arguments = {key: item for key, item in arguments.items() if key in declared}
    return value["name"], arguments


def _calls_in_value(value: Any, tool_names: Collection[str]) -> list[tuple[str, dict[str, Any]]]:
    """The calls a decoded JSON value is (an object, or a list of call objects only)."""
    items = value if isinstance(value, list) else [value]
    calls = [_as_call(item, tool_names) for item in items]
    if not calls or any(call is None for call in calls):
        return []
    return [call for call in calls if call is not None]


def _scan(
    text: str, tool_names: Collection[str]
) -> tuple[list[tuple[str, dict[str, Any]]], str, str]:
    """Every call object in ``text``, the text without them, and the text before the first.

    Each ``{`` or ``[`` starts an attempt to decode a JSON value there; a value that is
    calls is taken out, any other value is skipped whole (so a call nested in another
    object is not taken), and text that does not decode is kept.
    """
    calls: list[tuple[str, dict[str, Any]]] = []
    rest: list[str] = []
    lead = text
    position = kept = 0
    while True:
        starts = [i for i in (text.find("{", position), text.find("[", position)) if i >= 0]
        if not starts:
            break
        start = min(starts)
        try:
            value, end = _DECODER.raw_decode(text, start)
        except json.JSONDecodeError:
            position = start + 1
            continue
        found = _calls_in_value(value, tool_names)
        if found:
            if not calls:
                lead = text[:start]
            calls.extend(found)
            rest.append(text[kept:start])
            kept = end
        position = end
    rest.append(text[kept:])
    return calls, "".join(rest), lead


def _leftover(text: str) -> str:
    """The prose left once calls are taken out: fences, wrappers and stray braces dropped."""
    text = _STRAY_BRACES.sub("", _WRAPPER_TAG.sub("", _FENCE.sub("", text)))
    return text.strip() if re.search(r"\w", text) else ""


def _build(
    content: str, calls: list[tuple[str, dict[str, Any]]], lead: str, make_id: Callable[[], str]
) -> ParsedToolCalls:
    return ParsedToolCalls(
        content=content,
        tool_calls=[tool_call(name=name, args=args, id=make_id()) for name, args in calls],
        lead=_leftover(lead),
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
        tool_names: Names of the tools bound for the call; other names are no call. A
            mapping of the names to their parameter schemas
            (:func:`bound_tool_parameters`) also drops undeclared argument keys.
        make_id: Makes each call's id (default ``call_<uuid4 hex>``).

    Returns:
        The calls and the text around them, or ``None`` when the text holds no call
        (or a call that cannot be run): leave the message as it is.
    """
    if not tool_names or not text.strip():
        return None
    try:
        if "<tool_call>" in text:
            calls: list[tuple[str, dict[str, Any]]] = []
            for block in _TAGGED.findall(text):
                found, rest, _ = _scan(block, tool_names)
                if not found or _leftover(rest):
                    return None  # a tagged block that is not calls only
                calls.extend(found)
            if not calls:
                return None
            lead = text[: text.index("<tool_call>")]
            return _build(_leftover(_TAGGED.sub("", text)), calls, lead, make_id)
        calls, rest, lead = _scan(text, tool_names)
    except _UnrunnableCallError:
        return None
    return _build(_leftover(rest), calls, lead, make_id) if calls else None


def _block_text(content: str | Sequence[Any]) -> str:
    """The text of a message's content: a string, or the text of its content blocks."""
    if isinstance(content, str):
        return content
    parts = [
        block if isinstance(block, str) else str(block.get("text", ""))
        for block in content
        if isinstance(block, str) or (isinstance(block, Mapping) and block.get("type") == "text")
    ]
    return "".join(parts)


def format_hermes_tool_calls(
    content: str | Sequence[Any], tool_calls: Sequence[Mapping[str, Any]]
) -> str:
    """An assistant turn's text with its calls written back in the Hermes format.

    The inverse of :func:`parse_hermes_tool_calls`, for the request's history: each
    call becomes ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, the
    shape Qwen2.5's chat template writes and the model was trained to read.

    Args:
        content: The turn's text, or its content blocks (their text is kept first).
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
    text = _block_text(content)
    return "\n".join([text, *blocks] if text else blocks)


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


_Message = TypeVar("_Message", bound=BaseMessage)


def parse_message_tool_calls(
    message: _Message,
    parser: ToolCallParser | None,
    tools: Collection[str],
    *,
    single: bool = False,
) -> _Message:
    """``message`` with the tool calls its text holds made into ``tool_calls``.

    A message that already has calls (the server parsed them), or no string content,
    is returned as is, and so is one without calls in its text. With ``single`` (the
    request said ``parallel_tool_calls=False``), only the first call and the text
    before it are kept: the server cannot hold the model to one call, the parser does
    (what follows the first call is the model planning the next steps, often as
    broken calls).

    Args:
        message: An answer of the server.
        parser: The parser's name; ``None`` parses nothing.
        tools: The bound tools' names, or their parameter schemas by name
            (:func:`bound_tool_parameters`).
        single: Keep one call.
    """
    if (
        parser is None
        or not isinstance(message, AIMessage)
        or message.tool_calls
        or message.invalid_tool_calls
        or not isinstance(message.content, str)
    ):
        return message
    parsed = parse_tool_calls(parser, message.content, tools)
    if parsed is None:
        return message
    return message.model_copy(
        update={
            "content": parsed.lead if single else parsed.content,
            "tool_calls": parsed.tool_calls[:1] if single else parsed.tool_calls,
            "response_metadata": {**message.response_metadata, "tool_call_parser": parser},
        }
    )


def as_generation_chunk(result: ChatResult) -> ChatGenerationChunk:
    """A whole answer as one streaming chunk, its tool calls as tool-call chunks.

    For models that decide an answer before they can stream it (an ensemble's vote, a
    reply whose calls are parsed from the whole text): the chunk merges back into the
    same message, ``tool_calls`` and ids included.
    """
    generation = result.generations[0]
    message = generation.message
    calls = message.tool_calls if isinstance(message, AIMessage) else []
    chunk = AIMessageChunk(
        content=message.content,
        tool_call_chunks=[
            tool_call_chunk(
                name=call["name"], args=json.dumps(call["args"]), id=call["id"], index=index
            )
            for index, call in enumerate(calls)
        ],
        additional_kwargs=message.additional_kwargs,
        response_metadata=message.response_metadata,
        usage_metadata=getattr(message, "usage_metadata", None),
        id=message.id,
        chunk_position="last",
    )
    return ChatGenerationChunk(message=chunk, generation_info=generation.generation_info)
