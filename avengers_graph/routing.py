"""Routing math of the Avengers method, as pure functions on plain data.

Inference routes a question in two steps (``ALGORITHM.md``, "Inference"):

1. :func:`cluster_weights` turns the cosine distances ``d`` of the ``top_k`` nearest
   centroids into weights ``p = softmax(-beta * d)``.
2. :func:`score_experts` gives every available expert the score
   ``sum_c p_c / (rank_c(expert) + 0.1)``, where ``rank_c`` is its 0-based accuracy
   rank in cluster ``c`` (:func:`rank_experts`); :func:`select_experts` keeps the
   ``top_n`` best.

An expert without statistics in a cluster is ranked after every expert that has
some, and never stops the others from being scored. Ranks use competition ranking
on accuracy, so equally accurate experts share a rank; equal scores are broken by
the order of the pool, which makes routing deterministic.

Conversations are routed on the question being asked now: :func:`routing_text` is the
last human message (system prompts, assistant turns and tool results never count),
with a long message :func:`compact`-ed to its head and tail; :func:`routing_context`
(the human message before it) is blended into the question's embedding by
:func:`blend` with a small weight, so a short follow-up keeps its topic.

Avengers-Pro's cost-aware ranking (``quality_weight < 1``) ranks experts by
``a * normalised accuracy + (1 - a) * (1 - cost / max cost)`` instead of accuracy.
The cost of an expert in a cluster (:func:`expert_cost`) is its mean seconds or mean
generated tokens per answer there, or ``"compute"``: its mean tokens times its cost
per token (``unit_costs``: billions of parameters for local models, so the product is
proportional to decoding FLOPs; a price per token for paid endpoints, as in the
Avengers-Pro paper). Seconds depend on the machine and its load; compute does not.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt
from langchain_core.messages import BaseMessage, HumanMessage

from avengers_graph.errors import InvalidInputError
from avengers_graph.stores.base import ExpertStats

RANK_OFFSET = 0.1
"""Added to the 0-based rank so the best expert scores ``1 / 0.1 = 10`` per unit weight."""

Cost = Literal["seconds", "tokens", "compute"]
"""What the cost-aware ranking counts as an expert's cost (see :func:`expert_cost`)."""
COSTS: tuple[Cost, ...] = get_args(Cost)


@dataclass(frozen=True)
class ClusterMatch:
    """One of the clusters a question was routed to."""

    id: int
    """Cluster id in the store."""
    distance: float
    """Cosine distance between the question and the cluster's centroid."""
    weight: float
    """Softmax weight of the cluster among the matched ones (they sum to 1)."""


@dataclass(frozen=True)
class ExpertScore:
    """An expert's routing score for one question."""

    name: str
    score: float


def cluster_weights(distances: Sequence[float], beta: float) -> list[float]:
    """Softmax of ``-beta * distance``: nearer clusters weigh more.

    Args:
        distances: Cosine distances of the matched centroids.
        beta: Sharpness; 0 weighs every matched cluster equally.

    Returns:
        One weight per distance, summing to 1.

    Raises:
        InvalidInputError: No distances, a non-finite distance or a negative ``beta``.
    """
    if not distances:
        raise InvalidInputError("cluster_weights needs at least one distance.")
    if beta < 0 or not math.isfinite(beta):
        raise InvalidInputError(f"beta must be a finite number >= 0, got {beta!r}.")
    if not all(math.isfinite(d) for d in distances):
        raise InvalidInputError(f"Distances must be finite, got {list(distances)!r}.")
    logits = [-beta * d for d in distances]
    top = max(logits)
    exps = [math.exp(logit - top) for logit in logits]
    total = sum(exps)
    return [e / total for e in exps]


def smoothed_accuracy(stats: ExpertStats, prior_mean: float, prior_strength: float) -> float:
    """Accuracy shrunk toward ``prior_mean`` by a Beta prior of ``prior_strength`` pseudo-counts.

    With ``prior_strength == 0`` this is the raw accuracy the reference uses.
    """
    denominator = stats.total + prior_strength
    if denominator == 0:
        return prior_mean
    return (stats.correct + prior_strength * prior_mean) / denominator


def global_accuracy(stats: Mapping[int, Mapping[str, ExpertStats]]) -> dict[str, float]:
    """Each expert's accuracy over every cluster, the usual prior for smoothing."""
    correct: dict[str, int] = {}
    total: dict[str, int] = {}
    for cluster in stats.values():
        for name, s in cluster.items():
            correct[name] = correct.get(name, 0) + s.correct
            total[name] = total.get(name, 0) + s.total
    return {name: (correct[name] / total[name] if total[name] else 0.0) for name in correct}


