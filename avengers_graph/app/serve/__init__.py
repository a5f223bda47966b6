"""``avengers serve``: the ensemble behind an OpenAI-compatible API (the ``server`` extra).

- :mod:`.settings`: API keys and limits (:class:`ServeSettings`), the bind check;
- :mod:`.protocol`: OpenAI's chat-completions requests and responses;
- :mod:`.metrics`: the Prometheus metrics;
- :mod:`.app`: the FastAPI app (:func:`create_app`), its routes and its guard;
- :mod:`.run`: uvicorn, logs redacted, graceful shutdown (:func:`serve`).

Needs ``pip install 'avengers-graph[server]'`` (FastAPI, uvicorn, prometheus-client).
"""

from avengers_graph.errors import MissingExtraError

try:
    import fastapi  # noqa: F401 - checked here so every module of the package says so
    import prometheus_client  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover - the test environment has the extra
    raise MissingExtraError(
        f"avengers serve needs the server extra ({exc.name} is missing): "
        "pip install 'avengers-graph[server]'"
    ) from exc

from avengers_graph.app.serve.app import create_app
from avengers_graph.app.serve.run import load_factory, pool_chat_model, serve
from avengers_graph.app.serve.settings import ServeSettings, check_binding

__all__ = [
    "ServeSettings",
    "check_binding",
    "create_app",
    "load_factory",
    "pool_chat_model",
    "serve",
]
