"""``ChatOpenAI`` for OpenAI-compatible servers (vLLM, Ollama, llama.cpp, SGLang).

``ChatOpenAI`` sends the generation cap as ``max_completion_tokens``, the field that
replaced ``max_tokens`` in OpenAI's own API. Servers that implement the older
Chat Completions schema read only ``max_tokens``: llama.cpp's Python server ignores
the new field and generates up to the context limit. :class:`ChatOpenAICompatible`
is ``ChatOpenAI`` with that one field renamed back, so both the constructor's
``max_tokens`` and a per-call ``max_tokens=`` cap every server the same way.
"""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import LanguageModelInput
from langchain_openai import ChatOpenAI

__all__ = ["ChatOpenAICompatible"]


class ChatOpenAICompatible(ChatOpenAI):
    """``ChatOpenAI`` that sends the generation cap as ``max_tokens``.

    Example:
        .. code-block:: python

            from avengers_graph.openai_compatible import ChatOpenAICompatible

            expert = ChatOpenAICompatible(
                model="qwen2.5-coder-0.5b", base_url="http://127.0.0.1:8081/v1",
                api_key="EMPTY", max_tokens=384,
            )
            expert.invoke("2 + 2?", max_tokens=16)  # the server sees "max_tokens": 16
    """

    def _get_request_payload(
        self,
        input_: LanguageModelInput,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        payload: dict[str, Any] = super()._get_request_payload(input_, stop=stop, **kwargs)
        if "max_completion_tokens" in payload and "messages" in payload:
            payload["max_tokens"] = payload.pop("max_completion_tokens")
        return payload
