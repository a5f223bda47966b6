"""State, payload and output types of the Avengers graph.

The graph's input is :class:`InputState` (``{"messages": [...]}``); its output is
:class:`OutputState`: the conversation with the winning ``AIMessage`` appended and the
:class:`RoutingRecord` under ``"avengers"``. Parallel ``sample`` workers append to
``samples``, ``failures`` and ``cancelled`` through reducers; the ``embed`` node resets
them at the start of every turn, so a graph with a checkpointer starts each question clean.
"""

from __future__ import annotations

from typing import Annotated, NotRequired

from langchain_core.messages import AIMessage, AnyMessage
from langgraph.graph.message import add_messages
from typing_extensions import TypedDict


class Sample(TypedDict):
    """One expert answer, as written by a ``sample`` worker."""

    expert: str
    """Name of the expert that answered."""
    rank: int
    """The expert's position in the routing selection (0 = best)."""
    index: int
    """Sample number for this expert in this turn."""
    seed: int | None
    """Seed the request was sent with."""
    message: AIMessage
    """The expert's reply."""
    seconds: float
    """Wall time of the call."""


class SampleTask(TypedDict):
    """Payload carried by ``Send`` to one ``sample`` worker."""

    expert: str
    rank: int
    index: int
    seed: int | None
    messages: list[AnyMessage]
    turn: str
    """Id shared by the turn's sample workers (their early decision)."""
    planned: int
    """How many samples the turn planned."""
    answer_format: str
    """The question's format (:data:`avengers_graph.formats.FORMATS`, or ``tools``,
    ``custom``): the prompt contract the expert's strategy follows for it."""


class ClusterRecord(TypedDict):
    """A matched cluster in the routing record."""

    id: int
    distance: float
    weight: float


class ExpertRecord(TypedDict):
    """A selected expert and its routing score."""

    name: str
    score: float
    """Routing score (adaptive sampling: the calibrated reliability)."""
    strategy: NotRequired[str]
    """How it answers (``direct``, ``reason``, ``program``)."""
    weight: NotRequired[float]
    """The weight of each of its votes (1 when votes are not weighted)."""


class SampleRecord(TypedDict):
    """One sample as it voted."""

    expert: str
    text: str
    answer: str | None


class RoutingRecord(TypedDict):
    """How one question was answered: where it was routed, who answered, how they voted."""

    clusters: list[ClusterRecord]
    """Matched clusters, nearest first, with their softmax weights."""
    experts: list[ExpertRecord]
    """Selected experts, best first, with their routing scores."""
    samples: list[SampleRecord]
    """Every successful sample with the answer extracted from it."""
    votes: dict[str, float]
    """Extracted answer to its votes: samples that gave it (weighted votes: their summed
    weight)."""
    confidence: float
    """The winning answer's share of the samples that voted; with weighted votes, the
    probability that it is right: the vote's ``posterior`` through the store's
    calibrated map (:mod:`avengers_graph.confidence`) where calibration fitted one."""
    posterior: NotRequired[float]
    """The vote's own confidence (:func:`avengers_graph.voting.weighted_vote`'s posterior,
    or the winner's share), before the calibrated map; adaptive sampling stops on it."""
    failures: dict[str, str]
    """Expert to the error that cost it its samples."""
    cancelled: int
    """Planned samples the vote was decided without: dropped while running (``early_stop``)
    or never drawn (adaptive sampling stopped at ``threshold``)."""
    winner: str
    """The expert whose sample was returned."""
    answer_format: str
    """How answers were compared (``number``, ``choice``, ``text``, ``code``, ``semantic``...)."""
    question_format: NotRequired[str]
    """The question's format, as detected or set (``choice``, ``number``, ``free``...)."""
    excluded: NotRequired[list[str]]
    """Experts left out: at or below chance on this question, or not serving its format."""
    rounds: NotRequired[int]
    """Rounds of samples drawn (adaptive sampling stops once the vote is sure)."""
    seed: int
    """Base seed of the turn; sample ``j`` of the expert ranked ``r`` used
    ``seed + r * samples + j``."""


def merge_samples(left: list[Sample] | None, right: list[Sample] | None) -> list[Sample]:
    """Reducer for ``samples``: append, or reset when a node writes ``None``."""
    if right is None:
        return []
    return [*(left or []), *right]


def merge_failures(left: dict[str, str] | None, right: dict[str, str] | None) -> dict[str, str]:
    """Reducer for ``failures``: merge, or reset when a node writes ``None``."""
    if right is None:
        return {}
    return {**(left or {}), **right}


def merge_counts(left: int | None, right: int | None) -> int:
    """Reducer for ``cancelled``: add, or reset when a node writes ``None``."""
    if right is None:
        return 0
    return (left or 0) + right


class InputState(TypedDict):
    """What the graph takes: a conversation whose last human message is the question."""

    messages: Annotated[list[AnyMessage], add_messages]


class OutputState(TypedDict):
    """What the graph returns: the conversation with the voted answer, and how it was reached."""

    messages: Annotated[list[AnyMessage], add_messages]
    avengers: RoutingRecord


class AvengersState(TypedDict, total=False):
    """The graph's full internal state."""

    messages: Annotated[list[AnyMessage], add_messages]
    embedding: list[float]
    """The question's L2-normalised embedding."""
    context_embedding: list[float] | None
    """The previous human message's, when there is one (blended in by ``locate_cluster``)."""
    clusters: list[ClusterRecord]
    experts: list[ExpertRecord]
    question_format: str
    """The question's answer format (see :class:`SampleTask`)."""
    options: list[str]
    """The options the question offers (choice letters, label words)."""
    plan: list[str]
    """One expert name per planned sample, in draw order."""
    weights: dict[str, float]
    """Vote weight of each planned expert."""
    excluded: list[str]
    round_start: int
    """First position of ``plan`` in the round being drawn."""
    round_end: int
    """Position of ``plan`` after the round being drawn."""
    more: bool
    """Written by ``vote``: adaptive sampling draws another round."""
    seed: int
    turn: str
    """Id of this turn's sample workers (they share an early-decision tally)."""
    samples: Annotated[list[Sample], merge_samples]
    failures: Annotated[dict[str, str], merge_failures]
    cancelled: Annotated[int, merge_counts]
    avengers: RoutingRecord
