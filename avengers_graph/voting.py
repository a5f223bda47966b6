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

import ast
import json
import math
import re
import string
import textwrap
import unicodedata
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from types import MappingProxyType
from typing import Literal

import numpy as np
from sklearn.cluster import AgglomerativeClustering

from avengers_graph.errors import InvalidInputError

__all__ = [
    "EXTRACTORS",
    "UNSETTLED",
    "AnswerFormat",
    "Extractor",
    "VoteResult",
    "canonical_json",
    "canonical_math",
    "early_keys",
    "extract_choice",
    "extract_code",
    "extract_json",
    "extract_number",
    "extract_text",
    "is_decided",
    "last_boxed",
    "last_code_block",
    "majority_answer",
    "majority_vote",
    "merge_fields",
    "parse_json_object",
    "resolve_extractor",
    "semantic_vote",
    "settled_extractor",
    "tool_call_key",
    "tool_calls_fit",
    "tool_vote_key",
    "vote",
]

Extractor = Callable[[str], str | None]
"""Maps a sample text to a comparable key, or ``None`` when nothing can be extracted."""

AnswerFormat = Literal["auto", "number", "math", "choice", "text", "code", "json", "semantic"]
"""The answer formats :func:`resolve_extractor` knows by name."""

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
    if (key := _boxed_key(text)) is not None:
        return key
    if (key := _explicit_number_key(text)) is not None:
        return key
    last: str | None = None
    for token in _NUMBER_TOKEN_RE.finditer(text):
        last = token.group(0)
    return None if last is None else _token_key(last)


# ---------------------------------------------------------------------------
# Multiple choice
# ---------------------------------------------------------------------------

_WRAPPER_COMMANDS_RE = re.compile(r"\\(?:boxed|fbox|text|textbf|textrm|mathrm|mathbf)\b")
_REPLY_DECORATION = " \t\r\n*_`$()[]{}.:;,!\"'"
_LETTER = r"""
    (?:[*_`$\s]|\\text\w*\{)*
    (?:
        [(\[]\s*(?P<wrapped>[A-Za-z])\s*[)\]]
      | (?-i:(?P<upper>[A-Z]))(?![\w'\u2019])(?!(?<=I)\s+[a-z])
      | (?-i:(?P<lower>[a-z]))(?=\s*(?:[.)\],;:*]|$))
    )
"""
_BOXED_LETTER_RE = re.compile(
    r"\\(?:boxed|fbox)\s*\{\s*(?:\\text\w*\s*\{\s*)?\(?\s*(?P<wrapped>[A-Za-z])\s*"
    r"(?:\)|\}|[.:](?=\s|\}))"
)
_ANSWER_LETTER_RE = re.compile(
    rf"""
    \banswer\b\s*(?:(?:is|would\s+be|should\s+be|must\s+be|will\s+be|=|:)\s*){{0,2}}
    (?:(?:option|choice|letter)\s*)?
    {_LETTER}
    """,
    re.IGNORECASE | re.VERBOSE | re.MULTILINE,
)
_OPTION_LETTER_RE = re.compile(
    rf"""
    \b(?:option|choice)\b\s*(?:(?:is|would\s+be|should\s+be|must\s+be|will\s+be|=|:)\s*){{0,2}}
    {_LETTER}
    """,
    re.IGNORECASE | re.VERBOSE | re.MULTILINE,
)
_LEADING_LETTER_RE = re.compile(
    r"\A\s*(?:[*_`]+\s*)?"
    r"(?:[(\[]\s*(?P<wrapped>[A-Za-z])\s*[)\]]|(?P<upper>[A-Z])(?:[).:\]]|[ \t]*(?:\n|\Z)))"
)
_PARENTHESISED_LETTER_RE = re.compile(r"\((?P<upper>[A-Z])\)")


def _choice_set(choices: str) -> frozenset[str]:
    letters = choices.upper()
    if not letters or not all("A" <= letter <= "Z" for letter in letters):
        msg = f"`choices` must be a non-empty string of letters A-Z, got {choices!r}."
        raise InvalidInputError(msg)
    return frozenset(letters)


def _letter(match: re.Match[str]) -> str:
    groups = match.groupdict()
    for name in ("wrapped", "upper", "lower"):
        if groups.get(name):
            return groups[name].upper()
    return ""


