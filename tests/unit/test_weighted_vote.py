"""Votes weighted by calibrated reliability, and the order adaptive sampling draws in."""

from __future__ import annotations

import math

import pytest

from avengers_graph.errors import InvalidInputError
from avengers_graph.routing import (
    RELIABILITY_FLOOR,
    ClusterMatch,
    draw_order,
    evidence,
    reliability,
    sample_accuracy,
)
from avengers_graph.store import ExpertStats
from avengers_graph.voting import OPEN_CHANCE, weighted_vote


def test_evidence_is_log_odds_over_chance() -> None:
    assert evidence(0.5, 0.25) == pytest.approx(math.log(3))
    assert evidence(0.25, 0.25) == pytest.approx(0.0)  # a guesser says nothing
    assert evidence(0.1, 0.25) < 0
    assert evidence(1.0, 0.05) == pytest.approx(math.log(99) - math.log(0.05 / 0.95))


def test_one_vote_is_as_sure_as_its_expert() -> None:
    result = weighted_vote(["B"], [evidence(0.6, 0.25)], [0], chance=0.25)
    assert result.answer == "B"
    assert result.confidence == pytest.approx(0.6)


def test_two_guessers_do_not_outvote_one_good_expert() -> None:
    # the demo's case: SmolLM2 twice at chance, the 0.5B once at 60 %
    weights = [evidence(0.6, OPEN_CHANCE), evidence(0.05, OPEN_CHANCE), evidence(0.05, 0.05)]
    result = weighted_vote(["18", "2", "2"], weights, [0, 1, 1])
    assert result.answer == "18"
    assert result.votes == {"18": round(weights[0], 3)}


def test_posterior_by_hand() -> None:
    # two votes for A (reliability 0.5 each), one for B (0.8), four options
    wa, wb = evidence(0.5, 0.25), evidence(0.8, 0.25)
    result = weighted_vote(["A", "A", "B"], [wa, wa, wb], [0, 0, 1], chance=0.25)
    # exp(2 wa) = 9, exp(wb) = 12: B wins; the two options nobody chose weigh 1 each
    assert result.answer == "B"
    assert result.confidence == pytest.approx(12 / (9 + 12 + 2))
    assert result.winner == 2


def test_empty_answers_never_win_and_ties_go_to_the_better_rank() -> None:
    result = weighted_vote([None, None, "7"], [5.0, 5.0, 0.1], [0, 0, 1])
    assert result.answer == "7"
    tie = weighted_vote(["x", "y"], [1.0, 1.0], [1, 0])
    assert tie.answer == "y"
    nothing = weighted_vote([None, "z"], [1.0, 0.0], [0, 1])
    assert (nothing.answer, nothing.confidence, nothing.votes) == ("", 0.0, {})


def test_bad_input_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="weights"):
        weighted_vote(["a"], [], [0])
    with pytest.raises(InvalidInputError, match="zero samples"):
        weighted_vote([], [], [])


STATS = {
    0: {"a": ExpertStats(8, 10, sample_correct=16, samples=20), "b": ExpertStats(1, 10)},
    1: {"a": ExpertStats(0, 2, sample_correct=0, samples=4)},
}


def test_sample_accuracy_prefers_per_sample_counts() -> None:
    overall = sample_accuracy(STATS)
    assert overall["a"] == pytest.approx(16 / 24)
    assert overall["b"] == pytest.approx(0.1)  # no per-sample counts: majority accuracy


def test_reliability_shrinks_small_clusters_toward_the_overall_rate() -> None:
    matches = [ClusterMatch(id=1, distance=0.1, weight=1.0)]
    rated = reliability(matches, STATS, ["a", "b", "c"], prior_strength=4)
    # a: 0 right of 4 samples in cluster 1, prior 16/24 with 4 pseudo-samples
    assert rated["a"] == pytest.approx((0 + 4 * 16 / 24) / (4 + 4))
    assert rated["b"] == pytest.approx(0.1)  # no stats there: its overall rate
    assert rated["c"] == RELIABILITY_FLOOR  # never calibrated
    raw = reliability(matches, STATS, ["a"], prior_strength=0)
    assert raw["a"] == RELIABILITY_FLOOR
    blended = reliability(
        [ClusterMatch(0, 0.1, 0.75), ClusterMatch(1, 0.2, 0.25)], STATS, ["a"], prior_strength=0
    )
    assert blended["a"] == pytest.approx(0.75 * 0.8 + 0.25 * RELIABILITY_FLOOR, abs=0.01)


def test_draw_order() -> None:
    value = {"cheap": 3.0, "good": 2.0, "slow": 0.5}
    assert draw_order(["good", "slow", "cheap"], value, per_expert=2, budget=5) == [
        "cheap",
        "good",
        "slow",
        "cheap",
        "good",
    ]
    assert draw_order(["good", "cheap"], value, per_expert=2, budget=3, depth=True) == [
        "cheap",
        "cheap",
        "good",
    ]
    with pytest.raises(InvalidInputError):
        draw_order(["a"], {}, per_expert=0, budget=1)
