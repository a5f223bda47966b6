"""A calibration from a recorded response matrix: no expert is called.

A response matrix (:mod:`avengers_graph.eval.recording`) holds every expert's graded
answers, under the prompt contract, to a benchmark mix. :func:`calibration_from_matrix`
turns it into the :class:`~avengers_graph.stores.base.Calibration` that
:func:`avengers_graph.calibrate` would have built from the same answers: the questions
embedded as the graph routes them, clustered with the same seeded K-means
(:func:`avengers_graph.calibration.cluster_questions`), and per cluster and expert the
statistics of :func:`avengers_graph.eval.replay.matrix_stats`. The demo calibrates
the local pool this way, from the matrix shipped in the package.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from langchain_core.embeddings import Embeddings

from avengers_graph.calibration import cluster_questions, default_n_clusters
from avengers_graph.embeddings import embedding_model_name
from avengers_graph.errors import InvalidInputError
from avengers_graph.eval.recording import ResponseMatrix
from avengers_graph.eval.replay import embed_questions, matrix_stats
from avengers_graph.stores.base import Calibration, StoredQuestion, StoreInfo, validate_calibration

__all__ = ["calibration_from_matrix"]


def calibration_from_matrix(
    matrix: ResponseMatrix,
    embeddings: Embeddings,
    experts: Sequence[str],
    *,
    n_clusters: int | None = None,
    seed: int = 0,
) -> Calibration:
    """The calibration of ``experts`` on every question of the matrix they all answered.

    Args:
        matrix: A recorded matrix.
        embeddings: The embeddings to route with (the same as the graph's).
        experts: Expert names of the matrix (``model:strategy``), in pool order.
        n_clusters: K of K-means (default: about 10 questions per cluster).
        seed: Seed of K-means.

    Raises:
        InvalidInputError: An expert the matrix does not hold, or no question answered
            by one of them.
    """
    if missing := sorted(set(experts) - set(matrix.experts)):
        raise InvalidInputError(
            f"The response matrix holds no answers of {missing}; it has {matrix.experts}."
        )
    samples = matrix.samples()
    asked = [q for q in matrix.questions if any((q["id"], expert) in samples for expert in experts)]
    if not asked:
        raise InvalidInputError("No question of the matrix was answered by these experts.")
    kept = ResponseMatrix(asked, [r for r in matrix.responses if r.expert in experts])
    vectors = embed_questions(kept, embeddings)
    stack = np.stack([vectors[q["id"]] for q in asked])
    k = n_clusters if n_clusters is not None else default_n_clusters(len(asked))
    labels, centroids = cluster_questions(stack, k, seed)
    label_of = {q["id"]: int(label) for q, label in zip(asked, labels, strict=True)}
    info = StoreInfo(
        name="",
        embedding_model=embedding_model_name(embeddings),
        embedding_dim=int(stack.shape[1]),
        n_clusters=k,
        seed=seed,
        experts=tuple(experts),
    )
    return validate_calibration(
        info,
        centroids,
        [int(np.sum(labels == c)) for c in range(k)],
        matrix_stats(samples, label_of, list(experts)),
        [
            StoredQuestion(q["id"], q["question"], q["answer"], q["kind"], label_of[q["id"]])
            for q in asked
        ],
        stack,
    )
