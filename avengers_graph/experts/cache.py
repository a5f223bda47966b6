"""On-disk cache of expert answers (SQLite), so calibration never repeats a call.

A record is keyed by the expert's name and model identity, the exact prompt
messages and the sampling parameters (temperature, seed, max tokens...). Each
answer is written as soon as it arrives (WAL journal, one transaction per answer),
so a run killed half-way loses at most the calls that were in flight. The stored
message is LangChain's JSON form of the ``AIMessage``: reviewable, never pickled.

Every SQLite failure is a :class:`~avengers_graph.errors.CacheError` naming the file:
a damaged file (not a database, a malformed page) says to move it aside, a failed
write (a full disk, a read-only folder) says that the answers already saved are kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, messages_from_dict, messages_to_dict

from avengers_graph.errors import CacheError, InvalidInputError


def cache_root(env: Mapping[str, str] | None = None) -> Path:
    """The user's cache folder for avengers-graph.

    ``AVENGERS_CACHE_DIR``, else ``$XDG_CACHE_HOME/avengers-graph``, else
    ``~/.cache/avengers-graph``.
    """
    env = os.environ if env is None else env
    if env.get("AVENGERS_CACHE_DIR"):
        return Path(env["AVENGERS_CACHE_DIR"])
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "avengers-graph"


def user_cache_root(env: Mapping[str, str] | None = None) -> Path:
    """The user-wide cache folder, whatever ``AVENGERS_CACHE_DIR`` says.

    Where a project's or a test's own cache folder (``AVENGERS_CACHE_DIR``) looks for
    what the user already has (the llama.cpp build, verified model weights) before
    building or joining its own copy.
    """
    env = os.environ if env is None else env
    return cache_root({key: value for key, value in env.items() if key != "AVENGERS_CACHE_DIR"})


def default_cache_path(env: Mapping[str, str] | None = None) -> Path:
    """Where calibration caches expert answers unless told otherwise."""
    return cache_root(env) / "answers.sqlite"


SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    expert TEXT NOT NULL,
    params TEXT NOT NULL,
    message TEXT NOT NULL,
    seconds REAL NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
)
"""


@dataclass(frozen=True)
class CachedAnswer:
    """An expert answer as stored in the cache."""

    message: AIMessage
    seconds: float


def cache_key(
    expert: str, model: str, messages: Sequence[BaseMessage], params: Mapping[str, Any]
) -> str:
    """Stable sha256 key of one expert call.

    Args:
        expert: Expert name in the pool.
        model: The expert's model identity (e.g. its ``ls_model_name``).
        messages: The exact prompt.
        params: Sampling parameters that change the answer.
    """
    payload = {
        "expert": expert,
        "model": model,
        "messages": messages_to_dict(list(messages)),
        "params": dict(params),
    }
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _damaged(path: Path, exc: BaseException) -> CacheError:
    return CacheError(
        f"The answer cache {path} is damaged ({exc}). Move it aside "
        f"(mv '{path}' '{path}.damaged') and run again: the answers it held are asked "
        "again (or import a recorded copy with `AnswerCache.import_jsonl`)."
    )


def _is_damage(exc: sqlite3.Error) -> bool:
    """Whether an SQLite error means a damaged file rather than a failed operation."""
    text = str(exc).lower()
    return isinstance(exc, sqlite3.DatabaseError) and (
        "not a database" in text or "malformed" in text or "corrupt" in text
    )


