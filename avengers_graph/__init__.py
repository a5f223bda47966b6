"""avengers-graph: an ensemble of small models that answers better than any one of them.

The Avengers method (arXiv 2505.19797) as a LangGraph state machine and a drop-in
LangChain chat model. This module only re-exports the public API (pinned by
``tests/unit/test_imports.py``). The package's layers, each importing only the ones
below it (checked by ``lint-imports`` in ``make lint``):

- ``app`` (settings, pool files, CLI, Studio) and ``eval`` / ``local`` (the harness,
  the llama.cpp default);
- ``chat_models`` (the facade), ``calibration`` (orchestration);
- ``graph`` (LangGraph wiring: state, nodes, builder);
- ``experts`` (strategies and the prompt contract, calls, cache, clients), ``stores``
  (Chroma, numpy), ``embeddings``, ``sandbox``;
- the pure core: ``routing``, ``voting``, ``formats``, ``options``, ``redact``,
  ``errors``.
"""

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
from avengers_graph.experts.cache import AnswerCache
from avengers_graph.experts.contract import Expert
from avengers_graph.graph import build_avengers_graph, create_avengers_graph
from avengers_graph.graph.state import RoutingRecord
from avengers_graph.options import AvengersContext, AvengersOptions
from avengers_graph.stores import (
    Calibration,
    CalibrationStore,
    ClusterStore,
    ExpertStats,
    MemoryStore,
    StoreInfo,
)

__all__ = [
    "AllExpertsFailedError",
    "AnswerCache",
    "AvengersContext",
    "AvengersError",
    "AvengersOptions",
    "CacheError",
    "Calibration",
    "CalibrationError",
    "CalibrationReport",
    "CalibrationStore",
    "ChatAvengers",
    "ClusterStore",
    "DamagedStoreError",
    "EmbeddingMismatchError",
    "EmptyStoreError",
    "Expert",
    "ExpertStats",
    "ExpertTimeoutError",
    "InvalidInputError",
    "LocalEmbeddings",
    "MemoryStore",
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
