"""The calibration store: cluster centroids and per-cluster expert statistics in Chroma.

Calibration (``calibrate``) embeds the validation questions, clusters them and scores
every expert per cluster; :meth:`ClusterStore.write` keeps the result. Routing reads it
back on every question: :meth:`ClusterStore.nearest` finds the closest centroids and
:meth:`ClusterStore.stats` gives the experts' per-cluster statistics.

Layout (schema version :data:`SCHEMA_VERSION`), for a pool named ``name``. Several pools
share one Chroma database; each pool only ever touches its own collections.

* ``f"{name}-centroids"``: the info collection, holding no records. Its metadata is
  the :class:`StoreInfo` (``schema_version``, ``name``, ``embedding_model``,
  ``embedding_dim``, ``n_clusters``, ``created_at``, ``experts`` as a JSON list,
  ``seed``, absent when the seed is ``None``, and ``confidence`` (the
  :class:`ConfidenceMap`'s ``slope``, ``intercept`` and ``votes`` as a JSON object),
  absent when none was fitted) plus ``centroids_generation`` and
  ``questions_generation``: the generations that are live.
* ``f"{name}-centroids.{generation}"``: one record per cluster, id ``str(cluster)``,
  embedding = the centroid, metadata ``{"cluster": int, "size": int, "stats": JSON}``
  where ``stats`` is ``{expert: ExpertStats.to_dict()}``.
* ``f"{name}-questions.{generation}"``: one record per validation question, id =
  question id, embedding = the question's vector, document = the question text,
  metadata ``{"cluster": int, "answer": str, "kind": str, "position": int}``;
  ``position`` keeps the order in which the questions were written.
* ``f"{name}-writer"``: the writer lease of a server store, while a writer holds it.

A generation is ``"g"`` and 16 hex digits. A write builds a new generation beside the
live one, switches the info collection's metadata to it in one update (the commit),
then deletes the old generation: readers see the old calibration or the new one,
never a mix, and a write killed at any moment leaves a complete calibration.

Schema version 1 (avengers-graph before the generations) kept the centroid records in
``f"{name}-centroids"`` itself and the questions in ``f"{name}-questions"``. Such a
store is read as it is; the next write (``calibrate --replace``, or adding an expert)
migrates it to the current layout. An older avengers-graph refuses a schema-2 store
with a clear "upgrade" message, since it reads the same info collection.

All collections use cosine space (Chroma returns ``1 - cos`` as the distance) and have
no embedding function: vectors are always given explicitly, so Chroma never tries to
download its default embedding model.

Chroma is imported lazily (it costs about a second) and the client is created on first
use, so constructing a :class:`ClusterStore` does no I/O. Every Chroma call is bounded by
the store's ``timeout``, and a damaged database file is reported as such (Chroma itself
would silently start an empty database over a zero-byte file).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import socket
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import numpy.typing as npt

from avengers_graph.errors import (
    AvengersError,
    DamagedStoreError,
    EmbeddingMismatchError,
    EmptyStoreError,
    InvalidInputError,
    SchemaVersionError,
    StoreBusyError,
    StoreError,
    StoreTimeoutError,
)
from avengers_graph.redact import redact
from avengers_graph.stores.base import (
    SCHEMA_VERSION,
    ConfidenceMap,
    ExpertStats,
    Feedback,
    StoredQuestion,
    StoreInfo,
    _as_float,
    _as_int,
    apply_feedback,
    check_compatible,
    validate_calibration,
    validate_stats,
)

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.collection_configuration import CreateCollectionConfiguration
    from chromadb.api.models.Collection import Collection
    from chromadb.api.types import Include, Metadata

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "LEASE_TTL_S",
    "SCHEMA_VERSION",
    "ClusterStore",
    "ExpertStats",
    "StoreInfo",
    "StoredQuestion",
]


DEFAULT_TIMEOUT_S = 30.0
"""Seconds a Chroma call may take by default before it fails with StoreTimeoutError."""

LEASE_TTL_S = 60.0
"""Seconds after which a server store's writer lease that was not renewed is taken over."""

_CENTROIDS_SUFFIX = "-centroids"
_QUESTIONS_SUFFIX = "-questions"
_LEASE_SUFFIX = "-writer"
_GENERATION_HEX = 16
_GENERATION_PATTERN = re.compile(rf"g[0-9a-f]{{{_GENERATION_HEX}}}")
# Chroma's collection-name rules: 3-512 characters from [a-zA-Z0-9._-], starting and
# ending with a letter or digit, no "..", not an IPv4 address. The suffixes make the
# collection names long enough and never an address; the pool name follows the rest.
# The longest name is a generation's: name + "-centroids." + "g" + 16 hex digits.
_MAX_NAME_LENGTH = 512 - len(_CENTROIDS_SUFFIX) - 2 - _GENERATION_HEX
_NAME_PATTERN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_DEFAULT_BATCH_SIZE = 1000
_log = logging.getLogger(__name__)
_LIST_PAGE = 100
_LOCK_FILE = "avengers-writer.lock"
_SQLITE_FILE = "chroma.sqlite3"
_SQLITE_HEADER = b"SQLite format 3\x00"

_T = TypeVar("_T")


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


def _collection_configuration() -> CreateCollectionConfiguration:
    """Return the configuration of the collections: HNSW in cosine space."""
    return {"hnsw": {"space": "cosine"}}


