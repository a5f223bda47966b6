"""Calibrated confidence: what a weighted vote's probability is worth, measured.

:func:`~avengers_graph.voting.weighted_vote` claims the posterior probability that its
answer is right under two assumptions that small models break: samples are
independent given the answer (samples of one model repeat its slips), and wrong
answers spread evenly over the alternatives (they bunch on the same slip). So the
posterior is too sure when the votes agree and not sure enough when they split (the
replay's reliability curve, ``docs/benchmarks.md``). Calibration measures what it is
worth instead (Platt scaling: Platt, 1999; Niculescu-Mizil and Caruana, 2005):

1. :func:`cross_fitted_votes` votes every validation question as service would
   (:func:`replay_vote`: the plan, the rounds and the stopping rule of the graph's
   ``select_experts`` and ``vote``) on the answers calibration recorded, with the
   per-cluster statistics counted on the other questions only (``folds``-fold
   cross-fitting), so a vote never weighs experts by how they did on its own question;
2. :func:`fit_confidence_map` fits ``sigmoid(slope * logit(posterior) + intercept)`` to
   whether each of those votes was right: a logistic regression on one feature;
3. :func:`avengers_graph.calibrate` stores the map with the clusters
   (:class:`~avengers_graph.stores.base.ConfidenceMap`, ``StoreInfo.confidence``) and
   the graph's ``vote`` reports ``map(posterior)`` as the answer's confidence. The
   replay fits it the same way on each calibration part and checks it on the test part.

Adaptive sampling still stops on the posterior (``threshold``): the map was fitted on
votes that stopped that way, and a monotone map keeps their order.

Pure: numpy and scikit-learn, no LangGraph and no Chroma.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.linear_model import LogisticRegression

from avengers_graph.errors import InvalidInputError
from avengers_graph.options import AvengersOptions
from avengers_graph.routing import ClusterMatch, nearest_clusters
from avengers_graph.stores.base import ConfidenceMap, ExpertStats, Graded, logit, tally
from avengers_graph.voting import VoteResult, is_decided, repeated_weights, weighted_vote

__all__ = [
    "CROSS_FIT_FOLDS",
    "MIN_VOTES",
    "RecordedQuestion",
    "cross_fitted_votes",
    "fit_confidence_map",
    "replay_vote",
]

CROSS_FIT_FOLDS = 3
"""Folds of :func:`cross_fitted_votes`: each vote uses statistics of two thirds of the
questions, as the replay's inner selection does."""
MIN_VOTES = 30
"""Fewest cross-fitted votes :func:`fit_confidence_map` fits a map on (fewer: none)."""


def replay_vote(
    matches: Sequence[ClusterMatch],
    stats: Mapping[int, Mapping[str, ExpertStats]],
    keys: Mapping[str, Sequence[str | None]],
    *,
    chance: float,
    options: AvengersOptions,
    unit_costs: Mapping[str, float] | None = None,
) -> tuple[list[tuple[str, int]], VoteResult | None]:
    """Adaptive sampling and the weighted vote, on samples already answered.

    What the graph's ``select_experts`` and ``vote`` do for a question of a keyed
    format (:func:`~avengers_graph.routing.plan_sampling`, rounds of
    ``options.round_size``, :func:`~avengers_graph.voting.weighted_vote`, stopping
    once the posterior reaches ``options.threshold`` or the samples still planned can
    no longer change the winner), drawing each expert's recorded samples in order
    instead of calling it. Without a ``threshold`` every planned sample is drawn.
    An expert runs out of samples when its recorded ones are drawn.

    Args:
        matches: The question's matched clusters.
        stats: Per-cluster, per-expert statistics.
        keys: Each eligible expert's recorded samples' keys (None: no answer), in
            pool order.
        chance: The question's chance rate (:func:`~avengers_graph.voting.chance_rate`).
        options: The routing options (``top_n``, ``samples``, ``budget``,
            ``round_size``, ``depth``, ``reliability_prior``, ``discount``,
            ``threshold``, ``weighted``).
        unit_costs: Expert name to its cost per generated token.

    Returns:
        The samples drawn (``(expert, index of its sample)``, in draw order) and the
        last vote (None when nothing was drawn).
    """
    plan = options.sampling_plan(matches, stats, list(keys), chance=chance, unit_costs=unit_costs)
    weights = options.vote_weights(plan)
    rank = {name: i for i, name in enumerate(plan.evidence)}
    drawn: list[tuple[str, int]] = []
    taken: dict[str, int] = defaultdict(int)
    result = None
    planned = 0
    for round_ in plan.rounds() if options.threshold is not None else [plan.order]:
        planned += len(round_)
        for name in round_:
            if taken[name] < len(keys[name]):
                drawn.append((name, taken[name]))
                taken[name] += 1
        if not drawn:
            continue
        names = [name for name, _ in drawn]
        every = repeated_weights(names + plan.order[planned:], weights, options.discount)
        voted = [keys[name][index] for name, index in drawn]
        result = weighted_vote(
            voted, every[: len(names)], [rank[name] for name in names], chance=chance
        )
        if options.threshold is not None and (
            result.confidence >= options.threshold
            or is_decided(voted, sum(every[len(names) :]), weights=every[: len(names)])
        ):
            break
    return drawn, result


