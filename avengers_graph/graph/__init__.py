"""LangGraph wiring only: the state, the node functions and the builder.

- :mod:`.state`: the state, the ``Send`` payload and the routing record (TypedDicts);
- :mod:`.nodes`: the node functions, thin over :mod:`avengers_graph.routing`,
  :mod:`avengers_graph.voting`, :mod:`avengers_graph.formats` and
  :mod:`avengers_graph.experts`;
- :mod:`.builder`: :func:`build_avengers_graph` and :func:`create_avengers_graph`.

May import the pure core, ``experts``, ``stores`` and ``embeddings``; never ``eval``,
``local`` or ``app``.
"""

from avengers_graph.graph.builder import build_avengers_graph, create_avengers_graph
from avengers_graph.graph.nodes import check_expert_costs, is_transient_error, validate_experts
from avengers_graph.options import AvengersContext

__all__ = [
    "AvengersContext",
    "build_avengers_graph",
    "check_expert_costs",
    "create_avengers_graph",
    "is_transient_error",
    "validate_experts",
]
