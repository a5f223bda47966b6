"""What a calibration is, whatever holds it: statistics, info, questions, the protocol.

- :class:`ExpertStats`, :class:`StoreInfo`, :class:`StoredQuestion`: the records;
- :class:`Calibration`: one calibration as a plain object (centroids, sizes,
  statistics, questions and their vectors), checked by :func:`validate_calibration`,
  read from any store (:meth:`Calibration.read`) and written to any
  (:meth:`Calibration.write`);
- :class:`CalibrationStore`: what the graph and calibration need from a store, which
  :class:`~avengers_graph.stores.chroma.ClusterStore` (Chroma, embedded or server) and
  :class:`~avengers_graph.stores.memory.MemoryStore` (numpy) both are.

Pure: numpy and dataclasses. May import :mod:`avengers_graph.errors` only.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from avengers_graph.errors import EmbeddingMismatchError, InvalidInputError

__all__ = [
    "SCHEMA_VERSION",
    "Calibration",
    "CalibrationStore",
    "ConfidenceMap",
    "ExpertStats",
    "Feedback",
    "FeedbackStore",
    "Graded",
    "StoreInfo",
    "StoredQuestion",
    "apply_feedback",
    "check_compatible",
    "grade_feedback",
    "tally",
    "validate_calibration",
    "validate_stats",
]

SCHEMA_VERSION: int = 2
"""Version of the store layout written by this release (version 1 is still read)."""


def _as_int(value: Any, what: str) -> int:
    """Return ``value`` as a plain ``int`` (accepting numpy integers).

    Raises:
        InvalidInputError: ``value`` is not an integer.
    """
    if isinstance(value, bool):
        raise InvalidInputError(f"{what} must be an integer, got {value!r}.")
    try:
        return operator.index(value)
    except TypeError:
        raise InvalidInputError(f"{what} must be an integer, got {value!r}.") from None


def _as_float(value: object, what: str) -> float:
    """Return ``value`` as a finite, non-negative ``float``.

    Raises:
        InvalidInputError: ``value`` is not a finite non-negative number.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidInputError(f"{what} must be a number, got {value!r}.")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise InvalidInputError(f"{what} must be finite and >= 0, got {value!r}.")
    return number


