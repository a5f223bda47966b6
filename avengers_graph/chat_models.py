"""``ChatAvengers``: the Avengers ensemble as a drop-in LangChain chat model.

``ChatAvengers`` is a facade over the graph of :mod:`avengers_graph.graph`. Its
routing and sampling fields are those of :class:`~avengers_graph.options.AvengersOptions`
(inherited, not repeated); they are read at call time, as ``ChatOllama._chat_params``
does. One call:

1. :meth:`ChatAvengers._run_context` merges the chat model's current option fields
   with the call's options (``stop``, ``temperature``, ``top_n``...) into an
   :class:`~avengers_graph.options.AvengersContext`, validated (an unknown option
   names the closest valid one).
2. :func:`_child_callbacks` builds the callback manager of the graph run from the
   chat model's run manager, so the graph run and every expert call nest under the
   chat model's run in LangSmith. Expert runs are tagged ``nostream`` so a parent
   graph streaming ``messages`` sees only the voted answer, not every sample.
3. The compiled graph (:func:`~avengers_graph.graph.create_avengers_graph`), which
   holds only the construction-time dependencies (experts, embeddings, store, expert
   costs, name; rebuilt when one of them changes), runs with that context: it embeds
   the question, routes it, samples the experts in parallel and votes.
4. :meth:`ChatAvengers._to_result` returns the winning message with
   ``response_metadata["model_name"]`` (the ensemble's name), ``response_metadata
   ["expert_models"]`` (each expert model that answered, with its calls and tokens,
   gathered by :class:`_ExpertUsage` from the expert runs), ``response_metadata
   ["avengers"]`` (the routing record) and ``usage_metadata`` summed over every
   expert call.

Pricing: LangSmith prices each expert call, a run nested under the chat model's with
its own ``ls_model_name`` (the served model) and usage; the chat model's own run names
the ensemble (``ls_model_name``, unpriced, so its summed usage is not counted twice)
and lists the pool's models in ``ls_expert_models``. ``expert_models`` gives the same
split to code that prices a call from its message.

Token counts (``get_num_tokens``, ``get_num_tokens_from_messages``, so
``trim_messages(token_counter=llm)`` trims) come from the experts' own tokenizers
(llama.cpp's ``/tokenize``), else from an estimate of 4 characters per token
(:class:`~avengers_graph.experts.tokens.TokenCounter`).

``stream``/``astream`` run the graph in LangGraph's ``custom`` and ``values`` stream
modes and emit the voted answer as one chunk once the vote is decided; they stop
waiting for (and, async, cancel) the samples that can no longer change the winner
(``early_stop``, on by default when streaming). No expert's tokens reach the caller's
stream (the graph hides expert calls from streaming handlers). Inside
:func:`progress_to`, each progress event of the graph (routing, each sample's status,
the vote; without the samples' texts) also goes to a callback as it happens:
``avengers serve`` shows them and counts them in its metrics.

Feedback: the routing records of the last :data:`FEEDBACK_RUNS` answers are kept, by
the answer's ``id`` (and, for ``invoke``, the run id too).
:meth:`ChatAvengers.record_feedback` grades the experts' samples against the user's
verdict (:func:`~avengers_graph.stores.base.grade_feedback`) and counts the result into
the statistics of the clusters that routed the question, in the store, so the next
questions are routed on it; a verdict is recorded once per answer.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from operator import itemgetter
from typing import Any, Literal, cast
from uuid import UUID

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    BaseCallbackHandler,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.output_parsers import (
    BaseOutputParser,
    JsonOutputKeyToolsParser,
    JsonOutputParser,
    PydanticOutputParser,
    PydanticToolsParser,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult, LLMResult
from langchain_core.runnables import Runnable, RunnableConfig, RunnableMap, RunnablePassthrough
from langchain_core.runnables.config import var_child_runnable_config
from langchain_core.tools import BaseTool
from langchain_core.tracers import BaseTracer
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from langchain_core.utils.utils import LC_ID_PREFIX
from langgraph.constants import TAG_NOSTREAM
from langgraph.graph.state import CompiledStateGraph
from pydantic import ConfigDict, Field, PrivateAttr, field_validator, model_validator

from avengers_graph.embeddings import LocalEmbeddings
from avengers_graph.errors import FeedbackConflictError, InvalidInputError, UnknownRunError
from avengers_graph.experts.contract import Expert, as_expert
from avengers_graph.experts.tokens import TokenCounter
from avengers_graph.experts.tool_parsers import as_generation_chunk
from avengers_graph.graph import check_expert_costs, create_avengers_graph, validate_experts
from avengers_graph.options import AvengersContext, AvengersOptions
from avengers_graph.stores.base import (
    CalibrationStore,
    ExpertStats,
    Feedback,
    FeedbackStore,
    grade_feedback,
)

FEEDBACK_RUNS = 1024
"""Routing records kept for :meth:`ChatAvengers.record_feedback`: the most recent answers'."""


