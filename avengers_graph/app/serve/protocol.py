"""OpenAI's chat-completions protocol: requests in, LangChain messages and options out.

- :class:`ChatRequest` validates a request body (``messages``, ``temperature``,
  ``max_tokens``/``max_completion_tokens``, ``stop``, ``seed``, ``tools``,
  ``tool_choice``, ``parallel_tool_calls``, ``response_format``, ``stream``,
  ``stream_options``); fields that would change the answer's shape and are not
  supported (``n`` > 1, ``logprobs``) are refused, other OpenAI fields (``top_p``,
  ``user``, penalties...) are accepted and ignored.
- :func:`to_messages` turns its messages into LangChain messages; :func:`to_options`
  maps the other fields onto :class:`~avengers_graph.options.AvengersOptions`
  (validated, so a bad value is a 400 before anything runs).
- :func:`completion`, :func:`chunk` and :func:`usage` build the responses, and
  :func:`routing_extension` the ``avengers`` extension field (the routing record:
  clusters, experts, samples' answers, votes, confidence, winner; failures redacted).
- :func:`error_body` is OpenAI's error shape.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, TypeVar

from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolCall,
    ToolMessage,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from avengers_graph.errors import InvalidInputError
from avengers_graph.options import AvengersContext, describe_validation_error
from avengers_graph.redact import redact

__all__ = [
    "ChatRequest",
    "FeedbackRequest",
    "chunk",
    "completion",
    "error_body",
    "finish_reason",
    "parse",
    "routing_extension",
    "to_messages",
    "to_options",
    "usage",
]

_FINISH_REASONS = ("stop", "length", "tool_calls", "content_filter")
_M = TypeVar("_M", bound=BaseModel)


class Message(BaseModel):
    """One message of a chat-completions request."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class ChatRequest(BaseModel):
    """A ``POST /v1/chat/completions`` body (unknown OpenAI fields are ignored)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = Field(default=1, ge=1, le=1, description="one answer per request")
    logprobs: Literal[False] | None = None

    @model_validator(mode="after")
    def _stop_sequences(self) -> ChatRequest:
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        # OpenAI takes 4; some IDE plugins send more, which local servers accept
        if len(stops) > 16 or not all(isinstance(s, str) and s for s in stops):
            raise ValueError("stop takes at most 16 non-empty strings")
        return self

    @property
    def include_usage(self) -> bool:
        """Whether a stream ends with a usage chunk (``stream_options.include_usage``)."""
        return bool((self.stream_options or {}).get("include_usage"))


class FeedbackRequest(BaseModel):
    """A ``POST /v1/feedback`` body: a completion's ``id`` and whether it was right."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=200)
    correct: bool


def parse(model: type[_M], body: bytes) -> _M:
    """A request body as ``model``.

    Raises:
        InvalidInputError: Not JSON, or not the fields ``model`` takes.
    """
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(data, dict):
        raise InvalidInputError("The request body must be a JSON object.")
    try:
        return model.model_validate(data, strict=False)
    except ValidationError as exc:
        raise InvalidInputError(f"Invalid request: {describe_validation_error(exc)}.") from None


def _text(content: str | list[dict[str, Any]] | None, where: str) -> str:
    """A message's content as text (text parts joined; other parts refused)."""
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise InvalidInputError(
                f"{where}: only text content is supported, got a {part.get('type')!r} part."
            )
        texts.append(part["text"])
    return "\n".join(texts)


def _tool_calls(calls: Sequence[Mapping[str, Any]], where: str) -> list[ToolCall]:
    parsed: list[ToolCall] = []
    for call in calls:
        function = call.get("function")
        if call.get("type", "function") != "function" or not isinstance(function, Mapping):
            raise InvalidInputError(f"{where}: a tool call must be a function call.")
        try:
            args = json.loads(function.get("arguments") or "{}")
        except json.JSONDecodeError:
            raise InvalidInputError(
                f"{where}: the arguments of tool call {function.get('name')!r} are not JSON."
            ) from None
        if not isinstance(args, dict) or not isinstance(function.get("name"), str):
            raise InvalidInputError(f"{where}: a tool call needs a name and object arguments.")
        parsed.append(
            ToolCall(name=function["name"], args=args, id=call.get("id"), type="tool_call")
        )
    return parsed


