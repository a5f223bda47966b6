"""Calibrated confidence: the map, its fit, the replayed vote and the cross-fitting."""

from __future__ import annotations

import math

import numpy as np
import pytest

from avengers_graph.confidence import (
    RecordedQuestion,
    cross_fitted_votes,
    fit_confidence_map,
    replay_vote,
)
from avengers_graph.errors import InvalidInputError
from avengers_graph.options import AvengersOptions
from avengers_graph.routing import ClusterMatch
from avengers_graph.stores.base import ConfidenceMap, ExpertStats, Graded, StoreInfo

ONE_CLUSTER = [ClusterMatch(id=0, distance=0.0, weight=1.0)]


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


# -- the map -----------------------------------------------------------------------------


def test_the_map_by_hand() -> None:
    assert ConfidenceMap(1.0, 0.0, 1)(0.9) == pytest.approx(0.9)
    # slope 1/2 halves the log-odds: logit(0.9) = ln 9, half of it is ln 3 = logit(3/4)
    assert ConfidenceMap(0.5, 0.0, 1)(0.9) == pytest.approx(0.75)
    assert ConfidenceMap(0.5, 0.0, 1)(0.1) == pytest.approx(0.25)
    # slope 0: the intercept's probability whatever the posterior
    assert ConfidenceMap(0.0, _logit(0.6), 1)(0.99) == pytest.approx(0.6)
    assert ConfidenceMap(0.0, _logit(0.6), 1)(0.01) == pytest.approx(0.6)
    # extreme posteriors and intercepts stay probabilities (no overflow)
    assert 0 < ConfidenceMap(3.0, -700.0, 1)(0.5) < 1e-300
    assert ConfidenceMap(3.0, 800.0, 1)(1.0) == 1.0


@pytest.mark.parametrize(
    ("slope", "intercept", "votes"),
    [(-0.1, 0.0, 10), (math.nan, 0.0, 10), (1.0, math.inf, 10), ("1", 0.0, 10), (1.0, 0.0, 0)],
)
def test_a_bad_map_is_refused(slope: object, intercept: object, votes: int) -> None:
    with pytest.raises(InvalidInputError, match="ConfidenceMap"):
        ConfidenceMap(slope, intercept, votes)  # type: ignore[arg-type]


def test_store_info_takes_only_a_map() -> None:
    def info(confidence: object) -> StoreInfo:
        return StoreInfo("p", "m", 2, 1, 0, ("a",), confidence=confidence)  # type: ignore[arg-type]

    assert info(ConfidenceMap(1, 0, 5)).confidence == ConfidenceMap(1.0, 0.0, 5)
    assert info(None).confidence is None
    with pytest.raises(InvalidInputError, match=r"StoreInfo\.confidence"):
        info((1.0, 0.0))


# -- the fit -------------------------------------------------------------------------------


def test_the_fit_recovers_a_known_map() -> None:
    # votes right with probability sigmoid(0.5 * logit(posterior) + 0.3): too sure votes
    rng = np.random.default_rng(0)
    truth = ConfidenceMap(0.5, 0.3, 1)
    posteriors = rng.uniform(0.02, 0.98, size=4000)
    pairs = [(float(p), bool(rng.random() < truth(float(p)))) for p in posteriors]
    fitted = fit_confidence_map(pairs)
    assert fitted is not None
    assert fitted.votes == 4000
    assert fitted.slope == pytest.approx(0.5, abs=0.06)
    assert fitted.intercept == pytest.approx(0.3, abs=0.1)


def test_no_map_without_evidence() -> None:
    assert fit_confidence_map([(0.9, True), (0.2, False)] * 10) is None  # 20 < 30 votes
    assert fit_confidence_map([(0.9, True), (0.2, False)] * 10, min_votes=20) is not None
    assert fit_confidence_map([(0.9, True)] * 50) is None  # nothing tells right from wrong
    assert fit_confidence_map([(0.9, False)] * 50) is None


def test_a_backward_fit_becomes_the_share_of_right_votes() -> None:
    # surer votes right less often: no monotone map says that; the constant share does
    pairs = [(0.9, False)] * 30 + [(0.9, True)] * 10 + [(0.3, True)] * 30 + [(0.3, False)] * 10
    fitted = fit_confidence_map(pairs)
    assert fitted is not None
    assert fitted.slope == 0.0
    assert fitted(0.9) == fitted(0.3) == pytest.approx(0.5)


# -- the replayed vote ---------------------------------------------------------------------


def _stats(**right_of_ten: int) -> dict[int, dict[str, ExpertStats]]:
    return {0: {name: ExpertStats(r, 10, 10.0, 0.1, r, 10) for name, r in right_of_ten.items()}}


def _posterior(totals: dict[str, float], chance: float) -> float:
    """weighted_vote's posterior of the leader, from the summed weights."""
    unseen = max(1 / chance - len(totals), 0)
    top = max(totals.values())
    return math.exp(0) / (sum(math.exp(t - top) for t in totals.values()) + unseen * math.exp(-top))


