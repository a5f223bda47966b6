"""Tool calling: experts get the tools, samples vote on tool calls, the winner keeps its ids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from avengers_graph import ChatAvengers, ClusterStore
from avengers_graph.voting import (
    TEXT_ANSWER_KEY,
    early_keys,
    tool_call_key,
    tool_calls_fit,
    tool_vote_key,
)
from tests.fakes import KeywordEmbeddings, ScriptedExpert, constant
from tests.unit.conftest import write_two_domain_store

QUESTION = "math: what is 2 + 3, times 4?"


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


def _last_tool_result(messages: list[BaseMessage]) -> str | None:
    results = [m for m in messages if isinstance(m, ToolMessage)]
    return str(results[-1].content) if results else None


def calls(*planned: dict[str, Any]) -> Any:
    """A tool caller that makes ``planned`` calls until a tool result comes back."""

    def call(messages: list[BaseMessage], tools: list[dict[str, Any]], seed: int | None) -> Any:
        assert {t["function"]["name"] for t in tools} == {"add", "multiply"}
        return [] if _last_tool_result(messages) else list(planned)

    return call


def _llm(experts: dict[str, ScriptedExpert], store: ClusterStore, **kwargs: Any) -> ChatAvengers:
    return ChatAvengers(
        experts=experts,
        embeddings=KeywordEmbeddings({"math": 0, "code": 1}),
        store=store,
        seed=0,
        **kwargs,
    )


@pytest.fixture
def store(tmp_path: Path) -> ClusterStore:
    return write_two_domain_store(tmp_path / "store", KeywordEmbeddings({"math": 0, "code": 1}))


def test_tool_call_key_ignores_ids_order_and_number_format() -> None:
    first = [{"name": "add", "args": {"a": 2, "b": 3.0}, "id": "x"}, {"name": "m", "args": {}}]
    second = [{"name": "m", "args": {}, "id": "y"}, {"name": "add", "args": {"b": 3, "a": 2}}]
    assert tool_call_key(first) == tool_call_key(second)
    assert tool_call_key([{"name": "add", "args": {"a": 2, "b": 4}}]) != tool_call_key(first)
    assert tool_call_key([]) is None


def test_the_majority_tool_call_wins_with_its_ids(store: ClusterStore) -> None:
    experts = {
        "mathy": ScriptedExpert(call_tools=calls({"name": "add", "args": {"a": 2, "b": 3}})),
        "bard": ScriptedExpert(call_tools=calls({"name": "add", "args": {"a": 2.0, "b": 3}})),
        "coder": ScriptedExpert(call_tools=calls({"name": "multiply", "args": {"a": 2, "b": 3}})),
    }
    llm = _llm(experts, store, top_n=3, samples=1).bind_tools([add, multiply])
    message = llm.invoke(QUESTION)
    assert isinstance(message, AIMessage)
    assert [c["name"] for c in message.tool_calls] == ["add"]
    assert message.tool_calls[0]["args"] == {"a": 2, "b": 3}
    assert message.tool_calls[0]["id"].startswith("call_")
    record = message.response_metadata["avengers"]
    assert record["answer_format"] == "tool_calls"
    assert record["winner"] == "mathy"  # ranked first among the two that agree
    assert sorted(record["votes"].values()) == [1, 2]
    # every expert received the tools in OpenAI format
    for expert in experts.values():
        assert [t["function"]["name"] for t in expert.seen[0]["tools"]] == ["add", "multiply"]


def test_parallel_calls_vote_as_a_set(store: ClusterStore) -> None:
    both = (
        {"name": "add", "args": {"a": 2, "b": 3}},
        {"name": "multiply", "args": {"a": 5, "b": 4}},
    )
    experts = {
        "mathy": ScriptedExpert(call_tools=calls(*both)),
        "bard": ScriptedExpert(call_tools=calls(*reversed(both))),
        "coder": ScriptedExpert(call_tools=calls(both[0])),
    }
    message = _llm(experts, store, top_n=3, samples=1).bind_tools([add, multiply]).invoke(QUESTION)
    assert {c["name"] for c in message.tool_calls} == {"add", "multiply"}
    assert message.response_metadata["avengers"]["confidence"] == pytest.approx(2 / 3)


def test_calls_the_tools_would_refuse_do_not_vote() -> None:
    schemas = {"add": add.tool_call_schema.model_json_schema()}
    assert schemas["add"]["required"] == ["a", "b"]
    whole = [{"name": "add", "args": {"a": 2, "b": 3}}]
    assert tool_calls_fit(whole, schemas)
    assert not tool_calls_fit([{"name": "add", "args": {"a": 2}}], schemas)
    assert not tool_calls_fit([*whole, {"name": "divide", "args": {"a": 2, "b": 3}}], schemas)
    assert tool_vote_key([{"name": "add", "args": {"a": 2}}], "", schemas) is None
    assert tool_vote_key(whole, "", schemas) == tool_call_key(whole)
    assert tool_vote_key([], "5", schemas) == TEXT_ANSWER_KEY
    # however worded, answering now is one step: the texts vote together
    assert tool_vote_key([], "It is 5.", schemas) == tool_vote_key([], "5 km", schemas)
    # without schemas (tools bound to the experts themselves) every call votes
    assert tool_vote_key([{"name": "add", "args": {"a": 2}}], "") is not None
    # early keys key them the same way
    keys = early_keys(["", ""], [[{"name": "add", "args": {}}], whole], "auto", 1, schemas=schemas)
    assert keys == [None, tool_call_key(whole)]


def test_a_call_missing_a_required_argument_loses_to_a_whole_one(store: ClusterStore) -> None:
    half = calls({"name": "add", "args": {"a": 2}})
    experts = {
        "mathy": ScriptedExpert(call_tools=half),
        "bard": ScriptedExpert(call_tools=half),
        "coder": ScriptedExpert(call_tools=calls({"name": "add", "args": {"a": 2, "b": 3}})),
    }
    message = _llm(experts, store, top_n=3, samples=1).bind_tools([add, multiply]).invoke(QUESTION)
    assert message.tool_calls[0]["args"] == {"a": 2, "b": 3}  # 1 whole call against 2 halves
    record = message.response_metadata["avengers"]
    assert record["winner"] == "coder"
    assert [s["answer"] for s in record["samples"]].count(None) == 2
    assert list(record["votes"].values()) == [1]


def test_text_answers_can_outvote_a_tool_call(store: ClusterStore) -> None:
    experts = {
        "mathy": ScriptedExpert(respond=constant("20"), call_tools=lambda m, t, s: []),
        "bard": ScriptedExpert(respond=constant("20"), call_tools=lambda m, t, s: []),
        "coder": ScriptedExpert(call_tools=calls({"name": "add", "args": {"a": 2, "b": 3}})),
    }
    message = _llm(experts, store, top_n=3, samples=1).bind_tools([add, multiply]).invoke(QUESTION)
    assert message.tool_calls == []
    assert message.text == "20"


def test_tool_choice_and_parallel_flag_reach_the_experts(store: ClusterStore) -> None:
    expert = ScriptedExpert(call_tools=calls({"name": "add", "args": {"a": 1, "b": 1}}))
    experts = {"mathy": expert, "bard": ScriptedExpert(), "coder": ScriptedExpert()}
    llm = _llm(experts, store, top_n=1, samples=1)
    llm.bind_tools([add, multiply], tool_choice="add", parallel_tool_calls=False).invoke(QUESTION)
    assert expert.seen[0]["tool_choice"] == "add"
    assert expert.seen[0]["parallel_tool_calls"] is False


def test_an_expert_without_tool_support_fails_alone(store: ClusterStore) -> None:
    experts = {
        "mathy": ScriptedExpert(),  # no call_tools: BaseChatModel.bind_tools raises
        "bard": ScriptedExpert(call_tools=calls({"name": "add", "args": {"a": 2, "b": 3}})),
        "coder": ScriptedExpert(),
    }
    message = _llm(experts, store, top_n=2, samples=1).bind_tools([add, multiply]).invoke(QUESTION)
    assert [c["name"] for c in message.tool_calls] == ["add"]
    failures = message.response_metadata["avengers"]["failures"]
    assert list(failures) == ["mathy"]
    assert "NotImplementedError" in failures["mathy"]


def test_streaming_carries_the_tool_calls(store: ClusterStore) -> None:
    experts = {
        name: ScriptedExpert(call_tools=calls({"name": "add", "args": {"a": 2, "b": 3}}))
        for name in ("mathy", "bard", "coder")
    }
    llm = _llm(experts, store, top_n=2, samples=1).bind_tools([add, multiply])
    chunks = list(llm.stream(QUESTION))
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert [c["name"] for c in merged.tool_calls] == ["add"]
    assert merged.tool_calls[0]["args"] == {"a": 2, "b": 3}


async def test_a_tool_loop_over_several_turns(store: ClusterStore) -> None:
    def plan(messages: list[BaseMessage], tools: Any, seed: int | None) -> Any:
        results = [m for m in messages if isinstance(m, ToolMessage)]
        if not results:
            return [{"name": "add", "args": {"a": 2, "b": 3}}]
        if len(results) == 1:
            return [{"name": "multiply", "args": {"a": int(str(results[0].content)), "b": 4}}]
        return []

    def answer(question: str, seed: int | None) -> str:
        return "The result is 20."

    experts = {
        name: ScriptedExpert(respond=answer, call_tools=plan) for name in ("mathy", "bard", "coder")
    }
    llm = _llm(experts, store, top_n=2, samples=2).bind_tools([add, multiply])

    async def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await llm.ainvoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_node("tools", ToolNode([add, multiply]))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    result = await builder.compile().ainvoke(
        {"messages": [HumanMessage(QUESTION)]}, {"recursion_limit": 10}
    )
    messages = result["messages"]
    assert [m.content for m in messages if isinstance(m, ToolMessage)] == ["5", "20"]
    assert messages[-1].text == "The result is 20."
    # every turn was routed on the human question, to the math experts
    assert all(
        [e["name"] for e in m.response_metadata["avengers"]["experts"]] == ["mathy", "bard"]
        for m in messages
        if isinstance(m, AIMessage)
    )


def test_create_agent_completes_a_multi_step_task(store: ClusterStore) -> None:
    from langchain.agents import create_agent

    def plan(messages: list[BaseMessage], tools: Any, seed: int | None) -> Any:
        results = [m for m in messages if isinstance(m, ToolMessage)]
        if not results:
            return [{"name": "add", "args": {"a": 2, "b": 3}}]
        if len(results) == 1:
            return [{"name": "multiply", "args": {"a": int(str(results[0].content)), "b": 4}}]
        return []

    experts = {
        name: ScriptedExpert(respond=constant("(2 + 3) * 4 = 20"), call_tools=plan)
        for name in ("mathy", "bard", "coder")
    }
    agent = create_agent(_llm(experts, store, top_n=2, samples=1), tools=[add, multiply])
    result = agent.invoke({"messages": [HumanMessage(QUESTION)]})
    messages = result["messages"]
    assert [m.name for m in messages if isinstance(m, ToolMessage)] == ["add", "multiply"]
    assert [m.content for m in messages if isinstance(m, ToolMessage)] == ["5", "20"]
    assert messages[-1].text == "(2 + 3) * 4 = 20"