@dataclass(frozen=True)
class RecordedQuestion:
    """One validation question with the answers calibration recorded for it."""

    id: str
    vector: Sequence[float] | npt.NDArray[np.floating[Any]]
    """Its unit embedding (as routed)."""
    chance: float
    """Its chance rate (:func:`~avengers_graph.voting.chance_rate`)."""
    keys: Mapping[str, Sequence[str | None]]
    """Each expert that answered it: its samples' keys, in sample order."""
    right: Mapping[str, Sequence[bool]]
    """Each expert that answered it: whether each sample was right."""
    graded: Sequence[Graded]
    """Its rows of the per-cluster statistics (:func:`~avengers_graph.stores.base.tally`)."""


def cross_fitted_votes(
    questions: Sequence[RecordedQuestion],
    centroids: npt.NDArray[np.floating[Any]],
    options: AvengersOptions,
    *,
    folds: int = CROSS_FIT_FOLDS,
    seed: int = 0,
    unit_costs: Mapping[str, float] | None = None,
) -> list[tuple[float, bool]]:
    """Every question's vote, with statistics that did not see it: ``(posterior, right)``.

    The questions are shuffled (seeded) and cut into ``folds``; each fold's questions
    are routed to their ``options.top_k`` nearest centroids and voted by
    :func:`replay_vote` with the statistics of the other folds' questions. The
    clustering itself saw every question (it is what service routes with). Questions
    no vote answered (no expert's sample had a key) give no pair.

    Raises:
        InvalidInputError: ``folds`` below 2.
    """
    if folds < 2:
        raise InvalidInputError(f"folds must be >= 2, got {folds!r}.")
    order = sorted(questions, key=lambda q: q.id)
    random.Random(seed).shuffle(order)  # noqa: S311 - a split, not a secret
    pairs = []
    for fold in range(folds):
        held = order[fold::folds]
        stats = tally(row for i, q in enumerate(order) if i % folds != fold for row in q.graded)
        for question in held:
            if not question.keys:
                continue
            drawn, result = replay_vote(
                nearest_clusters(centroids, question.vector, options.top_k, options.beta),
                stats,
                question.keys,
                chance=question.chance,
                options=options,
                unit_costs=unit_costs,
            )
            if result is None or not result.votes:
                continue
            name, index = drawn[result.winner]
            pairs.append((result.confidence, bool(question.right[name][index])))
    return pairs


def fit_confidence_map(
    pairs: Sequence[tuple[float, bool]], *, min_votes: int = MIN_VOTES
) -> ConfidenceMap | None:
    """Platt scaling: ``sigmoid(slope * logit(posterior) + intercept)`` fitted to ``pairs``.

    A logistic regression of whether each vote was right on its posterior's logit
    (scikit-learn's, with its default L2 penalty, which pulls the slope toward 0, a
    constant confidence, when votes are few). A negative slope (surer votes right less
    often, which only noise gives) is not kept: the map is then the constant share of
    right votes.

    Args:
        pairs: ``(posterior, right)`` of cross-fitted votes (:func:`cross_fitted_votes`).
        min_votes: Fewest pairs to fit on.

    Returns:
        The map, or None with fewer than ``min_votes`` pairs, or when every vote was
        right or every vote wrong (nothing tells them apart).
    """
    right = [bool(r) for _, r in pairs]
    if len(pairs) < max(min_votes, 1) or all(right) or not any(right):
        return None
    features = np.array([[logit(p)] for p, _ in pairs])
    model = LogisticRegression().fit(features, np.array(right))
    slope, intercept = float(model.coef_[0][0]), float(model.intercept_[0])
    if slope < 0:
        share = sum(right) / len(right)
        slope, intercept = 0.0, logit(share)
    return ConfidenceMap(slope=slope, intercept=intercept, votes=len(pairs))
