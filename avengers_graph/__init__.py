"""avengers-graph: an ensemble of small models that answers better than any one of them.

The Avengers method (arXiv 2505.19797) as a LangGraph state machine and a drop-in
LangChain chat model.
"""

from avengers_graph.cache import AnswerCache
from avengers_graph.calibration import CalibrationReport, calibrate
from avengers_graph.chat_models import ChatAvengers
from avengers_graph.embeddings import LocalEmbeddings
from avengers_graph.errors import (
    AllExpertsFailedError,
    AvengersError,
    CacheError,
    CalibrationError,
    DamagedStoreError,
    EmbeddingMismatchError,
    EmptyStoreError,
    ExpertTimeoutError,
    InvalidInputError,
    MissingExtraError,
    SchemaVersionError,
    StoreBusyError,
    StoreError,
    StoreTimeoutError,
)
from avengers_graph.graph import build_avengers_graph, create_avengers_graph
from avengers_graph.options import AvengersContext, AvengersOptions
from avengers_graph.state import RoutingRecord
from avengers_graph.store import ClusterStore, ExpertStats, StoreInfo

__all__ = [
    "AllExpertsFailedError",
    "AnswerCache",
    "AvengersContext",
    "AvengersError",
    "AvengersOptions",
    "CacheError",
    "CalibrationError",
    "CalibrationReport",
    "ChatAvengers",
    "ClusterStore",
    "DamagedStoreError",
    "EmbeddingMismatchError",
    "EmptyStoreError",
    "ExpertStats",
    "ExpertTimeoutError",
    "InvalidInputError",
    "LocalEmbeddings",
    "MissingExtraError",
    "RoutingRecord",
    "SchemaVersionError",
    "StoreBusyError",
    "StoreError",
    "StoreInfo",
    "StoreTimeoutError",
    "build_avengers_graph",
    "calibrate",
    "create_avengers_graph",
]