def check_cost(
    cost: str, experts: Sequence[str], unit_costs: Mapping[str, float] | None = None
) -> None:
    """Check a cost kind and the experts' costs per token (all of them for ``"compute"``).

    Raises:
        InvalidInputError: An unknown cost, a negative (or NaN) unit cost, or
            ``"compute"`` with experts that have no cost per token in ``unit_costs``.
    """
    if cost not in COSTS:
        raise InvalidInputError(f"cost must be one of {', '.join(COSTS)}; got {cost!r}.")
    known = unit_costs or {}
    if negative := {name: value for name, value in known.items() if not value >= 0}:
        raise InvalidInputError(f"Expert costs must be numbers >= 0, got {negative}.")
    if cost == "compute" and (missing := [name for name in experts if name not in known]):
        raise InvalidInputError(
            f"cost='compute' needs a cost per generated token for every expert "
            f"(expert_costs, or `cost:` in the pool file); missing for {missing}."
        )


def expert_cost(stats: ExpertStats, cost: Cost, unit_cost: float | None = None) -> float:
    """An expert's cost per answer in one cluster.

    Args:
        stats: The expert's statistics in the cluster.
        cost: ``"seconds"`` (mean seconds per answer), ``"tokens"`` (mean generated
            tokens) or ``"compute"`` (mean generated tokens times ``unit_cost``).
        unit_cost: The expert's cost per generated token (``"compute"`` only).
    """
    if cost == "seconds":
        return stats.mean_seconds
    if cost == "tokens":
        return stats.mean_tokens
    if unit_cost is None:
        raise InvalidInputError("cost='compute' needs the expert's cost per token.")
    return stats.mean_tokens * unit_cost


def _quality(
    cluster: Mapping[str, ExpertStats],
    *,
    prior: Mapping[str, float],
    prior_strength: float,
    quality_weight: float,
    cost: Cost,
    unit_costs: Mapping[str, float],
) -> dict[str, float]:
    accuracy = {
        name: smoothed_accuracy(s, prior.get(name, 0.0), prior_strength)
        for name, s in cluster.items()
    }
    if quality_weight >= 1.0 or not accuracy:
        return accuracy
    low, high = min(accuracy.values()), max(accuracy.values())
    costs = {name: expert_cost(s, cost, unit_costs.get(name)) for name, s in cluster.items()}
    max_cost = max(costs.values())
    quality = {}
    for name, acc in accuracy.items():
        norm_acc = (acc - low) / (high - low) if high > low else 1.0
        norm_cost = costs[name] / max_cost if max_cost > 0 else 0.0
        quality[name] = quality_weight * norm_acc + (1 - quality_weight) * (1 - norm_cost)
    return quality


def rank_experts(
    cluster: Mapping[str, ExpertStats],
    *,
    prior: Mapping[str, float] | None = None,
    prior_strength: float = 0.0,
    quality_weight: float = 1.0,
    cost: Cost = "seconds",
    unit_costs: Mapping[str, float] | None = None,
) -> dict[str, int]:
    """0-based competition ranks of the experts that have statistics in one cluster.

    Args:
        cluster: Expert name to its statistics in this cluster.
        prior: Prior accuracy per expert for smoothing (see :func:`global_accuracy`).
        prior_strength: Pseudo-counts of the Beta prior; 0 ranks by raw accuracy.
        quality_weight: Avengers-Pro's ``a``: 1 ranks by accuracy alone, lower values
            trade accuracy for lower cost.
        cost: What counts as cost when ``quality_weight < 1`` (:func:`expert_cost`).
        unit_costs: Expert name to its cost per generated token (``"compute"`` only).

    Returns:
        Expert name to rank; experts with equal quality share the better rank.
    """
    if not 0.0 <= quality_weight <= 1.0:
        raise InvalidInputError(f"quality_weight must be in [0, 1], got {quality_weight!r}.")
    check_cost(cost, list(cluster), unit_costs)
    quality = _quality(
        cluster,
        prior=prior or {},
        prior_strength=prior_strength,
        quality_weight=quality_weight,
        cost=cost,
        unit_costs=unit_costs or {},
    )
    return {name: sum(1 for other in quality.values() if other > q) for name, q in quality.items()}


