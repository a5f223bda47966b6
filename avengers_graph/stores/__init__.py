"""Where a calibration lives.

The records and the protocol (:mod:`.base`), Chroma embedded or as a server
(:mod:`.chroma`), numpy in memory (:mod:`.memory`).

May import :mod:`avengers_graph.errors` and :mod:`avengers_graph.redact`; never ``graph``,
``eval``, ``local`` or ``app``.
"""

from avengers_graph.stores.base import (
    SCHEMA_VERSION,
    Calibration,
    CalibrationStore,
    ConfidenceMap,
    ExpertStats,
    Feedback,
    FeedbackStore,
    StoredQuestion,
    StoreInfo,
)
from avengers_graph.stores.chroma import ClusterStore
from avengers_graph.stores.memory import MemoryStore

__all__ = [
    "SCHEMA_VERSION",
    "Calibration",
    "CalibrationStore",
    "ClusterStore",
    "ConfidenceMap",
    "ExpertStats",
    "Feedback",
    "FeedbackStore",
    "MemoryStore",
    "StoreInfo",
    "StoredQuestion",
]
