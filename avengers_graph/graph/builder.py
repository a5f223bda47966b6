"""Build the Avengers graph: five nodes wired as a LangGraph ``StateGraph``.

:func:`build_avengers_graph` returns the uncompiled builder (to extend);
:func:`create_avengers_graph` compiles it. The node functions live in
:mod:`avengers_graph.graph.nodes`; the data flow is described there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import RunnableLambda
from langgraph.cache.base import BaseCache
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.store.base import BaseStore
from langgraph.types import CachePolicy, Checkpointer, RetryPolicy

from avengers_graph.experts.contract import Expert
from avengers_graph.graph.nodes import (
    _embed_cache_key,
    _Nodes,
    check_expert_costs,
    is_transient_error,
    validate_experts,
)
from avengers_graph.graph.state import AvengersState, InputState, OutputState
from avengers_graph.options import MAX_RETRIES, AvengersContext, AvengersOptions
from avengers_graph.stores.base import CalibrationStore

__all__ = ["build_avengers_graph", "create_avengers_graph"]


def build_avengers_graph(
    experts: Mapping[str, BaseChatModel | Expert],
    embeddings: Embeddings,
    store: CalibrationStore,
    *,
    expert_costs: Mapping[str, float] | None = None,
    retry_policy: RetryPolicy | None = None,
    model_name: str = "avengers",
    **options: Any,
) -> StateGraph[AvengersState, AvengersContext, InputState, OutputState]:
    """Build the uncompiled Avengers ``StateGraph`` (add nodes or edges, then compile).

    Args:
        experts: The pool: expert name to chat model. Names must match the store's.
            The graph calls retry-free twins of the experts that retry on their own
            (:func:`avengers_graph.experts.calls.retry_free`).
        embeddings: The embeddings the store was calibrated with.
        store: The calibration (centroids and per-cluster expert statistics).
        expert_costs: Expert name to its cost per generated token, in one unit for the
            pool (billions of parameters for local models, a price for paid ones);
            ``cost="compute"`` needs one for every expert.
        retry_policy: LangGraph retry policy of the ``embed``, ``locate_cluster`` and
            ``sample`` nodes (backoff, most attempts). Default: retry
            :func:`is_transient_error` errors, ``max_retries`` times. A run's expert
            calls are retried at most ``max_retries`` times, and never beyond the
            policy's ``max_attempts``.
        model_name: Name reported as ``response_metadata["model_name"]``.
        **options: The graph's default routing and sampling options, the fields of
            :class:`~avengers_graph.options.AvengersOptions` (``top_n=2``,
            ``samples=3``, ``timeout=300``...); a run's context overrides them.

    Returns:
        The graph builder with nodes ``embed``, ``locate_cluster``, ``select_experts``,
        ``sample`` and ``vote``.

    Raises:
        InvalidInputError: An empty or malformed pool, unknown or invalid options (the
            message names the option, and the closest valid one for a typo), or
            expert costs that do not fit the pool.
    """
    validate_experts(experts)
    defaults = AvengersOptions(**options)
    costs = check_expert_costs(experts, expert_costs, defaults.cost)
    store_retry = retry_policy or RetryPolicy(
        max_attempts=defaults.max_retries + 1, retry_on=is_transient_error
    )
    # the sample node decides per run whether to retry (max_retries of the run's options)
    sample_retry = retry_policy or RetryPolicy(
        max_attempts=MAX_RETRIES + 1, retry_on=is_transient_error
    )
    nodes = _Nodes(
        experts,
        embeddings,
        store,
        defaults,
        expert_costs=costs,
        max_attempts=sample_retry.max_attempts,
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
        retry_policy=store_retry,
        cache_policy=CachePolicy(key_func=_embed_cache_key),
    )
    builder.add_node("locate_cluster", nodes.locate_cluster, retry_policy=store_retry)
    builder.add_node("select_experts", nodes.select_experts)
    builder.add_node(
        "sample",
        RunnableLambda(nodes.sample, afunc=nodes.asample, name="sample"),
        retry_policy=sample_retry,
    )
    builder.add_node("vote", RunnableLambda(nodes.vote, afunc=nodes.avote, name="vote"))
    builder.add_edge(START, "embed")
    builder.add_edge("embed", "locate_cluster")
    builder.add_edge("locate_cluster", "select_experts")
    builder.add_conditional_edges("select_experts", nodes.dispatch, ["sample"])
    builder.add_edge("sample", "vote")
    builder.add_conditional_edges("vote", nodes.after_vote, ["sample", END])
    return builder


def create_avengers_graph(
    experts: Mapping[str, BaseChatModel | Expert],
    embeddings: Embeddings,
    store: CalibrationStore,
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
        **options: ``expert_costs``, ``retry_policy`` and the routing and sampling
            options of :func:`build_avengers_graph` (the fields of
            :class:`~avengers_graph.options.AvengersOptions`).

    Returns:
        The compiled graph: input ``{"messages": [...]}``, output the messages with the
        voted ``AIMessage`` appended and the routing record under ``"avengers"``.
    """
    options.setdefault("model_name", name)
    builder = build_avengers_graph(experts, embeddings, store, **options)
    return builder.compile(
        checkpointer=checkpointer, cache=cache, store=graph_store, name=name, debug=debug
    )