def score_experts(
    clusters: Sequence[ClusterMatch],
    stats: Mapping[int, Mapping[str, ExpertStats]],
    available: Sequence[str],
    *,
    prior_strength: float = 0.0,
    quality_weight: float = 1.0,
    cost: Cost = "seconds",
    unit_costs: Mapping[str, float] | None = None,
) -> list[ExpertScore]:
    """Score every available expert over the matched clusters, best first.

    Args:
        clusters: The matched clusters with their weights.
        stats: Per-cluster, per-expert statistics from the store.
        available: The experts that can be called, in pool order (the tie-break).
        prior_strength: Beta-prior pseudo-counts toward each expert's global accuracy.
        quality_weight: Avengers-Pro trade-off; 1 ranks by accuracy only.
        cost: What counts as cost in the cost-aware ranking (:func:`expert_cost`).
        unit_costs: Expert name to its cost per generated token (``"compute"`` only).

    Returns:
        One score per available expert, sorted by score (descending), then pool order.
    """
    if not available:
        raise InvalidInputError("No experts are available to route to.")
    check_cost(cost, available, unit_costs)
    prior = global_accuracy(stats) if prior_strength > 0 else {}
    scores = dict.fromkeys(available, 0.0)
    for match in clusters:
        cluster = {name: s for name, s in stats.get(match.id, {}).items() if name in scores}
        ranks = rank_experts(
            cluster,
            prior=prior,
            prior_strength=prior_strength,
            quality_weight=quality_weight,
            cost=cost,
            unit_costs=unit_costs,
        )
        last = len(ranks)
        for name in scores:
            scores[name] += match.weight / (ranks.get(name, last) + RANK_OFFSET)
    order = {name: i for i, name in enumerate(available)}
    ranked = sorted(scores.items(), key=lambda item: (-item[1], order[item[0]]))
    return [ExpertScore(name=name, score=score) for name, score in ranked]


def select_experts(scores: Sequence[ExpertScore], top_n: int) -> list[ExpertScore]:
    """Keep the ``top_n`` best-scored experts (all of them if there are fewer)."""
    if top_n < 1:
        raise InvalidInputError(f"top_n must be >= 1, got {top_n!r}.")
    return list(scores[:top_n])


def match_clusters(nearest: Sequence[tuple[int, float]], beta: float) -> list[ClusterMatch]:
    """Attach softmax weights to ``(cluster id, distance)`` pairs from the store."""
    weights = cluster_weights([distance for _, distance in nearest], beta)
    return [
        ClusterMatch(id=cluster, distance=distance, weight=weight)
        for (cluster, distance), weight in zip(nearest, weights, strict=True)
    ]


def nearest_clusters(
    centroids: npt.NDArray[np.floating[Any]],
    vector: Sequence[float] | npt.NDArray[np.floating[Any]],
    top_k: int,
    beta: float,
) -> list[ClusterMatch]:
    """The ``top_k`` clusters nearest a unit vector, by cosine distance, weighted.

    What a store's ``nearest`` and :func:`match_clusters` give the graph, computed on
    unit centroids in memory (ties: the lower cluster id).
    """
    if top_k < 1:
        raise InvalidInputError(f"top_k must be >= 1, got {top_k!r}.")
    distances = 1.0 - np.asarray(centroids) @ np.asarray(vector)
    nearest = np.argsort(distances, kind="stable")[:top_k]
    return match_clusters([(int(c), float(distances[c])) for c in nearest], beta)


ROUTING_HEAD_WORDS = 32
"""Words kept from the start of a long question (its instruction)."""
ROUTING_TAIL_WORDS = 128
"""Words kept from the end of a long question (where prompts put the question). With
the head, this fits MiniLM's 256-token window, which would otherwise cut the end off."""


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
"""A UTF-16 surrogate code point: in a Python ``str`` always unpaired (text decoded with
``errors="surrogateescape"`` or from broken UTF-16); no UTF-8 encoder, tokenizer or
JSON request body takes it."""


