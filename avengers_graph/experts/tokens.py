"""Token counts as the experts' servers see them, for ``get_num_tokens`` and ``trim_messages``.

:class:`TokenCounter` counts a text, or a conversation, for a pool of experts:

1. Each expert that speaks to an OpenAI-compatible server (a ``ChatOpenAI`` with a
   ``base_url``) is asked through llama.cpp's own HTTP API: ``POST /apply-template``
   renders the conversation with the model's chat template (tools included, when the
   template takes them), ``POST /tokenize`` counts the tokens of the text. Experts
   sharing a server ask it once.
2. An expert whose server has no such endpoint (vLLM, Ollama, a hosted API: a 404,
   remembered for the server), whose server does not answer (that count only), or
   that is not an OpenAI-compatible client, counts with the documented estimate
   :func:`estimate_text_tokens` / :func:`estimate_message_tokens`: LangChain's
   ``count_tokens_approximately`` (4 characters per token, 3 tokens per message for its
   role and separators).
3. The count is the largest over the experts: a conversation trimmed to ``n`` tokens
   fits every expert's ``n``.

Every request is bounded by ``timeout``; nothing is asked at construction.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, convert_to_openai_messages
from langchain_core.messages.utils import count_tokens_approximately

__all__ = [
    "CHARS_PER_TOKEN",
    "TokenCounter",
    "estimate_message_tokens",
    "estimate_text_tokens",
    "server_root",
]

_log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4.0
"""The estimate's characters per token (LangChain's ``count_tokens_approximately``)."""
DEFAULT_TIMEOUT_S = 5.0
"""Seconds one tokenizer request may take."""
_NO_ENDPOINT = frozenset({404, 405, 501})
"""Statuses of a server without the endpoint: it is not asked again. Other failures
(refused, timed out, 5xx) fall back to the estimate for that count only."""


def estimate_text_tokens(text: str) -> int:
    """The estimate for a text: one token per :data:`CHARS_PER_TOKEN` characters."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def estimate_message_tokens(
    messages: Sequence[BaseMessage], tools: Sequence[Any] | None = None
) -> int:
    """The estimate for a conversation (``count_tokens_approximately``)."""
    return count_tokens_approximately(
        messages, chars_per_token=CHARS_PER_TOKEN, tools=list(tools) if tools else None
    )


def server_root(model: BaseChatModel) -> str | None:
    """The root URL of an OpenAI-compatible client's server (``.../v1`` cut off), if any."""
    base = getattr(model, "openai_api_base", None)
    if not isinstance(base, str) or not base:
        return None
    return base.rstrip("/").removesuffix("/v1")


def _api_key(model: BaseChatModel) -> str | None:
    key = getattr(model, "openai_api_key", None)
    if key is None:
        return None
    value = key.get_secret_value() if hasattr(key, "get_secret_value") else str(key)
    return value or None


class TokenCounter:
    """Counts tokens with the experts' own tokenizers (see the module docstring).

    Args:
        models: The experts' chat models (the same object twice counts once).
        timeout: Seconds each tokenizer request may take.
    """

    def __init__(
        self, models: Iterable[BaseChatModel], *, timeout: float = DEFAULT_TIMEOUT_S
    ) -> None:
        unique = {id(model): model for model in models}
        self.models: list[BaseChatModel] = list(unique.values())
        self.timeout = timeout
        self._unsupported: set[str] = set()
        self._lock = threading.Lock()

    def count_text(self, text: str) -> int:
        """Tokens of ``text`` with no chat template: the largest count over the experts."""
        return self._largest(
            lambda root, key: self._tokenize(root, key, text),
            lambda: estimate_text_tokens(text),
        )

    def count_messages(
        self, messages: Sequence[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """Tokens of the prompt the experts read for ``messages`` (their chat templates)."""
        payload: dict[str, Any] = {"messages": convert_to_openai_messages(list(messages))}
        if tools:
            payload["tools"] = list(tools)

        def by_server(root: str, key: str | None) -> int | None:
            rendered = self._post(root, key, "/apply-template", payload)
            prompt = rendered.get("prompt") if rendered is not None else None
            return self._tokenize(root, key, prompt) if isinstance(prompt, str) else None

        return self._largest(by_server, lambda: estimate_message_tokens(messages, tools))

    def _largest(
        self,
        by_server: Callable[[str, str | None], int | None],
        estimate: Callable[[], int],
    ) -> int:
        counts: dict[str, int] = {}
        estimated: int | None = None
        for model in self.models:
            root = server_root(model)
            if root is not None and root in counts:
                continue
            count = None
            if root is not None and root not in self._unsupported:
                count = by_server(root, _api_key(model))
            if count is not None and root is not None:
                counts[root] = count
            elif estimated is None:
                estimated = estimate()
        values = [*counts.values(), *([] if estimated is None else [estimated])]
        return max(values) if values else estimate()

    def _tokenize(self, root: str, key: str | None, text: str) -> int | None:
        answer = self._post(root, key, "/tokenize", {"content": text, "add_special": False})
        tokens = answer.get("tokens") if answer is not None else None
        return len(tokens) if isinstance(tokens, list) else None

    def _post(
        self, root: str, key: str | None, path: str, payload: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The JSON answer of ``root + path``, or ``None`` (the server is then skipped)."""
        import httpx

        headers = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            response = httpx.post(root + path, json=payload, headers=headers, timeout=self.timeout)
            response.raise_for_status()
            answer = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            missing = (
                isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code in _NO_ENDPOINT
            )
            if missing:  # not llama.cpp: never ask this server again
                with self._lock:
                    self._unsupported.add(root)
            _log.debug("No token count from %s%s (%s): estimating.", root, path, exc)
            return None
        return answer if isinstance(answer, dict) else None
