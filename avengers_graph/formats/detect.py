r"""Tell a question's answer format from its text alone.

:func:`detect` reads the question a user asks (or a validation question) and says what
kind of answer it calls for, in this order:

1. ``code``: a function to write (a ``def name(`` signature, a fenced Python block, or
   "write a function / program", "your code should pass these tests");
2. ``choice``: options labelled ``A)``, ``(B)``, ``C.`` ... on their own lines or
   inline as ``A) x B) y``, starting at A with consecutive letters;
3. ``label``: a closed question naming its answers, ``... positive or negative?``,
   ``true or false``, ``yes or no``;
4. ``math``: a quantity to compute written with LaTeX (``$...$``, ``\frac``), or
   asked in a form only LaTeX writes ("in simplest radical form", "as a common
   fraction", "in interval notation");
5. ``number``: a quantity to compute in words (``how many``, ``how much``, an arithmetic
   expression, "calculate", "what is the total ..." with a number in the question);
6. ``free``: anything else (chat, explanations, summaries, RAG answers).

The same function serves calibration, replay and service, so the routing statistics
describe the prompts the experts get in service (:mod:`avengers_graph.experts.contract`).
Pure: regular expressions on a string.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Detected", "detect", "option_letters", "option_text"]

_OPTION_LINE_RE = re.compile(r"^[ \t]*\(?([A-J])[).:][ \t]+\S", re.MULTILINE)
_OPTION_INLINE_RE = re.compile(r"(?:^|[\s(])\(?([A-J])\)[ \t]*[^\s)]")
_CODE_RES = (
    re.compile(r"^[ \t]*def[ \t]+\w+[ \t]*\(", re.MULTILINE),
    re.compile(r"```(?:python|py)\b", re.IGNORECASE),
    re.compile(
        r"\b(?:write|implement|complete|create|define)\s+(?:a|an|the)\s+"
        r"(?:python\s+|recursive\s+|helper\s+)?(?:function|program|script|method|class)\b",
        re.IGNORECASE,
    ),
    re.compile(r"\byour code should pass\b", re.IGNORECASE),
)
_LABEL_PAIRS = (
    ("true", "false"),
    ("yes", "no"),
    ("positive", "negative"),
)
_LABEL_RE = re.compile(
    r"\b(?P<a>[A-Za-z][A-Za-z-]{1,20})\s*(?:,\s*(?P<b>[A-Za-z][A-Za-z-]{1,20})\s*,?)?\s+or\s+"
    r"(?P<c>[A-Za-z][A-Za-z-]{1,20})\s*\?",
)
_CLOSED_QUESTION_RE = re.compile(
    r"(?:^|[.!?\n]\s*)(?:is|are|was|were|does|do|did|would|will|should|can)\b[^.!?\n]{0,160}$",
    re.IGNORECASE,
)
_LATEX_RE = re.compile(
    r"\\\(|\\\[|\\begin\{|\\(?:left|frac|dfrac|sqrt|cdot|times|pi|sum|int|binom|le|ge|neq|circ|theta)\b"
    r"|\$[^$\n]{0,60}?[\\^_{}=<>][^$\n]{0,60}?\$"
    r"|\$[^\s$]{1,40}\$"
)
_MATH_VERB_RE = re.compile(
    r"\b(?:find|compute|evaluate|simplify|solve|determine|express|what|how|calculate|"
    r"which|let|if|suppose|factor|expand|convert|round|write)\b",
    re.IGNORECASE,
)
_QUANTITY_RE = re.compile(
    r"\bhow\s+(?:many|much|long|far|old|fast|tall|often)\b"
    r"|\bwhat(?:'s|\s+is|\s+are|\s+was|\s+will\s+be)\s+(?:the|her|his|their|its|your|my|our)\s+"
    r"(?:[a-z]+\s+){0,2}(?:total|sum|product|difference|value|number|"
    r"result|cost|price|area|perimeter|volume|average|mean|remainder|percentage|amount|"
    r"length|radius|distance|probability|ratio|speed|weight|height|width|age)\b"
    r"|\b(?:calculate|compute|evaluate)\b|\bexpress\s+your\s+answer\b",
    re.IGNORECASE,
)
_ARITHMETIC_RE = re.compile(r"\d\s*(?:[-+*/x\u00d7\u00f7^%]|\*\*)\s*\(?-?\d")
_DIGIT_RE = re.compile(r"\d")
_NUMBER_RE = re.compile(r"\d+(?:[.,]\d+)*")
_LAST_QUESTION_RE = re.compile(r"(?:^|[.!?\n])\s*([^.!?\n]*\?)\s*$")
_QUANTITY_QUESTION_RE = re.compile(
    r"^(?:what|what's|how|which|find|calculate|compute)\b|,\s*(?:what|what's|how)\b",
    re.IGNORECASE,
)
"""The asked part of a word problem's last question, first or after a leading clause
("If she works 50 weeks a year, what's her annual salary?")."""
_MATH_FORM_RE = re.compile(
    r"\b(?:simplest\s+radical\s+form|(?:a|as\s+a)\s+common\s+fraction|interval\s+notation)\b",
    re.IGNORECASE,
)
"""Answer forms only LaTeX writes: such a quantity is ``math``, not a plain number."""
_OPEN_ENDED_RE = re.compile(
    r"\b(?:why|explain|describe|name|suggest|recommend|should|would you|opinion|think)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Detected:
    """What a question asks for."""

    format: str
    """The answer format's name (a key of :data:`avengers_graph.formats.FORMATS`)."""
    options: tuple[str, ...] = ()
    """The option letters (``choice``) or answer words (``label``) the question offers."""


