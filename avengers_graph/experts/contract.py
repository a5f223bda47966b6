"""The prompt contract: what an expert is sent for a question, and what its reply answers.

An expert is a chat model with a strategy (:class:`Expert`): ``direct`` (the answer
only, held to a JSON schema where the server supports one), ``reason`` (step by step,
then the answer in the format's form) or ``program`` (a Python program, run in the
sandbox; what it prints is the answer). Calibration, the recorder, the replay and the
graph all go through the same three steps, so the routing statistics describe exactly
what service sends:

1. :func:`contract` fixes the question's :class:`~avengers_graph.formats.AnswerFormat`
   (detected from the last human message by :func:`avengers_graph.formats.detect`,
   unless the caller names it) and the strategy;
2. :meth:`Contract.messages` merges the strategy's instruction into the conversation's
   system message and :meth:`Contract.options` adds the constraint
   (``response_format``) and the token budget to the call;
3. :meth:`Contract.answer` turns the reply into the answer that votes: a ``direct``
   reply's ``{"answer": ...}`` unwrapped (a choice rendered as ``B) Paris``; an object
   the budget cut in the blank space after its value still counts), a
   ``program`` run in :func:`avengers_graph.sandbox.run_python` (standard library,
   ``numpy`` and ``sympy``) with its printed output as the answer (an error or nothing
   printed: an empty answer, which never votes); a ``reason`` reply as it is.
   Programs run only isolated (``require_isolation``: bubblewrap); where it is
   missing they do not run at all and the program's answer is empty.

Pure apart from running programs: messages in, messages out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from avengers_graph.errors import InvalidInputError
from avengers_graph.formats import (
    STRATEGIES,
    AnswerFormat,
    Detected,
    Strategy,
    detect,
    get_format,
    last_code_block,
    option_text,
    parse_json_object,
)
from avengers_graph.sandbox import SandboxError, run_python

__all__ = [
    "PROGRAM_PACKAGES",
    "PROGRAM_TIMEOUT",
    "Contract",
    "Expert",
    "as_expert",
    "contract",
    "question_of",
    "validate_pool",
]

PROGRAM_TIMEOUT = 10.0
"""Seconds a ``program`` answer may run in the sandbox."""
PROGRAM_PACKAGES = ("numpy", "sympy")
"""What a ``program`` may import besides the standard library. The instruction asks for
the standard library alone; small models reach for these anyway (12 of the first 84
recorded programs did), and a program that fails on its import answers nothing."""


@dataclass(frozen=True)
class Expert:
    """A chat model and the strategy it answers with."""

    model: BaseChatModel
    """Any LangChain chat model."""
    strategy: Strategy = "reason"
    """``direct``, ``reason`` or ``program`` (see the module docstring)."""
    constrain: bool = True
    """Send ``direct`` answers' JSON schema (``response_format``); turn off for servers
    that reject it."""

    def __post_init__(self) -> None:
        if not isinstance(self.model, BaseChatModel):
            raise InvalidInputError(
                f"An expert's model must be a LangChain BaseChatModel, got "
                f"{type(self.model).__name__}."
            )
        if self.strategy not in STRATEGIES:
            raise InvalidInputError(
                f"Unknown strategy {self.strategy!r}; use one of {', '.join(STRATEGIES)}."
            )


def as_expert(expert: BaseChatModel | Expert) -> Expert:
    """An :class:`Expert`; a bare chat model answers with the ``reason`` strategy."""
    return expert if isinstance(expert, Expert) else Expert(expert)


def validate_pool(experts: Mapping[str, BaseChatModel | Expert]) -> dict[str, Expert]:
    """The pool as :class:`Expert` objects, checked.

    Raises:
        InvalidInputError: An empty pool, an unnamed expert, or a value that is neither
            a LangChain chat model nor an :class:`Expert`.
    """
    if not isinstance(experts, Mapping) or not experts:
        raise InvalidInputError("experts must be a non-empty dict of name -> chat model.")
    pool: dict[str, Expert] = {}
    for name, expert in experts.items():
        if not isinstance(name, str) or not name:
            raise InvalidInputError(f"Expert names must be non-empty strings, got {name!r}.")
        if not isinstance(expert, BaseChatModel | Expert):
            raise InvalidInputError(
                f"Expert {name!r} is a {type(expert).__name__}, not a LangChain "
                "BaseChatModel or an avengers_graph Expert."
            )
        pool[name] = as_expert(expert)
    return pool


def question_of(messages: Sequence[BaseMessage] | str) -> str:
    """The question a conversation asks now: its last human message's text."""
    if isinstance(messages, str):
        return messages
    for message in reversed(messages):
        if isinstance(message, HumanMessage):
            return message.text.strip()
    return ""


