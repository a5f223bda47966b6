"""Unit tests of the Chroma cluster store, on an embedded database in a temporary folder."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from avengers_graph.errors import (
    DamagedStoreError,
    EmbeddingMismatchError,
    EmptyStoreError,
    InvalidInputError,
    SchemaVersionError,
    StoreBusyError,
    StoreError,
    StoreTimeoutError,
)
from avengers_graph.stores.base import ConfidenceMap
from avengers_graph.stores.chroma import (
    SCHEMA_VERSION,
    ClusterStore,
    ExpertStats,
    StoredQuestion,
    StoreInfo,
)

# Three clusters in 4 dimensions; cluster 2 sits between 0 and 1.
CENTROIDS = np.array(
    [
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.0],
        [0.6, 0.6, 0.2, 0.0],
    ]
)
SIZES = [2, 1, 2]
STATS = {
    0: {"alpha": ExpertStats(2, 2, 40.0, 0.5), "beta": ExpertStats(1, 2, 12.5, 0.25)},
    1: {"alpha": ExpertStats(0, 1), "beta": ExpertStats(1, 1, 3.0, 0.1)},
    2: {"alpha": ExpertStats(1, 2)},
}
QUESTIONS = [
    StoredQuestion("q-3", "What is 2 + 2?", "4", "number", 0),
    StoredQuestion("q-1", "Pick A or B.", "B", "choice", 1),
    StoredQuestion("q-2", "Write hello world.", "print('hello world')", "code", 2),
    StoredQuestion("q-0", "", "", "text", 0),
    StoredQuestion("q-4", "Half of 10?", "5", "number", 2),
]
QUESTION_VECTORS = np.array(
    [
        [0.9, 0.1, 0.0, 0.0],
        [0.1, 0.9, 0.1, 0.0],
        [0.5, 0.5, 0.3, 0.1],
        [1.0, 0.0, 0.1, 0.2],
        [0.4, 0.6, 0.2, 0.0],
    ]
)


def make_info(**changes: Any) -> StoreInfo:
    info = StoreInfo(
        name="",
        embedding_model="tiny-test-embedding",
        embedding_dim=4,
        n_clusters=3,
        seed=7,
        experts=("alpha", "beta"),
    )
    return replace(info, **changes)


def write_default(store: ClusterStore, **changes: Any) -> StoreInfo:
    parts: dict[str, Any] = {
        "info": make_info(),
        "centroids": CENTROIDS,
        "sizes": SIZES,
        "stats": STATS,
        "questions": QUESTIONS,
        "question_vectors": QUESTION_VECTORS,
    }
    parts.update(changes)
    return store.write(**parts)


def cosine_distances(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    return 1.0 - unit @ (vector / np.linalg.norm(vector))


def raw_client(path: Path) -> Any:
    import chromadb
    from chromadb.config import Settings

    return chromadb.PersistentClient(str(path), settings=Settings(anonymized_telemetry=False))


@pytest.fixture
def store(tmp_path: Path) -> ClusterStore:
    return ClusterStore(path=tmp_path, name="pool-a")


@pytest.fixture
def written(store: ClusterStore) -> ClusterStore:
    write_default(store)
    return store


def assert_round_trip(store: ClusterStore) -> None:
    info = store.info()
    assert info.name == "pool-a"
    assert info.embedding_model == "tiny-test-embedding"
    assert info.embedding_dim == 4
    assert info.n_clusters == 3
    assert info.seed == 7
    assert info.experts == ("alpha", "beta")
    assert info.schema_version == SCHEMA_VERSION
    assert info.created_at.endswith("+00:00")
    np.testing.assert_allclose(store.centroids(), CENTROIDS, rtol=0, atol=1e-7)
    assert store.sizes() == {0: 2, 1: 1, 2: 2}
    assert store.stats() == STATS
    assert store.stats()[0]["beta"].accuracy == 0.5
    assert store.stats()[0]["beta"].mean_tokens == 12.5
    assert store.questions() == QUESTIONS
    np.testing.assert_allclose(store.question_vectors(), QUESTION_VECTORS, rtol=0, atol=1e-7)


# --------------------------------------------------------------------------- data classes


def test_expert_stats_accuracy_and_dict_round_trip() -> None:
    stats = ExpertStats(3, 4, mean_tokens=10.5, mean_seconds=0.75)
    assert stats.accuracy == 0.75
    data = stats.to_dict()
    assert data == {
        "correct": 3,
        "total": 4,
        "accuracy": 0.75,
        "mean_tokens": 10.5,
        "mean_seconds": 0.75,
        "sample_correct": 0,
        "samples": 0,
    }
    assert ExpertStats.from_dict(json.loads(json.dumps(data))) == stats
    assert ExpertStats(0, 0).accuracy == 0.0
    assert stats.sample_accuracy == 0.75  # no per-sample counts: the majority's accuracy
    sampled = ExpertStats(3, 4, sample_correct=5, samples=12)
    assert sampled.sample_accuracy == 5 / 12
    assert ExpertStats.from_dict(sampled.to_dict()) == sampled
    with pytest.raises(InvalidInputError, match="sample_correct <= samples"):
        ExpertStats(1, 2, sample_correct=3, samples=2)


def test_tally_counts_questions_and_samples_per_cluster_and_expert() -> None:
    from avengers_graph.stores.base import Graded, tally

    stats = tally(
        [
            Graded(0, "a", True, 10.0, 1.0, 2, 3),
            Graded(0, "a", False, 30.0, 3.0, 1, 3),
            Graded(0, "b", False, 5.0, 0.5, 0, 1),
            Graded(2, "a", True, 8.0, 2.0, 3, 3),
        ]
    )
    assert stats[0]["a"] == ExpertStats(1, 2, 20.0, 2.0, sample_correct=3, samples=6)
    assert stats[0]["b"] == ExpertStats(0, 1, 5.0, 0.5, sample_correct=0, samples=1)
    assert stats[2] == {"a": ExpertStats(1, 1, 8.0, 2.0, sample_correct=3, samples=3)}
    assert sorted(stats) == [0, 2]  # a cluster with no graded question has no entry
    assert tally([]) == {}


def test_expert_stats_accepts_numpy_numbers_as_plain_python() -> None:
    stats = ExpertStats(np.int64(2), np.int64(5), np.float64(1.5))
    assert type(stats.correct) is int
    assert type(stats.total) is int
    assert json.loads(json.dumps(stats.to_dict()))["total"] == 5


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((3, 2), "correct <= total"),
        ((-1, 2), "correct <= total"),
        ((1.5, 2), "integer"),
        ((1, 2, -1.0), "finite and >= 0"),
        ((1, 2, 0.0, float("nan")), "finite and >= 0"),
    ],
)
def test_expert_stats_rejects_invalid_values(args: tuple[Any, ...], match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        ExpertStats(*args)


def test_expert_stats_from_dict_names_missing_keys() -> None:
    with pytest.raises(InvalidInputError, match="total"):
        ExpertStats.from_dict({"correct": 1})


@pytest.mark.parametrize(
    "changes",
    [{"embedding_dim": 0}, {"n_clusters": 0}, {"experts": ("a", "a")}, {"experts": "ab"}],
)
def test_store_info_rejects_invalid_values(changes: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        make_info(**changes)


# --------------------------------------------------------------------------- construction


def test_constructor_needs_exactly_one_location(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="exactly one"):
        ClusterStore()
    with pytest.raises(InvalidInputError, match="exactly one"):
        ClusterStore(tmp_path, host="localhost")
    with pytest.raises(InvalidInputError, match="exactly one"):
        ClusterStore(host="localhost", client=object())


def test_construction_does_no_io(tmp_path: Path) -> None:
    # An unreachable host would fail on first use, not at construction; the same goes
    # for a path: nothing is created on disk yet.
    ClusterStore(host="chroma.invalid", port=1)
    ClusterStore(path=tmp_path / "not-yet")
    assert not (tmp_path / "not-yet").exists()


@pytest.mark.parametrize(
    "name",
    ["", "-pool", "pool-", "po ol", "pööl", "a..b", "x" * 485, "pool/a"],
)
def test_invalid_pool_names_are_refused_with_the_rules(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidInputError, match=r"\[a-zA-Z0-9._-\]"):
        ClusterStore(path=tmp_path, name=name)


@pytest.mark.parametrize("name", ["a", "p1", "my_pool.v2", "x" * 484])
def test_valid_pool_names_make_valid_collections(tmp_path: Path, name: str) -> None:
    store = ClusterStore(path=tmp_path, name=name)
    write_default(store)
    assert store.info().name == name


def test_repr_shows_location_and_name_but_never_header_values(tmp_path: Path) -> None:
    remote = ClusterStore(
        host="chroma.example", port=8123, headers={"Authorization": "Bearer s3cret"}, name="p"
    )
    text = repr(remote)
    assert "chroma.example" in text
    assert "8123" in text
    assert "'p'" in text
    assert "Authorization" in text
    assert "s3cret" not in text
    assert "Bearer" not in text
    local = repr(ClusterStore(path=tmp_path, name="pool-b"))
    assert str(tmp_path) in local
    assert "pool-b" in local


# --------------------------------------------------------------------------- round trip


def test_empty_store_errors_say_to_calibrate(store: ClusterStore) -> None:
    assert store.is_empty()
    with pytest.raises(EmptyStoreError, match="calibrate"):
        store.info()
    with pytest.raises(EmptyStoreError):
        store.stats()
    with pytest.raises(EmptyStoreError):
        store.nearest([1.0, 0.0, 0.0, 0.0], 1)
    with pytest.raises(EmptyStoreError):
        store.add_expert_stats({0: {"gamma": ExpertStats(1, 1)}})


def test_write_returns_the_stored_info(store: ClusterStore) -> None:
    stored = write_default(store)
    assert stored.name == "pool-a"
    assert stored.created_at
    assert stored == store.info()
    assert not store.is_empty()
    explicit = write_default(store, info=make_info(created_at="2025-01-02T03:04:05+00:00"))
    assert explicit.created_at == "2025-01-02T03:04:05+00:00"


def test_round_trip_of_everything_written(written: ClusterStore) -> None:
    assert_round_trip(written)


def test_persistence_across_a_new_store_on_the_same_path(tmp_path: Path) -> None:
    write_default(ClusterStore(path=tmp_path, name="pool-a"))
    assert_round_trip(ClusterStore(path=tmp_path, name="pool-a"))


def test_persistence_across_processes(tmp_path: Path) -> None:
    write_default(ClusterStore(path=tmp_path, name="pool-a"))
    script = textwrap.dedent(
        """
        import json, sys
        from avengers_graph.stores.chroma import ClusterStore
        store = ClusterStore(path=sys.argv[1], name="pool-a")
        print(json.dumps({
            "experts": list(store.info().experts),
            "sizes": store.sizes(),
            "questions": [q.id for q in store.questions()],
            "nearest": store.nearest([0.0, 1.0, 0.0, 0.0], 1)[0][0],
        }))
        """
    )
    import avengers_graph

    package_root = Path(avengers_graph.__file__).parent.parent
    result = subprocess.run(  # noqa: S603 - runs this interpreter on a fixed script
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        cwd=package_root,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data == {
        "experts": ["alpha", "beta"],
        "sizes": {"0": 2, "1": 1, "2": 2},
        "questions": [q.id for q in QUESTIONS],
        "nearest": 1,
    }


def test_seed_none_round_trips_and_is_not_stored(tmp_path: Path) -> None:
    store = ClusterStore(path=tmp_path, name="pool-a")
    write_default(store, info=make_info(seed=None))
    assert ClusterStore(path=tmp_path, name="pool-a").info().seed is None
    metadata = raw_client(tmp_path).get_collection("pool-a-centroids", embedding_function=None)
    assert "seed" not in metadata.metadata


def test_write_replaces_a_previous_calibration(written: ClusterStore, tmp_path: Path) -> None:
    write_default(
        written,
        info=make_info(n_clusters=2, experts=("gamma",), embedding_model="other"),
        centroids=CENTROIDS[:2],
        sizes=[1, 1],
        stats={1: {"gamma": ExpertStats(1, 1)}},
        questions=QUESTIONS[:2],
        question_vectors=QUESTION_VECTORS[:2],
    )
    fresh = ClusterStore(path=tmp_path, name="pool-a")
    assert fresh.info().experts == ("gamma",)
    assert fresh.stats() == {0: {}, 1: {"gamma": ExpertStats(1, 1)}}
    assert fresh.centroids().shape == (2, 4)
    assert [q.id for q in fresh.questions()] == ["q-3", "q-1"]
    assert [c for c, _ in fresh.nearest([0.1, 0.9, 0.0, 0.0], 5)] == [1, 0]


def test_empty_question_set_is_allowed(store: ClusterStore) -> None:
    write_default(store, questions=[], question_vectors=np.zeros((0, 4)))
    assert store.questions() == []
    assert store.question_vectors().shape == (0, 4)


def test_writes_in_batches_of_the_clients_max_batch_size(tmp_path: Path) -> None:
    class RecordingCollection:
        """Delegates to a real collection and records the size of every add()."""

        def __init__(self, collection: Any, batches: list[int]) -> None:
            self._collection = collection
            self._batches = batches

        def add(self, **kwargs: Any) -> None:
            self._batches.append(len(kwargs["ids"]))
            self._collection.add(**kwargs)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._collection, name)

    class SmallBatchClient:
        """Delegates to a real client but reports a tiny max batch size."""

        def __init__(self, client: Any) -> None:
            self._client = client
            self.batches: list[int] = []

        def get_max_batch_size(self) -> int:
            return 2

        def create_collection(self, *args: Any, **kwargs: Any) -> Any:
            collection = self._client.create_collection(*args, **kwargs)
            return RecordingCollection(collection, self.batches)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._client, name)

    client = SmallBatchClient(raw_client(tmp_path))
    store = ClusterStore(client=client, name="pool-a")
    write_default(store)
    # 5 questions, then 3 centroids, in batches of at most 2.
    assert client.batches == [2, 2, 1, 2, 1]
    raw = raw_client(tmp_path)
    questions = store.collection_names()["questions"]
    assert raw.get_collection(questions, embedding_function=None).count() == 5
    # Reading pages through the same small batches still gives everything, in order.
    assert_round_trip(ClusterStore(client=client, name="pool-a"))


# --------------------------------------------------------------------------- nearest


def test_nearest_matches_numpy_cosine_distances(written: ClusterStore) -> None:
    query = np.array([0.8, 0.3, 0.1, 0.05])
    expected = cosine_distances(CENTROIDS, query)
    order = np.argsort(expected)
    result = written.nearest(query, 3)
    assert [cluster for cluster, _ in result] == [int(c) for c in order]
    np.testing.assert_allclose([d for _, d in result], expected[order], atol=1e-5)
    assert written.nearest(query.tolist(), 1) == result[:1]


def test_nearest_orders_by_cosine_not_euclidean(written: ClusterStore) -> None:
    # Long vector along cluster 1's direction: Euclidean would pick the shorter centroid 2.
    query = np.array([0.0, 10.0, 0.0, 0.0])
    result = written.nearest(query, 3)
    assert result[0][0] == 1
    assert result[0][1] == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(
        [d for _, d in result], np.sort(cosine_distances(CENTROIDS, query)), atol=1e-5
    )


def test_nearest_clamps_k_to_the_number_of_clusters(written: ClusterStore) -> None:
    result = written.nearest([0.0, 0.0, 1.0, 0.0], 50)
    assert sorted(cluster for cluster, _ in result) == [0, 1, 2]
    distances = [d for _, d in result]
    assert distances == sorted(distances)


@pytest.mark.parametrize("k", [0, -1])
def test_nearest_rejects_k_below_one(written: ClusterStore, k: int) -> None:
    with pytest.raises(InvalidInputError, match="k"):
        written.nearest([1.0, 0.0, 0.0, 0.0], k)


@pytest.mark.parametrize(
    "vector", [[0.0, 0.0, 0.0, 0.0], [float("nan"), 0.0, 0.0, 1.0], [[1.0, 0.0, 0.0, 0.0]]]
)
def test_nearest_rejects_unusable_vectors(written: ClusterStore, vector: Any) -> None:
    with pytest.raises(InvalidInputError):
        written.nearest(vector, 1)


def test_nearest_dimension_mismatch_names_both_sides(written: ClusterStore) -> None:
    with pytest.raises(EmbeddingMismatchError) as excinfo:
        written.nearest([1.0, 0.0, 0.0], 1)
    message = str(excinfo.value)
    assert "dimension 3" in message
    assert "dim 4" in message
    assert "tiny-test-embedding" in message


# --------------------------------------------------------------------------- compatibility


def test_check_compatible_accepts_the_calibration_embeddings(written: ClusterStore) -> None:
    assert written.check_compatible("tiny-test-embedding", 4) == written.info()


@pytest.mark.parametrize(("model", "dim"), [("other-embedding", 4), ("tiny-test-embedding", 384)])
def test_check_compatible_names_both_sides_and_the_fix(
    written: ClusterStore, model: str, dim: int
) -> None:
    with pytest.raises(EmbeddingMismatchError) as excinfo:
        written.check_compatible(model, dim)
    message = str(excinfo.value)
    assert "'tiny-test-embedding' (dim 4)" in message
    assert f"{model!r} (dim {dim})" in message
    assert "re-run calibrate" in message


def test_newer_schema_is_refused_with_upgrade_hint(written: ClusterStore, tmp_path: Path) -> None:
    collection = raw_client(tmp_path).get_collection("pool-a-centroids", embedding_function=None)
    metadata = dict(collection.metadata)
    metadata["schema_version"] = SCHEMA_VERSION + 1
    collection.modify(metadata=metadata)
    fresh = ClusterStore(path=tmp_path, name="pool-a")
    with pytest.raises(SchemaVersionError) as excinfo:
        fresh.info()
    message = str(excinfo.value)
    assert f"schema version {SCHEMA_VERSION + 1}" in message
    assert f"schema version {SCHEMA_VERSION} at most" in message
    assert "upgrade avengers-graph" in message
    assert not fresh.is_empty()
    # The cached info of the first instance goes once it is refreshed.
    written.refresh()
    with pytest.raises(SchemaVersionError):
        written.stats()


def test_corrupt_metadata_is_a_store_error(written: ClusterStore, tmp_path: Path) -> None:
    collection = raw_client(tmp_path).get_collection("pool-a-centroids", embedding_function=None)
    metadata = dict(collection.metadata)
    del metadata["embedding_dim"]
    collection.modify(metadata=metadata)
    written.refresh()
    with pytest.raises(StoreError, match="corrupt"):
        written.info()


@pytest.mark.parametrize("bad", ['{"slope": -1, "intercept": 0, "votes": 5}', "[1, 0]", "{"])
def test_a_corrupt_confidence_map_is_a_store_error(
    written: ClusterStore, tmp_path: Path, bad: str
) -> None:
    collection = raw_client(tmp_path).get_collection("pool-a-centroids", embedding_function=None)
    collection.modify(metadata={**collection.metadata, "confidence": bad})
    written.refresh()
    with pytest.raises(StoreError, match="corrupt"):
        written.info()


def test_the_confidence_map_round_trips_and_survives_added_experts(tmp_path: Path) -> None:
    store = ClusterStore(path=tmp_path, name="pool-a")
    fitted = ConfidenceMap(slope=0.42, intercept=-0.1, votes=224)
    write_default(store, info=make_info(confidence=fitted))
    assert ClusterStore(path=tmp_path, name="pool-a").info().confidence == fitted
    metadata = raw_client(tmp_path).get_collection("pool-a-centroids", embedding_function=None)
    assert json.loads(metadata.metadata["confidence"]) == {
        "slope": 0.42,
        "intercept": -0.1,
        "votes": 224,
    }
    store.add_expert_stats({0: {"gamma": ExpertStats(1, 1)}})
    assert ClusterStore(path=tmp_path, name="pool-a").info().confidence == fitted


def test_a_store_without_a_map_reads_none(written: ClusterStore, tmp_path: Path) -> None:
    # what a store written before the map (or fitted on too few votes) holds
    metadata = raw_client(tmp_path).get_collection("pool-a-centroids", embedding_function=None)
    assert "confidence" not in metadata.metadata
    assert written.info().confidence is None


# --------------------------------------------------------------------------- collections


def test_collections_have_cosine_space_and_no_embedding_function(
    written: ClusterStore, tmp_path: Path
) -> None:
    client = raw_client(tmp_path)
    for name in written.collection_names().values():
        collection = client.get_collection(name, embedding_function=None)
        with warnings.catch_warnings():
            # Chroma calls a collection created without embedding function "legacy".
            warnings.simplefilter("ignore", DeprecationWarning)
            configuration = collection.configuration
        assert configuration["hnsw"]["space"] == "cosine"
        assert configuration["embedding_function"] is None
        # Nothing persisted either: a collection created with Chroma's default would
        # record {"type": "known", "name": "default"} here, and get_collection would
        # attach it even when asked for embedding_function=None.
        persisted = collection.configuration_json["embedding_function"]
        assert persisted is None or persisted.get("type") != "known"


def test_collection_records_follow_the_documented_layout(
    written: ClusterStore, tmp_path: Path
) -> None:
    client = raw_client(tmp_path)
    names = written.collection_names()
    info = client.get_collection("pool-a-centroids", embedding_function=None)
    assert info.count() == 0  # the info collection holds the metadata only
    assert json.loads(info.metadata["experts"]) == ["alpha", "beta"]
    assert info.metadata["schema_version"] == SCHEMA_VERSION == 2
    generation = info.metadata["centroids_generation"]
    assert names["centroids"] == f"pool-a-centroids.{generation}"
    assert names["questions"] == f"pool-a-questions.{info.metadata['questions_generation']}"
    centroids = client.get_collection(names["centroids"], embedding_function=None)
    record = centroids.get(ids=["0"], include=["metadatas"])["metadatas"][0]
    assert record["cluster"] == 0
    assert record["size"] == 2
    assert json.loads(record["stats"])["beta"]["accuracy"] == 0.5
    questions = client.get_collection(names["questions"], embedding_function=None)
    got = questions.get(ids=["q-2"], include=["metadatas", "documents"])
    assert got["documents"] == ["Write hello world."]
    assert got["metadatas"][0]["cluster"] == 2
    assert got["metadatas"][0]["kind"] == "code"


def test_two_pools_in_one_database_are_isolated(tmp_path: Path) -> None:
    first = ClusterStore(path=tmp_path, name="pool-a")
    second = ClusterStore(path=tmp_path, name="pool-b")
    write_default(first)
    assert second.is_empty()
    write_default(
        second,
        info=make_info(n_clusters=2, experts=("gamma",)),
        centroids=CENTROIDS[:2],
        sizes=[5, 6],
        stats={0: {"gamma": ExpertStats(4, 5)}},
        questions=QUESTIONS[:1],
        question_vectors=QUESTION_VECTORS[:1],
    )
    assert_round_trip(ClusterStore(path=tmp_path, name="pool-a"))
    assert second.sizes() == {0: 5, 1: 6}
    second.delete()
    assert second.is_empty()
    assert_round_trip(ClusterStore(path=tmp_path, name="pool-a"))
    names = {c.name for c in raw_client(tmp_path).list_collections()}
    assert names == set(ClusterStore(path=tmp_path, name="pool-a").collection_names().values())


def test_delete_empties_the_pool_and_is_idempotent(written: ClusterStore) -> None:
    written.delete()
    assert written.is_empty()
    with pytest.raises(EmptyStoreError):
        written.stats()
    written.delete()


# --------------------------------------------------------------------------- caching


def test_reads_are_cached_until_refresh(written: ClusterStore, tmp_path: Path) -> None:
    before = written.stats()
    other = ClusterStore(path=tmp_path, name="pool-a")
    other.add_expert_stats({0: {"gamma": ExpertStats(1, 1)}})
    assert written.stats() == before
    assert written.info().experts == ("alpha", "beta")
    written.refresh()
    assert written.stats()[0]["gamma"] == ExpertStats(1, 1)
    assert written.info().experts == ("alpha", "beta", "gamma")


def test_returned_dicts_do_not_alias_the_cache(written: ClusterStore) -> None:
    written.stats()[0].clear()
    written.sizes()[0] = 99
    assert written.stats() == STATS
    assert written.sizes()[0] == 2


def test_a_pool_rewritten_elsewhere_is_picked_up_by_a_cached_store(
    written: ClusterStore, tmp_path: Path
) -> None:
    written.nearest([1.0, 0.0, 0.0, 0.0], 1)  # caches the collection handle
    assert written.stats() == STATS  # and the statistics
    other = ClusterStore(path=tmp_path, name="pool-a")
    write_default(
        other,
        info=make_info(n_clusters=2, experts=("gamma",)),
        centroids=CENTROIDS[[1, 0]],
        sizes=[1, 1],
        stats={0: {"gamma": ExpertStats(1, 1)}},
        questions=QUESTIONS[:2],
        question_vectors=QUESTION_VECTORS[:2],
    )
    # The stale handle is detected; info, handles and statistics are all read anew.
    result = written.nearest([1.0, 0.0, 0.0, 0.0], 5)
    assert [cluster for cluster, _ in result] == [1, 0]
    assert written.info().n_clusters == 2
    assert written.stats() == {0: {"gamma": ExpertStats(1, 1)}, 1: {}}


# --------------------------------------------------------------------------- add_expert_stats


def test_add_expert_stats_keeps_other_experts(written: ClusterStore, tmp_path: Path) -> None:
    info = written.add_expert_stats(
        {
            2: {"gamma": ExpertStats(2, 2, 5.0, 0.1), "alpha": ExpertStats(2, 2)},
            0: {"delta": ExpertStats(0, 2)},
        }
    )
    assert info.experts == ("alpha", "beta", "gamma", "delta")
    expected = {
        0: {**STATS[0], "delta": ExpertStats(0, 2)},
        1: STATS[1],
        2: {"alpha": ExpertStats(2, 2), "gamma": ExpertStats(2, 2, 5.0, 0.1)},
    }
    assert written.stats() == expected
    fresh = ClusterStore(path=tmp_path, name="pool-a")
    assert fresh.stats() == expected
    assert fresh.info() == info
    assert fresh.sizes() == {0: 2, 1: 1, 2: 2}
    np.testing.assert_allclose(fresh.centroids(), CENTROIDS, atol=1e-7)


def test_add_expert_stats_rejects_unknown_clusters(written: ClusterStore) -> None:
    with pytest.raises(InvalidInputError, match="cluster 3"):
        written.add_expert_stats({3: {"gamma": ExpertStats(1, 1)}})
    with pytest.raises(InvalidInputError, match="ExpertStats"):
        written.add_expert_stats({0: {"gamma": {"correct": 1, "total": 1}}})  # type: ignore[dict-item]
    assert written.stats() == STATS


# --------------------------------------------------------------------------- invalid writes


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"centroids": CENTROIDS[:2]}, r"centroids.*\(3, 4\)"),
        ({"centroids": CENTROIDS[:, :3]}, r"centroids.*\(3, 4\)"),
        ({"centroids": CENTROIDS[0]}, "2-D"),
        ({"centroids": np.vstack([CENTROIDS[:2], np.zeros(4)])}, "zero"),
        ({"centroids": np.where(CENTROIDS == 1.0, np.inf, CENTROIDS)}, "infinite"),
        ({"sizes": [1, 2]}, "sizes"),
        ({"sizes": [1, -2, 3]}, "sizes"),
        ({"stats": {5: {"alpha": ExpertStats(1, 1)}}}, "cluster 5"),
        ({"stats": {0: {"zeta": ExpertStats(1, 1)}}}, "zeta"),
        ({"question_vectors": QUESTION_VECTORS[:4]}, "question_vectors"),
        ({"question_vectors": QUESTION_VECTORS[:, :3]}, "question_vectors"),
        ({"questions": [*QUESTIONS[:4], replace(QUESTIONS[4], cluster=3)]}, "cluster 3"),
        ({"questions": [*QUESTIONS[:4], replace(QUESTIONS[4], id="q-3")]}, "twice"),
        ({"info": make_info(name="pool-z")}, "pool-z"),
        ({"info": make_info(schema_version=SCHEMA_VERSION + 1)}, "schema version"),
    ],
)
def test_invalid_writes_are_refused_before_touching_the_store(
    written: ClusterStore, changes: dict[str, Any], match: str
) -> None:
    with pytest.raises(InvalidInputError, match=match):
        write_default(written, **changes)
    written.refresh()
    assert_round_trip(written)


def test_stored_question_validates_its_fields() -> None:
    with pytest.raises(InvalidInputError):
        StoredQuestion("", "q", "a", "number", 0)
    with pytest.raises(InvalidInputError):
        StoredQuestion("id", "q", "a", "number", 0.5)  # type: ignore[arg-type]
    assert StoredQuestion("id", "q", "a", "number", np.int64(2)).cluster == 2  # type: ignore[arg-type]


# --------------------------------------------------------------------------- reliability


def test_a_second_writer_gets_a_busy_error_naming_the_store(tmp_path: Path) -> None:
    first = ClusterStore(path=tmp_path, name="pool-a")
    second = ClusterStore(path=tmp_path, name="pool-a")
    with first.write_lock():
        write_default(first)  # re-entrant for the holder
        with pytest.raises(StoreBusyError) as excinfo:
            write_default(
                second,
                info=make_info(n_clusters=2),
                centroids=CENTROIDS[:2],
                sizes=[1, 1],
                stats={},
                questions=[],
                question_vectors=np.zeros((0, 4)),
            )
        with pytest.raises(StoreBusyError):
            second.add_expert_stats({0: {"gamma": ExpertStats(1, 1)}})
        with pytest.raises(StoreBusyError):
            second.delete()
    message = str(excinfo.value)
    assert str(tmp_path) in message
    assert "one writer at a time" in message
    assert_round_trip(ClusterStore(path=tmp_path, name="pool-a"))  # the refused writes did nothing
    write_default(second)  # released: the next writer goes ahead


class FailingClient:
    """A real Chroma client whose ``fail_at``-th mutating call raises (a crash mid-write)."""

    MUTATING = frozenset({"add", "modify", "delete", "create_collection", "delete_collection"})

    def __init__(self, client: Any, fail_at: int) -> None:
        self._client = client
        self.fail_at = fail_at
        self.calls = 0

    def _count(self, what: str) -> None:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError(f"injected crash at mutating call {self.calls} ({what})")

    def _wrap(self, collection: Any) -> Any:
        owner = self

        class Wrapped:
            def __getattr__(self, name: str) -> Any:
                attribute = getattr(collection, name)
                if name not in owner.MUTATING:
                    return attribute

                def call(*args: Any, **kwargs: Any) -> Any:
                    owner._count(name)
                    return attribute(*args, **kwargs)

                return call

        return Wrapped()

    def create_collection(self, *args: Any, **kwargs: Any) -> Any:
        self._count("create_collection")
        return self._wrap(self._client.create_collection(*args, **kwargs))

    def get_collection(self, *args: Any, **kwargs: Any) -> Any:
        return self._wrap(self._client.get_collection(*args, **kwargs))

    def delete_collection(self, *args: Any, **kwargs: Any) -> Any:
        self._count("delete_collection")
        return self._client.delete_collection(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


NEW_CALIBRATION: dict[str, Any] = {
    "info": make_info(n_clusters=2, experts=("gamma",)),
    "centroids": CENTROIDS[[1, 0]],
    "sizes": [1, 1],
    "stats": {0: {"gamma": ExpertStats(1, 1)}},
    "questions": QUESTIONS[:2],
    "question_vectors": QUESTION_VECTORS[:2],
}


def assert_new_calibration(store: ClusterStore) -> None:
    assert store.info().experts == ("gamma",)
    assert store.stats() == {0: {"gamma": ExpertStats(1, 1)}, 1: {}}
    assert [q.id for q in store.questions()] == ["q-3", "q-1"]
    assert [c for c, _ in store.nearest([0.0, 1.0, 0.0, 0.0], 2)] == [0, 1]


def test_a_write_interrupted_at_any_step_leaves_a_complete_calibration(tmp_path: Path) -> None:
    # Count the mutating calls of one replacing write, then crash it at each of them.
    probe_dir = tmp_path / "probe"
    write_default(ClusterStore(path=probe_dir, name="pool-a"))
    probe = FailingClient(raw_client(probe_dir), fail_at=0)
    write_default(ClusterStore(client=probe, name="pool-a"), **NEW_CALIBRATION)
    steps = probe.calls
    assert steps >= 8  # lease, 2 creates, 2+ adds, the switch, the deletes
    outcomes = {"old": 0, "new": 0}
    for fail_at in range(1, steps + 1):
        folder = tmp_path / f"crash-{fail_at}"
        write_default(ClusterStore(path=folder, name="pool-a"))
        failing = FailingClient(raw_client(folder), fail_at=fail_at)
        with pytest.raises(RuntimeError, match="injected crash"):
            write_default(ClusterStore(client=failing, name="pool-a"), **NEW_CALIBRATION)
        reader = ClusterStore(path=folder, name="pool-a")
        if reader.info().experts == ("alpha", "beta"):
            assert_round_trip(reader)
            outcomes["old"] += 1
        else:
            assert_new_calibration(reader)
            outcomes["new"] += 1
        # The next write deletes whatever the crashed one left behind (a lease whose
        # release crashed stays until it expires: only server writers use it).
        write_default(ClusterStore(path=folder, name="pool-a"), **NEW_CALIBRATION)
        names = {c.name for c in raw_client(folder).list_collections()}
        if fail_at == steps:
            names.discard("pool-a-writer")
        assert names == set(ClusterStore(path=folder, name="pool-a").collection_names().values())
    assert outcomes["old"] > 0
    assert outcomes["new"] > 0  # crashes after the switch (while deleting the old one)


@pytest.mark.parametrize(
    ("content", "what"),
    [(b"", "empty (0 bytes)"), (b"garbage " * 500, "not an SQLite database")],
)
def test_a_damaged_database_file_is_reported_not_read_as_empty(
    written: ClusterStore, tmp_path: Path, content: bytes, what: str
) -> None:
    database = tmp_path / "chroma.sqlite3"
    database.write_bytes(content)
    store = ClusterStore(path=tmp_path, name="pool-a")
    for read in (store.is_empty, store.info, store.stats):
        with pytest.raises(DamagedStoreError) as excinfo:
            read()
        message = str(excinfo.value)
        assert str(database) in message
        assert what in message
        assert "backup" in message
        assert "calibrate" in message
    assert database.read_bytes() == content  # Chroma did not start a new database over it


def test_a_chroma_call_that_never_returns_is_a_timeout_error(tmp_path: Path) -> None:
    import threading

    release = threading.Event()

    class HungClient:
        def get_collection(self, *args: Any, **kwargs: Any) -> Any:
            release.wait(60)
            raise AssertionError("released")

    store = ClusterStore(client=HungClient(), name="pool-a", timeout=0.2)
    try:
        with pytest.raises(StoreTimeoutError) as excinfo:
            store.info()
        assert "did not answer within 0.2 s" in str(excinfo.value)
        assert "pool 'pool-a'" in str(excinfo.value)
    finally:
        release.set()


def test_timeout_must_be_positive() -> None:
    with pytest.raises(InvalidInputError, match="timeout"):
        ClusterStore(host="h", timeout=0)
    with pytest.raises(InvalidInputError, match="timeout"):
        ClusterStore(host="h", timeout=-1)


def write_schema_1(path: Path) -> None:
    """Write the default calibration in the layout of schema version 1 (before generations)."""
    client = raw_client(path)
    config = {"hnsw": {"space": "cosine"}}
    questions = client.create_collection(
        "pool-a-questions", configuration=config, embedding_function=None
    )
    questions.add(
        ids=[q.id for q in QUESTIONS],
        embeddings=QUESTION_VECTORS,
        documents=[q.question for q in QUESTIONS],
        metadatas=[
            {"cluster": q.cluster, "answer": q.answer, "kind": q.kind, "position": i}
            for i, q in enumerate(QUESTIONS)
        ],
    )
    centroids = client.create_collection(
        "pool-a-centroids", configuration=config, embedding_function=None
    )
    centroids.add(
        ids=["0", "1", "2"],
        embeddings=CENTROIDS,
        metadatas=[
            {
                "cluster": c,
                "size": SIZES[c],
                "stats": json.dumps({e: s.to_dict() for e, s in STATS[c].items()}),
            }
            for c in range(3)
        ],
    )
    centroids.modify(
        metadata={
            "schema_version": 1,
            "name": "pool-a",
            "embedding_model": "tiny-test-embedding",
            "embedding_dim": 4,
            "n_clusters": 3,
            "experts": json.dumps(["alpha", "beta"]),
            "created_at": "2026-01-01T00:00:00+00:00",
            "seed": 7,
        }
    )


def test_a_schema_1_store_is_read_then_migrated_by_the_next_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_schema_1(tmp_path)
    old = ClusterStore(path=tmp_path, name="pool-a")
    assert old.info().schema_version == 1
    assert old.stats() == STATS
    assert old.questions() == QUESTIONS
    np.testing.assert_allclose(old.centroids(), CENTROIDS, atol=1e-7)
    assert old.nearest([0.0, 1.0, 0.0, 0.0], 1)[0][0] == 1

    with caplog.at_level("INFO", logger="avengers_graph.stores.chroma"):
        info = old.add_expert_stats({1: {"gamma": ExpertStats(1, 1)}})
    assert "from schema version 1 to 2" in caplog.text
    assert info.schema_version == SCHEMA_VERSION
    fresh = ClusterStore(path=tmp_path, name="pool-a")
    assert fresh.info().experts == ("alpha", "beta", "gamma")
    assert fresh.stats() == {**STATS, 1: {**STATS[1], "gamma": ExpertStats(1, 1)}}
    assert fresh.questions() == QUESTIONS
    np.testing.assert_allclose(fresh.question_vectors(), QUESTION_VECTORS, atol=1e-7)
    np.testing.assert_allclose(fresh.centroids(), CENTROIDS, atol=1e-7)
    names = {c.name for c in raw_client(tmp_path).list_collections()}
    assert names == set(fresh.collection_names().values())
    assert "pool-a-questions" not in names
    assert raw_client(tmp_path).get_collection("pool-a-centroids").count() == 0


def test_a_schema_1_store_is_replaced_by_a_write(tmp_path: Path) -> None:
    write_schema_1(tmp_path)
    write_default(ClusterStore(path=tmp_path, name="pool-a"), **NEW_CALIBRATION)
    fresh = ClusterStore(path=tmp_path, name="pool-a")
    assert_new_calibration(fresh)
    names = {c.name for c in raw_client(tmp_path).list_collections()}
    assert names == set(fresh.collection_names().values())


def test_a_store_with_corrupt_metadata_is_rebuilt_by_a_write(
    written: ClusterStore, tmp_path: Path
) -> None:
    collection = raw_client(tmp_path).get_collection("pool-a-centroids", embedding_function=None)
    metadata = dict(collection.metadata)
    metadata["centroids_generation"] = "not-a-generation"
    collection.modify(metadata=metadata)
    fresh = ClusterStore(path=tmp_path, name="pool-a")
    with pytest.raises(StoreError, match="--replace"):
        fresh.stats()
    write_default(fresh, **NEW_CALIBRATION)  # what calibrate --replace does
    rebuilt = ClusterStore(path=tmp_path, name="pool-a")
    assert_new_calibration(rebuilt)
    names = {c.name for c in raw_client(tmp_path).list_collections()}
    assert names == set(rebuilt.collection_names().values())
