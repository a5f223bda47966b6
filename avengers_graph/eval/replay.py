"""Offline replay: routing and voting measured on a recorded response matrix.

No model is called. A :class:`Replay` splits the matrix's questions per dataset
(seeded, 70 % calibration / 30 % test), calibrates on the calibration part exactly as
:func:`avengers_graph.calibrate` does (seeded K-means over the question embeddings;
per cluster and expert, the expert's majority answer graded), and then answers every
test question from the recorded samples with the same pure functions the graph uses
(:func:`~avengers_graph.routing.score_experts`,
:func:`~avengers_graph.routing.select_experts`,
:func:`~avengers_graph.voting.majority_vote`). Answers are compared by the
benchmark's extractor (the ``extracted`` column), as the graph does with
``answer_format`` set to the benchmark's kind.

Side by side on the same test questions:

- **Random**: one sample of an expert drawn uniformly among those asked (its expected
  accuracy).
- **Best-Single**: the expert with the best calibration accuracy, one sample (in
  expectation: each recorded sample taken alone, :meth:`Replay.one_sample`);
  **Best-Single SC**: the same expert, its samples majority-voted.
- **Max-Expert**: the best expert of each dataset (it knows the dataset label), one
  sample in expectation.
- **Oracle**: correct when any recorded sample of any expert is (an upper bound for
  every strategy that answers with one of the recorded samples), at the cost of one
  call to the right sample of least compute.
- **Ensemble configurations** (:class:`EnsembleConfig`): the paper's (nearest
  cluster, top-1 expert, self-consistency), ours (top_n 2-3, samples split across
  experts) and the cost-aware Avengers-Pro ranking (``quality_weight < 1``).

Every outcome carries accuracy, expert calls, generated tokens, compute (generated
tokens times the expert's ``cost`` per token from the matrix's provenance, billions of
parameters for the local pool; 1 for an expert without one) and expert seconds per
question; :func:`evaluate` averages them over several seeded splits.
"""

from __future__ import annotations

import functools
import itertools
import math
import random
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
from langchain_core.embeddings import Embeddings

from avengers_graph.calibration import cluster_questions
from avengers_graph.confidence import (
    RecordedQuestion,
    cross_fitted_votes,
    fit_confidence_map,
    replay_vote,
)
from avengers_graph.embeddings import normalise
from avengers_graph.errors import InvalidInputError
from avengers_graph.eval.recording import Response, ResponseMatrix
from avengers_graph.formats import Detected
from avengers_graph.options import AvengersOptions
from avengers_graph.routing import (
    OVERALL_PRIOR,
    ClusterMatch,
    Cost,
    compact,
    nearest_clusters,
    sample_accuracy,
    score_experts,
    select_experts,
)
from avengers_graph.stores.base import ConfidenceMap, ExpertStats, Graded, tally
from avengers_graph.voting import chance_rate, majority_vote

__all__ = [
    "BASELINES",
    "CHOSEN",
    "GUARD_DRAWS",
    "INCUMBENT",
    "AdaptiveConfig",
    "Comparison",
    "EnsembleConfig",
    "Outcome",
    "Replay",
    "Selection",
    "Summary",
    "best_expert_sc",
    "calibration_curve",
    "calibration_floor",
    "choose_on_calibration",
    "compare",
    "default_configs",
    "default_grid",
    "embed_questions",
    "evaluate",
    "paired_difference",
    "simultaneous_bar",
]

Baseline = Literal["Random", "Best-Single", "Best-Single SC", "Max-Expert", "Oracle"]
BASELINES: tuple[Baseline, ...] = (
    "Random",
    "Best-Single",
    "Best-Single SC",
    "Max-Expert",
    "Oracle",
)
AVERAGE = "average"
"""The key of the macro average (mean over datasets) in per-dataset results."""
INCUMBENT = "best expert, self-consistency"
"""The name of :func:`best_expert_sc`, the nested selection's incumbent."""


@dataclass(frozen=True)
class EnsembleConfig:
    """One configuration of the Avengers graph, as replayed.

    The fields mean what the same arguments of
    :func:`avengers_graph.create_avengers_graph` mean; ``budget`` instead spreads a
    total number of samples over the selected experts, best-ranked first.
    """

    name: str
    top_k: int = 1
    top_n: int = 1
    samples: int = 1
    """Samples per selected expert (ignored when ``budget`` is set)."""
    budget: int | None = None
    """Total samples per question, split as evenly as possible over the top_n experts."""
    beta: float = 3.0
    quality_weight: float = 1.0
    cost: Cost = "compute"
    """What the cost-aware ranking counts (seconds depend on the recording machine's load)."""
    prior_strength: float = 0.0

    def allocation(self, selected: int) -> list[int]:
        """Samples of each selected expert, best-ranked first."""
        if self.budget is None:
            return [self.samples] * selected
        base, extra = divmod(self.budget, selected)
        return [base + (rank < extra) for rank in range(selected)]


@dataclass(frozen=True)
class AdaptiveConfig:
    """Weighted votes with adaptive sampling, as the graph runs them.

    The fields mean what the same options of the graph mean; ``n_clusters`` (None: the
    replay's K) lets a selection grid vary K too.

    Per question, :func:`avengers_graph.routing.plan_sampling` rates the eligible
    experts (those with recorded samples, i.e. whose strategy serves the question's
    format) on the matched clusters, drops those at or below chance and orders the
    samples of the ``top_n`` most reliable by evidence per unit of compute; rounds of
    ``round_size`` samples are drawn until :func:`avengers_graph.voting.weighted_vote`
    is at least ``threshold`` sure, or ``budget`` samples are drawn.
    """

    name: str
    top_k: int = 1
    top_n: int = 3
    per_expert: int = 5
    budget: int = 10
    round_size: int = 2
    threshold: float = 0.9
    depth: bool = False
    prior_strength: float = 4.0
    discount: float = 1.0
    beta: float = 3.0
    n_clusters: int | None = None

    @functools.cached_property
    def settings(self) -> AvengersOptions:
        """:meth:`options` as the graph validates them."""
        return AvengersOptions(**self.options())

    def options(self) -> dict[str, Any]:
        """The graph's options that run this configuration (a pool file's ``routing:``).

        Named as in :class:`~avengers_graph.options.AvengersOptions`. Questions
        without a key to vote on (free text, JSON), which the graph does not sample
        adaptively, rank experts with the same prior (``prior_strength``). K
        (``n_clusters``) is not among them: it is a calibration option.
        """
        return {
            "weighted": True,
            "threshold": self.threshold,
            "top_k": self.top_k,
            "top_n": self.top_n,
            "samples": self.per_expert,
            "budget": self.budget,
            "round_size": self.round_size,
            "depth": self.depth,
            "reliability_prior": self.prior_strength,
            "prior_strength": self.prior_strength,
            "discount": self.discount,
            "beta": self.beta,
        }


