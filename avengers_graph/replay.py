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

- **Random**: one sample of an expert drawn uniformly (its expected accuracy).
- **Best-Single**: the expert with the best calibration accuracy, one sample;
  **Best-Single SC**: the same expert, its samples majority-voted.
- **Max-Expert**: the best expert of each dataset (it knows the dataset label), one sample.
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

import itertools
import random
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from langchain_core.embeddings import Embeddings

from avengers_graph.calibration import cluster_questions
from avengers_graph.embeddings import normalise
from avengers_graph.errors import InvalidInputError
from avengers_graph.recording import Response, ResponseMatrix
from avengers_graph.routing import Cost, compact, match_clusters, score_experts, select_experts
from avengers_graph.store import ExpertStats
from avengers_graph.voting import majority_vote

__all__ = [
    "BASELINES",
    "Comparison",
    "EnsembleConfig",
    "Outcome",
    "Replay",
    "Summary",
    "compare",
    "default_configs",
    "embed_questions",
    "evaluate",
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


def default_configs(max_samples: int = 5) -> list[EnsembleConfig]:
    """The paper's configuration, ours, and the cost-aware ones (replay's defaults)."""
    return [
        EnsembleConfig("Paper: top-1 cluster, top-1 expert, SC", samples=max_samples),
        EnsembleConfig("top_n=2 x 3 samples", top_n=2, samples=3),
        EnsembleConfig("top_n=3 x 2 samples", top_n=3, samples=2),
        EnsembleConfig("top_n=2, budget 5", top_n=2, budget=max_samples),
        EnsembleConfig("top_n=3, budget 5", top_n=3, budget=max_samples),
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
        self.calibration, self.test = self._split(matrix, seed, test_fraction)
        train = np.stack([vectors[qid] for qid in self.calibration])
        labels, self.centroids = cluster_questions(train, n_clusters, seed)
        self.vectors = vectors
        self.stats = self._stats(dict(zip(self.calibration, labels.tolist(), strict=True)))
        self.datasets = list(dict.fromkeys(self.dataset[qid] for qid in self.test))

    @staticmethod
    def _split(
        matrix: ResponseMatrix, seed: int, test_fraction: float
    ) -> tuple[list[str], list[str]]:
        by_dataset: dict[str, list[str]] = defaultdict(list)
        for question in matrix.questions:
            by_dataset[question["dataset"]].append(question["id"])
        calibration: list[str] = []
        test: list[str] = []
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

    def _majority_correct(self, qid: str, expert: str) -> bool:
        return self.vote(qid, [expert], [len(self.responses(qid, expert))]).accuracy == 1.0

    def _stats(self, labels: Mapping[str, int]) -> dict[int, dict[str, ExpertStats]]:
        counts: dict[tuple[int, str], list[float]] = defaultdict(lambda: [0, 0, 0.0, 0.0])
        for qid, cluster in labels.items():
            for expert in self.experts:
                samples = self.responses(qid, expert)
                if not samples:
                    continue
                entry = counts[(cluster, expert)]
                entry[0] += self._majority_correct(qid, expert)
                entry[1] += 1
                entry[2] += statistics.fmean(s.tokens for s in samples)
                entry[3] += statistics.fmean(s.seconds for s in samples)
        stats: dict[int, dict[str, ExpertStats]] = defaultdict(dict)
        for (cluster, expert), (correct, total, tokens, seconds) in counts.items():
            stats[cluster][expert] = ExpertStats(
                int(correct), int(total), tokens / total, seconds / total
            )
        return dict(stats)

    # -- strategies ---------------------------------------------------------------------

    def _first_sample_accuracy(self, ids: Iterable[str], expert: str) -> float:
        results = [self.vote(qid, [expert], [1]).accuracy for qid in ids]
        return statistics.fmean(results) if results else 0.0

    def best_single(self) -> str:
        """The expert with the best calibration accuracy (first sample, mean over datasets)."""
        by_dataset: dict[str, list[str]] = defaultdict(list)
        for qid in self.calibration:
            by_dataset[self.dataset[qid]].append(qid)

        def score(expert: str) -> float:
            return statistics.fmean(
                self._first_sample_accuracy(ids, expert) for ids in by_dataset.values()
            )

        return max(self.experts, key=score)

    def max_expert(self, dataset: str) -> str:
        """The expert with the best calibration accuracy on one dataset (first sample)."""
        ids = [qid for qid in self.calibration if self.dataset[qid] == dataset]
        return max(self.experts, key=lambda expert: self._first_sample_accuracy(ids, expert))

    def baseline(self, name: Baseline) -> Callable[[str], Outcome]:
        """The per-question outcome function of a baseline."""
        if name == "Random":
            return lambda qid: Outcome.mean([self.vote(qid, [e], [1]) for e in self.experts])
        if name in ("Best-Single", "Best-Single SC"):
            best = self.best_single()
            if name == "Best-Single":
                return lambda qid: self.vote(qid, [best], [1])
            return lambda qid: self.vote(qid, [best], [len(self.responses(qid, best))])
        if name == "Max-Expert":
            best_of = {dataset: self.max_expert(dataset) for dataset in self.datasets}
            return lambda qid: self.vote(qid, [best_of[self.dataset[qid]]], [1])
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
        distances = 1.0 - self.centroids @ self.vectors[qid]
        nearest = np.argsort(distances, kind="stable")[: config.top_k]
        matches = match_clusters([(int(c), float(distances[c])) for c in nearest], config.beta)
        scores = score_experts(
            matches,
            self.stats,
            self.experts,
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

    def accuracy(self, strategy: str, dataset: str = AVERAGE) -> float:
        """Mean accuracy of a strategy on a dataset (default: the macro average)."""
        return self.results[strategy][dataset].accuracy

    def gain(self, strategy: str, over: str) -> float:
        """Average-accuracy difference ``strategy - over`` (in accuracy points, 0-1)."""
        return self.accuracy(strategy) - self.accuracy(over)


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
) -> Summary:
    """Baselines and ensemble configurations on the same test questions, per split.

    Each seed makes one split (and one K-means); outcomes are averaged over seeds.
    """
    if not seeds:
        raise InvalidInputError("evaluate needs at least one seed.")
    names = [*baselines, *(c.name for c in configs)]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"Strategy names must be unique, got {names}.")
    runs: dict[str, list[dict[str, Outcome]]] = defaultdict(list)
    questions: dict[str, list[dict[str, float]]] = defaultdict(list)
    datasets: list[str] = []
    dataset_of: dict[str, str] = {}
    for seed in seeds:
        replay = Replay(
            matrix,
            vectors,
            n_clusters=n_clusters,
            seed=seed,
            test_fraction=test_fraction,
            experts=experts,
        )
        datasets, dataset_of = replay.datasets, replay.dataset
        strategies: list[tuple[str, Callable[[str], Outcome]]] = [
            *((b, replay.baseline(b)) for b in baselines),
            *((c.name, replay.ensemble(c)) for c in configs),
        ]
        for name, strategy in strategies:
            answers = replay.answers(strategy)
            runs[name].append(replay.per_dataset(answers))
            questions[name].append({qid: o.accuracy for qid, o in answers.items()})
    results = {
        name: {key: Outcome.mean([run[key] for run in per_seed]) for key in per_seed[0]}
        for name, per_seed in runs.items()
    }
    spread = {
        name: statistics.pstdev(run[AVERAGE].accuracy for run in per_seed)
        for name, per_seed in runs.items()
    }
    tested = {qid for per_split in questions.values() for split in per_split for qid in split}
    return Summary(
        datasets,
        results,
        spread,
        len(seeds),
        dict(questions),
        {qid: dataset for qid, dataset in dataset_of.items() if qid in tested},
    )


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
    )


def subsets(experts: Sequence[str], size: int) -> list[tuple[str, ...]]:
    """Every sub-pool of ``size`` experts, in pool order."""
    return list(itertools.combinations(experts, size))


def with_name(config: EnsembleConfig, name: str) -> EnsembleConfig:
    """A copy of a configuration under another name."""
    return replace(config, name=name)
