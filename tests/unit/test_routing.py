"""Routing math against hand-computed cases (ALGORITHM.md, "Inference")."""

from __future__ import annotations

import math

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from avengers_graph.errors import InvalidInputError
from avengers_graph.routing import (
    ROUTING_HEAD_WORDS,
    ROUTING_TAIL_WORDS,
    ClusterMatch,
    blend,
    check_cost,
    cluster_weights,
    compact,
    expert_cost,
    match_clusters,
    question_text,
    rank_experts,
    routing_context,
    routing_text,
    score_experts,
    select_experts,
    smoothed_accuracy,
)
from avengers_graph.stores.chroma import ExpertStats


def s(correct: int, total: int, seconds: float = 0.0, tokens: float = 0.0) -> ExpertStats:
    return ExpertStats(correct=correct, total=total, mean_seconds=seconds, mean_tokens=tokens)


# cluster 0: A 0.9 > C 0.7 > B 0.5 ; cluster 1: B 0.8 > A 0.6, C has no statistics
STATS = {
    0: {"A": s(9, 10), "B": s(5, 10), "C": s(7, 10)},
    1: {"B": s(8, 10), "A": s(6, 10)},
}


def test_cluster_weights_softmax_by_hand() -> None:
    # logits -5 * [0.1, 0.3] = [-0.5, -1.5]; softmax = [1/(1+e^-1), e^-1/(1+e^-1)]
    weights = cluster_weights([0.1, 0.3], beta=5.0)
    assert weights == pytest.approx([0.7310585786, 0.2689414214])


def test_cluster_weights_beta_zero_is_uniform_and_large_beta_is_stable() -> None:
    assert cluster_weights([0.1, 0.5, 0.9], beta=0.0) == pytest.approx([1 / 3] * 3)
    weights = cluster_weights([0.0, 2.0], beta=1000.0)  # exp(-2000) must not underflow to nan
    assert weights == pytest.approx([1.0, 0.0])
    assert all(math.isfinite(w) for w in weights)


@pytest.mark.parametrize(
    ("distances", "beta"), [([], 1.0), ([0.1], -1.0), ([float("nan")], 1.0), ([0.1], math.inf)]
)
def test_cluster_weights_rejects_bad_input(distances: list[float], beta: float) -> None:
    with pytest.raises(InvalidInputError):
        cluster_weights(distances, beta)


def test_rank_experts_competition_ranking_with_ties() -> None:
    assert rank_experts(STATS[0]) == {"A": 0, "C": 1, "B": 2}
    tied = {"A": s(7, 10), "B": s(7, 10), "C": s(2, 10)}
    assert rank_experts(tied) == {"A": 0, "B": 0, "C": 2}


def test_score_experts_two_clusters_by_hand() -> None:
    clusters = match_clusters([(0, 0.1), (1, 0.3)], beta=5.0)
    w0, w1 = 0.7310585786, 0.2689414214
    scores = {e.name: e.score for e in score_experts(clusters, STATS, ["A", "B", "C"])}
    # A: rank 0 then 1; B: rank 2 then 0; C: rank 1 then missing -> last (rank 2)
    assert scores["A"] == pytest.approx(w0 / 0.1 + w1 / 1.1)  # 7.5551
    assert scores["B"] == pytest.approx(w0 / 2.1 + w1 / 0.1)  # 3.0375
    assert scores["C"] == pytest.approx(w0 / 1.1 + w1 / 2.1)  # 0.7927
    ordered = [e.name for e in score_experts(clusters, STATS, ["A", "B", "C"])]
    assert ordered == ["A", "B", "C"]


def test_expert_missing_from_cluster_ranks_last_and_does_not_block_others() -> None:
    # the reference code stops scoring when an expert is missing; every expert must be scored
    clusters = [ClusterMatch(id=1, distance=0.0, weight=1.0)]
    scores = score_experts(clusters, STATS, ["C", "A", "B"])
    by_name = {e.name: e.score for e in scores}
    assert by_name == pytest.approx({"B": 1 / 0.1, "A": 1 / 1.1, "C": 1 / 2.1})


def test_unknown_cluster_scores_everyone_last_and_keeps_pool_order() -> None:
    clusters = [ClusterMatch(id=7, distance=0.2, weight=1.0)]
    scores = score_experts(clusters, STATS, ["B", "C", "A"])
    assert [e.name for e in scores] == ["B", "C", "A"]
    assert [e.score for e in scores] == pytest.approx([1 / 0.1] * 3)