@dataclass(frozen=True)
class ExpertStats:
    """How one expert did on the validation questions of one cluster.

    Numpy integers and floats are accepted and stored as plain Python numbers.

    Raises:
        InvalidInputError: A count is negative, ``correct > total``, or a mean is
            negative or not finite.
    """

    correct: int
    """Questions the expert answered correctly."""
    total: int
    """Questions the expert was scored on."""
    mean_tokens: float = 0.0
    """Mean number of generated tokens per answer."""
    mean_seconds: float = 0.0
    """Mean seconds per answer."""
    sample_correct: int = 0
    """Samples (single answers, before any vote) that were right."""
    samples: int = 0
    """Samples graded (0: recorded before per-sample counts were kept)."""

    def __post_init__(self) -> None:
        correct = _as_int(self.correct, "ExpertStats.correct")
        total = _as_int(self.total, "ExpertStats.total")
        if correct < 0 or total < 0 or correct > total:
            raise InvalidInputError(
                f"ExpertStats needs 0 <= correct <= total, got correct={correct}, total={total}."
            )
        sample_correct = _as_int(self.sample_correct, "ExpertStats.sample_correct")
        samples = _as_int(self.samples, "ExpertStats.samples")
        if sample_correct < 0 or samples < 0 or sample_correct > samples:
            raise InvalidInputError(
                "ExpertStats needs 0 <= sample_correct <= samples, got "
                f"sample_correct={sample_correct}, samples={samples}."
            )
        object.__setattr__(self, "correct", correct)
        object.__setattr__(self, "total", total)
        object.__setattr__(self, "sample_correct", sample_correct)
        object.__setattr__(self, "samples", samples)
        object.__setattr__(
            self, "mean_tokens", _as_float(self.mean_tokens, "ExpertStats.mean_tokens")
        )
        object.__setattr__(
            self, "mean_seconds", _as_float(self.mean_seconds, "ExpertStats.mean_seconds")
        )

    @property
    def accuracy(self) -> float:
        """Fraction of correct answers, ``0.0`` when the expert was never scored."""
        return self.correct / self.total if self.total else 0.0

    @property
    def sample_accuracy(self) -> float:
        """Fraction of right samples: the chance that one answer is right.

        ``accuracy`` when per-sample counts were not kept.
        """
        return self.sample_correct / self.samples if self.samples else self.accuracy

    def to_dict(self) -> dict[str, float | int]:
        """Return the statistics as a JSON-ready dict, including ``accuracy``."""
        return {
            "correct": self.correct,
            "total": self.total,
            "accuracy": self.accuracy,
            "mean_tokens": self.mean_tokens,
            "mean_seconds": self.mean_seconds,
            "sample_correct": self.sample_correct,
            "samples": self.samples,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExpertStats:
        """Build statistics from :meth:`to_dict` output (``accuracy`` is recomputed).

        Args:
            data: A mapping with ``correct`` and ``total``, and optionally
                ``mean_tokens``, ``mean_seconds``, ``sample_correct`` and ``samples``.

        Raises:
            InvalidInputError: A required key is missing or a value is invalid.
        """
        missing = [key for key in ("correct", "total") if key not in data]
        if missing:
            raise InvalidInputError(f"ExpertStats data lacks {missing}: got keys {sorted(data)}.")
        return cls(
            correct=data["correct"],
            total=data["total"],
            mean_tokens=data.get("mean_tokens", 0.0),
            mean_seconds=data.get("mean_seconds", 0.0),
            sample_correct=data.get("sample_correct", 0),
            samples=data.get("samples", 0),
        )


POSTERIOR_CLIP = 1e-6
"""Posteriors are kept within ``[clip, 1 - clip]`` before their logit is taken."""


def logit(probability: float) -> float:
    """``log(p / (1 - p))``, with ``p`` kept within :data:`POSTERIOR_CLIP` of 0 and 1."""
    p = min(max(probability, POSTERIOR_CLIP), 1 - POSTERIOR_CLIP)
    return math.log(p / (1 - p))


@dataclass(frozen=True)
class ConfidenceMap:
    """What a weighted vote's posterior is worth, as measured at calibration.

    ``confidence = sigmoid(slope * logit(posterior) + intercept)`` (Platt scaling),
    fitted by :func:`avengers_graph.confidence.fit_confidence_map` on the validation
    questions' cross-fitted votes; the graph's ``vote`` reports it as the answer's
    confidence. A slope below 1 tempers a posterior that claims too much.

    Raises:
        InvalidInputError: A parameter is not a finite number, ``slope`` is negative
            (the map must not turn a surer vote into a less sure answer) or ``votes``
            is below 1.
    """

    slope: float
    intercept: float
    votes: int
    """Cross-fitted votes it was fitted on."""

    def __post_init__(self) -> None:
        for attr in ("slope", "intercept"):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(
                value, (int, float, np.integer, np.floating)
            ):
                raise InvalidInputError(f"ConfidenceMap.{attr} must be a number, got {value!r}.")
            if not math.isfinite(float(value)):
                raise InvalidInputError(f"ConfidenceMap.{attr} must be finite, got {value!r}.")
            object.__setattr__(self, attr, float(value))
        if self.slope < 0:
            raise InvalidInputError(f"ConfidenceMap.slope must be >= 0, got {self.slope!r}.")
        votes = _as_int(self.votes, "ConfidenceMap.votes")
        if votes < 1:
            raise InvalidInputError(f"ConfidenceMap.votes must be >= 1, got {votes!r}.")
        object.__setattr__(self, "votes", votes)

    def __call__(self, posterior: float) -> float:
        """The calibrated probability that an answer with this posterior is right."""
        z = self.slope * logit(posterior) + self.intercept
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


class Graded(NamedTuple):
    """One expert's graded samples for one question, in one cluster (see :func:`tally`)."""

    cluster: int
    expert: str
    right: bool
    """The majority of its samples was right."""
    tokens: float
    """Mean generated tokens per sample."""
    seconds: float
    """Mean seconds per sample."""
    right_samples: int
    """Samples that were right."""
    samples: int
    """Samples graded."""


def tally(graded: Iterable[Graded]) -> dict[int, dict[str, ExpertStats]]:
    """Per-cluster, per-expert statistics of graded questions.

    ``correct`` of ``total`` counts the questions whose majority was right, the means
    are over questions, ``sample_correct`` of ``samples`` counts single samples.
    Calibration and the replay both count this way.
    """
    sums: dict[tuple[int, str], list[float]] = {}
    for g in graded:
        entry = sums.setdefault((g.cluster, g.expert), [0.0] * 6)
        entry[0] += g.right
        entry[1] += 1
        entry[2] += g.tokens
        entry[3] += g.seconds
        entry[4] += g.right_samples
        entry[5] += g.samples
    stats: dict[int, dict[str, ExpertStats]] = {}
    for (cluster, expert), (right, total, tokens, seconds, good, drawn) in sums.items():
        stats.setdefault(cluster, {})[expert] = ExpertStats(
            correct=int(right),
            total=int(total),
            mean_tokens=tokens / total,
            mean_seconds=seconds / total,
            sample_correct=int(good),
            samples=int(drawn),
        )
    return stats


@dataclass(frozen=True)
class Feedback:
    """Graded outcomes to add to one expert's statistics in one cluster (user feedback).

    The counts mean what :class:`ExpertStats`' counts mean: ``total`` answers of the
    expert (its majority over its samples) of which ``correct`` were right, ``samples``
    single samples of which ``sample_correct`` were right.

    Raises:
        InvalidInputError: A count is negative or a part exceeds its whole.
    """

    correct: int = 0
    total: int = 0
    sample_correct: int = 0
    samples: int = 0

    def __post_init__(self) -> None:
        counts = {
            name: _as_int(getattr(self, name), f"Feedback.{name}")
            for name in ("correct", "total", "sample_correct", "samples")
        }
        if min(counts.values()) < 0 or counts["correct"] > counts["total"]:
            raise InvalidInputError(f"Feedback needs 0 <= correct <= total, got {counts}.")
        if counts["sample_correct"] > counts["samples"]:
            raise InvalidInputError(f"Feedback needs sample_correct <= samples, got {counts}.")
        for name, value in counts.items():
            object.__setattr__(self, name, value)

    @property
    def empty(self) -> bool:
        """Whether it grades nothing."""
        return self.total == 0 and self.samples == 0

    def added_to(self, stats: ExpertStats) -> ExpertStats:
        """``stats`` with these outcomes counted in.

        Per-sample counts are added only where the statistics keep them
        (``stats.samples > 0``): a calibration recorded before they were kept reads its
        per-sample accuracy from ``accuracy``, which the feedback updates too.
        """
        keeps_samples = stats.samples > 0
        return replace(
            stats,
            correct=stats.correct + self.correct,
            total=stats.total + self.total,
            sample_correct=stats.sample_correct + (self.sample_correct if keeps_samples else 0),
            samples=stats.samples + (self.samples if keeps_samples else 0),
        )


def _majority(keys: Sequence[str | None]) -> str | None:
    """The key most of an expert's samples gave (ties: the first), None if none gave one."""
    counted = [key for key in keys if key is not None]
    if not counted:
        return None
    return max(dict.fromkeys(counted), key=counted.count)


def grade_feedback(
    answers: Mapping[str, Sequence[str | None]], answer: str, correct: bool
) -> dict[str, Feedback]:
    """What a user's verdict on an answer says about each expert that sampled it.

    An expert's answer is the key most of its samples gave, as calibration grades it.
    When the answer was right, a sample (or an expert's answer) was right exactly if it
    gave the same key, and wrong otherwise. When it was wrong, the samples that gave it
    were wrong, and so were samples that gave no answer at all (key ``None``); samples
    that gave another answer are not graded, since the verdict does not say what the
    right answer was.

    Args:
        answers: Expert name to the keys of its samples (``None``: no answer extracted).
        answer: The key of the answer the verdict is about.
        correct: The verdict.

    Returns:
        Expert name to its outcomes; experts the verdict says nothing about are left out.
    """
    graded: dict[str, Feedback] = {}
    for expert, keys in answers.items():
        mine = _majority(keys)
        if correct:
            feedback = Feedback(
                correct=int(mine == answer),
                total=1 if keys else 0,
                sample_correct=sum(key == answer for key in keys),
                samples=len(keys),
            )
        else:
            wrong = sum(key is None or key == answer for key in keys)
            feedback = Feedback(total=int(mine is None or mine == answer), samples=wrong)
        if not feedback.empty:
            graded[expert] = feedback
    return graded


def apply_feedback(
    stats: Mapping[int, Mapping[str, ExpertStats]],
    feedback: Mapping[int, Mapping[str, Feedback]],
) -> dict[int, dict[str, ExpertStats]]:
    """The statistics that feedback changes, with the feedback counted in.

    Only experts that already have statistics in a cluster are updated there: an
    expert the calibration never scored in a cluster stays unscored (it ranks last),
    rather than being ranked on a handful of verdicts alone.

    Args:
        stats: The current ``{cluster: {expert: ExpertStats}}``.
        feedback: ``{cluster: {expert: Feedback}}`` to add.

    Returns:
        ``{cluster: {expert: ExpertStats}}`` of the updated entries only.
    """
    updated: dict[int, dict[str, ExpertStats]] = {}
    for raw_cluster, by_expert in feedback.items():
        cluster = _as_int(raw_cluster, "a cluster id in the feedback")
        current = stats.get(cluster, {})
        for expert, outcome in by_expert.items():
            if not isinstance(outcome, Feedback):
                raise InvalidInputError(
                    f"Feedback for cluster {cluster}, expert {expert!r} must be a Feedback, "
                    f"got {type(outcome).__name__}."
                )
            if expert in current and not outcome.empty:
                updated.setdefault(cluster, {})[expert] = outcome.added_to(current[expert])
    return updated


@dataclass(frozen=True)
class StoreInfo:
    """What a calibration was built with; stored as the centroids collection's metadata.

    Raises:
        InvalidInputError: ``embedding_dim`` or ``n_clusters`` is below 1, or the
            expert names are not distinct non-empty strings.
    """

    name: str
    """Pool name; :meth:`ClusterStore.write` fills it in when empty."""
    embedding_model: str
    """Name of the embedding model the questions were embedded with."""
    embedding_dim: int
    """Dimension of the embeddings and centroids."""
    n_clusters: int
    """Number of clusters (K)."""
    seed: int | None
    """Seed of the clustering, ``None`` when none was used."""
    experts: tuple[str, ...]
    """Names of the experts with statistics, in calibration order."""
    schema_version: int = SCHEMA_VERSION
    """Layout version of the store."""
    created_at: str = ""
    """ISO-8601 UTC time of the write; :meth:`ClusterStore.write` fills it in when empty."""
    confidence: ConfidenceMap | None = None
    """The map from a weighted vote's posterior to a calibrated probability (``None``:
    not fitted: a store written before it, or too few validation questions)."""

    def __post_init__(self) -> None:
        for attr in ("name", "embedding_model", "created_at"):
            if not isinstance(getattr(self, attr), str):
                raise InvalidInputError(
                    f"StoreInfo.{attr} must be a string, got {getattr(self, attr)!r}."
                )
        dim = _as_int(self.embedding_dim, "StoreInfo.embedding_dim")
        n_clusters = _as_int(self.n_clusters, "StoreInfo.n_clusters")
        if dim < 1 or n_clusters < 1:
            raise InvalidInputError(
                "StoreInfo needs embedding_dim >= 1 and n_clusters >= 1, "
                f"got embedding_dim={dim}, n_clusters={n_clusters}."
            )
        if isinstance(self.experts, str):
            raise InvalidInputError(
                f"StoreInfo.experts must be a sequence of names, got the string {self.experts!r}."
            )
        experts = tuple(self.experts)
        if any(not isinstance(e, str) or not e for e in experts) or len(set(experts)) != len(
            experts
        ):
            raise InvalidInputError(
                f"StoreInfo.experts must be distinct non-empty names, got {experts!r}."
            )
        object.__setattr__(self, "embedding_dim", dim)
        object.__setattr__(self, "n_clusters", n_clusters)
        object.__setattr__(self, "experts", experts)
        object.__setattr__(
            self, "schema_version", _as_int(self.schema_version, "StoreInfo.schema_version")
        )
        if self.seed is not None:
            object.__setattr__(self, "seed", _as_int(self.seed, "StoreInfo.seed"))
        if self.confidence is not None and not isinstance(self.confidence, ConfidenceMap):
            raise InvalidInputError(
                f"StoreInfo.confidence must be a ConfidenceMap, got {self.confidence!r}."
            )


@dataclass(frozen=True)
class StoredQuestion:
    """One validation question kept in the store, with its reference answer and cluster.

    Raises:
        InvalidInputError: ``id`` is empty or ``cluster`` is not an integer.
    """

    id: str
    """Unique question id (the Chroma record id)."""
    question: str
    """The question text as embedded."""
    answer: str
    """Reference answer."""
    kind: str
    """Answer kind (for example ``"number"``, ``"choice"``, ``"code"``)."""
    cluster: int
    """Cluster the question was assigned to."""

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise InvalidInputError(
                f"StoredQuestion.id must be a non-empty string, got {self.id!r}."
            )
        for attr in ("question", "answer", "kind"):
            if not isinstance(getattr(self, attr), str):
                raise InvalidInputError(
                    f"StoredQuestion.{attr} must be a string, got {getattr(self, attr)!r} "
                    f"(question {self.id!r})."
                )
        object.__setattr__(self, "cluster", _as_int(self.cluster, "StoredQuestion.cluster"))


def _as_matrix(values: object, what: str, *, nonzero: bool) -> npt.NDArray[np.float32]:
    """Return ``values`` as a 2-D float32 matrix of finite rows.

    Args:
        values: The array-like to convert.
        what: How to name it in errors.
        nonzero: Also refuse all-zero rows (they have no cosine direction).

    Raises:
        InvalidInputError: Not a 2-D numeric array, or a row is not finite (or is zero).
    """
    try:
        matrix = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{what} must be a numeric 2-D array: {exc}") from None
    if matrix.ndim != 2:
        raise InvalidInputError(f"{what} must be 2-D, got shape {matrix.shape}.")
    if not np.all(np.isfinite(matrix)):
        raise InvalidInputError(f"{what} contains NaN or infinite values.")
    if nonzero and matrix.shape[0] and not np.all(np.linalg.norm(matrix, axis=1) > 0):
        raise InvalidInputError(f"{what} contains an all-zero row (no cosine direction).")
    return matrix.astype(np.float32)


def validate_stats(
    stats: Mapping[int, Mapping[str, ExpertStats]], n_clusters: int
) -> dict[int, dict[str, ExpertStats]]:
    """Per-cluster statistics checked: cluster ids in ``0..n_clusters-1``, named experts.

    Raises:
        InvalidInputError: A cluster id out of range, or a value that is not an
            :class:`ExpertStats` under a non-empty name.
    """
    if not isinstance(stats, Mapping):
        raise InvalidInputError(
            f"`stats` must map cluster ids to {{expert: ExpertStats}}, got {type(stats)}."
        )
    clean: dict[int, dict[str, ExpertStats]] = {}
    for raw_cluster, experts in stats.items():
        cluster = _as_int(raw_cluster, "a cluster id in `stats`")
        if not 0 <= cluster < n_clusters:
            raise InvalidInputError(f"`stats` has cluster {cluster}, outside 0..{n_clusters - 1}.")
        if not isinstance(experts, Mapping):
            raise InvalidInputError(
                f"`stats[{cluster}]` must map expert names to ExpertStats, "
                f"got {type(experts).__name__}."
            )
        for expert, value in experts.items():
            if not isinstance(expert, str) or not expert:
                raise InvalidInputError(f"Expert names must be non-empty strings, got {expert!r}.")
            if not isinstance(value, ExpertStats):
                raise InvalidInputError(
                    f"`stats[{cluster}][{expert!r}]` must be an ExpertStats, "
                    f"got {type(value).__name__}."
                )
        clean.setdefault(cluster, {}).update(experts)
    return clean


@dataclass(frozen=True)
class Calibration:
    """One calibration as a plain object: what a store holds for a pool.

    Build it with :func:`validate_calibration` (which checks every shape and name),
    read it from a store with :meth:`read`, write it to one with :meth:`write`.
    """

    info: StoreInfo
    centroids: npt.NDArray[np.float32]
    """``(n_clusters, embedding_dim)`` cluster centres."""
    sizes: tuple[int, ...]
    """Validation questions per cluster."""
    stats: Mapping[int, Mapping[str, ExpertStats]]
    """``{cluster: {expert: ExpertStats}}``."""
    questions: tuple[StoredQuestion, ...] = field(default=())
    question_vectors: npt.NDArray[np.float32] = field(
        default_factory=lambda: np.zeros((0, 0), dtype=np.float32)
    )

    @classmethod
    def read(cls, store: CalibrationStore) -> Calibration:
        """The calibration a store holds (read once).

        Raises:
            EmptyStoreError: The store holds none.
        """
        info = store.info()
        return validate_calibration(
            info,
            store.centroids(),
            [store.sizes().get(c, 0) for c in range(info.n_clusters)],
            store.stats(),
            store.questions(),
            store.question_vectors(),
            pool=info.name,
        )

    def write(self, store: CalibrationStore) -> StoreInfo:
        """Write this calibration into a store under the store's pool name."""
        with store.write_lock():
            return store.write(
                replace(self.info, name=""),
                self.centroids,
                list(self.sizes),
                self.stats,
                list(self.questions),
                self.question_vectors,
            )

    def with_experts(
        self,
        stats: Mapping[int, Mapping[str, ExpertStats]],
        confidence: ConfidenceMap | None = None,
    ) -> Calibration:
        """This calibration with the statistics of experts it did not have added.

        ``confidence``, a map refitted with the new experts, replaces the stored one
        (None keeps it).

        Raises:
            InvalidInputError: An expert that is already calibrated, or bad statistics.
        """
        clean = validate_stats(stats, self.info.n_clusters)
        new = list(dict.fromkeys(e for experts in clean.values() for e in experts))
        if known := sorted(set(new) & set(self.info.experts)):
            raise InvalidInputError(f"Experts {known} already have statistics in this store.")
        merged = {c: dict(e) for c, e in self.stats.items()}
        for cluster, experts in clean.items():
            merged.setdefault(cluster, {}).update(experts)
        info = replace(
            self.info,
            experts=(*self.info.experts, *new),
            confidence=confidence or self.info.confidence,
        )
        return replace(self, info=info, stats=merged)


def validate_calibration(  # noqa: PLR0912 - one check per part, each with its message
    info: StoreInfo,
    centroids: npt.NDArray[Any],
    sizes: Sequence[int],
    stats: Mapping[int, Mapping[str, ExpertStats]],
    questions: Sequence[StoredQuestion],
    question_vectors: npt.NDArray[Any],
    *,
    pool: str | None = None,
) -> Calibration:
    """A :class:`Calibration`, every part checked against the others.

    Args:
        info: What the calibration was built with; an empty ``name`` or ``created_at``
            is filled in (``pool``, the current UTC time).
        centroids: ``(info.n_clusters, info.embedding_dim)`` cluster centres.
        sizes: Number of validation questions of each cluster, by cluster id.
        stats: ``{cluster: {expert: ExpertStats}}``; the experts must be listed in
            ``info.experts``; clusters may be missing (no statistics).
        questions: The validation questions with their clusters.
        question_vectors: ``(len(questions), info.embedding_dim)`` embeddings.
        pool: The pool the calibration is for (``info.name`` must match or be empty).

    Raises:
        InvalidInputError: A shape, a cluster id, an expert name, the pool name or the
            schema version does not fit.
    """
    if not isinstance(info, StoreInfo):
        raise InvalidInputError(f"`info` must be a StoreInfo, got {type(info).__name__}.")
    name = pool if pool is not None else info.name
    if info.name and info.name != name:
        raise InvalidInputError(
            f"StoreInfo.name is {info.name!r} but this store's pool is {name!r}; "
            "leave it empty or open the store with that pool name."
        )
    if info.schema_version != SCHEMA_VERSION:
        raise InvalidInputError(
            f"This avengers-graph writes schema version {SCHEMA_VERSION}, "
            f"got StoreInfo.schema_version={info.schema_version}."
        )
    k, dim = info.n_clusters, info.embedding_dim
    centroid_matrix = _as_matrix(centroids, "`centroids`", nonzero=True)
    if centroid_matrix.shape != (k, dim):
        raise InvalidInputError(
            f"`centroids` must have shape (n_clusters, embedding_dim) = ({k}, {dim}), "
            f"got {centroid_matrix.shape}."
        )
    size_list = [_as_int(size, "a cluster size") for size in sizes]
    if len(size_list) != k or any(size < 0 for size in size_list):
        raise InvalidInputError(
            f"`sizes` must hold {k} non-negative counts (one per cluster), got {size_list}."
        )
    clean_stats: dict[int, dict[str, ExpertStats]] = {}
    for cluster, experts in validate_stats(stats, k).items():
        unknown = sorted(set(experts) - set(info.experts))
        if unknown:
            raise InvalidInputError(
                f"`stats` of cluster {cluster} name experts {unknown} that are not in "
                f"StoreInfo.experts {list(info.experts)}."
            )
        clean_stats[cluster] = experts
    question_matrix = _as_matrix(question_vectors, "`question_vectors`", nonzero=False)
    if len(questions) == 0 and question_matrix.size == 0:
        question_matrix = np.zeros((0, dim), dtype=np.float32)
    if question_matrix.shape != (len(questions), dim):
        raise InvalidInputError(
            "`question_vectors` must have shape (len(questions), embedding_dim) = "
            f"({len(questions)}, {dim}), got {question_matrix.shape}."
        )
    seen: set[str] = set()
    for question in questions:
        if not isinstance(question, StoredQuestion):
            raise InvalidInputError(
                f"`questions` must hold StoredQuestion items, got {type(question).__name__}."
            )
        if question.id in seen:
            raise InvalidInputError(f"Question id {question.id!r} appears twice.")
        seen.add(question.id)
        if not 0 <= question.cluster < k:
            raise InvalidInputError(
                f"Question {question.id!r} has cluster {question.cluster}, outside 0..{k - 1}."
            )
    created_at = info.created_at or datetime.now(UTC).isoformat(timespec="seconds")
    stored = replace(info, name=name, created_at=created_at)
    return Calibration(
        stored, centroid_matrix, tuple(size_list), clean_stats, tuple(questions), question_matrix
    )


def check_compatible(
    info: StoreInfo, embedding_model: str, embedding_dim: int, where: str = ""
) -> StoreInfo:
    """Refuse embeddings other than the ones a calibration was built with.

    Raises:
        EmbeddingMismatchError: Another model name or dimension.
    """
    if info.embedding_model != embedding_model or info.embedding_dim != embedding_dim:
        raise EmbeddingMismatchError(
            f"The store{f' of {where}' if where else ''} was calibrated with embedding "
            f"model {info.embedding_model!r} (dim {info.embedding_dim}), but model "
            f"{embedding_model!r} (dim {embedding_dim}) is in use. Use the same "
            "embeddings as the calibration, or re-run calibrate with these ones."
        )
    return info


@runtime_checkable
class CalibrationStore(Protocol):
    """What the graph, calibration and the CLI need from a store of calibrations."""

    name: str
    """The pool's name."""

    def is_empty(self) -> bool:
        """Whether no calibration was written."""
        ...

    def info(self) -> StoreInfo:
        """What the calibration was built with (raises ``EmptyStoreError`` when none)."""
        ...

    def check_compatible(self, embedding_model: str, embedding_dim: int) -> StoreInfo:
        """Refuse embeddings other than the calibration's."""
        ...

    def nearest(
        self, vector: Sequence[float] | npt.NDArray[Any], k: int
    ) -> list[tuple[int, float]]:
        """The ``k`` nearest centroids: ``(cluster, cosine distance)``, nearest first."""
        ...

    def stats(self) -> dict[int, dict[str, ExpertStats]]:
        """Per-cluster, per-expert statistics."""
        ...

    def sizes(self) -> dict[int, int]:
        """Validation questions per cluster."""
        ...

    def centroids(self) -> npt.NDArray[np.float32]:
        """The cluster centres, one row per cluster."""
        ...

    def questions(self) -> list[StoredQuestion]:
        """The validation questions."""
        ...

    def question_vectors(self) -> npt.NDArray[np.float32]:
        """The questions' embeddings, in the order of :meth:`questions`."""
        ...

    def write_lock(self) -> AbstractContextManager[None]:
        """Hold the store's writer lock (one calibration writes at a time)."""
        ...

    def write(
        self,
        info: StoreInfo,
        centroids: npt.NDArray[Any],
        sizes: Sequence[int],
        stats: Mapping[int, Mapping[str, ExpertStats]],
        questions: Sequence[StoredQuestion],
        question_vectors: npt.NDArray[Any],
    ) -> StoreInfo:
        """Replace the pool's calibration."""
        ...

    def add_expert_stats(
        self,
        stats: Mapping[int, Mapping[str, ExpertStats]],
        confidence: ConfidenceMap | None = None,
    ) -> StoreInfo:
        """Add new experts' statistics (and a confidence map refitted with them)."""
        ...

    def refresh(self) -> None:
        """Forget what was cached from the store."""
        ...


@runtime_checkable
class FeedbackStore(Protocol):
    """A store whose statistics take users' feedback (both bundled stores do)."""

    def add_feedback(
        self, feedback: Mapping[int, Mapping[str, Feedback]]
    ) -> dict[int, dict[str, ExpertStats]]:
        """Count graded outcomes into the statistics, in one atomic write.

        Returns:
            The updated entries, ``{cluster: {expert: ExpertStats}}``
            (:func:`apply_feedback`).
        """
        ...