def best_expert_sc(max_samples: int = 3) -> AdaptiveConfig:
    """The incumbent of the nested selection: the best expert's self-consistency.

    The expert with the best overall calibration accuracy among those serving the
    question's format (:data:`~avengers_graph.routing.OVERALL_PRIOR`: the clusters play
    no part; the graph's ``reliability_prior`` takes the same value), up to
    ``max_samples`` samples, stopping once they agree beyond doubt (``threshold=0.95``):
    the reference's self-consistency, expressed as a graph configuration.
    """
    return AdaptiveConfig(
        INCUMBENT,
        top_n=1,
        per_expert=max_samples,
        budget=max_samples,
        threshold=0.95,
        prior_strength=OVERALL_PRIOR,
    )


def default_grid(
    max_samples: int = 3, clusters: Sequence[int] = (8, 16, 32)
) -> list[AdaptiveConfig]:
    """The adaptive configurations the nested selection chooses from (:data:`CHOSEN`).

    First the incumbent, :func:`best_expert_sc`; then K in ``clusters``, the ``top_n``
    in {1, 2, 3} most reliable experts, a confidence ``threshold`` in {0.6, 0.8, 0.9,
    0.95}, a ``budget`` of 3, 4, 5, 6 or 9 samples (at most ``max_samples`` of one
    expert), repeated samples of one expert at full or 0.6 weight (``discount``);
    rounds of 2 samples. Budgets 4 and 5 matter when the selection must spend no more
    tokens than a model's self-consistency of 3 samples: most of budget 6's
    configurations spend more than that.
    """
    return [
        best_expert_sc(max_samples),
        *(
            AdaptiveConfig(
                f"K={k} top_n={n} threshold={t} budget={b} discount={d}",
                top_n=n,
                per_expert=max_samples,
                budget=b,
                threshold=t,
                discount=d,
                n_clusters=k,
            )
            for k in clusters
            for n in (1, 2, 3)
            for t in (0.6, 0.8, 0.9, 0.95)
            for b in (3, 4, 5, 6, 9)
            for d in (1.0, 0.6)
        ),
    ]


def default_configs(max_samples: int = 5) -> list[EnsembleConfig]:
    """The paper's configuration, ours, and the cost-aware ones (replay's defaults)."""
    return [
        EnsembleConfig("Paper: top-1 cluster, top-1 expert, SC", samples=max_samples),
        EnsembleConfig("top_n=2 x 3 samples", top_n=2, samples=3),
        EnsembleConfig("top_n=3 x 2 samples", top_n=3, samples=2),
        EnsembleConfig(f"top_n=2, budget {max_samples}", top_n=2, budget=max_samples),
        EnsembleConfig(f"top_n=3, budget {max_samples}", top_n=3, budget=max_samples),
        EnsembleConfig("top_k=3 clusters, top_n=2 x 3", top_k=3, top_n=2, samples=3),
        EnsembleConfig("Pro a=0.9: top-1 by accuracy and compute", quality_weight=0.9),
        EnsembleConfig("Pro a=0.7: top-1 by accuracy and compute", quality_weight=0.7),
    ]


@dataclass(frozen=True)
class Outcome:
    """Mean result per question."""

    accuracy: float
    calls: float
    tokens: float
    seconds: float
    compute: float
    """Generated tokens times each expert's cost per token."""

    @staticmethod
    def mean(outcomes: Sequence[Outcome]) -> Outcome:
        """The mean of several outcomes (all zero for none)."""
        if not outcomes:
            return NOTHING
        return Outcome(
            accuracy=statistics.fmean(o.accuracy for o in outcomes),
            calls=statistics.fmean(o.calls for o in outcomes),
            tokens=statistics.fmean(o.tokens for o in outcomes),
            seconds=statistics.fmean(o.seconds for o in outcomes),
            compute=statistics.fmean(o.compute for o in outcomes),
        )


NOTHING = Outcome(0.0, 0.0, 0.0, 0.0, 0.0)
"""The outcome of no call (a question no selected expert answered)."""


def embed_questions(matrix: ResponseMatrix, embeddings: Embeddings) -> dict[str, np.ndarray]:
    """Unit vectors of the matrix's questions, by question id."""
    texts = [compact(q["question"]) for q in matrix.questions]  # as the graph routes them
    vectors = embeddings.embed_documents(texts)
    return {
        q["id"]: np.asarray(normalise(vector))
        for q, vector in zip(matrix.questions, vectors, strict=True)
    }


