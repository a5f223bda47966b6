"""Code answers voted by behaviour: same outputs on the same inputs, same vote.

Two programs that are written differently but compute the same thing should vote
together; :func:`avengers_graph.voting.extract_code` only catches formatting
differences. :func:`behaviour_keys` runs every candidate program, in the sandbox
(:func:`avengers_graph.sandbox.run_python`: a subprocess with a timeout, no network
and a memory limit), on the same probe calls and keys it by what the calls return
(``repr`` of each result, or the exception's type). The probes are the example calls
the question shows (:func:`probe_calls`: doctest lines ``>>> f(1, 2)`` and
``assert f(...) == ...`` lines, as HumanEval and MBPP prompts have). Without probes,
or for a program that does not run, the key falls back to the normalised syntax.
"""

from __future__ import annotations

import ast
import json
import re
import secrets
from collections.abc import Sequence

from avengers_graph.sandbox import run_python
from avengers_graph.voting import extract_code, last_code_block

__all__ = ["behaviour_keys", "probe_calls"]

_DOCTEST_RE = re.compile(r"^\s*>>>\s*(.+)$", re.MULTILINE)
_ASSERT_RE = re.compile(r"^\s*assert\s+(.+?)\s*(?:==|!=|\bis\b)", re.MULTILINE)
_MAX_PROBES = 10

_HARNESS = """\
import json, sys

def _probe(source, calls):
    namespace = {{"__name__": "__candidate__"}}
    exec(compile(source, "<candidate>", "exec"), namespace)
    results = []
    for call in calls:
        try:
            results.append(repr(eval(call, namespace)))
        except BaseException as error:  # the failure is part of the behaviour
            results.append("raises " + type(error).__name__)
    return results

_token = sys.stdin.readline().strip()
_out = json.dumps(_probe({source!r}, {calls!r}))
sys.stdout.write("\\n" + _token + _out + "\\n")
"""


def _is_call(expression: str) -> bool:
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError:
        return False
    return isinstance(tree.body, ast.Call) and isinstance(tree.body.func, ast.Name)


def probe_calls(question: str) -> list[str]:
    """Example calls shown in a question: doctest lines and the left side of asserts.

    Args:
        question: The question (a HumanEval prompt, an MBPP task with its tests...).

    Returns:
        Up to 10 distinct call expressions such as ``"add(1, 2)"``, in order.
    """
    found = [m.group(1).strip() for m in _DOCTEST_RE.finditer(question)]
    found += [m.group(1).strip() for m in _ASSERT_RE.finditer(question)]
    calls = [call for call in dict.fromkeys(found) if _is_call(call)]
    return calls[:_MAX_PROBES]


def _behaviour(code: str, calls: Sequence[str], timeout: float) -> str | None:
    token = secrets.token_hex(8) + "::"
    harness = _HARNESS.format(source=code, calls=list(calls))
    result = run_python(harness, timeout=timeout, stdin=f"{token}\n")
    lines = result.stdout.rstrip("\n").splitlines()
    if not result.ok or not lines or not lines[-1].startswith(token):
        return None
    outputs = lines[-1].removeprefix(token)
    try:
        json.loads(outputs)
    except ValueError:
        return None
    return "behaviour:" + outputs


def behaviour_keys(
    texts: Sequence[str], question: str, *, timeout: float = 5.0
) -> list[str | None]:
    """Vote keys of code replies: their behaviour on the question's example calls.

    Args:
        texts: The replies (their last code block is the program).
        question: The question the replies answer; its example calls are the probes.
        timeout: Seconds each program may run in the sandbox.

    Returns:
        One key per reply: ``"behaviour:[...]"`` (the reprs of the probe results) when
        the program runs, else its normalised code (:func:`extract_code`), else None.
    """
    calls = probe_calls(question)
    keys: list[str | None] = []
    for text in texts:
        code = last_code_block(text)
        key = _behaviour(code, calls, timeout) if code is not None and calls else None
        keys.append(key or extract_code(text))
    return keys