class AnswerCache:
    """SQLite cache of expert answers, safe to share between threads.

    Args:
        path: Database file; its folder is created if needed.

    Raises:
        CacheError: The file is damaged (not an SQLite database) or cannot be opened.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(
                f"Cannot create the folder of the answer cache {self.path}: {exc}."
            ) from exc
        with self._errors("open"):
            self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(SCHEMA)

    def __repr__(self) -> str:
        return f"AnswerCache(path={str(self.path)!r})"

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Turn SQLite failures into a :class:`CacheError` naming the file."""
        try:
            yield
        except sqlite3.Error as exc:
            if _is_damage(exc):
                raise _damaged(self.path, exc) from exc
            if action == "write":
                raise CacheError(
                    f"Could not save an answer to the answer cache {self.path}: {exc} (is the "
                    "disk full or the folder read-only?). The answers saved before are kept; "
                    "free some space and run the same command again to resume."
                ) from exc
            raise CacheError(f"Cannot {action} the answer cache {self.path}: {exc}.") from exc

    def get(self, key: str) -> CachedAnswer | None:
        """The cached answer for ``key``, or ``None``.

        Raises:
            CacheError: The file is damaged or cannot be read.
        """
        with self._lock, self._errors("read"):
            row = self._conn.execute(
                "SELECT message, seconds FROM answers WHERE key = ?", (key,)
            ).fetchone()
        if row is None:
            return None
        try:
            (message,) = messages_from_dict([json.loads(row[0])])
            seconds = float(row[1])
        except (ValueError, KeyError, TypeError) as exc:
            raise _damaged(self.path, exc) from exc
        if not isinstance(message, AIMessage):  # pragma: no cover - only AIMessages are written
            return None
        return CachedAnswer(message=message, seconds=seconds)

    def put(self, key: str, expert: str, params: Mapping[str, Any], answer: CachedAnswer) -> None:
        """Store one answer (replacing any previous one for ``key``).

        Raises:
            CacheError: The answer could not be written (a full disk, a read-only
                folder, a damaged file); the answers stored before are kept.
        """
        (message,) = messages_to_dict([answer.message])
        with self._lock, self._errors("write"):
            self._conn.execute(
                "INSERT OR REPLACE INTO answers (key, expert, params, message, seconds) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    key,
                    expert,
                    json.dumps(dict(params), sort_keys=True, default=str),
                    json.dumps(message, ensure_ascii=False),
                    answer.seconds,
                ),
            )

    def export_jsonl(
        self,
        path: str | os.PathLike[str],
        experts: Iterable[str] | None = None,
        keys: Iterable[str] | None = None,
    ) -> int:
        """Write the cached answers as JSON lines; returns the count.

        The file is reviewable and can seed another cache with :meth:`import_jsonl`, so a
        calibration elsewhere replays these answers instead of calling the experts.

        Args:
            path: The file to write.
            experts: Only these experts' answers (default: every expert's).
            keys: Only the answers under these keys (for example those a run used).
        """
        wanted = set(experts) if experts is not None else None
        chosen = set(keys) if keys is not None else None
        with self._lock, self._errors("read"):
            rows = self._conn.execute(
                "SELECT key, expert, params, message, seconds FROM answers ORDER BY expert, key"
            ).fetchall()
        count = 0
        with Path(path).open("w", encoding="utf-8") as out:
            for key, expert, params, message, seconds in rows:
                if (wanted is not None and expert not in wanted) or (
                    chosen is not None and key not in chosen
                ):
                    continue
                record = {
                    "key": key,
                    "expert": expert,
                    "params": json.loads(params),
                    "message": json.loads(message),
                    "seconds": seconds,
                }
                out.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
                count += 1
        return count

    def import_jsonl(self, path: str | os.PathLike[str]) -> int:
        """Add the answers of a file written by :meth:`export_jsonl`; returns how many were new.

        Answers already in the cache are kept as they are.

        Raises:
            InvalidInputError: A line is not a valid record; the message names the line.
        """
        added = 0
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                key, expert, params = record["key"], record["expert"], record["params"]
                (message,) = messages_from_dict([record["message"]])
                seconds = float(record["seconds"])
            except (ValueError, KeyError, TypeError) as exc:
                raise InvalidInputError(f"{path}:{number} is not a cached answer: {exc}") from exc
            if not isinstance(message, AIMessage):
                raise InvalidInputError(f"{path}:{number} holds a {message.type} message.")
            if self.get(key) is None:
                self.put(key, expert, params, CachedAnswer(message=message, seconds=seconds))
                added += 1
        return added

    def __len__(self) -> int:
        with self._lock, self._errors("read"):
            (count,) = self._conn.execute("SELECT COUNT(*) FROM answers").fetchone()
        return int(count)

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._conn.close()
