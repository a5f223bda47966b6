"""Replay metrics on a small hand-built matrix whose every number is known.

Two datasets of 10 questions each (split 7 calibration / 3 test per dataset), whose
question vectors are two orthogonal directions, so K=2 clusters are the datasets.
Three experts:

- ``math``: on ``algebra`` its samples are [wrong, right, right] (first sample wrong,
  majority right); on ``trivia`` always wrong. 10 tokens, 1 s per sample.
- ``facts``: on ``trivia`` always right, on ``algebra`` always wrong. 20 tokens, 4 s.
- ``cheap``: always wrong, 1 token, 0.1 s.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from avengers_graph import InvalidInputError
from avengers_graph.eval.recording import Response, ResponseMatrix
from avengers_graph.eval.replay import (
    AVERAGE,
    CHOSEN,
    INCUMBENT,
    AdaptiveConfig,
    EnsembleConfig,
    Outcome,
    Replay,
    Summary,
    best_expert_sc,
    calibration_curve,
    calibration_floor,
    choose_on_calibration,
    compare,
    default_grid,
    evaluate,
    paired_difference,
    simultaneous_bar,
)
from avengers_graph.routing import OVERALL_PRIOR

SAMPLES = 3
EXPERTS = {"math": (10, 1.0), "facts": (20, 4.0), "cheap": (1, 0.1)}


def _correct(expert: str, dataset: str, sample: int) -> bool:
    if expert == "math":
        return dataset == "algebra" and sample > 0
    if expert == "facts":
        return dataset == "trivia"
    return False


def _matrix() -> tuple[ResponseMatrix, dict[str, np.ndarray]]:
    questions = []
    responses = []
    vectors = {}
    for dataset, direction in (("algebra", [1.0, 0.0]), ("trivia", [0.0, 1.0])):
        for i in range(10):
            qid = f"{dataset}-{i}"
            questions.append(
                {
                    "id": qid,
                    "dataset": dataset,
                    "kind": "number",
                    "question": qid,
                    "answer": "1",
                    "source": "",
                }
            )
            vectors[qid] = np.asarray(direction)
            for expert, (tokens, seconds) in EXPERTS.items():
                for j in range(SAMPLES):
                    right = _correct(expert, dataset, j)
                    responses.append(
                        Response(
                            question_id=qid,
                            dataset=dataset,
                            expert=expert,
                            sample=j,
                            seed=j,
                            output="1" if right else f"wrong {expert} {j}",
                            # wrong answers of one expert differ, so they never out-vote
                            extracted="1" if right else f"{expert}-{j}",
                            correct=right,
                            tokens=tokens,
                            seconds=seconds,
                        )
                    )
    return ResponseMatrix(questions, responses), vectors


MATRIX, VECTORS = _matrix()


def _replay(**kwargs: object) -> Replay:
    return Replay(MATRIX, VECTORS, n_clusters=2, **kwargs)  # type: ignore[arg-type]


def test_split_is_seeded_and_stratified() -> None:
    first, again, other = _replay(seed=0), _replay(seed=0), _replay(seed=1)
    assert first.test == again.test
    assert set(first.test) != set(other.test)
    for replay in (first, other):
        assert len(replay.test) == 6
        assert len(replay.calibration) == 14
        assert sorted(replay.dataset[q] for q in replay.test) == ["algebra"] * 3 + ["trivia"] * 3
        assert not set(replay.test) & set(replay.calibration)


def test_calibration_stats_grade_the_majority_answer() -> None:
    replay = _replay()
    by_expert: dict[str, tuple[int, int]] = {}
    for cluster in replay.stats.values():
        for expert, stats in cluster.items():
            correct, total = by_expert.get(expert, (0, 0))
            by_expert[expert] = (correct + stats.correct, total + stats.total)
    # 7 calibration questions per dataset; math's majority is right on algebra
    assert by_expert == {"math": (7, 14), "facts": (7, 14), "cheap": (0, 14)}
    cluster_of_algebra = next(c for c, s in replay.stats.items() if s["math"].correct == 7)
    assert replay.stats[cluster_of_algebra]["math"].mean_tokens == 10
    assert replay.stats[cluster_of_algebra]["facts"].mean_seconds == 4.0


def test_baselines() -> None:
    replay = _replay()
    results = {name: replay.outcomes(replay.baseline(name)) for name in ("Random", "Oracle")}
    # Random, one sample of an expert in expectation: on algebra math's samples are right
    # 2 times in 3 and the others never (2/9); on trivia only facts is right (1/3)
    assert results["Random"]["algebra"].accuracy == pytest.approx(2 / 9)
    assert results["Random"]["trivia"].accuracy == pytest.approx(1 / 3)
    assert results["Random"]["trivia"].tokens == pytest.approx((10 + 20 + 1) / 3)
    # Oracle: any right sample; trivia has facts, algebra math's later samples
    assert results["Oracle"]["trivia"] == Outcome(1.0, calls=1, tokens=20, seconds=4.0, compute=20)
    assert results["Oracle"]["algebra"] == Outcome(1.0, calls=1, tokens=10, seconds=1.0, compute=10)
    assert results["Oracle"][AVERAGE].accuracy == 1.0
    lost = next(q for q in replay.test if q.startswith("trivia"))
    no_facts = _replay(experts=["math", "cheap"])
    assert no_facts._oracle(lost) == Outcome(0.0, calls=1, tokens=1, seconds=0.1, compute=1)

    # first samples: math 0/7 + 0/7, facts 0/7 + 7/7 -> facts is the best single
    assert replay.best_single() == "facts"
    assert replay.max_expert("trivia") == "facts"
    best = replay.outcomes(replay.baseline("Best-Single"))
    assert (best["algebra"].accuracy, best["trivia"].accuracy) == (0.0, 1.0)
    assert best[AVERAGE].calls == 1


def test_self_consistency_rescues_a_wrong_first_sample() -> None:
    replay = _replay()
    paper = EnsembleConfig("paper", samples=SAMPLES)
    outcome = replay.outcomes(replay.ensemble(paper))
    # algebra routes to math (majority right), trivia to facts
    assert outcome["algebra"] == Outcome(1.0, calls=3, tokens=30, seconds=3.0, compute=30)
    assert outcome["trivia"] == Outcome(1.0, calls=3, tokens=60, seconds=12.0, compute=60)
    one_sample = replay.outcomes(replay.ensemble(EnsembleConfig("one", samples=1)))
    assert one_sample["algebra"].accuracy == 0.0


def test_self_consistency_and_the_incumbent_pick_the_strategy_right_most_often() -> None:
    # q:direct's first sample is right, its others wrong; q:reason's the other way round:
    # by first samples direct is better, by all samples reason (2 in 3), whose vote wins
    questions, responses = [], []
    for i in range(10):
        qid = f"algebra-{i}"
        questions.append(
            {"id": qid, "dataset": "algebra", "kind": "number", "question": qid, "answer": "1"}
        )
        for expert in ("q:direct", "q:reason"):
            for j in range(3):
                right = (j == 0) == (expert == "q:direct")
                key = "1" if right else "7"  # the wrong samples agree
                responses.append(Response(qid, "algebra", expert, j, j, key, key, right, 10, 1.0))
    matrix = ResponseMatrix(questions, responses)
    replay = Replay(matrix, {q["id"]: np.ones(2) for q in questions}, n_clusters=1)
    sc = replay.answers(replay.self_consistency("q"))
    assert all(outcome.accuracy == 1.0 for outcome in sc.values())
    incumbent = {qid: replay.adaptive_answer(qid, best_expert_sc(3))[0] for qid in replay.test}
    assert incumbent == sc  # the same strategy, the same votes
    # Best-Single's one-sample accuracy is estimated from all samples too: reason (2 in 3)
    assert replay.best_single() == "q:reason"
    assert replay.max_expert("algebra") == "q:reason"


def test_routing_picks_the_cluster_expert_and_cost_weight_trades_it_away() -> None:
    replay = _replay()
    algebra = next(q for q in replay.test if q.startswith("algebra"))
    trivia = next(q for q in replay.test if q.startswith("trivia"))
    assert replay.route(algebra, EnsembleConfig("a", top_n=2)) == ["math", "facts"]
    assert replay.route(trivia, EnsembleConfig("t", top_n=1)) == ["facts"]
    # quality_weight 0: cost alone, and cheap is the fastest expert everywhere
    cheapest = EnsembleConfig("c", quality_weight=0.0, cost="seconds")
    assert replay.route(trivia, cheapest) == ["cheap"]
    by_tokens = EnsembleConfig("t0", quality_weight=0.0, cost="tokens")
    assert replay.route(algebra, by_tokens) == ["cheap"]


def test_compute_is_tokens_times_the_expert_cost_per_token() -> None:
    # without costs in the provenance every expert counts 1 per token
    assert _replay().unit_costs == {"math": 1.0, "facts": 1.0, "cheap": 1.0}
    # cheap writes 1 token but costs 100 per token; facts 20 tokens at 0.01
    costs = {"math": 1.0, "facts": 0.01, "cheap": 100.0}
    described = ResponseMatrix(
        MATRIX.questions,
        MATRIX.responses,
        {"experts": {name: {"cost": cost} for name, cost in costs.items()}},
    )
    replay = Replay(described, VECTORS, n_clusters=2)
    assert replay.unit_costs == costs
    assert Replay(MATRIX, VECTORS, n_clusters=2, unit_costs=costs).unit_costs == costs
    algebra = next(q for q in replay.test if q.startswith("algebra"))
    by_compute = EnsembleConfig("c0", quality_weight=0.0, cost="compute")
    assert replay.route(algebra, by_compute) == ["facts"]  # 0.2 < 10 < 100
    by_tokens = EnsembleConfig("t0", quality_weight=0.0, cost="tokens")
    assert replay.route(algebra, by_tokens) == ["cheap"]
    outcome = replay.outcomes(replay.ensemble(EnsembleConfig("paper", samples=SAMPLES)))
    assert outcome["algebra"].compute == pytest.approx(3 * 10 * 1.0)
    assert outcome["trivia"].compute == pytest.approx(3 * 20 * 0.01)
    # Oracle answers with the right sample of least compute
    oracle = replay.outcomes(replay.baseline("Oracle"))
    assert oracle["trivia"].compute == pytest.approx(0.2)


def test_budget_splits_samples_best_ranked_first() -> None:
    assert EnsembleConfig("b", top_n=2, budget=5).allocation(2) == [3, 2]
    assert EnsembleConfig("b", top_n=3, budget=5).allocation(3) == [2, 2, 1]
    assert EnsembleConfig("s", top_n=3, samples=2).allocation(3) == [2, 2, 2]
    replay = _replay()
    # trivia: facts (rank 0) gives 3 right answers, math 2 wrong ones that disagree
    outcome = replay.outcomes(replay.ensemble(EnsembleConfig("b", top_n=2, budget=5)))
    assert outcome["trivia"].calls == 5
    assert outcome["trivia"].tokens == 3 * 20 + 2 * 10
    assert outcome["trivia"].accuracy == 1.0


def test_vote_ties_go_to_the_better_ranked_expert() -> None:
    replay = _replay()
    trivia = next(q for q in replay.test if q.startswith("trivia"))
    # one right sample of facts against one wrong sample of cheap: rank decides
    assert replay.vote(trivia, ["facts", "cheap"], [1, 1]).accuracy == 1.0
    assert replay.vote(trivia, ["cheap", "facts"], [1, 1]).accuracy == 0.0


def test_evaluate_averages_over_seeds_and_reports_gains() -> None:
    paper = EnsembleConfig("paper", samples=SAMPLES)
    summary = evaluate(MATRIX, VECTORS, [paper], n_clusters=2, seeds=(0, 1, 2))
    assert summary.splits == 3
    assert summary.datasets == ["algebra", "trivia"]
    assert summary.accuracy("paper") == 1.0
    assert summary.accuracy("Best-Single") == 0.5
    assert summary.gain("paper", over="Best-Single") == 0.5
    # Max-Expert: math on algebra (2 of its 3 samples right), facts on trivia
    assert summary.accuracy("Max-Expert") == pytest.approx((2 / 3 + 1) / 2)
    assert summary.accuracy("Best-Single SC") == 0.5
    assert summary.spread["paper"] == 0.0


def test_sub_pool_and_errors() -> None:
    replay = _replay(experts=["cheap", "facts"])
    assert replay.best_single() == "facts"
    with pytest.raises(InvalidInputError, match="not in the matrix"):
        _replay(experts=["nobody"])
    with pytest.raises(InvalidInputError, match="n_clusters"):
        Replay(MATRIX, VECTORS, n_clusters=15)
    with pytest.raises(InvalidInputError, match="unique"):
        evaluate(MATRIX, VECTORS, [EnsembleConfig("Oracle")], n_clusters=2)


def test_compare_pairs_the_same_test_questions() -> None:
    paper = EnsembleConfig("paper", samples=SAMPLES)
    summary = evaluate(MATRIX, VECTORS, [paper], n_clusters=2, seeds=(0, 1, 2))
    # paper: right everywhere; Best-Single (facts): right on trivia only. Every redraw
    # of the questions keeps +1 on algebra and 0 on trivia: the interval is one point.
    result = compare(summary, "paper", "Best-Single")
    assert (result.gain, result.low, result.high) == (0.5, 0.5, 0.5)
    assert result.gain == summary.gain("paper", over="Best-Single")
    assert (result.wins, result.losses) == (3.0, 0.0)  # the 3 algebra test questions a split
    # another pool on the same matrix and seeds: the same test questions
    alone = evaluate(MATRIX, VECTORS, [], n_clusters=2, seeds=(0, 1, 2), experts=["math"])
    versus = compare(summary, "Best-Single", "Best-Single", against=alone)
    # facts (0 on algebra, 1 on trivia) against math alone (2/3 on algebra, 0 on trivia)
    assert versus.gain == pytest.approx(0.5 - 1 / 3)
    # per split: +1 on each of 3 trivia questions, -2/3 on each of 3 algebra questions
    assert (versus.wins, versus.losses) == (3.0, pytest.approx(2.0))


def test_compare_interval_is_the_bootstrap_of_the_questions() -> None:
    # one split, one dataset, two questions: differences +1 and 0. Redraws of two
    # questions give a mean gain of 0 (1/4), 0.5 (1/2) or 1 (1/4).
    summary = Summary(
        ["d"],
        {},
        questions={"a": [{"q1": 1.0, "q2": 0.0}], "b": [{"q1": 0.0, "q2": 0.0}]},
        dataset_of={"q1": "d", "q2": "d"},
    )
    wide = compare(summary, "a", "b", level=0.95)
    assert (wide.gain, wide.low, wide.high) == (0.5, 0.0, 1.0)
    narrow = compare(summary, "a", "b", level=0.4)  # the central 40 % are all 0.5
    assert (narrow.low, narrow.high) == (0.5, 0.5)
    assert compare(summary, "a", "b", seed=7) == compare(summary, "a", "b", seed=7)
    # two questions give an interval +/- 0.5 wide: +/- 0.05 takes (0.5 / 0.05)^2 = 100x more
    assert wide.questions == 2
    assert wide.questions_for(0.05) == 200
    assert narrow.questions_for(0.05) == 0  # no spread at all
    with pytest.raises(InvalidInputError, match="margin"):
        wide.questions_for(0)


def test_compare_refuses_unpaired_results() -> None:
    summary = Summary(
        ["d"],
        {},
        questions={"a": [{"q1": 1.0}], "b": [{"q2": 0.0}]},
        dataset_of={"q1": "d", "q2": "d"},
    )
    with pytest.raises(InvalidInputError, match="same questions"):
        compare(summary, "a", "b")
    with pytest.raises(InvalidInputError, match="No per-question results"):
        compare(summary, "a", "nobody")
    with pytest.raises(InvalidInputError, match="level"):
        compare(summary, "a", "a", level=1.0)


# --------------------------------------------------------------------------- adaptive


def _adaptive(threshold: float, **kwargs: object) -> AdaptiveConfig:
    options: dict[str, object] = {
        "top_n": 3,
        "per_expert": 3,
        "budget": 3,
        "round_size": 1,
        "prior_strength": 0.0,
        **kwargs,
    }
    return AdaptiveConfig(f"adaptive {threshold}", threshold=threshold, **options)  # type: ignore[arg-type]


def test_adaptive_draws_until_the_weighted_vote_is_sure() -> None:
    replay = _replay()
    algebra = next(q for q in replay.test if q.startswith("algebra"))
    trivia = next(q for q in replay.test if q.startswith("trivia"))
    # algebra: only math beats chance (2/3 of its samples right; chance 0.05 for numbers);
    # its first sample is wrong (sure 38/57), the second ties, the third makes "1" win
    # with exp(2 ln 38) / (38^2 + 38 + 18) = 0.963
    outcome, confidence = replay.adaptive_answer(algebra, _adaptive(0.9))
    assert (outcome.accuracy, outcome.calls, outcome.tokens) == (1.0, 3, 30)
    assert confidence == pytest.approx(38**2 / (38**2 + 38 + 18))
    # a lower threshold stops after the first, wrong sample
    outcome, confidence = replay.adaptive_answer(algebra, _adaptive(0.6))
    assert (outcome.accuracy, outcome.calls) == (0.0, 1)
    assert confidence == pytest.approx(38 / 57)
    # trivia: facts is always right (0.99 after clipping): one sample is enough
    outcome, confidence = replay.adaptive_answer(trivia, _adaptive(0.9))
    assert (outcome.accuracy, outcome.calls, outcome.tokens) == (1.0, 1, 20)
    assert confidence > 0.98


def test_adaptive_stops_once_the_samples_left_cannot_change_the_winner() -> None:
    replay = _replay()
    trivia = next(q for q in replay.test if q.startswith("trivia"))
    algebra = next(q for q in replay.test if q.startswith("algebra"))
    never_sure = _adaptive(1.0, top_n=1)  # no vote is ever 100 % sure
    # trivia: facts's first two samples agree, and one more vote cannot catch up with
    # two, so the third is not drawn
    outcome, _ = replay.adaptive_answer(trivia, never_sure)
    assert (outcome.accuracy, outcome.calls, outcome.tokens) == (1.0, 2, 40)
    # algebra: math's first two samples disagree, so the third decides and is drawn
    outcome, _ = replay.adaptive_answer(algebra, never_sure)
    assert (outcome.accuracy, outcome.calls) == (1.0, 3)


def test_folds_test_every_question_once() -> None:
    tested = []
    for index in range(5):
        replay = _replay(fold=(index, 5))
        assert len(replay.test) == 4
        assert not set(replay.test) & set(replay.calibration)
        tested += replay.test
    assert sorted(tested) == sorted(q["id"] for q in MATRIX.questions)


def test_the_configuration_is_chosen_on_calibration_data() -> None:
    grid = [_adaptive(0.6), _adaptive(0.9)]
    summary = evaluate(
        MATRIX, VECTORS, [], baselines=["Best-Single"], n_clusters=2, folds=5, grid=grid
    )
    assert summary.chosen == ["adaptive 0.9"] * 5
    assert summary.accuracy(CHOSEN) == 1.0
    assert summary.accuracy("Best-Single") == 0.5
    claimed = summary.confidence[CHOSEN]
    assert len(claimed) == 20  # every question, tested once
    assert all(right for _, right in claimed)
    # every calibration vote is right: no map can be fitted, the posterior stands
    assert summary.posterior[CHOSEN] == claimed


def test_the_incumbent_is_the_best_experts_self_consistency() -> None:
    # facts is right on half the samples (trivia), math on a third: the incumbent asks
    # facts everywhere (50 %); routing by cluster asks math on algebra (100 %), a gain
    # of 0.5 with no spread (every algebra question gains 1), so it replaces it
    incumbent = best_expert_sc(3)
    assert incumbent.prior_strength == OVERALL_PRIOR
    assert default_grid()[0] == incumbent
    summary = evaluate(
        MATRIX,
        VECTORS,
        [],
        baselines=["Best-Single"],
        n_clusters=2,
        folds=5,
        adaptive=[incumbent],
        grid=[incumbent, _adaptive(0.9)],
    )
    assert summary.accuracy(INCUMBENT) == 0.5
    assert summary.chosen == ["adaptive 0.9"] * 5


def _one_slip_matrix() -> tuple[ResponseMatrix, dict[str, np.ndarray]]:
    """One dataset of 10 questions and one expert, right on every sample but the first
    sample of question 0."""
    questions, responses = [], []
    for i in range(10):
        qid = f"algebra-{i}"
        questions.append(
            {"id": qid, "dataset": "algebra", "kind": "number", "question": qid, "answer": "1"}
        )
        for j in range(3):
            right = (i, j) != (0, 0)
            responses.append(
                Response(qid, "algebra", "math", j, j, "1", "1" if right else "7", right, 10, 1.0)
            )
    return ResponseMatrix(questions, responses), {q["id"]: np.ones(2) for q in questions}


def test_a_gain_within_the_noise_keeps_the_incumbent() -> None:
    matrix, vectors = _one_slip_matrix()
    # one sample against three: the vote of three is right on question 0 too, a gain of
    # 0.1 with a standard error of sqrt(0.1 / 10) = 0.1 (one question in ten)
    one = AdaptiveConfig("one sample", top_n=1, per_expert=1, budget=1, threshold=0.5)
    three = AdaptiveConfig("three samples", top_n=1, per_expert=3, budget=3, threshold=1.0)
    questions = [q["id"] for q in matrix.questions]

    def choose(standard_errors: float) -> str:
        return choose_on_calibration(
            matrix,
            vectors,
            questions,
            [one, three],
            n_clusters=1,
            standard_errors=standard_errors,
        ).config.name

    assert choose(1.5) == "one sample"
    assert choose(0.5) == "three samples"
    kept = choose_on_calibration(matrix, vectors, questions, [one, three], n_clusters=1)
    # the one challenger's t is 1 (a gain of 0.1, a standard error of 0.1); its bar is
    # the 84 % quantile of its bootstrap t: question 0 drawn k times in ten gives t = k - 1,
    # P(k <= 1) = 0.74 and P(k <= 2) = 0.93, so the bar is 1 and t does not clear it
    assert (kept.config.name, kept.challenger) == ("one sample", "three samples")
    assert (kept.t, kept.bar) == (pytest.approx(1.0), 1.0)
    alone = choose_on_calibration(matrix, vectors, questions, [three, one], n_clusters=1)
    assert (alone.config, alone.challenger, alone.t, alone.bar) == (three, None, None, None)
    with pytest.raises(InvalidInputError, match="standard_errors"):
        choose(-1.0)


def test_paired_difference_by_hand() -> None:
    dataset_of = {"a1": "a", "a2": "a", "a3": "a", "a4": "a", "b1": "b", "b2": "b"}
    mine = {"a1": 1.0, "a2": 1.0, "a3": 0.0, "a4": 0.0, "b1": 1.0, "b2": 0.0}
    theirs = {"a1": 0.0, "a2": 1.0, "a3": 1.0, "a4": 0.0, "b1": 1.0, "b2": 0.0}
    # a: differences [1, 0, -1, 0], mean 0, variance 2/3; b: [0, 0]
    gain, error = paired_difference(mine, theirs, dataset_of)
    assert gain == 0.0
    assert error == pytest.approx(math.sqrt((2 / 3) / 4) / 2)
    mine["b2"] = 1.0  # b: [0, 1], mean 0.5, variance 0.5
    gain, error = paired_difference(mine, theirs, dataset_of)
    assert gain == pytest.approx(0.25)
    assert error == pytest.approx(math.sqrt((2 / 3) / 4 + 0.5 / 2) / 2)
    with pytest.raises(InvalidInputError, match="same questions"):
        paired_difference({"a1": 1.0}, theirs, dataset_of)


def test_calibration_curve_by_hand() -> None:
    pairs = [(0.95, True), (0.95, False), (0.55, True), (0.52, True)]
    rows, ece = calibration_curve(pairs, bins=10)
    assert [(r["low"], r["count"], r["accuracy"]) for r in rows] == [
        (0.5, 2.0, 1.0),
        (0.9, 2.0, 0.5),
    ]
    assert ece == pytest.approx((2 * abs(1.0 - 0.535) + 2 * abs(0.5 - 0.95)) / 4)


def test_calibration_floor_by_hand() -> None:
    # a 50 % answer is off by 0.5 whether it comes out right or wrong; sure answers are
    # always as right as they claim
    assert calibration_floor([0.5]) == 0.5
    assert calibration_floor([1.0, 1.0, 0.0]) == 0.0
    # two 50 % answers in one bin: off by 0.5 (both right or both wrong) or 0 (one each),
    # each with chance 1/2: 0.25 in expectation
    assert calibration_floor([0.5, 0.5], draws=4000) == pytest.approx(0.25, abs=0.02)
    assert calibration_floor([]) == 0.0
    with pytest.raises(InvalidInputError, match="draws"):
        calibration_floor([0.5], draws=0)


def test_simultaneous_bar_by_hand() -> None:
    # one challenger, one dataset of two questions, differences [1, 0]: gain 0.5, standard
    # error sqrt(0.5 / 2) = 0.5; a draw holds question 0 twice, once or never (1/4, 1/2,
    # 1/4), so t is -1, 0 or 1 with those chances: its median is 0, its 90 % quantile 1
    differences = {"challenger": {"q0": 1.0, "q1": 0.0}}
    dataset_of = {"q0": "a", "q1": "a"}
    assert simultaneous_bar(differences, dataset_of, 0.5) == 0.0
    assert simultaneous_bar(differences, dataset_of, 0.9) == 1.0
    # the same difference on every question: no draw moves it, it adds nothing
    assert simultaneous_bar({"constant": {"q0": 1.0, "q1": 1.0}}, dataset_of, 0.9) == 0.0
    assert simultaneous_bar({}, dataset_of, 0.9) == 0.0


def _noisy_differences(challengers: int, questions: int = 400) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(7)
    return {
        f"c{c}": {f"q{q}": float(d) for q, d in enumerate(rng.choice([-1, 0, 1], questions))}
        for c in range(challengers)
    }


def test_simultaneous_bar_rises_with_independent_challengers_not_with_copies() -> None:
    dataset_of = {f"q{q}": ("a" if q % 2 else "b") for q in range(400)}
    level = 0.8413  # one standard error, one-sided
    one = _noisy_differences(1)
    alone = simultaneous_bar(one, dataset_of, level)
    assert alone == pytest.approx(1.0, abs=0.15)  # a single challenger: the one-SE rule
    copies = {f"copy {i}": one["c0"] for i in range(20)}
    assert simultaneous_bar(copies, dataset_of, level) == pytest.approx(alone)
    # the largest of 20 independent t-statistics passes its 84 % quantile near
    # the normal quantile of 0.8413 ** (1 / 20), about 2.3
    assert simultaneous_bar(_noisy_differences(20), dataset_of, level) > 1.9


def test_simultaneous_bar_refuses_bad_input() -> None:
    dataset_of = {"q0": "a", "q1": "a"}
    with pytest.raises(InvalidInputError, match="level"):
        simultaneous_bar({"c": {"q0": 1.0, "q1": 0.0}}, dataset_of, 1.0)
    with pytest.raises(InvalidInputError, match="draws"):
        simultaneous_bar({"c": {"q0": 1.0, "q1": 0.0}}, dataset_of, 0.5, draws=0)
    with pytest.raises(InvalidInputError, match="same questions"):
        simultaneous_bar({"c": {"q0": 1.0}, "d": {"q1": 0.0}}, dataset_of, 0.5)
