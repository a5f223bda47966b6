"""One expert call: one retry layer and one timeout mechanism.

The graph's ``sample`` node calls an expert through :func:`invoke` (sync) or
:func:`ainvoke` (async); both give up after the run's ``timeout``.

**Retries.** The graph's LangGraph ``RetryPolicy`` on the ``sample`` node is the one
retry layer: it retries a call that raised a transient error
(:func:`~avengers_graph.graph.nodes.is_transient_error`: connection errors, 408, 429, 5xx)
until the run's ``max_retries`` is spent, so a failing sample makes exactly
``max_retries + 1`` requests. A client that also retries on its own would multiply
that (``ChatOpenAI``'s SDK default of 2 retries times 3 graph attempts made 9 requests
per sample), so the graph calls :func:`retry_free` twins of its experts, made once
when the graph is built. The policy's ``max_attempts`` is only a ceiling (11 by
default, ``MAX_RETRIES + 1``): the ``sample`` node re-raises a transient error for
another attempt only while the run's ``max_retries`` allows, which makes
``max_retries`` a per-run option like the others (``ChatAvengers.max_retries`` set
after construction applies to the next call, with no graph rebuilt).

- langchain-openai's ``BaseChatOpenAI`` (``ChatOpenAI``, ``AzureChatOpenAI``, the
  pool file's ``ChatOpenAICompatible``): a ``model_copy()`` whose
  ``root_client``/``root_async_client`` are ``.with_options(max_retries=0)`` of the
  originals (sharing their HTTP connection pools) and whose ``client``/``async_client``
  are their ``.chat.completions``. The user's own object keeps its retries.
- Any other chat model is called as it is. Most have no retries of their own
  (``ChatOllama``, scripted fakes); one that has (``ChatAnthropic``'s ``max_retries``,
  a ``with_retry()`` wrapper inside a custom model) multiplies the graph's attempts:
  build it with its retries off, or set the graph's ``max_retries=0`` to leave
  retrying to the client.

The twins are made in the graph rather than by building the pool file's clients with
``max_retries=0``: that covers every path that builds an expert (pool file,
``LocalPool``, a user's own ``ChatOpenAI(...)``), and calibration, which calls the
pool's experts directly and has no retry layer of its own, keeps the client's retries.
LangGraph logs every retry with the error's text and traceback (INFO), and an upstream
server's error body may quote the request's key: the graph redacts an error in place
(:func:`redact_exception`) before raising it for another attempt.

**Timeouts.** No process-wide thread pool: one call's stuck work can never delay or
fail another call.

- Async (:func:`ainvoke`): the call is a task, cancelled when ``timeout`` passes (or,
  with ``early_stop``, when the vote is decided); cancelling ends its HTTP request.
- Sync (:func:`invoke`) with a client that takes a per-request timeout
  (:func:`request_timeout`; langchain-openai forwards a ``timeout=`` call option to
  the openai SDK's ``create(timeout=...)``): the call runs on the caller's thread with
  that timeout, so the HTTP request itself ends and no thread is left behind. The
  SDK's timeout bounds each phase of the request (connecting, and each wait for
  bytes), which for a non-streamed answer is the whole wait.
- Sync otherwise, for every ``early_stop`` wait, and for a client that may queue a
  call before its request starts (:func:`_queues`: ``ChatOpenAICompatible``'s slot
  limit, whose wait the request's own timeout does not count) when the run has a
  deadline: the call runs on its own daemon thread, which ends when the call ends;
  the caller waits at most ``timeout`` for it (a client that takes a per-request
  timeout gets it too, so its thread ends by then, or that long after its slot came).
  A client that takes no timeout and never answers keeps that one thread until it
  does (Python cannot stop a thread); it holds no shared resource, so other calls are
  not affected.

**The run's deadline.** The graph passes the run's deadline (``run_timeout``, a
:func:`time.monotonic` instant) with every call: the call waits
``min(timeout, deadline - now)`` (:func:`call_budget`), a call that starts past it is
not made, and the :class:`ExpertTimeoutError` says that the run's deadline, not the
expert's ``timeout``, ended it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import Runnable, RunnableConfig

from avengers_graph.errors import ExpertTimeoutError
from avengers_graph.redact import redact


class Interrupted(enum.Enum):
    """Returned instead of an answer when the wait ended early (``early_stop``)."""

    INTERRUPTED = "interrupted"


INTERRUPTED = Interrupted.INTERRUPTED


def _openai_chat_base() -> type[BaseChatModel] | None:
    """langchain-openai's ``BaseChatOpenAI`` if it was imported (else no expert is one)."""
    module = sys.modules.get("langchain_openai.chat_models.base")
    base = getattr(module, "BaseChatOpenAI", None)
    return base if isinstance(base, type) else None