def to_messages(request: ChatRequest, *, max_messages: int, max_chars: int) -> list[BaseMessage]:
    """The request's messages as LangChain messages, within the server's limits.

    Raises:
        InvalidInputError: Too many messages or characters, a non-text content part, a
            tool message without ``tool_call_id``, malformed tool calls.
    """
    if len(request.messages) > max_messages:
        raise InvalidInputError(
            f"The request has {len(request.messages)} messages; this server takes at most "
            f"{max_messages}."
        )
    messages: list[BaseMessage] = []
    chars = 0
    for number, message in enumerate(request.messages):
        where = f"messages[{number}]"
        text = _text(message.content, where)
        chars += len(text)
        name = {"name": message.name} if message.name else {}
        if message.role in ("system", "developer"):
            messages.append(SystemMessage(text, **name))
        elif message.role == "user":
            messages.append(HumanMessage(text, **name))
        elif message.role == "assistant":
            calls = _tool_calls(message.tool_calls or [], where)
            chars += sum(len(json.dumps(call["args"])) for call in calls)
            messages.append(AIMessage(text, tool_calls=calls, **name))
        else:
            if not message.tool_call_id:
                raise InvalidInputError(f"{where}: a tool message needs its tool_call_id.")
            messages.append(ToolMessage(text, tool_call_id=message.tool_call_id))
    if chars > max_chars:
        raise InvalidInputError(
            f"The messages hold {chars} characters; this server takes at most {max_chars}."
        )
    return messages


def _tool_choice(request: ChatRequest) -> str | None:
    choice = request.tool_choice
    if choice is None or isinstance(choice, str):
        if choice not in (None, "none", "auto", "required"):
            raise InvalidInputError(
                f"tool_choice must be 'none', 'auto', 'required' or a function, got {choice!r}."
            )
        return choice
    name = choice.get("function", {}).get("name") if choice.get("type") == "function" else None
    if not isinstance(name, str):
        raise InvalidInputError(
            'tool_choice must be {"type": "function", "function": {"name": ...}}.'
        )
    if name not in {tool["function"]["name"] for tool in request.tools or []}:
        raise InvalidInputError(f"tool_choice names {name!r}, which is not among the tools.")
    return name


def _check_tools(tools: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    checked = []
    for number, tool in enumerate(tools):
        function = tool.get("function")
        if (
            tool.get("type") != "function"
            or not isinstance(function, Mapping)
            or not isinstance(function.get("name"), str)
            or not isinstance(function.get("parameters", {}), Mapping)
        ):
            raise InvalidInputError(
                f"tools[{number}] must be {{'type': 'function', 'function': {{'name': ..., "
                "'parameters': {...}}}}."
            )
        checked.append(dict(tool))
    return checked


def to_options(request: ChatRequest) -> dict[str, Any]:
    """The request's fields as options of the ensemble's run (or an expert's call).

    ``temperature``, ``max_tokens`` (or ``max_completion_tokens``), ``stop`` and
    ``seed`` map one to one; ``tools`` with ``tool_choice`` (a function's name, or
    ``auto``/``required``; ``none`` drops the tools) and ``parallel_tool_calls``
    make the samples vote on tool calls; ``response_format`` ``json_object`` or
    ``json_schema`` makes them vote on JSON objects, as ``with_structured_output``
    does. Only the fields the request sets are given; the pool's defaults hold for
    the others.

    Raises:
        InvalidInputError: A malformed tool, tool choice or response format, or a value
            :class:`~avengers_graph.options.AvengersOptions` refuses.
    """
    options: dict[str, Any] = {}
    if request.temperature is not None:
        options["temperature"] = request.temperature
    max_tokens = request.max_completion_tokens or request.max_tokens
    if max_tokens is not None:
        options["max_tokens"] = max_tokens
    if request.stop:
        options["stop"] = [request.stop] if isinstance(request.stop, str) else request.stop
    if request.seed is not None:
        options["seed"] = request.seed
    choice = _tool_choice(request)
    if request.tools and choice != "none":
        options["tools"] = _check_tools(request.tools)
        if choice is not None:
            options["tool_choice"] = choice
        if request.parallel_tool_calls is not None:
            options["parallel_tool_calls"] = request.parallel_tool_calls
    response_format = request.response_format or {"type": "text"}
    kind = response_format.get("type")
    if kind == "json_schema":
        schema = response_format.get("json_schema")
        if not isinstance(schema, Mapping) or not isinstance(schema.get("schema"), Mapping):
            raise InvalidInputError(
                'response_format json_schema needs {"json_schema": {"name": ..., "schema": {...}}}.'
            )
    elif kind not in ("text", "json_object"):
        raise InvalidInputError(
            f"response_format type must be 'text', 'json_object' or 'json_schema', got {kind!r}."
        )
    if kind != "text":
        options.update(
            response_format=dict(response_format), answer_format="json", structured_output=True
        )
    AvengersContext(**options)  # every value checked before anything runs
    return options


def new_id() -> str:
    """A new completion id (``chatcmpl-<hex>``)."""
    return f"chatcmpl-{uuid.uuid4().hex}"


def finish_reason(message: AIMessage | AIMessageChunk) -> str:
    """Why the answer ended: ``tool_calls``, else what the (winning) expert said."""
    if message.tool_calls:
        return "tool_calls"
    metadata = message.response_metadata
    inner = metadata.get("expert_response_metadata", metadata)
    reason = inner.get("finish_reason") if isinstance(inner, Mapping) else None
    return reason if reason in _FINISH_REASONS else "stop"


def usage(message: AIMessage | AIMessageChunk | None) -> dict[str, int]:
    """OpenAI's ``usage`` from the answer's usage metadata (summed over every expert call)."""
    counts: Mapping[str, Any] = (message.usage_metadata if message is not None else None) or {}
    prompt = int(counts.get("input_tokens", 0))
    completion_tokens = int(counts.get("output_tokens", 0))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": int(counts.get("total_tokens", prompt + completion_tokens)),
    }


