"""Running the app: uvicorn on one address, logs redacted, a graceful shutdown.

:func:`serve` refuses a non-loopback address without a key
(:func:`~avengers_graph.app.serve.settings.check_binding`), then runs uvicorn until
SIGINT or SIGTERM. On either signal the server stops accepting connections and
waits up to the request timeout for the requests in flight to finish (streams
included) before it returns; SIGTERM then ends the process with status 0 through
``SystemExit``, so the caller's cleanup (the local servers it holds) runs.
:func:`load_factory` imports a ``module:function`` that builds the chat model to serve.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import Any

from avengers_graph.app.serve.app import create_app
from avengers_graph.app.serve.settings import ServeSettings, check_binding
from avengers_graph.chat_models import ChatAvengers
from avengers_graph.errors import InvalidInputError
from avengers_graph.experts.contract import Expert
from avengers_graph.redact import RedactingFilter, environment_secrets, secrets_of

__all__ = ["load_factory", "pool_chat_model", "serve"]

_LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "avengers_graph")


def _redact_logs(secrets: Sequence[str]) -> None:
    """Redact every record the server's loggers emit (keys, bearer tokens)."""
    log = logging.getLogger("avengers_graph")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    for name in _LOGGERS:
        for attached in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactingFilter) for f in attached.filters):
                attached.addFilter(RedactingFilter(secrets))


@contextmanager
def _sigterm_exits() -> Iterator[None]:
    """Make SIGTERM (re-raised by uvicorn after its graceful shutdown) a ``SystemExit(0)``."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def leave(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        raise SystemExit(0)

    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def serve(
    chat_model: ChatAvengers,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: ServeSettings | None = None,
    log_level: str = "info",
) -> None:
    """Serve ``chat_model`` over OpenAI's API until SIGINT or SIGTERM.

    Raises:
        InvalidInputError: ``host`` is not loopback and no API key is configured.
    """
    settings = settings if settings is not None else ServeSettings.from_env()
    check_binding(host, settings)
    import uvicorn

    app = create_app(chat_model, settings)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        server_header=False,
        timeout_graceful_shutdown=math.ceil(settings.timeout),
    )
    models = [e.model if isinstance(e, Expert) else e for e in chat_model.experts.values()]
    _redact_logs([*settings.secrets(), *environment_secrets(), *secrets_of(models)])
    server = uvicorn.Server(config)
    with _sigterm_exits():
        server.run()


@contextmanager
def pool_chat_model(config: str | os.PathLike[str] | None) -> Iterator[ChatAvengers]:
    """The chat model of a pool file, ready to serve, for as long as the block runs.

    A pool with local models is the embedded default
    (:func:`~avengers_graph.app.embedded.local_avengers`): its models fetched, their
    ``llama-server`` processes held for the block, the store calibrated on the bundled
    set when empty. A pool of remote experts must be calibrated already.

    Raises:
        InvalidInputError: A remote pool whose store holds no calibration.
    """
    from avengers_graph.app.embedded import chat_model, load, local_avengers

    settings, pool = load(config)
    if pool.local_models():
        with local_avengers(config) as llm:
            yield llm
        return
    if pool.build_store(settings).is_empty():
        raise InvalidInputError(
            "The pool's store holds no calibration: run `avengers calibrate` with the same "
            "--config first."
        )
    yield chat_model(settings, pool)


def load_factory(spec: str) -> Callable[[], Any]:
    """The function a ``module:function`` spec names (it builds the chat model to serve).

    Raises:
        InvalidInputError: Not ``module:function``, or it cannot be imported.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise InvalidInputError(f"--factory takes module:function, got {spec!r}.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidInputError(f"Cannot import {module_name!r} for --factory: {exc}.") from exc
    factory: Callable[[], Any] | None = getattr(module, attribute, None)
    if not callable(factory):
        raise InvalidInputError(f"{spec!r} does not name a function.")
    return factory
