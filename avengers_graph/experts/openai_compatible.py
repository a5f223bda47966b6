"""``ChatOpenAI`` for OpenAI-compatible servers (vLLM, Ollama, llama.cpp, SGLang).

Three differences from ``ChatOpenAI``, each for servers that implement OpenAI's API
only in part:

1. **The generation cap.** ``ChatOpenAI`` sends it as ``max_completion_tokens``, the
   field that replaced ``max_tokens`` in OpenAI's own API. Servers that implement the
   older Chat Completions schema read only ``max_tokens``: llama.cpp's Python server
   ignores the new field and generates up to the context limit.
   :meth:`ChatOpenAICompatible._get_request_payload` renames the field back, so both
   the constructor's ``max_tokens`` and a per-call ``max_tokens=`` cap every server the
   same way.
2. **Tool calls written as text** (opt-in, ``tool_call_parser="hermes"``).
   llama-cpp-python's server renders the bound tools into the prompt of a model whose
   GGUF template supports them (Qwen2.5) but, with ``tool_choice="auto"``, returns
   the model's call as ``content``. When tools were bound for the call and the answer
   has no ``tool_calls``, :meth:`ChatOpenAICompatible._generate` (and ``_agenerate``)
   parse the content with :func:`avengers_graph.experts.tool_parsers.parse_message_tool_calls` into
   proper ``tool_calls`` (bound tool names only, argument keys their schemas declare
   only, new ``call_<uuid>`` ids; only the first call and the text before it when the
   request said ``parallel_tool_calls=False``, which such servers cannot enforce);
   answers that hold no call are left as they are. With tools bound
   and the parser on, ``stream``/``astream`` yield one chunk, the parsed answer, since
   a call can only be recognised once the whole text is there. The way back is
   coherent too: with the parser on, earlier turns' calls are sent as the same text
   (:func:`~avengers_graph.experts.tool_parsers.format_hermes_tool_calls`), not as
   ``tool_calls``, which llama.cpp's template would render with the arguments
   JSON-encoded twice (a quoted string the model then imitates). Generation stops
   at ``<tool_response>`` (:data:`HERMES_STOP`): a model that goes on to invent the
   tool's answer after its call is cut there. A call the request requires
   (``tool_choice`` ``"required"``/``"any"`` or a tool's name) is forced with a JSON
   schema of the allowed calls, since such servers do not enforce it
   (:func:`_force_call_by_schema`).
3. **Assistant turns as strings.** ``ChatOpenAI`` sends the ``content`` of a turn that
   only calls tools as ``null``, and a turn made of content blocks as a list; OpenAI's
   API allows both, llama-cpp-python's server rejects the whole request (HTTP 500,
   "Input should be a valid string"), so a tool loop would fail on its second turn.
   The payload sends ``""`` and the blocks' text instead, which every server accepts.
4. **At most as many requests as the server has slots** (``max_concurrent_requests``).
   A llama.cpp ``llama-server --parallel S`` decodes ``S`` requests together in one
   batch; a request beyond that waits inside the server, where its ``timeout`` is
   already running. :class:`RequestLimiter` holds the extra calls back in the client
   instead: sync calls from several threads and async calls from any event loop share
   one count, and a waiting call takes the slot a finishing one hands over (first
   come, first served). :meth:`~avengers_graph.local.pool.LocalPool.experts` and the
   pool files set it to each server's slots.

Which servers need which: the generation cap (1) and string turns (3) matter for
llama-cpp-python's Python server, and do no harm elsewhere. llama.cpp's own
``llama-server --jinja`` (what ``avengers local up`` runs) parses tool calls with the
model's chat template and returns them as ``tool_calls``, so the local experts use no
text parser (2); keep ``tool_call_parser="hermes"`` for servers that return a Qwen or
Hermes model's calls as text (llama-cpp-python's server, a llama-server without
``--jinja``).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_openai import ChatOpenAI
from pydantic import Field, PrivateAttr

from avengers_graph.errors import InvalidInputError
from avengers_graph.experts.tool_parsers import (
    ToolCallParser,
    as_generation_chunk,
    bound_tool_names,
    bound_tool_parameters,
    format_hermes_tool_calls,
    parse_message_tool_calls,
)

__all__ = ["HERMES_STOP", "ChatOpenAICompatible", "RequestLimiter"]

HERMES_STOP: tuple[str, ...] = ("<tool_response>",)
"""Stop sequences added when the hermes parser reads the answer: after a call, small
models often write the tool's response themselves; only the tool may."""


KEYLESS_API_KEY = "EMPTY"
"""Sent to servers that need no key (vLLM's documented convention); never a secret."""


