"""Answer formats: everything the ensemble knows about one kind of answer, in one place.

An :class:`AnswerFormat` says, for one kind of answer (a number, a choice letter, a
program...):

- which strategies serve it and the instruction each sends (:meth:`AnswerFormat.instruction`);
- the constraint a ``direct`` answer carries where the server supports JSON schemas
  (:meth:`AnswerFormat.constraint`: an ``enum`` of option letters, a number);
- the token budget of each strategy (:attr:`AnswerFormat.max_tokens`);
- how a reply becomes a comparable key (:meth:`AnswerFormat.key`) and how it is graded
  against a reference (:attr:`AnswerFormat.grade`);
- the rate at which a blind guess is right (:meth:`AnswerFormat.chance`), which the
  weighted vote measures reliability against.

:data:`FORMATS` holds the built-in formats by name. Pure: no model, graph or store.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, get_args

from avengers_graph.errors import InvalidInputError
from avengers_graph.formats.choice import extract_choice, grade_choice
from avengers_graph.formats.code import extract_code, grade_code
from avengers_graph.formats.detect import Detected
from avengers_graph.formats.label import extract_label
from avengers_graph.formats.numbers import extract_math, extract_number, grade_math, grade_number
from avengers_graph.formats.structured import extract_json
from avengers_graph.formats.text import extract_text, grade_text

__all__ = [
    "FORMATS",
    "STRATEGIES",
    "AnswerFormat",
    "Grader",
    "Strategy",
    "get_format",
    "get_grader",
]

Strategy = Literal["direct", "reason", "program"]
"""How an expert answers: the answer only, step by step, or a program that prints it."""
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)

Grader = Callable[[str, str], bool]
"""``(model output text, reference answer) -> correct?``"""

_NUMBER_CHANCE = 0.0


def _answer_schema(value: Mapping[str, Any]) -> dict[str, Any]:
    """A ``response_format`` asking for ``{"answer": <value>}`` and nothing else."""
    return {
        "type": "json_schema",
        "json_schema": {
            "name": "answer",
            "schema": {
                "type": "object",
                "properties": {"answer": dict(value)},
                "required": ["answer"],
                "additionalProperties": False,
            },
        },
    }


def _grade_label(output: str, reference: str) -> bool:
    return grade_text(output, reference)


def _never(output: str, reference: str) -> bool:
    raise InvalidInputError("Free-text answers have no reference to grade against.")


@dataclass(frozen=True)
class AnswerFormat:
    """One kind of answer (see the module docstring)."""

    name: str
    instructions: Mapping[Strategy, str | None]
    """The system instruction of every strategy that serves this format (``None``: the
    question goes as asked). ``{labels}`` is filled with the question's options."""
    max_tokens: Mapping[Strategy, int]
    """Generation budget per strategy: caps that no competent answer reaches."""
    extract: Callable[[str, Detected], str | None]
    """``(reply, detected question) -> key``; None when the reply gives no answer."""
    grade: Grader
    """``(reply, reference) -> correct?``"""
    guess_rate: Callable[[Detected], float] = field(default=lambda _: _NUMBER_CHANCE)
    constrain: Mapping[Strategy, Callable[[Detected], dict[str, Any] | None]] = field(
        default_factory=dict
    )
    votes_by_meaning: bool = False
    """Free text: no key, samples are grouped by embedding similarity."""
    grades_key: bool = False
    """Grade the reply's key (the answer that votes) instead of its text, so that the
    grade reads what the vote reads: ``positive`` in "The sentiment of this review is
    positive." (a text grader would compare the whole sentence with the reference)."""
    gradable: bool = True
    """Whether references of this kind can be graded (a validation ``kind``)."""

    def serves(self, strategy: str) -> bool:
        """Whether an expert with this strategy can answer questions of this format."""
        return strategy in self.instructions

    def instruction(self, strategy: Strategy, detected: Detected) -> str | None:
        """The system instruction ``strategy`` sends for this question (None: none)."""
        if not self.serves(strategy):
            raise InvalidInputError(f"The {strategy!r} strategy does not serve {self.name!r}.")
        template = self.instructions[strategy]
        if template is None:
            return None
        return template.replace("{labels}", " or ".join(detected.options))

    def constraint(self, strategy: Strategy, detected: Detected) -> dict[str, Any] | None:
        """The ``response_format`` the strategy's answer is held to (None: free)."""
        build = self.constrain.get(strategy)
        return build(detected) if build is not None else None

    def key(self, text: str, detected: Detected) -> str | None:
        """The comparable key of a reply (None: no answer, it does not vote)."""
        return self.extract(text, detected)

    def chance(self, detected: Detected) -> float:
        """Probability that a blind guess is right (``1/4`` for four options)."""
        return self.guess_rate(detected)


def _choice_key(text: str, detected: Detected) -> str | None:
    letters = "".join(detected.options) or "ABCDEFGHIJ"
    return extract_choice(text, letters)


def _options_chance(detected: Detected) -> float:
    return 1.0 / len(detected.options) if detected.options else 0.25


