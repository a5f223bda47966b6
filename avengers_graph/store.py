"""The calibration store: cluster centroids and per-cluster expert statistics in Chroma.

Calibration (``calibrate``) embeds the validation questions, clusters them and scores
every expert per cluster; :meth:`ClusterStore.write` keeps the result. Routing reads it
back on every question: :meth:`ClusterStore.nearest` finds the closest centroids and
:meth:`ClusterStore.stats` gives the experts' per-cluster statistics.

Layout (schema version :data:`SCHEMA_VERSION`), for a pool named ``name``. Several pools
share one Chroma database; each pool only ever touches its own two collections.

* ``f"{name}-centroids"``: one record per cluster, id ``str(cluster)``, embedding = the
  centroid, metadata ``{"cluster": int, "size": int, "stats": JSON}`` where ``stats``
  is ``{expert: ExpertStats.to_dict()}``. The collection metadata holds the
  :class:`StoreInfo`: ``schema_version``, ``name``, ``embedding_model``,
  ``embedding_dim``, ``n_clusters``, ``created_at``, ``experts`` (a JSON list) and
  ``seed``; the ``seed`` key is absent when the seed is ``None``.
* ``f"{name}-questions"``: one record per validation question, id = question id,
  embedding = the question's vector, document = the question text, metadata
  ``{"cluster": int, "answer": str, "kind": str, "position": int}``; ``position`` keeps
  the order in which the questions were written.

Both collections use cosine space (Chroma returns ``1 - cos`` as the distance) and have
no embedding function: vectors are always given explicitly, so Chroma never tries to
download its default embedding model. The :class:`StoreInfo` is written last, so an
interrupted write leaves a store that reads as empty rather than a half-written one.

Chroma is imported lazily (it costs about a second) and the client is created on first
use, so constructing a :class:`ClusterStore` does no I/O.
"""

from __future__ import annotations

import contextlib
import json
import math
import operator
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import numpy.typing as npt

from avengers_graph.errors import (
    EmbeddingMismatchError,
    EmptyStoreError,
    InvalidInputError,
    SchemaVersionError,
    StoreError,
)

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.collection_configuration import CreateCollectionConfiguration
    from chromadb.api.models.Collection import Collection
    from chromadb.api.types import Include, Metadata

__all__ = [
    "SCHEMA_VERSION",
    "ClusterStore",
    "ExpertStats",
    "StoreInfo",
    "StoredQuestion",
]

SCHEMA_VERSION: int = 1
"""Version of the store layout written by this release of avengers-graph."""

_CENTROIDS_SUFFIX = "-centroids"
_QUESTIONS_SUFFIX = "-questions"
# Chroma's collection-name rules: 3-512 characters from [a-zA-Z0-9._-], starting and
# ending with a letter or digit, no "..", not an IPv4 address. The suffixes make the
# collection names long enough and never an address; the pool name follows the rest.
_MAX_NAME_LENGTH = 512 - len(_CENTROIDS_SUFFIX)
_NAME_PATTERN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_DEFAULT_BATCH_SIZE = 1000

_T = TypeVar("_T")


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


def _validate_name(name: object) -> str:
    """Return ``name`` if it makes valid Chroma collection names.

    Raises:
        InvalidInputError: The name breaks Chroma's collection-name rules.
    """
    if (
        not isinstance(name, str)
        or len(name) > _MAX_NAME_LENGTH
        or not _NAME_PATTERN.fullmatch(name)
        or ".." in name
    ):
        raise InvalidInputError(
            f"Invalid pool name {name!r}: use 1-{_MAX_NAME_LENGTH} characters from "
            "[a-zA-Z0-9._-], starting and ending with a letter or digit, with no '..' "
            f"(Chroma's collection-name rules; the store appends {_CENTROIDS_SUFFIX!r} "
            f"and {_QUESTIONS_SUFFIX!r})."
        )
    return name


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


