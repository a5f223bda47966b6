"""Multiple-choice answers: the letter a reply picks, and grading.

Pure functions on strings; the options a question offers are read by
:func:`avengers_graph.formats.detect.option_letters`.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

from avengers_graph.errors import InvalidInputError

__all__ = ["extract_choice", "grade_choice"]

_DEFAULT_CHOICES = "ABCDEFGHIJ"

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


def grade_choice(output: str, reference: str) -> bool:
    """Grade a multiple-choice answer.

    Args:
        output: The model's reply.
        reference: The correct letter (``"B"``, ``"(b)"``, ``"Answer: B"``).

    Returns:
        Whether the reply picks the reference letter.

    Raises:
        InvalidInputError: If the reference names no letter.
    """
    expected = extract_choice(reference, string.ascii_uppercase)
    if expected is None:
        msg = f"The reference answer {reference!r} names no choice letter."
        raise InvalidInputError(msg)
    last_letter = max(_DEFAULT_CHOICES[-1], expected)
    choices = string.ascii_uppercase[: string.ascii_uppercase.index(last_letter) + 1]
    return extract_choice(output, choices) == expected
