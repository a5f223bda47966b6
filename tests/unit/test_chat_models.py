"""ChatAvengers as a LangChain chat model: metadata, usage, streaming, batching, tracing."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langchain_core.tracers.run_collector import RunCollectorCallbackHandler

from avengers_graph import ChatAvengers, InvalidInputError
from tests.fakes import ScriptedExpert, constant
from tests.unit.conftest import write_two_domain_store

QUESTION = "a math problem: what is 6 * 7?"


@pytest.fixture
def llm(experts, embeddings, store) -> ChatAvengers:
    return ChatAvengers(
        experts=experts, embeddings=embeddings, store=store, top_n=2, samples=2, seed=3
    )


def test_invoke_returns_the_voted_answer_with_routing_metadata(llm: ChatAvengers) -> None:
    message = llm.invoke(QUESTION)
    assert isinstance(message, AIMessage)
    assert message.text == "So the result is \\boxed{42}."
    assert message.response_metadata["model_name"] == "avengers"
    record = message.response_metadata["avengers"]
    assert [e["name"] for e in record["experts"]] == ["mathy", "bard"]
    assert record["votes"] == {"42": 4}
    assert len(record["samples"]) == 4
    assert message.usage_metadata is not None
    assert message.usage_metadata["total_tokens"] == (
        message.usage_metadata["input_tokens"] + message.usage_metadata["output_tokens"]
    )
    assert message.usage_metadata["output_tokens"] == 2 * 5 + 2 * 2  # summed over 4 calls


def test_usage_sums_every_expert_call(experts, embeddings, store) -> None:
    one = ChatAvengers(experts=experts, embeddings=embeddings, store=store, top_n=1, samples=1)
    six = ChatAvengers(experts=experts, embeddings=embeddings, store=store, top_n=2, samples=3)
    used_one = one.invoke(QUESTION).usage_metadata
    used_six = six.invoke(QUESTION).usage_metadata
    assert used_one is not None
    assert used_six is not None
    assert used_six["input_tokens"] == 6 * used_one["input_tokens"]


async def test_ainvoke_matches_invoke(llm: ChatAvengers) -> None:
    sync = llm.invoke(QUESTION)
    async_ = await llm.ainvoke(QUESTION)
    assert sync.text == async_.text
    assert sync.response_metadata["avengers"] == async_.response_metadata["avengers"]


def test_stream_emits_the_voted_answer_as_a_last_chunk(llm: ChatAvengers) -> None:
    chunks = list(llm.stream(QUESTION))
    assert len(chunks) == 1
    assert isinstance(chunks[0], AIMessageChunk)
    assert chunks[0].chunk_position == "last"
    assert chunks[0].text == "So the result is \\boxed{42}."
    assert chunks[0].usage_metadata is not None
    record = chunks[0].response_metadata["avengers"]
    # streaming decides early: once three of four agree, the fourth may not be waited for
    assert list(record["votes"]) == ["42"]
    assert record["votes"]["42"] + record["cancelled"] == 4
    assert record["votes"]["42"] >= 3


async def test_astream(llm: ChatAvengers) -> None:
    chunks = [chunk async for chunk in llm.astream(QUESTION)]
    assert [c.text for c in chunks] == ["So the result is \\boxed{42}."]


def test_batch_and_abatch(experts, embeddings, store) -> None:
    import asyncio

    llm = ChatAvengers(experts=experts, embeddings=embeddings, store=store, top_n=1, samples=1)
    questions = [QUESTION, "a code question about code"]
    answers = llm.batch(questions)
    assert [a.response_metadata["avengers"]["winner"] for a in answers] == ["mathy", "coder"]
    answers = asyncio.run(llm.abatch(questions))
    assert [a.text for a in answers] == ["So the result is \\boxed{42}.", "I get \\boxed{41}."]


def test_per_call_options_override_fields(llm: ChatAvengers, experts) -> None:
    message = llm.invoke(QUESTION, top_n=1, samples=3, temperature=0.1)
    assert len(message.response_metadata["avengers"]["samples"]) == 3
    assert {call["temperature"] for call in experts["mathy"].seen} == {0.1}
    bound = llm.bind(top_n=3, samples=1)
    assert len(bound.invoke(QUESTION).response_metadata["avengers"]["samples"]) == 3


def test_stop_is_sent_to_every_expert(llm: ChatAvengers, experts) -> None:
    message = llm.invoke(QUESTION, stop=["result"])
    assert all(call.get("stop") == ["result"] for call in experts["mathy"].seen)
    samples = message.response_metadata["avengers"]["samples"]
    # mathy was cut before its number, so its samples cannot vote; bard's answer wins
    assert [s["text"] for s in samples if s["expert"] == "mathy"] == ["So the "] * 2
    assert [s["answer"] for s in samples if s["expert"] == "mathy"] == [None, None]
    assert message.text == "Clearly \\boxed{42}"


def test_unknown_call_option_is_an_explicit_error(llm: ChatAvengers) -> None:
    with pytest.raises(InvalidInputError, match="top_p"):
        llm.invoke(QUESTION, top_p=0.5)


def test_invalid_fields_fail_at_construction(experts, embeddings, store) -> None:
    with pytest.raises(
        InvalidInputError, match="ChatAvengers: top_n: Input should be greater than or equal to 1"
    ):
        ChatAvengers(experts=experts, embeddings=embeddings, store=store, top_n=0)
    with pytest.raises(InvalidInputError, match="non-empty dict"):
        ChatAvengers(experts={}, embeddings=embeddings, store=store)
    with pytest.raises(InvalidInputError, match="Unknown answer format"):
        ChatAvengers(experts=experts, embeddings=embeddings, store=store, answer_format="x")


def test_compute_cost_needs_every_expert_cost_and_routes_with_them(
    tmp_path, experts, embeddings
) -> None:
    store = write_two_domain_store(tmp_path / "costs", embeddings, mean_tokens=100)
    with pytest.raises(ValueError, match=r"missing for \['coder', 'bard'\]"):
        ChatAvengers(
            experts=experts,
            embeddings=embeddings,
            store=store,
            cost="compute",
            expert_costs={"mathy": 1.0},
        )
    llm = ChatAvengers(
        experts=experts,
        embeddings=embeddings,
        store=store,
        top_n=1,
        quality_weight=0.3,
        expert_costs={"mathy": 7.0, "coder": 1.0, "bard": 0.5},
    )
    question = "a math problem: what is 6 * 7?"
    by_tokens = llm.invoke(question).response_metadata["avengers"]["experts"]
    by_compute = llm.invoke(question, cost="compute").response_metadata["avengers"]["experts"]
    assert [e["name"] for e in by_tokens] == ["mathy"]
    assert [e["name"] for e in by_compute] == ["bard"]  # as in test_graph, by hand


def test_empty_input_is_an_explicit_error(llm: ChatAvengers, experts) -> None:
    with pytest.raises(InvalidInputError):
        llm.invoke([])
    with pytest.raises(InvalidInputError):
        llm.invoke("   ")
    assert sum(e.calls for e in experts.values()) == 0


def _walk(run: Any) -> list[Any]:
    return [run, *(r for child in run.child_runs for r in _walk(child))]


def test_graph_and_expert_runs_nest_under_the_chat_model_run(llm: ChatAvengers) -> None:
    collector = RunCollectorCallbackHandler()
    llm.invoke(QUESTION, config={"callbacks": [collector], "tags": ["outer"]})
    assert len(collector.traced_runs) == 1
    root = collector.traced_runs[0]
    assert root.name == "ChatAvengers"
    runs = _walk(root)
    graph_runs = [r for r in runs if r.name == "avengers"]
    assert len(graph_runs) == 1
    assert graph_runs[0].parent_run_id == root.id
    expert_runs = [r for r in runs if r.name == "ScriptedExpert"]
    assert len(expert_runs) == 4
    graph_descendants = {r.id for r in _walk(graph_runs[0])}
    assert all(r.id in graph_descendants for r in expert_runs)
    assert all("outer" in r.tags for r in expert_runs)  # inheritable tags reach the experts
    assert all("nostream" in r.tags for r in expert_runs)


def test_other_handlers_see_one_chat_model_call_and_count_usage_once(llm: ChatAvengers) -> None:
    from langchain_core.callbacks import BaseCallbackHandler, UsageMetadataCallbackHandler

    class Starts(BaseCallbackHandler):
        def __init__(self) -> None:
            self.starts = 0

        def on_chat_model_start(self, *args: Any, **kwargs: Any) -> None:
            self.starts += 1

    starts, usage = Starts(), UsageMetadataCallbackHandler()
    message = llm.invoke(QUESTION, config={"callbacks": [starts, usage]})
    assert starts.starts == 1
    assert message.usage_metadata is not None
    assert list(usage.usage_metadata.values()) == [message.usage_metadata]
    # inside a chain, the chain's config must not leak the handler to the experts
    from langchain_core.output_parsers import StrOutputParser

    in_chain = Starts()
    (llm | StrOutputParser()).invoke(QUESTION, config={"callbacks": [in_chain]})
    assert in_chain.starts == 1


def test_ls_params_honour_a_per_call_model(llm: ChatAvengers) -> None:
    params = llm._get_ls_params(model="ensemble-b")
    assert params["ls_model_name"] == "ensemble-b"
    assert params["ls_provider"] == "avengers"
    assert llm._get_ls_params()["ls_model_name"] == "avengers"


def test_construction_does_no_io(experts, embeddings, tmp_path) -> None:
    from avengers_graph import ClusterStore

    store = ClusterStore(path=tmp_path / "never-created")
    ChatAvengers(experts=experts, embeddings=embeddings, store=store)
    assert not (tmp_path / "never-created").exists()


def test_default_embeddings_are_local_minilm(experts, store) -> None:
    llm = ChatAvengers(experts=experts, store=store)
    assert llm.embeddings.model_name == "sentence-transformers/all-MiniLM-L6-v2"  # type: ignore[attr-defined]


def test_single_expert_pool(embeddings, store) -> None:
    llm = ChatAvengers(
        experts={"bard": ScriptedExpert(respond=constant("\\boxed{7}"))},
        embeddings=embeddings,
        store=store,
        samples=1,
    )
    message = llm.invoke([HumanMessage("math: 3 + 4")])
    assert message.text == "\\boxed{7}"


# options are read at call time ----------------------------------------------------------
def _samples(message: Any) -> int:
    return len(message.response_metadata["avengers"]["samples"])


def test_an_option_set_after_construction_applies_to_the_next_call(llm: ChatAvengers) -> None:
    assert _samples(llm.invoke(QUESTION)) == 4  # top_n=2, samples=2; the graph is built
    graph = llm.graph
    llm.samples = 1
    assert _samples(llm.invoke(QUESTION)) == 2
    llm.top_n = 1
    assert _samples(llm.invoke(QUESTION)) == 1
    assert llm.graph is graph  # options travel with the call, not in the graph


def test_a_copy_with_other_options_does_not_change_the_original(llm: ChatAvengers) -> None:
    assert _samples(llm.invoke(QUESTION)) == 4
    copy = llm.model_copy(update={"samples": 1})
    assert _samples(copy.invoke(QUESTION)) == 2
    assert _samples(llm.invoke(QUESTION)) == 4


def test_a_copy_with_other_experts_builds_its_own_graph(llm: ChatAvengers) -> None:
    assert llm.invoke(QUESTION).text == "So the result is \\boxed{42}."
    others = {
        name: ScriptedExpert(respond=constant("\\boxed{7}")) for name in ("mathy", "coder", "bard")
    }
    copy = llm.model_copy(update={"experts": others})
    assert copy.invoke(QUESTION).text == "\\boxed{7}"
    assert copy.graph is not llm.graph
    assert llm.invoke(QUESTION).text == "So the result is \\boxed{42}."


def test_an_invalid_option_set_after_construction_fails_the_call(
    llm: ChatAvengers, experts
) -> None:
    llm.samples = 0
    with pytest.raises(InvalidInputError, match="samples: Input should be greater"):
        llm.invoke(QUESTION)
    assert sum(e.calls for e in experts.values()) == 0


def test_identifying_params_follow_the_fields(llm: ChatAvengers) -> None:
    llm.samples = 5
    params = llm._identifying_params
    assert params["samples"] == 5
    assert params["experts"] == ["mathy", "coder", "bard"]
    assert llm._get_ls_params(temperature=0.2)["ls_temperature"] == 0.2
    assert llm._get_ls_params(stop=["x"])["ls_stop"] == ["x"]


def test_streaming_flag_makes_invoke_stream(experts, embeddings, store) -> None:
    llm = ChatAvengers(
        experts=experts, embeddings=embeddings, store=store, top_n=2, samples=2, streaming=True
    )
    assert llm.invoke(QUESTION).text == "So the result is \\boxed{42}."