@dataclass(frozen=True)
class Contract:
    """What one strategy sends for one question, and how its reply becomes an answer."""

    format: AnswerFormat
    detected: Detected
    strategy: Strategy
    constrain: bool = True
    question: str = ""
    """The question's text (renders a choice answer as ``B) Paris``)."""

    @property
    def instruction(self) -> str | None:
        """The system instruction (None: the conversation goes as it is)."""
        return self.format.instruction(self.strategy, self.detected)

    def messages(self, messages: Sequence[BaseMessage]) -> list[BaseMessage]:
        """The conversation with the instruction merged into its leading system message."""
        instruction = self.instruction
        if instruction is None:
            return list(messages)
        if messages and isinstance(messages[0], SystemMessage):
            first = messages[0]
            merged = SystemMessage(f"{first.text.rstrip()}\n\n{instruction}", id=first.id)
            return [merged, *messages[1:]]
        return [SystemMessage(instruction), *messages]

    def options(self, max_tokens: int | None = None) -> dict[str, Any]:
        """Call options: the strategy's token budget (unless capped lower) and constraint."""
        budget = self.format.max_tokens[self.strategy]
        options: dict[str, Any] = {
            "max_tokens": budget if max_tokens is None else min(max_tokens, budget)
        }
        constraint = self.format.constraint(self.strategy, self.detected)
        if constraint is not None and self.constrain:
            options["response_format"] = constraint
        return options

    def answer(
        self,
        reply: AIMessage,
        *,
        timeout: float = PROGRAM_TIMEOUT,
        deadline: float | None = None,
    ) -> AIMessage:
        """The reply as the answer that votes (see the module docstring).

        The reply's usage and metadata are kept; ``response_metadata["strategy"]``
        names the strategy, and a program's source and output go in
        ``response_metadata["program"]``.

        Args:
            reply: The expert's reply.
            timeout: Seconds a program may run.
            deadline: A :func:`time.monotonic` instant a program must end by (the
                caller's remaining budget): it runs ``min(timeout, deadline - now)``
                seconds, and not at all once the deadline has passed (an empty
                answer, ``timed_out`` in its record).
        """
        text = str(reply.text)
        metadata: dict[str, Any] = {**reply.response_metadata, "strategy": self.strategy}
        if self.strategy == "direct" and not reply.tool_calls:
            text = self._unwrap(text)
        elif self.strategy == "program" and not reply.tool_calls:
            text, metadata["program"] = self._run(text, timeout, deadline)
        if text == reply.text and metadata == reply.response_metadata:
            return reply
        return reply.model_copy(update={"content": text, "response_metadata": metadata})

    def key(self, text: str) -> str | None:
        """The answer's comparable key (None: no answer)."""
        return self.format.key(text, self.detected)

    def _unwrap(self, text: str) -> str:
        """The ``answer`` of a direct reply's JSON object (the reply itself without one).

        Held to a schema, the object may sit in a ```` ```json ```` fence or among blank
        space: llama.cpp's grammar allows both, and a sample may spend its budget on
        blanks. When the budget cut the object in the blanks after its value, the value
        was whole and is read (``{"answer": "C"`` then blanks). A format with no schema
        (code, free text) is unwrapped only when the whole reply is the object.
        """
        if "direct" in self.format.constrain:
            value = parse_json_object(text)
            if value is None and text != text.rstrip():
                value = parse_json_object(text.rstrip() + "}")
        else:
            value = _json_object(text)
        if value is None or "answer" not in value:
            return text
        answer = value["answer"]
        answer = format(answer, "g") if isinstance(answer, float) else str(answer).strip()
        if self.format.name == "choice" and (option := option_text(self.question, answer)):
            return f"{answer}) {option}"
        return answer

    def _run(self, text: str, timeout: float, deadline: float | None) -> tuple[str, dict[str, Any]]:
        code = last_code_block(text)
        if code is None:
            return "", {"source": None, "returncode": None, "output": ""}
        try:
            result = run_python(
                code,
                timeout=timeout,
                deadline=deadline,
                require_isolation=True,
                packages=PROGRAM_PACKAGES,
            )
        except SandboxError as error:  # no isolation here: the program does not run
            return "", {"source": code, "returncode": None, "output": "", "error": str(error)}
        printed = [line.strip() for line in result.stdout.splitlines() if line.strip()]
        answer = printed[-1] if result.ok and printed else ""
        record = {
            "source": code,
            "returncode": result.returncode,
            "timed_out": result.timed_out,
            "output": result.stdout[-2000:],
            "error": result.stderr[-2000:] if not result.ok else "",
        }
        return answer, record


def _json_object(text: str) -> dict[str, Any] | None:
    """The reply as a JSON object when it is one as a whole, else None."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def contract(
    question: Sequence[BaseMessage] | str,
    strategy: Strategy = "reason",
    *,
    answer_format: str | None = None,
    constrain: bool = True,
) -> Contract:
    """The contract of one strategy for one question.

    Args:
        question: The conversation (its last human message is the question) or the
            question's text.
        strategy: ``direct``, ``reason`` or ``program``.
        answer_format: A format name to use instead of detecting it (its options are
            still read from the question).
        constrain: Whether ``direct`` answers carry their JSON schema.

    Raises:
        InvalidInputError: An unknown format or strategy, or a strategy that does not
            serve the question's format (check :meth:`AnswerFormat.serves` first).
    """
    text = question_of(question)
    detected = detect(text)
    if answer_format is not None and answer_format != detected.format:
        detected = Detected(answer_format, detected.options)
    fmt = get_format(detected.format)
    if strategy not in STRATEGIES:
        raise InvalidInputError(f"Unknown strategy {strategy!r}; use one of {STRATEGIES}.")
    if not fmt.serves(strategy):
        raise InvalidInputError(f"The {strategy!r} strategy does not serve {fmt.name!r}.")
    return Contract(fmt, detected, strategy, constrain, question=text)