class Replay:
    """One seeded calibration/test split of a matrix, calibrated with K clusters.

    Args:
        matrix: The recorded matrix (partial recordings: pass ``matrix.complete()``).
        vectors: Unit question vectors by id (:func:`embed_questions`).
        n_clusters: K of K-means on the calibration questions.
        seed: Seeds the split and K-means.
        test_fraction: Share of each dataset's questions held out for testing.
        experts: The pool to use (default: every expert of the matrix), in order.
        unit_costs: Expert name to its cost per generated token (default: the ``cost``
            of each expert in the matrix's provenance; 1 for an expert without one).

    Raises:
        InvalidInputError: Unknown experts, a dataset too small to split, or K larger
            than the calibration set.
    """

    def __init__(
        self,
        matrix: ResponseMatrix,
        vectors: Mapping[str, np.ndarray],
        *,
        n_clusters: int = 16,
        seed: int = 0,
        test_fraction: float = 0.3,
        experts: Sequence[str] | None = None,
        unit_costs: Mapping[str, float] | None = None,
        fold: tuple[int, int] | None = None,
        questions: Sequence[str] | None = None,
    ) -> None:
        self.experts = list(experts or matrix.experts)
        known = matrix.expert_costs() if unit_costs is None else unit_costs
        self.unit_costs = {expert: float(known.get(expert, 1.0)) for expert in self.experts}
        if unknown := set(self.experts) - set(matrix.experts):
            raise InvalidInputError(f"Experts not in the matrix: {sorted(unknown)}.")
        if not self.experts:
            raise InvalidInputError("The matrix holds no responses.")
        self.samples = matrix.samples()
        self.dataset = {q["id"]: q["dataset"] for q in matrix.questions}
        self.chance = {q["id"]: question_chance(q) for q in matrix.questions}
        self.calibration, self.test = self._split(
            matrix, seed, test_fraction, fold, set(questions) if questions is not None else None
        )
        train = np.stack([vectors[qid] for qid in self.calibration])
        labels, self.centroids = cluster_questions(train, n_clusters, seed)
        self.seed = seed
        self.vectors = vectors
        self.labels: dict[str, int] = dict(zip(self.calibration, labels.tolist(), strict=True))
        self.stats = self._stats(self.labels)
        self.datasets = list(dict.fromkeys(self.dataset[qid] for qid in self.test))

    @staticmethod
    def _split(
        matrix: ResponseMatrix,
        seed: int,
        test_fraction: float,
        fold: tuple[int, int] | None = None,
        within: set[str] | None = None,
    ) -> tuple[list[str], list[str]]:
        by_dataset: dict[str, list[str]] = defaultdict(list)
        for question in matrix.questions:
            if within is None or question["id"] in within:
                by_dataset[question["dataset"]].append(question["id"])
        calibration: list[str] = []
        test: list[str] = []
        if fold is not None:
            index, count = fold
            if not 0 <= index < count or count < 2:
                raise InvalidInputError(f"fold must be (index, count >= 2), got {fold}.")
            for dataset, ids in by_dataset.items():
                if len(ids) < count:
                    raise InvalidInputError(
                        f"Dataset {dataset!r} has {len(ids)} questions: too few for {count} folds."
                    )
                shuffled = sorted(ids)
                random.Random(f"{seed}/{dataset}").shuffle(shuffled)  # noqa: S311 - a split
                test += shuffled[index::count]
                calibration += [q for i, q in enumerate(shuffled) if i % count != index]
            return calibration, test
        for dataset, ids in by_dataset.items():
            n_test = round(len(ids) * test_fraction)
            if not 0 < n_test < len(ids):
                raise InvalidInputError(
                    f"Dataset {dataset!r} has {len(ids)} questions: too few to split "
                    f"{1 - test_fraction:.0%}/{test_fraction:.0%}."
                )
            shuffled = sorted(ids)
            random.Random(f"{seed}/{dataset}").shuffle(shuffled)  # noqa: S311 - a split
            test += shuffled[:n_test]
            calibration += shuffled[n_test:]
        return calibration, test

    # -- what an expert did on one question -------------------------------------------

    def responses(self, qid: str, expert: str, n: int | None = None) -> list[Response]:
        """The expert's first ``n`` samples (all by default) for a question."""
        return self.samples.get((qid, expert), [])[:n]

    def compute(self, response: Response) -> float:
        """Generated tokens times the expert's cost per token."""
        return response.tokens * self.unit_costs[response.expert]

    def _used(self, samples: Sequence[Response], correct: float) -> Outcome:
        return Outcome(
            accuracy=correct,
            calls=len(samples),
            tokens=sum(s.tokens for s in samples),
            seconds=sum(s.seconds for s in samples),
            compute=sum(self.compute(s) for s in samples),
        )

    def vote(self, qid: str, experts: Sequence[str], counts: Sequence[int]) -> Outcome:
        """Majority vote over the first ``counts[r]`` samples of ``experts[r]`` (rank r)."""
        used: list[Response] = []
        ranks: list[int] = []
        for rank, (expert, count) in enumerate(zip(experts, counts, strict=True)):
            picked = self.responses(qid, expert, count)
            used += picked
            ranks += [rank] * len(picked)
        if not used:
            return NOTHING
        result = majority_vote([r.extracted for r in used], ranks)
        return self._used(used, float(used[result.winner].correct))

    def one_sample(self, qid: str, expert: str) -> Outcome:
        """One sample of ``expert`` on a question, in expectation.

        The mean outcome of each of its recorded samples taken alone: the first sample's
        outcome without the luck of which sample came first (none recorded: nothing).
        """
        found = self.responses(qid, expert)
        return Outcome.mean([self._used([r], float(r.correct)) for r in found])

    def _stats(self, labels: Mapping[str, int]) -> dict[int, dict[str, ExpertStats]]:
        return matrix_stats(self.samples, labels, self.experts)

    # -- strategies ---------------------------------------------------------------------

    def _one_sample_accuracy(self, ids: Iterable[str], expert: str) -> float:
        """The chance that one sample of ``expert`` is right, over the questions ``ids``.

        Estimated from all its recorded samples (a question it does not serve counts as
        wrong): the same quantity as its first sample's accuracy, with less noise.
        """
        results = [self.one_sample(qid, expert).accuracy for qid in ids]
        return statistics.fmean(results) if results else 0.0

    def best_single(self) -> str:
        """The expert with the best calibration accuracy (one sample, mean over datasets)."""
        by_dataset: dict[str, list[str]] = defaultdict(list)
        for qid in self.calibration:
            by_dataset[self.dataset[qid]].append(qid)

        def score(expert: str) -> float:
            return statistics.fmean(
                self._one_sample_accuracy(ids, expert) for ids in by_dataset.values()
            )

        return max(self.experts, key=score)

    def self_consistency(self, reference: str) -> Callable[[str], Outcome]:
        """One model's best strategy (on calibration) with all its samples majority-voted.

        Per question, among the model's strategies that serve it, the one whose samples
        are right most often over the calibration part
        (:func:`~avengers_graph.routing.sample_accuracy`): the statistic the graph ranks
        experts by when the clusters play no part (:func:`best_expert_sc`), so when the
        model holds the best expert, the two answer with the same strategy.

        Args:
            reference: The model's name: its experts are ``reference`` and
                ``reference:<strategy>``.
        """
        own = [e for e in self.experts if e == reference or e.startswith(f"{reference}:")]
        if not own:
            raise InvalidInputError(f"No expert of the model {reference!r} in the pool.")
        overall = sample_accuracy(self.stats)
        accuracy = {e: overall.get(e, 0.0) for e in own}

        def answer(qid: str) -> Outcome:
            served = [e for e in own if self.responses(qid, e)]
            if not served:
                return NOTHING
            best = max(served, key=accuracy.__getitem__)
            return self.vote(qid, [best], [len(self.responses(qid, best))])

        return answer

    def max_expert(self, dataset: str) -> str:
        """The expert with the best calibration accuracy on one dataset (one sample)."""
        ids = [qid for qid in self.calibration if self.dataset[qid] == dataset]
        return max(self.experts, key=lambda expert: self._one_sample_accuracy(ids, expert))

    def baseline(self, name: Baseline) -> Callable[[str], Outcome]:
        """The per-question outcome function of a baseline."""
        if name == "Random":
            return lambda qid: Outcome.mean(
                [self.one_sample(qid, e) for e in self.experts if self.responses(qid, e)]
            )
        if name in ("Best-Single", "Best-Single SC"):
            best = self.best_single()
            if name == "Best-Single":
                return lambda qid: self.one_sample(qid, best)
            return lambda qid: self.vote(qid, [best], [len(self.responses(qid, best))])
        if name == "Max-Expert":
            best_of = {dataset: self.max_expert(dataset) for dataset in self.datasets}
            return lambda qid: self.one_sample(qid, best_of[self.dataset[qid]])
        if name == "Oracle":
            return self._oracle
        raise InvalidInputError(f"Unknown baseline {name!r}; choose from {BASELINES}.")

    def _oracle(self, qid: str) -> Outcome:
        every = [r for e in self.experts for r in self.responses(qid, e)]
        right = [r for r in every if r.correct]
        if not every:
            return NOTHING
        cheapest = min(right or every, key=self.compute)
        return self._used([cheapest], float(bool(right)))

    def route(self, qid: str, config: EnsembleConfig) -> list[str]:
        """The experts the graph would select for a test question, best first."""
        matches = self.matches(qid, config.top_k, config.beta)
        asked = [e for e in self.experts if self.responses(qid, e)] or self.experts
        scores = score_experts(
            matches,
            self.stats,
            asked,
            prior_strength=config.prior_strength,
            quality_weight=config.quality_weight,
            cost=config.cost,
            unit_costs=self.unit_costs,
        )
        return [s.name for s in select_experts(scores, config.top_n)]

    def ensemble(self, config: EnsembleConfig) -> Callable[[str], Outcome]:
        """The per-question outcome function of an ensemble configuration."""

        def answer(qid: str) -> Outcome:
            experts = self.route(qid, config)
            return self.vote(qid, experts, config.allocation(len(experts)))

        return answer

    def matches(self, qid: str, top_k: int, beta: float) -> list[ClusterMatch]:
        """The ``top_k`` calibration clusters nearest a question, weighted."""
        return nearest_clusters(self.centroids, self.vectors[qid], top_k, beta)

    def adaptive_answer(self, qid: str, config: AdaptiveConfig) -> tuple[Outcome, float]:
        """One question answered by weighted votes with adaptive sampling.

        :func:`~avengers_graph.confidence.replay_vote` on the recorded samples: rounds
        are drawn until the vote is ``threshold`` sure or the samples still planned can
        no longer change its winner, as the graph does.

        Returns:
            The outcome and the vote's posterior (the probability it claims of being
            right before any calibrated map; 0 when nothing voted).
        """
        keys = {
            e: [r.extracted for r in found]
            for e in self.experts
            if (found := self.responses(qid, e))
        }
        if not keys:
            return NOTHING, 0.0
        drawn, result = replay_vote(
            self.matches(qid, config.top_k, config.beta),
            self.stats,
            keys,
            chance=self.chance[qid],
            options=config.settings,
            unit_costs=self.unit_costs,
        )
        used = [self.responses(qid, name)[index] for name, index in drawn]
        if result is None or not result.votes:
            return (self._used(used, 0.0) if used else NOTHING), 0.0
        return self._used(used, float(used[result.winner].correct)), result.confidence

    def recorded(self, qid: str) -> RecordedQuestion:
        """A calibration question with its samples, as the confidence map's fit takes it."""
        found = {e: self.responses(qid, e) for e in self.experts if self.responses(qid, e)}
        return RecordedQuestion(
            qid,
            self.vectors[qid],
            self.chance[qid],
            keys={e: [r.extracted for r in samples] for e, samples in found.items()},
            right={e: [r.correct for r in samples] for e, samples in found.items()},
            graded=matrix_graded(self.samples, qid, self.labels[qid], self.experts),
        )

    def confidence_map(self, config: AdaptiveConfig) -> ConfidenceMap | None:
        """A configuration's confidence map, fitted on the calibration part alone.

        As :func:`avengers_graph.calibrate` fits it: every calibration question voted
        with statistics of the other folds (:func:`~avengers_graph.confidence.cross_fitted_votes`),
        then :func:`~avengers_graph.confidence.fit_confidence_map`.
        """
        pairs = cross_fitted_votes(
            [self.recorded(qid) for qid in self.calibration],
            self.centroids,
            config.settings,
            seed=self.seed,
            unit_costs=self.unit_costs,
        )
        return fit_confidence_map(pairs)

    def adaptive(self, config: AdaptiveConfig) -> Callable[[str], Outcome]:
        """The per-question outcome function of an adaptive configuration."""
        return lambda qid: self.adaptive_answer(qid, config)[0]

    def answers(self, strategy: Callable[[str], Outcome]) -> dict[str, Outcome]:
        """The strategy's outcome on every test question, by question id."""
        return {qid: strategy(qid) for qid in self.test}

    def outcomes(self, strategy: Callable[[str], Outcome]) -> dict[str, Outcome]:
        """Mean outcome per dataset on the test questions, plus the macro average."""
        return self.per_dataset(self.answers(strategy))

    def per_dataset(self, answers: Mapping[str, Outcome]) -> dict[str, Outcome]:
        """Mean outcome per dataset of per-question outcomes, plus the macro average."""
        per_dataset = {
            dataset: Outcome.mean(
                [outcome for qid, outcome in answers.items() if self.dataset[qid] == dataset]
            )
            for dataset in self.datasets
        }
        per_dataset[AVERAGE] = Outcome.mean(list(per_dataset.values()))
        return per_dataset


