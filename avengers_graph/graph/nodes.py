"""The node functions of the Avengers graph: thin shells over pure functions.

One question flows through five nodes (``ALGORITHM.md``, "Inference"), each a sync
and async pair of :class:`_Nodes` methods:

1. ``embed``: :func:`~avengers_graph.routing.routing_text` picks the question from
   ``messages`` (the last human message, a long one compacted) and
   :func:`~avengers_graph.routing.routing_context` the human message before it; the
   embeddings embed both, :func:`~avengers_graph.embeddings.normalise` L2-normalises
   them. The node also resets last turn's ``samples`` and ``failures``.
2. ``locate_cluster``: :func:`~avengers_graph.routing.blend` mixes the context into
   the question's vector (``context_weight``); the store
   (:class:`~avengers_graph.stores.base.CalibrationStore`) refuses other embeddings
   (``check_compatible``) and returns the ``top_k`` nearest centroids (``nearest``),
   which :func:`~avengers_graph.routing.match_clusters` weighs with
   ``softmax(-beta * distance)``.
3. ``select_experts``: the question's format is read from the run's options or
   detected (:func:`~avengers_graph.formats.detect`); the experts whose strategy
   serves it are eligible. With ``threshold`` (adaptive sampling),
   :func:`~avengers_graph.routing.plan_sampling` rates them
   (:func:`~avengers_graph.routing.reliability`), leaves out those at or below the
   format's chance rate and orders the samples of the ``top_n`` most reliable,
   cheapest informative first; otherwise :func:`~avengers_graph.routing.score_experts`
   and :func:`~avengers_graph.routing.select_experts` keep the ``top_n`` with
   ``samples`` each. The plan and each expert's vote weight go into the state.
4. ``sample``: one ``Send`` per sample of the round (:meth:`_Nodes.dispatch`), in
   parallel. :func:`~avengers_graph.experts.contract.contract` gives the expert's
   strategy's instruction, constraint and token budget for the question;
   :func:`~avengers_graph.experts.calls.invoke` (or ``ainvoke``) calls the expert's
   retry-free twin and gives up after ``timeout``; the contract reads the reply
   (a program runs in the sandbox). A transient error is retried by LangGraph's
   ``RetryPolicy`` (the one retry layer) up to ``max_retries``; any other failure is
   recorded, redacted, in ``failures``. The call runs with :func:`expert_config`: it
   is traced like any call, but no handler that streams to the caller (LangGraph's
   ``messages`` mode, ``astream_events``, ``astream_log``) sees it, so only the voted
   answer reaches a caller's token stream.
5. ``vote``: :meth:`_Nodes._keys` keys the samples by the question's format (tool
   calls by their calls, code by behaviour, free text by meaning);
   :func:`~avengers_graph.voting.weighted_vote` (or
   :func:`~avengers_graph.voting.majority_vote`,
   :func:`~avengers_graph.voting.semantic_vote`) picks the winner. While adaptive
   sampling is less sure than ``threshold`` and samples are left, the vote routes back
   to ``sample`` for the next round (:meth:`_Nodes.after_vote`); otherwise the winning
   ``AIMessage``, with the usage of every call, is appended to ``messages`` and the
   routing record written to ``avengers``. If every expert failed,
   :class:`AllExpertsFailedError` names them.

Nodes write custom stream events (``stream_mode="custom"``): ``{"avengers": "routing"}``
from ``select_experts``, one ``{"avengers": "sample"}`` per planned call (status ``ok``,
``failed`` or ``cancelled``) and ``{"avengers": "vote"}``. Each node reads the run's
options at call time (:func:`~avengers_graph.options.resolve_options`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.callbacks import BaseCallbackManager
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, ToolCall
from langchain_core.messages.ai import UsageMetadata, add_usage
from langchain_core.runnables import Runnable, RunnableConfig

# LangGraph's own messages handler is found the same way (langgraph.pregel._messages)
from langchain_core.tracers._streaming import _StreamingCallbackHandler
from langgraph.config import get_stream_writer
from langgraph.constants import TAG_NOSTREAM
from langgraph.graph import END
from langgraph.runtime import get_runtime
from langgraph.types import RetryPolicy, Send

from avengers_graph import formats, routing, voting
from avengers_graph.embeddings import embedding_model_name, normalise
from avengers_graph.errors import AllExpertsFailedError, ExpertTimeoutError, InvalidInputError
from avengers_graph.experts import calls as expert_calls
from avengers_graph.experts.contract import (
    PROGRAM_TIMEOUT,
    Contract,
    Expert,
    contract,
    validate_pool,
)
from avengers_graph.experts.tool_parsers import bound_tool_parameters
from avengers_graph.formats import Detected
from avengers_graph.formats.behaviour import behaviour_keys
from avengers_graph.graph.state import (
    AvengersState,
    ClusterRecord,
    ExpertRecord,
    RoutingRecord,
    Sample,
    SampleRecord,
    SampleTask,
)
from avengers_graph.options import AvengersOptions, resolve_options
from avengers_graph.redact import environment_secrets, redact, secrets_of
from avengers_graph.stores.base import CalibrationStore

_DEFAULT_RETRY_ON = RetryPolicy().retry_on
_DEFAULT_RETRY = RetryPolicy()


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


def _streams_to_caller(handler: Any) -> bool:
    """Whether a callback handler feeds a caller's stream (messages mode, stream events)."""
    return isinstance(handler, _StreamingCallbackHandler)