def _letters_enum(detected: Detected) -> dict[str, Any]:
    letters = list(detected.options) or list(string.ascii_uppercase[:4])
    return _answer_schema({"type": "string", "enum": letters})


def _labels_enum(detected: Detected) -> dict[str, Any] | None:
    return _answer_schema({"type": "string", "enum": list(detected.options)})


_REASON_MATH = "Solve the problem step by step, then give the final answer in \\boxed{}."
_PROGRAM = (
    "Write a Python program that computes the answer and prints it (only the final "
    "answer). Use only the standard library. Reply with one ```python code block."
)

FORMATS: Mapping[str, AnswerFormat] = MappingProxyType(
    {
        "number": AnswerFormat(
            name="number",
            instructions={
                "direct": "Give the final answer only, as a number.",
                "reason": _REASON_MATH,
                "program": _PROGRAM,
            },
            max_tokens={"direct": 48, "reason": 1024, "program": 768},
            extract=lambda text, _: extract_number(text),
            grade=grade_number,
            grades_key=True,
            constrain={"direct": lambda _: _answer_schema({"type": "number"})},
        ),
        "math": AnswerFormat(
            name="math",
            instructions={
                "direct": "Give the final answer only, in LaTeX, with no working.",
                "reason": _REASON_MATH,
                "program": _PROGRAM,
            },
            max_tokens={"direct": 64, "reason": 1536, "program": 768},
            extract=lambda text, _: extract_math(text),
            grade=grade_math,
            grades_key=True,
            constrain={"direct": lambda _: _answer_schema({"type": "string", "maxLength": 120})},
        ),
        "choice": AnswerFormat(
            name="choice",
            instructions={
                "direct": "Answer with the letter of the correct option only.",
                "reason": (
                    "Think step by step, then give the letter of the correct option on "
                    "the last line as 'Answer: {labels}' (one letter)."
                ),
            },
            max_tokens={"direct": 16, "reason": 1024},
            extract=_choice_key,
            grade=grade_choice,
            grades_key=True,
            guess_rate=_options_chance,
            constrain={"direct": _letters_enum},
        ),
        "label": AnswerFormat(
            name="label",
            instructions={
                "direct": "Answer with one word: {labels}.",
                "reason": (
                    "Think step by step, then give your answer on the last line as "
                    "'Answer: {labels}' (one word)."
                ),
            },
            max_tokens={"direct": 16, "reason": 512},
            extract=lambda text, detected: extract_label(text, detected.options),
            grade=_grade_label,
            grades_key=True,
            guess_rate=_options_chance,
            constrain={"direct": _labels_enum},
        ),
        "code": AnswerFormat(
            name="code",
            instructions={
                "direct": (
                    "Write the complete Python solution in one ```python code block, "
                    "with no explanation."
                ),
                "reason": (
                    "Explain your approach in a few sentences, then write the complete "
                    "Python solution in one ```python code block."
                ),
            },
            max_tokens={"direct": 768, "reason": 1024},
            extract=lambda text, _: extract_code(text),
            grade=grade_code,
        ),
        "text": AnswerFormat(
            name="text",
            instructions={
                "direct": "Reply with the answer only, in as few words as possible.",
                "reason": (
                    "Think step by step, then give the answer on the last line as "
                    "'Answer: ...', in as few words as possible."
                ),
            },
            max_tokens={"direct": 48, "reason": 512},
            extract=lambda text, _: extract_text(text),
            grade=grade_text,
        ),
        "json": AnswerFormat(
            name="json",
            instructions={"direct": None, "reason": None},
            max_tokens={"direct": 1024, "reason": 1024},
            extract=lambda text, _: extract_json(text),
            grade=_never,
            gradable=False,
        ),
        "free": AnswerFormat(
            name="free",
            instructions={"direct": None, "reason": None},
            max_tokens={"direct": 1024, "reason": 1024},
            extract=lambda text, _: None,
            grade=_never,
            gradable=False,
            votes_by_meaning=True,
        ),
    }
)
"""The built-in answer formats by name."""


def get_format(name: str) -> AnswerFormat:
    """The format of that name.

    Raises:
        InvalidInputError: An unknown name (the message lists the known ones).
    """
    if name not in FORMATS:
        raise InvalidInputError(
            f"Unknown answer format {name!r}; use one of {', '.join(sorted(FORMATS))}."
        )
    return FORMATS[name]


def get_grader(kind: str | Grader) -> Grader:
    """The grader of a validation kind (a gradable format's name), or a grader as is.

    Raises:
        InvalidInputError: An unknown or ungradable kind.
    """
    if not isinstance(kind, str):
        return kind
    fmt = FORMATS.get(kind)
    if fmt is None or not fmt.gradable:
        valid = ", ".join(repr(name) for name, f in FORMATS.items() if f.gradable)
        raise InvalidInputError(f"Unknown answer kind {kind!r}; use one of {valid} or a grader.")
    return fmt.grade
