"""The cluster store against a real Chroma server started by ``chroma run``."""

from __future__ import annotations

import itertools
import socket
from typing import Any

import numpy as np
import pytest

from avengers_graph.errors import EmbeddingMismatchError, EmptyStoreError, StoreError
from avengers_graph.store import ClusterStore, ExpertStats, StoredQuestion, StoreInfo

CENTROIDS = np.array(
    [
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.0],
        [0.6, 0.6, 0.2, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
SIZES = [3, 1, 2, 0]
STATS = {
    0: {"alpha": ExpertStats(2, 3, 40.0, 0.5), "beta": ExpertStats(1, 3, 12.5, 0.25)},
    1: {"beta": ExpertStats(1, 1, 3.0, 0.1)},
    2: {"alpha": ExpertStats(1, 2)},
}
QUESTIONS = [
    StoredQuestion("q-3", "What is 2 + 2?", "4", "number", 0),
    StoredQuestion("q-1", "Pick A or B.", "B", "choice", 1),
    StoredQuestion("q-2", "Write hello world.", "print('hello world')", "code", 2),
    StoredQuestion("q-0", "Ten halved?", "5", "number", 0),
]
QUESTION_VECTORS = np.array(
    [
        [0.9, 0.1, 0.0, 0.0],
        [0.1, 0.9, 0.1, 0.0],
        [0.5, 0.5, 0.3, 0.1],
        [1.0, 0.0, 0.1, 0.2],
    ]
)
INFO = StoreInfo(
    name="",
    embedding_model="tiny-test-embedding",
    embedding_dim=4,
    n_clusters=4,
    seed=None,
    experts=("alpha", "beta"),
)

_pool_ids = itertools.count()


@pytest.fixture
def pool_name() -> str:
    """A fresh pool name per test: the server is shared by the whole session."""
    return f"itest-{next(_pool_ids)}"


def remote(server: tuple[str, int], name: str, **kwargs: Any) -> ClusterStore:
    host, port = server
    return ClusterStore(host=host, port=port, name=name, **kwargs)


def write(store: ClusterStore) -> StoreInfo:
    return store.write(INFO, CENTROIDS, SIZES, STATS, QUESTIONS, QUESTION_VECTORS)


def assert_round_trip(store: ClusterStore, name: str) -> None:
    info = store.info()
    assert info.name == name
    assert info.embedding_model == "tiny-test-embedding"
    assert info.embedding_dim == 4
    assert info.n_clusters == 4
    assert info.seed is None
    assert info.experts == ("alpha", "beta")
    assert info.created_at
    np.testing.assert_allclose(store.centroids(), CENTROIDS, atol=1e-7)
    assert store.sizes() == dict(enumerate(SIZES))
    assert store.stats() == {**STATS, 3: {}}
    assert store.stats()[0]["alpha"].accuracy == pytest.approx(2 / 3)
    assert store.questions() == QUESTIONS
    np.testing.assert_allclose(store.question_vectors(), QUESTION_VECTORS, atol=1e-7)


def test_round_trip_through_the_server(chroma_server: tuple[str, int], pool_name: str) -> None:
    store = remote(chroma_server, pool_name)
    assert store.is_empty()
    with pytest.raises(EmptyStoreError):
        store.info()
    stored = write(store)
    assert stored == store.info()
    assert_round_trip(store, pool_name)


def test_nearest_through_the_server_matches_numpy(
    chroma_server: tuple[str, int], pool_name: str
) -> None:
    store = remote(chroma_server, pool_name)
    write(store)
    query = np.array([0.7, 0.4, 0.1, 0.2])
    unit = CENTROIDS / np.linalg.norm(CENTROIDS, axis=1, keepdims=True)
    expected = 1.0 - unit @ (query / np.linalg.norm(query))
    order = np.argsort(expected)
    result = store.nearest(query, 10)
    assert [cluster for cluster, _ in result] == [int(c) for c in order]
    np.testing.assert_allclose([d for _, d in result], expected[order], atol=1e-5)
    assert store.nearest(query, 2) == result[:2]
    with pytest.raises(EmbeddingMismatchError):
        store.nearest(query[:3], 1)


def test_a_second_client_reads_what_the_first_wrote(
    chroma_server: tuple[str, int], pool_name: str
) -> None:
    writer = remote(chroma_server, pool_name)
    write(writer)
    writer.add_expert_stats({3: {"gamma": ExpertStats(1, 1)}})
    reader = remote(chroma_server, pool_name, headers={"X-Avengers-Test": "secret-value"})
    assert reader.info().experts == ("alpha", "beta", "gamma")
    assert reader.stats()[3] == {"gamma": ExpertStats(1, 1)}
    assert reader.stats()[0] == STATS[0]
    assert reader.questions() == QUESTIONS
    np.testing.assert_allclose(reader.centroids(), CENTROIDS, atol=1e-7)
    assert reader.nearest([0.0, 0.1, 0.0, 1.0], 1)[0][0] == 3
    assert "secret-value" not in repr(reader)


def test_pools_on_one_server_are_isolated(chroma_server: tuple[str, int], pool_name: str) -> None:
    first = remote(chroma_server, pool_name)
    second = remote(chroma_server, pool_name + "-other")
    write(first)
    assert second.is_empty()
    write(second)
    second.delete()
    assert second.is_empty()
    assert_round_trip(remote(chroma_server, pool_name), pool_name)


def test_unreachable_server_is_a_store_error() -> None:
    # A port that was free a moment ago: nothing listens there.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    store = ClusterStore(host="127.0.0.1", port=port, name="nowhere")
    with pytest.raises(StoreError, match=rf"Cannot reach the Chroma server at .*:{port}"):
        store.info()


def test_a_replace_through_the_server_keeps_only_the_live_generation(
    chroma_server: tuple[str, int], pool_name: str
) -> None:
    import chromadb
    from chromadb.config import Settings

    reader = remote(chroma_server, pool_name)
    write(remote(chroma_server, pool_name))
    first = reader.collection_names()
    assert reader.nearest([0.0, 0.1, 0.0, 1.0], 1)[0][0] == 3  # handles cached
    write(remote(chroma_server, pool_name))  # another writer replaces the calibration
    # The reader's cached collections are gone: it finds the new generation by itself.
    assert reader.nearest([0.0, 0.1, 0.0, 1.0], 1)[0][0] == 3
    second = reader.collection_names()
    assert second["info"] == first["info"] == f"{pool_name}-centroids"
    assert second["centroids"] != first["centroids"]
    host, port = chroma_server
    client = chromadb.HttpClient(
        host=host, port=port, settings=Settings(anonymized_telemetry=False)
    )
    names = {c.name for c in client.list_collections() if c.name.startswith(pool_name + "-")}
    assert names == set(second.values())  # the old generation and the writer lease are gone