def _location(path: str | None, host: str | None, port: int, ssl: bool) -> str:
    if path is not None:
        return f"the database at {path!r}"
    if host is not None:
        return f"the Chroma server at {'https' if ssl else 'http'}://{host}:{port}"
    return "the given Chroma client"


def _new_generation() -> str:
    return "g" + uuid.uuid4().hex[:_GENERATION_HEX]


def _collection_name(collection: Any) -> str:
    """The name of an item of ``list_collections`` (a Collection, or a name in old clients)."""
    return collection if isinstance(collection, str) else str(collection.name)


class _Worker:
    """One daemon thread running a store's Chroma calls, so that a caller can stop waiting.

    The embedded Chroma runs in-process and has no timeout of its own: a call blocks
    as long as another process holds the database's SQLite lock. Running it here lets
    the caller give up after the store's timeout; the call itself finishes (or not) in
    the background, and, the thread being a daemon, never keeps the process alive.
    """

    def __init__(self, name: str) -> None:
        self._tasks: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        threading.Thread(target=self._loop, name=name, daemon=True).start()

    def _loop(self) -> None:
        while True:
            function, future = self._tasks.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(function())
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                future.set_exception(exc)

    def run(self, function: Callable[[], _T], timeout: float) -> _T:
        """Return ``function()``, or raise :class:`_Timeout` after ``timeout`` seconds."""
        future: Future[_T] = Future()
        self._tasks.put((function, future))
        try:
            return future.result(timeout)
        except TimeoutError:
            if future.done():
                raise  # the call itself raised a TimeoutError
            future.cancel()
            raise _Timeout from None


class _Timeout(Exception):  # noqa: N818 - internal signal, turned into StoreTimeoutError
    """A bounded call did not finish in time."""


