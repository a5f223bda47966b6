"""On-disk cache of expert answers (SQLite), so calibration never repeats a call.

A record is keyed by the expert's name and model identity, the exact prompt
messages and the sampling parameters (temperature, seed, max tokens...). Each
answer is written as soon as it arrives (WAL journal, one transaction per answer),
so a run killed half-way loses at most the calls that were in flight. The stored
message is LangChain's JSON form of the ``AIMessage``: reviewable, never pickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, messages_from_dict, messages_to_dict

from avengers_graph.errors import InvalidInputError

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


class AnswerCache:
    """SQLite cache of expert answers, safe to share between threads.

    Args:
        path: Database file; its folder is created if needed.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(SCHEMA)

    def __repr__(self) -> str:
        return f"AnswerCache(path={str(self.path)!r})"

    def get(self, key: str) -> CachedAnswer | None:
        """The cached answer for ``key``, or ``None``."""
        with self._lock:
            row = self._conn.execute(
                "SELECT message, seconds FROM answers WHERE key = ?", (key,)
            ).fetchone()
        if row is None:
            return None
        (message,) = messages_from_dict([json.loads(row[0])])
        if not isinstance(message, AIMessage):  # pragma: no cover - only AIMessages are written
            return None
        return CachedAnswer(message=message, seconds=float(row[1]))

    def put(self, key: str, expert: str, params: Mapping[str, Any], answer: CachedAnswer) -> None:
        """Store one answer (replacing any previous one for ``key``)."""
        (message,) = messages_to_dict([answer.message])
        with self._lock:
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
        self, path: str | os.PathLike[str], experts: Iterable[str] | None = None
    ) -> int:
        """Write the cached answers (of some experts) as JSON lines; returns the count.

        The file is reviewable and can seed another cache with :meth:`import_jsonl`, so a
        calibration elsewhere replays these answers instead of calling the experts.
        """
        wanted = set(experts) if experts is not None else None
        with self._lock:
            rows = self._conn.execute(
                "SELECT key, expert, params, message, seconds FROM answers ORDER BY expert, key"
            ).fetchall()
        count = 0
        with Path(path).open("w", encoding="utf-8") as out:
            for key, expert, params, message, seconds in rows:
                if wanted is not None and expert not in wanted:
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
        with self._lock:
            (count,) = self._conn.execute("SELECT COUNT(*) FROM answers").fetchone()
        return int(count)

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._conn.close()