@dataclass(frozen=True)
class FeedbackResult:
    """What one verdict on an answer changed."""

    answer_id: str
    """The answer the verdict is about, as it was named."""
    correct: bool
    """The verdict."""
    clusters: list[int] = field(default_factory=list)
    """The clusters that routed the question, whose statistics the verdict updates."""
    graded: dict[str, Feedback] = field(default_factory=dict)
    """Expert to the outcomes the verdict gives its samples (in each of ``clusters``)."""
    updated: dict[int, dict[str, ExpertStats]] = field(default_factory=dict)
    """The statistics after the update, ``{cluster: {expert: ExpertStats}}``."""
    duplicate: bool = False
    """The same verdict had been recorded for this run: nothing was written again."""


@dataclass
class _Answered:
    """A remembered run: its routing record, and the verdict once one was recorded."""

    record: dict[str, Any]
    feedback: FeedbackResult | None = None


def run_keys(answer_id: UUID | str) -> list[UUID | str]:
    """The keys an answer may be remembered by, from what names it.

    Accepted: the answer's ``id`` (``message.id``), the run's UUID (or its text, or
    ``lc_run--<uuid>``), or a completion id of ``avengers serve`` (``chatcmpl-<hex>``).

    Raises:
        InvalidInputError: Nothing that names an answer.
    """
    if isinstance(answer_id, UUID):
        return [answer_id, str(answer_id)]
    if not isinstance(answer_id, str) or not answer_id.strip():
        raise InvalidInputError(
            f"{answer_id!r} does not name an answer: pass the answer's `id`, its run's UUID "
            "or the server's completion id (chatcmpl-...)."
        )
    text = answer_id.strip()
    keys: list[UUID | str] = [text]
    for prefix in (f"{LC_ID_PREFIX}-", "chatcmpl-", "run-"):
        text = text.removeprefix(prefix)
    try:
        parsed = UUID(text)
    except ValueError:
        return keys
    return [*keys, parsed, str(parsed)]


def winning_key(record: Mapping[str, Any]) -> str | None:
    """The key of the answer a routing record returned, or None when no sample's key is it.

    The winner's sample is the best-ranked one with the most-voted key among the winner
    expert's samples (ties and ranks as :func:`~avengers_graph.voting.majority_vote`
    breaks them). An answer voted field by field (``answer_format`` ``...+fields``) is no
    sample's answer.
    """
    if str(record.get("answer_format", "")).endswith("+fields"):
        return None
    votes = record.get("votes", {})
    keys = [
        sample["answer"]
        for sample in record.get("samples", [])
        if sample["expert"] == record.get("winner") and sample["answer"] is not None
    ]
    if not keys:
        return None
    best: str = max(dict.fromkeys(keys), key=lambda key: float(votes.get(key, 0.0)))
    return best


def _progress(data: Any) -> dict[str, Any] | None:
    """A graph's custom stream event as a progress event (no sample text), or None."""
    if not isinstance(data, Mapping) or "avengers" not in data:
        return None
    return {key: value for key, value in data.items() if key not in ("text", "tool_calls")}