def _reply_letter(text: str, allowed: frozenset[str]) -> str | None:
    """The letter when the whole reply is essentially one letter (``b``, ``**(B)**``)."""
    core = _WRAPPER_COMMANDS_RE.sub("", text).strip(_REPLY_DECORATION)
    if len(core) == 1 and core.upper() in allowed:
        return core.upper()
    return None


def _last_stated_letter(
    text: str, allowed: frozenset[str], patterns: Sequence[re.Pattern[str]]
) -> str | None:
    """The letter of the statement that occurs last in the text, over all patterns."""
    best: tuple[int, str] | None = None
    for pattern in patterns:
        for match in pattern.finditer(text):
            letter = _letter(match)
            if letter in allowed and (best is None or match.end() > best[0]):
                best = (match.end(), letter)
    return None if best is None else best[1]


def extract_choice(text: str, choices: str = "ABCDEFGHIJ") -> str | None:
    r"""Extract the multiple-choice letter a reply picks, in uppercase.

    In order: a reply that is just a letter (``b``, ``(B)``); the last explicit
    statement (``\boxed{B}``, ``Answer: B``, ``answer is (b)``, ``The correct option
    is B``); a letter opening the reply (``B)``, ``B.``, ``(B) ...``, ``B`` on its own
    line); the last parenthesised capital (``(B)``). Articles and pronouns are not
    letters: in ``A good answer is C`` the choice is C, ``I think`` picks nothing.

    Args:
        text: A model reply.
        choices: The valid letters; others are ignored.

    Returns:
        The letter, or None when the reply picks none of ``choices``.

    Raises:
        InvalidInputError: If ``choices`` is not a non-empty string of letters.
    """
    allowed = _choice_set(choices)
    if (letter := _reply_letter(text, allowed)) is not None:
        return letter
    stated = _last_stated_letter(
        text, allowed, (_BOXED_LETTER_RE, _ANSWER_LETTER_RE, _OPTION_LETTER_RE)
    )
    if stated is not None:
        return stated
    leading = _LEADING_LETTER_RE.match(text)
    if leading is not None and (letter := _letter(leading)) in allowed:
        return letter
    return _last_stated_letter(text, allowed, (_PARENTHESISED_LETTER_RE,))


# ---------------------------------------------------------------------------
# Text and code
# ---------------------------------------------------------------------------

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


