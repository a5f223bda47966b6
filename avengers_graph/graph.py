"""The Avengers ensemble as a LangGraph state machine.

One question flows through five nodes (``ALGORITHM.md``, "Inference"):

1. ``embed``: :func:`~avengers_graph.routing.routing_text` picks the question from
   ``messages`` (the last human message, a long one compacted) and
   :func:`~avengers_graph.routing.routing_context` the human message before it; the
   embeddings model embeds both and :func:`~avengers_graph.embeddings.normalise`
   L2-normalises them. The node also resets last turn's ``samples`` and ``failures``.
2. ``locate_cluster``: :func:`~avengers_graph.routing.blend` mixes the context into
   the question's vector (``context_weight``), :meth:`ClusterStore.check_compatible`
   refuses a store built with other embeddings, :meth:`ClusterStore.nearest` queries Chroma for the
   ``top_k`` nearest centroids, and :func:`~avengers_graph.routing.match_clusters`
   weighs them with ``softmax(-beta * distance)``.
3. ``select_experts``: :func:`~avengers_graph.routing.score_experts` scores every
   expert of the pool on the matched clusters' statistics and
   :func:`~avengers_graph.routing.select_experts` keeps the ``top_n``; the node plans
   ``samples`` calls per expert, each with its own seed.
4. ``sample``: one ``Send`` per planned call runs in parallel (sync and async). A
   call that raises a transient error is retried by LangGraph's ``RetryPolicy``; any
   other error, a timeout, or a transient error on the last attempt is recorded in
   ``failures`` and the expert loses that sample. With ``early_stop``, the workers
   of a turn share a tally (``_Turn``): once :func:`~avengers_graph.voting.early_keys`
   and :func:`~avengers_graph.voting.is_decided` say the samples still running cannot
   change the winner, those stop waiting (async: their requests are cancelled).
5. ``vote``: :func:`~avengers_graph.voting.resolve_extractor` picks how to compare
   the answers, :func:`~avengers_graph.voting.majority_vote` (or
   :func:`~avengers_graph.voting.semantic_vote` for free text) picks the winner, ties
   going to the better-ranked expert. The winning ``AIMessage``, with the summed usage
   of every call, is appended to ``messages`` and the routing record written to
   ``avengers``. If every expert failed, :class:`AllExpertsFailedError` names them.

Nodes write custom stream events (``stream_mode="custom"``): ``{"avengers": "routing"}``
from ``select_experts``, one ``{"avengers": "sample"}`` per planned call (status ``ok``,
``failed`` or ``cancelled``) and ``{"avengers": "vote"}``.

:func:`build_avengers_graph` returns the uncompiled ``StateGraph`` (to extend);
:func:`create_avengers_graph` compiles it. Per-run knobs go in the run's ``context``
as an :class:`AvengersContext` (or a dict of its fields).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, ToolCall
from langchain_core.messages.ai import UsageMetadata, add_usage
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
from langgraph.cache.base import BaseCache
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import get_runtime
from langgraph.store.base import BaseStore
from langgraph.types import CachePolicy, Checkpointer, RetryPolicy, Send

from avengers_graph import formats, routing, voting
from avengers_graph.behaviour import behaviour_keys
from avengers_graph.contract import Expert, validate_pool
from avengers_graph.embeddings import embedding_model_name, normalise
from avengers_graph.errors import AllExpertsFailedError, ExpertTimeoutError, InvalidInputError
from avengers_graph.state import (
    AvengersState,
    ClusterRecord,
    ExpertRecord,
    InputState,
    OutputState,
    RoutingRecord,
    Sample,
    SampleRecord,
    SampleTask,
)
from avengers_graph.store import ClusterStore
from avengers_graph.tool_parsers import bound_tool_parameters

_DEFAULT_RETRY_ON = RetryPolicy().retry_on


def is_transient_error(exc: BaseException) -> bool:
    """Whether an expert error is worth retrying.

    HTTP errors carrying a status code retry on 408, 429 and 5xx only (a 400 or 401
    will fail again); our own timeouts are a budget and do not retry; everything
    else follows LangGraph's default ``retry_on`` (no retry for programming errors
    such as ``ValueError`` or ``TypeError``).
    """
    if isinstance(exc, ExpertTimeoutError):
        return False
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status in (408, 429) or status >= 500
    retry_on = _DEFAULT_RETRY_ON
    return isinstance(exc, Exception) and callable(retry_on) and bool(retry_on(exc))


@dataclass(frozen=True)
class AvengersSettings:
    """Resolved routing and sampling settings of one run (defaults of the factory)."""

    top_k: int = 1
    """Nearest clusters to weigh (the paper's default is 1)."""
    top_n: int = 2
    """Experts to sample."""
    samples: int = 3
    """Samples per selected expert."""
    beta: float = 3.0
    """Softmax sharpness over the matched clusters' distances."""
    context_weight: float = 0.25
    """Weight of the previous human message's embedding blended into the question's
    (:func:`routing.blend`); 0 routes on the last human message alone."""
    temperature: float | None = 0.7
    """Sampling temperature sent to the experts; ``None`` keeps each expert's own."""
    max_tokens: int | None = None
    """Cap on generated tokens sent to the experts; ``None`` keeps each expert's own."""
    stop: tuple[str, ...] | None = None
    """Stop sequences sent to the experts."""
    seed: int | None = None
    """Base seed; ``None`` draws a fresh one per question (recorded in the routing record)."""
    timeout: float | None = None
    """Seconds one expert call may take before it counts as failed."""
    answer_format: str | voting.Extractor = "auto"
    """How answers are compared: a name of :data:`voting.EXTRACTORS`, ``"auto"``,
    ``"semantic"`` or a callable ``text -> key``."""
    similarity_threshold: float = 0.85
    """Cosine similarity above which free-text answers count as the same answer."""
    prior_strength: float = 0.0
    """Beta-prior pseudo-counts toward each expert's global accuracy (0 = raw accuracy)."""
    quality_weight: float = 1.0
    """Avengers-Pro's trade-off: 1 ranks by accuracy, lower values favour cheaper experts."""
    cost: routing.Cost = "seconds"
    """What the cost-aware ranking counts as cost (:func:`routing.expert_cost`):
    ``"seconds"``, ``"tokens"`` or ``"compute"`` (tokens times the expert's cost)."""
    tools: tuple[dict[str, Any], ...] | None = None
    """Tools (OpenAI format) bound to every expert; samples then vote on tool calls."""
    tool_choice: str | dict[str, Any] | bool | None = None
    """Passed to every expert's ``bind_tools`` as is (``"auto"``, ``"any"``, a name...)."""
    parallel_tool_calls: bool | None = None
    """Passed to every expert's ``bind_tools`` when set."""
    response_format: dict[str, Any] | None = None
    """Sent to every expert as ``response_format`` (JSON mode, JSON schema)."""
    structured_output: bool = False
    """The answer is one object (``with_structured_output``): when no two samples agree
    on the whole object, vote field by field (:func:`voting.merge_fields`)."""
    early_stop: bool = False
    """Stop waiting for (and cancel) the samples still running once they can no longer
    change the winning answer (:func:`voting.is_decided`)."""

    def __post_init__(self) -> None:
        for name in ("top_k", "top_n", "samples"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{name} must be an integer >= 1, got {value!r}.")
        if self.beta < 0:
            raise InvalidInputError(f"beta must be >= 0, got {self.beta!r}.")
        if not 0 <= self.context_weight < float("inf"):
            raise InvalidInputError(f"context_weight must be >= 0, got {self.context_weight!r}.")
        if self.temperature is not None and self.temperature < 0:
            raise InvalidInputError(f"temperature must be >= 0, got {self.temperature!r}.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise InvalidInputError(f"max_tokens must be >= 1, got {self.max_tokens!r}.")
        if self.timeout is not None and self.timeout <= 0:
            raise InvalidInputError(f"timeout must be > 0 seconds, got {self.timeout!r}.")
        if not 0.0 < self.similarity_threshold <= 1.0:
            raise InvalidInputError(
                f"similarity_threshold must be in (0, 1], got {self.similarity_threshold!r}."
            )
        if not 0.0 <= self.quality_weight <= 1.0:
            raise InvalidInputError(
                f"quality_weight must be in [0, 1], got {self.quality_weight!r}."
            )
        if self.prior_strength < 0:
            raise InvalidInputError(f"prior_strength must be >= 0, got {self.prior_strength!r}.")
        routing.check_cost(self.cost, [])
        if isinstance(self.answer_format, str):
            voting.resolve_extractor([], self.answer_format)  # validates the name


@dataclass(frozen=True)
class AvengersContext:
    """Per-run overrides of the graph's settings (the graph's ``context_schema``).

    Every field left at ``None`` keeps the value the graph was built with. Pass it as
    ``graph.invoke(inputs, context=AvengersContext(top_n=3))`` or as a dict.
    """

    top_k: int | None = None
    top_n: int | None = None
    samples: int | None = None
    beta: float | None = None
    context_weight: float | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    seed: int | None = None
    timeout: float | None = None
    answer_format: str | None = None
    similarity_threshold: float | None = None
    prior_strength: float | None = None
    quality_weight: float | None = None
    cost: routing.Cost | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | bool | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    structured_output: bool | None = None
    early_stop: bool | None = None


def check_expert_costs(
    experts: Mapping[str, Any], expert_costs: Mapping[str, float] | None, cost: str
) -> dict[str, float]:
    """The pool's costs per token, checked: known experts, and all of them for ``"compute"``.

    Raises:
        InvalidInputError: A cost for an expert not in the pool, a negative cost, or
            ``cost="compute"`` with an expert that has none.
    """
    costs = dict(expert_costs or {})
    if unknown := sorted(set(costs) - set(experts)):
        raise InvalidInputError(f"expert_costs names experts not in the pool: {unknown}.")
    routing.check_cost(cost, list(experts), costs)
    return costs


def resolve_settings(defaults: AvengersSettings, context: Any) -> AvengersSettings:
    """Apply a run's :class:`AvengersContext` (or dict) over the graph's defaults."""
    if context is None:
        return defaults
    if isinstance(context, Mapping):
        values = dict(context)
    else:
        values = {f.name: getattr(context, f.name, None) for f in fields(AvengersContext)}
    known = {f.name for f in fields(AvengersContext)}
    unknown = set(values) - known
    if unknown:
        raise InvalidInputError(
            f"Unknown context keys {sorted(unknown)}; valid keys are {sorted(known)}."
        )
    overrides = {key: value for key, value in values.items() if value is not None}
    for key in ("stop", "tools"):
        if key in overrides:
            overrides[key] = tuple(overrides[key])
    return replace(defaults, **overrides) if overrides else defaults


def _tool_schemas(settings: AvengersSettings) -> voting.ToolSchemas | None:
    """The bound tools' parameter schemas (None: no tools, or built-ins we cannot check)."""
    schemas = bound_tool_parameters(settings.tools)
    return schemas if settings.tools and len(schemas) == len(settings.tools) else None


def _sample_seed(base: int, rank: int, index: int, samples: int) -> int:
    return base + rank * samples + index


def _extractor_name(extractor: voting.Extractor) -> str:
    name = getattr(extractor, "__name__", "custom")
    return name.removeprefix("extract_")


_TIMEOUT_POOL: concurrent.futures.ThreadPoolExecutor | None = None
_MAX_OPEN_TURNS = 1024
"""Tallies kept for turns whose vote has not run (runs that died are evicted)."""


def _timeout_pool() -> concurrent.futures.ThreadPoolExecutor:
    global _TIMEOUT_POOL  # noqa: PLW0603 - one lazily created pool per process
    if _TIMEOUT_POOL is None:
        _TIMEOUT_POOL = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="avengers-call")
    return _TIMEOUT_POOL


def _emit(event: str, **data: Any) -> None:
    """Write ``{"avengers": event, **data}`` to the run's ``custom`` stream mode."""
    get_stream_writer()({"avengers": event, **data})


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Turn:
    """What the sample workers of one turn tell each other, for the early decision.

    Every worker reports its outcome; after each report the samples so far are keyed
    as the vote would key them (:func:`voting.early_keys`) and, once the samples still
    running can no longer change the winner (:func:`voting.is_decided`), the workers
    still waiting are woken to stop.
    """

    def __init__(self, planned: int, settings: AvengersSettings) -> None:
        self.planned = planned
        self.settings = settings
        self.schemas = _tool_schemas(settings)
        self.decided = False
        self._lock = threading.Lock()
        self._reported = 0
        self._texts: list[str] = []
        self._calls: list[list[ToolCall]] = []
        self._wake: list[Callable[[], Any]] = []

    def report(self, message: AIMessage | None) -> None:
        """Count one finished worker (``None``: failed or cancelled, no vote)."""
        with self._lock:
            self._reported += 1
            if message is not None:
                self._texts.append(str(message.text))
                self._calls.append(list(message.tool_calls))
            pending = max(self.planned - self._reported, 0)
            if self.decided or not pending or not self._texts:
                return
            keys = voting.early_keys(
                self._texts,
                self._calls,
                self.settings.answer_format,
                pending,
                tools=bool(self.settings.tools),
                schemas=self.schemas,
            )
            if keys is None or not voting.is_decided(keys, pending):
                return
            self.decided = True
            wake, self._wake = self._wake, []
        for callback in wake:
            callback()

    def on_decided(self, callback: Callable[[], Any]) -> None:
        """Call ``callback`` once the vote is decided (now, if it already is)."""
        with self._lock:
            if not self.decided:
                self._wake.append(callback)
                return
        callback()


class _Nodes:
    """The graph's node functions, bound to the pool, the embeddings and the store."""

    def __init__(
        self,
        experts: Mapping[str, BaseChatModel | Expert],
        embeddings: Embeddings,
        store: ClusterStore,
        settings: AvengersSettings,
        *,
        expert_costs: Mapping[str, float],
        max_attempts: int,
        model_name: str,
    ) -> None:
        self.experts = {name: e.model for name, e in validate_pool(experts).items()}
        self.expert_costs = dict(expert_costs)
        self.embeddings = embeddings
        self.embedding_name = embedding_model_name(embeddings)
        self.store = store
        self.defaults = settings
        self.max_attempts = max_attempts
        self.model_name = model_name
        # turn id -> tally, dropped by the vote (or, for a run that died, by the cap)
        self._turns: dict[str, _Turn] = {}
        self._turns_lock = threading.Lock()

    def settings(self) -> AvengersSettings:
        runtime = get_runtime()
        return resolve_settings(self.defaults, runtime.context if runtime else None)

    # embed ------------------------------------------------------------------------
    def embed(self, state: AvengersState) -> dict[str, Any]:
        messages = state.get("messages", [])
        text, context = routing.routing_text(messages), routing.routing_context(messages)
        return _embedded(
            self.embeddings.embed_query(text),
            self.embeddings.embed_query(context) if context else None,
        )

    async def aembed(self, state: AvengersState) -> dict[str, Any]:
        messages = state.get("messages", [])
        text, context = routing.routing_text(messages), routing.routing_context(messages)
        return _embedded(
            await self.embeddings.aembed_query(text),
            await self.embeddings.aembed_query(context) if context else None,
        )

    # locate_cluster -----------------------------------------------------------------
    def locate_cluster(self, state: AvengersState) -> dict[str, Any]:
        settings = self.settings()
        vector = state["embedding"]
        context = state.get("context_embedding")
        if context is not None and settings.context_weight > 0:
            vector = routing.blend(vector, context, settings.context_weight)
        self.store.check_compatible(self.embedding_name, len(vector))
        matches = routing.match_clusters(self.store.nearest(vector, settings.top_k), settings.beta)
        clusters = [ClusterRecord(id=m.id, distance=m.distance, weight=m.weight) for m in matches]
        return {"clusters": clusters}

    # select_experts -----------------------------------------------------------------
    def select_experts(self, state: AvengersState) -> dict[str, Any]:
        settings = self.settings()
        matches = [routing.ClusterMatch(**c) for c in state["clusters"]]
        scores = routing.score_experts(
            matches,
            self.store.stats(),
            list(self.experts),
            prior_strength=settings.prior_strength,
            quality_weight=settings.quality_weight,
            cost=settings.cost,
            unit_costs=self.expert_costs,
        )
        chosen = routing.select_experts(scores, settings.top_n)
        seed = (
            settings.seed if settings.seed is not None else random.SystemRandom().randrange(2**31)
        )
        experts = [ExpertRecord(name=s.name, score=s.score) for s in chosen]
        _emit("routing", clusters=state["clusters"], experts=experts, seed=seed)
        return {"experts": experts, "seed": seed, "turn": uuid.uuid4().hex}

    def dispatch(self, state: AvengersState) -> list[Send]:
        settings = self.settings()
        seed = state["seed"]
        turn = state["turn"]
        planned = len(state["experts"]) * settings.samples
        return [
            Send(
                "sample",
                SampleTask(
                    expert=expert["name"],
                    rank=rank,
                    index=index,
                    seed=_sample_seed(seed, rank, index, settings.samples),
                    messages=list(state["messages"]),
                    turn=turn,
                    planned=planned,
                ),
            )
            for rank, expert in enumerate(state["experts"])
            for index in range(settings.samples)
        ]

    # sample -------------------------------------------------------------------------
    def _call_kwargs(self, settings: AvengersSettings, task: SampleTask) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if settings.temperature is not None:
            kwargs["temperature"] = settings.temperature
        if task["seed"] is not None:
            kwargs["seed"] = task["seed"]
        if settings.max_tokens is not None:
            kwargs["max_tokens"] = settings.max_tokens
        if settings.stop:
            kwargs["stop"] = list(settings.stop)
        if settings.response_format is not None:
            kwargs["response_format"] = settings.response_format
        return kwargs

    def _turn(self, settings: AvengersSettings, task: SampleTask) -> _Turn | None:
        """The turn's shared tally when ``early_stop`` is on (created by its first worker)."""
        if not settings.early_stop:
            return None
        with self._turns_lock:
            turn = self._turns.get(task["turn"])
            if turn is None:
                while len(self._turns) >= _MAX_OPEN_TURNS:
                    del self._turns[next(iter(self._turns))]  # the oldest
                turn = _Turn(task["planned"], settings)
                self._turns[task["turn"]] = turn
            return turn

    def _close_turn(self, turn: str) -> None:
        with self._turns_lock:
            self._turns.pop(turn, None)

    def _sampled(
        self, task: SampleTask, message: Any, started: float, turn: _Turn | None
    ) -> dict[str, Any]:
        if not isinstance(message, AIMessage):
            raise InvalidInputError(
                f"Expert {task['expert']!r} returned {type(message).__name__}, not an AIMessage."
            )
        seconds = time.perf_counter() - started
        sample = Sample(
            expert=task["expert"],
            rank=task["rank"],
            index=task["index"],
            seed=task["seed"],
            message=message,
            seconds=seconds,
        )
        if turn is not None:
            turn.report(message)
        _emit(
            "sample",
            expert=task["expert"],
            index=task["index"],
            status="ok",
            seconds=seconds,
            text=str(message.text),
            tool_calls=list(message.tool_calls),
        )
        return {"samples": [sample]}

    def _failed(self, task: SampleTask, exc: Exception, turn: _Turn | None) -> dict[str, Any]:
        runtime = get_runtime()
        attempt = runtime.execution_info.node_attempt if runtime.execution_info else 1
        if is_transient_error(exc) and attempt < self.max_attempts:
            raise exc  # LangGraph's RetryPolicy runs the task again
        error = f"{type(exc).__name__}: {exc}"
        if turn is not None:
            turn.report(None)
        _emit("sample", expert=task["expert"], index=task["index"], status="failed", error=error)
        return {"failures": {task["expert"]: error}}

    @staticmethod
    def _cancelled(task: SampleTask, turn: _Turn) -> dict[str, Any]:
        turn.report(None)
        _emit("sample", expert=task["expert"], index=task["index"], status="cancelled")
        return {"cancelled": 1}

    def _expert(self, settings: AvengersSettings, name: str) -> Runnable[Any, Any]:
        expert = self.experts[name]
        if not settings.tools:
            return expert
        options: dict[str, Any] = {}
        if settings.tool_choice is not None:
            options["tool_choice"] = settings.tool_choice
        if settings.parallel_tool_calls is not None:
            options["parallel_tool_calls"] = settings.parallel_tool_calls
        return expert.bind_tools(list(settings.tools), **options)

    def sample(self, task: SampleTask, config: RunnableConfig) -> dict[str, Any]:
        settings = self.settings()
        turn = self._turn(settings, task)
        if turn is not None and turn.decided:
            return self._cancelled(task, turn)
        started = time.perf_counter()
        try:
            expert = self._expert(settings, task["expert"])
            call = functools.partial(
                expert.invoke, task["messages"], config, **self._call_kwargs(settings, task)
            )
            if settings.timeout is None and turn is None:
                return self._sampled(task, call(), started, turn)
            # in a worker thread, so the wait can end on a timeout or an early decision
            future = _timeout_pool().submit(contextvars.copy_context().run, call)
            ended = threading.Event()
            future.add_done_callback(lambda _: ended.set())
            if turn is not None:
                turn.on_decided(ended.set)
            ended.wait(settings.timeout)
            if future.done():
                return self._sampled(task, future.result(), started, turn)
            future.cancel()  # a running call cannot be interrupted: it is only abandoned
            if turn is not None and turn.decided:
                return self._cancelled(task, turn)
            raise ExpertTimeoutError(f"no answer within {settings.timeout} s")
        except Exception as exc:  # noqa: BLE001 - recorded as the expert's failure or retried
            return self._failed(task, exc, turn)

    async def asample(self, task: SampleTask, config: RunnableConfig) -> dict[str, Any]:
        settings = self.settings()
        turn = self._turn(settings, task)
        if turn is not None and turn.decided:
            return self._cancelled(task, turn)
        started = time.perf_counter()
        try:
            expert = self._expert(settings, task["expert"])
            coroutine = expert.ainvoke(
                task["messages"], config, **self._call_kwargs(settings, task)
            )
            if settings.timeout is None and turn is None:
                return self._sampled(task, await coroutine, started, turn)
            call = asyncio.ensure_future(coroutine)
            waiters: set[asyncio.Future[Any]] = {call}
            if turn is not None:
                loop = asyncio.get_running_loop()
                decided: asyncio.Future[None] = loop.create_future()
                turn.on_decided(functools.partial(loop.call_soon_threadsafe, _resolve, decided))
                waiters.add(decided)
            try:
                await asyncio.wait(
                    waiters, timeout=settings.timeout, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for waiter in waiters - {call}:
                    waiter.cancel()
                if not call.done():  # decided, timed out, or this task was cancelled
                    call.cancel()
            if call.done() and not call.cancelled():
                return self._sampled(task, call.result(), started, turn)
            if turn is not None and turn.decided:
                return self._cancelled(task, turn)
            raise ExpertTimeoutError(f"no answer within {settings.timeout} s")
        except Exception as exc:  # noqa: BLE001 - recorded as the expert's failure or retried
            return self._failed(task, exc, turn)

    # vote ---------------------------------------------------------------------------
    def _plan_vote(self, state: AvengersState) -> _VotePlan:
        if "turn" in state:
            self._close_turn(state["turn"])
        samples = sorted(state.get("samples", []), key=lambda s: (s["rank"], s["index"]))
        if not samples:
            failures = dict(state.get("failures", {}))
            for expert in state.get("experts", []):
                failures.setdefault(expert["name"], "returned no sample")
            raise AllExpertsFailedError(failures)
        settings = self.settings()
        texts = [str(s["message"].text) for s in samples]
        if any(s["message"].tool_calls for s in samples):
            # each sample votes for its set of tool calls, or for its text answer;
            # calls that the bound tools would refuse abstain
            schemas = _tool_schemas(settings)
            tool_keys: list[str | None] = [
                voting.tool_vote_key(s["message"].tool_calls, text, schemas)
                for s, text in zip(samples, texts, strict=True)
            ]
            return _VotePlan(settings, samples, texts, None, tool_keys, "tool_calls")
        extractor = voting.resolve_extractor(texts, settings.answer_format)
        if extractor is formats.extract_code:  # run the programs on the same calls
            keys = behaviour_keys(texts, routing.question_text(state["messages"]))
            if any(key is not None and key.startswith("behaviour:") for key in keys):
                return _VotePlan(settings, samples, texts, extractor, keys, "code:behaviour")
        keys = [extractor(text) for text in texts] if extractor is not None else []
        if not any(key is not None for key in keys):
            extractor = None  # nothing extractable: vote on meaning instead
        name = _extractor_name(extractor) if extractor is not None else "semantic"
        return _VotePlan(settings, samples, texts, extractor, keys, name)

    def _finish(
        self, state: AvengersState, plan: _VotePlan, vectors: list[list[float]] | None
    ) -> dict[str, Any]:
        ranks = [s["rank"] for s in plan.samples]
        if plan.answer_format != "semantic":
            result = voting.majority_vote(plan.keys, ranks)
        else:
            result = voting.semantic_vote(
                vectors or [], plan.texts, ranks, threshold=plan.settings.similarity_threshold
            )
        samples = plan.samples
        winner = samples[result.winner]
        content, tool_calls = winner["message"].content, list(winner["message"].tool_calls)
        answer_format = plan.answer_format
        # no two samples agree, or none is complete: vote field by field
        if plan.settings.structured_output and max(result.votes.values(), default=1) == 1:
            merged = _merge_structured(samples, plan.answer_format, ranks)
            if merged is not None:
                content, tool_calls = merged
                answer_format += "+fields"
        usage: UsageMetadata | None = None
        for sample in samples:
            if sample["message"].usage_metadata is not None:
                usage = add_usage(usage, sample["message"].usage_metadata)
        message = AIMessage(
            content=content,
            tool_calls=tool_calls,
            invalid_tool_calls=list(winner["message"].invalid_tool_calls),
            additional_kwargs=dict(winner["message"].additional_kwargs),
            response_metadata={
                "model_name": self.model_name,
                "expert": winner["expert"],
                "expert_response_metadata": dict(winner["message"].response_metadata),
            },
            usage_metadata=usage,
        )
        record = RoutingRecord(
            clusters=list(state["clusters"]),
            experts=list(state["experts"]),
            samples=[
                SampleRecord(expert=s["expert"], text=text, answer=key)
                for s, text, key in zip(samples, plan.texts, result.keys, strict=True)
            ],
            votes=dict(result.votes),
            confidence=result.confidence,
            failures=dict(state.get("failures", {})),
            cancelled=state.get("cancelled", 0),
            winner=winner["expert"],
            answer_format=answer_format,
            seed=state["seed"],
        )
        _emit(
            "vote",
            winner=record["winner"],
            answer=result.answer,
            votes=record["votes"],
            confidence=record["confidence"],
            answer_format=answer_format,
            cancelled=record["cancelled"],
        )
        return {"messages": [message], "avengers": record}

    def vote(self, state: AvengersState) -> dict[str, Any]:
        plan = self._plan_vote(state)
        semantic = plan.answer_format == "semantic"
        vectors = self.embeddings.embed_documents(plan.texts) if semantic else None
        return self._finish(state, plan, vectors)

    async def avote(self, state: AvengersState) -> dict[str, Any]:
        plan = await asyncio.to_thread(self._plan_vote, state)  # code votes run programs
        semantic = plan.answer_format == "semantic"
        vectors = await self.embeddings.aembed_documents(plan.texts) if semantic else None
        return self._finish(state, plan, vectors)


def _merge_structured(
    samples: Sequence[Sample], answer_format: str, ranks: Sequence[int]
) -> tuple[str, list[ToolCall]] | None:
    """Field-by-field vote over structured answers that disagree as wholes.

    Tool calls merge when every sample made exactly one call to the same tool (the
    structured-output tool); JSON answers merge over the samples that hold an object.
    Returns the answer's content and tool calls, or None when nothing can merge.
    """
    if answer_format == "tool_calls":
        calls = [s["message"].tool_calls for s in samples]
        if not all(len(c) == 1 for c in calls) or len({c[0]["name"] for c in calls}) != 1:
            return None
        merged = voting.merge_fields([c[0]["args"] for c in calls], ranks)
        return "", [{**calls[0][0], "args": merged}]
    if answer_format == "json":
        parsed = [
            (formats.parse_json_object(s["message"].text), rank)
            for s, rank in zip(samples, ranks, strict=True)
        ]
        objects = [(obj, rank) for obj, rank in parsed if obj is not None]
        if len(objects) < 2:
            return None
        merged = voting.merge_fields([o for o, _ in objects], [r for _, r in objects])
        return json.dumps(merged, ensure_ascii=False), []
    return None


@dataclass(frozen=True)
class _VotePlan:
    """What the vote node decided before any embedding call."""

    settings: AvengersSettings
    samples: list[Sample]
    texts: list[str]
    extractor: voting.Extractor | None
    keys: list[str | None]
    answer_format: str
    """What the samples vote on: an extractor's name, ``tool_calls`` or ``semantic``."""


def validate_experts(experts: Mapping[str, BaseChatModel | Expert]) -> None:
    """Refuse an empty pool, unnamed experts and experts that are not chat models."""
    validate_pool(experts)


def _embedded(question: list[float], context: list[float] | None) -> dict[str, Any]:
    """The ``embed`` node's update: the vectors, and last turn's samples cleared."""
    return {
        "embedding": normalise(question),
        "context_embedding": normalise(context) if context is not None else None,
        "samples": None,
        "failures": None,
        "cancelled": None,
    }


def _embed_cache_key(state: AvengersState) -> str:
    """The ``embed`` node's cache key: the routed texts (invalid input fails in the node)."""
    messages = state.get("messages", [])
    try:
        return json.dumps([routing.routing_text(messages), routing.routing_context(messages)])
    except InvalidInputError:
        return ""


def build_avengers_graph(
    experts: Mapping[str, BaseChatModel | Expert],
    embeddings: Embeddings,
    store: ClusterStore,
    *,
    top_k: int = 1,
    top_n: int = 2,
    samples: int = 3,
    beta: float = 3.0,
    context_weight: float = 0.25,
    temperature: float | None = 0.7,
    max_tokens: int | None = None,
    stop: Sequence[str] | None = None,
    seed: int | None = None,
    timeout: float | None = None,
    max_retries: int = 2,
    answer_format: str | Callable[[str], str | None] = "auto",
    similarity_threshold: float = 0.85,
    prior_strength: float = 0.0,
    quality_weight: float = 1.0,
    cost: routing.Cost = "seconds",
    expert_costs: Mapping[str, float] | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    tool_choice: str | dict[str, Any] | bool | None = None,
    parallel_tool_calls: bool | None = None,
    response_format: dict[str, Any] | None = None,
    structured_output: bool = False,
    early_stop: bool = False,
    retry_policy: RetryPolicy | None = None,
    model_name: str = "avengers",
) -> StateGraph[AvengersState, AvengersContext, InputState, OutputState]:
    """Build the uncompiled Avengers ``StateGraph`` (add nodes or edges, then compile).

    Args:
        experts: The pool: expert name to chat model. Names must match the store's.
        embeddings: The embeddings the store was calibrated with.
        store: The calibration (centroids and per-cluster expert statistics).
        top_k: Nearest clusters to weigh.
        top_n: Experts to sample.
        samples: Samples per selected expert; each is its own request with its own seed.
        beta: Softmax sharpness over cluster distances.
        context_weight: Weight of the previous human message's embedding blended into
            the question's when routing a conversation (0: the last message alone).
        temperature: Sampling temperature sent to experts (``None``: the expert's own).
        max_tokens: Generation cap sent to experts (``None``: the expert's own).
        stop: Stop sequences sent to experts.
        seed: Base seed for reproducible sampling; ``None`` draws one per question.
        timeout: Seconds an expert call may take before it counts as failed.
        max_retries: Retries of a transient expert error (LangGraph ``RetryPolicy``).
        answer_format: How to compare answers (``"auto"``, ``"number"``, ``"choice"``,
            ``"text"``, ``"code"``, ``"semantic"`` or a callable ``text -> key``).
        similarity_threshold: Cosine similarity for free-text answers to agree.
        prior_strength: Beta-prior smoothing of small clusters' accuracies.
        quality_weight: Avengers-Pro accuracy/cost trade-off (1 = accuracy only).
        cost: What the cost-aware ranking counts: ``"seconds"`` or ``"tokens"`` per
            answer as calibrated, or ``"compute"``, the tokens times ``expert_costs``.
        expert_costs: Expert name to its cost per generated token, in one unit for the
            pool (billions of parameters for local models, a price for paid ones);
            ``cost="compute"`` needs one for every expert.
        tools: Tools in OpenAI format, bound to every expert (``bind_tools``); the
            samples then vote on their tool calls (name and canonical arguments, a set
            for parallel calls) or their text, and the answer keeps the winner's calls.
        tool_choice: Passed to every expert's ``bind_tools`` as is.
        parallel_tool_calls: Passed to every expert's ``bind_tools`` when set.
        response_format: Sent to every expert (``{"type": "json_object"}``, a JSON
            schema); JSON answers then vote as canonical objects (``answer_format="json"``).
        structured_output: The answer is one object: when no two samples agree on
            the whole object (tool-call arguments or JSON), vote field by field.
        early_stop: Stop waiting for the samples still running (cancel them, in async
            runs) once they can no longer change the winning answer; the routing
            record counts them in ``cancelled``. Free text and code are never decided
            early.
        retry_policy: LangGraph retry policy of the ``embed``, ``locate_cluster`` and
            ``sample`` nodes (backoff, attempts); default: ``max_retries + 1`` attempts
            on :func:`is_transient_error`.
        model_name: Name reported as ``response_metadata["model_name"]``.

    Returns:
        The graph builder with nodes ``embed``, ``locate_cluster``, ``select_experts``,
        ``sample`` and ``vote``.
    """
    validate_experts(experts)
    costs = check_expert_costs(experts, expert_costs, cost)
    if max_retries < 0:
        raise InvalidInputError(f"max_retries must be >= 0, got {max_retries!r}.")
    settings = AvengersSettings(
        top_k=top_k,
        top_n=top_n,
        samples=samples,
        beta=beta,
        context_weight=context_weight,
        temperature=temperature,
        max_tokens=max_tokens,
        stop=tuple(stop) if stop else None,
        seed=seed,
        timeout=timeout,
        answer_format=answer_format,
        similarity_threshold=similarity_threshold,
        prior_strength=prior_strength,
        quality_weight=quality_weight,
        cost=cost,
        tools=tuple(dict(tool) for tool in tools) if tools else None,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel_tool_calls,
        response_format=response_format,
        structured_output=structured_output,
        early_stop=early_stop,
    )
    retry = retry_policy or RetryPolicy(max_attempts=max_retries + 1, retry_on=is_transient_error)
    nodes = _Nodes(
        experts,
        embeddings,
        store,
        settings,
        expert_costs=costs,
        max_attempts=retry.max_attempts,
        model_name=model_name,
    )
    builder = StateGraph(
        AvengersState,
        context_schema=AvengersContext,
        input_schema=InputState,
        output_schema=OutputState,
    )
    builder.add_node(
        "embed",
        RunnableLambda(nodes.embed, afunc=nodes.aembed, name="embed"),
        retry_policy=retry,
        cache_policy=CachePolicy(key_func=_embed_cache_key),
    )
    builder.add_node("locate_cluster", nodes.locate_cluster, retry_policy=retry)
    builder.add_node("select_experts", nodes.select_experts)
    builder.add_node(
        "sample",
        RunnableLambda(nodes.sample, afunc=nodes.asample, name="sample"),
        retry_policy=retry,
    )
    builder.add_node("vote", RunnableLambda(nodes.vote, afunc=nodes.avote, name="vote"))
    builder.add_edge(START, "embed")
    builder.add_edge("embed", "locate_cluster")
    builder.add_edge("locate_cluster", "select_experts")
    builder.add_conditional_edges("select_experts", nodes.dispatch, ["sample"])
    builder.add_edge("sample", "vote")
    builder.add_edge("vote", END)
    return builder


def create_avengers_graph(
    experts: Mapping[str, BaseChatModel | Expert],
    embeddings: Embeddings,
    store: ClusterStore,
    *,
    checkpointer: Checkpointer = None,
    cache: BaseCache[Any] | None = None,
    graph_store: BaseStore | None = None,
    name: str = "avengers",
    debug: bool = False,
    **options: Any,
) -> CompiledStateGraph[AvengersState, AvengersContext, InputState, OutputState]:
    """Build and compile the Avengers graph.

    Args:
        experts: The pool: expert name to chat model.
        embeddings: The embeddings the store was calibrated with.
        store: The calibration store.
        checkpointer: Forwarded to ``compile`` (conversation memory, subgraph use).
        cache: Forwarded to ``compile``; caches the ``embed`` node per question.
        graph_store: LangGraph's long-term memory store, forwarded to ``compile``
            as ``store`` (named apart from the cluster ``store``).
        name: Name of the compiled graph (its run name in traces).
        debug: Forwarded to ``compile``.
        **options: Routing and sampling options of :func:`build_avengers_graph`.

    Returns:
        The compiled graph: input ``{"messages": [...]}``, output the messages with the
        voted ``AIMessage`` appended and the routing record under ``"avengers"``.
    """
    options.setdefault("model_name", name)
    builder = build_avengers_graph(experts, embeddings, store, **options)
    return builder.compile(
        checkpointer=checkpointer, cache=cache, store=graph_store, name=name, debug=debug
    )