_PROGRESS: ContextVar[Callable[[dict[str, Any]], None] | None] = ContextVar(
    "avengers_progress", default=None
)


@contextmanager
def progress_to(callback: Callable[[dict[str, Any]], None]) -> Iterator[None]:
    """Send the progress events of the ChatAvengers streams run in the block to ``callback``.

    ``stream``/``astream`` (and ``invoke`` with ``streaming=True``) started inside the
    block, in the same thread or task, call ``callback`` with each of the graph's
    custom stream events as it happens: ``{"avengers": "routing", "clusters",
    "experts", "seed"}``, one ``{"avengers": "sample", "expert", "index", "status",
    ...}`` per planned call (without the sample's text) and ``{"avengers": "vote",
    "winner", "answer", "votes", "confidence", "cancelled", ...}``.
    """
    token = _PROGRESS.set(callback)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def _child_callbacks(
    run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None,
) -> CallbackManager | AsyncCallbackManager | None:
    """A callback manager whose runs are children of the chat model's run.

    An LLM run manager has no ``get_child()``; this does what ``ParentRunManager``
    does, from the run manager's inheritable tags and metadata and its *tracers*
    (LangSmith and other ``BaseTracer`` handlers), so traces show the graph and every
    expert call under the chat model's run. Other handlers are not passed on: to
    them the ensemble is one chat model call (one ``on_chat_model_start``, its
    summed usage counted once), as a drop-in model must be.
    """
    if run_manager is None:
        return None
    manager_cls = (
        AsyncCallbackManager
        if isinstance(run_manager, AsyncCallbackManagerForLLMRun)
        else CallbackManager
    )
    manager = manager_cls(handlers=[], parent_run_id=run_manager.run_id)
    manager.set_handlers([h for h in run_manager.inheritable_handlers if isinstance(h, BaseTracer)])
    manager.add_tags(run_manager.inheritable_tags)
    manager.add_tags([TAG_NOSTREAM])
    manager.add_metadata(run_manager.inheritable_metadata)
    return manager


_USAGE_KEYS = ("input_tokens", "output_tokens", "total_tokens")


class _ExpertUsage(BaseCallbackHandler):
    """The expert calls of one ``ChatAvengers`` call, by the model that answered.

    Added to the graph run's callbacks; every expert call that returns adds its
    tokens under the model name its server reported (else the client's).
    """

    run_inline = True  # async runs: called on the loop, in order

    def __init__(self) -> None:
        self.models: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()

    def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        """Count the call's tokens under its model's name."""
        del kwargs
        fallback = (response.llm_output or {}).get("model_name")
        for generations in response.generations:
            for generation in generations:
                message = getattr(generation, "message", None)
                if not isinstance(message, AIMessage):
                    continue
                name = str(message.response_metadata.get("model_name") or fallback or "unknown")
                usage: Mapping[str, Any] = message.usage_metadata or {}
                with self._lock:
                    entry = self.models.setdefault(name, dict.fromkeys(("calls", *_USAGE_KEYS), 0))
                    entry["calls"] += 1
                    for key in _USAGE_KEYS:
                        entry[key] += int(usage.get(key) or 0)


def _model_name(model: BaseChatModel) -> str:
    """The model name a chat model sends (``model_name`` or ``model``), else its type."""
    for attribute in ("model_name", "model"):
        value = getattr(model, attribute, None)
        if isinstance(value, str) and value:
            return value
    return type(model).__name__