def expert_config(config: RunnableConfig) -> RunnableConfig:
    """The config of one expert call: traced like any call, streamed to no caller.

    The node's callback manager loses the handlers that turn a run's tokens into a
    caller's stream (LangGraph's ``messages`` stream mode, ``astream_events``,
    ``astream_log``: every ``_StreamingCallbackHandler``); tracers (LangSmith) and
    other handlers (usage counters) still see the call. The run is also tagged
    ``nostream``, which LangGraph's messages mode skips, for handlers attached further
    down. Without this, streaming the graph interleaved the tokens of the parallel
    samples ("L", "ad", "ies", "The", " is", ...) ahead of the voted answer, and a
    streaming handler made every expert stream its answer.
    """
    callbacks = config.get("callbacks")
    if isinstance(callbacks, BaseCallbackManager):
        callbacks = callbacks.copy()
        callbacks.handlers = [h for h in callbacks.handlers if not _streams_to_caller(h)]
        callbacks.inheritable_handlers = [
            h for h in callbacks.inheritable_handlers if not _streams_to_caller(h)
        ]
        callbacks.add_tags([TAG_NOSTREAM])
    elif isinstance(callbacks, list):
        callbacks = [h for h in callbacks if not _streams_to_caller(h)]
    tags = list(config.get("tags") or [])
    return {
        **config,
        "callbacks": callbacks,
        "tags": tags if TAG_NOSTREAM in tags else [*tags, TAG_NOSTREAM],
    }


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


def _tool_schemas(settings: AvengersOptions) -> voting.ToolSchemas | None:
    """The bound tools' parameter schemas (None: no tools, or built-ins we cannot check)."""
    schemas = bound_tool_parameters(settings.tools)
    return schemas if settings.tools and len(schemas) == len(settings.tools) else None


def _sample_seed(base: int, rank: int, index: int, samples: int) -> int:
    return base + rank * samples + index


def _extractor_name(extractor: voting.Extractor) -> str:
    name = getattr(extractor, "__name__", "custom")
    return name.removeprefix("extract_")


