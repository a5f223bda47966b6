"""Streaming shows only the ensemble's answer: no expert's tokens leak to the caller."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, HumanMessage

from avengers_graph import ChatAvengers, ClusterStore, create_avengers_graph
from avengers_graph.chat_models import progress_to
from tests.fakes import KeywordEmbeddings, constant
from tests.unit.test_server import TokenExpert

QUESTION = "a math problem: what is 6 * 7?"


@pytest.fixture
def experts() -> dict[str, TokenExpert]:
    return {
        "mathy": TokenExpert(model="mathy", respond=constant("So the result is \\boxed{42}.")),
        "coder": TokenExpert(model="coder", respond=constant("I get \\boxed{41}.")),
        "bard": TokenExpert(model="bard", respond=constant("Clearly \\boxed{42}")),
    }


async def test_messages_mode_shows_only_the_voted_answer(
    experts: dict[str, TokenExpert], embeddings: KeywordEmbeddings, store: ClusterStore
) -> None:
    graph = create_avengers_graph(experts, embeddings, store, top_n=2, samples=2)
    streamed = [
        (message, meta["langgraph_node"])
        async for message, meta in graph.astream(
            {"messages": [HumanMessage(QUESTION)]}, stream_mode="messages"
        )
    ]
    assert [(m.text, node) for m, node in streamed] == [("So the result is \\boxed{42}.", "vote")]
    sync = list(graph.stream({"messages": [HumanMessage(QUESTION)]}, stream_mode="messages"))
    assert [(m.text, meta["langgraph_node"]) for m, meta in sync] == [
        ("So the result is \\boxed{42}.", "vote")
    ]


async def test_stream_events_show_no_expert_call(
    experts: dict[str, TokenExpert], embeddings: KeywordEmbeddings, store: ClusterStore
) -> None:
    graph = create_avengers_graph(experts, embeddings, store, top_n=2, samples=2)
    names = [
        event["event"]
        async for event in graph.astream_events(
            {"messages": [HumanMessage(QUESTION)]}, version="v2"
        )
    ]
    assert "on_chain_end" in names
    assert not [name for name in names if name.startswith("on_chat_model")]
    llm = ChatAvengers(experts=experts, embeddings=embeddings, store=store, top_n=2, samples=2)
    model_events = [
        (event["event"], event["name"])
        async for event in llm.astream_events(QUESTION, version="v2")
        if event["event"].startswith("on_chat_model")
    ]
    assert model_events == [
        ("on_chat_model_start", "ChatAvengers"),
        ("on_chat_model_stream", "ChatAvengers"),
        ("on_chat_model_end", "ChatAvengers"),
    ]


def test_other_handlers_still_see_the_expert_calls(
    experts: dict[str, TokenExpert], embeddings: KeywordEmbeddings, store: ClusterStore
) -> None:
    class Starts(BaseCallbackHandler):
        def __init__(self) -> None:
            self.tags: list[list[str]] = []

        def on_chat_model_start(self, *args: Any, tags: list[str] | None = None, **kw: Any) -> None:
            self.tags.append(tags or [])

    starts = Starts()
    graph = create_avengers_graph(experts, embeddings, store, top_n=2, samples=2)
    graph.invoke({"messages": [HumanMessage(QUESTION)]}, config={"callbacks": [starts]})
    assert len(starts.tags) == 4
    assert all("nostream" in tags for tags in starts.tags)


async def test_progress_goes_to_the_callback_without_sample_texts(
    experts: dict[str, TokenExpert], embeddings: KeywordEmbeddings, store: ClusterStore
) -> None:
    # every sample runs to the end (streams stop early by default: a fourth sample
    # still running when three agree would be dropped, and the count would vary)
    llm = ChatAvengers(
        experts=experts, embeddings=embeddings, store=store, top_n=2, samples=2, early_stop=False
    )
    seen: list[dict[str, Any]] = []
    with progress_to(seen.append):
        chunks = [chunk async for chunk in llm.astream(QUESTION)]
        sync_chunks = list(llm.stream(QUESTION))
    kinds = [event["avengers"] for event in seen]
    assert kinds == ["routing", "sample", "sample", "sample", "sample", "vote"] * 2
    assert all("text" not in event and "tool_calls" not in event for event in seen)
    assert seen[-1]["votes"] == {"42": 4}
    assert "".join(c.text for c in chunks) == "So the result is \\boxed{42}."
    assert "".join(c.text for c in sync_chunks) == "So the result is \\boxed{42}."
    outside: list[dict[str, Any]] = []
    with progress_to(outside.append):
        pass
    [chunk async for chunk in llm.astream(QUESTION)]
    assert outside == []  # only streams run inside the block report
    assert isinstance(llm.invoke(QUESTION), AIMessage)
