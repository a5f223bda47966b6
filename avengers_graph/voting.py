"""Answer extraction and voting over the samples of the selected experts.

This is the pure core of the *vote* step of the Avengers method (arXiv 2505.19797):

1. :func:`resolve_extractor` picks how to compare the sample texts: a named or
   custom :data:`Extractor`, or, when the format is ``"auto"``, the one the samples
   look like (boxed math, a choice letter, code, a stated number, short text), or
   ``None`` for free text.
2. An extractor maps every sample to a comparable key (:func:`extract_number`,
   :func:`extract_choice`, :func:`extract_text`, :func:`extract_code`), or ``None``
   when the sample states no answer.
3. :func:`majority_vote` counts the keys; ties go to the better-ranked expert.
   Free text is voted by :func:`semantic_vote`, which clusters the sample
   embeddings and answers with the medoid of the largest group.

:func:`vote` chains the three steps. Everything here works on plain strings,
integers and arrays: no model, graph or database is involved.
"""

from __future__ import annotations

import math
import re
import string
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
from sklearn.cluster import AgglomerativeClustering

from avengers_graph import formats
from avengers_graph.errors import InvalidInputError
from avengers_graph.formats.choice import (
    _ANSWER_LETTER_RE,
    _BOXED_LETTER_RE,
    _last_stated_letter,
    _reply_letter,
)
from avengers_graph.formats.code import _FENCED_BLOCK_RE
from avengers_graph.formats.numbers import (
    _BOX_START_RE,
    _REPLY_IS_NUMBER_RE,
    _box_spans,
    _explicit_number_key,
)
from avengers_graph.formats.structured import canonical_json

__all__ = [
    "EXTRACTORS",
    "TEXT_ANSWER_KEY",
    "UNSETTLED",
    "AnswerFormat",
    "Extractor",
    "VoteResult",
    "early_keys",
    "is_decided",
    "majority_answer",
    "majority_vote",
    "merge_fields",
    "repeated_weights",
    "resolve_extractor",
    "semantic_vote",
    "settled_extractor",
    "tool_call_key",
    "tool_calls_fit",
    "tool_vote_key",
    "vote",
    "weighted_vote",
]

_MOVED = frozenset(
    {
        "canonical_json",
        "canonical_math",
        "extract_choice",
        "extract_code",
        "extract_json",
        "extract_number",
        "extract_text",
        "last_boxed",
        "last_code_block",
        "parse_json_object",
    }
)