_MAX_OPEN_TURNS = 1024
"""Tallies kept for turns whose vote has not run (runs that died are evicted)."""


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

    def __init__(self, planned: int, settings: AvengersOptions) -> None:
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
        store: CalibrationStore,
        settings: AvengersOptions,
        *,
        expert_costs: Mapping[str, float],
        max_attempts: int,
        model_name: str,
    ) -> None:
        self.pool = validate_pool(experts)
        """The experts: a model and the strategy it answers with."""
        self.experts = {name: expert_calls.retry_free(e.model) for name, e in self.pool.items()}
        """What the graph calls: the experts' retry-free twins (one retry layer)."""
        self.secrets = [*secrets_of(e.model for e in self.pool.values()), *environment_secrets()]
        """Values never to repeat in ``failures`` (the experts' keys, ``AVENGERS_API_KEYS``)."""
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
        # turn id -> the run's deadline (time.monotonic()), dropped like the tallies
        self._deadlines: dict[str, float] = {}

    def settings(self) -> AvengersOptions:
        runtime = get_runtime()
        return resolve_options(self.defaults, runtime.context if runtime else None)

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
    def _question(self, settings: AvengersOptions, messages: Sequence[Any]) -> Detected:
        """The question's format: what the run says, else what its text calls for."""
        if settings.tools:
            return Detected("tools")
        if settings.response_format is not None or settings.structured_output:
            return Detected("json")
        if not isinstance(settings.answer_format, str):
            return Detected("custom")
        detected = formats.detect(routing.question_text(messages))
        if settings.answer_format == "auto":
            return detected
        name = "free" if settings.answer_format == "semantic" else settings.answer_format
        return Detected(name, detected.options if name == detected.format else ())

    def _serves(self, name: str, question: str) -> bool:
        fmt = formats.FORMATS.get(question)
        strategy = self.pool[name].strategy
        return fmt.serves(strategy) if fmt is not None else strategy != "program"

    def select_experts(self, state: AvengersState) -> dict[str, Any]:
        settings = self.settings()
        matches = [routing.ClusterMatch(**c) for c in state["clusters"]]
        question = self._question(settings, state["messages"])
        eligible = [name for name in self.experts if self._serves(name, question.format)]
        unserved = [name for name in self.experts if name not in eligible]
        if not eligible:  # no strategy serves it: every expert answers the question as asked
            eligible, unserved = list(self.experts), []
        stats = self.store.stats()
        keyed = voting.votes_by_key(question.format)
        chance = voting.chance_rate(question)
        if settings.threshold is not None and keyed:
            plan = settings.sampling_plan(
                matches, stats, eligible, chance=chance, unit_costs=self.expert_costs
            )
            order = plan.order
            names = list(plan.evidence)
            weights = settings.vote_weights(plan)
            scores = {name: plan.reliability[name] for name in names}
            excluded = unserved + plan.excluded
            round_end = min(settings.round_size, len(order))
        else:
            ranked = routing.score_experts(
                matches,
                stats,
                eligible,
                prior_strength=settings.prior_strength,
                quality_weight=settings.quality_weight,
                cost=settings.cost,
                unit_costs=self.expert_costs,
            )
            chosen = routing.select_experts(ranked, settings.top_n)
            names = [s.name for s in chosen]
            scores = {s.name: s.score for s in chosen}
            order = [name for name in names for _ in range(settings.samples)]
            weights = dict.fromkeys(names, 1.0)
            if settings.weighted and keyed:
                rated = routing.reliability(
                    matches, stats, names, prior_strength=settings.reliability_prior
                )
                weights = {name: routing.evidence(rated[name], chance) for name in names}
            excluded = unserved
            round_end = len(order)
        seed = (
            settings.seed if settings.seed is not None else random.SystemRandom().randrange(2**31)
        )
        experts = [
            ExpertRecord(
                name=name,
                score=scores[name],
                strategy=self.pool[name].strategy,
                weight=round(weights[name], 4),
            )
            for name in names
        ]
        _emit("routing", clusters=state["clusters"], experts=experts, seed=seed)
        turn = uuid.uuid4().hex
        self._deadline(turn, settings)  # the run's clock starts
        return {
            "experts": experts,
            "question_format": question.format,
            "options": list(question.options),
            "plan": order,
            "weights": weights,
            "excluded": excluded,
            "round_start": 0,
            "round_end": round_end,
            "seed": seed,
            "turn": turn,
        }

    def dispatch(self, state: AvengersState) -> list[Send] | str:
        """Send the samples of the current round (``plan[round_start:round_end]``)."""
        settings = self.settings()
        seed = state["seed"]
        plan = state["plan"]
        rank = {record["name"]: i for i, record in enumerate(state["experts"])}
        start, end = state["round_start"], state["round_end"]
        sends = []
        for position in range(start, end):
            name = plan[position]
            index = plan[:position].count(name)
            sends.append(
                Send(
                    "sample",
                    SampleTask(
                        expert=name,
                        rank=rank[name],
                        index=index,
                        seed=_sample_seed(seed, rank[name], index, settings.samples),
                        messages=list(state["messages"]),
                        turn=f"{state['turn']}/{start}",
                        planned=end - start,
                        answer_format=state["question_format"],
                    ),
                )
            )
        return sends

    # sample -------------------------------------------------------------------------
    def _contract(self, task: SampleTask) -> Contract | None:
        """The prompt contract of the task's expert for its question (None: as asked)."""
        fmt = formats.FORMATS.get(task["answer_format"])
        expert = self.pool[task["expert"]]
        if fmt is None or not fmt.serves(expert.strategy):
            return None
        terms = contract(
            task["messages"],
            expert.strategy,
            answer_format=task["answer_format"],
            constrain=expert.constrain,
        )
        return terms if terms.instruction is not None else None

    def _call_kwargs(
        self, settings: AvengersOptions, task: SampleTask, terms: Contract | None
    ) -> dict[str, Any]:
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
        if terms is not None:  # the strategy's budget (under the run's cap) and constraint
            kwargs.update(terms.options(settings.max_tokens))
        return kwargs

    @staticmethod
    def _answered(
        message: Any,
        terms: Contract | None,
        settings: AvengersOptions,
        started: float,
        deadline: float,
    ) -> Any:
        """The reply as its strategy's answer (a program run, a direct answer unwrapped).

        A program runs within what is left of the call's ``timeout`` and of the run
        (``deadline``), at most ``PROGRAM_TIMEOUT``; with nothing left it does not run.
        """
        if terms is None or not isinstance(message, AIMessage):
            return message
        call_left = settings.timeout - (time.perf_counter() - started)
        ends = min(time.monotonic() + call_left, deadline)
        return terms.answer(message, timeout=PROGRAM_TIMEOUT, deadline=ends)

    def _turn(self, settings: AvengersOptions, task: SampleTask) -> _Turn | None:
        """The turn's shared tally when ``early_stop`` is on (created by its first worker).

        Counting votes cannot decide a weighted vote early; adaptive sampling
        (``threshold``) is how weighted votes stop early.
        """
        if not settings.early_stop or (settings.weighted and settings.threshold is None):
            return None
        with self._turns_lock:
            turn = self._turns.get(task["turn"])
            if turn is None:
                while len(self._turns) >= _MAX_OPEN_TURNS:
                    del self._turns[next(iter(self._turns))]  # the oldest
                turn = _Turn(task["planned"], settings)
                self._turns[task["turn"]] = turn
            return turn

    def _close_turns(self, turn: str) -> None:
        """Forget the tallies of every round of a turn."""
        with self._turns_lock:
            for key in [key for key in self._turns if key.split("/", 1)[0] == turn]:
                del self._turns[key]
            self._deadlines.pop(turn, None)

    # the run's deadline (run_timeout) -------------------------------------------------
    def _deadline(self, turn: str, settings: AvengersOptions) -> float:
        """The run's deadline, a :func:`time.monotonic` instant.

        ``select_experts`` fixes it when it opens the turn (``turn`` may name a round,
        ``"<turn>/<start>"``); a run resumed in another process, whose deadline this
        one never saw, gets ``run_timeout`` from its first node here.
        """
        key = turn.split("/", 1)[0]
        with self._turns_lock:
            deadline = self._deadlines.get(key)
            if deadline is None:
                while len(self._deadlines) >= _MAX_OPEN_TURNS:
                    del self._deadlines[next(iter(self._deadlines))]  # the oldest
                deadline = self._deadlines[key] = time.monotonic() + settings.run_timeout
            return deadline

    def _time_left(self, state: AvengersState, settings: AvengersOptions) -> float:
        """Seconds until the run's deadline (negative once it has passed)."""
        return self._deadline(state.get("turn", ""), settings) - time.monotonic()

    def _code_deadline(self, state: AvengersState, settings: AvengersOptions) -> float:
        """When the vote's programs must end: one call's ``timeout``, within the run's."""
        run_deadline = self._deadline(state.get("turn", ""), settings)
        return min(time.monotonic() + settings.timeout, run_deadline)

    def _retry_fits(self, task: SampleTask, settings: AvengersOptions, attempt: int) -> bool:
        """Whether LangGraph's backoff before the next attempt ends before the deadline.

        The backoff is the default ``RetryPolicy``'s (``initial_interval * 2 **
        (attempt - 1)``, at most ``max_interval``, plus up to 1 s of jitter); a graph
        built with a ``retry_policy`` of its own may wait another interval.
        """
        policy = _DEFAULT_RETRY
        backoff = min(
            policy.max_interval, policy.initial_interval * policy.backoff_factor ** (attempt - 1)
        ) + (1.0 if policy.jitter else 0.0)
        return self._deadline(task["turn"], settings) - time.monotonic() > backoff

    @staticmethod
    def _pending_at_deadline(state: AvengersState, settings: AvengersOptions) -> str | None:
        """The error of a run that reached its deadline with no sample (None: none pending).

        Pending: the experts whose calls the time ended, and those of rounds not drawn.
        """
        failures = dict(state.get("failures", {}))
        pending = {
            name: error
            for name, error in failures.items()
            if error.startswith(ExpertTimeoutError.__name__)
        }
        for name in state.get("plan", [])[state.get("round_end", 0) :]:
            pending.setdefault(name, "not drawn")
        if not pending:
            return None
        waited = "; ".join(f"{name} ({error})" for name, error in pending.items())
        failed = "; ".join(f"{n}: {e}" for n, e in failures.items() if n not in pending)
        return (
            f"No answer within the run's deadline (run_timeout={settings.run_timeout:g} s). "
            f"Still pending: {waited}." + (f" Failed: {failed}." if failed else "") + " Raise "
            "run_timeout (or timeout), or check that those experts' servers answer."
        )

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

    def _failed(
        self, task: SampleTask, exc: Exception, turn: _Turn | None, settings: AvengersOptions
    ) -> dict[str, Any]:
        if isinstance(exc, ExpertTimeoutError) and turn is not None and turn.decided:
            return self._cancelled(task, turn)  # decided as the time ran out
        runtime = get_runtime()
        attempt = runtime.execution_info.node_attempt if runtime.execution_info else 1
        retry = attempt <= settings.max_retries and attempt < self.max_attempts
        if retry and is_transient_error(exc) and self._retry_fits(task, settings, attempt):
            expert_calls.redact_exception(exc, self.secrets)  # LangGraph logs the retry
            raise exc  # LangGraph's RetryPolicy runs the task again
        error = redact(f"{type(exc).__name__}: {exc}", self.secrets)
        if turn is not None:
            turn.report(None)
        _emit("sample", expert=task["expert"], index=task["index"], status="failed", error=error)
        return {"failures": {task["expert"]: error}}

    @staticmethod
    def _cancelled(task: SampleTask, turn: _Turn) -> dict[str, Any]:
        turn.report(None)
        _emit("sample", expert=task["expert"], index=task["index"], status="cancelled")
        return {"cancelled": 1}

    def _expert(self, settings: AvengersOptions, name: str) -> Runnable[Any, Any]:
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
        deadline = self._deadline(task["turn"], settings)
        wake = None
        if turn is not None:  # the wait also ends once the vote is decided
            wake = threading.Event()
            turn.on_decided(wake.set)
        try:
            terms = self._contract(task)
            answer = expert_calls.invoke(
                self._expert(settings, task["expert"]),
                terms.messages(task["messages"]) if terms else task["messages"],
                expert_config(config),
                self._call_kwargs(settings, task, terms),
                client=self.experts[task["expert"]],
                timeout=settings.timeout,
                wake=wake,
                deadline=deadline,
            )
            if answer is expert_calls.INTERRUPTED and turn is not None:
                return self._cancelled(task, turn)
            answer = self._answered(answer, terms, settings, started, deadline)
            return self._sampled(task, answer, started, turn)
        except Exception as exc:  # noqa: BLE001 - recorded as the expert's failure or retried
            return self._failed(task, exc, turn, settings)

    async def asample(self, task: SampleTask, config: RunnableConfig) -> dict[str, Any]:
        settings = self.settings()
        turn = self._turn(settings, task)
        if turn is not None and turn.decided:
            return self._cancelled(task, turn)
        started = time.perf_counter()
        deadline = self._deadline(task["turn"], settings)
        wake: asyncio.Future[None] | None = None
        if turn is not None:  # the call is cancelled once the vote is decided
            loop = asyncio.get_running_loop()
            wake = loop.create_future()
            turn.on_decided(functools.partial(loop.call_soon_threadsafe, _resolve, wake))
        try:
            terms = self._contract(task)
            answer = await expert_calls.ainvoke(
                self._expert(settings, task["expert"]),
                terms.messages(task["messages"]) if terms else task["messages"],
                expert_config(config),
                self._call_kwargs(settings, task, terms),
                timeout=settings.timeout,
                wake=wake,
                deadline=deadline,
            )
            if answer is expert_calls.INTERRUPTED and turn is not None:
                return self._cancelled(task, turn)
            answer = await asyncio.to_thread(
                self._answered, answer, terms, settings, started, deadline
            )
            return self._sampled(task, answer, started, turn)
        except Exception as exc:  # noqa: BLE001 - recorded as the expert's failure or retried
            return self._failed(task, exc, turn, settings)

    # vote ---------------------------------------------------------------------------
    def _keys(
        self,
        state: AvengersState,
        settings: AvengersOptions,
        samples: list[Sample],
        texts: list[str],
    ) -> tuple[list[str | None], str, bool]:
        """Every sample's key, the name of what they vote on, and whether keys compare.

        Tool calls vote as calls; a question of a keyed format votes by its format's key
        (code by behaviour when the programs run); free text by the replies' form, else
        by meaning (``semantic``: no keys).
        """
        question = state.get("question_format", "free")
        if any(s["message"].tool_calls for s in samples):
            # each sample votes for its set of tool calls, or for its text answer;
            # calls that the bound tools would refuse abstain
            schemas = _tool_schemas(settings)
            tool_keys: list[str | None] = [
                voting.tool_vote_key(s["message"].tool_calls, text, schemas)
                for s, text in zip(samples, texts, strict=True)
            ]
            return tool_keys, "tool_calls", True
        if question == "custom" and callable(settings.answer_format):
            extract = settings.answer_format
            return [extract(text) for text in texts], _extractor_name(extract), True
        fmt = formats.FORMATS.get(question)
        if fmt is not None and not fmt.votes_by_meaning:
            if question == "code":  # run the programs on the same calls
                keys = behaviour_keys(
                    texts,
                    routing.question_text(state["messages"]),
                    deadline=self._code_deadline(state, settings),  # the call's budget
                )
                if any(key is not None and key.startswith("behaviour:") for key in keys):
                    return keys, "code:behaviour", True
            detected = Detected(question, tuple(state.get("options", [])))
            keys = [fmt.key(text, detected) for text in texts]
            if any(key is not None for key in keys):
                return keys, question, True
        extractor = voting.resolve_extractor(texts, "auto")  # free text: the replies' form
        if extractor is formats.extract_code:
            extractor = None  # code in a free-text answer is not run: vote on meaning
        keys = [extractor(text) for text in texts] if extractor is not None else []
        if extractor is None or not any(key is not None for key in keys):
            return [], "semantic", False
        return keys, _extractor_name(extractor), True

    def _plan_vote(self, state: AvengersState) -> _VotePlan | None:
        """What the samples so far vote on; None when every one failed and a round is left."""
        samples = sorted(state.get("samples", []), key=lambda s: (s["rank"], s["index"]))
        more = state.get("round_end", 0) < len(state.get("plan", []))
        if not samples:
            expired = self._time_left(state, self.settings()) <= 0
            if more and not expired:
                return None
            if expired and (pending := self._pending_at_deadline(state, self.settings())):
                self._close_turns(state.get("turn", ""))
                raise ExpertTimeoutError(pending)
            failures = dict(state.get("failures", {}))
            for expert in state.get("experts", []):
                failures.setdefault(expert["name"], "returned no sample")
            raise AllExpertsFailedError(failures)
        settings = self.settings()
        texts = [str(s["message"].text) for s in samples]
        keys, name, keyed = self._keys(state, settings, samples, texts)
        weights = voting.repeated_weights(
            [s["expert"] for s in samples], state.get("weights", {}), settings.discount
        )
        detected = Detected(state.get("question_format", "free"), tuple(state.get("options", [])))
        return _VotePlan(
            settings,
            samples,
            texts,
            keys,
            name if keyed else "semantic",
            weights,
            voting.chance_rate(detected),
        )

    def _result(self, plan: _VotePlan, vectors: list[list[float]] | None) -> voting.VoteResult:
        ranks = [s["rank"] for s in plan.samples]
        if plan.answer_format == "semantic":
            return voting.semantic_vote(
                vectors or [], plan.texts, ranks, threshold=plan.settings.similarity_threshold
            )
        if _weighed(plan):
            return voting.weighted_vote(plan.keys, plan.weights, ranks, chance=plan.chance)
        return voting.majority_vote(plan.keys, ranks)

    def _next_round(
        self, state: AvengersState, vote: _VotePlan, result: voting.VoteResult
    ) -> dict[str, Any] | None:
        """The next round's positions, if adaptive sampling is not sure yet and can go on.

        It stops once the vote is ``threshold`` sure, or once the samples still planned
        could not change its winner even if each came and voted alike
        (:func:`voting.is_decided`).
        """
        settings = self.settings()
        end, plan = state.get("round_end", 0), state.get("plan", [])
        if settings.threshold is None or end >= len(plan) or state.get("round_start") is None:
            return None
        if self._time_left(state, settings) <= 0:  # the run's deadline: vote on what it has
            return None
        if result.votes and result.confidence >= settings.threshold:
            return None
        if vote.answer_format != "semantic":  # meanings are not keys: nothing to count
            drawn = [s["expert"] for s in vote.samples]
            if _weighed(vote):
                weights = voting.repeated_weights(
                    drawn + plan[end:], state.get("weights", {}), settings.discount
                )
                decided = voting.is_decided(
                    vote.keys, sum(weights[len(drawn) :]), weights=vote.weights
                )
            else:
                decided = voting.is_decided(vote.keys, len(plan) - end)
            if decided:
                return None
        return {"round_start": end, "round_end": min(end + settings.round_size, len(plan))}

    def _finish(
        self,
        state: AvengersState,
        plan: _VotePlan,
        result: voting.VoteResult,
    ) -> dict[str, Any]:
        if "turn" in state:
            self._close_turns(state["turn"])
        ranks = [s["rank"] for s in plan.samples]
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
        plan_length = len(state.get("plan", []))
        round_size = max(plan.settings.round_size, 1)
        record = RoutingRecord(
            clusters=list(state["clusters"]),
            experts=list(state["experts"]),
            samples=[
                SampleRecord(expert=s["expert"], text=text, answer=key)
                for s, text, key in zip(samples, plan.texts, result.keys, strict=True)
            ],
            votes=dict(result.votes),
            confidence=self._confidence(state, plan, result),
            posterior=result.confidence,
            failures=dict(state.get("failures", {})),
            cancelled=state.get("cancelled", 0) + max(plan_length - state.get("round_end", 0), 0),
            winner=winner["expert"],
            answer_format=answer_format,
            question_format=state.get("question_format", "free"),
            excluded=list(state.get("excluded", [])),
            rounds=(
                -(-state.get("round_end", 0) // round_size)
                if plan.settings.threshold is not None and plan_length
                else 1
            ),
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
        return {"messages": [message], "avengers": record, "more": False}

    def _confidence(
        self, state: AvengersState, plan: _VotePlan, result: voting.VoteResult
    ) -> float:
        """The answer's confidence: the store's calibrated map of the vote's posterior.

        Where the samples voted by weight on the keys of a format that votes by key
        (what calibration fitted the map on, :mod:`avengers_graph.confidence`) and the
        store holds a map; else the vote's own confidence.
        """
        fitted = self.store.info().confidence
        if (
            fitted is None
            or not result.votes
            or not _weighed(plan)
            or plan.answer_format == "semantic"
            or not voting.votes_by_key(state.get("question_format", "free"))
        ):
            return result.confidence
        return fitted(result.confidence)

    def _decide(
        self, state: AvengersState, plan: _VotePlan | None, vectors: list[list[float]] | None
    ) -> dict[str, Any]:
        if plan is None:  # every sample so far failed: draw the next round
            end = state.get("round_end", 0)
            size = self.settings().round_size
            return {
                "round_start": end,
                "round_end": min(end + size, len(state["plan"])),
                "more": True,
            }
        result = self._result(plan, vectors)
        following = self._next_round(state, plan, result)
        if following is not None:
            return {**following, "more": True}
        return self._finish(state, plan, result)

    def vote(self, state: AvengersState) -> dict[str, Any]:
        plan = self._plan_vote(state)
        semantic = plan is not None and plan.answer_format == "semantic"
        vectors = self.embeddings.embed_documents(plan.texts) if plan and semantic else None
        return self._decide(state, plan, vectors)

    async def avote(self, state: AvengersState) -> dict[str, Any]:
        plan = await asyncio.to_thread(self._plan_vote, state)  # code votes run programs
        semantic = plan is not None and plan.answer_format == "semantic"
        vectors = await self.embeddings.aembed_documents(plan.texts) if plan and semantic else None
        return self._decide(state, plan, vectors)

    def after_vote(self, state: AvengersState) -> list[Send] | str:
        """The next round of samples while adaptive sampling is unsure, else the end."""
        return self.dispatch(state) if state.get("more") else END


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

    settings: AvengersOptions
    samples: list[Sample]
    texts: list[str]
    keys: list[str | None]
    answer_format: str
    """What the samples vote on: a format's or extractor's name, ``tool_calls``,
    ``code:behaviour`` or ``semantic``."""
    weights: list[float]
    """Each sample's vote weight (1 each when votes are not weighted)."""
    chance: float
    """The question format's chance rate (open answers: ``voting.OPEN_CHANCE``)."""


def _weighed(plan: _VotePlan) -> bool:
    """Whether the samples vote by weight (:func:`voting.weighted_vote`), else by count."""
    weighed = plan.settings.weighted or plan.settings.threshold is not None
    return weighed and plan.answer_format not in ("tool_calls", "json")


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
