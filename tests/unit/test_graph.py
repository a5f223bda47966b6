"""The Avengers graph with scripted experts: fan-out, routing, voting, failures, parity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.types import RetryPolicy
from syrupy.assertion import SnapshotAssertion

from avengers_graph import (
    AllExpertsFailedError,
    AvengersContext,
    ClusterStore,
    EmbeddingMismatchError,
    EmptyStoreError,
    InvalidInputError,
    build_avengers_graph,
    create_avengers_graph,
)
from avengers_graph.contract import contract
from avengers_graph.graph import is_transient_error
from tests.fakes import KeywordEmbeddings, ScriptedExpert, constant
from tests.unit.conftest import write_two_domain_store

MATH = {"messages": [HumanMessage("a math problem: what is 6 * 7?")]}
CODE = {"messages": [HumanMessage("a code question about code")]}


def graph(experts: dict[str, Any], embeddings: Any, store: ClusterStore, **options: Any) -> Any:
    options.setdefault("seed", 7)
    return create_avengers_graph(experts, embeddings, store, **options)


def test_fan_out_yields_top_n_times_samples(experts, embeddings, store) -> None:
    out = graph(experts, embeddings, store, top_n=2, samples=3).invoke(MATH)
    record = out["avengers"]
    assert len(record["samples"]) == 6
    assert [e["name"] for e in record["experts"]] == ["mathy", "bard"]
    assert sum(e.calls for e in experts.values()) == 6
    assert experts["coder"].calls == 0
    assert {s["expert"] for s in record["samples"]} == {"mathy", "bard"}


@pytest.mark.parametrize(("top_n", "samples"), [(1, 1), (1, 4), (3, 2), (3, 5)])
def test_fan_out_size_for_several_shapes(experts, embeddings, store, top_n, samples) -> None:
    out = graph(experts, embeddings, store, top_n=top_n, samples=samples).invoke(MATH)
    assert len(out["avengers"]["samples"]) == top_n * samples
    assert sum(e.calls for e in experts.values()) == top_n * samples


def test_routes_each_domain_to_its_expert(experts, embeddings, store) -> None:
    g = graph(experts, embeddings, store, top_n=1, samples=1)
    math, code = g.invoke(MATH)["avengers"], g.invoke(CODE)["avengers"]
    assert math["clusters"][0]["id"] == 0
    assert math["experts"][0]["name"] == "mathy"
    assert code["clusters"][0]["id"] == 1
    assert code["experts"][0]["name"] == "coder"
    assert code["votes"] == {"41": 1}


def test_output_appends_winner_with_summed_usage(experts, embeddings, store) -> None:
    out = graph(experts, embeddings, store, top_n=2, samples=2).invoke(MATH)
    assert len(out["messages"]) == 2
    answer = out["messages"][-1]
    assert isinstance(answer, AIMessage)
    assert answer.text == "So the result is \\boxed{42}."
    assert answer.response_metadata["model_name"] == "avengers"
    assert answer.response_metadata["expert"] == "mathy"
    # 4 calls; ScriptedExpert reports len(words) tokens: prompt 8 plus the prompt
    # contract's instruction for a number question, answer 5 / 2 words
    instruction = contract(MATH["messages"], "reason").instruction or ""
    assert answer.usage_metadata is not None
    assert answer.usage_metadata["input_tokens"] == 4 * (8 + len(instruction.split()))
    assert answer.usage_metadata["output_tokens"] == 2 * 5 + 2 * 2
    record = out["avengers"]
    assert record["votes"] == {"42": 4}
    assert record["confidence"] == 1.0
    assert record["answer_format"] == "number"
    assert set(record) >= {"clusters", "experts", "samples", "votes", "confidence", "failures"}


def test_majority_beats_the_top_expert(embeddings, store) -> None:
    experts = {
        "mathy": ScriptedExpert(respond=constant("\\boxed{1}")),
        "coder": ScriptedExpert(respond=constant("\\boxed{2}")),
        "bard": ScriptedExpert(respond=constant("\\boxed{2}")),
    }
    out = graph(experts, embeddings, store, top_n=3, samples=1).invoke(MATH)
    assert out["avengers"]["votes"] == {"1": 1, "2": 2}
    assert out["messages"][-1].text == "\\boxed{2}"
    assert out["avengers"]["winner"] == "bard"  # bard (rank 1) outranks coder (rank 2)
    assert out["avengers"]["confidence"] == pytest.approx(2 / 3)


def test_tie_goes_to_the_better_ranked_expert(embeddings, store) -> None:
    experts = {
        "mathy": ScriptedExpert(respond=constant("\\boxed{1}")),
        "coder": ScriptedExpert(respond=constant("\\boxed{2}")),
        "bard": ScriptedExpert(respond=constant("\\boxed{3}")),
    }
    out = graph(experts, embeddings, store, top_n=2, samples=2).invoke(CODE)
    # code cluster: coder rank 0, bard rank 1; 2 votes each -> coder's answer
    assert out["avengers"]["votes"] == {"2": 2, "3": 2}
    assert out["messages"][-1].text == "\\boxed{2}"


def test_each_sample_has_its_own_seed_and_the_sampling_options(experts, embeddings, store) -> None:
    g = graph(experts, embeddings, store, top_n=2, samples=3, temperature=0.3, max_tokens=64)
    g.invoke(MATH)
    seen = experts["mathy"].seen + experts["bard"].seen
    assert len({call["seed"] for call in seen}) == 6
    assert {call["temperature"] for call in seen} == {0.3}
    assert {call["max_tokens"] for call in seen} == {64}


def test_same_seed_same_record_and_sync_async_parity(experts, embeddings, store) -> None:
    import asyncio

    g = graph(experts, embeddings, store, top_n=2, samples=3)
    sync = g.invoke(MATH)["avengers"]
    again = g.invoke(MATH)["avengers"]
    async_ = asyncio.run(g.ainvoke(MATH))["avengers"]
    assert sync == again == async_


async def test_async_path_uses_async_expert_calls(embeddings, store) -> None:
    experts = {"mathy": ScriptedExpert(respond=constant("\\boxed{5}"), delay=0.01)}
    out = await graph(experts, embeddings, store, top_n=1, samples=4).ainvoke(MATH)
    assert out["avengers"]["votes"] == {"5": 4}


def test_context_overrides_per_run(experts, embeddings, store) -> None:
    g = graph(experts, embeddings, store, top_n=2, samples=3)
    out = g.invoke(MATH, context=AvengersContext(top_n=1, samples=2))
    assert len(out["avengers"]["samples"]) == 2
    out = g.invoke(MATH, context={"top_n": 3, "samples": 1})
    assert len(out["avengers"]["samples"]) == 3


def test_bad_context_values_are_explicit_errors(experts, embeddings, store) -> None:
    g = graph(experts, embeddings, store)
    with pytest.raises(InvalidInputError, match="top_n"):
        g.invoke(MATH, context={"top_n": 0})


def test_compute_cost_routes_by_tokens_times_the_expert_cost(tmp_path, embeddings) -> None:
    store = write_two_domain_store(tmp_path / "costs", embeddings, mean_tokens=100)
    experts = {
        name: ScriptedExpert(respond=constant(f"\\boxed{{{n}}}"))
        for n, name in enumerate(["mathy", "coder", "bard"])
    }
    costs = {"mathy": 7.0, "coder": 1.0, "bard": 0.5}
    g = graph(experts, embeddings, store, top_n=1, quality_weight=0.3, expert_costs=costs)
    # every expert writes 100 tokens: by tokens (or seconds, all 0) accuracy decides
    assert [e["name"] for e in g.invoke(MATH)["avengers"]["experts"]] == ["mathy"]
    assert g.invoke(MATH, context={"cost": "tokens"})["avengers"]["experts"][0]["name"] == "mathy"
    # compute 700 / 100 / 50: mathy 0.3*1 + 0.7*0 = 0.3, coder 0 + 0.7*6/7 = 0.6,
    # bard 0.3/3 + 0.7*13/14 = 0.75
    routed = g.invoke(MATH, context={"cost": "compute"})["avengers"]["experts"]
    assert [e["name"] for e in routed] == ["bard"]
    built = graph(
        experts, embeddings, store, top_n=1, quality_weight=0.3, cost="compute", expert_costs=costs
    )
    assert built.invoke(MATH)["avengers"]["experts"][0]["name"] == "bard"


def test_missing_or_unknown_expert_costs_are_explicit_errors(experts, embeddings, store) -> None:
    with pytest.raises(InvalidInputError, match=r"missing for \['coder', 'bard'\]"):
        graph(experts, embeddings, store, cost="compute", expert_costs={"mathy": 1.0})
    with pytest.raises(InvalidInputError, match=r"not in the pool: \['gpt'\]"):
        graph(experts, embeddings, store, expert_costs={"gpt": 1.0})
    with pytest.raises(InvalidInputError, match="cost must be one of"):
        graph(experts, embeddings, store, cost="dollars")
    g = graph(experts, embeddings, store, quality_weight=0.5)
    with pytest.raises(InvalidInputError, match="missing for"):
        g.invoke(MATH, context={"cost": "compute"})
    assert sum(e.calls for e in experts.values()) == 0


def test_failing_expert_loses_its_samples_and_the_vote_goes_on(embeddings, store) -> None:
    experts = {
        "mathy": ScriptedExpert(always_fail=True, fail_with=lambda: ValueError("bad request")),
        "coder": ScriptedExpert(respond=constant("\\boxed{41}")),
        "bard": ScriptedExpert(respond=constant("\\boxed{42}")),
    }
    out = graph(experts, embeddings, store, top_n=2, samples=2).invoke(MATH)
    record = out["avengers"]
    assert record["failures"] == {"mathy": "ValueError: bad request"}
    assert [s["expert"] for s in record["samples"]] == ["bard", "bard"]
    assert record["votes"] == {"42": 2}
    assert experts["mathy"].calls == 2  # a programming error is not retried


def test_transient_errors_are_retried(embeddings, store) -> None:
    experts = {"mathy": ScriptedExpert(respond=constant("\\boxed{42}"), fail_first=1)}
    g = graph(experts, embeddings, store, top_n=1, samples=1, max_retries=2)
    g = g.with_config(recursion_limit=25)
    out = g.invoke(MATH)
    assert out["avengers"]["failures"] == {}
    assert out["avengers"]["votes"] == {"42": 1}
    assert experts["mathy"].calls == 2


def test_max_retries_is_a_per_run_option(embeddings, store) -> None:
    no_wait = RetryPolicy(
        max_attempts=11, initial_interval=0.0, jitter=False, retry_on=is_transient_error
    )
    experts = {
        "mathy": ScriptedExpert(always_fail=True),  # ConnectionError: transient
        "bard": ScriptedExpert(respond=constant("\\boxed{42}")),
    }
    g = build_avengers_graph(
        experts, embeddings, store, top_n=2, samples=1, seed=1, retry_policy=no_wait
    ).compile()
    g.invoke(MATH, context={"max_retries": 0})
    assert experts["mathy"].calls == 1
    g.invoke(MATH, context={"max_retries": 3})
    assert experts["mathy"].calls == 1 + 4
    g.invoke(MATH)  # the graph's default: 2
    assert experts["mathy"].calls == 1 + 4 + 3


def test_transient_errors_give_up_after_max_retries(embeddings, store) -> None:
    experts = {
        "mathy": ScriptedExpert(always_fail=True),  # ConnectionError: transient
        "bard": ScriptedExpert(respond=constant("\\boxed{42}")),
    }
    no_wait = RetryPolicy(
        max_attempts=2, initial_interval=0.0, jitter=False, retry_on=is_transient_error
    )
    builder = build_avengers_graph(
        experts, embeddings, store, top_n=2, samples=1, seed=1, retry_policy=no_wait
    )
    out = builder.compile().invoke(MATH)
    assert out["avengers"]["failures"] == {"mathy": "ConnectionError: server down"}
    assert experts["mathy"].calls == 2  # first attempt + 1 retry


def test_all_experts_failing_names_each_expert(embeddings, store) -> None:
    experts = {
        "mathy": ScriptedExpert(always_fail=True, fail_with=lambda: ValueError("boom")),
        "bard": ScriptedExpert(always_fail=True, fail_with=lambda: TypeError("bad kwarg")),
    }
    with pytest.raises(AllExpertsFailedError) as info:
        graph(experts, embeddings, store, top_n=2, samples=1).invoke(MATH)
    assert info.value.failures == {"mathy": "ValueError: boom", "bard": "TypeError: bad kwarg"}
    assert "mathy: ValueError: boom" in str(info.value)
    assert "bard: TypeError: bad kwarg" in str(info.value)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_timeout_counts_as_a_failure(embeddings, store, mode) -> None:
    import asyncio

    experts = {
        "mathy": ScriptedExpert(respond=constant("\\boxed{1}"), delay=2.0),
        "bard": ScriptedExpert(respond=constant("\\boxed{42}")),
    }
    g = graph(experts, embeddings, store, top_n=2, samples=1, timeout=0.05)
    out = g.invoke(MATH) if mode == "sync" else asyncio.run(g.ainvoke(MATH))
    assert out["avengers"]["failures"] == {"mathy": "ExpertTimeoutError: no answer within 0.05 s"}
    assert out["avengers"]["votes"] == {"42": 1}


def test_is_transient_error_classification() -> None:
    class StatusError(Exception):
        def __init__(self, status_code: int) -> None:
            self.status_code = status_code

    assert is_transient_error(ConnectionError("refused"))
    assert is_transient_error(StatusError(503))
    assert is_transient_error(StatusError(429))
    assert not is_transient_error(StatusError(400))
    assert not is_transient_error(StatusError(401))
    assert not is_transient_error(ValueError("bug"))
    assert not is_transient_error(TypeError("bug"))


def test_free_text_is_voted_by_embedding_similarity(embeddings, store) -> None:
    experts = {
        "mathy": ScriptedExpert(
            respond=constant("math math math is lovely and long enough to be prose today")
        ),
        "coder": ScriptedExpert(
            respond=constant("code code code is what I would write about here instead of math")
        ),
        "bard": ScriptedExpert(
            respond=constant("math math math is lovely, long enough to be prose, today!")
        ),
    }
    out = graph(experts, embeddings, store, top_n=3, samples=1).invoke(MATH)
    record = out["avengers"]
    assert record["answer_format"] == "semantic"
    assert out["messages"][-1].text.startswith("math math math")
    assert max(record["votes"].values()) == 2


def test_checkpointed_conversation_starts_each_turn_clean(experts, embeddings, store) -> None:
    g = graph(experts, embeddings, store, top_n=2, samples=2, checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "t"}}
    g.invoke(MATH, config)
    out = g.invoke(CODE, config)
    assert len(out["messages"]) == 4
    assert len(out["avengers"]["samples"]) == 4
    assert out["avengers"]["experts"][0]["name"] == "coder"


def test_usable_as_a_node_in_a_parent_graph(experts, embeddings, store) -> None:
    parent = StateGraph(MessagesState)
    parent.add_node("ensemble", graph(experts, embeddings, store, top_n=1, samples=1))
    parent.add_edge(START, "ensemble")
    out = parent.compile().invoke(MATH)
    assert [m.type for m in out["messages"]] == ["human", "ai"]
    assert out["messages"][-1].text == "So the result is \\boxed{42}."


def test_a_parent_graph_passes_its_context_to_the_ensemble(experts, embeddings, store) -> None:
    parent = StateGraph(MessagesState, context_schema=AvengersContext)
    parent.add_node("ensemble", graph(experts, embeddings, store, top_n=2, samples=3))
    parent.add_edge(START, "ensemble")
    out = parent.compile().invoke(MATH, context={"top_n": 1, "samples": 2})
    assert sum(e.calls for e in experts.values()) == 2
    assert [m.type for m in out["messages"]] == ["human", "ai"]


@pytest.mark.parametrize("messages", [[], [AIMessage("no question")], [HumanMessage("")]])
def test_malformed_messages_are_rejected(experts, embeddings, store, messages) -> None:
    with pytest.raises(InvalidInputError):
        graph(experts, embeddings, store).invoke({"messages": messages})
    assert sum(e.calls for e in experts.values()) == 0


def test_store_built_with_other_embeddings_is_refused(experts, store) -> None:
    other = KeywordEmbeddings({"math": 0, "code": 1}, model_name="another-model")
    with pytest.raises(EmbeddingMismatchError, match="another-model"):
        graph(experts, other, store).invoke(MATH)
    wider = KeywordEmbeddings({"math": 0, "code": 1}, dim=8)
    with pytest.raises(EmbeddingMismatchError):
        graph(experts, wider, store).invoke(MATH)


def test_empty_store_is_an_explicit_error(experts, embeddings, tmp_path: Path) -> None:
    with pytest.raises(EmptyStoreError, match="calibrate"):
        graph(experts, embeddings, ClusterStore(path=tmp_path / "empty")).invoke(MATH)


def test_pool_validation(embeddings, store) -> None:
    with pytest.raises(InvalidInputError):
        create_avengers_graph({}, embeddings, store)
    with pytest.raises(InvalidInputError, match="not a LangChain BaseChatModel"):
        create_avengers_graph({"x": object()}, embeddings, store)  # type: ignore[dict-item]
    with pytest.raises(InvalidInputError, match="Unknown answer format"):
        create_avengers_graph({"x": ScriptedExpert()}, embeddings, store, answer_format="nope")


def test_mermaid_snapshot(experts, embeddings, store, snapshot: SnapshotAssertion) -> None:
    mermaid = graph(experts, embeddings, store).get_graph().draw_mermaid()
    for node in ("embed", "locate_cluster", "select_experts", "sample", "vote"):
        assert node in mermaid
    assert mermaid == snapshot


@pytest.mark.parametrize(
    ("first", "follow_up", "cluster"),
    [
        ("a math problem: 6 * 7?", "and the next one?", 0),
        ("a code question about code", "and the next one?", 1),
        ("a math problem: 6 * 7?", "now some code", 1),  # the question itself dominates
    ],
)
def test_a_follow_up_is_routed_with_its_context(
    experts, embeddings, store, first, follow_up, cluster
) -> None:
    chat = {"messages": [HumanMessage(first), AIMessage("done"), HumanMessage(follow_up)]}
    record = graph(experts, embeddings, store, top_n=1, samples=1).invoke(chat)["avengers"]
    assert record["clusters"][0]["id"] == cluster


def test_context_weight_zero_routes_on_the_last_message_alone(experts, embeddings, store) -> None:
    chat = {
        "messages": [HumanMessage("a code question about code"), HumanMessage("a math problem")]
    }
    g = graph(experts, embeddings, store, top_n=1, samples=1)
    alone = g.invoke(chat, context={"context_weight": 0})["avengers"]["clusters"][0]
    blended = g.invoke(chat)["avengers"]["clusters"][0]
    assert alone["id"] == blended["id"] == 0
    assert alone["distance"] < blended["distance"]  # the code context pulls it away a little