def test_ties_are_broken_by_pool_order() -> None:
    stats = {0: {"X": s(5, 10), "Y": s(5, 10)}}
    clusters = [ClusterMatch(id=0, distance=0.0, weight=1.0)]
    assert [e.name for e in score_experts(clusters, stats, ["Y", "X"])] == ["Y", "X"]
    assert [e.name for e in score_experts(clusters, stats, ["X", "Y"])] == ["X", "Y"]


def test_experts_outside_the_pool_are_ignored_for_ranks() -> None:
    # B is calibrated but not available: A becomes rank 0 in cluster 1
    clusters = [ClusterMatch(id=1, distance=0.0, weight=1.0)]
    scores = score_experts(clusters, STATS, ["A"])
    assert scores[0].score == pytest.approx(1 / 0.1)


def test_top_k_larger_than_k_uses_every_cluster() -> None:
    # the store clamps k; routing weighs whatever it gets
    clusters = match_clusters([(0, 0.2), (1, 0.2)], beta=3.0)
    assert [c.weight for c in clusters] == pytest.approx([0.5, 0.5])
    scores = {e.name: e.score for e in score_experts(clusters, STATS, ["A", "B", "C"])}
    assert scores["A"] == pytest.approx(0.5 / 0.1 + 0.5 / 1.1)


def test_select_experts_keeps_top_n() -> None:
    clusters = [ClusterMatch(id=0, distance=0.0, weight=1.0)]
    scores = score_experts(clusters, STATS, ["A", "B", "C"])
    assert [e.name for e in select_experts(scores, 2)] == ["A", "C"]
    assert len(select_experts(scores, 10)) == 3
    with pytest.raises(InvalidInputError):
        select_experts(scores, 0)


def test_no_available_expert_is_an_error() -> None:
    with pytest.raises(InvalidInputError, match="No experts"):
        score_experts([ClusterMatch(0, 0.0, 1.0)], STATS, [])


def test_smoothing_pulls_small_clusters_toward_the_prior() -> None:
    assert smoothed_accuracy(s(1, 1), prior_mean=0.5, prior_strength=0.0) == 1.0
    assert smoothed_accuracy(s(1, 1), prior_mean=0.5, prior_strength=4.0) == pytest.approx(0.6)
    # 1/1 vs 40/50: raw accuracy ranks the lucky expert first, smoothing does not
    stats = {"lucky": s(1, 1), "solid": s(40, 50)}
    assert rank_experts(stats) == {"lucky": 0, "solid": 1}
    prior = {"lucky": 0.3, "solid": 0.8}
    assert rank_experts(stats, prior=prior, prior_strength=10) == {"solid": 0, "lucky": 1}


def test_cost_aware_ranking_prefers_cheap_experts_when_quality_weight_is_low() -> None:
    stats = {"big": s(9, 10, seconds=10.0), "small": s(8, 10, seconds=1.0)}
    assert rank_experts(stats, quality_weight=1.0) == {"big": 0, "small": 1}
    # a=0.3: big = 0.3*1 + 0.7*0 = 0.3 ; small = 0.3*0 + 0.7*(1-0.1) = 0.63
    assert rank_experts(stats, quality_weight=0.3) == {"small": 0, "big": 1}
    with pytest.raises(InvalidInputError):
        rank_experts(stats, quality_weight=1.5)


def test_compute_cost_is_tokens_times_the_cost_per_token() -> None:
    # small writes 10x the tokens of big, but a token of big costs 20x one of small
    stats = {"big": s(9, 10, seconds=1.0, tokens=10), "small": s(8, 10, seconds=9.0, tokens=100)}
    assert expert_cost(stats["big"], "compute", 20.0) == 200.0
    assert expert_cost(stats["small"], "tokens") == 100.0
    costs = {"big": 20.0, "small": 1.0}
    # a=0.3, compute 200 vs 100: big = 0.3 + 0.7*0 = 0.3 ; small = 0 + 0.7*0.5 = 0.35
    assert rank_experts(stats, quality_weight=0.3, cost="compute", unit_costs=costs) == {
        "small": 0,
        "big": 1,
    }
    # by tokens small is the expensive one, by seconds too
    assert rank_experts(stats, quality_weight=0.3, cost="tokens") == {"big": 0, "small": 1}
    assert rank_experts(stats, quality_weight=0.3, cost="seconds") == {"big": 0, "small": 1}