def matrix_graded(
    samples: Mapping[tuple[str, str], Sequence[Response]],
    qid: str,
    cluster: int,
    experts: Sequence[str],
) -> list[Graded]:
    """A recorded question's rows of the per-cluster statistics, one per expert asked.

    Its majority answer right or not, mean generated tokens and seconds, right samples
    of samples (:class:`~avengers_graph.stores.base.Graded`).
    """
    rows = []
    for expert in experts:
        drawn = samples.get((qid, expert), [])
        if not drawn:
            continue
        vote = majority_vote([r.extracted for r in drawn], [0] * len(drawn))
        rows.append(
            Graded(
                cluster,
                expert,
                bool(vote.votes) and drawn[vote.winner].correct,
                statistics.fmean(r.tokens for r in drawn),
                statistics.fmean(r.seconds for r in drawn),
                sum(r.correct for r in drawn),
                len(drawn),
            )
        )
    return rows


def matrix_stats(
    samples: Mapping[tuple[str, str], Sequence[Response]],
    labels: Mapping[str, int],
    experts: Sequence[str],
) -> dict[int, dict[str, ExpertStats]]:
    """Per-cluster statistics of recorded samples, as :func:`avengers_graph.calibrate` keeps.

    Per cluster and expert: the questions whose majority answer is right (``correct``
    of ``total``: the questions the expert was asked), the right samples
    (``sample_correct`` of ``samples``), mean generated tokens and seconds
    (:func:`matrix_graded`'s rows, tallied).

    Args:
        samples: Recorded samples by ``(question id, expert)``, in sample order.
        labels: Question id to its cluster.
        experts: The experts to count.
    """
    return tally(
        row
        for qid, cluster in labels.items()
        for row in matrix_graded(samples, qid, cluster, experts)
    )