class ClusterStore:
    """Calibration store of one pool of experts in a Chroma database.

    Give exactly one of ``path`` (an embedded database on disk), ``host`` (a Chroma
    server) or ``client`` (an existing Chroma client). Nothing is opened until the
    first call that needs the database.

    ``info()``, ``stats()`` and ``sizes()`` are read once and kept in memory, since
    routing reads them for every question; writes through this instance update them,
    and :meth:`refresh` drops them after another process rewrote the pool.

    Every Chroma call is bounded by ``timeout``: the HTTP client of a server store
    sends its requests with that timeout; the calls of an embedded (or given) client
    run on a helper thread that the caller stops waiting for. Either way a call that
    does not answer in time is a :class:`~avengers_graph.errors.StoreTimeoutError`
    naming the database or the server.

    Writes (:meth:`write`, :meth:`add_expert_stats`, :meth:`delete`) take the store's
    writer lock (:meth:`write_lock`): a file lock in the folder of an embedded
    database, a lease record (the ``f"{name}-writer"`` collection) on a server. A
    second writer gets a :class:`~avengers_graph.errors.StoreBusyError` at once.

    Args:
        path: Folder of an embedded (persistent) Chroma database.
        host: Host name of a Chroma server.
        port: Port of the Chroma server.
        ssl: Connect to the server over HTTPS.
        headers: Extra HTTP headers for the server (for example an auth token); never
            shown by ``repr`` nor in error messages.
        client: An existing Chroma client (``chromadb.ClientAPI``) to use as is.
        name: Pool name; a database holds several pools side by side.
        timeout: Seconds a Chroma call may take before it fails (``None``: no bound).

    Raises:
        InvalidInputError: Not exactly one of ``path``, ``host`` and ``client`` is
            given, ``port`` or ``timeout`` is out of range, or ``name`` breaks
            Chroma's collection-name rules.
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
        timeout: float | None = DEFAULT_TIMEOUT_S,
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
        if timeout is not None:
            timeout = _as_float(timeout, "`timeout`")
            if timeout == 0:
                raise InvalidInputError("`timeout` must be > 0 seconds (or None for no bound).")
        self.name: str = _validate_name(name)
        self.timeout: float | None = timeout
        self._path: str | None = os.fspath(path) if path is not None else None
        self._host = host
        self._port = port
        self._ssl = bool(ssl)
        self._headers: dict[str, str] | None = dict(headers) if headers is not None else None
        self._client: ClientAPI | None = client
        self._bounded_requests = False  # True once our HTTP client carries the timeout
        self._lock = threading.Lock()
        self._worker_lock = threading.Lock()
        self._worker: _Worker | None = None
        self._batch_size: int | None = None
        self._collections: dict[str, Collection] = {}
        self._info: StoreInfo | None = None
        self._live: tuple[str, str] | None = None
        self._clusters: tuple[dict[int, dict[str, ExpertStats]], dict[int, int]] | None = None
        self._writer = threading.RLock()
        self._write_depth = 0
        self._file_lock: Any = None
        self._lease: _Lease | None = None

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

    # ------------------------------------------------------------------ names

    @property
    def centroids_collection_name(self) -> str:
        """Name of the collection holding this pool's info and live-generation pointer.

        In a schema-1 store it also holds the centroids; from schema 2 on they live in
        the generation collections named by :meth:`collection_names`.
        """
        return self.name + _CENTROIDS_SUFFIX

    @property
    def questions_collection_name(self) -> str:
        """Name of the questions collection of a schema-1 store (see :meth:`collection_names`)."""
        return self.name + _QUESTIONS_SUFFIX

    @property
    def _lease_name(self) -> str:
        return self.name + _LEASE_SUFFIX

    def _generation_name(self, kind: str, generation: str) -> str:
        suffix = _CENTROIDS_SUFFIX if kind == "centroids" else _QUESTIONS_SUFFIX
        return f"{self.name}{suffix}.{generation}"

    def _is_generation_collection(self, collection_name: str) -> bool:
        prefix, dot, generation = collection_name.rpartition(".")
        return (
            bool(dot)
            and _GENERATION_PATTERN.fullmatch(generation) is not None
            and prefix in (self.centroids_collection_name, self.questions_collection_name)
        )

    def collection_names(self) -> dict[str, str]:
        """Return the Chroma collections of the live calibration.

        Returns:
            ``{"info": ..., "centroids": ..., "questions": ...}``.

        Raises:
            EmptyStoreError: Nothing was written to this pool.
        """
        self.info()
        if self._live is None:  # pragma: no cover - info() sets it
            raise self._empty_error()
        centroids, questions = self._live
        return {
            "info": self.centroids_collection_name,
            "centroids": centroids,
            "questions": questions,
        }

    @property
    def _where(self) -> str:
        return f"pool {self.name!r} in {_location(self._path, self._host, self._port, self._ssl)}"

    @property
    def _secrets(self) -> list[str]:
        return list((self._headers or {}).values())

    # ------------------------------------------------------------------ connection

    def _get_client(self) -> ClientAPI:
        """Return the Chroma client, creating it on first use.

        Raises:
            StoreError: The Chroma server cannot be reached, or the database is damaged.
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
            self._check_database_file()
            path = self._path
            return self._call(
                "open the database", lambda: chromadb.PersistentClient(path=path, settings=settings)
            )
        if self._host is None:  # pragma: no cover - __init__ guarantees one of them
            raise InvalidInputError("ClusterStore has neither a path nor a host.")
        host, port, ssl, headers = self._host, self._port, self._ssl, self._headers
        try:
            # Creating the client already asks the server for its identity and database,
            # so it runs bounded like the embedded calls; then its own requests carry
            # the timeout.
            client = self._call(
                "connect",
                lambda: chromadb.HttpClient(
                    host=host, port=port, ssl=ssl, headers=headers, settings=settings
                ),
            )
        except ValueError as exc:
            raise StoreError(
                f"Cannot reach {_location(None, host, port, ssl)} "
                f"({redact(str(exc), self._secrets)}). Start it with "
                "`chroma run --path <folder> --port <port>` or fix host/port."
            ) from exc
        self._bounded_requests = self._set_request_timeout(client)
        return client

    def _set_request_timeout(self, client: Any) -> bool:
        """Give the HTTP client's requests the store's timeout; ``False`` if not possible.

        Chroma's ``HttpClient`` sends its requests through an ``httpx.Client`` created
        with no timeout and offers no setting for it.
        """
        import httpx

        session = getattr(getattr(client, "_server", None), "_session", None)
        if self.timeout is None or not isinstance(session, httpx.Client):
            return False
        session.timeout = httpx.Timeout(self.timeout)
        return True

    def _check_database_file(self) -> None:
        """Refuse a damaged embedded database before Chroma opens it.

        Chroma silently turns an empty ``chroma.sqlite3`` into a new, empty database,
        so a truncated store would read as "not calibrated yet".

        Raises:
            DamagedStoreError: The database file is empty or not an SQLite database.
        """
        if self._path is None:  # pragma: no cover - only called for embedded stores
            return
        database = Path(self._path) / _SQLITE_FILE
        try:
            size = database.stat().st_size
            with database.open("rb") as file:
                header = file.read(len(_SQLITE_HEADER))
        except FileNotFoundError:
            return  # a new store
        except OSError as exc:
            raise StoreError(f"Cannot read the Chroma database {database}: {exc}.") from exc
        if size == 0:
            raise self._damaged(database, "it is empty (0 bytes)")
        if header != _SQLITE_HEADER:
            raise self._damaged(database, "it is not an SQLite database")

    def _damaged(self, database: Path | str, what: str) -> DamagedStoreError:
        folder = Path(self._path) if self._path is not None else Path(database).parent
        return DamagedStoreError(
            f"The Chroma database {database} of pool {self.name!r} is damaged: {what}. "
            f"Restore the folder {folder} from a backup, or move it aside "
            f"(mv '{folder}' '{folder}.damaged') and run `avengers calibrate` to rebuild it."
        )

    def _call(self, what: str, function: Callable[[], _T]) -> _T:
        """Run one Chroma call, bounded by the timeout, with Chroma's errors made ours.

        Chroma's ``NotFoundError`` passes through (callers turn it into an empty store
        or a retry); every other Chroma or transport failure becomes a
        :class:`StoreError` naming the store, with any secret redacted.
        """
        import httpx
        from chromadb.errors import ChromaError, NotFoundError

        try:
            if self.timeout is None or self._bounded_requests:
                return function()
            with self._worker_lock:
                if self._worker is None:
                    self._worker = _Worker(f"avengers-store-{self.name}")
                worker = self._worker
            return worker.run(function, self.timeout)
        except (_Timeout, httpx.TimeoutException) as exc:
            hint = (
                "is the server stopped or overloaded?"
                if self._host is not None
                else "another process may be holding the database's lock"
            )
            raise StoreTimeoutError(
                f"Could not {what}: {self._where} did not answer within {self.timeout:g} s "
                f"({hint}). Check it, or raise ClusterStore(timeout=...)."
            ) from exc
        except httpx.TransportError as exc:
            raise StoreError(
                f"Could not {what}: cannot reach {self._where} ({redact(str(exc), self._secrets)})."
            ) from exc
        except NotFoundError:
            raise
        except ChromaError as exc:
            text = redact(str(exc), self._secrets)
            if any(sign in text.lower() for sign in ("not a database", "malformed", "corrupt")):
                database = Path(self._path) / _SQLITE_FILE if self._path else self._where
                raise self._damaged(database, text) from exc
            raise StoreError(f"Could not {what} in {self._where}: {text}") from exc

    def _max_batch(self) -> int:
        if self._batch_size is None:
            client = self._get_client()
            getter: Callable[[], int] | None = getattr(client, "get_max_batch_size", None)
            size = self._call("read the batch size", getter) if getter is not None else None
            self._batch_size = max(1, int(size or _DEFAULT_BATCH_SIZE))
        return self._batch_size

    def _get_collection(self, collection_name: str) -> Collection:
        """Return a collection's handle, fetched anew (raises Chroma's NotFoundError)."""
        client = self._get_client()
        return self._call(
            f"open the collection {collection_name!r}",
            lambda: client.get_collection(collection_name, embedding_function=None),
        )

    def _data(self, kind: str) -> Collection:
        """Return the live ``centroids`` or ``questions`` collection (cached handle).

        Raises:
            EmptyStoreError: Nothing was written to this pool.
            chromadb.errors.NotFoundError: The collection is gone (another writer
                replaced the calibration): :meth:`_retrying` refreshes and reads again.
        """
        if self._live is None:
            self._info = None  # read the info and its live generation together
        self.info()
        if self._live is None:  # pragma: no cover - info() sets it
            raise self._empty_error()
        collection_name = self._live[0] if kind == "centroids" else self._live[1]
        cached = self._collections.get(collection_name)
        if cached is None:
            cached = self._get_collection(collection_name)
            self._collections[collection_name] = cached
        return cached

    def _create_collection(self, collection_name: str, **kwargs: Any) -> Collection:
        client = self._get_client()
        return self._call(
            f"create the collection {collection_name!r}",
            lambda: client.create_collection(
                collection_name,
                configuration=_collection_configuration(),
                embedding_function=None,
                **kwargs,
            ),
        )

    def _delete_collection(self, collection_name: str) -> None:
        from chromadb.errors import NotFoundError

        client = self._get_client()
        self._collections.pop(collection_name, None)
        with contextlib.suppress(NotFoundError):
            self._call(
                f"delete the collection {collection_name!r}",
                lambda: client.delete_collection(collection_name),
            )

    def _list_collection_names(self) -> list[str]:
        client = self._get_client()
        names: list[str] = []
        offset = 0
        while True:
            page = self._call(
                "list the collections",
                lambda: client.list_collections(limit=_LIST_PAGE, offset=offset),  # noqa: B023
            )
            names.extend(_collection_name(collection) for collection in page)
            if len(page) < _LIST_PAGE:
                return names
            offset += _LIST_PAGE

    def _retrying(self, read: Callable[[], _T]) -> _T:
        """Run ``read``; if a collection went missing, refresh and retry once.

        A collection goes missing when another writer replaced the calibration (the
        old generation is deleted once the new one is live).

        Raises:
            StoreError: The live calibration's collection is still missing.
        """
        from chromadb.errors import NotFoundError

        try:
            return read()
        except NotFoundError:
            self.refresh()
        try:
            return read()
        except NotFoundError as exc:
            raise StoreError(
                f"The store of {self._where} is incomplete: a collection of its live "
                "calibration is missing. Re-run calibrate with --replace to rebuild it."
            ) from exc

    def _empty_error(self) -> EmptyStoreError:
        return EmptyStoreError(
            f"The Chroma store holds no calibration for {self._where}; "
            "run calibrate first to build it (or check the pool name and location)."
        )

    # ------------------------------------------------------------------ writer lock

    @contextlib.contextmanager
    def write_lock(self) -> Iterator[None]:
        """Hold this store's writer lock for the block; re-entrant in the same thread.

        An embedded store is locked by a file lock in its folder (the whole database:
        its pools are written one at a time; the operating system releases the lock
        of a process that dies); a server store by a lease record, the
        ``f"{name}-writer"`` collection, renewed while held and taken over once it is
        :data:`LEASE_TTL_S` seconds old by the server's clock (its holder died).
        :func:`~avengers_graph.calibrate` holds it for the whole run.

        Raises:
            StoreBusyError: Another writer holds it; the message names the store.
        """
        if not self._writer.acquire(blocking=False):
            raise StoreBusyError(
                f"Another thread of this process is writing to {self._where}; one writer at a time."
            )
        try:
            if self._write_depth == 0:
                self._take_writer_lock()
            self._write_depth += 1
            try:
                yield
            finally:
                self._write_depth -= 1
                if self._write_depth == 0:
                    self._release_writer_lock()
        finally:
            self._writer.release()

    def _take_writer_lock(self) -> None:
        if self._path is None:
            self._lease = _Lease(self)
            self._lease.take()
            return
        from filelock import FileLock, Timeout

        folder = Path(self._path)
        lock_path = folder / _LOCK_FILE
        try:
            folder.mkdir(parents=True, exist_ok=True)
            lock = FileLock(lock_path, timeout=0, thread_local=False)
            lock.acquire()
        except Timeout:
            raise StoreBusyError(
                f"Another process is writing to {self._where} (it holds {lock_path}): "
                "one writer at a time. Wait for it to finish and run again; the lock of a "
                "process that died is released by the system."
            ) from None
        except OSError as exc:
            raise StoreError(f"Cannot take the writer lock {lock_path}: {exc}.") from exc
        self._file_lock = lock

    def _release_writer_lock(self) -> None:
        if self._file_lock is not None:
            self._file_lock.release()
            self._file_lock = None
        if self._lease is not None:
            lease, self._lease = self._lease, None
            lease.release()

    # ------------------------------------------------------------------ reading

    def refresh(self) -> None:
        """Drop the in-process cache (info, statistics, sizes, collection handles)."""
        self._info = None
        self._live = None
        self._clusters = None
        self._collections = {}

    def _read_pointer(self) -> dict[str, Any] | None:
        """Return the info collection's metadata, ``None`` if nothing was written.

        A collection handle carries the metadata of the moment it was fetched, so the
        handle is always fetched anew here.
        """
        from chromadb.errors import NotFoundError

        try:
            collection = self._get_collection(self.centroids_collection_name)
        except NotFoundError:
            return None
        metadata = dict(collection.metadata or {})
        return metadata if "schema_version" in metadata else None

    def _live_names(self, metadata: Mapping[str, Any], version: int) -> tuple[str, str]:
        """The live centroids and questions collections named by the info metadata."""
        if version == 1:
            return self.centroids_collection_name, self.questions_collection_name
        names = []
        for kind in ("centroids", "questions"):
            generation = metadata.get(f"{kind}_generation")
            if not isinstance(generation, str) or not _GENERATION_PATTERN.fullmatch(generation):
                raise StoreError(
                    f"The store metadata of {self._where} names no valid {kind} generation "
                    f"({generation!r}); re-run calibrate with --replace to rebuild it."
                )
            names.append(self._generation_name(kind, generation))
        return names[0], names[1]

    def is_empty(self) -> bool:
        """Return whether this pool holds no (complete) calibration.

        Raises:
            DamagedStoreError: The database is damaged (it is not reported as empty).
            StoreTimeoutError: The database did not answer in time.
        """
        if self._info is not None:
            return False
        return self._read_pointer() is None

    def info(self) -> StoreInfo:
        """Return what the stored calibration was built with.

        Raises:
            EmptyStoreError: Nothing was written to this pool.
            SchemaVersionError: The store was written by a newer avengers-graph.
            DamagedStoreError: The database is damaged.
            StoreTimeoutError: The database did not answer in time.
            StoreError: The stored metadata is corrupt.
        """
        if self._info is None:
            metadata = self._read_pointer()
            if metadata is None:
                raise self._empty_error()
            info = self._parse_info(metadata)
            self._live = self._live_names(metadata, info.schema_version)
            self._info = info
        return self._info

    def _parse_info(self, metadata: Mapping[str, Any]) -> StoreInfo:
        version = metadata["schema_version"]
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise StoreError(
                f"The store of {self._where} has an invalid schema_version {version!r}; "
                "re-run calibrate with --replace to rebuild it."
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
                confidence=(
                    ConfidenceMap(**json.loads(metadata["confidence"]))
                    if "confidence" in metadata
                    else None
                ),
            )
        except (KeyError, TypeError, ValueError, InvalidInputError) as exc:
            raise StoreError(
                f"The store metadata of {self._where} is corrupt ({exc!r}); "
                "re-run calibrate with --replace to rebuild it."
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
        if info.confidence is not None:
            metadata["confidence"] = json.dumps(asdict(info.confidence))
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
        return check_compatible(self.info(), embedding_model, embedding_dim, self._where)

    def _cluster_records(self) -> tuple[dict[int, dict[str, ExpertStats]], dict[int, int]]:
        if self._clusters is None:

            def read() -> tuple[StoreInfo, dict[str, Any]]:
                info = self.info()
                collection = self._data("centroids")
                return info, dict(
                    self._call("read the centroids", lambda: collection.get(include=["metadatas"]))
                )

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
                    f"but holds {sorted(stats)}; re-run calibrate with --replace to rebuild it."
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
                "re-run calibrate with --replace to rebuild it."
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
            collection = self._data("centroids")
            return info, dict(
                self._call("read the centroids", lambda: collection.get(include=["embeddings"]))
            )

        info, records = self._retrying(read)
        ids = [int(record_id) for record_id in records["ids"]]
        if sorted(ids) != list(range(info.n_clusters)):
            raise StoreError(
                f"The store of {self._where} should hold clusters 0..{info.n_clusters - 1} "
                f"but holds {sorted(ids)}; re-run calibrate with --replace to rebuild it."
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
            collection = self._data("centroids")
            return dict(
                self._call(
                    "query the centroids",
                    lambda: collection.query(
                        query_embeddings=query.astype(np.float32)[np.newaxis, :],
                        n_results=min(k, info.n_clusters),
                        include=["distances"],
                    ),
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
            collection = self._data("questions")
            rows: list[tuple[int, str, Any, Any, Any]] = []
            batch = self._max_batch()
            offset = 0
            while True:
                page = self._call(
                    "read the questions",
                    lambda start=offset: collection.get(  # type: ignore[misc]
                        limit=batch, offset=start, include=include
                    ),
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
                            "re-run calibrate with --replace to rebuild the store."
                        )
                    rows.append((position, record_id, documents[i], metadata, vector))
                if len(ids) < batch:
                    return rows
                offset += batch

        rows = sorted(self._retrying(read), key=lambda row: row[0])
        if [row[0] for row in rows] != list(range(len(rows))):
            raise StoreError(
                f"The questions of {self._where} are incomplete; re-run calibrate with --replace "
                "to rebuild it."
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
                    "re-run calibrate with --replace to rebuild the store."
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
        """Replace this pool's calibration with a new one, atomically.

        The new calibration is written beside the live one, into collections of a new
        generation, in batches of the client's maximum batch size; then the info
        collection is switched to it in one step (a single metadata update, written
        last); then the old generation is deleted. A write interrupted at any moment
        (an error, a kill) leaves the previous calibration serving, or the new one
        once the switch is done, never a mix or nothing; the next write deletes what
        an interrupted one left. Other pools in the database are untouched.

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
            StoreBusyError: Another writer holds the store.
        """
        stored, centroid_matrix, size_list, clean_stats, question_matrix = self._validate_write(
            info=info,
            centroids=centroids,
            sizes=sizes,
            stats=stats,
            questions=questions,
            question_vectors=question_vectors,
        )
        with self.write_lock():
            self._sweep()  # what an interrupted write left
            generation = _new_generation()
            self._add_questions(
                self._generation_name("questions", generation),
                [q.id for q in questions],
                [q.question for q in questions],
                [
                    {"cluster": q.cluster, "answer": q.answer, "kind": q.kind, "position": i}
                    for i, q in enumerate(questions)
                ],
                question_matrix,
            )
            self._add_centroids(
                self._generation_name("centroids", generation),
                centroid_matrix,
                [
                    self._cluster_metadata(c, size_list[c], clean_stats.get(c, {}))
                    for c in range(stored.n_clusters)
                ],
            )
            self._switch(stored, centroids=generation, questions=generation)
            self._sweep()
        self._info = stored
        self._clusters = (
            {c: dict(clean_stats.get(c, {})) for c in range(stored.n_clusters)},
            dict(enumerate(size_list)),
        )
        return stored

    def _add_questions(
        self,
        collection_name: str,
        ids: Sequence[str],
        documents: Sequence[str | None],
        metadatas: Sequence[Metadata],
        vectors: npt.NDArray[np.float32],
    ) -> None:
        collection = self._create_collection(collection_name)
        id_list, metadata_list = list(ids), list(metadatas)
        document_list = [d if d is not None else "" for d in documents]
        for part in self._batches(len(id_list)):

            def add(part: slice = part) -> None:
                collection.add(
                    ids=id_list[part],
                    embeddings=vectors[part],
                    documents=document_list[part],
                    metadatas=metadata_list[part],
                )

            self._call("write the questions", add)

    def _add_centroids(
        self,
        collection_name: str,
        matrix: npt.NDArray[np.float32],
        metadatas: Sequence[Metadata],
    ) -> None:
        collection = self._create_collection(collection_name)
        metadata_list = list(metadatas)
        for part in self._batches(len(metadata_list)):

            def add(part: slice = part) -> None:
                collection.add(
                    ids=[str(c) for c in range(len(metadata_list))[part]],
                    embeddings=matrix[part],
                    metadatas=metadata_list[part],
                )

            self._call("write the centroids", add)

    def _switch(self, info: StoreInfo, *, centroids: str, questions: str) -> None:
        """Make the given generations live: one update of the info collection's metadata."""
        from chromadb.errors import NotFoundError

        if self._lease is not None:
            self._lease.check()
        previous = self._read_pointer()
        if previous is not None and previous.get("schema_version") == 1:
            _log.info(
                "Migrating %s from schema version 1 to %d (generation collections).",
                self._where,
                SCHEMA_VERSION,
            )
        metadata = {
            **self._info_metadata(info),
            "centroids_generation": centroids,
            "questions_generation": questions,
        }
        try:
            pointer = self._get_collection(self.centroids_collection_name)
        except NotFoundError:
            self._create_collection(self.centroids_collection_name, metadata=metadata)
        else:
            self._call("switch to the new calibration", lambda: pointer.modify(metadata=metadata))
        self.refresh()
        self._info = info
        self._live = (
            self._generation_name("centroids", centroids),
            self._generation_name("questions", questions),
        )

    def _sweep(self) -> None:
        """Delete this pool's collections that the live calibration does not use.

        Those are generations left by an interrupted write or replaced by a finished
        one, and, once a schema-1 store was rewritten, its old questions collection and
        the centroid records of its info collection. Only called under the writer lock.
        """
        metadata = self._read_pointer()
        live: set[str] = set()
        version = 0
        if metadata is not None:
            try:
                info = self._parse_info(metadata)
                version = info.schema_version
                live = set(self._live_names(metadata, version))
            except SchemaVersionError:
                raise  # written by a newer avengers-graph: leave it alone
            except StoreError:
                metadata = None  # corrupt: nothing in it is live; a replace rebuilds it
        names = self._list_collection_names()
        for collection_name in names:
            if self._is_generation_collection(collection_name) and collection_name not in live:
                self._delete_collection(collection_name)
        if (version >= 2 or metadata is None) and self.questions_collection_name in names:
            self._delete_collection(self.questions_collection_name)
        if version >= 2:
            pointer = self._get_collection(self.centroids_collection_name)
            ids = self._call("read the old centroid ids", lambda: pointer.get(include=[])["ids"])
            if ids:
                self._call("delete the old centroids", lambda: pointer.delete(ids=ids))

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
        calibration = validate_calibration(
            info, centroids, sizes, stats, questions, question_vectors, pool=self.name
        )
        return (
            calibration.info,
            calibration.centroids,
            list(calibration.sizes),
            {c: dict(e) for c, e in calibration.stats.items()},
            calibration.question_vectors,
        )

    def add_expert_stats(
        self,
        stats: Mapping[int, Mapping[str, ExpertStats]],
        confidence: ConfidenceMap | None = None,
    ) -> StoreInfo:
        """Merge statistics of new or re-scored experts into the existing clusters.

        Clusters are not recomputed. For each given cluster and expert the statistics
        are replaced; other experts' statistics stay as they are. New experts are
        appended to ``info.experts`` in the order they first appear in ``stats``.
        Like :meth:`write`, the merged centroids are written as a new generation and
        switched in at once (a schema-1 store is migrated: its questions are copied).

        Args:
            stats: ``{cluster: {expert: ExpertStats}}`` for existing clusters.
            confidence: A confidence map refitted with them: it replaces the stored
                one (None keeps it).

        Returns:
            The updated info.

        Raises:
            InvalidInputError: A cluster id is out of range or a value is not an
                ExpertStats.
            EmptyStoreError: Nothing was written to this pool.
            StoreBusyError: Another writer holds the store.
        """
        with self.write_lock():
            self.refresh()  # merge into what is stored now, not into a stale cache
            info = self.info()
            clean = validate_stats(stats, info.n_clusters)
            if not clean:
                return info
            current, questions_name = self._current_clusters(info)
            for cluster, experts in clean.items():
                current[cluster][1].update(experts)
            new_experts = list(info.experts)
            for experts in clean.values():
                new_experts.extend(e for e in experts if e not in new_experts)
            updated = replace(
                info,
                experts=tuple(new_experts),
                schema_version=SCHEMA_VERSION,
                confidence=confidence or info.confidence,
            )
            self._rewrite_clusters(info, updated, current, questions_name)
        self._info = updated
        return updated

    def add_feedback(
        self, feedback: Mapping[int, Mapping[str, Feedback]]
    ) -> dict[int, dict[str, ExpertStats]]:
        """Count users' verdicts into the per-cluster statistics, atomically.

        Read, update and write happen under the writer lock, on what is stored now (not
        on this object's cache), so concurrent feedback is never lost; the updated
        centroid records are written as a new generation and switched in at once, as
        :meth:`add_expert_stats` does. Only experts with statistics in a cluster are
        updated there (:func:`~avengers_graph.stores.base.apply_feedback`).

        Args:
            feedback: ``{cluster: {expert: Feedback}}``.

        Returns:
            The updated entries, ``{cluster: {expert: ExpertStats}}`` (empty: nothing
            written).

        Raises:
            InvalidInputError: A cluster id out of range or a value that is not a Feedback.
            EmptyStoreError: Nothing was written to this pool.
            StoreBusyError: Another writer holds the store.
        """
        with self.write_lock():
            self.refresh()
            info = self.info()
            for cluster in feedback:
                if not 0 <= _as_int(cluster, "a cluster id in the feedback") < info.n_clusters:
                    raise InvalidInputError(
                        f"Feedback names cluster {cluster}, outside 0..{info.n_clusters - 1}."
                    )
            current, questions_name = self._current_clusters(info)
            updated = apply_feedback({c: stats for c, (_, stats, _) in current.items()}, feedback)
            if not updated:
                return {}
            for cluster, experts in updated.items():
                current[cluster][1].update(experts)
            stored = replace(info, schema_version=SCHEMA_VERSION)
            self._rewrite_clusters(info, stored, current, questions_name)
        self._info = stored
        return updated

    def _current_clusters(
        self, info: StoreInfo
    ) -> tuple[dict[int, tuple[int, dict[str, ExpertStats], Any]], str]:
        """The stored centroid records and the live questions collection's name.

        Records are ``{cluster: (size, statistics, vector)}``, read under the writer lock.
        """

        def read() -> tuple[dict[str, Any], tuple[str, str]]:
            collection = self._data("centroids")
            live = self._live or ("", "")
            records = self._call(
                "read the centroids",
                lambda: collection.get(include=["metadatas", "embeddings"]),
            )
            return dict(records), live

        records, (_, questions_name) = self._retrying(read)
        current: dict[int, tuple[int, dict[str, ExpertStats], Any]] = {}
        for metadata, vector in zip(records["metadatas"] or [], records["embeddings"], strict=True):
            cluster, size, cluster_stats = self._parse_cluster_metadata(metadata)
            current[cluster] = (size, cluster_stats, vector)
        if sorted(current) != list(range(info.n_clusters)):
            raise StoreError(
                f"The store of {self._where} should hold clusters 0..{info.n_clusters - 1} "
                f"but holds {sorted(current)}; re-run calibrate with --replace to rebuild it."
            )
        return current, questions_name

    def _rewrite_clusters(
        self,
        info: StoreInfo,
        updated: StoreInfo,
        current: Mapping[int, tuple[int, Mapping[str, ExpertStats], Any]],
        questions_name: str,
    ) -> None:
        """Write the centroid records as a new generation and switch to it (under the lock).

        A schema-1 store is migrated on the way: its questions move to a generation too.
        """
        self._sweep()
        generation = _new_generation()
        questions_generation = questions_name.rpartition(".")[2]
        if info.schema_version < 2:  # migrate: the questions move to a generation too
            questions_generation = generation
            rows = self._question_records(include_vectors=True)
            self._add_questions(
                self._generation_name("questions", generation),
                [row[1] for row in rows],
                [row[2] for row in rows],
                [row[3] for row in rows],
                np.asarray([row[4] for row in rows], dtype=np.float32).reshape(
                    len(rows), info.embedding_dim
                ),
            )
        self._add_centroids(
            self._generation_name("centroids", generation),
            np.asarray([current[c][2] for c in range(info.n_clusters)], dtype=np.float32),
            [
                self._cluster_metadata(c, current[c][0], current[c][1])
                for c in range(info.n_clusters)
            ],
        )
        self._switch(updated, centroids=generation, questions=questions_generation)
        self._sweep()

    def delete(self) -> None:
        """Delete this pool's collections; other pools in the database are untouched.

        The info collection goes first, so a pool caught half-deleted reads as empty.

        Raises:
            StoreBusyError: Another writer holds the store.
        """
        with self.write_lock():
            self._delete_collection(self.centroids_collection_name)
            self._sweep()
            self.refresh()


class _Lease:
    """The writer lease of a server store: a collection whose creation is the claim.

    Creating a collection that exists fails on the server, so two writers cannot both
    create ``f"{name}-writer"``. The holder renews it every ``LEASE_TTL_S / 4``
    seconds; a lease not renewed for :data:`LEASE_TTL_S` seconds (by the server's
    clock) belongs to a writer that died and is taken over. Before switching a new
    calibration in, the holder checks the lease is still its own.
    """

    def __init__(self, store: ClusterStore) -> None:
        self._store = store
        self._owner = uuid.uuid4().hex
        self._collection_id: Any = None
        self._stop = threading.Event()

    def _now(self) -> float:
        client = self._store._get_client()
        return int(self._store._call("read the server clock", client.heartbeat)) / 1e9

    def _busy(self, metadata: Mapping[str, Any]) -> StoreBusyError:
        holder = f"pid {metadata.get('pid')} on {metadata.get('host')!r}"
        return StoreBusyError(
            f"Another writer ({holder}) is writing to {self._store._where}: one writer at "
            f"a time. Wait for it to finish and run again; a lease its holder stopped "
            f"renewing is taken over after {LEASE_TTL_S:g} s."
        )

    def take(self) -> None:
        """Create the lease, or take over a stale one.

        Raises:
            StoreBusyError: A live writer holds it.
        """
        from chromadb.errors import NotFoundError

        store = self._store
        name = store._lease_name
        for _ in range(2):
            now = self._now()
            metadata = {
                "owner": self._owner,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "taken_at": now,
                "renewed_at": now,
            }
            try:
                collection = store._create_collection(name, metadata=metadata)
            except StoreError:
                try:
                    existing = store._get_collection(name)
                except NotFoundError:
                    continue  # released in between: try again
                held = dict(existing.metadata or {})
                if held.get("owner") == self._owner:  # created, though the answer was lost
                    collection = existing
                    break
                renewed = held.get("renewed_at")
                if isinstance(renewed, (int, float)) and now - renewed < LEASE_TTL_S:
                    raise self._busy(held) from None
                store._delete_collection(name)  # its holder stopped renewing it
                continue
            break
        else:
            raise StoreBusyError(
                f"Could not take the writer lease of {store._where}: another writer took it "
                "at the same moment. Run again once it is done."
            )
        self._collection_id = collection.id
        threading.Thread(
            target=self._renew, args=(collection,), name=f"{name}-lease", daemon=True
        ).start()

    def _renew(self, collection: Collection) -> None:
        while not self._stop.wait(LEASE_TTL_S / 4):
            with contextlib.suppress(AvengersError):
                metadata: dict[str, Any] = {
                    **(collection.metadata or {}),
                    "renewed_at": self._now(),
                }

                def renew(metadata: dict[str, Any] = metadata) -> None:
                    collection.modify(metadata=metadata)

                self._store._call("renew the writer lease", renew)

    def check(self) -> None:
        """Raise :class:`StoreBusyError` unless the lease is still this writer's."""
        from chromadb.errors import NotFoundError

        try:
            current = self._store._get_collection(self._store._lease_name)
        except NotFoundError:
            current = None
        if current is None or current.id != self._collection_id:
            raise StoreBusyError(
                f"This writer lost the writer lease of {self._store._where} (it was not "
                f"renewed for {LEASE_TTL_S:g} s and another writer took it over); the "
                "calibration it wrote was not switched in. Run again."
            )

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still this writer's."""
        self._stop.set()
        with contextlib.suppress(AvengersError):
            self.check()
            self._store._delete_collection(self._store._lease_name)