class ChatAvengers(BaseChatModel, AvengersOptions):
    """An ensemble of chat models routed by question cluster and combined by vote.

    Setup:
        Calibrate a store once with :func:`avengers_graph.calibrate`, then build the
        chat model from the same experts and embeddings.

    Example:
        .. code-block:: python

            from avengers_graph import ChatAvengers, ClusterStore

            llm = ChatAvengers(experts=experts, store=ClusterStore(path="store"))
            msg = llm.invoke("What is 17 * 23?")
            msg.response_metadata["avengers"]["votes"]  # {'391': 5, '381': 1}

    Options: the routing and sampling fields (``top_k``, ``top_n``, ``samples``,
    ``temperature``, ``max_tokens``, ``stop``, ``seed``, ``timeout``, ``max_retries``,
    ``answer_format``, ``cost``...) are those of
    :class:`~avengers_graph.options.AvengersOptions`, with its defaults and bounds.
    They are read when a call starts: ``llm.samples = 1`` or
    ``llm.model_copy(update={"samples": 1})`` applies to the next call. Any of them
    may also be passed per call to ``invoke``/``stream``/``batch`` (or ``bind``).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True, frozen=False)

    experts: dict[str, BaseChatModel | Expert]
    """The pool: expert name to chat model (names as in the store)."""
    store: CalibrationStore
    """The calibration: centroids and per-cluster expert statistics in Chroma."""
    embeddings: Embeddings = Field(default_factory=LocalEmbeddings)
    """Embeddings the store was calibrated with (default: MiniLM from PyPI)."""
    model: str = Field(default="avengers", alias="model_name")
    """Name reported as the model in ``response_metadata`` and traces."""
    expert_costs: dict[str, float] | None = None
    """Expert name to its cost per generated token, one unit for the pool (billions of
    parameters for local models, a price for paid ones); ``cost="compute"`` needs all."""
    max_concurrency: int | None = Field(default=None, ge=1)
    """Most expert calls in flight at once (``None``: all samples in parallel)."""
    streaming: bool = False
    """LangChain's flag: ``invoke`` goes through ``stream``. The answer is still one
    chunk, decided with ``early_stop`` on unless it is set."""

    _graph: CompiledStateGraph[Any, Any, Any, Any] | None = PrivateAttr(default=None)
    _graph_key: tuple[Any, ...] | None = PrivateAttr(default=None)
    _answered: OrderedDict[UUID | str, _Answered] = PrivateAttr(default_factory=OrderedDict)
    _answered_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _feedback_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _tokens: TokenCounter | None = PrivateAttr(default=None)
    _tokens_key: tuple[int, ...] | None = PrivateAttr(default=None)

    @field_validator("experts")
    @classmethod
    def _check_experts(
        cls, experts: dict[str, BaseChatModel | Expert]
    ) -> dict[str, BaseChatModel | Expert]:
        validate_experts(experts)
        return experts

    @model_validator(mode="after")
    def _check_costs(self) -> ChatAvengers:
        check_expert_costs(self.experts, self.expert_costs, self.cost)
        return self

    def _dependencies(self) -> tuple[Any, ...]:
        """What the compiled graph is built from (ids: the cached graph holds the objects)."""
        return (
            tuple((name, id(expert)) for name, expert in self.experts.items()),
            id(self.embeddings),
            id(self.store),
            tuple(sorted((self.expert_costs or {}).items())),
            self.model,
        )

    @property
    def graph(self) -> CompiledStateGraph[Any, Any, Any, Any]:
        """The compiled Avengers graph this chat model runs.

        Built on first use from the construction-time dependencies only (experts,
        embeddings, store, expert costs, name), and built again when one of them
        changes; the options travel with each call as the run's context.
        """
        key = self._dependencies()
        graph = self._graph
        if graph is None or self._graph_key != key:
            graph = create_avengers_graph(
                self.experts,
                self.embeddings,
                self.store,
                name=self.model,
                expert_costs=self.expert_costs,
            )
            self._graph, self._graph_key = graph, key
        return graph

    @property
    def _llm_type(self) -> str:
        return "avengers"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "experts": list(self.experts),
            "top_k": self.top_k,
            "top_n": self.top_n,
            "samples": self.samples,
            "beta": self.beta,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "answer_format": self.answer_format,
        }

    def expert_models(self) -> list[str]:
        """The model names the pool's experts send, each once, in pool order."""
        models = (as_expert(expert).model for expert in self.experts.values())
        return list(dict.fromkeys(_model_name(model) for model in models))

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="avengers",
            ls_model_name=kwargs.get("model", self.model),
            ls_model_type="chat",
        )
        # the priced runs are the expert calls nested under this one (see the module
        # docstring); this run names the models they may use
        cast("dict[str, Any]", params)["ls_expert_models"] = self.expert_models()
        temperature = kwargs.get("temperature", self.temperature)
        if temperature is not None:
            params["ls_temperature"] = temperature
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if max_tokens is not None:
            params["ls_max_tokens"] = max_tokens
        if stop := stop or self.stop:
            params["ls_stop"] = stop
        return params

    # token counts -----------------------------------------------------------------------
    def _token_counter(self) -> TokenCounter:
        models = [as_expert(expert).model for expert in self.experts.values()]
        key = tuple(id(model) for model in models)
        counter = self._tokens
        if counter is None or self._tokens_key != key:
            counter = TokenCounter(models)
            self._tokens, self._tokens_key = counter, key
        return counter

    def get_num_tokens(self, text: str) -> int:
        """Tokens of ``text``: the most any expert's tokenizer counts.

        An expert on a llama.cpp server counts with the server's tokenizer
        (``/tokenize``); any other counts ``ceil(len(text) / 4)``
        (:class:`~avengers_graph.experts.tokens.TokenCounter`).
        """
        return self._token_counter().count_text(text)

    def get_num_tokens_from_messages(
        self,
        messages: list[BaseMessage],
        tools: Sequence[Any] | None = None,
    ) -> int:
        """Tokens of the prompt ``messages`` make: the most any expert reads.

        An expert on a llama.cpp server counts the prompt its chat template renders
        (``/apply-template``, then ``/tokenize``); any other uses LangChain's
        ``count_tokens_approximately`` (4 characters per token, 3 per message). So
        ``trim_messages(messages, token_counter=llm, max_tokens=n)`` keeps a
        conversation every expert reads in ``n`` tokens.
        """
        return self._token_counter().count_messages(messages, tools)

    # tools ----------------------------------------------------------------------------
    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | dict[str, Any] | bool | None = None,
        parallel_tool_calls: bool | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools: every sampled expert gets them, and the samples vote on tool calls.

        Each sample votes for its tool calls (name plus canonical JSON arguments; a set
        when it calls several in parallel) or for its text answer; the winning
        sample's message, with its ``tool_calls`` and their ids, is the answer.

        Args:
            tools: Tools as ChatOpenAI takes them (dicts, pydantic models, functions,
                ``BaseTool``), converted to the OpenAI format once.
            tool_choice: Passed as is to every expert's ``bind_tools`` (``"auto"``,
                ``"any"``/``"required"``, ``"none"`` or a tool name).
            parallel_tool_calls: Passed to every expert's ``bind_tools`` when set.
            strict: Passed to ``convert_to_openai_tool``.
            **kwargs: Further call options (``top_n=3``...), bound with the tools.
        """
        formatted = [convert_to_openai_tool(tool, strict=strict) for tool in tools]
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        if parallel_tool_calls is not None:
            kwargs["parallel_tool_calls"] = parallel_tool_calls
        return super().bind(tools=formatted, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        method: Literal["function_calling", "json_mode", "json_schema"] = "function_calling",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | Any]:
        """An ensemble that answers with one object of ``schema``, voted.

        Samples vote on their parsed objects as canonical JSON; when no two samples
        agree on the whole object, the answer is voted field by field
        (:func:`avengers_graph.voting.merge_fields`). A sample whose output does not
        parse does not vote, so one expert's invalid output does not fail the call.

        Args:
            schema: A pydantic model, a TypedDict, or a JSON schema / OpenAI tool dict.
            method: ``"function_calling"`` (every expert is forced to call the schema
                as a tool), ``"json_mode"`` (experts get ``response_format`` JSON
                object; the prompt must ask for the fields) or ``"json_schema"``
                (experts get the schema as ``response_format``).
            include_raw: Return ``{"raw", "parsed", "parsing_error"}`` instead of
                raising on a parsing error.
            strict: Passed to the tool or JSON-schema conversion.
            **kwargs: Further call options (``top_n=3``...).

        Raises:
            InvalidInputError: An unknown method.
        """
        pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        trace: dict[str, Any] = {
            "ls_structured_output_format": {"kwargs": {"method": method}, "schema": schema}
        }
        parser: BaseOutputParser[Any]
        if method == "function_calling":
            tool = convert_to_openai_tool(schema, strict=strict)
            name = tool["function"]["name"]
            llm = self.bind_tools(
                [tool], tool_choice=name, structured_output=True, **trace, **kwargs
            )
            if pydantic:
                parser = PydanticToolsParser(tools=[schema], first_tool_only=True)
            else:
                parser = JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
        elif method in ("json_mode", "json_schema"):
            response_format: dict[str, Any] = {"type": "json_object"}
            if method == "json_schema":
                json_schema = convert_to_json_schema(schema, strict=strict)
                response_format = {
                    "type": "json_schema",
                    "json_schema": {
                        "name": json_schema.get("title", "output"),
                        "schema": json_schema,
                        **({"strict": strict} if strict is not None else {}),
                    },
                }
            llm = self.bind(
                response_format=response_format,
                answer_format="json",
                structured_output=True,
                **trace,
                **kwargs,
            )
            parser = (
                PydanticOutputParser(pydantic_object=schema) if pydantic else JsonOutputParser()
            )
        else:
            raise InvalidInputError(
                f"Unknown structured output method {method!r}; use 'function_calling', "
                "'json_mode' or 'json_schema'."
            )
        if include_raw:
            parsed = RunnablePassthrough.assign(
                parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
            )
            unparsed = RunnablePassthrough.assign(parsed=lambda _: None)
            fallback = parsed.with_fallbacks([unparsed], exception_key="parsing_error")
            return RunnableMap(raw=llm) | fallback
        return llm | parser

    # graph call ---------------------------------------------------------------------
    def _run_context(self, stop: list[str] | None, kwargs: Mapping[str, Any]) -> AvengersContext:
        """The run's options: the fields' values now, with the call's options over them.

        Raises:
            InvalidInputError: An unknown or invalid option (field or call option).
        """
        options = {name: getattr(self, name) for name in AvengersOptions.model_fields}
        # model renames the answer; ls_* keys are LangSmith tracing hints
        # (with_structured_output sets one)
        options.update(
            (key, value)
            for key, value in kwargs.items()
            if key != "model" and not key.startswith("ls_")
        )
        if stop is not None:
            options["stop"] = stop
        return AvengersContext(**options)

    def _run_config(
        self,
        run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None,
        usage: _ExpertUsage | None = None,
    ) -> RunnableConfig:
        callbacks = _child_callbacks(run_manager)
        if usage is not None:
            if callbacks is None:
                async_run = isinstance(run_manager, AsyncCallbackManagerForLLMRun)
                callbacks = AsyncCallbackManager([]) if async_run else CallbackManager([])
            callbacks.add_handler(usage, inherit=True)
        config = RunnableConfig(callbacks=callbacks)
        if self.max_concurrency is not None:
            config["max_concurrency"] = self.max_concurrency
        return config

    def _to_result(
        self,
        state: Mapping[str, Any],
        kwargs: Mapping[str, Any],
        usage: _ExpertUsage | None = None,
    ) -> ChatResult:
        answer = state["messages"][-1]
        if not isinstance(answer, AIMessage):  # pragma: no cover - the vote node appends one
            raise InvalidInputError("The Avengers graph did not produce an answer.")
        metadata = {
            **answer.response_metadata,
            "model_name": kwargs.get("model", self.model),
            "expert_models": dict(usage.models) if usage is not None else {},
            "avengers": dict(state["avengers"]),
        }
        message = AIMessage(
            content=answer.content,
            tool_calls=answer.tool_calls,
            invalid_tool_calls=answer.invalid_tool_calls,
            additional_kwargs=answer.additional_kwargs,
            response_metadata=metadata,
            usage_metadata=answer.usage_metadata,
            id=answer.id,
        )
        return ChatResult(
            generations=[ChatGeneration(message=message)],
            llm_output={"model_name": metadata["model_name"]},
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        context = self._run_context(stop, kwargs)
        usage = _ExpertUsage()
        # the caller's runnable config (a RunnableSequence's, say) sits in a context
        # variable that the graph would merge into every expert call, handlers included
        token = var_child_runnable_config.set(None)
        try:
            state = self.graph.invoke(
                {"messages": messages},
                config=self._run_config(run_manager, usage),
                context=context,
            )
        finally:
            var_child_runnable_config.reset(token)
        self._remember(state, run_manager)
        return self._to_result(state, kwargs, usage)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        context = self._run_context(stop, kwargs)
        usage = _ExpertUsage()
        token = var_child_runnable_config.set(None)  # see _generate
        try:
            state = await self.graph.ainvoke(
                {"messages": messages},
                config=self._run_config(run_manager, usage),
                context=context,
            )
        finally:
            var_child_runnable_config.reset(token)
        self._remember(state, run_manager)
        return self._to_result(state, kwargs, usage)

    def _streaming_options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Streaming waits for no sample that cannot change the answer, unless told to."""
        if self.early_stop is None and kwargs.get("early_stop") is None:
            return {**kwargs, "early_stop": True}
        return kwargs

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        kwargs = self._streaming_options(kwargs)
        context = self._run_context(stop, kwargs)
        report = _PROGRESS.get()
        state: Mapping[str, Any] = {}
        usage = _ExpertUsage()
        token = var_child_runnable_config.set(None)  # see _generate
        try:
            for mode, data in self.graph.stream(
                {"messages": messages},
                config=self._run_config(run_manager, usage),
                context=context,
                stream_mode=["custom", "values"],
            ):
                if mode == "values" and isinstance(data, Mapping):
                    state = data
                elif report is not None and (event := _progress(data)) is not None:
                    report(event)
        finally:
            var_child_runnable_config.reset(token)
        self._remember(state, run_manager)
        chunk = as_generation_chunk(self._to_result(state, kwargs, usage))
        if run_manager is not None:
            run_manager.on_llm_new_token(chunk.text, chunk=chunk)
        yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        kwargs = self._streaming_options(kwargs)
        context = self._run_context(stop, kwargs)
        report = _PROGRESS.get()
        state: Mapping[str, Any] = {}
        usage = _ExpertUsage()
        token = var_child_runnable_config.set(None)  # see _generate
        try:
            async for mode, data in self.graph.astream(
                {"messages": messages},
                config=self._run_config(run_manager, usage),
                context=context,
                stream_mode=["custom", "values"],
            ):
                if mode == "values" and isinstance(data, Mapping):
                    state = data
                elif report is not None and (event := _progress(data)) is not None:
                    report(event)
        finally:
            var_child_runnable_config.reset(token)
        self._remember(state, run_manager)
        chunk = as_generation_chunk(self._to_result(state, kwargs, usage))
        if run_manager is not None:
            await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
        yield chunk

    # feedback -------------------------------------------------------------------------
    def _remember(
        self,
        state: Mapping[str, Any],
        run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None,
    ) -> None:
        """Keep the answer's routing record for feedback (the last :data:`FEEDBACK_RUNS`).

        Kept by the answer's ``id`` (what ``invoke`` and every stream chunk carry), and
        by the run id when the run manager is known (``invoke``, ``batch``).
        """
        if "avengers" not in state or not state.get("messages"):
            return
        answered = _Answered(dict(state["avengers"]))
        keys: list[UUID | str] = [str(state["messages"][-1].id)]
        if run_manager is not None:
            keys.append(run_manager.run_id)
        with self._answered_lock:
            for key in keys:
                self._answered[key] = answered
                self._answered.move_to_end(key)
            while len(self._answered) > 2 * FEEDBACK_RUNS:  # at most two keys per answer
                self._answered.popitem(last=False)

    def routing_record(self, answer_id: UUID | str) -> dict[str, Any]:
        """The routing record of a recent answer (one of the last :data:`FEEDBACK_RUNS`).

        Raises:
            UnknownRunError: This chat model did not give that answer, or not recently.
        """
        return dict(self._remembered(answer_id).record)

    def _remembered(self, answer_id: UUID | str) -> _Answered:
        keys = run_keys(answer_id)
        with self._answered_lock:
            answered = next((self._answered[k] for k in keys if k in self._answered), None)
        if answered is None:
            raise UnknownRunError(
                f"No answer {answer_id!s} among the last {FEEDBACK_RUNS} answers of this chat "
                "model: feedback goes to the process that answered, soon after."
            )
        return answered

    def record_feedback(self, answer_id: UUID | str, correct: bool) -> FeedbackResult:
        """Tell the ensemble whether one of its answers was right; routing learns from it.

        The experts' samples of that run are graded against the verdict
        (:func:`~avengers_graph.stores.base.grade_feedback`: when the answer was right,
        samples that agreed with it were right and the others wrong; when it was wrong,
        the samples that gave it, or no answer, were wrong), and the outcomes are added
        to those experts' statistics in every cluster that routed the question, in one
        atomic write of the store. Repeated "wrong" verdicts on an expert's answers in a
        cluster lower its accuracy there until routing prefers another expert.

        An answer takes one verdict: the same verdict again changes nothing (the result
        says ``duplicate``), the opposite one is refused.

        Args:
            answer_id: The answer's ``id`` (``message.id``; every chunk of a stream
                carries it), or the run's UUID for ``invoke``/``batch`` (a ``run_id``
                passed in the call's config).
            correct: Whether the answer was right.

        Returns:
            What the verdict graded and the statistics it wrote.

        Raises:
            UnknownRunError: Not one of this chat model's last :data:`FEEDBACK_RUNS` answers.
            FeedbackConflictError: The opposite verdict was recorded for this answer.
            InvalidInputError: ``correct`` is not a bool, or the store takes no feedback.
        """
        if not isinstance(correct, bool):
            raise InvalidInputError(f"`correct` must be True or False, got {correct!r}.")
        with self._feedback_lock:  # one verdict per answer, even from two threads at once
            answered = self._remembered(answer_id)
            if answered.feedback is not None:
                if answered.feedback.correct != correct:
                    raise FeedbackConflictError(
                        f"Answer {answer_id!s} was already marked "
                        f"{'correct' if answered.feedback.correct else 'wrong'}; an answer "
                        "takes one verdict."
                    )
                return replace(answered.feedback, duplicate=True)
            record = answered.record
            clusters = [int(cluster["id"]) for cluster in record.get("clusters", [])]
            answer = winning_key(record)
            graded: dict[str, Feedback] = {}
            if answer is not None:
                answers: dict[str, list[str | None]] = {}
                for sample in record.get("samples", []):
                    answers.setdefault(sample["expert"], []).append(sample["answer"])
                graded = grade_feedback(answers, answer, correct)
            updated: dict[int, dict[str, ExpertStats]] = {}
            if graded and clusters:
                if not isinstance(self.store, FeedbackStore):
                    raise InvalidInputError(
                        f"The store {type(self.store).__name__} takes no feedback: it has no "
                        "add_feedback (ClusterStore and MemoryStore have)."
                    )
                updated = self.store.add_feedback(dict.fromkeys(clusters, graded))
            result = FeedbackResult(
                answer_id=str(answer_id),
                correct=correct,
                clusters=clusters,
                graded=graded,
                updated=updated,
            )
            answered.feedback = result
            return result
