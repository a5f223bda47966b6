"""The FastAPI app: the ensemble behind OpenAI's chat-completions API.

:func:`create_app` serves one :class:`~avengers_graph.chat_models.ChatAvengers`. A
request to ``POST /v1/chat/completions`` goes:

1. :class:`_Gate` (outermost, pure ASGI): every route but ``/health`` needs
   ``Authorization: Bearer <key>`` when keys are configured (compared in constant time
   with :func:`hmac.compare_digest`, never logged); it also counts and times every
   request for ``/metrics``.
2. :meth:`_Server.chat`: a slot among ``max_concurrency`` (else 429 with
   ``Retry-After``), the body read up to ``max_body_bytes`` (else 413), parsed and
   mapped (:mod:`.protocol`: messages within ``max_messages``/``max_chars``, options
   validated as :class:`~avengers_graph.options.AvengersOptions`), then the model
   chosen: the ensemble by its name, or one expert by its name (``GET /v1/models``
   lists both).
3. :meth:`_Server._pumped` runs the answer in a task of its own: the ensemble through
   ``ChatAvengers.astream``, whose progress events (routing, each sample, the vote)
   arrive through :func:`~avengers_graph.chat_models.progress_to` and feed
   ``/metrics``; a
   single expert through its own ``astream``, token by token. The request's deadline
   (``timeout``) bounds every wait; past it the answer is a 504.
4. The answer: one ``chat.completion`` whose ``usage`` sums every expert call and whose
   ``avengers`` field holds the routing record; or, with ``stream``, server-sent events:
   the role chunk at once, each progress event as an SSE comment line (``: {...}``,
   which SDKs skip), the answer as soon as the vote is decided, a final chunk with
   ``finish_reason`` and the routing record, the usage chunk when
   ``stream_options.include_usage`` asks for it, then ``data: [DONE]``. An error after
   the stream started is sent as ``data: {"error": ...}``, as OpenAI does.

``POST /v1/feedback`` (``{"id": "chatcmpl-...", "correct": false}``) calls
:meth:`~avengers_graph.chat_models.ChatAvengers.record_feedback`. Errors have OpenAI's
shape (``{"error": {"message", "type", "param", "code"}}``), with secrets redacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.runnables import Runnable
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from avengers_graph.app.serve import protocol
from avengers_graph.app.serve.metrics import Metrics
from avengers_graph.app.serve.settings import ServeSettings
from avengers_graph.chat_models import FEEDBACK_RUNS, ChatAvengers, progress_to
from avengers_graph.errors import (
    AllExpertsFailedError,
    AvengersError,
    EmptyStoreError,
    ExpertTimeoutError,
    FeedbackConflictError,
    InvalidInputError,
    StoreBusyError,
    StoreError,
    UnknownRunError,
)
from avengers_graph.experts.contract import Expert
from avengers_graph.redact import environment_secrets, redact, secrets_of

__all__ = ["create_app"]

_log = logging.getLogger("avengers_graph.serve")

OPEN_PATHS = frozenset({"/health"})
"""Routes that answer without a key."""

Event = tuple[str, Any]
"""``("progress", event)`` or ``("chunk", AIMessageChunk)``."""


class ApiError(Exception):
    """An error answered in OpenAI's shape with an HTTP status."""

    def __init__(
        self, status: int, message: str, code: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        """The error as a JSON response."""
        return JSONResponse(
            protocol.error_body(self.status, self.message, self.code),
            status_code=self.status,
            headers=self.headers,
        )


def api_error(exc: BaseException, secrets: Sequence[str]) -> ApiError:
    """The HTTP error an exception of a request stands for (its message redacted)."""
    if isinstance(exc, ApiError):
        return exc
    text = redact(str(exc), secrets)
    mapped: tuple[int, str] | None = None
    if isinstance(exc, UnknownRunError):
        mapped = (404, "unknown_run")
    elif isinstance(exc, FeedbackConflictError):
        mapped = (409, "feedback_conflict")
    elif isinstance(exc, AllExpertsFailedError):
        mapped = (502, "all_experts_failed")
    elif isinstance(exc, EmptyStoreError):
        mapped = (503, "not_calibrated")
    elif isinstance(exc, StoreBusyError):
        return ApiError(503, text, "store_busy", {"Retry-After": "1"})
    elif isinstance(exc, StoreError):
        mapped = (500, "store_error")
    elif isinstance(exc, ExpertTimeoutError | TimeoutError):
        mapped = (504, "timeout")
    elif isinstance(exc, InvalidInputError):
        mapped = (400, "invalid_request")
    elif isinstance(exc, AvengersError):
        mapped = (500, "avengers_error")
    if mapped is None:
        return ApiError(500, "The server failed to answer; see its log.", "internal_error")
    return ApiError(mapped[0], text, mapped[1])


class _ExpertFailed(Exception):  # noqa: N818 - a signal, answered as a 502
    """A single expert's call failed (a request naming one expert as its model)."""


class _Gate:
    """Pure ASGI middleware: API keys (constant-time) and request metrics."""

    def __init__(self, app: ASGIApp, *, keys: Sequence[str], metrics: Metrics) -> None:
        self.app = app
        self.keys = [key.encode() for key in keys]
        self.metrics = metrics

    def _allowed(self, scope: Scope) -> bool:
        if not self.keys or scope["path"] in OPEN_PATHS:
            return True
        header = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                header = value
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return False
        token = token.strip()
        allowed = False
        for key in self.keys:  # every key compared: the time does not tell which matched
            allowed |= hmac.compare_digest(token, key)
        return allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            if self._allowed(scope):
                await self.app(scope, receive, counted)
            else:
                refused = ApiError(
                    401,
                    "Missing or invalid API key: send `Authorization: Bearer <key>`.",
                    "invalid_api_key",
                    {"WWW-Authenticate": "Bearer"},
                )
                await refused.response()(scope, receive, counted)
        finally:
            self.metrics.request(scope["path"], status, time.perf_counter() - started)


class _Slots:
    """At most ``limit`` requests answered at once; the others are refused, not queued."""

    def __init__(self, limit: int, metrics: Metrics) -> None:
        self.limit = limit
        self.taken = 0
        self.metrics = metrics

    def take(self, retry_after: int) -> None:
        """Take a slot (on the event loop: no await between check and count).

        Raises:
            ApiError: 429, every slot is taken.
        """
        if self.taken >= self.limit:
            raise ApiError(
                429,
                f"The server is answering {self.limit} requests, its limit; retry after "
                f"{retry_after} s.",
                "too_many_requests",
                {"Retry-After": str(retry_after)},
            )
        self.taken += 1
        self.metrics.in_flight.inc()

    def release(self) -> None:
        """Give a slot back."""
        self.taken -= 1
        self.metrics.in_flight.dec()


class _EventStream(StreamingResponse):
    """Server-sent events that give their slot back however the stream ends."""

    def __init__(self, content: AsyncIterator[bytes], release: Callable[[], None]) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._events = content
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()
            aclose = getattr(self._events, "aclose", None)
            if aclose is not None:
                await aclose()


def _sse(data: Mapping[str, Any]) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused past ``limit`` bytes.

    Raises:
        ApiError: 413 past the limit, 400 for a malformed ``Content-Length``.
    """
    check_length(request, limit)
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise _too_large(limit)
    return bytes(body)


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"The request body is larger than this server's limit of {limit} bytes.",
        "request_too_large",
    )


def check_length(request: Request, limit: int) -> None:
    """Refuse a body whose ``Content-Length`` says it is too large, before reading it.

    Raises:
        ApiError: 413 past the limit, 400 for a malformed ``Content-Length``.
    """
    length = request.headers.get("content-length")
    if length is not None:
        if not length.strip().isdigit():
            raise ApiError(400, "Malformed Content-Length header.", "invalid_request")
        if int(length) > limit:
            raise _too_large(limit)


class _Server:
    """The routes' work, bound to one chat model, its settings and metrics."""

    def __init__(self, chat_model: ChatAvengers, settings: ServeSettings) -> None:
        self.chat_model = chat_model
        self.settings = settings
        self.metrics = Metrics()
        self.slots = _Slots(settings.max_concurrency, self.metrics)
        self.created = int(time.time())
        self.answers: OrderedDict[str, str] = OrderedDict()
        """Completion id to the ensemble's answer id, for feedback (the most recent)."""
        experts = chat_model.experts.values()
        models = [e.model if isinstance(e, Expert) else e for e in experts]
        self.secrets = [*settings.secrets(), *secrets_of(models), *environment_secrets()]

    # models -----------------------------------------------------------------------
    def models(self) -> dict[str, Any]:
        """``GET /v1/models``: the ensemble first, then each expert."""
        names = [self.chat_model.model, *self.chat_model.experts]
        return {"object": "list", "data": [self._model(name) for name in names]}

    def _model(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": self.created, "owned_by": "avengers"}

    def model(self, name: str) -> dict[str, Any]:
        """``GET /v1/models/{name}``.

        Raises:
            ApiError: 404, no such model.
        """
        self._target(name)
        return self._model(name)

    def _target(self, name: str) -> str | None:
        """None for the ensemble, else the expert that ``name`` names."""
        if name == self.chat_model.model:
            return None
        if name in self.chat_model.experts:
            return name
        raise ApiError(
            404,
            f"The model {name!r} does not exist here: use {self.chat_model.model!r} (the "
            "ensemble) or one of its experts (GET /v1/models).",
            "model_not_found",
        )

    # chat completions ---------------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        """``POST /v1/chat/completions``."""
        arrived = time.perf_counter()
        check_length(request, self.settings.max_body_bytes)
        self.slots.take(self.settings.retry_after)
        handed_over = False
        try:
            chat = protocol.parse(
                protocol.ChatRequest, await read_body(request, self.settings.max_body_bytes)
            )
            messages = protocol.to_messages(
                chat, max_messages=self.settings.max_messages, max_chars=self.settings.max_chars
            )
            options = protocol.to_options(chat)
            target = self._target(chat.model)
            completion_id = protocol.new_id()
            if target is None:
                produce = self._ensemble(messages, options, stream=chat.stream)
            else:
                produce = self._expert(target, messages, options)
            events = self._pumped(produce, arrived + self.settings.timeout)
            if chat.stream:
                stream = self._stream(chat, completion_id, events, arrived, target)
                handed_over = True
                return _EventStream(stream, self.slots.release)
            async with contextlib.aclosing(events):
                answer = await self._collect(events)
            extension = self._extension(completion_id, answer, target)
            return JSONResponse(protocol.completion(completion_id, chat.model, answer, extension))
        except ApiError:
            raise
        except Exception as exc:
            raise self._failed(exc) from exc
        finally:
            if not handed_over:
                self.slots.release()

    def _failed(self, exc: BaseException) -> ApiError:
        error = api_error(exc, self.secrets)
        if error.status >= 500:
            _log.warning(
                "chat completion failed (%d %s): %s",
                error.status,
                error.code,
                redact(f"{type(exc).__name__}: {exc}", self.secrets),
            )
        return error

    def _ensemble(
        self,
        messages: list[BaseMessage],
        options: dict[str, Any],
        *,
        stream: bool,
    ) -> Callable[[Callable[[Event], None]], Awaitable[None]]:
        """What answers with the ensemble (``astream``: progress events, then the answer).

        A non-streamed request waits for every sample, as ``invoke`` does, unless the
        pool sets ``early_stop``; a streamed one stops once the vote is decided.
        """
        if not stream and self.chat_model.early_stop is None:
            options = {**options, "early_stop": False}

        async def produce(put: Callable[[Event], None]) -> None:
            def progress(event: Mapping[str, Any]) -> None:
                self.metrics.progress(event)
                put(("progress", dict(event)))

            with progress_to(progress):  # this task's streams report to it
                async for piece in self.chat_model.astream(messages, **options):
                    put(("chunk", piece))

        return produce

    def _expert(
        self, name: str, messages: list[BaseMessage], options: Mapping[str, Any]
    ) -> Callable[[Callable[[Event], None]], Awaitable[None]]:
        """What answers with one expert alone, streaming its own tokens."""
        expert = self.chat_model.experts[name]
        model: BaseChatModel = expert.model if isinstance(expert, Expert) else expert
        runnable: Runnable[LanguageModelInput, BaseMessage] = model
        if options.get("tools"):
            bound = {
                key: options[key]
                for key in ("tool_choice", "parallel_tool_calls")
                if key in options
            }
            runnable = model.bind_tools(options["tools"], **bound)
        kwargs = {
            key: options[key]
            for key in ("temperature", "max_tokens", "stop", "seed", "response_format")
            if key in options
        }
        if "stream_usage" in type(model).model_fields:
            kwargs["stream_usage"] = True

        async def produce(put: Callable[[Event], None]) -> None:
            try:
                async for piece in runnable.astream(messages, **kwargs):
                    put(("chunk", piece))
            except Exception as exc:
                self.metrics.expert_call(name, ok=False)
                message = redact(f"{type(exc).__name__}: {exc}", self.secrets)
                raise _ExpertFailed(f"Expert {name!r} failed: {message}") from exc
            self.metrics.expert_call(name, ok=True)

        return produce

    async def _pumped(
        self,
        produce: Callable[[Callable[[Event], None]], Awaitable[None]],
        deadline: float,
    ) -> AsyncGenerator[Event, None]:
        """The events of an answer run in a task of its own, each wait bounded.

        The task is cancelled (an expert's HTTP request with it) when the reader stops:
        the client went away, the deadline passed, an error was sent.

        Raises:
            ApiError: 504 once ``deadline`` (``time.perf_counter()``) passes.
        """
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        async def run() -> None:
            try:
                await produce(queue.put_nowait)
            except Exception as exc:  # noqa: BLE001 - handed to the reader, which raises it
                queue.put_nowait(("error", exc))
                return
            queue.put_nowait(("end", None))

        task = asyncio.create_task(run())
        try:
            while True:
                left = deadline - time.perf_counter()
                try:
                    kind, item = await asyncio.wait_for(queue.get(), timeout=max(left, 0.0))
                except TimeoutError:
                    raise ApiError(
                        504,
                        f"No answer within the server's limit of {self.settings.timeout:g} s.",
                        "timeout",
                    ) from None
                if kind == "end":
                    return
                if kind == "error":
                    raise item
                yield kind, item
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    @staticmethod
    async def _collect(events: AsyncGenerator[Event, None]) -> AIMessageChunk:
        answer: AIMessageChunk | None = None
        async for kind, item in events:
            if kind == "chunk":
                answer = item if answer is None else answer + item
        if answer is None:  # pragma: no cover - a model always answers or raises
            raise ApiError(502, "The model returned no answer.", "no_answer")
        return answer

    def _extension(
        self, completion_id: str, answer: AIMessageChunk, target: str | None
    ) -> dict[str, Any]:
        """The response's ``avengers`` field; an ensemble answer is remembered for feedback."""
        if target is not None:
            return {"expert": target}
        if answer.id is not None:
            self.answers[completion_id] = answer.id
            while len(self.answers) > FEEDBACK_RUNS:
                self.answers.popitem(last=False)
        record = answer.response_metadata.get("avengers")
        return protocol.routing_extension(record, self.secrets)

    async def _stream(
        self,
        chat: protocol.ChatRequest,
        completion_id: str,
        events: AsyncGenerator[Event, None],
        arrived: float,
        target: str | None,
    ) -> AsyncIterator[bytes]:
        """The answer as server-sent events (see the module docstring)."""
        created = int(time.time())

        def chunk(**parts: Any) -> bytes:
            return _sse(protocol.chunk(completion_id, chat.model, created, **parts))

        yield chunk(delta={"role": "assistant", "content": ""})
        answer: AIMessageChunk | None = None
        first = True
        try:
            async with contextlib.aclosing(events):
                async for kind, item in events:
                    if kind == "progress":
                        line = redact(json.dumps(item, ensure_ascii=False), self.secrets)
                        yield f": {line}\n\n".encode()
                        continue
                    answer = item if answer is None else answer + item
                    delta = protocol.delta_of(item)
                    if not delta:
                        continue
                    if first:
                        first = False
                        self.metrics.ttft.labels(
                            target="ensemble" if target is None else "expert"
                        ).observe(time.perf_counter() - arrived)
                    yield chunk(delta=delta)
            if answer is None:  # pragma: no cover - a model always answers or raises
                raise ApiError(502, "The model returned no answer.", "no_answer")
            yield chunk(
                finish=protocol.finish_reason(answer),
                extra={"avengers": self._extension(completion_id, answer, target)},
            )
            if chat.include_usage:
                yield chunk(no_choice=True, extra={"usage": protocol.usage(answer)})
        except Exception as exc:  # noqa: BLE001 - the stream started: the error goes in it
            error = self._failed(exc)
            yield _sse(protocol.error_body(error.status, error.message, error.code))
        yield b"data: [DONE]\n\n"

    # feedback -------------------------------------------------------------------------
    async def feedback(self, request: Request) -> dict[str, Any]:
        """``POST /v1/feedback``: a verdict on a completion, counted into the store."""
        self.slots.take(self.settings.retry_after)
        try:
            body = await read_body(request, min(self.settings.max_body_bytes, 16_384))
            verdict = protocol.parse(protocol.FeedbackRequest, body)
            answer_id = self.answers.get(verdict.id, verdict.id)
            result = await asyncio.to_thread(
                self.chat_model.record_feedback, answer_id, verdict.correct
            )
        except ApiError:
            raise
        except Exception as exc:
            error = api_error(exc, self.secrets)
            if error.status >= 500:
                _log.warning("feedback failed: %s", redact(str(exc), self.secrets))
            raise error from exc
        finally:
            self.slots.release()
        if not result.duplicate:
            self.metrics.feedback.labels(correct=str(result.correct).lower()).inc()
        return {
            "id": verdict.id,
            "correct": result.correct,
            "duplicate": result.duplicate,
            "clusters": result.clusters,
            "graded": {expert: asdict(outcome) for expert, outcome in result.graded.items()},
            "updated": {
                str(cluster): {expert: stats.to_dict() for expert, stats in experts.items()}
                for cluster, experts in result.updated.items()
            },
        }


def create_app(chat_model: ChatAvengers, settings: ServeSettings | None = None) -> FastAPI:
    """The OpenAI-compatible app serving ``chat_model`` (see the module docstring).

    Args:
        chat_model: The ensemble; its experts are also served one by one, by name.
        settings: Keys and limits (default: :meth:`ServeSettings.from_env`).

    Raises:
        InvalidInputError: ``chat_model`` is not a ChatAvengers.
    """
    if not isinstance(chat_model, ChatAvengers):
        raise InvalidInputError(
            f"avengers serve needs a ChatAvengers, got {type(chat_model).__name__}."
        )
    settings = settings if settings is not None else ServeSettings.from_env()
    server = _Server(chat_model, settings)
    app = FastAPI(
        title="avengers-graph",
        summary="An ensemble of small models behind OpenAI's chat-completions API.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.server = server
    app.add_middleware(_Gate, keys=settings.secrets(), metrics=server.metrics)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        del request
        return exc.response()

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        del request
        code = "not_found" if exc.status_code == 404 else "http_error"
        return ApiError(exc.status_code, str(exc.detail), code, exc.headers).response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        del request
        return ApiError(400, f"Invalid request: {exc.errors()}", "invalid_request").response()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(server.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return server.models()

    @app.get("/v1/models/{name}")
    async def model(name: str) -> dict[str, Any]:
        return server.model(name)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await server.chat(request)

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> dict[str, Any]:
        return await server.feedback(request)

    return app