def test_the_replayed_vote_by_hand() -> None:
    # one cluster: reliability is each expert's own accuracy (0.8 and 0.6), chance 1/4:
    # evidence ln(0.8/0.2) + ln 3 = ln 12 for a, ln 1.5 + ln 3 = ln 4.5 for b
    stats = _stats(a=8, b=6)
    keys = {"a": ["A", "A", "A"], "b": ["B", "B"]}
    options = AvengersOptions(weighted=True, threshold=0.9, top_n=2, samples=3, budget=4)
    drawn, result = replay_vote(ONE_CLUSTER, stats, keys, chance=0.25, options=options)
    # round 1: a, b; 0.65 sure; round 2: a, b; 0.87 sure; the budget of 4 is spent
    assert drawn == [("a", 0), ("b", 0), ("a", 1), ("b", 1)]
    assert result is not None
    assert result.answer == "A"
    expected = _posterior({"A": 2 * math.log(12), "B": 2 * math.log(4.5)}, 0.25)
    assert result.confidence == pytest.approx(expected)
    assert expected == pytest.approx(0.866, abs=1e-3)
    # a lower threshold stops after the first round, 0.65 sure
    early = options.model_copy(update={"threshold": 0.6})
    drawn, result = replay_vote(ONE_CLUSTER, stats, keys, chance=0.25, options=early)
    assert drawn == [("a", 0), ("b", 0)]
    assert result is not None
    assert result.confidence == pytest.approx(
        _posterior({"A": math.log(12), "B": math.log(4.5)}, 0.25)
    )


def test_the_replayed_vote_runs_out_of_samples_and_draws_all_without_threshold() -> None:
    stats = _stats(a=8, b=6)
    keys = {"a": ["A"], "b": ["B", "A", "A"]}
    every = AvengersOptions(weighted=True, top_n=2, samples=3)  # no threshold: all 6 planned
    drawn, result = replay_vote(ONE_CLUSTER, stats, keys, chance=0.25, options=every)
    assert drawn == [("a", 0), ("b", 0), ("b", 1), ("b", 2)]  # a recorded only one
    assert result is not None
    assert result.answer == "A"
    assert result.votes == {
        "A": pytest.approx(math.log(12) + 2 * math.log(4.5), abs=1e-3),
        "B": pytest.approx(math.log(4.5), abs=1e-3),
    }


def test_equal_votes_when_not_weighted() -> None:
    stats = _stats(a=8, b=6)
    keys = {"a": ["A"], "b": ["B"]}
    options = AvengersOptions(weighted=False, top_n=2, samples=1)
    _, result = replay_vote(ONE_CLUSTER, stats, keys, chance=0.25, options=options)
    assert result is not None
    mean = (math.log(12) + math.log(4.5)) / 2
    assert result.votes == {"A": pytest.approx(mean, abs=1e-3), "B": pytest.approx(mean, abs=1e-3)}
    assert result.answer == "A"  # the tie goes to the better rank


# -- cross-fitting -------------------------------------------------------------------------


def _question(qid: str, a_right: bool) -> RecordedQuestion:
    """Expert a answers "<qid>-a", b answers "<qid>-b"; one of them is right."""
    return RecordedQuestion(
        qid,
        [1.0, 0.0],
        0.05,
        keys={"a": [f"{qid}-a"], "b": [f"{qid}-b"]},
        right={"a": [a_right], "b": [not a_right]},
        graded=[
            Graded(0, "a", a_right, 10.0, 0.1, int(a_right), 1),
            Graded(0, "b", not a_right, 10.0, 0.1, int(not a_right), 1),
        ],
    )


def test_a_vote_never_sees_its_own_question() -> None:
    # a is right on q1 only, b on q2 only: each question voted with the other's statistics
    # trusts the wrong expert (the other is rated at the floor, below chance: not asked)
    questions = [_question("q1", True), _question("q2", False)]
    options = AvengersOptions(weighted=True, threshold=0.9, top_n=2, samples=1)
    pairs = cross_fitted_votes(questions, np.array([[1.0, 0.0]]), options, folds=2)
    assert [right for _, right in pairs] == [False, False]
    # with a third question like q1, q2 is voted with statistics where a was right twice
    # and b never: a answers, wrongly; q1 and q3 each see one win of each expert, and the
    # tie goes to a (pool order), rightly
    questions.append(_question("q3", True))
    pairs = cross_fitted_votes(questions, np.array([[1.0, 0.0]]), options, folds=3)
    assert sorted(right for _, right in pairs) == [False, True, True]


def test_cross_fitting_needs_two_folds() -> None:
    with pytest.raises(InvalidInputError, match="folds"):
        cross_fitted_votes([], np.eye(2), AvengersOptions(), folds=1)
