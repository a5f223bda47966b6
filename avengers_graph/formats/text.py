"""Short text answers: SQuAD-style normalisation and grading. Pure functions on strings."""

from __future__ import annotations

import re
import string
import unicodedata

from avengers_graph.errors import InvalidInputError

__all__ = ["extract_text", "grade_text"]

_ANSWER_PREFIX_RE = re.compile(
    r"\A\s*(?:the\s+)?(?:final\s+)?answer\b\s*(?:is\b)?\s*[:\uff1a]?\s*", re.IGNORECASE
)
_ARTICLES_RE = re.compile(r"\b(?:a|an|the)\b")
_ASCII_PUNCTUATION = frozenset(string.punctuation)


def extract_text(text: str) -> str | None:
    """Normalise a short text answer for exact comparison (as SQuAD's evaluation does).

    Lowercases, drops a leading ``Answer:`` / ``The answer is``, punctuation, the
    articles *a*, *an*, *the* and extra whitespace.

    Args:
        text: A model reply.

    Returns:
        The normalised text, or None when nothing is left.
    """
    # A reply that is only "Answer." keeps its word rather than normalising to nothing.
    return _squad_normalise(_ANSWER_PREFIX_RE.sub("", text)) or _squad_normalise(text) or None


def _squad_normalise(text: str) -> str:
    s = "".join(
        " " if char in _ASCII_PUNCTUATION or unicodedata.category(char).startswith("P") else char
        for char in text.lower()
    )
    return " ".join(_ARTICLES_RE.sub(" ", s).split())


def grade_text(output: str, reference: str) -> bool:
    """Grade a short text answer by normalised exact match (as SQuAD does).

    The reply is also correct when its last non-empty line, normalised, equals the
    normalised reference (a reply that reasons first and answers last).

    Args:
        output: The model's reply.
        reference: The reference answer.

    Returns:
        Whether the reply, or its final line, equals the reference.

    Raises:
        InvalidInputError: If the reference is empty after normalisation.
    """
    expected = extract_text(reference)
    if expected is None:
        msg = f"The reference answer {reference!r} is empty after normalisation."
        raise InvalidInputError(msg)
    if extract_text(output) == expected:
        return True
    lines = [line for line in output.splitlines() if line.strip()]
    return bool(lines) and extract_text(lines[-1]) == expected
