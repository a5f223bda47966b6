"""An in-memory calibration store on numpy: no database, for tests, notebooks and serverless.

:class:`MemoryStore` keeps one :class:`~avengers_graph.stores.base.Calibration` in memory
and answers the same questions as :class:`~avengers_graph.stores.chroma.ClusterStore`
(:class:`~avengers_graph.stores.base.CalibrationStore`): the nearest centroids by cosine
distance (a matrix product), the per-cluster statistics, the questions. It can be
loaded from a Chroma store (:meth:`MemoryStore.from_store`) or saved into one
(:meth:`MemoryStore.save`), so a calibration moves between backends as a plain object.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt

from avengers_graph.errors import EmptyStoreError, InvalidInputError
from avengers_graph.stores.base import (
    Calibration,
    CalibrationStore,
    ConfidenceMap,
    ExpertStats,
    Feedback,
    StoredQuestion,
    StoreInfo,
    apply_feedback,
    check_compatible,
    validate_calibration,
)

__all__ = ["MemoryStore"]


class MemoryStore:
    """A calibration held in memory (see the module docstring).

    Args:
        name: The pool's name.
        calibration: A calibration to start with (default: empty).
    """

    def __init__(self, name: str = "avengers", calibration: Calibration | None = None) -> None:
        self.name = name
        self._calibration = calibration
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        size = (
            "empty"
            if self._calibration is None
            else f"{self._calibration.info.n_clusters} clusters"
        )
        return f"MemoryStore(name={self.name!r}, {size})"

    @classmethod
    def from_store(cls, store: CalibrationStore) -> MemoryStore:
        """A copy of another store's calibration (e.g. a Chroma store's), read once."""
        return cls(store.name, Calibration.read(store))

    def save(self, store: CalibrationStore) -> StoreInfo:
        """Write this calibration into another store (atomically, if that store is)."""
        return self.calibration.write(store)

    @property
    def calibration(self) -> Calibration:
        """The calibration held.

        Raises:
            EmptyStoreError: Nothing was written yet.
        """
        if self._calibration is None:
            raise EmptyStoreError(
                f"MemoryStore {self.name!r} is empty: run calibrate() on it first."
            )
        return self._calibration

    # -- reads --------------------------------------------------------------------------
    def refresh(self) -> None:
        """Nothing is cached apart from the calibration itself."""

    def is_empty(self) -> bool:
        """Whether no calibration was written."""
        return self._calibration is None

    def info(self) -> StoreInfo:
        """What the calibration was built with."""
        return self.calibration.info

    def check_compatible(self, embedding_model: str, embedding_dim: int) -> StoreInfo:
        """Refuse embeddings other than the calibration's (see the Chroma store's)."""
        return check_compatible(self.info(), embedding_model, embedding_dim)

    def stats(self) -> dict[int, dict[str, ExpertStats]]:
        """Per-cluster, per-expert statistics."""
        return {c: dict(s) for c, s in self.calibration.stats.items()}

    def sizes(self) -> dict[int, int]:
        """Validation questions per cluster."""
        return dict(enumerate(self.calibration.sizes))

    def centroids(self) -> npt.NDArray[np.float32]:
        """The cluster centres, one row per cluster."""
        return self.calibration.centroids.copy()

    def questions(self) -> list[StoredQuestion]:
        """The validation questions, in the order they were written."""
        return list(self.calibration.questions)

    def question_vectors(self) -> npt.NDArray[np.float32]:
        """The questions' embeddings, in the order of :meth:`questions`."""
        return self.calibration.question_vectors.copy()

    def nearest(
        self, vector: Sequence[float] | npt.NDArray[Any], k: int
    ) -> list[tuple[int, float]]:
        """The ``k`` centroids nearest to ``vector`` by cosine distance, nearest first."""
        if k < 1:
            raise InvalidInputError(f"`k` must be >= 1, got {k}.")
        query = np.asarray(vector, dtype=np.float64)
        if query.ndim != 1 or not np.all(np.isfinite(query)) or not np.any(query):
            raise InvalidInputError("The query vector must be 1-D, finite and not all zeros.")
        centroids = self.calibration.centroids.astype(np.float64)
        self.check_compatible(self.info().embedding_model, query.shape[0])
        unit = query / np.linalg.norm(query)
        norms = np.linalg.norm(centroids, axis=1)
        distances = 1.0 - (centroids @ unit) / np.where(norms == 0, 1.0, norms)
        order = np.argsort(distances, kind="stable")[:k]
        return [(int(c), float(distances[c])) for c in order]

    # -- writes -------------------------------------------------------------------------
    @contextlib.contextmanager
    def write_lock(self) -> Iterator[None]:
        """One writer at a time (a thread lock: the store lives in one process)."""
        with self._lock:
            yield

    def write(
        self,
        info: StoreInfo,
        centroids: npt.NDArray[Any],
        sizes: Sequence[int],
        stats: Mapping[int, Mapping[str, ExpertStats]],
        questions: Sequence[StoredQuestion],
        question_vectors: npt.NDArray[Any],
    ) -> StoreInfo:
        """Replace the calibration (validated as the Chroma store validates it)."""
        calibration = validate_calibration(
            replace(info, name=info.name or self.name),
            centroids,
            sizes,
            stats,
            questions,
            question_vectors,
        )
        self._calibration = calibration
        return calibration.info

    def add_expert_stats(
        self,
        stats: Mapping[int, Mapping[str, ExpertStats]],
        confidence: ConfidenceMap | None = None,
    ) -> StoreInfo:
        """Add the statistics of new experts to the calibration.

        ``confidence``, a map refitted with them, replaces the stored one (None keeps it).
        """
        calibration = self.calibration.with_experts(stats, confidence)
        self._calibration = calibration
        return calibration.info

    def add_feedback(
        self, feedback: Mapping[int, Mapping[str, Feedback]]
    ) -> dict[int, dict[str, ExpertStats]]:
        """Count users' verdicts into the per-cluster statistics (in memory only).

        Returns:
            The updated entries (:func:`~avengers_graph.stores.base.apply_feedback`).
        """
        with self._lock:
            calibration = self.calibration
            for cluster in feedback:
                if not 0 <= cluster < calibration.info.n_clusters:
                    raise InvalidInputError(
                        f"Feedback names cluster {cluster}, outside "
                        f"0..{calibration.info.n_clusters - 1}."
                    )
            updated = apply_feedback(calibration.stats, feedback)
            stats = {c: dict(experts) for c, experts in calibration.stats.items()}
            for cluster, experts in updated.items():
                stats[cluster].update(experts)
            self._calibration = replace(calibration, stats=stats)
        return updated

    def delete(self) -> None:
        """Forget the calibration."""
        self._calibration = None