def _is_openai(expert: BaseChatModel) -> bool:
    base = _openai_chat_base()
    return base is not None and isinstance(expert, base)


def retry_free(expert: BaseChatModel) -> BaseChatModel:
    """The expert, or a twin of it that does not retry on its own (see the module doc).

    Args:
        expert: A chat model of the pool.

    Returns:
        For langchain-openai models whose SDK clients retry, a copy whose clients make
        one request per call; any other expert unchanged.
    """
    if not _is_openai(expert):
        return expert
    roots = {
        "root_client": getattr(expert, "root_client", None),
        "root_async_client": getattr(expert, "root_async_client", None),
    }
    if all(getattr(root, "max_retries", 0) == 0 for root in roots.values()):
        return expert
    twin = expert.model_copy(update={"max_retries": 0})
    for name, root in roots.items():
        if root is None:
            continue
        quiet = root.with_options(max_retries=0)
        setattr(twin, name, quiet)
        setattr(twin, "client" if name == "root_client" else "async_client", quiet.chat.completions)
    return twin


def request_timeout(expert: BaseChatModel, timeout: float) -> float | None:
    """The per-request timeout to send with a call to ``expert``, if it takes one.

    langchain-openai models take a ``timeout=`` call option; the expert's own
    ``timeout`` (``request_timeout``) wins when it is a shorter number.

    Returns:
        Seconds, or None when the client takes no per-request timeout.
    """
    if not _is_openai(expert):
        return None
    own = getattr(expert, "request_timeout", None)
    if isinstance(own, int | float) and 0 < own < timeout:
        return float(own)
    return timeout


def _queues(client: BaseChatModel) -> bool:
    """Whether the client may hold a call back before sending it (a slot limit)."""
    return getattr(client, "limiter", None) is not None


def _is_request_timeout(exc: BaseException) -> bool:
    openai = sys.modules.get("openai")
    timeout_error = getattr(openai, "APITimeoutError", None)
    return isinstance(timeout_error, type) and isinstance(exc, timeout_error)


def _expired(seconds: float, *, by_deadline: bool = False) -> ExpertTimeoutError:
    if by_deadline:
        return ExpertTimeoutError(f"no answer before the run's deadline (waited {seconds:.3g} s)")
    return ExpertTimeoutError(f"no answer within {seconds:g} s")


def redact_exception(exc: BaseException, secrets: Iterable[str]) -> None:
    """Redact the text of ``exc`` and of every exception it chains, in place.

    The type stays (a retry policy matches on it); the string arguments that make up
    the message (``str(exc)``) go through :func:`~avengers_graph.redact.redact`.
    """
    secrets = list(secrets)
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.args = tuple(
            redact(arg, secrets) if isinstance(arg, str) else arg for arg in current.args
        )
        message = getattr(current, "message", None)
        if isinstance(message, str):
            with contextlib.suppress(AttributeError):  # a read-only property keeps it
                current.message = redact(message, secrets)  # type: ignore[attr-defined]
        current = current.__cause__ or current.__context__


def call_budget(timeout: float, deadline: float | None) -> tuple[float, bool]:
    """Seconds a call may take now, and whether the run's deadline is what limits it.

    Args:
        timeout: The per-call timeout.
        deadline: The run's deadline, a :func:`time.monotonic` instant (None: none).

    Returns:
        ``(min(timeout, deadline - now), deadline came first)``; the seconds are
        negative or zero when the deadline has passed.
    """
    if deadline is None:
        return timeout, False
    left = deadline - time.monotonic()
    return (left, True) if left < timeout else (timeout, False)


