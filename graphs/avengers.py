"""LangGraph Studio entry point: the Avengers graph configured by ``AVENGERS_*`` variables."""

from avengers_graph.app.config import graph_from_settings

graph = graph_from_settings()