def _strings(value: object) -> Iterator[str]:
    """Every string in a message's content or tool-call arguments (nested lists, dicts)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def check_unicode(messages: Sequence[BaseMessage]) -> None:
    """Refuse a conversation holding text that is not valid Unicode (a lone surrogate).

    Every message counts, not only the question: the whole conversation is sent to
    the experts.

    Raises:
        InvalidInputError: Naming the message, the code point and where it is.
    """
    for position, message in enumerate(messages):
        parts = [message.content, [call["args"] for call in getattr(message, "tool_calls", [])]]
        for text in _strings(parts):
            if (found := _LONE_SURROGATE.search(text)) is None:
                continue
            before = text[max(found.start() - 20, 0) : found.start()]
            where = f"after {before!r}" if before else "at the start"
            raise InvalidInputError(
                f"messages[{position}] ({message.type} message) holds a lone surrogate "
                f"U+{ord(found.group()):04X} at character {found.start()} ({where}): not "
                "valid Unicode, so it cannot be embedded or sent to an expert. Decode the "
                "text with errors='replace' (or remove the character) and send it again."
            )


def _human_texts(messages: Sequence[BaseMessage]) -> list[str]:
    """The conversation's human messages, stripped, oldest first (validated)."""
    if not isinstance(messages, Sequence) or isinstance(messages, str):
        raise InvalidInputError(
            f"messages must be a list of LangChain messages, got {type(messages).__name__}."
        )
    if not messages:
        raise InvalidInputError("messages is empty: send at least one human message.")
    for message in messages:
        if not isinstance(message, BaseMessage):
            raise InvalidInputError(
                f"messages must hold LangChain messages, got {type(message).__name__}."
            )
    check_unicode(messages)
    humans = [m.text.strip() for m in messages if isinstance(m, HumanMessage)]
    if not humans:
        raise InvalidInputError("messages holds no human message: there is no question to route.")
    if not humans[-1]:
        raise InvalidInputError("The last human message has no text to answer.")
    return humans


def question_text(messages: Sequence[BaseMessage]) -> str:
    """The question being asked now: the last human message, whole and stripped.

    System prompts, the assistant's turns and tool results are not the question:
    in a tool-calling loop the question stays the human message that started it.

    Raises:
        InvalidInputError: No messages, something that is not a message, no human
            message, an empty last question, or text that is not valid Unicode
            (:func:`check_unicode`).
    """
    return _human_texts(messages)[-1]


def compact(text: str, head: int = ROUTING_HEAD_WORDS, tail: int = ROUTING_TAIL_WORDS) -> str:
    """Shorten a long question to its first ``head`` and last ``tail`` words.

    A text of at most ``head + tail`` words is returned as is; otherwise the middle
    (a retrieved context, pasted documents) is replaced by an ellipsis.
    """
    words = text.split()
    if len(words) <= head + tail:
        return text
    return " ".join([*words[:head], "...", *words[len(words) - tail :]])


def routing_text(messages: Sequence[BaseMessage]) -> str:
    """The text a conversation is routed on: its question, compacted.

    The last human message (:func:`question_text`), with only its first
    :data:`ROUTING_HEAD_WORDS` and last :data:`ROUTING_TAIL_WORDS` words when longer:
    a RAG prompt's documents or a harness's boilerplate in the middle do not drive
    the embedding, and the question at the end is not cut off by the embedding
    model's window.

    Raises:
        InvalidInputError: As :func:`question_text`.
    """
    return compact(question_text(messages))


def routing_context(messages: Sequence[BaseMessage]) -> str | None:
    """The compact context of the question: the human message before it, if any.

    A follow-up (``"and in miles?"``) says little by itself; the embed node blends
    the embedding of this context into the question's (``context_weight``).
    """
    humans = _human_texts(messages)
    previous = [text for text in humans[:-1] if text]
    return compact(previous[-1]) if previous else None


def blend(question: Sequence[float], context: Sequence[float], weight: float) -> list[float]:
    """``question + weight * context``, L2-normalised (both inputs unit vectors).

    Raises:
        InvalidInputError: A negative weight or vectors of different sizes.
    """
    if weight < 0 or not math.isfinite(weight):
        raise InvalidInputError(f"context_weight must be a finite number >= 0, got {weight!r}.")
    if len(question) != len(context):
        raise InvalidInputError(
            f"Cannot blend vectors of sizes {len(question)} and {len(context)}."
        )
    mixed = [q + weight * c for q, c in zip(question, context, strict=True)]
    norm = math.sqrt(sum(v * v for v in mixed))
    return [v / norm for v in mixed] if norm > 0 else list(question)


# ---------------------------------------------------------------------------
# Reliability and adaptive sampling (ALGORITHM.md, "Beyond the paper")
# ---------------------------------------------------------------------------