def question_chance(question: Mapping[str, object]) -> float:
    """A recorded question's chance rate: its format's (open formats: ``OPEN_CHANCE``)."""
    name = str(question.get("format") or question.get("kind") or "free")
    if name == "text" and not question.get("format"):
        name = "free"
    options = question.get("options")
    return chance_rate(Detected(name, tuple(options) if isinstance(options, list) else ()))


@dataclass(frozen=True)
class Summary:
    """Results of several strategies averaged over seeded splits."""

    datasets: list[str]
    results: dict[str, dict[str, Outcome]]
    """Strategy name to dataset (and ``"average"``) to mean outcome."""
    spread: dict[str, float] = field(default_factory=dict)
    """Strategy name to the standard deviation of its average accuracy over splits."""
    splits: int = 1
    questions: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    """Strategy name to, per split, the accuracy on each test question by id (what
    :func:`compare` resamples)."""
    dataset_of: dict[str, str] = field(default_factory=dict)
    """Question id to its dataset."""
    confidence: dict[str, list[tuple[float, bool]]] = field(default_factory=dict)
    """Adaptive strategy name to ``(confidence, right)`` per answered test question: the
    vote's posterior through the confidence map fitted on the split's calibration part
    (:meth:`Replay.confidence_map`), as the graph reports it."""
    selections: list[Selection] = field(default_factory=list)
    """Per split, what the nested selection chose and on what evidence."""
    split_accuracy: dict[str, list[float]] = field(default_factory=dict)
    """Strategy name to its average accuracy in each split, in split order (``spread``
    is their standard deviation; plots draw error bars from them)."""
    best_single: list[str] = field(default_factory=list)
    """Per split, the expert Best-Single is (chosen on that split's calibration part)."""
    posterior: dict[str, list[tuple[float, bool]]] = field(default_factory=dict)
    """As ``confidence``, with the vote's posterior before the map."""

    @property
    def chosen(self) -> list[str]:
        """Per split, the name of the configuration the nested selection chose."""
        return [selection.config.name for selection in self.selections]

    def accuracy(self, strategy: str, dataset: str = AVERAGE) -> float:
        """Mean accuracy of a strategy on a dataset (default: the macro average)."""
        return self.results[strategy][dataset].accuracy

    def gain(self, strategy: str, over: str) -> float:
        """Average-accuracy difference ``strategy - over`` (in accuracy points, 0-1)."""
        return self.accuracy(strategy) - self.accuracy(over)


CHOSEN = "Ensemble (chosen on calibration)"
"""The strategy :func:`evaluate` selects on each calibration split alone (nested)."""


@dataclass(frozen=True)
class Selection:
    """What :func:`choose_on_calibration` chose, and the evidence it weighed."""

    config: AdaptiveConfig
    challenger: str | None = None
    """The most accurate affordable configuration other than the incumbent, when it
    ranked above the incumbent (more accurate, or as accurate for fewer tokens) and the
    incumbent was affordable too (else ``None``: no guard ran)."""
    t: float | None = None
    """The challenger's gain over the incumbent in standard errors of the paired
    difference (infinite for a gain with no spread)."""
    bar: float | None = None
    """What ``t`` had to exceed (:func:`simultaneous_bar`)."""


def _sc_name(reference: str) -> str:
    return f"{reference} SC"


def _replay_for(
    cache: dict[int, Replay],
    k: int,
    build: Callable[[int], Replay],
) -> Replay:
    if k not in cache:
        cache[k] = build(k)
    return cache[k]


