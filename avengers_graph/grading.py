"""Graders that decide whether an expert's answer matches a reference (for calibration).

Calibration scores every expert on every validation question: it takes the expert's
majority answer over a few samples (with the extractor in :data:`KIND_EXTRACTORS`)
and grades the sample carrying it against the dataset's reference answer with the
:data:`Grader` of the dataset's kind (:func:`get_grader`).

Code is graded by behaviour: the extracted program runs together with the
reference's tests in :func:`avengers_graph.sandbox.run_python`.
"""

from __future__ import annotations

import ast
import secrets
import string
from collections.abc import Callable, Mapping
from types import MappingProxyType

from avengers_graph.errors import InvalidInputError
from avengers_graph.sandbox import run_python
from avengers_graph.voting import (
    Extractor,
    canonical_math,
    extract_choice,
    extract_code,
    extract_number,
    extract_text,
    last_code_block,
)

__all__ = [
    "GRADERS",
    "KIND_EXTRACTORS",
    "Grader",
    "get_grader",
    "grade_choice",
    "grade_code",
    "grade_number",
    "grade_text",
]

Grader = Callable[[str, str], bool]
"""``(model output text, reference answer) -> correct?``"""

_DEFAULT_CHOICES = "ABCDEFGHIJ"


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


def _check_reference_tests(reference: str) -> str:
    """Refuse tests that cannot fail (a ``check`` harness never called); return the prelude.

    The prelude is the reference's leading import statements: they also run before
    the program, so a reply that uses ``List`` without repeating the prompt's ``from
    typing import List`` is judged on its behaviour, as HumanEval's harness judges
    prompt plus completion.
    """
    try:
        tree = ast.parse(reference)
    except SyntaxError as error:
        msg = f"The reference tests are not valid Python ({error.msg}, line {error.lineno})."
        raise InvalidInputError(msg) from error
    defines_check = any(
        isinstance(node, ast.FunctionDef) and node.name == "check" for node in tree.body
    )
    calls_check = any(
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "check"
        for statement in tree.body
        if not isinstance(statement, ast.FunctionDef)
        for node in ast.walk(statement)
    )
    if defines_check and not calls_check:
        msg = (
            "The reference tests define check(candidate) but never call it, so every "
            "program would pass; append `check(<entry_point>)` (HumanEval style)."
        )
        raise InvalidInputError(msg)
    imports = []
    for node in tree.body:
        if not isinstance(node, ast.Import | ast.ImportFrom):
            break
        imports.append(ast.get_source_segment(reference, node) or "")
    return "".join(f"{line}\n" for line in imports) + ("\n" if imports else "")


_HARNESS = """\
import sys


def _run(source):
    token = sys.stdin.readline().strip()
    namespace = {{"__name__": "__candidate__"}}
    try:
        exec(compile(source, "<candidate>", "exec"), namespace)
    except BaseException:  # a failed assert, an error, or SystemExit: all fail
        sys.exit(1)
    sys.stdout.flush()
    sys.stdout.write("\\n" + token + "\\n")
    sys.stdout.flush()


_run({source!r})
"""


def grade_code(output: str, reference: str, *, timeout: float = 10.0) -> bool:
    """Grade code by running it against the reference tests in the sandbox.

    Passing means reaching the end of the tests, as HumanEval's harness judges it: the
    program and tests run with ``exec`` under the name ``__candidate__`` (so an
    ``if __name__ == "__main__": unittest.main()`` block of the reply does not run),
    any exception including ``SystemExit`` fails, and success is a random token the
    harness prints after the tests, read from standard input before the program runs.
    A reply that exits early with status 0 (``sys.exit(0)``, ``os._exit(0)``, an
    ``atexit`` hook) therefore fails. This is not a defence against a program written
    to read the harness's frames; the sandbox is what contains untrusted code.

    The program is the reply's code (:func:`avengers_graph.voting.last_code_block`)
    followed by the tests; it passes when it exits with status 0 in time.

    Args:
        output: The model's reply.
        reference: Test code: ``assert`` lines (MBPP) or a ``check(candidate)``
            harness followed by its call (HumanEval: the ``test`` field, a newline,
            then ``check(entry_point)``). Its leading import statements also run
            before the program (the prompt's imports, for a reply that omits them).
        timeout: Seconds of wall-clock time the program may run.

    Returns:
        Whether the code passes the tests.

    Raises:
        InvalidInputError: If the tests are not valid Python, or define ``check``
            without calling it.
    """
    prelude = _check_reference_tests(reference)
    code = last_code_block(output)
    if code is None:
        return False
    token = secrets.token_hex(16)
    harness = _HARNESS.format(source=f"{prelude}{code}\n\n{reference}")
    result = run_python(harness, timeout=timeout, stdin=f"{token}\n")
    return result.ok and result.stdout.rstrip("\n").endswith(f"\n{token}")


GRADERS: Mapping[str, Grader] = MappingProxyType(
    {
        "number": grade_number,
        "math": grade_number,
        "choice": grade_choice,
        "text": grade_text,
        "code": grade_code,
    }
)
"""The built-in graders by dataset kind."""

KIND_EXTRACTORS: Mapping[str, Extractor] = MappingProxyType(
    {
        "number": extract_number,
        "math": extract_number,
        "choice": extract_choice,
        "text": extract_text,
        "code": extract_code,
    }
)
"""The extractor that takes an expert's majority answer before grading, by kind."""


def get_grader(kind: str | Grader) -> Grader:
    """Look up the grader for a dataset kind.

    Args:
        kind: A name in :data:`GRADERS`, or a grader (returned as is).

    Returns:
        The grader.

    Raises:
        InvalidInputError: If the kind is unknown.
    """
    if not isinstance(kind, str):
        return kind
    if kind in GRADERS:
        return GRADERS[kind]
    valid = ", ".join(repr(name) for name in GRADERS)
    msg = f"Unknown answer kind {kind!r}; use one of {valid} or a callable grader."
    raise InvalidInputError(msg)
