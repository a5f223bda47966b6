"""Code answers voted by behaviour: same outputs on the same inputs, same vote.

Two programs that are written differently but compute the same thing should vote
together; :func:`avengers_graph.formats.extract_code` only catches formatting
differences. :func:`behaviour_keys` runs every candidate program, in the sandbox
(:func:`avengers_graph.sandbox.run_python`: a subprocess with a timeout, no network
and a memory limit), on the same probe calls and keys it by what the calls return
(``repr`` of each result, or the exception's type). The probes are the example calls
the question shows (:func:`probe_calls`: doctest lines ``>>> f(1, 2)`` and
``assert f(...) == ...`` lines, as HumanEval and MBPP prompts have). When it shows
none, :func:`generated_calls` makes some from the function's signature (typed
arguments get small fixed values of their type), and only the calls no program raises
on are compared, so programs that agree on valid inputs are not split by invalid ones.
For a program that does not run, or with no usable probe, the key falls back to the
normalised syntax.

The programs run one after the other, within one budget: each gets at most ``timeout``
seconds and never runs past the caller's ``deadline`` (the vote's share of the run's
time), so six programs that loop for ever cost the deadline, not six timeouts. A
program the deadline leaves no time for does not run (its key is its syntax).
"""

from __future__ import annotations

import ast
import itertools
import json
import re
import secrets
import textwrap
from collections import Counter
from collections.abc import Sequence

from avengers_graph.formats import extract_code, last_code_block
from avengers_graph.sandbox import run_python

__all__ = ["behaviour_keys", "generated_calls", "probe_calls"]

_DOCTEST_RE = re.compile(r"^\s*>>>\s*(.+)$", re.MULTILINE)
_ASSERT_RE = re.compile(r"^\s*assert\s+(.+?)\s*(?:==|!=|\bis\b)", re.MULTILINE)
_MAX_PROBES = 10
_GENERATED_PROBES = 8
_DEF_RE = re.compile(r"^[ \t]*def[ \t]+\w+[ \t]*\(.*?\)[^:\n]*:", re.MULTILINE | re.DOTALL)

# Small values per annotation, cycled so that the generated calls differ.
_VALUES: dict[str, tuple[object, ...]] = {
    "int": (0, 1, 2, 3, 5, 10, 7, 4),
    "float": (0.0, 1.5, 2.0, 3.25, 10.0),
    "str": ("", "a", "hello", "Hello World", "abc123", "racecar"),
    "bool": (True, False),
    "list[int]": ([], [1], [3, 1, 2], [5, 5, 0, 2], [1, 2, 3, 4, 5], [10, -1, 7]),
    "list[float]": ([], [1.0], [2.5, 1.0, 3.5], [1.0, 1.0, 4.0]),
    "list[str]": ([], ["a"], ["abc", "de", ""], ["hello", "world"]),
}
_ALIASES = {"": "int", "list": "list[int]", "list[any]": "list[int]", "number": "float"}

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


def _signatures(source: str) -> dict[str, ast.arguments]:
    """Top-level function name to its arguments, for every ``def`` that parses."""
    found: dict[str, ast.arguments] = {}
    for match in _DEF_RE.finditer(source):
        try:
            tree = ast.parse(textwrap.dedent(match.group(0)) + " pass")
        except SyntaxError:
            continue
        node = tree.body[0]
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            found.setdefault(node.name, node.args)
    return found


def _values(annotation: ast.expr | None) -> tuple[object, ...] | None:
    name = ast.unparse(annotation) if annotation is not None else ""
    name = re.sub(r"\b(?:typing\.)?List\b", "list", name).replace(" ", "").lower()
    return _VALUES.get(_ALIASES.get(name, name))


def generated_calls(question: str, programs: Sequence[str]) -> list[str]:
    """Calls made up from the function's signature when the question shows none.

    The function is the one the question defines (a HumanEval-style stub), else the
    one most programs define. Each argument gets small fixed values of its annotated
    type (``int``, ``float``, ``str``, ``bool``, lists of those; unannotated counts
    as ``int``), cycled so the calls differ.

    Returns:
        Up to 8 call expressions, or none when the function takes an argument of
        another type, ``*args``/``**kwargs``, or no argument at all.
    """
    signatures = _signatures(question)
    if not signatures:
        defined = Counter(name for program in programs for name in _signatures(program))
        if not defined:
            return []
        name = defined.most_common(1)[0][0]
        signatures = {name: _signatures(next(p for p in programs if name in _signatures(p)))[name]}
    name, arguments = next(reversed(signatures.items()))  # the stub to complete comes last
    params = [*arguments.posonlyargs, *arguments.args]
    if not params or arguments.vararg or arguments.kwarg or arguments.kwonlyargs:
        return []
    columns = [_values(param.annotation) for param in params]
    if any(column is None for column in columns):
        return []
    cycles = [
        itertools.cycle(column[shift:] + column[:shift])
        for shift, column in enumerate(c for c in columns if c is not None)
    ]
    calls = []
    for _ in range(_GENERATED_PROBES):
        arguments_repr = ", ".join(repr(next(cycle)) for cycle in cycles)
        calls.append(f"{name}({arguments_repr})")
    return list(dict.fromkeys(calls))


def _outputs(
    code: str, calls: Sequence[str], timeout: float, deadline: float | None = None
) -> list[str] | None:
    """The reprs of the calls' results (or ``raises X``), or None if the program fails."""
    token = secrets.token_hex(8) + "::"
    harness = _HARNESS.format(source=code, calls=list(calls))
    result = run_python(harness, timeout=timeout, stdin=f"{token}\n", deadline=deadline)
    lines = result.stdout.rstrip("\n").splitlines()
    if not result.ok or not lines or not lines[-1].startswith(token):
        return None
    try:
        outputs = json.loads(lines[-1].removeprefix(token))
    except ValueError:
        return None
    if not isinstance(outputs, list) or len(outputs) != len(calls):
        return None
    return [str(output) for output in outputs]


def behaviour_keys(
    texts: Sequence[str],
    question: str,
    *,
    timeout: float = 5.0,
    deadline: float | None = None,
) -> list[str | None]:
    """Vote keys of code replies: their behaviour on the same probe calls.

    Args:
        texts: The replies (their last code block is the program).
        question: The question the replies answer; its example calls are the probes,
            else calls generated from the function's signature.
        timeout: Seconds each program may run in the sandbox.
        deadline: A :func:`time.monotonic` instant every program must end by (the
            caller's remaining budget); None: only ``timeout`` bounds each program.

    Returns:
        One key per reply: ``"behaviour:[...]"`` (the reprs of the probe results) when
        the program runs, else its normalised code (:func:`extract_code`), else None.
    """
    codes = [last_code_block(text) for text in texts]
    calls = probe_calls(question)
    generated = not calls
    if generated:
        calls = generated_calls(question, [code for code in codes if code is not None])
    outputs = [
        _outputs(code, calls, timeout, deadline) if code is not None and calls else None
        for code in codes
    ]
    keep: list[int] = list(range(len(calls)))
    if generated:  # compare only the calls no program raised on (invalid inputs, likely)
        ran = [output for output in outputs if output is not None]
        keep = [i for i in keep if not any(o[i].startswith("raises ") for o in ran)]
    keys: list[str | None] = []
    for text, output in zip(texts, outputs, strict=True):
        if output is not None and keep:
            keys.append("behaviour:" + json.dumps([output[i] for i in keep]))
        else:
            keys.append(extract_code(text))
    return keys