def choose_on_calibration(
    matrix: ResponseMatrix,
    vectors: Mapping[str, np.ndarray],
    calibration: Sequence[str],
    grid: Sequence[AdaptiveConfig],
    *,
    n_clusters: int,
    seed: int = 0,
    inner_folds: int = 3,
    experts: Sequence[str] | None = None,
    reference: str | None = None,
    standard_errors: float = 1.0,
) -> Selection:
    """The configuration of ``grid`` that does best on the calibration questions alone.

    The calibration questions are cut into ``inner_folds`` folds; each configuration
    is calibrated on the other folds and answers the held-out one, exactly as the outer
    evaluation does, so every calibration question is answered once. With a
    ``reference`` model, only configurations spending at most the tokens of its
    self-consistency on those questions compete (if none does, the cheapest wins).

    The grid's first configuration is the incumbent (:func:`default_grid`'s is
    :func:`best_expert_sc`). The most accurate of the others (ties: fewer tokens)
    replaces it only when its gain in macro-average accuracy, in standard errors of the
    paired difference (:func:`paired_difference`), clears the bar of
    :func:`simultaneous_bar` at the one-sided level of ``standard_errors`` (1: about
    84 %). The best of hundreds of configurations scored on a few hundred questions is
    the luckiest as much as the best (the maximum of noisy scores is biased upward):
    the bar is what the largest of the challengers' t-statistics reaches by chance, so
    one challenger faces about ``standard_errors`` standard errors, as in the
    one-standard-error rule (Hastie, Tibshirani and Friedman, *The Elements of
    Statistical Learning*, section 7.10), and many independent ones a higher bar. The
    guard keeps the simpler choice unless the evidence for the other is clear.
    """
    if not grid:
        raise InvalidInputError("choose_on_calibration needs a non-empty grid.")
    if standard_errors < 0:
        raise InvalidInputError(f"standard_errors must be >= 0, got {standard_errors!r}.")
    answered: dict[str, dict[str, Outcome]] = {config.name: {} for config in grid}
    sc: dict[str, Outcome] = {}
    base: Replay | None = None
    for index in range(inner_folds):
        replays: dict[int, Replay] = {}

        def build(k: int, index: int = index) -> Replay:
            return Replay(
                matrix,
                vectors,
                n_clusters=k,
                seed=seed,
                experts=experts,
                fold=(index, inner_folds),
                questions=calibration,
            )

        base = _replay_for(replays, n_clusters, build)
        if reference is not None:
            sc |= base.answers(base.self_consistency(reference))
        for config in grid:
            if (config.n_clusters or n_clusters) > len(base.calibration):
                answered.pop(config.name, None)  # K beyond the questions: never chosen
                continue
            if config.name in answered:
                replay = _replay_for(replays, config.n_clusters or n_clusters, build)
                answered[config.name] |= replay.answers(replay.adaptive(config))
    if base is None or not answered:
        raise InvalidInputError("choose_on_calibration needs inner_folds >= 1 and a usable K.")
    means = {name: base.per_dataset(answers)[AVERAGE] for name, answers in answered.items()}
    budget = base.per_dataset(sc)[AVERAGE].tokens if reference is not None else math.inf
    scored = [config for config in grid if config.name in means]
    affordable = [config for config in scored if means[config.name].tokens <= budget]
    if not affordable:
        return Selection(min(scored, key=lambda config: means[config.name].tokens))
    best = max(affordable, key=lambda c: (means[c.name].accuracy, -means[c.name].tokens))
    incumbent = grid[0]
    if best is incumbent or incumbent not in affordable:
        return Selection(best)
    kept = {qid: o.accuracy for qid, o in answered[incumbent.name].items()}
    differences = {
        config.name: {qid: o.accuracy - kept[qid] for qid, o in answered[config.name].items()}
        for config in affordable
        if config is not incumbent
    }
    gain, error = paired_difference(
        {qid: o.accuracy for qid, o in answered[best.name].items()}, kept, base.dataset
    )
    level = statistics.NormalDist().cdf(standard_errors)
    bar = simultaneous_bar(differences, base.dataset, level, seed=seed)
    t = gain / error if error > 0 else (math.inf if gain > 0 else 0.0)
    return Selection(best if t > bar else incumbent, best.name, t, bar)


def paired_difference(
    mine: Mapping[str, float], theirs: Mapping[str, float], dataset_of: Mapping[str, str]
) -> tuple[float, float]:
    """Macro-average accuracy difference ``mine - theirs`` and its standard error.

    Per dataset, the mean and the sample variance of the per-question differences;
    the difference is the mean of the datasets' means, its standard error
    ``sqrt(sum(variance / questions)) / datasets``.

    Raises:
        InvalidInputError: The two did not answer the same questions.
    """
    if set(mine) != set(theirs):
        raise InvalidInputError("paired_difference needs results on the same questions.")
    by_dataset: dict[str, list[float]] = defaultdict(list)
    for qid, accuracy in mine.items():
        by_dataset[dataset_of[qid]].append(accuracy - theirs[qid])
    if not by_dataset:
        return 0.0, 0.0
    gain = statistics.fmean(statistics.fmean(d) for d in by_dataset.values())
    variance = sum(statistics.variance(d) / len(d) for d in by_dataset.values() if len(d) > 1)
    return gain, math.sqrt(variance) / len(by_dataset)


GUARD_DRAWS = 2000
"""Bootstrap draws of :func:`simultaneous_bar` in :func:`choose_on_calibration`."""


def simultaneous_bar(
    differences: Mapping[str, Mapping[str, float]],
    dataset_of: Mapping[str, str],
    level: float,
    *,
    draws: int = GUARD_DRAWS,
    seed: int = 0,
) -> float:
    """The t-statistic the best of several challengers must beat to be told from luck.

    ``differences`` maps each challenger to its per-question accuracy differences
    against the incumbent, all on the same questions. The questions are resampled
    ``draws`` times within each dataset (a stratified bootstrap); in each draw every
    challenger's macro-average difference, centred on its observed one and divided by
    its standard error (:func:`paired_difference`), gives a t-statistic, and the draw's
    largest counts. The bar is that maximum's ``level`` quantile: the max-t statistic
    of simultaneous inference (Westfall and Young, *Resampling-Based Multiple Testing*,
    1993), which, unlike a Bonferroni bar, does not rise for challengers that answer
    alike. A challenger whose standard error is 0 (the same difference on every question
    of each dataset: no draw moves it) adds nothing to the maximum; with none left the
    bar is 0.

    Raises:
        InvalidInputError: ``level`` is not strictly between 0 and 1, ``draws`` < 1, or
            the challengers did not answer the same questions.
    """
    if not 0 < level < 1:
        raise InvalidInputError(f"level must be strictly between 0 and 1, got {level!r}.")
    if draws < 1:
        raise InvalidInputError(f"draws must be >= 1, got {draws!r}.")
    if not differences:
        return 0.0
    qids = sorted(next(iter(differences.values())))
    if any(set(per_question) != set(qids) for per_question in differences.values()):
        raise InvalidInputError("simultaneous_bar needs every challenger on the same questions.")
    observed, errors, columns = [], [], []
    for per_question in differences.values():
        gain, error = paired_difference(per_question, dict.fromkeys(per_question, 0.0), dataset_of)
        if error > 0:
            observed.append(gain)
            errors.append(error)
            columns.append([per_question[qid] for qid in qids])
    if not columns:
        return 0.0
    by_dataset: dict[str, list[int]] = defaultdict(list)
    for index, qid in enumerate(qids):
        by_dataset[dataset_of[qid]].append(index)
    rng = np.random.default_rng(seed)
    weights = np.zeros((draws, len(qids)))
    for indices in by_dataset.values():
        counts = rng.multinomial(len(indices), [1 / len(indices)] * len(indices), size=draws)
        weights[:, indices] = counts / (len(indices) * len(by_dataset))
    resampled = weights @ np.array(columns).T
    t = (resampled - np.array(observed)) / np.array(errors)
    return float(np.quantile(t.max(axis=1), level))


