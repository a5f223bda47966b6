"""Offline test doubles: scripted experts and keyword embeddings.

They are real LangChain ``BaseChatModel`` / ``Embeddings`` subclasses, so the graph,
the chat model and calibration run their real code paths against them.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, PrivateAttr

Responder = Callable[[str, int | None], str]
"""(last human message text, seed) -> reply text."""
ToolCaller = Callable[[list[BaseMessage], list[dict[str, Any]], int | None], list[dict[str, Any]]]
"""(conversation, bound tools in OpenAI format, seed) -> tool calls ``{"name", "args"}``
(none: answer with text)."""


def _last_human(messages: Sequence[BaseMessage]) -> str:
    for message in reversed(messages):
        if isinstance(message, HumanMessage):
            return message.text
    return ""


class ScriptedExpert(BaseChatModel):
    """A chat model whose replies come from a Python function.

    ``fail_first`` calls raise ``fail_with`` (a transient ``ConnectionError`` by
    default) before the expert starts answering; ``always_fail`` makes every call
    raise; ``delay`` sleeps before answering (for timeout tests). With ``call_tools``,
    ``bind_tools`` works like ChatOpenAI's (tools sent as call options) and the reply
    carries the tool calls ``call_tools`` returns, each with a fresh id.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: str = "scripted"
    respond: Responder = Field(default=lambda question, seed: f"echo: {question}")
    fail_first: int = 0
    always_fail: bool = False
    fail_with: Callable[[], Exception] = Field(default=lambda: ConnectionError("server down"))
    delay: float = 0.0
    call_tools: ToolCaller | None = None
    respond_to: Callable[[list[BaseMessage], int | None], str] | None = None
    """Replies from the whole conversation (system instruction included) when set."""
    _calls: int = PrivateAttr(default=0)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _seen: list[dict[str, Any]] = PrivateAttr(default_factory=list)

    @property
    def calls(self) -> int:
        return self._calls

    @property
    def seen(self) -> list[dict[str, Any]]:
        """The kwargs of every call (temperature, seed, max_tokens...)."""
        return self._seen

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(
        self,
        tools: Sequence[Any],
        *,
        tool_choice: Any = None,
        **kwargs: Any,
    ) -> Runnable[Any, AIMessage]:
        if self.call_tools is None:
            return super().bind_tools(tools, tool_choice=tool_choice, **kwargs)
        formatted = [convert_to_openai_tool(tool) for tool in tools]
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return self.bind(tools=formatted, **kwargs)

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_model_name"] = self.model
        return params

    def _reply(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: Any
    ) -> ChatResult:
        with self._lock:
            self._calls += 1
            call = self._calls
            self._seen.append({**kwargs, "stop": stop})
        if self.always_fail or call <= self.fail_first:
            raise self.fail_with()
        tools = kwargs.get("tools")
        if tools and self.call_tools is not None:
            calls = self.call_tools(messages, tools, kwargs.get("seed"))
            if calls:
                return ChatResult(
                    generations=[
                        ChatGeneration(
                            message=AIMessage(
                                content="",
                                tool_calls=[
                                    {**c, "id": f"call_{call}_{i}", "type": "tool_call"}
                                    for i, c in enumerate(calls)
                                ],
                                response_metadata={"model_name": self.model},
                            )
                        )
                    ]
                )
        question = _last_human(messages)
        if self.respond_to is not None:
            text = self.respond_to(messages, kwargs.get("seed"))
        else:
            text = self.respond(question, kwargs.get("seed"))
        for token in stop or []:
            if token in text:
                text = text[: text.index(token)]
        prompt_tokens = sum(len(m.text.split()) for m in messages)
        output_tokens = max(1, len(text.split()))
        message = AIMessage(
            content=text,
            response_metadata={"model_name": self.model},
            usage_metadata={
                "input_tokens": prompt_tokens,
                "output_tokens": output_tokens,
                "total_tokens": prompt_tokens + output_tokens,
            },
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.delay:
            time.sleep(self.delay)
        return self._reply(messages, stop, kwargs)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.delay:
            await asyncio.sleep(self.delay)
        return self._reply(messages, stop, kwargs)


def constant(text: str) -> Responder:
    return lambda question, seed: text


class KeywordEmbeddings(Embeddings):
    """Each keyword is an axis; a text's vector counts its keywords (plus a small bias).

    Deterministic and offline, with real geometry: texts about the same keywords
    are close in cosine distance.
    """

    def __init__(
        self,
        keywords: Mapping[str, int],
        dim: int | None = None,
        model_name: str = "keyword-embeddings",
    ) -> None:
        self.keywords = dict(keywords)
        self.dim = dim or (max(self.keywords.values()) + 2)
        self.model_name = model_name
        self.calls = 0

    def _vector(self, text: str) -> list[float]:
        vector = np.zeros(self.dim)
        vector[-1] = 0.05
        lowered = text.lower()
        for word, axis in self.keywords.items():
            vector[axis] += lowered.count(word)
        return (vector / np.linalg.norm(vector)).tolist()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.calls += 1
        return [self._vector(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        self.calls += 1
        return self._vector(text)


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_QUOTED = re.compile(r"'([^']+)'|\"([^\"]+)\"")
_CAPITALISED = re.compile(r"\b([A-Z][\w-]+(?:\s+[A-Z][\w-]+)*)")


def _string_argument(text: str) -> str:
    if quoted := _QUOTED.search(text):
        return quoted.group(1) or quoted.group(2)
    names = [m.group(1) for m in _CAPITALISED.finditer(text) if m.start() > 0]
    return names[0] if names else text.rsplit(maxsplit=1)[-1].strip("?.!")


def rule_based_tool_caller(
    messages: list[BaseMessage], tools: list[dict[str, Any]], seed: int | None
) -> list[dict[str, Any]]:
    """A deterministic stand-in for a model that calls tools.

    Once a tool result is in the conversation it answers in text. Otherwise it calls
    the tool named in the last human message (else the first tool), filling integer
    and number arguments with the message's numbers in order and string arguments
    with its first quoted text (else its first capitalised name after the first word).
    """
    del seed
    last = messages[-1] if messages else None
    if last is None or not isinstance(last, HumanMessage):
        return []
    text = last.text
    chosen = next((t for t in tools if t["function"]["name"] in text), tools[0])
    numbers = iter(_NUMBER.findall(text))
    args: dict[str, Any] = {}
    properties = chosen["function"].get("parameters", {}).get("properties", {})
    for name, schema in properties.items():
        kind = schema.get("type")
        if kind in ("integer", "number"):
            value = next(numbers, "1")
            args[name] = int(float(value)) if kind == "integer" else float(value)
        elif kind == "string":
            args[name] = _string_argument(text)
        elif kind == "boolean":
            args[name] = True
    return [{"name": chosen["function"]["name"], "args": args}]