RELIABILITY_FLOOR = 0.01
"""Reliabilities are kept within ``[floor, 1 - floor]`` so no vote weighs infinitely."""
OVERALL_PRIOR = 1e9
"""A ``prior_strength`` that outweighs any cluster's counts: :func:`reliability` then
rates every expert by its accuracy over every cluster (a cluster's thousands of samples
move a rating by under 1e-5), so the clusters play no part in ranking or weighting."""


def sample_accuracy(stats: Mapping[int, Mapping[str, ExpertStats]]) -> dict[str, float]:
    """Each expert's chance that one of its samples is right, over every cluster."""
    right: dict[str, float] = {}
    drawn: dict[str, float] = {}
    for cluster in stats.values():
        for name, s in cluster.items():
            count = s.samples or s.total
            right[name] = right.get(name, 0.0) + s.sample_accuracy * count
            drawn[name] = drawn.get(name, 0.0) + count
    return {name: right[name] / drawn[name] if drawn[name] else 0.0 for name in right}


def reliability(
    clusters: Sequence[ClusterMatch],
    stats: Mapping[int, Mapping[str, ExpertStats]],
    experts: Sequence[str],
    *,
    prior_strength: float = 4.0,
) -> dict[str, float]:
    """The calibrated chance that one sample of each expert is right, for this question.

    Per matched cluster, the expert's per-sample accuracy there, shrunk toward its
    accuracy over every cluster by a Beta prior of ``prior_strength`` pseudo-samples (a
    small cluster does not swing it), averaged with the clusters' weights; an expert
    with no statistics in a cluster counts its overall accuracy there. Kept within
    ``[RELIABILITY_FLOOR, 1 - RELIABILITY_FLOOR]``.

    Args:
        clusters: The matched clusters with their weights.
        stats: Per-cluster, per-expert statistics.
        experts: The experts to rate (an expert never calibrated rates at the floor).
        prior_strength: Pseudo-samples of the prior.
    """
    if prior_strength < 0 or not math.isfinite(prior_strength):
        raise InvalidInputError(f"prior_strength must be >= 0, got {prior_strength!r}.")
    overall = sample_accuracy(stats)
    total_weight = sum(match.weight for match in clusters) or 1.0
    rated: dict[str, float] = {}
    for name in experts:
        prior = overall.get(name, 0.0)
        value = 0.0
        for match in clusters:
            s = stats.get(match.id, {}).get(name)
            count = (s.samples or s.total) if s is not None else 0
            right = s.sample_accuracy * count if s is not None else 0.0
            pseudo = count + prior_strength
            local = (right + prior_strength * prior) / pseudo if pseudo else prior
            value += match.weight * local
        rated[name] = min(max(value / total_weight, RELIABILITY_FLOOR), 1 - RELIABILITY_FLOOR)
    return rated


def evidence(reliability: float, chance: float) -> float:
    """How much one vote of an expert this reliable counts: ``logit(r) - logit(chance)``.

    Zero at chance (a guesser's vote says nothing); negative below it.
    """
    r = min(max(reliability, RELIABILITY_FLOOR), 1 - RELIABILITY_FLOOR)
    c = min(max(chance, RELIABILITY_FLOOR), 1 - RELIABILITY_FLOOR)
    return math.log(r / (1 - r)) - math.log(c / (1 - c))


def draw_order(
    candidates: Sequence[str],
    value: Mapping[str, float],
    *,
    per_expert: int,
    budget: int,
    depth: bool = False,
) -> list[str]:
    """The order in which adaptive sampling draws samples: one expert name per sample.

    The candidates are sorted by ``value`` (evidence bought per unit of compute,
    higher first; ties keep their order) and drawn round-robin (``depth``: each
    expert's samples before the next expert's), each up to ``per_expert`` samples,
    ``budget`` samples in all. The vote stops drawing as soon as it is confident
    enough, so the cheapest informative samples come first and more samples or
    experts join only while the answer is in doubt.
    """
    if per_expert < 1 or budget < 1:
        raise InvalidInputError(f"per_expert and budget must be >= 1, got {per_expert}, {budget}.")
    order = sorted(candidates, key=lambda name: -value.get(name, 0.0))
    if depth:
        sequence = [name for name in order for _ in range(per_expert)]
    else:
        sequence = [name for _ in range(per_expert) for name in order]
    return sequence[:budget]


GUESS_WEIGHT = 1e-3
"""The vote weight of every expert when none beats chance on a question."""


