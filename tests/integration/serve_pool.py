"""A pool of instant fake experts for ``avengers serve --factory`` in the server tests.

``avengers serve --factory tests.integration.serve_pool:instant_avengers`` serves it in
a process of its own. The experts answer at once, except that a question holding
``sleep N`` makes them wait ``N`` seconds (a request in flight, for the limit and
shutdown tests); with tools bound they call the first tool; with a response format they
answer JSON. The calibration is written into a real Chroma store on disk
(``AVENGERS_STORE_PATH``) on first use, so feedback through the API is persisted.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from avengers_graph import ChatAvengers, ClusterStore
from tests.fakes import KeywordEmbeddings, ScriptedExpert
from tests.unit.conftest import write_two_domain_store

KEYWORDS = {"math": 0, "code": 1}


class InstantExpert(ScriptedExpert):
    """Answers at once (or after ``sleep N``), with a tool call or JSON when asked."""

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        question = next((m.text for m in reversed(messages) if isinstance(m, HumanMessage)), "")
        if match := re.search(r"sleep (\d+(?:\.\d+)?)", question):
            await asyncio.sleep(float(match.group(1)))
        if kwargs.get("response_format"):
            return self._json(messages, stop, kwargs)
        return self._reply(messages, stop, kwargs)

    @staticmethod
    def _json(messages: list[BaseMessage], stop: list[str] | None, kwargs: Any) -> ChatResult:
        del messages, stop, kwargs
        message = AIMessage(
            json.dumps({"answer": 42}),
            usage_metadata={"input_tokens": 5, "output_tokens": 5, "total_tokens": 10},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])


def _call_first_tool(messages: Any, tools: Any, seed: int | None) -> list[dict[str, Any]]:
    return [{"name": tools[0]["function"]["name"], "args": {"city": "Paris"}}]


def _store(embeddings: KeywordEmbeddings) -> ClusterStore:
    path = Path(os.environ["AVENGERS_STORE_PATH"])
    store = ClusterStore(path=path, name="serve-test")
    if not store.is_empty():
        return store
    return write_two_domain_store(path, embeddings, name="serve-test")


def instant_avengers() -> ChatAvengers:
    """The instant pool: mathy and bard answer 42, coder 41 (the math cluster asks mathy)."""
    embeddings = KeywordEmbeddings(KEYWORDS)
    replies = {
        "mathy": "So it is \\boxed{42}.",
        "coder": "I get \\boxed{41}.",
        "bard": "\\boxed{42}",
    }
    experts = {
        name: InstantExpert(
            model=name, respond=lambda q, s, text=text: text, call_tools=_call_first_tool
        )
        for name, text in replies.items()
    }
    return ChatAvengers(
        experts=experts, embeddings=embeddings, store=_store(embeddings), top_n=2, samples=2
    )