@pytest.mark.parametrize(
    ("cost", "unit_costs", "match"),
    [
        ("dollars", None, "cost must be one of seconds, tokens, compute"),
        ("compute", {"big": 1.0}, r"missing for \['small'\]"),
        ("compute", None, r"missing for \['big', 'small'\]"),
        ("tokens", {"big": -1.0}, "costs must be numbers >= 0"),
        ("compute", {"big": float("nan"), "small": 1.0}, "costs must be numbers >= 0"),
    ],
)
def test_bad_costs_are_explicit_errors(
    cost: str, unit_costs: dict[str, float] | None, match: str
) -> None:
    stats = {"big": s(9, 10, tokens=10), "small": s(8, 10, tokens=100)}
    with pytest.raises(InvalidInputError, match=match):
        check_cost(cost, ["big", "small"], unit_costs)
    with pytest.raises(InvalidInputError, match=match):
        score_experts(
            [ClusterMatch(0, 0.1, 1.0)],
            {0: stats},
            ["big", "small"],
            quality_weight=0.5,
            cost=cost,  # type: ignore[arg-type]
            unit_costs=unit_costs,
        )


def test_routing_text_is_the_last_human_message() -> None:
    messages = [
        SystemMessage("be brief"),
        HumanMessage("first question"),
        AIMessage("first answer"),
        HumanMessage([{"type": "text", "text": "  second question "}]),
        ToolMessage("42", tool_call_id="t1"),
    ]
    assert routing_text(messages) == "second question"


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([], "empty"),
        ([SystemMessage("only system")], "no human message"),
        ([HumanMessage("   ")], "no text"),
        (["not a message"], "LangChain messages"),
        ("a bare string", "list of LangChain messages"),
    ],
)
def test_routing_text_rejects_malformed_conversations(messages: object, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        routing_text(messages)  # type: ignore[arg-type]


def test_tool_results_and_assistant_turns_do_not_become_the_question() -> None:
    loop = [
        SystemMessage("You are an agent. Use the tools. " * 20),
        HumanMessage("Convert 5 km to miles, then double it."),
        AIMessage("", tool_calls=[{"name": "convert", "args": {"v": 5}, "id": "c1"}]),
        ToolMessage("3.107 miles", tool_call_id="c1"),
        AIMessage("", tool_calls=[{"name": "calc", "args": {"e": "2*3.107"}, "id": "c2"}]),
        ToolMessage("6.214", tool_call_id="c2"),
    ]
    assert routing_text(loop) == "Convert 5 km to miles, then double it."
    assert routing_context(loop) is None  # one human message: no context


def test_a_long_prompt_is_routed_on_its_head_and_tail() -> None:
    documents = " ".join(f"document{i}" for i in range(1000))
    prompt = f"Answer from the context below.\n\n{documents}\n\nQuestion: what is 6 * 7?"
    text = routing_text([HumanMessage(prompt)])
    assert text.startswith("Answer from the context below.")
    assert text.endswith("Question: what is 6 * 7?")
    assert len(text.split()) == ROUTING_HEAD_WORDS + 1 + ROUTING_TAIL_WORDS
    assert "document500" not in text
    assert question_text([HumanMessage(prompt)]) == prompt.strip()  # the whole question
    assert compact("short question") == "short question"


def test_routing_context_is_the_previous_human_message() -> None:
    chat = [
        HumanMessage("How far is 5 km in miles?"),
        AIMessage("About 3.1 miles."),
        HumanMessage("and in feet?"),
    ]
    assert routing_text(chat) == "and in feet?"
    assert routing_context(chat) == "How far is 5 km in miles?"


def test_blend_keeps_the_question_dominant() -> None:
    question, context = [1.0, 0.0], [0.0, 1.0]
    mixed = blend(question, context, 0.25)
    assert mixed[0] > mixed[1] > 0
    assert sum(v * v for v in mixed) == pytest.approx(1.0)
    assert blend(question, context, 0.0) == question
    with pytest.raises(InvalidInputError, match="context_weight"):
        blend(question, context, -1.0)
    with pytest.raises(InvalidInputError, match="sizes"):
        blend(question, [1.0], 0.5)
