"""Code answers: the program a reply gives, normalised, and grading by running tests.

:func:`last_code_block` and :func:`extract_code` are pure; :func:`grade_code` runs the
program with the reference tests in :func:`avengers_graph.sandbox.run_python`.
"""

from __future__ import annotations

import ast
import re
import secrets
import textwrap
import warnings

from avengers_graph.errors import InvalidInputError
from avengers_graph.sandbox import run_python

__all__ = ["extract_code", "grade_code", "last_code_block"]

_FENCED_BLOCK_RE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)```", re.DOTALL)
_OPEN_FENCE_RE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*)\Z", re.DOTALL)
_PYTHON_FENCE_LANGUAGES = frozenset({"", "python", "py", "python3", "py3"})


def last_code_block(text: str) -> str | None:
    """The raw code a reply gives, before any normalisation.

    That is the last fenced block tagged as Python (or untagged), else the last fenced
    block of any language, else the code after an unclosed fence (a truncated reply)
    or, when only the text before that fence parses, the code before it (a closing
    fence whose opening the reply left out: code, fence, explanation), else the whole
    reply (which :func:`extract_code` normalises when it parses).

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
        code, before = unclosed.group(2), text[: unclosed.start()]
        if _parse_python(code) is None and before.strip() and _parse_python(before) is not None:
            code = before
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