def _tool_call_out(call: ToolCall, index: int) -> dict[str, Any]:
    return {
        "index": index,
        "id": call.get("id") or f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": call["name"], "arguments": json.dumps(call["args"])},
    }


def routing_extension(record: Mapping[str, Any] | None, secrets: Sequence[str]) -> dict[str, Any]:
    """The routing record as the response's ``avengers`` field.

    No sample texts (each sample's extracted answer only); failures redacted.
    """
    if not record:
        return {}
    return {
        "clusters": list(record.get("clusters", [])),
        "experts": list(record.get("experts", [])),
        "samples": [
            {"expert": sample["expert"], "answer": sample["answer"]}
            for sample in record.get("samples", [])
        ],
        "votes": dict(record.get("votes", {})),
        "confidence": record.get("confidence"),
        "posterior": record.get("posterior"),
        "winner": record.get("winner"),
        "answer_format": record.get("answer_format"),
        "question_format": record.get("question_format"),
        "failures": {
            expert: redact(str(error), secrets)
            for expert, error in record.get("failures", {}).items()
        },
        "cancelled": record.get("cancelled", 0),
        "rounds": record.get("rounds", 1),
        "seed": record.get("seed"),
    }


def completion(
    completion_id: str,
    model: str,
    message: AIMessage | AIMessageChunk,
    extension: Mapping[str, Any],
    *,
    created: int | None = None,
) -> dict[str, Any]:
    """A ``chat.completion`` object for one answer."""
    body: dict[str, Any] = {"role": "assistant", "content": message.text}
    if message.tool_calls:
        body["tool_calls"] = [
            {k: v for k, v in _tool_call_out(call, i).items() if k != "index"}
            for i, call in enumerate(message.tool_calls)
        ]
        body["content"] = message.text or None
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created or int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": body,
                "logprobs": None,
                "finish_reason": finish_reason(message),
            }
        ],
        "usage": usage(message),
        "avengers": dict(extension),
    }


def chunk(
    completion_id: str,
    model: str,
    created: int,
    *,
    delta: Mapping[str, Any] | None = None,
    finish: str | None = None,
    extra: Mapping[str, Any] | None = None,
    no_choice: bool = False,
) -> dict[str, Any]:
    """A ``chat.completion.chunk`` object (``no_choice``: the usage chunk, no choices)."""
    choices = (
        []
        if no_choice
        else [{"index": 0, "delta": dict(delta or {}), "logprobs": None, "finish_reason": finish}]
    )
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": choices,
        **(extra or {}),
    }


def delta_of(piece: AIMessageChunk) -> dict[str, Any]:
    """The ``delta`` of a stream chunk for one piece of an answer."""
    delta: dict[str, Any] = {}
    if piece.text:
        delta["content"] = piece.text
    calls = []
    for fallback, call in enumerate(piece.tool_call_chunks):
        index = call.get("index")
        entry: dict[str, Any] = {"index": index if index is not None else fallback}
        if call.get("id"):
            entry.update(id=call["id"], type="function")
        function = {
            key: value
            for key, value in (("name", call.get("name")), ("arguments", call.get("args")))
            if value
        }
        entry["function"] = function
        calls.append(entry)
    if calls:
        delta["tool_calls"] = calls
    return delta


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def error_body(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return {
        "error": {
            "message": message,
            "type": _ERROR_TYPES.get(status, "api_error"),
            "param": None,
            "code": code,
        }
    }