def option_letters(question: str) -> tuple[str, ...]:
    """The option letters a question offers, ``("A", "B", ...)``, or ``()`` without options.

    Options are ``A)``, ``(A)``, ``A.`` or ``A:`` at the start of a line, or ``A)`` /
    ``(A)`` inline; the letters must run from A without a gap, at least two of them.
    """
    for pattern in (_OPTION_LINE_RE, _OPTION_INLINE_RE):
        letters: list[str] = []
        for match in pattern.finditer(question):
            letter = match.group(1)
            if letter == chr(ord("A") + len(letters)):
                letters.append(letter)
            elif letter == "A":  # a new list of options starts: keep the last one
                letters = ["A"]
        if len(letters) >= 2:
            return tuple(letters)
    return ()


def option_text(question: str, letter: str) -> str | None:
    """The text of one option (``"Paris"`` for ``B`` in ``... B) Paris``), if found."""
    pattern = re.compile(
        rf"(?:^|[\s(])\(?{re.escape(letter)}[).:][ \t]*(.+?)(?=\s+\(?[A-J][).:]\s|\n|$)",
        re.MULTILINE,
    )
    matches = pattern.findall(question)
    return matches[-1].strip() if matches else None


def _labels(question: str) -> tuple[str, ...]:
    tail = question.strip().splitlines()[-1] if question.strip() else ""
    for line in [*(question.strip().splitlines() or [""])[:3], tail]:
        match = _LABEL_RE.search(line)
        if match is None:
            continue
        words = tuple(w.lower() for w in match.group("a", "b", "c") if w)
        if any(pair[0] in words and pair[1] in words for pair in _LABEL_PAIRS):
            return words
        before = line[: match.start()] + match.group(0)
        if _CLOSED_QUESTION_RE.search(before) and len(set(words)) == len(words):
            return words
    return ()


def _word_problem(question: str) -> bool:
    """At least two numbers, and a last question asking what or how much (not why)."""
    if len(_NUMBER_RE.findall(question)) < 2:
        return False
    match = _LAST_QUESTION_RE.search(question.strip())
    if match is None:
        return False
    asked = match.group(1).strip()
    return bool(_QUANTITY_QUESTION_RE.search(asked)) and not _OPEN_ENDED_RE.search(asked)


def detect(question: str) -> Detected:  # noqa: PLR0911 - one return per rule, in order
    """The answer format a question calls for (see the module docstring for the rules).

    Args:
        question: The question as the user wrote it (the last human message).

    Returns:
        The format's name, with the options for ``choice`` and ``label``.
    """
    if any(pattern.search(question) for pattern in _CODE_RES):
        return Detected("code")
    if letters := option_letters(question):
        return Detected("choice", letters)
    if labels := _labels(question):
        return Detected("label", labels)
    if (_LATEX_RE.search(question) and _MATH_VERB_RE.search(question)) or _MATH_FORM_RE.search(
        question
    ):
        return Detected("math")
    if (
        _ARITHMETIC_RE.search(question)
        or (_QUANTITY_RE.search(question) and _DIGIT_RE.search(question))
        or _word_problem(question)
    ):
        return Detected("number")
    if re.search(r"\bhow\s+(?:many|much)\b", question, re.IGNORECASE):
        return Detected("number")
    return Detected("free")
