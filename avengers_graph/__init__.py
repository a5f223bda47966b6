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

The names are imported on first use: ``import avengers_graph`` is cheap, and
``from avengers_graph import ChatAvengers`` imports only what ``ChatAvengers`` needs.
"""

from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from avengers_graph.app.embedded import init_avengers, pool_experts
    from avengers_graph.calibration import CalibrationReport, calibrate
    from avengers_graph.chat_models import ChatAvengers
    from avengers_graph.embeddings import LocalEmbeddings
    from avengers_graph.experts.cache import AnswerCache
    from avengers_graph.experts.contract import Expert
    from avengers_graph.graph import build_avengers_graph, create_avengers_graph
    from avengers_graph.graph.state import RoutingRecord
    from avengers_graph.options import AvengersContext, AvengersOptions
    from avengers_graph.stores import (
        Calibration,
        CalibrationStore,
        ClusterStore,
        ConfidenceMap,
        ExpertStats,
        MemoryStore,
        StoreInfo,
    )

_LAZY = {
    "init_avengers": "avengers_graph.app.embedded",
    "pool_experts": "avengers_graph.app.embedded",
    "CalibrationReport": "avengers_graph.calibration",
    "calibrate": "avengers_graph.calibration",
    "ChatAvengers": "avengers_graph.chat_models",
    "LocalEmbeddings": "avengers_graph.embeddings",
    "AnswerCache": "avengers_graph.experts.cache",
    "Expert": "avengers_graph.experts.contract",
    "build_avengers_graph": "avengers_graph.graph",
    "create_avengers_graph": "avengers_graph.graph",
    "RoutingRecord": "avengers_graph.graph.state",
    "AvengersContext": "avengers_graph.options",
    "AvengersOptions": "avengers_graph.options",
    "Calibration": "avengers_graph.stores",
    "CalibrationStore": "avengers_graph.stores",
    "ClusterStore": "avengers_graph.stores",
    "ConfidenceMap": "avengers_graph.stores",
    "ExpertStats": "avengers_graph.stores",
    "MemoryStore": "avengers_graph.stores",
    "StoreInfo": "avengers_graph.stores",
}
"""Public name to the module defining it: imported on first use (PEP 562), so that
``import avengers_graph`` and the ``avengers`` command start without LangGraph, torch or
Chroma (``avengers --help`` in a fraction of a second)."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


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
    "ConfidenceMap",
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
    "init_avengers",
    "pool_experts",
]