def evaluate(
    matrix: ResponseMatrix,
    vectors: Mapping[str, np.ndarray],
    configs: Sequence[EnsembleConfig],
    *,
    baselines: Sequence[Baseline] = BASELINES,
    n_clusters: int = 16,
    seeds: Sequence[int] = (0,),
    experts: Sequence[str] | None = None,
    test_fraction: float = 0.3,
    adaptive: Sequence[AdaptiveConfig] = (),
    grid: Sequence[AdaptiveConfig] = (),
    folds: int | None = None,
    inner_folds: int = 3,
    reference: str | None = None,
) -> Summary:
    """Baselines and ensemble configurations on the same test questions, per split.

    Each seed makes one split (and one K-means); with ``folds``, the first seed's
    ``folds``-fold cross-validation replaces the seeded splits (every question is
    tested once). Outcomes are averaged over splits.

    Args:
        matrix: The recorded matrix.
        vectors: Unit question vectors by id.
        configs: Fixed ensemble configurations (majority votes).
        baselines: Reference strategies to include.
        n_clusters: K of K-means.
        seeds: Seeds of the splits.
        experts: The pool (default: every expert of the matrix).
        test_fraction: Held-out share per dataset (seeded splits).
        adaptive: Fixed adaptive configurations (weighted votes) to report.
        grid: Adaptive configurations to choose from on each calibration split alone
            (:func:`choose_on_calibration`); the choice is reported as :data:`CHOSEN`
            and the confidence of its answers kept in ``Summary.confidence``.
        folds: Cross-validation folds instead of seeded splits.
        inner_folds: Folds of the nested selection.
        reference: A model name prefix (``qwen2.5-coder-1.5b``): report its best
            strategy's self-consistency, and let the selection spend no more tokens.
    """
    if not seeds:
        raise InvalidInputError("evaluate needs at least one seed.")
    names = [
        *baselines,
        *(c.name for c in configs),
        *(c.name for c in adaptive),
        *([CHOSEN] if grid else []),
        *([_sc_name(reference)] if reference else []),
    ]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"Strategy names must be unique, got {names}.")
    runs: dict[str, list[dict[str, Outcome]]] = defaultdict(list)
    questions: dict[str, list[dict[str, float]]] = defaultdict(list)
    confidence: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    posterior: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    selections: list[Selection] = []
    best_single: list[str] = []
    datasets: list[str] = []
    dataset_of: dict[str, str] = {}
    splits = (
        [(seeds[0], (index, folds)) for index in range(folds)]
        if folds
        else [(seed, None) for seed in seeds]
    )
    for seed, fold in splits:
        replay = Replay(
            matrix,
            vectors,
            n_clusters=n_clusters,
            seed=seed,
            test_fraction=test_fraction,
            experts=experts,
            fold=fold,
        )
        datasets, dataset_of = replay.datasets, replay.dataset
        best_single.append(replay.best_single())
        strategies: list[tuple[str, Callable[[str], Outcome]]] = [
            *((b, replay.baseline(b)) for b in baselines),
            *((c.name, replay.ensemble(c)) for c in configs),
        ]
        if reference:
            strategies.append((_sc_name(reference), replay.self_consistency(reference)))
        timed: list[tuple[str, AdaptiveConfig]] = [(c.name, c) for c in adaptive]
        if grid:
            pick = choose_on_calibration(
                matrix,
                vectors,
                replay.calibration,
                grid,
                n_clusters=n_clusters,
                seed=seed,
                inner_folds=inner_folds,
                experts=experts,
                reference=reference,
            )
            selections.append(pick)
            timed.append((CHOSEN, pick.config))
        for name, strategy in strategies:
            answers = replay.answers(strategy)
            runs[name].append(replay.per_dataset(answers))
            questions[name].append({qid: o.accuracy for qid, o in answers.items()})
        for name, config in timed:
            own = (
                replay
                if config.n_clusters in (None, n_clusters)
                else Replay(
                    matrix,
                    vectors,
                    n_clusters=config.n_clusters or n_clusters,
                    seed=seed,
                    test_fraction=test_fraction,
                    experts=experts,
                    fold=fold,
                )
            )
            pairs = {qid: own.adaptive_answer(qid, config) for qid in own.test}
            answers = {qid: outcome for qid, (outcome, _) in pairs.items()}
            runs[name].append(own.per_dataset(answers))
            questions[name].append({qid: o.accuracy for qid, o in answers.items()})
            voted = [(c, o.accuracy == 1.0) for o, c in pairs.values() if o.calls]
            fitted = own.confidence_map(config)  # no answer (c = 0) claims nothing
            posterior[name] += voted
            confidence[name] += [(fitted(c) if fitted and c else c, ok) for c, ok in voted]
    results = {
        name: {key: Outcome.mean([run[key] for run in per_seed]) for key in per_seed[0]}
        for name, per_seed in runs.items()
    }
    split_accuracy = {
        name: [run[AVERAGE].accuracy for run in per_seed] for name, per_seed in runs.items()
    }
    spread = {name: statistics.pstdev(values) for name, values in split_accuracy.items()}
    tested = {qid for per_split in questions.values() for split in per_split for qid in split}
    return Summary(
        datasets,
        results,
        spread,
        len(splits),
        dict(questions),
        {qid: dataset for qid, dataset in dataset_of.items() if qid in tested},
        dict(confidence),
        selections,
        split_accuracy,
        best_single,
        dict(posterior),
    )


def calibration_curve(
    pairs: Sequence[tuple[float, bool]], bins: int = 10
) -> tuple[list[dict[str, float]], float]:
    """Reliability curve and expected calibration error of claimed confidences.

    Args:
        pairs: ``(confidence, right)`` per answered question.
        bins: Equal-width confidence bins over [0, 1].

    Returns:
        One row per non-empty bin (``low``, ``high``, ``count``, ``confidence``: mean
        claimed, ``accuracy``: share right) and the ECE: the count-weighted mean of
        ``|accuracy - confidence|``.
    """
    if bins < 1:
        raise InvalidInputError(f"bins must be >= 1, got {bins}.")
    grouped: dict[int, list[tuple[float, bool]]] = defaultdict(list)
    for conf, right in pairs:
        grouped[min(int(conf * bins), bins - 1)].append((conf, right))
    rows = []
    error = 0.0
    for index in sorted(grouped):
        members = grouped[index]
        mean_conf = statistics.fmean(c for c, _ in members)
        accuracy = statistics.fmean(float(r) for _, r in members)
        rows.append(
            {
                "low": index / bins,
                "high": (index + 1) / bins,
                "count": float(len(members)),
                "confidence": mean_conf,
                "accuracy": accuracy,
            }
        )
        error += len(members) * abs(accuracy - mean_conf)
    return rows, (error / len(pairs) if pairs else 0.0)