_FENCED_BLOCK_RE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)```", re.DOTALL)
_OPEN_FENCE_RE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*)\Z", re.DOTALL)
_PYTHON_FENCE_LANGUAGES = frozenset({"", "python", "py", "python3", "py3"})


def last_code_block(text: str) -> str | None:
    """The raw code a reply gives, before any normalisation.

    That is the last fenced block tagged as Python (or untagged), else the last fenced
    block of any language, else the code after an unclosed fence (a truncated reply),
    else the whole reply (which :func:`extract_code` normalises when it parses).

    Args:
        text: A model reply.

    Returns:
        The code with surrounding blank space removed, or None when there is none.
    """
    blocks = _FENCED_BLOCK_RE.findall(text)
    python_blocks = [
        code for language, code in blocks if language.lower() in _PYTHON_FENCE_LANGUAGES
    ]
    if python_blocks or blocks:
        code = (python_blocks or [code for _, code in blocks])[-1]
    elif (unclosed := _OPEN_FENCE_RE.search(text)) is not None:
        code = unclosed.group(2)
    else:
        code = text
    return textwrap.dedent(code).strip("\n").rstrip() or None


def _parse_python(code: str) -> ast.Module | None:
    """Parse code quietly; None when it is not valid Python."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return ast.parse(code)
        # The parser reports code nested too deeply as MemoryError or RecursionError.
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return None


def _drop_docstrings(tree: ast.Module) -> None:
    """Remove module, class and function docstrings in place."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        body = node.body
        if (
            body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            del body[0]
            if not body and not isinstance(node, ast.Module):
                body.append(ast.Pass())


def extract_code(text: str) -> str | None:
    """Extract the code of a reply in a normalised form.

    The code is :func:`last_code_block`; when it parses as Python it is re-printed by
    ``ast.unparse`` without comments and docstrings, so that formatting-only
    differences compare equal. Code that does not parse is kept as stripped text.

    Args:
        text: A model reply.

    Returns:
        The normalised code, or None when the reply holds none.
    """
    code = last_code_block(text)
    if code is None:
        return None
    tree = _parse_python(code)
    if tree is None:
        return code.strip() or None
    _drop_docstrings(tree)
    try:
        normalised = ast.unparse(tree)
    except (RecursionError, ValueError):
        return code.strip() or None
    return normalised.strip() or code.strip() or None


_JSON_FENCE_RE = re.compile(r"```(?:json)?\s*\n(.*?)```", re.DOTALL)


def parse_json_object(text: str) -> dict[str, object] | None:
    """The JSON object a reply holds: the whole reply, a fenced block, or its outer braces.

    Args:
        text: A model reply.

    Returns:
        The object, or None when the reply holds no valid JSON object.
    """
    candidates = [text.strip()]
    candidates += [block.strip() for block in _JSON_FENCE_RE.findall(text)]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start : end + 1])
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def canonical_json(value: object) -> str:
    """Canonical JSON text: sorted keys, compact, integral floats as ints."""
    return json.dumps(
        _canonical_json(value), sort_keys=True, ensure_ascii=False, separators=(",", ":")
    )


def extract_json(text: str) -> str | None:
    """Key of a JSON-object reply: its canonical JSON (None when it holds no object)."""
    value = parse_json_object(text)
    return None if value is None else canonical_json(value)


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
        "number": extract_number,
        "math": extract_number,
        "choice": extract_choice,
        "text": extract_text,
        "code": extract_code,
        "json": extract_json,
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
    normalised = extract_text(text)
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
        return extract_choice if letters else extract_number
    for predicate, extractor in (
        (_states_choice_strictly, extract_choice),
        (lambda text: _FENCED_BLOCK_RE.search(text) is not None, extract_code),
        (_states_number_strictly, extract_number),
    ):
        verdict = at_least_half(predicate)
        if verdict is None:
            return UNSETTLED
        if verdict:
            return extractor
    if not all(_is_short(text) for text in texts):
        return None
    return extract_text if pending == 0 else UNSETTLED


def resolve_extractor(
    texts: Sequence[str], answer_format: str | Extractor = "auto"
) -> Extractor | None:
    r"""Choose how to compare the sample texts.

    Args:
        texts: The sample texts (only inspected for ``"auto"``).
        answer_format: An extractor (returned as is), one of the names in
            :data:`EXTRACTORS`, ``"semantic"`` or ``"auto"``. ``"auto"`` picks, in
            order: :func:`extract_number` when at least half the samples hold a
            ``\boxed{}`` (:func:`extract_choice` when those boxes hold a letter);
            :func:`extract_choice` when at least half state a letter strictly (the
            reply is a letter, ``Answer: X``, ``answer is (X)``); :func:`extract_code`
            when at least half hold a fenced code block; :func:`extract_number` when
            at least half state a number strictly (``#### N``, ``Answer: N``, a reply
            that is just a number); :func:`extract_text` when every sample is at most
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
    votes: dict[str, int]
    """Number of samples per key, in order of first appearance."""
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
        votes=counts,
        confidence=counts[answer] / sum(counts.values()),
        keys=list(keys),
    )


def is_decided(keys: Sequence[str | None], pending: int) -> bool:
    """Whether ``pending`` more samples can no longer change the majority's answer.

    True when the leading key has more votes than any other key, or any new key,
    could reach even if every pending sample voted for it. Strictly more: a tie could
    go to a better-ranked expert still to answer.

    Args:
        keys: The keys of the samples so far (None does not vote).
        pending: Samples still to come.
    """
    counts = sorted(
        (sum(1 for k in keys if k == key) for key in {k for k in keys if k is not None}),
        reverse=True,
    )
    if not counts:
        return False
    runner_up = counts[1] if len(counts) > 1 else 0
    return counts[0] > runner_up + pending


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
    """A sample's key when tools are in play: its tool calls, else its text answer.

    With the bound tools' ``schemas``, a sample whose calls do not fit them
    (:func:`tool_calls_fit`) has no key: it abstains rather than out-vote calls that run.
    """
    if calls and schemas is not None and not tool_calls_fit(calls, schemas):
        return None
    return tool_call_key(calls) or f"text:{extract_text(text) or text.strip()}"


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
    if isinstance(extractor, _Unsettled) or extractor is None or extractor is extract_code:
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
    by :func:`majority_vote` over :func:`extract_text` keys.

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
    return majority_vote([extract_text(text) for text in texts], ranks)


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


def _canonical_json(value: object) -> object:
    """Arguments with integral floats as ints, so ``2`` and ``2.0`` vote together."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): _canonical_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical_json(v) for v in value]
    return value


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
