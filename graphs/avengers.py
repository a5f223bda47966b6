"""LangGraph Studio entry point: ``langgraph dev`` serves the Avengers graph, no setup needed.

The pool is ``AVENGERS_CONFIG``, else the bundled local pool (``avengers local up``
serves its models; ``avengers calibrate`` builds its store in the user's cache folder).
When one of those is missing, the server still starts and logs one line saying what to
run (see :func:`avengers_graph.app.config.studio_graph`).
"""

from avengers_graph.app.config import studio_graph

graph = studio_graph()
