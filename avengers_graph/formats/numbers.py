r"""Numeric and math answers: canonical keys and grading.

:func:`extract_number` reduces a reply to the canonical key of its final answer (the
last ``\boxed{}``, else an explicit ``Answer: N`` / ``#### N``, else the last number);
:func:`canonical_math` does the same for a bare answer; :func:`grade_number` compares a
reply with a reference through those keys. Pure functions on strings.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from fractions import Fraction

from avengers_graph.errors import InvalidInputError

__all__ = ["canonical_math", "extract_number", "grade_number", "last_boxed"]

_MAX_SEMANTIC_ANSWER_CHARS = 200
_SHORT_TEXT_WORDS = 8
# Numbers longer than this, or with a larger decimal exponent, are compared as text:
# exact arithmetic on them would be slow and Python refuses to print huge integers.
_MAX_NUMBER_CHARS = 2000
_MAX_EXPONENT = 1000
_FLOAT_TIE_TOLERANCE = 1e-9

# ---------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------

_DECIMAL = r"(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_PLAIN_NUMBER_RE = re.compile(rf"(-?{_DECIMAL})(?:/(-?{_DECIMAL}))?")
_LATEX_FRACTION_RE = re.compile(rf"(-?)\\frac\{{(-?{_DECIMAL})\}}\{{(-?{_DECIMAL})\}}")
_LATEX_SHORT_FRACTION_RE = re.compile(r"(-?)\\frac(\d)(\d)")
_SCIENTIFIC_RE = re.compile(rf"(-?{_DECIMAL})(?:\\times|\\cdot|\u00d7|\*)10\^\{{?(-?\d+)\}}?")
_EXPONENT_RE = re.compile(r"[eE]([-+]?\d+)")

# A number written in running text, possibly in LaTeX. It must not be glued to a
# word or to another number (``x2``, ``1.2.3``), and a minus sign only counts when it
# is not a binary operator (``5-3`` has the numbers 5 and 3).
_NUMBER_TOKEN_RE = re.compile(
    r"""
    (?<![\w.])
    [-\u2212]?
    (?:
        \\[dt]?frac\s*\{\s*[-\u2212]?\d+(?:\.\d+)?\s*\}\s*\{\s*[-\u2212]?\d+(?:\.\d+)?\s*\}
      | \\[dt]?frac\d\d
      | (?:\d{1,3}(?:,\d{3}(?!\d))+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?(?:\s*/\s*\d+(?![\d.]))?
      | \.\d+(?:[eE][-+]?\d+)?
    )
    (?:\s*(?:\\times|\u00d7|\\cdot)\s*10\^\{?[-\u2212]?\d+\}?)?
    (?:\s*\\?%)?
    """,
    re.VERBOSE,
)
_BOX_START_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_EXPLICIT_NUMBER_RE = re.compile(
    r"(?:\#\#\#\#|\banswer\b\s*(?:is\b\s*:?|[:=]))(?:\s|\*\*|\$|\\\(|\\\[|:)*",
    re.IGNORECASE,
)
_REPLY_IS_NUMBER_RE = re.compile(
    rf"\s*[$*]*\s*(?:{_NUMBER_TOKEN_RE.pattern})\s*[$*]*(?:\s*[A-Za-z]+){{0,2}}\s*\.?\s*",
    re.VERBOSE,
)
_PROSE_WORD_RE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")
r"""A word of two letters or more that is not a LaTeX command (``sqrt`` in ``\sqrt``)."""
_MAX_BARE_ANSWER_CHARS = 80
_MAX_BARE_ANSWER_WORDS = 3
"""Words of a bare answer with no number (``Evelyn``, ``No solution``); more is prose."""
_ASSIGNMENT_RE = re.compile(r"[A-Za-z](?:_\{?\w+\}?)?\s*=\s*([^=]+)")
_NUMBER_WITH_UNITS_RE = re.compile(
    rf"((?:{_NUMBER_TOKEN_RE.pattern}))\s+[A-Za-z]{{2,}}(?:\s+[A-Za-z]+)*\.?", re.VERBOSE
)

_THOUSANDS_COMMA_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
# a unit in text mode, with an optional power (``\text{ cm}^2``)
_LATEX_UNIT_RE = re.compile(r"\\(?:text|textrm|mathrm|mbox)\s*\{[^{}]*\}(?:\^\{?\d\}?)?")
# ``\frac{270}7`` and ``\frac7{2}``: one argument braced, the other a single digit
_HALF_BRACED_FRACTION_RES = (
    (re.compile(r"\\frac\{([^{}]+)\}(\d)"), r"\\frac{\1}{\2}"),
    (re.compile(r"\\frac(\d)\{"), r"\\frac{\1}{"),
)
_LONE_PARENTHESISED_LETTER_RE = re.compile(r"\(([A-Za-z])\)")
_DEGREES_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\u00b0")
_LATEX_SPACING_RE = re.compile(r"\\[!,;: ]|\\(?:left|right)(?![A-Za-z])|\\displaystyle")
_LATEX_TEXT_WRAPPER_RE = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_SINGLE_BRACED_SCRIPT_RE = re.compile(r"([\^_])\{(\\?\w)\}")
_SHORT_FRACTION_ARGS_RE = re.compile(r"\\frac(\w)(\w)")
_SHORT_SQRT_ARG_RE = re.compile(r"\\sqrt(\w)")


def _decimal_fraction(text: str) -> Fraction | None:
    """Exact value of a decimal literal such as ``-1.50e3``; None when out of bounds."""
    exponent = _EXPONENT_RE.search(text)
    if exponent is not None and abs(int(exponent.group(1))) > _MAX_EXPONENT:
        return None
    return Fraction(text)


def _number_value(text: str) -> Fraction | None:
    r"""Exact value of a string that is a number and nothing else (after cleaning).

    Currency and percent signs, thousands separators, LaTeX spacing, degree marks and
    ``\text{...}`` units are ignored; ``\frac``, ``a/b`` and ``a \times 10^{n}`` are
    understood.

    Args:
        text: The candidate number.

    Returns:
        The value, or None when the text is not a number.
    """
    s = text.replace("\u2212", "-")
    s = _LATEX_UNIT_RE.sub("", s)
    s = _DEGREES_RE.sub("", s)
    s = _LATEX_SPACING_RE.sub("", s)
    s = re.sub(r"\s+", "", s)
    s = s.replace("{,}", "").replace("\\$", "").replace("$", "").replace("\\%", "")
    s = s.replace("%", "").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    for pattern, replacement in _HALF_BRACED_FRACTION_RES:
        s = pattern.sub(replacement, s)
    s = _THOUSANDS_COMMA_RE.sub("", s).rstrip(".")
    while s.startswith("{") and s.endswith("}") and len(s) > 2:
        s = s[1:-1]
    if not s or len(s) > _MAX_NUMBER_CHARS:
        return None
    if (match := _LATEX_FRACTION_RE.fullmatch(s)) or (
        match := _LATEX_SHORT_FRACTION_RE.fullmatch(s)
    ):
        sign, numerator, denominator = match.groups()
    elif match := _PLAIN_NUMBER_RE.fullmatch(s):
        sign, (numerator, denominator) = "", match.groups()
        denominator = denominator or "1"
    elif match := _SCIENTIFIC_RE.fullmatch(s):
        mantissa = _decimal_fraction(match.group(1))
        power = int(match.group(2))
        if mantissa is None or abs(power) > _MAX_EXPONENT:
            return None
        return mantissa * Fraction(10) ** power
    else:
        return None
    top, bottom = _decimal_fraction(numerator), _decimal_fraction(denominator)
    if top is None or bottom is None or bottom == 0:
        return None
    value = top / bottom
    return -value if sign else value


def _fraction_key(value: Fraction) -> str:
    """Canonical key of an exact number: ``"1000"`` for integers, ``"p/q"`` otherwise."""
    if value.denominator == 1:
        return str(value.numerator)
    return f"{value.numerator}/{value.denominator}"


def _normalise_latex(text: str) -> str:
    """Normalise a LaTeX expression so that formatting-only differences compare equal."""
    s = text.strip().strip("$").strip()
    if s.startswith("\\(") and s.endswith("\\)"):
        s = s[2:-2]
    s = _LATEX_SPACING_RE.sub("", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _LATEX_TEXT_WRAPPER_RE.sub(r"\1", s)
    s = re.sub(r"\s+", "", s).replace("\u2212", "-")
    s = _SINGLE_BRACED_SCRIPT_RE.sub(r"\1\2", s)
    s = _SHORT_FRACTION_ARGS_RE.sub(r"\\frac{\1}{\2}", s)
    s = _SHORT_SQRT_ARG_RE.sub(r"\\sqrt{\1}", s)
    s = s.rstrip(".").strip("$")
    if letter := _LONE_PARENTHESISED_LETTER_RE.fullmatch(s):
        return letter.group(1)  # an option label: "(C)" answers as "C"
    return s


def canonical_math(answer: str) -> str | None:
    r"""Canonical key of a bare math answer, such as the content of a ``\boxed{}``.

    A number becomes its exact canonical form (``"1000"``, ``"1/2"``); ``x = 5`` and
    ``18 dollars`` count as their number; anything else becomes a normalised LaTeX
    string (``x^{2} + 1`` -> ``x^2+1``).

    Args:
        answer: The answer, without surrounding prose.

    Returns:
        The key, or None when the answer is empty.
    """
    s = answer.strip()
    if (value := _number_value(s)) is not None:
        return _fraction_key(value)
    if (assignment := _ASSIGNMENT_RE.fullmatch(s)) is not None:
        s = assignment.group(1).strip()
        if (value := _number_value(s)) is not None:
            return _fraction_key(value)
    if (with_units := _NUMBER_WITH_UNITS_RE.fullmatch(s)) is not None and (
        value := _number_value(with_units.group(1))
    ) is not None:
        return _fraction_key(value)
    return _normalise_latex(s) or None


def _token_key(token: str) -> str:
    """Key of a number found in running text (the cleaned token when it is out of bounds)."""
    value = _number_value(token)
    if value is None:
        return re.sub(r"\s+", "", token).replace("\u2212", "-")
    return _fraction_key(value)


_UNBRACED_BOX_WORD_RE = re.compile(r"[^\s$]+")


def _closing_braces(text: str) -> dict[int, int]:
    """Map the index of every matched ``{`` to the index of its ``}`` (one pass)."""
    closing: dict[int, int] = {}
    stack: list[int] = []
    for index, char in enumerate(text):
        if char == "{":
            stack.append(index)
        elif char == "}" and stack:
            closing[stack.pop()] = index
    return closing


def _box_spans(text: str) -> list[tuple[int, int]]:
    r"""Spans of the contents of every ``\boxed{...}`` / ``\fbox{...}``, in order.

    Braces are balanced; an unclosed box (a truncated reply) runs to the end of the
    text; ``\boxed 5`` without braces holds the next word. Spans rather than strings
    keep nested boxes linear in the length of the text.
    """
    spans: list[tuple[int, int]] = []
    closing: dict[int, int] | None = None
    for match in _BOX_START_RE.finditer(text):
        position = match.end()
        while position < len(text) and text[position].isspace():
            position += 1
        if position >= len(text):
            continue
        if text[position] != "{":
            word = _UNBRACED_BOX_WORD_RE.match(text, position)
            if word is not None:
                spans.append(word.span())
            continue
        if closing is None:
            closing = _closing_braces(text)
        spans.append((position + 1, closing.get(position, len(text))))
    return spans


def last_boxed(text: str) -> str | None:
    r"""The content of the last non-empty ``\boxed{...}`` / ``\fbox{...}``, braces balanced.

    Args:
        text: A reply or a reference solution (MATH's ``solution`` field).

    Returns:
        The box's content, stripped, or None when the text has no non-empty box.
    """
    for start, end in reversed(_box_spans(text)):
        if content := text[start:end].strip():
            return content
    return None


def _boxed_key(text: str) -> str | None:
    """Key of the last non-empty box in the text, or None without one."""
    for start, end in reversed(_box_spans(text)):
        if (key := canonical_math(text[start:end])) is not None:
            return key
    return None


def _explicit_number_key(text: str) -> str | None:
    """Key of the last explicitly stated final number (``#### 72``, ``Answer: 72``)."""
    for marker in reversed(list(_EXPLICIT_NUMBER_RE.finditer(text))):
        token = _NUMBER_TOKEN_RE.match(text, marker.end())
        if token is not None:
            return _token_key(token.group(0))
    return None


def _bare_key(text: str) -> str | None:
    r"""Key of a reply that is the answer alone: a direct answer, a program's output.

    One short line that is an expression (``(6,31,-1)``, ``\frac{\sqrt3}2``) is keyed
    whole (:func:`canonical_math`), not by its last number; an equation by its right
    side (``5 + 3 = 8``: ``8``). So is a line holding no number at all (``Evelyn``,
    ``\text{Evelyn}``, three words at most): MATH has answers that are names. Prose
    around a number (``Total: 85``), a sentence and an empty box are not bare answers.
    """
    s = text.strip().strip(":").strip()
    if not s or "\n" in s or len(s) > _MAX_BARE_ANSWER_CHARS or _BOX_START_RE.search(s):
        return None
    words = len(_PROSE_WORD_RE.findall(s))
    if (words and _NUMBER_TOKEN_RE.search(s)) or words > _MAX_BARE_ANSWER_WORDS:
        return None  # prose around a number, or a sentence
    s = s.rsplit("=", 1)[-1].strip()
    if s.startswith("(") and s.endswith(")") and _number_value(s[1:-1]) is not None:
        s = s[1:-1]  # "(29)" is a number, "(6,31,-1)" a triple
    return canonical_math(s)


def _last_number_key(text: str) -> str | None:
    last: str | None = None
    for token in _NUMBER_TOKEN_RE.finditer(text):
        last = token.group(0)
    return None if last is None else _token_key(last)


def _first_key(text: str, readers: Sequence[Callable[[str], str | None]]) -> str | None:
    """The key of the first reader that finds one in ``text``."""
    for read in readers:
        if (key := read(text)) is not None:
            return key
    return None


_NUMBER_READERS = (_boxed_key, _explicit_number_key, _last_number_key)
"""Where a numeric answer is read, in order: a box, a stated answer, the last number."""

_MATH_READERS = (_boxed_key, _explicit_number_key, _bare_key, _last_number_key)
"""The same, with a bare answer (:func:`_bare_key`) read whole before its last number."""


def extract_number(text: str) -> str | None:
    r"""Extract the final numeric (or math) answer of a reply as a canonical key.

    The answer is the content of the last ``\boxed{}`` / ``\fbox{}``, else the last
    explicit final answer (``#### 72``, ``The answer is 72``, ``Answer: $1,000.50``),
    else the last number in the text. Equal values give equal keys: ``1,000``,
    ``1000.00``, ``$1,000`` and ``1e3`` all give ``"1000"``; ``0.5``, ``1/2`` and
    ``\dfrac12`` give ``"1/2"``; ``50%`` gives ``"50"``. A boxed expression that is
    not a number (``\boxed{x^2+1}``) gives its normalised LaTeX.

    Args:
        text: A model reply.

    Returns:
        The canonical key, or None when the reply holds no number at all.
    """
    return _first_key(text, _NUMBER_READERS)


def extract_math(text: str) -> str | None:
    r"""Extract a math answer (MATH-500) as a canonical key.

    :func:`extract_number`, except that a reply that is the answer alone (a direct
    answer, a program's printed line) is keyed whole: ``(6,31,-1)`` is a triple, not
    ``-1``, and ``Evelyn`` answers like the reference ``\text{Evelyn}``.
    """
    return _first_key(text, _MATH_READERS)


def _reference_number(reference: str) -> str:
    r"""Canonical key of a reference answer: a bare answer, ``#### N`` or ``\boxed{}``."""
    if "\\boxed" in reference or "\\fbox" in reference or "####" in reference:
        key = extract_number(reference)
    else:
        key = canonical_math(reference)
    if key is None:
        msg = f"The reference answer {reference!r} holds no number or expression to compare."
        raise InvalidInputError(msg)
    return key


def grade_number(output: str, reference: str) -> bool:
    r"""Grade a numeric or math answer.

    Both sides are reduced to canonical keys (see
    :func:`avengers_graph.voting.extract_number`), so ``1,000`` equals ``1000.0`` and
    ``\frac{1}{2}`` equals ``0.5``. A bare reference (``"72"``, ``"$5"``,
    ``"x^2+1"``) is taken as a whole; a reference with ``#### N`` or a ``\boxed{}`` is
    read like a model reply.

    Args:
        output: The model's reply.
        reference: The reference answer.

    Returns:
        Whether the reply's final answer equals the reference.

    Raises:
        InvalidInputError: If the reference holds no answer.
    """
    expected = _reference_number(reference)
    return extract_number(output) == expected


def grade_math(output: str, reference: str) -> bool:
    """Grade a math answer (:func:`grade_number` with :func:`extract_math`)."""
    return extract_math(output) == _reference_number(reference)
