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
   tool's answer after its call is cut there.
3. **Assistant turns as strings.** ``ChatOpenAI`` sends the ``content`` of a turn that
   only calls tools as ``null``, and a turn made of content blocks as a list; OpenAI's
   API allows both, llama-cpp-python's server rejects the whole request (HTTP 500,
   "Input should be a valid string"), so a tool loop would fail on its second turn.
   The payload sends ``""`` and the blocks' text instead, which every server accepts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_openai import ChatOpenAI

from avengers_graph.experts.tool_parsers import (
    ToolCallParser,
    as_generation_chunk,
    bound_tool_names,
    bound_tool_parameters,
    format_hermes_tool_calls,
    parse_message_tool_calls,
)

__all__ = ["HERMES_STOP", "ChatOpenAICompatible"]

HERMES_STOP: tuple[str, ...] = ("<tool_response>",)
"""Stop sequences added when the hermes parser reads the answer: after a call, small
models often write the tool's response themselves; only the tool may."""


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

            from avengers_graph.openai_compatible import ChatOpenAICompatible

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
        if self.tool_call_parser == "hermes" and self._parses_tool_calls(kwargs):
            # a model that goes on to write the tool's answer itself is cut there
            stops = payload.get("stop") or []
            stops = [stops] if isinstance(stops, str) else list(stops)
            payload["stop"] = [*stops, *(s for s in HERMES_STOP if s not in stops)]
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
        result = super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)
        return self._parse_result(result, kwargs)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        result = await super()._agenerate(messages, stop=stop, run_manager=run_manager, **kwargs)
        return self._parse_result(result, kwargs)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        if not self._parses_tool_calls(kwargs):
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