@dataclass(eq=False)
class _Waiter:
    """A call waiting for a slot: a thread's event, or a task's future on its loop."""

    event: threading.Event | None = None
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future[None] | None = None
    granted: bool = field(default=False)
    """Set under the lock when a finishing call hands its slot to this one."""


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class RequestLimiter:
    """At most ``limit`` calls at once, counted across threads and asyncio event loops.

    A call that finds every slot taken queues; :meth:`release` hands the slot straight
    to the first call in the queue (a thread is woken through its event, a task through
    its loop), so the count never goes above ``limit``, also while sync and async calls
    share one client. A waiting call is bounded by the calls ahead of it: each holds its
    slot for one request, which its own timeout and retries bound.

    Args:
        limit: Calls allowed at once (>= 1).
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise InvalidInputError(f"A request limit must be >= 1, got {limit!r}.")
        self.limit = limit
        self._lock = threading.Lock()
        self._active = 0
        self._waiters: deque[_Waiter] = deque()

    @property
    def active(self) -> int:
        """Calls holding a slot now."""
        return self._active

    def _take(self) -> bool:
        """Take a free slot if nobody queues for one (call under the lock)."""
        if self._active < self.limit and not self._waiters:
            self._active += 1
            return True
        return False

    def acquire(self) -> None:
        """Take a slot, waiting (blocking this thread) until one is free."""
        with self._lock:
            if self._take():
                return
            event = threading.Event()
            self._waiters.append(_Waiter(event=event))
        event.wait()

    async def aacquire(self) -> None:
        """Take a slot, waiting (without blocking the loop) until one is free."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._take():
                return
            future: asyncio.Future[None] = loop.create_future()
            waiter = _Waiter(loop=loop, future=future)
            self._waiters.append(waiter)
        try:
            await future
        except asyncio.CancelledError:
            with self._lock:
                handed_over = waiter.granted
                if not handed_over:
                    self._waiters.remove(waiter)
            if handed_over:  # cancelled as the slot arrived: pass it on
                self.release()
            raise

    def release(self) -> None:
        """Give a slot back: to the first call waiting, else to the free count."""
        with self._lock:
            if not self._waiters:
                self._active -= 1
                return
            waiter = self._waiters.popleft()
            waiter.granted = True
        if waiter.event is not None:
            waiter.event.set()
            return
        if waiter.loop is not None and waiter.future is not None:
            try:
                waiter.loop.call_soon_threadsafe(_resolve, waiter.future)
            except RuntimeError:  # its loop is closed: nobody will take it, pass it on
                self.release()

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold a slot for the block (sync)."""
        self.acquire()
        try:
            yield
        finally:
            self.release()

    @asynccontextmanager
    async def aslot(self) -> AsyncIterator[None]:
        """Hold a slot for the block (async)."""
        await self.aacquire()
        try:
            yield
        finally:
            self.release()


_LIMITER_LOCK = threading.Lock()


def _force_call_by_schema(payload: dict[str, Any]) -> None:
    """Force a required (or named) tool call with a JSON schema of the allowed calls.

    For servers whose calls the hermes parser reads: llama-server (pinned llama.cpp)
    neither enforces ``tool_choice: "required"`` for Qwen2.5's template nor reads a
    named choice (it takes it for ``"auto"``). So the request says ``tool_choice:
    "none"`` (the tools are still rendered into the prompt) and carries llama.cpp's
    ``json_schema`` field: the answer can only be ``{"name": ..., "arguments": ...}`` of
    an allowed tool, which the parser then turns into the call.
    """
    choice = payload.get("tool_choice")
    tools = [t for t in payload.get("tools") or () if isinstance(t, dict) and "function" in t]
    if choice in ("required", "any"):
        allowed = tools
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        allowed = [t for t in tools if t["function"].get("name") == name]
    else:
        return
    if not allowed:
        return
    calls = [
        {
            "type": "object",
            "properties": {
                "name": {"const": tool["function"]["name"]},
                "arguments": tool["function"].get("parameters") or {"type": "object"},
            },
            "required": ["name", "arguments"],
        }
        for tool in allowed
    ]
    payload["tool_choice"] = "none"
    payload["extra_body"] = {
        **(payload.get("extra_body") or {}),
        "json_schema": calls[0] if len(calls) == 1 else {"anyOf": calls},
    }


def _as_text(content: Any) -> str:
    """An assistant turn's content as the string every server reads.

    ``None`` (a turn that only calls tools) becomes ``""``; a list of content blocks
    becomes the text of its text blocks, one after another.
    """
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(
            str(block.get("text", ""))
            for block in content
            if isinstance(block, dict) and block.get("type") == "text"
        )
    return str(content)


class ChatOpenAICompatible(ChatOpenAI):
    """``ChatOpenAI`` that sends the generation cap as ``max_tokens`` and can parse text calls.

    Example:
        .. code-block:: python

            from avengers_graph.experts.openai_compatible import ChatOpenAICompatible

            expert = ChatOpenAICompatible(
                model="qwen2.5-coder-0.5b", base_url="http://127.0.0.1:8081/v1",
                api_key="EMPTY", max_tokens=384, tool_call_parser="hermes",
            )
            expert.invoke("2 + 2?", max_tokens=16)  # the server sees "max_tokens": 16
            expert.bind_tools([calculator]).invoke("234 * 17?").tool_calls
            # [{'name': 'calculator', 'args': {'expression': '234 * 17'}, 'id': 'call_...'}]
    """

    tool_call_parser: ToolCallParser | None = None
    """Parse tool calls the server returned as text (``"hermes"``: ``{"name": ...,
    "arguments": ...}`` objects, bare, fenced or in ``<tool_call>`` tags), when tools
    are bound and the answer has no ``tool_calls``. ``None`` (default) trusts the
    server's own parsing."""

    max_concurrent_requests: int | None = Field(default=None, ge=1)
    """At most this many requests of this client (its bindings and copies included) at
    once; further calls wait in the client for a free one. Set it to the slots of a
    llama.cpp server (``--parallel``). ``None`` (default): no limit."""

    _limiter: RequestLimiter | None = PrivateAttr(default=None)

    @property
    def limiter(self) -> RequestLimiter | None:
        """The limiter of ``max_concurrent_requests`` (``None`` without a limit)."""
        if self.max_concurrent_requests is None:
            return None
        with _LIMITER_LOCK:
            if self._limiter is None or self._limiter.limit != self.max_concurrent_requests:
                self._limiter = RequestLimiter(self.max_concurrent_requests)
            return self._limiter

    @contextmanager
    def _slot(self) -> Iterator[None]:
        limiter = self.limiter
        if limiter is None:
            yield
            return
        with limiter.slot():
            yield

    @asynccontextmanager
    async def _aslot(self) -> AsyncIterator[None]:
        limiter = self.limiter
        if limiter is None:
            yield
            return
        async with limiter.aslot():
            yield

    def _get_request_payload(
        self,
        input_: LanguageModelInput,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        payload: dict[str, Any] = super()._get_request_payload(input_, stop=stop, **kwargs)
        if "messages" not in payload:
            return payload
        if "max_completion_tokens" in payload:
            payload["max_tokens"] = payload.pop("max_completion_tokens")
        if isinstance(payload.get("response_format"), Mapping):
            # sent in the body as is: langchain-openai would otherwise take the
            # structured-output path, which raises on an answer cut at its budget
            # instead of returning the text (the vote reads the JSON itself)
            payload["extra_body"] = {
                **(payload.get("extra_body") or {}),
                "response_format": payload.pop("response_format"),
            }
        if self.tool_call_parser == "hermes" and self._parses_tool_calls(kwargs):
            # a model that goes on to write the tool's answer itself is cut there
            stops = payload.get("stop") or []
            stops = [stops] if isinstance(stops, str) else list(stops)
            payload["stop"] = [*stops, *(s for s in HERMES_STOP if s not in stops)]
            _force_call_by_schema(payload)
        for message in payload["messages"]:
            if message.get("role") != "assistant":
                continue
            message["content"] = _as_text(message.get("content"))  # see the module docstring
            if self.tool_call_parser == "hermes" and message.get("tool_calls"):
                # the calls go back as the text the model wrote them in
                message["content"] = format_hermes_tool_calls(
                    message["content"], message.pop("tool_calls")
                )
        return payload

    # client-side tool-call parsing ----------------------------------------------------
    def _parses_tool_calls(self, kwargs: Mapping[str, Any]) -> bool:
        """Whether this call's answer goes through the tool-call parser."""
        return (
            self.tool_call_parser is not None
            and bool(bound_tool_names(kwargs.get("tools")))
            and kwargs.get("tool_choice") != "none"
        )

    def _parse_result(self, result: ChatResult, kwargs: Mapping[str, Any]) -> ChatResult:
        """``result`` with its messages' text calls parsed, when this call parses them."""
        if not self._parses_tool_calls(kwargs):
            return result
        tools = bound_tool_parameters(kwargs.get("tools"))
        single = kwargs.get("parallel_tool_calls") is False
        return ChatResult(
            generations=[
                ChatGeneration(
                    message=parse_message_tool_calls(
                        generation.message, self.tool_call_parser, tools, single=single
                    ),
                    generation_info=generation.generation_info,
                )
                for generation in result.generations
            ],
            llm_output=result.llm_output,
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        with self._slot():
            result = super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)
        return self._parse_result(result, kwargs)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        async with self._aslot():
            result = await super()._agenerate(
                messages, stop=stop, run_manager=run_manager, **kwargs
            )
        return self._parse_result(result, kwargs)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        if not self._parses_tool_calls(kwargs):
            with self._slot():  # held until the stream ends or is closed
                yield from super()._stream(messages, stop=stop, run_manager=run_manager, **kwargs)
            return
        for option in ("stream", "stream_usage"):  # streaming-only options
            kwargs.pop(option, None)
        chunk = as_generation_chunk(self._generate(messages, stop, run_manager, **kwargs))
        if run_manager is not None:
            run_manager.on_llm_new_token(chunk.text, chunk=chunk)
        yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        if not self._parses_tool_calls(kwargs):
            async with self._aslot():
                async for chunk in super()._astream(
                    messages, stop=stop, run_manager=run_manager, **kwargs
                ):
                    yield chunk
            return
        for option in ("stream", "stream_usage"):
            kwargs.pop(option, None)
        result = await self._agenerate(messages, stop, run_manager, **kwargs)
        chunk = as_generation_chunk(result)
        if run_manager is not None:
            await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
        yield chunk
