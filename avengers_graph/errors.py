"""Typed errors raised by avengers-graph.

Every error says what went wrong and what to do about it. They all derive from
:class:`AvengersError`, so callers can catch the package's failures in one place.
"""

from __future__ import annotations

from collections.abc import Mapping


class AvengersError(Exception):
    """Base class of every error raised by avengers-graph."""


class InvalidInputError(AvengersError, ValueError):
    """The input messages or dataset cannot be used (empty, malformed, wrong type)."""


class MissingExtraError(AvengersError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class StoreError(AvengersError):
    """Base class of errors about the Chroma cluster store."""


class EmptyStoreError(StoreError):
    """The store holds no calibration yet: run ``calibrate`` first."""


class EmbeddingMismatchError(StoreError):
    """The store was built with another embedding model or dimension than the one in use."""


class SchemaVersionError(StoreError):
    """The store was written by a newer avengers-graph with an unknown schema."""


class StoreBusyError(StoreError):
    """Another writer (a calibration, another process) holds the store: one writer at a time."""


class StoreTimeoutError(StoreError, TimeoutError):
    """A call to the Chroma store did not answer within the store's ``timeout``."""


class DamagedStoreError(StoreError):
    """The store's database is damaged (empty or not a database file); the message names it."""


class CacheError(AvengersError):
    """The answer cache cannot be read or written (a damaged file, a full disk)."""


class CalibrationError(AvengersError):
    """Calibration could not finish; finished expert calls are cached, so a re-run resumes."""


class AllExpertsFailedError(AvengersError):
    """Every selected expert failed; ``failures`` maps each expert to its error."""

    def __init__(self, failures: Mapping[str, str]) -> None:
        self.failures = dict(failures)
        detail = "; ".join(f"{name}: {error}" for name, error in self.failures.items())
        super().__init__(
            f"All {len(self.failures)} selected experts failed ({detail}). "
            "Check that their servers are reachable, or raise `timeout` / `max_retries`."
        )


class ExpertTimeoutError(AvengersError, TimeoutError):
    """An expert did not answer within the configured ``timeout``."""


class UnknownRunError(InvalidInputError, LookupError):
    """Feedback names a run this chat model does not remember (another process's, or too old)."""


class FeedbackConflictError(InvalidInputError):
    """Feedback on a run contradicts the feedback already recorded for it."""
