"""Shared fixtures of the unit tests: a small calibrated store and scripted experts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from avengers_graph.stores.chroma import ClusterStore, ExpertStats, StoredQuestion, StoreInfo
from tests.fakes import KeywordEmbeddings, ScriptedExpert, constant

KEYWORDS = {"math": 0, "code": 1}


@pytest.fixture
def embeddings() -> KeywordEmbeddings:
    return KeywordEmbeddings(KEYWORDS)


def write_two_domain_store(
    path: Path, embeddings: KeywordEmbeddings, *, mean_tokens: float = 0.0, name: str = "unit"
) -> ClusterStore:
    """Cluster 0 is math (mathy is best), cluster 1 is code (coder is best).

    Every expert writes ``mean_tokens`` tokens per answer in every cluster.
    """
    store = ClusterStore(path=path, name=name)
    questions = [
        StoredQuestion("q-math", "math question", "42", "number", 0),
        StoredQuestion("q-code", "code question", "41", "number", 1),
    ]
    vectors = np.asarray(embeddings.embed_documents([q.question for q in questions]))
    store.write(
        StoreInfo(
            name=name,
            embedding_model=embeddings.model_name,
            embedding_dim=embeddings.dim,
            n_clusters=2,
            seed=0,
            experts=("mathy", "coder", "bard"),
        ),
        centroids=vectors,
        sizes=[1, 1],
        stats={
            cluster: {
                name: ExpertStats(correct, 10, mean_tokens=mean_tokens)
                for name, correct in scores.items()
            }
            for cluster, scores in enumerate(
                [{"mathy": 9, "coder": 3, "bard": 5}, {"mathy": 2, "coder": 9, "bard": 5}]
            )
        },
        questions=questions,
        question_vectors=vectors,
    )
    return store


@pytest.fixture
def store(tmp_path: Path, embeddings: KeywordEmbeddings) -> ClusterStore:
    return write_two_domain_store(tmp_path / "store", embeddings)


@pytest.fixture
def experts() -> dict[str, ScriptedExpert]:
    return {
        "mathy": ScriptedExpert(
            model="mathy-7b", respond=constant("So the result is \\boxed{42}.")
        ),
        "coder": ScriptedExpert(model="coder-7b", respond=constant("I get \\boxed{41}.")),
        "bard": ScriptedExpert(model="bard-7b", respond=constant("Clearly \\boxed{42}")),
    }