def _past_deadline() -> ExpertTimeoutError:
    return ExpertTimeoutError("not called: the run's deadline had passed")


def invoke(
    expert: Runnable[Any, Any],
    messages: Any,
    config: RunnableConfig,
    kwargs: Mapping[str, Any],
    *,
    client: BaseChatModel,
    timeout: float,
    wake: threading.Event | None = None,
    deadline: float | None = None,
) -> Any:
    """Call ``expert`` synchronously, for at most ``timeout`` seconds (or until ``deadline``).

    Args:
        expert: The runnable to call (the expert, or it with tools bound).
        messages: Its input.
        config: The runnable config of the call (callbacks, tags).
        kwargs: Call options (temperature, seed...).
        client: The chat model under ``expert``: decides whether the deadline can be
            sent with the request (:func:`request_timeout`).
        timeout: Seconds to wait.
        wake: Set by someone else to stop waiting early (``early_stop``): the call is
            then abandoned and :data:`INTERRUPTED` returned.
        deadline: The run's deadline (:func:`time.monotonic`): the call waits at most
            until then, and is not made once it has passed.

    Returns:
        The expert's answer, or :data:`INTERRUPTED`.

    Raises:
        ExpertTimeoutError: No answer within ``timeout`` or before ``deadline``.
    """
    budget, by_deadline = call_budget(timeout, deadline)
    if budget <= 0:
        raise _past_deadline()
    per_request = request_timeout(client, budget)
    options = dict(kwargs) if per_request is None else {**kwargs, "timeout": per_request}

    def call() -> Any:
        try:
            return expert.invoke(messages, config, **options)
        except Exception as exc:
            if per_request is not None and _is_request_timeout(exc):
                raise _expired(per_request, by_deadline=by_deadline) from exc
            raise

    if per_request is not None and wake is None and not (deadline is not None and _queues(client)):
        return call()  # the HTTP request ends by itself at the deadline
    return _on_own_thread(call, budget, wake or threading.Event(), by_deadline=by_deadline)


def _on_own_thread(
    call: Callable[[], Any], timeout: float, wake: threading.Event, *, by_deadline: bool = False
) -> Any:
    """Run ``call`` on a thread of its own; wait until it ends, ``wake`` or ``timeout``."""
    outcome: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            outcome.append((False, exc))
        finally:
            wake.set()

    context = contextvars.copy_context()  # the run's callbacks, stream writer, runtime
    threading.Thread(target=context.run, args=(run,), name="avengers-expert", daemon=True).start()
    wake.wait(timeout)
    if outcome:
        ok, value = outcome[0]
        if ok:
            return value
        raise value
    if wake.is_set():
        return INTERRUPTED
    raise _expired(timeout, by_deadline=by_deadline)


async def ainvoke(
    expert: Runnable[Any, Any],
    messages: Any,
    config: RunnableConfig,
    kwargs: Mapping[str, Any],
    *,
    timeout: float,
    wake: asyncio.Future[None] | None = None,
    deadline: float | None = None,
) -> Any:
    """Call ``expert`` asynchronously; cancel it after ``timeout`` seconds or on ``wake``.

    ``deadline`` (the run's, :func:`time.monotonic`) cancels it earlier when it comes
    first; past it, the call is not made.

    Returns:
        The expert's answer, or :data:`INTERRUPTED` when ``wake`` was resolved first.

    Raises:
        ExpertTimeoutError: No answer within ``timeout`` or before ``deadline``.
    """
    timeout, by_deadline = call_budget(timeout, deadline)
    if timeout <= 0:
        raise _past_deadline()
    call = asyncio.ensure_future(expert.ainvoke(messages, config, **kwargs))
    waiters: set[asyncio.Future[Any]] = {call} if wake is None else {call, wake}
    try:
        done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters - {call}:
            waiter.cancel()
        if not call.done():  # woken, timed out, or this task was cancelled
            call.cancel()
    if call in done:
        return call.result()
    if wake is not None and wake in done:
        return INTERRUPTED
    raise _expired(timeout, by_deadline=by_deadline)