def __getattr__(name: str) -> Any:
    """Names that moved to :mod:`avengers_graph.formats` (kept for one release)."""
    if name in _MOVED:
        warnings.warn(
            f"avengers_graph.voting.{name} moved to avengers_graph.formats.{name}; "
            "the old name goes away in the next release.",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(formats, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


Extractor = Callable[[str], str | None]
"""Maps a sample text to a comparable key, or ``None`` when nothing can be extracted."""

AnswerFormat = Literal["auto", "number", "math", "choice", "text", "code", "json", "semantic"]
"""The answer formats :func:`resolve_extractor` knows by name."""

_MAX_SEMANTIC_ANSWER_CHARS = 200
_SHORT_TEXT_WORDS = 8
_FLOAT_TIE_TOLERANCE = 1e-9


def merge_fields(
    objects: Sequence[Mapping[str, object]], ranks: Sequence[int]
) -> dict[str, object]:
    """Vote field by field over objects that disagree as wholes.

    Each field takes the value most objects holding that field agree on (compared as
    canonical JSON); ties go to the best-ranked object, then the earliest. Fields keep
    the order of their first appearance.

    Args:
        objects: Parsed objects (e.g. the arguments of a structured-output tool call).
        ranks: The routing rank of the expert behind each object (0 = best).

    Returns:
        The merged object.

    Raises:
        InvalidInputError: If there are no objects or not one rank per object.
    """
    _check_ranks(len(objects), ranks, "objects")
    fields: dict[str, None] = {}
    for obj in objects:
        fields.update(dict.fromkeys(obj))
    merged: dict[str, object] = {}
    for name in fields:
        holders = [(i, obj[name]) for i, obj in enumerate(objects) if name in obj]
        keys = [canonical_json(value) for _, value in holders]
        result = majority_vote(keys, [ranks[i] for i, _ in holders])
        merged[name] = holders[result.winner][1]
    return merged


EXTRACTORS: Mapping[str, Extractor] = MappingProxyType(
    {
        "number": formats.extract_number,
        "math": formats.extract_math,
        "choice": formats.extract_choice,
        "text": formats.extract_text,
        "code": formats.extract_code,
        "json": formats.extract_json,
    }
)
"""The built-in extractors by answer-format name."""


# ---------------------------------------------------------------------------
# Choosing an extractor
# ---------------------------------------------------------------------------

_BOXED_LETTER_CONTENT_RE = re.compile(
    r"\s*(?:\\text\w*\s*\{)?\s*(?:\(\s*[A-Za-z]\s*\)|[A-Z])\s*\}?\s*\.?\s*"
)


def _states_choice_strictly(text: str) -> bool:
    letters = frozenset(string.ascii_uppercase)
    if _reply_letter(text, letters) is not None:
        return True
    return _last_stated_letter(text, letters, (_BOXED_LETTER_RE, _ANSWER_LETTER_RE)) is not None


def _boxes_a_letter(text: str) -> bool:
    spans = _box_spans(text)
    return bool(spans) and _BOXED_LETTER_CONTENT_RE.fullmatch(text, *spans[-1]) is not None


def _states_number_strictly(text: str) -> bool:
    return _explicit_number_key(text) is not None or _REPLY_IS_NUMBER_RE.fullmatch(text) is not None


def _is_short(text: str) -> bool:
    normalised = formats.extract_text(text)
    return normalised is None or len(normalised.split()) <= _SHORT_TEXT_WORDS


class _Unsettled:
    """The type of :data:`UNSETTLED`."""

    def __repr__(self) -> str:
        return "UNSETTLED"


UNSETTLED = _Unsettled()
"""What :func:`settled_extractor` returns when the samples still to come could change
how answers are compared."""


def _auto_extractor(  # noqa: PLR0911 - one return per rule, in the documented order
    texts: Sequence[str], pending: int = 0
) -> Extractor | _Unsettled | None:
    total = len(texts) + pending

    def at_least_half(predicate: Callable[[str], bool]) -> bool | None:
        # None: the ``pending`` samples still to come could tip it either way
        count = sum(1 for text in texts if predicate(text))
        if 2 * count >= total:
            return True
        return None if 2 * (count + pending) >= total else False

    boxed = at_least_half(lambda text: _BOX_START_RE.search(text) is not None)
    if boxed is None:
        return UNSETTLED
    if boxed:
        letters = at_least_half(_boxes_a_letter)
        if letters is None:
            return UNSETTLED
        return formats.extract_choice if letters else formats.extract_number
    for predicate, extractor in (
        (_states_choice_strictly, formats.extract_choice),
        (lambda text: _FENCED_BLOCK_RE.search(text) is not None, formats.extract_code),
        (_states_number_strictly, formats.extract_number),
    ):
        verdict = at_least_half(predicate)
        if verdict is None:
            return UNSETTLED
        if verdict:
            return extractor
    if not all(_is_short(text) for text in texts):
        return None
    return formats.extract_text if pending == 0 else UNSETTLED


def resolve_extractor(
    texts: Sequence[str], answer_format: str | Extractor = "auto"
) -> Extractor | None:
    r"""Choose how to compare the sample texts.

    Args:
        texts: The sample texts (only inspected for ``"auto"``).
        answer_format: An extractor (returned as is), one of the names in
            :data:`EXTRACTORS`, ``"semantic"`` or ``"auto"``. ``"auto"`` picks, in
            order: :func:`formats.extract_number` when at least half the samples hold a
            ``\boxed{}`` (:func:`formats.extract_choice` when those boxes hold a letter);
            :func:`formats.extract_choice` when at least half state a letter strictly (the
            reply is a letter, ``Answer: X``, ``answer is (X)``); :func:`formats.extract_code`
            when at least half hold a fenced code block; :func:`formats.extract_number` when
            at least half state a number strictly (``#### N``, ``Answer: N``, a reply
            that is just a number); :func:`formats.extract_text` when every sample is at most
            eight words; otherwise free text.

    Returns:
        The extractor, or None for free text (vote by embedding similarity); with
        ``"auto"`` and no texts, None.

    Raises:
        InvalidInputError: If the format name is unknown.
    """
    if not isinstance(answer_format, str):
        return answer_format
    if answer_format == "semantic":
        return None
    if answer_format == "auto":
        extractor = _auto_extractor(texts) if texts else None
        return None if isinstance(extractor, _Unsettled) else extractor
    if answer_format in EXTRACTORS:
        return EXTRACTORS[answer_format]
    valid = ", ".join(repr(name) for name in ("auto", *EXTRACTORS, "semantic"))
    msg = f"Unknown answer format {answer_format!r}; use one of {valid} or a callable."
    raise InvalidInputError(msg)


# ---------------------------------------------------------------------------
# Voting
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VoteResult:
    """The outcome of a vote over the samples."""

    winner: int
    """Index into the samples of the representative of the winning answer."""
    answer: str
    """The winning key (for semantic votes: the medoid's text, whitespace-collapsed)."""
    votes: dict[str, float]
    """Number of samples per key (weighted votes: summed weight), in order of first
    appearance."""
    confidence: float
    """The winner's votes over the number of samples that got a key (0.0 if none)."""
    keys: list[str | None]
    """The key of every sample (for semantic votes: its group's answer)."""


def _check_ranks(count: int, ranks: Sequence[int], what: str) -> None:
    if count == 0:
        msg = "Cannot vote over zero samples; pass at least one."
        raise InvalidInputError(msg)
    if len(ranks) != count:
        msg = f"Got {count} {what} but {len(ranks)} ranks; pass one rank per sample."
        raise InvalidInputError(msg)


def majority_vote(keys: Sequence[str | None], ranks: Sequence[int]) -> VoteResult:
    """Take the key most samples agree on.

    Samples whose key is None do not vote. Ties between keys go to the key whose best
    (lowest) rank is lowest, then to the key that appeared first. The representative
    sample of the winning key is its best-ranked one, then the earliest.

    Args:
        keys: The extracted key of every sample.
        ranks: ``ranks[i]`` is the routing rank (0 = best) of the expert that produced
            sample ``i``.

    Returns:
        The vote. When no sample has a key, the winner is the best-ranked sample, the
        answer is empty and the confidence is 0.0.

    Raises:
        InvalidInputError: If there are no samples or not one rank per sample.
    """
    _check_ranks(len(keys), ranks, "keys")
    counts: dict[str, int] = {}
    best: dict[str, tuple[int, int]] = {}
    for index, key in enumerate(keys):
        if key is None:
            continue
        counts[key] = counts.get(key, 0) + 1
        best[key] = min(best.get(key, (ranks[index], index)), (ranks[index], index))
    if not counts:
        winner = min(range(len(keys)), key=lambda index: (ranks[index], index))
        return VoteResult(winner=winner, answer="", votes={}, confidence=0.0, keys=list(keys))
    answer = min(counts, key=lambda key: (-counts[key], best[key]))
    return VoteResult(
        winner=best[answer][1],
        answer=answer,
        votes=dict(counts),
        confidence=counts[answer] / sum(counts.values()),
        keys=list(keys),
    )


def is_decided(
    keys: Sequence[str | None], pending: float, *, weights: Sequence[float] | None = None
) -> bool:
    """Whether the votes still to come can no longer change the answer.

    True when the leading key's votes exceed any other key's, or a new key's none, by
    more than ``pending``, the most the votes still to come could add to one key.
    Strictly more: a tie could go to a better-ranked expert still to answer.

    Args:
        keys: The keys of the samples so far (None does not vote).
        pending: The votes still to come: samples for a majority, their summed weights
            for a weighted vote.
        weights: Each sample's weight (default 1 each: a majority); as in
            :func:`weighted_vote`, a weight of at most 0 does not vote.

    Raises:
        InvalidInputError: Not one weight per key.
    """
    if weights is not None and len(weights) != len(keys):
        raise InvalidInputError(f"Got {len(keys)} keys but {len(weights)} weights.")
    totals: dict[str, float] = {}
    for key, weight in zip(keys, weights or [1.0] * len(keys), strict=True):
        if key is not None and weight > 0 and math.isfinite(weight):
            totals[key] = totals.get(key, 0.0) + weight
    if not totals:
        return False
    ranked = sorted(totals.values(), reverse=True)
    runner_up = ranked[1] if len(ranked) > 1 else 0.0
    return ranked[0] > runner_up + pending


def settled_extractor(
    texts: Sequence[str], answer_format: str | Extractor, pending: int
) -> Extractor | _Unsettled | None:
    """:func:`resolve_extractor` when ``pending`` more samples may still come.

    Returns the extractor that every completion of the samples would resolve to, or
    :data:`UNSETTLED` when the samples to come could change it (``"auto"`` near one of
    its at-least-half thresholds, or all short so far).
    """
    if answer_format == "auto":
        return _auto_extractor(texts, pending) if texts else UNSETTLED
    return resolve_extractor(texts, answer_format)


ToolSchemas = Mapping[str, Mapping[str, object]]
"""Tool name to its ``parameters`` JSON schema (``tool_parsers.bound_tool_parameters``)."""

TEXT_ANSWER_KEY = "text"
"""The key of every sample that answers in text when tools are in play."""


def tool_calls_fit(calls: Sequence[Mapping[str, object]], schemas: ToolSchemas) -> bool:
    """Whether every call names a bound tool and gives every argument its schema requires.

    A call that fails this cannot run (the tool would refuse it), so it does not vote.
    """
    for call in calls:
        schema = schemas.get(str(call.get("name")))
        if schema is None:
            return False
        args = call.get("args")
        given = args if isinstance(args, Mapping) else {}
        required = schema.get("required")
        if isinstance(required, list) and any(key not in given for key in required):
            return False
    return True


def tool_vote_key(
    calls: Sequence[Mapping[str, object]], text: str, schemas: ToolSchemas | None = None
) -> str | None:
    """A sample's key when tools are in play: the step it takes.

    A step of a tool loop is an action: each set of tool calls is one, and answering in
    text is one (:data:`TEXT_ANSWER_KEY`, whatever the wording: three replies that state
    the same result in three ways are three votes to answer now, not one vote each
    against a call made three times). The text that answers is then the best-ranked
    text sample, as for any key. With the bound tools' ``schemas``, a sample whose calls
    do not fit them (:func:`tool_calls_fit`) has no key: it abstains rather than
    out-vote calls that run. ``text`` is the sample's reply (unused: kept so callers
    key every sample the same way).
    """
    del text
    if calls and schemas is not None and not tool_calls_fit(calls, schemas):
        return None
    return tool_call_key(calls) or TEXT_ANSWER_KEY


def early_keys(
    texts: Sequence[str],
    calls: Sequence[Sequence[Mapping[str, object]]],
    answer_format: str | Extractor,
    pending: int,
    *,
    tools: bool = False,
    schemas: ToolSchemas | None = None,
) -> list[str | None] | None:
    """The samples' keys if the vote on every completion would key them the same way.

    The vote compares tool calls when any sample has some; otherwise it resolves an
    extractor over all the texts. With samples still to come, the keys are only
    final when that choice cannot change: a tool call already came, or no tool is
    bound and the extractor is settled. Code answers (voted by running them) and
    free text (voted by embedding similarity) are never keyed early.

    Args:
        texts: Texts of the samples so far.
        calls: Tool calls of the samples so far, one list per sample.
        answer_format: As :func:`resolve_extractor`.
        pending: Samples still to come.
        tools: Whether the experts were given tools (a later sample may call one).
        schemas: The bound tools' parameter schemas, as :func:`tool_vote_key` takes them.

    Returns:
        One key per sample, or None when they cannot be final yet.
    """
    if any(calls):
        return [tool_vote_key(c, t, schemas) for c, t in zip(calls, texts, strict=True)]
    if tools and pending:
        return None
    extractor = settled_extractor(texts, answer_format, pending)
    if isinstance(extractor, _Unsettled) or extractor is None or extractor is formats.extract_code:
        return None
    return [extractor(text) for text in texts]


def _unit_rows(vectors: np.ndarray | Sequence[Sequence[float]], count: int) -> np.ndarray:
    matrix = np.asarray(vectors, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != count or matrix.shape[1] == 0:
        msg = (
            f"`vectors` must be a 2-D array with one row per sample ({count}), "
            f"got shape {matrix.shape}."
        )
        raise InvalidInputError(msg)
    if not np.all(np.isfinite(matrix)):
        msg = "`vectors` holds NaN or infinite values; check the embedding model."
        raise InvalidInputError(msg)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if np.any(norms == 0):
        msg = "`vectors` holds an all-zero embedding, which has no direction to compare."
        raise InvalidInputError(msg)
    return np.asarray(matrix / norms)


def _medoid(members: list[int], unit: np.ndarray, ranks: Sequence[int]) -> int:
    """The member most similar to the others; ties -> lower rank, then earlier."""
    block = unit[members]
    totals = (block @ block.T).sum(axis=1)
    top = float(totals.max())
    tied = [
        m for m, total in zip(members, totals, strict=True) if total >= top - _FLOAT_TIE_TOLERANCE
    ]
    return min(tied, key=lambda index: (ranks[index], index))


def semantic_vote(
    vectors: np.ndarray | Sequence[Sequence[float]],
    texts: Sequence[str],
    ranks: Sequence[int],
    *,
    threshold: float = 0.85,
) -> VoteResult:
    """Vote over free-text samples by clustering their embeddings.

    The L2-normalised embeddings are grouped by average-linkage agglomerative
    clustering on cosine distance, cut at ``1 - threshold``. The largest group wins
    (ties: the group holding the best rank, then the earliest sample); the answer is
    that group's medoid (the member with the highest summed cosine similarity to the
    group; ties: lower rank, then earlier).

    Args:
        vectors: One embedding per sample.
        texts: The sample texts.
        ranks: The routing rank of the expert behind each sample (0 = best).
        threshold: Cosine similarity above which samples count as the same answer.

    Returns:
        The vote; ``keys`` holds each sample's group answer (its medoid's text,
        whitespace-collapsed, at most 200 characters).

    Raises:
        InvalidInputError: If the inputs are empty, of different lengths, not finite,
            hold a zero vector, or the threshold is outside [-1, 1].
    """
    _check_ranks(len(texts), ranks, "texts")
    if not -1.0 <= threshold <= 1.0:
        msg = f"`threshold` is a cosine similarity in [-1, 1], got {threshold}."
        raise InvalidInputError(msg)
    unit = _unit_rows(vectors, len(texts))
    if len(texts) == 1:
        labels = [0]
    else:
        clustering = AgglomerativeClustering(
            n_clusters=None,
            metric="cosine",
            linkage="average",
            distance_threshold=1.0 - threshold,
        )
        labels = [int(label) for label in clustering.fit_predict(unit)]
    groups: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        groups.setdefault(label, []).append(index)
    medoids = {label: _medoid(members, unit, ranks) for label, members in groups.items()}
    answers = {
        label: " ".join(texts[medoid].split())[:_MAX_SEMANTIC_ANSWER_CHARS]
        for label, medoid in medoids.items()
    }
    keys: list[str | None] = [answers[label] for label in labels]
    by_key = majority_vote(keys, ranks)
    # Groups whose medoids read the same share a key; the winner is the medoid of the
    # group holding the best-ranked sample of the winning key.
    return VoteResult(
        winner=medoids[labels[by_key.winner]],
        answer=by_key.answer,
        votes=by_key.votes,
        confidence=by_key.confidence,
        keys=keys,
    )


def vote(
    texts: Sequence[str],
    ranks: Sequence[int],
    *,
    answer_format: str | Extractor = "auto",
    vectors: np.ndarray | None = None,
    threshold: float = 0.85,
) -> VoteResult:
    """Extract an answer from every sample and take the majority.

    With an extractor (see :func:`resolve_extractor`) this is :func:`majority_vote`
    over the extracted keys. Free text, and samples from which the extractor gets no
    key at all, are voted by :func:`semantic_vote` when ``vectors`` are given, else
    by :func:`majority_vote` over :func:`formats.extract_text` keys.

    Args:
        texts: The sample texts.
        ranks: The routing rank of the expert behind each sample (0 = best).
        answer_format: How to compare the samples (see :func:`resolve_extractor`).
        vectors: Embeddings of the samples, one row each, for free text.
        threshold: Cosine similarity for :func:`semantic_vote`.

    Returns:
        The vote.

    Raises:
        InvalidInputError: If there are no samples, not one rank per sample, or the
            answer format is unknown.
    """
    _check_ranks(len(texts), ranks, "texts")
    extractor = resolve_extractor(texts, answer_format)
    if extractor is not None:
        keys = [extractor(text) for text in texts]
        if any(key is not None for key in keys):
            return majority_vote(keys, ranks)
    if vectors is not None:
        return semantic_vote(vectors, texts, ranks, threshold=threshold)
    return majority_vote([formats.extract_text(text) for text in texts], ranks)


def majority_answer(texts: Sequence[str], extractor: Extractor) -> tuple[str | None, int]:
    """The majority answer of one expert's samples for one question (for calibration).

    Args:
        texts: The expert's sample texts.
        extractor: How to extract a key from a text.

    Returns:
        The majority key (ties: the key that appeared first) and the index of the
        first sample carrying it; ``(None, 0)`` when no sample yields a key.
    """
    if not texts:
        return None, 0
    result = majority_vote([extractor(text) for text in texts], [0] * len(texts))
    if not result.votes:
        return None, 0
    return result.answer, result.winner


# ---------------------------------------------------------------------------
# Tool calls
# ---------------------------------------------------------------------------


def tool_call_key(calls: Sequence[Mapping[str, object]]) -> str | None:
    """Canonical key of a reply's tool calls: the set of (name, arguments), ids ignored.

    Two replies vote together when they call the same tools with the same arguments,
    in any order (parallel calls are a set); arguments compare as canonical JSON
    (sorted keys, ``2.0 == 2``).

    Args:
        calls: The reply's ``tool_calls`` (LangChain ``ToolCall`` dicts).

    Returns:
        The key, or None when there is no call.
    """
    if not calls:
        return None
    canonical = {
        canonical_json({"name": call.get("name"), "args": call.get("args") or {}}) for call in calls
    }
    return "tool_calls:" + "|".join(sorted(canonical))


# ---------------------------------------------------------------------------
# Weighted votes (ALGORITHM.md, "Beyond the paper")
# ---------------------------------------------------------------------------

OPEN_CHANCE = 0.05
"""The chance rate of open answers (numbers, expressions, code): how often two wrong
answers collide, roughly, so a lone weak vote is not taken for a sure one."""


def votes_by_key(format_name: str) -> bool:
    """Whether answers of this format vote by key, so adaptive sampling serves them.

    Numbers, expressions, choices, labels, short text and code do; free text (voted by
    meaning), JSON (voted as objects) and an unknown format do not.
    """
    fmt = formats.FORMATS.get(format_name)
    return fmt is not None and not fmt.votes_by_meaning and format_name != "json"


def chance_rate(detected: formats.Detected) -> float:
    """A question's chance rate: its format's (``1/4`` for four options), else :data:`OPEN_CHANCE`.

    Open formats (numbers, expressions, code, an unknown format) have no guess rate;
    they vote with :data:`OPEN_CHANCE`.
    """
    fmt = formats.FORMATS.get(detected.format)
    chance = fmt.chance(detected) if fmt is not None else 0.0
    return chance if chance > 0 else OPEN_CHANCE


def weighted_vote(
    keys: Sequence[str | None],
    weights: Sequence[float],
    ranks: Sequence[int],
    *,
    chance: float = OPEN_CHANCE,
) -> VoteResult:
    """The answer with the most evidence, and the probability that it is right.

    Every sample votes for its key with its weight (:func:`avengers_graph.routing.evidence`:
    the log-odds of its expert's calibrated reliability over the format's chance
    rate). Samples without a key, or with a weight of at most 0, do not vote: an empty
    or unparseable answer never wins. The winner is the key with the largest summed
    weight (ties: the best rank, then the first seen). ``confidence`` is the winner's
    posterior probability when each vote is right with its reliability and wrong
    answers spread over ``1 / chance`` alternatives: ``exp(W_k)`` normalised over the
    keys seen plus the alternatives nobody voted for (weight 0 each).

    Args:
        keys: The key of every sample (None: no answer).
        weights: The weight of every sample's vote.
        ranks: The routing rank of every sample's expert (0 = best).
        chance: The format's chance rate (``1/4`` for four options; open answers
            :data:`OPEN_CHANCE`).

    Returns:
        The vote; ``votes`` holds each key's summed weight, rounded to 3 decimals.

    Raises:
        InvalidInputError: No samples, or not one weight and one rank per sample.
    """
    _check_ranks(len(keys), ranks, "keys")
    if len(weights) != len(keys):
        raise InvalidInputError(f"Got {len(keys)} keys but {len(weights)} weights.")
    if not 0 < chance < 1:
        chance = OPEN_CHANCE
    totals: dict[str, float] = {}
    best: dict[str, tuple[int, int]] = {}
    for index, (key, weight) in enumerate(zip(keys, weights, strict=True)):
        if key is None or not weight > 0 or not math.isfinite(weight):
            continue
        totals[key] = totals.get(key, 0.0) + weight
        best[key] = min(best.get(key, (ranks[index], index)), (ranks[index], index))
    if not totals:
        winner = min(range(len(keys)), key=lambda index: (ranks[index], index))
        return VoteResult(winner=winner, answer="", votes={}, confidence=0.0, keys=list(keys))
    answer = min(totals, key=lambda key: (-totals[key], best[key]))
    unseen = max(1.0 / chance - len(totals), 0.0)
    top = max(totals.values())
    mass = sum(math.exp(total - top) for total in totals.values()) + unseen * math.exp(-top)
    return VoteResult(
        winner=best[answer][1],
        answer=answer,
        votes={key: round(total, 3) for key, total in totals.items()},
        confidence=math.exp(totals[answer] - top) / mass,
        keys=list(keys),
    )


def repeated_weights(
    experts: Sequence[str], evidence: Mapping[str, float], discount: float = 1.0
) -> list[float]:
    """Each sample's weight: its expert's evidence times ``discount ** j`` for its j-th sample.

    Samples of one model at one temperature repeat each other's mistakes; a discount
    below 1 counts an expert's later samples for less (1: independent votes).
    """
    if not 0 < discount <= 1:
        raise InvalidInputError(f"discount must be in (0, 1], got {discount!r}.")
    seen: dict[str, int] = {}
    weights = []
    for name in experts:
        j = seen.get(name, 0)
        seen[name] = j + 1
        weights.append(evidence.get(name, 0.0) * discount**j)
    return weights