def calibration_floor(
    confidences: Sequence[float], bins: int = 10, *, draws: int = 1000, seed: int = 0
) -> float:
    """The expected calibration error a perfectly calibrated confidence shows by chance.

    Each answer is drawn right with exactly its confidence, ``draws`` times; the mean
    of :func:`calibration_curve`'s error over the draws. On a few hundred answers it is
    several points: an observed error near it is as small as these answers can show.
    """
    if draws < 1:
        raise InvalidInputError(f"draws must be >= 1, got {draws!r}.")
    if not confidences:
        return 0.0
    rng = np.random.default_rng(seed)
    claimed = np.asarray(confidences, dtype=float)
    errors = [
        calibration_curve(
            list(zip(claimed.tolist(), (rng.random(len(claimed)) < claimed).tolist(), strict=True)),
            bins,
        )[1]
        for _ in range(draws)
    ]
    return float(np.mean(errors))


@dataclass(frozen=True)
class Comparison:
    """One strategy against another on the same test questions, paired per question."""

    strategy: str
    over: str
    gain: float
    """Average-accuracy difference ``strategy - over`` (as :meth:`Summary.gain`)."""
    low: float
    """Lower end of the bootstrap interval of ``gain``."""
    high: float
    """Upper end of the bootstrap interval of ``gain``."""
    wins: float
    """Test questions per split that ``strategy`` gets right and ``over`` wrong."""
    losses: float
    """Test questions per split that ``over`` gets right and ``strategy`` wrong."""
    questions: int = 0
    """Distinct test questions the two were compared on."""

    def questions_for(self, margin: float = 0.03) -> int:
        """Questions it would take for the interval to be ``+/- margin`` wide.

        The interval's width shrinks as one over the square root of the questions, so
        at the spread measured here, a gain of ``margin`` is told from noise (its
        interval clears 0) from about this many questions on.
        """
        if margin <= 0:
            raise InvalidInputError(f"margin must be > 0, got {margin!r}.")
        half = (self.high - self.low) / 2
        return math.ceil(self.questions * (half / margin) ** 2)


def compare(
    summary: Summary,
    strategy: str,
    over: str,
    *,
    against: Summary | None = None,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> Comparison:
    """``strategy`` against ``over`` with a paired bootstrap interval over questions.

    The gain is the one the summaries report: per split, the macro average over
    datasets of the per-question accuracy differences; then the mean over splits. Each
    bootstrap replicate redraws the questions of every dataset with replacement (each
    question keeps its result in every split that tests it) and recomputes that gain;
    the interval holds the central ``level`` of the replicates. It measures how much the
    gain depends on which questions were drawn, not the models' sampling randomness
    (the recorded samples are fixed).

    Args:
        summary: Holds ``strategy``.
        strategy: The strategy to judge.
        over: The strategy it is compared with.
        against: Holds ``over`` when another evaluation did (e.g. another pool, on
            the same matrix and seeds, hence the same test questions); default
            ``summary``.
        level: Coverage of the interval.
        resamples: Bootstrap replicates.
        seed: Seeds the replicates.

    Raises:
        InvalidInputError: A strategy is unknown, or the two were not tested on the
            same questions.
    """
    other = summary if against is None else against
    for name, holder in ((strategy, summary), (over, other)):
        if name not in holder.questions:
            raise InvalidInputError(f"No per-question results for {name!r}.")
    mine, theirs = summary.questions[strategy], other.questions[over]
    if [set(split) for split in mine] != [set(split) for split in theirs]:
        raise InvalidInputError(
            f"{strategy!r} and {over!r} were not tested on the same questions "
            "(evaluate both on the same matrix with the same seeds)."
        )
    if not 0 < level < 1 or resamples < 1:
        raise InvalidInputError(
            f"level must be between 0 and 1 and resamples at least 1, got {level}, {resamples}."
        )
    rng = np.random.default_rng(seed)
    splits = len(mine)
    gains = np.zeros(resamples + 1)  # replicate 0: every question once (the reported gain)
    by_dataset: dict[str, set[str]] = defaultdict(set)
    for split in mine:
        for qid in split:
            by_dataset[summary.dataset_of[qid]].add(qid)
    for questions in by_dataset.values():
        ids = sorted(questions)
        tested = np.array([[qid in split for qid in ids] for split in mine], dtype=float)
        differences = np.array(
            [
                [split_a.get(q, 0.0) - split_b.get(q, 0.0) for q in ids]
                for split_a, split_b in zip(mine, theirs, strict=True)
            ]
        )
        weights = np.vstack(
            [np.ones(len(ids)), rng.multinomial(len(ids), [1 / len(ids)] * len(ids), resamples)]
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            per_split = (weights @ (tested * differences).T) / (weights @ tested.T)
        # a replicate that drew none of a split's test questions of this dataset skips it
        gains += np.nanmean(per_split, axis=1) / len(by_dataset)
    tail = (1 - level) / 2
    low, high = np.quantile(gains[1:], [tail, 1 - tail])
    wins = losses = 0.0
    for split_a, split_b in zip(mine, theirs, strict=True):
        for qid, accuracy in split_a.items():
            wins += max(0.0, accuracy - split_b[qid])
            losses += max(0.0, split_b[qid] - accuracy)
    return Comparison(
        strategy,
        over,
        float(gains[0]),
        float(low),
        float(high),
        wins / splits,
        losses / splits,
        sum(len(questions) for questions in by_dataset.values()),
    )


def subsets(experts: Sequence[str], size: int) -> list[tuple[str, ...]]:
    """Every sub-pool of ``size`` experts, in pool order."""
    return list(itertools.combinations(experts, size))


def with_name(config: EnsembleConfig, name: str) -> EnsembleConfig:
    """A copy of a configuration under another name."""
    return replace(config, name=name)