def _collection_configuration() -> CreateCollectionConfiguration:
    """Return the configuration of both collections: HNSW in cosine space."""
    return {"hnsw": {"space": "cosine"}}


def _location(path: str | None, host: str | None, port: int, ssl: bool) -> str:
    if path is not None:
        return f"the database at {path!r}"
    if host is not None:
        return f"the Chroma server at {'https' if ssl else 'http'}://{host}:{port}"
    return "the given Chroma client"


class ClusterStore:
    """Calibration store of one pool of experts in a Chroma database.

    Give exactly one of ``path`` (an embedded database on disk), ``host`` (a Chroma
    server) or ``client`` (an existing Chroma client). Nothing is opened until the
    first call that needs the database.

    ``info()``, ``stats()`` and ``sizes()`` are read once and kept in memory, since
    routing reads them for every question; writes through this instance update them,
    and :meth:`refresh` drops them after another process rewrote the pool.

    Args:
        path: Folder of an embedded (persistent) Chroma database.
        host: Host name of a Chroma server.
        port: Port of the Chroma server.
        ssl: Connect to the server over HTTPS.
        headers: Extra HTTP headers for the server (for example an auth token); never
            shown by ``repr``.
        client: An existing Chroma client (``chromadb.ClientAPI``) to use as is.
        name: Pool name; a database holds several pools side by side.

    Raises:
        InvalidInputError: Not exactly one of ``path``, ``host`` and ``client`` is
            given, ``port`` is out of range, or ``name`` breaks Chroma's
            collection-name rules.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        host: str | None = None,
        port: int = 8000,
        ssl: bool = False,
        headers: Mapping[str, str] | None = None,
        client: Any = None,
        name: str = "avengers",
    ) -> None:
        given = [
            what
            for what, value in (("path", path), ("host", host), ("client", client))
            if value is not None
        ]
        if len(given) != 1:
            raise InvalidInputError(
                "ClusterStore needs exactly one of `path` (embedded database folder), "
                f"`host` (Chroma server) or `client` (Chroma client); got {given or 'none'}."
            )
        if host is not None and (not isinstance(host, str) or not host):
            raise InvalidInputError(f"`host` must be a non-empty string, got {host!r}.")
        port = _as_int(port, "`port`")
        if not 0 < port < 65536:
            raise InvalidInputError(f"`port` must be in 1..65535, got {port}.")
        self.name: str = _validate_name(name)
        self._path: str | None = os.fspath(path) if path is not None else None
        self._host = host
        self._port = port
        self._ssl = bool(ssl)
        self._headers: dict[str, str] | None = dict(headers) if headers is not None else None
        self._client: ClientAPI | None = client
        self._lock = threading.Lock()
        self._batch_size: int | None = None
        self._collections: dict[str, Collection] = {}
        self._info: StoreInfo | None = None
        self._clusters: tuple[dict[int, dict[str, ExpertStats]], dict[int, int]] | None = None

    def __repr__(self) -> str:
        if self._path is not None:
            parts = [f"path={self._path!r}"]
        elif self._host is not None:
            parts = [f"host={self._host!r}", f"port={self._port}", f"ssl={self._ssl}"]
            if self._headers:
                # Header values can hold auth tokens: show the names only.
                hidden = ", ".join(f"{key!r}: '***'" for key in self._headers)
                parts.append(f"headers={{{hidden}}}")
        else:
            parts = [f"client=<{type(self._client).__name__}>"]
        parts.append(f"name={self.name!r}")
        return f"ClusterStore({', '.join(parts)})"

    # ------------------------------------------------------------------ connection

    @property
    def centroids_collection_name(self) -> str:
        """Name of the Chroma collection holding this pool's centroids and info."""
        return self.name + _CENTROIDS_SUFFIX

    @property
    def questions_collection_name(self) -> str:
        """Name of the Chroma collection holding this pool's validation questions."""
        return self.name + _QUESTIONS_SUFFIX

    @property
    def _where(self) -> str:
        return f"pool {self.name!r} in {_location(self._path, self._host, self._port, self._ssl)}"

    def _get_client(self) -> ClientAPI:
        """Return the Chroma client, creating it on first use.

        Raises:
            StoreError: The Chroma server cannot be reached.
        """
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _make_client(self) -> ClientAPI:
        import chromadb
        from chromadb.config import Settings

        settings = Settings(anonymized_telemetry=False)
        if self._path is not None:
            return chromadb.PersistentClient(path=self._path, settings=settings)
        if self._host is None:  # pragma: no cover - __init__ guarantees one of them
            raise InvalidInputError("ClusterStore has neither a path nor a host.")
        try:
            return chromadb.HttpClient(
                host=self._host,
                port=self._port,
                ssl=self._ssl,
                headers=self._headers,
                settings=settings,
            )
        except ValueError as exc:
            raise StoreError(
                f"Cannot reach {_location(None, self._host, self._port, self._ssl)} ({exc}). "
                "Start it with `chroma run --path <folder> --port <port>` or fix host/port."
            ) from exc

    def _max_batch(self) -> int:
        if self._batch_size is None:
            getter: Callable[[], int] | None = getattr(
                self._get_client(), "get_max_batch_size", None
            )
            size = getter() if getter is not None else _DEFAULT_BATCH_SIZE
            self._batch_size = max(1, int(size))
        return self._batch_size

    def _collection(self, collection_name: str) -> Collection:
        """Return an existing collection of this pool (cached handle).

        Raises:
            EmptyStoreError: The collection does not exist.
        """
        from chromadb.errors import NotFoundError

        cached = self._collections.get(collection_name)
        if cached is not None:
            return cached
        try:
            collection = self._get_client().get_collection(collection_name, embedding_function=None)
        except NotFoundError:
            raise self._empty_error() from None
        self._collections[collection_name] = collection
        return collection

    def _create_collection(self, collection_name: str) -> Collection:
        collection = self._get_client().create_collection(
            collection_name,
            configuration=_collection_configuration(),
            embedding_function=None,
        )
        self._collections[collection_name] = collection
        return collection

    def _delete_collections(self) -> None:
        from chromadb.errors import NotFoundError

        client = self._get_client()
        # Centroids (with the info) first: a store caught half-deleted reads as empty.
        for collection_name in (self.centroids_collection_name, self.questions_collection_name):
            with contextlib.suppress(NotFoundError):
                client.delete_collection(collection_name)
        self.refresh()

    def _retrying(self, read: Callable[[], _T]) -> _T:
        """Run ``read``; if a cached collection handle went stale, refresh and retry once.

        A collection handle goes stale when another client deleted or rewrote the pool.
        """
        from chromadb.errors import NotFoundError

        try:
            return read()
        except NotFoundError:
            self.refresh()
            return read()

    def _empty_error(self) -> EmptyStoreError:
        return EmptyStoreError(
            f"The Chroma store holds no calibration for {self._where}; "
            "run calibrate first to build it (or check the pool name and location)."
        )

    # ------------------------------------------------------------------ reading

    def refresh(self) -> None:
        """Drop the in-process cache (info, statistics, sizes, collection handles)."""
        self._info = None
        self._clusters = None
        self._collections = {}

    def _read_info_metadata(self) -> dict[str, Any] | None:
        """Return the centroids collection's metadata, ``None`` if nothing was written.

        A collection handle carries the metadata of the moment it was fetched, so the
        handle is always fetched anew here.
        """
        self._collections.pop(self.centroids_collection_name, None)
        try:
            collection = self._collection(self.centroids_collection_name)
        except EmptyStoreError:
            return None
        metadata = dict(collection.metadata or {})
        return metadata if "schema_version" in metadata else None

    def is_empty(self) -> bool:
        """Return whether this pool holds no (complete) calibration."""
        if self._info is not None:
            return False
        return self._read_info_metadata() is None

    def info(self) -> StoreInfo:
        """Return what the stored calibration was built with.

        Raises:
            EmptyStoreError: Nothing was written to this pool.
            SchemaVersionError: The store was written by a newer avengers-graph.
            StoreError: The stored metadata is corrupt.
        """
        if self._info is None:
            metadata = self._read_info_metadata()
            if metadata is None:
                raise self._empty_error()
            self._info = self._parse_info(metadata)
        return self._info

    def _parse_info(self, metadata: Mapping[str, Any]) -> StoreInfo:
        version = metadata["schema_version"]
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise StoreError(
                f"The store of {self._where} has an invalid schema_version {version!r}; "
                "re-run calibrate to rebuild it."
            )
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"The store of {self._where} has schema version {version}, but this "
                f"avengers-graph reads schema version {SCHEMA_VERSION} at most; "
                "upgrade avengers-graph (pip install -U avengers-graph)."
            )
        try:
            experts = json.loads(metadata["experts"])
            seed = metadata.get("seed")
            return StoreInfo(
                name=metadata["name"],
                embedding_model=metadata["embedding_model"],
                embedding_dim=metadata["embedding_dim"],
                n_clusters=metadata["n_clusters"],
                seed=seed,
                experts=tuple(experts),
                schema_version=version,
                created_at=metadata.get("created_at", ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(
                f"The store metadata of {self._where} is corrupt ({exc!r}); "
                "re-run calibrate to rebuild it."
            ) from exc

    @staticmethod
    def _info_metadata(info: StoreInfo) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "schema_version": info.schema_version,
            "name": info.name,
            "embedding_model": info.embedding_model,
            "embedding_dim": info.embedding_dim,
            "n_clusters": info.n_clusters,
            "experts": json.dumps(list(info.experts)),
            "created_at": info.created_at,
        }
        if info.seed is not None:
            metadata["seed"] = info.seed
        return metadata

    def check_compatible(self, embedding_model: str, embedding_dim: int) -> StoreInfo:
        """Check that the store was built with the embeddings in use.

        Args:
            embedding_model: Name of the embedding model in use.
            embedding_dim: Dimension of its vectors.

        Returns:
            The store's info.

        Raises:
            EmbeddingMismatchError: The store was built with another model or dimension.
            EmptyStoreError: Nothing was written to this pool.
        """
        info = self.info()
        if info.embedding_model != embedding_model or info.embedding_dim != embedding_dim:
            raise EmbeddingMismatchError(
                f"The store of {self._where} was calibrated with embedding model "
                f"{info.embedding_model!r} (dim {info.embedding_dim}), but model "
                f"{embedding_model!r} (dim {embedding_dim}) is in use. Use the same "
                "embeddings as the calibration, or re-run calibrate with these ones."
            )
        return info

    def _cluster_records(self) -> tuple[dict[int, dict[str, ExpertStats]], dict[int, int]]:
        if self._clusters is None:

            def read() -> tuple[StoreInfo, dict[str, Any]]:
                info = self.info()
                collection = self._collection(self.centroids_collection_name)
                return info, dict(collection.get(include=["metadatas"]))

            info, records = self._retrying(read)
            stats: dict[int, dict[str, ExpertStats]] = {}
            sizes: dict[int, int] = {}
            for metadata in records["metadatas"] or []:
                cluster, size, cluster_stats = self._parse_cluster_metadata(metadata)
                stats[cluster] = cluster_stats
                sizes[cluster] = size
            if sorted(stats) != list(range(info.n_clusters)):
                raise StoreError(
                    f"The store of {self._where} should hold clusters 0..{info.n_clusters - 1} "
                    f"but holds {sorted(stats)}; re-run calibrate to rebuild it."
                )
            self._clusters = (stats, sizes)
        return self._clusters

    def _parse_cluster_metadata(
        self, metadata: Mapping[str, Any] | None
    ) -> tuple[int, int, dict[str, ExpertStats]]:
        try:
            if metadata is None:
                metadata = {}
            raw = json.loads(metadata["stats"])
            stats = {str(expert): ExpertStats.from_dict(data) for expert, data in raw.items()}
            return int(metadata["cluster"]), int(metadata["size"]), stats
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StoreError(
                f"A centroid record of {self._where} is corrupt ({exc!r}); "
                "re-run calibrate to rebuild it."
            ) from exc

    def stats(self) -> dict[int, dict[str, ExpertStats]]:
        """Return each cluster's expert statistics: ``{cluster: {expert: ExpertStats}}``.

        Every cluster is present; an expert absent from a cluster has no statistics there.

        Raises:
            EmptyStoreError: Nothing was written to this pool.
        """
        stats, _ = self._cluster_records()
        return {cluster: dict(experts) for cluster, experts in stats.items()}

    def sizes(self) -> dict[int, int]:
        """Return the number of validation questions of each cluster.

        Raises:
            EmptyStoreError: Nothing was written to this pool.
        """
        _, sizes = self._cluster_records()
        return dict(sizes)

    def centroids(self) -> npt.NDArray[np.float32]:
        """Return the centroids as a ``(n_clusters, embedding_dim)`` float32 matrix.

        Rows are ordered by cluster id. Chroma keeps vectors as float32.

        Raises:
            EmptyStoreError: Nothing was written to this pool.
        """

        def read() -> tuple[StoreInfo, dict[str, Any]]:
            info = self.info()
            collection = self._collection(self.centroids_collection_name)
            return info, dict(collection.get(include=["embeddings"]))

        info, records = self._retrying(read)
        ids = [int(record_id) for record_id in records["ids"]]
        if sorted(ids) != list(range(info.n_clusters)):
            raise StoreError(
                f"The store of {self._where} should hold clusters 0..{info.n_clusters - 1} "
                f"but holds {sorted(ids)}; re-run calibrate to rebuild it."
            )
        embeddings = np.asarray(records["embeddings"], dtype=np.float32)
        return embeddings[np.argsort(ids)].reshape(info.n_clusters, info.embedding_dim)

    def nearest(
        self, vector: Sequence[float] | npt.NDArray[Any], k: int
    ) -> list[tuple[int, float]]:
        """Return the ``k`` centroids nearest to ``vector``, nearest first.

        Args:
            vector: A question embedding of the store's dimension.
            k: How many clusters to return; clamped to the number of clusters.

        Returns:
            ``(cluster, distance)`` pairs, where distance is Chroma's cosine distance
            ``1 - cos`` (so in [0, 2]).

        Raises:
            InvalidInputError: ``k < 1``, or the vector is not 1-D, not finite or zero.
            EmbeddingMismatchError: The vector's dimension differs from the store's.
            EmptyStoreError: Nothing was written to this pool.
        """
        k = _as_int(k, "`k`")
        if k < 1:
            raise InvalidInputError(f"`k` must be >= 1, got {k}.")
        try:
            query = np.asarray(vector, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"The query vector must be numeric: {exc}") from None
        if query.ndim != 1:
            raise InvalidInputError(f"The query vector must be 1-D, got shape {query.shape}.")
        if not np.all(np.isfinite(query)) or not np.any(query):
            raise InvalidInputError("The query vector must be finite and not all zeros.")

        def read() -> dict[str, Any]:
            info = self.info()
            if query.shape[0] != info.embedding_dim:
                raise EmbeddingMismatchError(
                    f"The query vector has dimension {query.shape[0]}, but the store of "
                    f"{self._where} was calibrated with {info.embedding_model!r} "
                    f"(dim {info.embedding_dim}). Embed questions with the calibration's "
                    "model, or re-run calibrate with the model in use."
                )
            collection = self._collection(self.centroids_collection_name)
            return dict(
                collection.query(
                    query_embeddings=query.astype(np.float32)[np.newaxis, :],
                    n_results=min(k, info.n_clusters),
                    include=["distances"],
                )
            )

        result = self._retrying(read)
        distances = (result["distances"] or [[]])[0]
        pairs = [
            (int(record_id), float(distance))
            for record_id, distance in zip(result["ids"][0], distances, strict=True)
        ]
        return sorted(pairs, key=lambda pair: pair[1])

    def _question_records(self, include_vectors: bool) -> list[tuple[int, str, Any, Any, Any]]:
        """Read every question record, ordered as written: ``(pos, id, doc, meta, vec)``."""
        include: Include = ["metadatas", "documents"]
        if include_vectors:
            include.append("embeddings")

        def read() -> list[tuple[int, str, Any, Any, Any]]:
            self.info()  # the empty and schema checks
            collection = self._collection(self.questions_collection_name)
            rows: list[tuple[int, str, Any, Any, Any]] = []
            batch = self._max_batch()
            offset = 0
            while True:
                page = collection.get(
                    limit=batch,
                    offset=offset,
                    include=include,
                )
                ids = page["ids"]
                empty: list[Any] = [None] * len(ids)
                metadatas: list[Any] = list(page["metadatas"] or empty)
                documents: list[Any] = list(page["documents"] or empty)
                embeddings = page["embeddings"]
                for i, record_id in enumerate(ids):
                    metadata = metadatas[i] or {}
                    vector = embeddings[i] if embeddings is not None else None
                    position = metadata.get("position")
                    if not isinstance(position, int):
                        raise StoreError(
                            f"Question {record_id!r} of {self._where} has no position; "
                            "re-run calibrate to rebuild the store."
                        )
                    rows.append((position, record_id, documents[i], metadata, vector))
                if len(ids) < batch:
                    return rows
                offset += batch

        rows = sorted(self._retrying(read), key=lambda row: row[0])
        if [row[0] for row in rows] != list(range(len(rows))):
            raise StoreError(
                f"The questions of {self._where} are incomplete; re-run calibrate to rebuild it."
            )
        return rows

    def questions(self) -> list[StoredQuestion]:
        """Return the stored validation questions, ordered as written.

        Raises:
            EmptyStoreError: Nothing was written to this pool.
        """
        questions: list[StoredQuestion] = []
        for _, record_id, document, metadata, _ in self._question_records(include_vectors=False):
            try:
                questions.append(
                    StoredQuestion(
                        id=record_id,
                        question=document if document is not None else "",
                        answer=metadata["answer"],
                        kind=metadata["kind"],
                        cluster=metadata["cluster"],
                    )
                )
            except (KeyError, InvalidInputError) as exc:
                raise StoreError(
                    f"Question {record_id!r} of {self._where} is corrupt ({exc!r}); "
                    "re-run calibrate to rebuild the store."
                ) from exc
        return questions

    def question_vectors(self) -> npt.NDArray[np.float32]:
        """Return the questions' vectors, ``(n_questions, embedding_dim)``, as written.

        Rows follow the order of :meth:`questions`. Chroma keeps vectors as float32.

        Raises:
            EmptyStoreError: Nothing was written to this pool.
        """
        info = self.info()
        rows = self._question_records(include_vectors=True)
        if not rows:
            return np.zeros((0, info.embedding_dim), dtype=np.float32)
        return np.asarray([row[4] for row in rows], dtype=np.float32)

    # ------------------------------------------------------------------ writing

    def _batches(self, n: int) -> Iterator[slice]:
        batch = self._max_batch()
        for start in range(0, n, batch):
            yield slice(start, min(start + batch, n))

    def write(
        self,
        info: StoreInfo,
        centroids: npt.NDArray[Any],
        sizes: Sequence[int],
        stats: Mapping[int, Mapping[str, ExpertStats]],
        questions: Sequence[StoredQuestion],
        question_vectors: npt.NDArray[Any],
    ) -> StoreInfo:
        """Replace this pool's calibration with a new one.

        Both collections of the pool are deleted and recreated; other pools in the
        database are untouched. Records are written in batches of the client's maximum
        batch size, and the info last.

        Args:
            info: What the calibration was built with. An empty ``name`` or
                ``created_at`` is filled in (the pool name, the current UTC time).
            centroids: ``(info.n_clusters, info.embedding_dim)`` cluster centres.
            sizes: Number of validation questions of each cluster, by cluster id.
            stats: ``{cluster: {expert: ExpertStats}}``; the experts must be listed in
                ``info.experts``; clusters may be missing (no statistics).
            questions: The validation questions with their clusters.
            question_vectors: ``(len(questions), info.embedding_dim)`` embeddings, in
                the order of ``questions``.

        Returns:
            The stored info.

        Raises:
            InvalidInputError: A shape, a cluster id, an expert name, ``info.name`` or
                ``info.schema_version`` does not fit.
        """
        stored, centroid_matrix, size_list, clean_stats, question_matrix = self._validate_write(
            info=info,
            centroids=centroids,
            sizes=sizes,
            stats=stats,
            questions=questions,
            question_vectors=question_vectors,
        )
        self._delete_collections()

        questions_collection = self._create_collection(self.questions_collection_name)
        for part in self._batches(len(questions)):
            batch = questions[part]
            questions_collection.add(
                ids=[q.id for q in batch],
                embeddings=question_matrix[part],
                documents=[q.question for q in batch],
                metadatas=[
                    {
                        "cluster": q.cluster,
                        "answer": q.answer,
                        "kind": q.kind,
                        "position": part.start + i,
                    }
                    for i, q in enumerate(batch)
                ],
            )

        centroids_collection = self._create_collection(self.centroids_collection_name)
        for part in self._batches(stored.n_clusters):
            clusters = range(stored.n_clusters)[part]
            centroids_collection.add(
                ids=[str(c) for c in clusters],
                embeddings=centroid_matrix[part],
                metadatas=[
                    self._cluster_metadata(c, size_list[c], clean_stats.get(c, {}))
                    for c in clusters
                ],
            )
        centroids_collection.modify(metadata=self._info_metadata(stored))

        self._info = stored
        self._clusters = (
            {c: dict(clean_stats.get(c, {})) for c in range(stored.n_clusters)},
            dict(enumerate(size_list)),
        )
        return stored

    @staticmethod
    def _cluster_metadata(cluster: int, size: int, stats: Mapping[str, ExpertStats]) -> Metadata:
        payload = {expert: value.to_dict() for expert, value in stats.items()}
        return {"cluster": cluster, "size": size, "stats": json.dumps(payload, sort_keys=True)}

    def _validate_write(
        self,
        *,
        info: StoreInfo,
        centroids: npt.NDArray[Any],
        sizes: Sequence[int],
        stats: Mapping[int, Mapping[str, ExpertStats]],
        questions: Sequence[StoredQuestion],
        question_vectors: npt.NDArray[Any],
    ) -> tuple[
        StoreInfo,
        npt.NDArray[np.float32],
        list[int],
        dict[int, dict[str, ExpertStats]],
        npt.NDArray[np.float32],
    ]:
        if not isinstance(info, StoreInfo):
            raise InvalidInputError(f"`info` must be a StoreInfo, got {type(info).__name__}.")
        if info.name and info.name != self.name:
            raise InvalidInputError(
                f"StoreInfo.name is {info.name!r} but this store's pool is {self.name!r}; "
                "leave it empty or open ClusterStore(..., name=...) with that pool name."
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
        for cluster, experts in self._validate_stats(stats, k).items():
            unknown = sorted(set(experts) - set(info.experts))
            if unknown:
                raise InvalidInputError(
                    f"`stats` of cluster {cluster} name experts {unknown} that are not in "
                    f"StoreInfo.experts {list(info.experts)}."
                )
            clean_stats[cluster] = experts
        question_matrix = _as_matrix(question_vectors, "`question_vectors`", nonzero=False)
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
        stored = replace(info, name=self.name, created_at=created_at)
        return stored, centroid_matrix, size_list, clean_stats, question_matrix

    @staticmethod
    def _validate_stats(
        stats: Mapping[int, Mapping[str, ExpertStats]], n_clusters: int
    ) -> dict[int, dict[str, ExpertStats]]:
        if not isinstance(stats, Mapping):
            raise InvalidInputError(
                f"`stats` must map cluster ids to {{expert: ExpertStats}}, got {type(stats)}."
            )
        clean: dict[int, dict[str, ExpertStats]] = {}
        for raw_cluster, experts in stats.items():
            cluster = _as_int(raw_cluster, "a cluster id in `stats`")
            if not 0 <= cluster < n_clusters:
                raise InvalidInputError(
                    f"`stats` has cluster {cluster}, outside 0..{n_clusters - 1}."
                )
            if not isinstance(experts, Mapping):
                raise InvalidInputError(
                    f"`stats[{cluster}]` must map expert names to ExpertStats, "
                    f"got {type(experts).__name__}."
                )
            for expert, value in experts.items():
                if not isinstance(expert, str) or not expert:
                    raise InvalidInputError(
                        f"Expert names must be non-empty strings, got {expert!r}."
                    )
                if not isinstance(value, ExpertStats):
                    raise InvalidInputError(
                        f"`stats[{cluster}][{expert!r}]` must be an ExpertStats, "
                        f"got {type(value).__name__}."
                    )
            clean.setdefault(cluster, {}).update(experts)
        return clean

    def add_expert_stats(self, stats: Mapping[int, Mapping[str, ExpertStats]]) -> StoreInfo:
        """Merge statistics of new or re-scored experts into the existing clusters.

        Clusters are not recomputed. For each given cluster and expert the statistics
        are replaced; other experts' statistics stay as they are. New experts are
        appended to ``info.experts`` in the order they first appear in ``stats``.

        Args:
            stats: ``{cluster: {expert: ExpertStats}}`` for existing clusters.

        Returns:
            The updated info.

        Raises:
            InvalidInputError: A cluster id is out of range or a value is not an
                ExpertStats.
            EmptyStoreError: Nothing was written to this pool.
        """
        self.refresh()  # merge into what is stored now, not into a stale cache
        info = self.info()
        clean = self._validate_stats(stats, info.n_clusters)
        if not clean:
            return info
        collection = self._collection(self.centroids_collection_name)
        ids = [str(cluster) for cluster in clean]
        records = collection.get(ids=ids, include=["metadatas"])
        current = {
            cluster: (size, cluster_stats)
            for cluster, size, cluster_stats in map(
                self._parse_cluster_metadata, records["metadatas"] or []
            )
        }
        missing = sorted(set(clean) - set(current))
        if missing:
            raise StoreError(
                f"The store of {self._where} lacks clusters {missing}; "
                "re-run calibrate to rebuild it."
            )
        metadatas: list[Metadata] = []
        for cluster, experts in clean.items():
            size, merged = current[cluster]
            merged.update(experts)
            metadatas.append(self._cluster_metadata(cluster, size, merged))
        collection.update(ids=ids, metadatas=metadatas)

        new_experts = list(info.experts)
        for experts in clean.values():
            new_experts.extend(e for e in experts if e not in new_experts)
        updated = replace(info, experts=tuple(new_experts))
        if updated.experts != info.experts:
            collection.modify(metadata=self._info_metadata(updated))
        self.refresh()
        self._info = updated
        return updated

    def delete(self) -> None:
        """Delete this pool's collections; other pools in the database are untouched."""
        self._delete_collections()