@dataclass(frozen=True)
class SamplingPlan:
    """Which experts adaptive sampling may draw from for one question, and in what order."""

    order: list[str]
    """One expert name per sample, in draw order (:func:`draw_order`)."""
    evidence: dict[str, float]
    """Each drawn expert's vote weight (:func:`evidence`)."""
    reliability: dict[str, float]
    """Each eligible expert's calibrated per-sample accuracy here (:func:`reliability`)."""
    excluded: list[str]
    """Eligible experts left out: at or below the chance rate here."""
    round_size: int
    """Samples drawn at once before the vote checks its confidence."""

    def rounds(self) -> list[list[str]]:
        """The order cut into rounds of ``round_size`` samples."""
        size = self.round_size
        return [self.order[i : i + size] for i in range(0, len(self.order), size)]


def plan_sampling(
    clusters: Sequence[ClusterMatch],
    stats: Mapping[int, Mapping[str, ExpertStats]],
    eligible: Sequence[str],
    *,
    chance: float,
    top_n: int,
    per_expert: int,
    budget: int,
    round_size: int = 2,
    depth: bool = False,
    prior_strength: float = 4.0,
    unit_costs: Mapping[str, float] | None = None,
) -> SamplingPlan:
    """Plan adaptive sampling for one question (``ALGORITHM.md``, "Beyond the paper").

    1. :func:`reliability` rates every eligible expert on the matched clusters;
       experts whose vote would say nothing or worse (:func:`evidence` <= 0, at or
       below the format's ``chance`` rate) are excluded. When none beats chance, all
       stay, with equal small weights (:data:`GUESS_WEIGHT`): a plain majority of the
       most reliable is still better than no answer.
    2. The ``top_n`` most reliable of the rest are the candidates.
    3. :func:`draw_order` orders their samples by evidence per unit of compute (mean
       generated tokens in the matched clusters times ``unit_costs``), cheapest
       informative first.

    Args:
        clusters: The matched clusters with their weights.
        stats: Per-cluster, per-expert statistics.
        eligible: Experts whose strategy serves the question's format, pool order.
        chance: The format's chance rate (open answers: ``voting.OPEN_CHANCE``).
        top_n: Most experts to draw from.
        per_expert: Most samples of one expert.
        budget: Most samples in all.
        round_size: Samples drawn at once between confidence checks.
        depth: Draw each expert's samples before the next expert's.
        prior_strength: Pseudo-samples of :func:`reliability`'s prior.
        unit_costs: Expert name to its cost per generated token (default 1).

    Raises:
        InvalidInputError: Non-positive counts or no eligible expert.
    """
    if top_n < 1 or round_size < 1:
        raise InvalidInputError(f"top_n and round_size must be >= 1, got {top_n}, {round_size}.")
    if not eligible:
        raise InvalidInputError("No expert's strategy serves this question's format.")
    rated = reliability(clusters, stats, eligible, prior_strength=prior_strength)
    weights = {name: evidence(rated[name], chance) for name in eligible}
    excluded = [name for name in eligible if weights[name] <= 0]
    useful = [name for name in eligible if weights[name] > 0]
    if not useful:  # nobody beats chance here: a plain majority of the least bad
        excluded = []
        useful = list(eligible)
        weights = dict.fromkeys(eligible, GUESS_WEIGHT)
    candidates = sorted(useful, key=lambda name: -rated[name])[:top_n]
    costs = unit_costs or {}
    value = {}
    for name in candidates:
        tokens = _mean_tokens(clusters, stats, name)
        value[name] = weights[name] / max(tokens * costs.get(name, 1.0), 1e-9)
    order = draw_order(candidates, value, per_expert=per_expert, budget=budget, depth=depth)
    return SamplingPlan(
        order=order,
        evidence={name: weights[name] for name in candidates},
        reliability=rated,
        excluded=excluded,
        round_size=round_size,
    )


def _mean_tokens(
    clusters: Sequence[ClusterMatch], stats: Mapping[int, Mapping[str, ExpertStats]], name: str
) -> float:
    """The expert's mean generated tokens in the matched clusters (weighted), else overall."""
    total = weight = 0.0
    for match in clusters:
        s = stats.get(match.id, {}).get(name)
        if s is not None and s.total:
            total += match.weight * s.mean_tokens
            weight += match.weight
    if weight:
        return total / weight
    every = [s.mean_tokens for cluster in stats.values() if (s := cluster.get(name))]
    return sum(every) / len(every) if every else 1.0
