r"""Grading on the formats the benchmarks use (MATH-500, GSM8K, HumanEval/MBPP code).

The math references below are written as MATH-500 writes them (``\left( 3,
\frac{\pi}{2} \right)``, ``90^\circ``, ``\text{(C)}``, ``x \in [-2,7]``); a reply
is a model's boxed answer. Where formats could be argued either way, the expected
value is what the MATH and Minerva graders decide (Hendrycks et al.'s
``is_equiv``/``strip_string``; Lewkowycz et al.'s ``normalize_final_answer`` and
sympy check).
"""

from __future__ import annotations

import pytest

from avengers_graph.formats import grade_code, grade_number


@pytest.mark.parametrize(
    ("output", "reference", "expected"),
    [
        # a point in polar coordinates (MATH-500 #0), both directions
        (r"\boxed{(3,\frac{\pi}{2})}", r"\left( 3, \frac{\pi}{2} \right)", True),
        (r"So it is $\boxed{\left( 3, \frac{\pi}{2} \right)}$.", r"(3,\frac{\pi}{2})", True),
        (r"\boxed{(3,\frac{\pi}{4})}", r"\left( 3, \frac{\pi}{2} \right)", False),
        (r"\boxed{( \frac{3}{2}, -13 )}", r"\left( \frac{3}{2}, -13 \right)", True),
        (r"\boxed{(-13, \frac{3}{2})}", r"\left( \frac{3}{2}, -13 \right)", False),
        # one half, as a fraction and as a decimal, both directions
        (r"\boxed{0.5}", r"\frac{1}{2}", True),
        (r"\boxed{\frac{1}{2}}", "0.5", True),
        (r"\boxed{\frac{2}{4}}", "0.5", True),
        (r"\boxed{.5}", r"\frac{1}{2}", True),
        (r"\boxed{\frac{1}{3}}", "0.5", False),
        # \dfrac / \tfrac / a slash; an approximation is not the exact answer
        (r"\boxed{\frac{14}{3}}", r"\dfrac{14}{3}", True),
        (r"\boxed{\tfrac{14}{3}}", r"\dfrac{14}{3}", True),
        (r"\boxed{14/3}", r"\dfrac{14}{3}", True),
        (r"\boxed{\frac{3}{14}}", r"\dfrac{14}{3}", False),
        (r"\boxed{4.67}", r"\dfrac{14}{3}", False),
        # percent: the sign is dropped (as strip_string drops it), the number must match
        (r"\boxed{10}", r"10\%", True),
        (r"\boxed{10\%}", r"10\%", True),
        (r"\boxed{10%}", r"10\%", True),
        (r"\boxed{11\%}", r"10\%", False),
        (r"\boxed{0.1}", r"10\%", False),
        # an interval with its variable (MATH-500 #383)
        (r"\boxed{x \in [-2, 7]}", r"x \in [-2,7]", True),
        (r"\boxed{x\in\left[-2,7\right]}", r"x \in [-2,7]", True),
        (r"\boxed{x \in (-2,7)}", r"x \in [-2,7]", False),
        (r"\boxed{x \in [-2,8]}", r"x \in [-2,7]", False),
        (r"\boxed{(2, \infty)}", r"(2,\infty)", True),
        (r"\boxed{[2, \infty)}", r"(2,\infty)", False),
        # a lettered option as the answer (MATH-500 #227)
        (r"\boxed{\text{(C)}}", r"\text{(C)}", True),
        (r"\boxed{(C)}", r"\text{(C)}", True),
        (r"\boxed{\textbf{(C)}}", r"\text{(C)}", True),
        (r"\boxed{(E)}", r"\text{(C)}", False),
        # degrees
        (r"\boxed{90}", r"90^\circ", True),
        (r"\boxed{90^{\circ}}", r"90^\circ", True),
        (r"\boxed{90^\circ}", "90", True),
        (r"\boxed{91^\circ}", r"90^\circ", False),
        # thousands separators (MATH-500 #343 is 58,500)
        (r"\boxed{1000}", "1,000", True),
        (r"\boxed{1{,}000}", "1,000", True),
        (r"\boxed{58500}", "58,500", True),
        (r"\boxed{100}", "1,000", False),
        (r"\boxed{1.000}", "1,000", False),
        # units after a plain number (MATH-500 #301 is 5.4 \text{ cents})
        (r"\boxed{5.4}", r"5.4 \text{ cents}", True),
        (r"\boxed{5.4 \text{ cents}}", r"5.4 \text{ cents}", True),
        (r"\boxed{5.5}", r"5.4 \text{ cents}", False),
    ],
)
def test_math500_formats(output: str, reference: str, *, expected: bool) -> None:
    assert grade_number(output, reference) is expected


def test_bare_interval_against_interval_with_variable() -> None:
    # MATH's strip_string and Minerva's normalize_final_answer both keep "x\in", so
    # the bare interval is a string mismatch for them; the grader agrees.
    assert grade_number(r"\boxed{[-2,7]}", r"x \in [-2,7]") is False


@pytest.mark.parametrize(
    ("output", "reference"),
    [
        # an option label: Minerva's sympy check and PRM800K's grader accept the letter
        (r"\boxed{C}", r"\text{(C)}"),
        (r"\boxed{\text{C}}", r"\text{(C)}"),
        # a unit with a power: MATH's _remove_right_units and Minerva reduce it to 5
        (r"\boxed{5\text{ cm}^2}", "5"),
        # MATH-500 #166's reference: shorthand \frac{270}7 and a unit; PRM800K reads 270/7
        (r"\boxed{\frac{270}{7}}", r"\frac{270}7\text{ degrees}"),
    ],
)
def test_math500_formats_benchmark_graders_accept(output: str, reference: str) -> None:
    assert grade_number(output, reference) is True


def test_math500_reference_with_shorthand_fraction_matches_verbatim_copy() -> None:
    # control: the reference itself grades as correct
    reference = r"\frac{270}7\text{ degrees}"
    assert grade_number(r"The angle is \boxed{\frac{270}7\text{ degrees}}.", reference)


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("Janet makes $18 every day.", True),
        ("The answer is $18.", True),
        ("She earns $18.00 a day.", True),
        ("18.00", True),
        ("#### 18", True),
        ("#### $18", True),
        ("Janet sells 16 - 3 - 4 = 9 eggs at $2 each, so 9 * 2 = 18.\n#### 18", True),
        ("So she makes 18 dollars per day.", True),
        ("She has 18 eggs left.\n#### 17", False),
        ("#### 180", False),
        ("She earns $18.50 a day.", False),
        ("$1.80", False),
        ("#### -18", False),
    ],
)
@pytest.mark.parametrize("reference", ["18", "#### 18"])
def test_gsm8k_formats(output: str, reference: str, *, expected: bool) -> None:
    assert grade_number(output, reference) is expected


def test_gsm8k_thousands_reference_without_comma() -> None:
    # gsm8k_items strips the commas of the reference; replies may keep them
    assert grade_number("The total is $1,080.", "1080") is True
    assert grade_number("#### 1,080", "1080") is True
    assert grade_number("#### 1,008", "1080") is False


# --- code ------------------------------------------------------------------------

_TESTS = "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n"
_HUMANEVAL_TESTS = "def check(candidate):\n    assert candidate(1, 2) == 3\n\n\ncheck(add)\n"


def _fenced(code: str) -> str:
    return f"Here you go:\n\n```python\n{code}\n```\n"


_CORRECT = "def add(a, b):\n    return a + b"


def test_code_control_passes() -> None:
    assert grade_code(_fenced(_CORRECT), _TESTS, timeout=10) is True


@pytest.mark.parametrize(
    "code",
    [
        # an endless loop before the function is even defined
        "while True:\n    pass\n\n" + _CORRECT,
        # an endless loop that ignores the usual signals and swallows exceptions
        (
            "import signal\n"
            "for s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM):\n"
            "    signal.signal(s, signal.SIG_IGN)\n\n"
            "def add(a, b):\n"
            "    while True:\n"
            "        try:\n"
            "            pass\n"
            "        except BaseException:\n"
            "            pass\n"
        ),
    ],
    ids=["top-level", "ignores-signals"],
)
def test_code_that_loops_forever_fails(code: str) -> None:
    assert grade_code(_fenced(code), _TESTS, timeout=2) is False
    assert grade_code(_fenced(code), _HUMANEVAL_TESTS, timeout=2) is False


@pytest.mark.parametrize(
    "network_call",
    [
        "socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()",
        "socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close()",
        "socket.getaddrinfo('example.com', 80)",
        "urllib.request.urlopen('http://example.com', timeout=1).read()",
    ],
    ids=["tcp", "udp6", "dns", "http"],
)
def test_code_that_opens_a_network_socket_fails(network_call: str) -> None:
    code = (
        "import socket\nimport urllib.request\n\n"
        f"def add(a, b):\n    {network_call}\n    return a + b"
    )
    assert grade_code(_fenced(code), _TESTS, timeout=10) is False
    # control: the same program without the network call passes
    honest = code.replace(f"    {network_call}\n", "")
    assert grade_code(_fenced(honest), _TESTS, timeout=10) is True


@pytest.mark.parametrize(
    "code",
    [
        'def add(a, b):\n    print("All tests passed!")\n    return a - b',
        'print("OK")\nprint("Ran 3 tests")\n\ndef add(a, b):\n    return a * b',
    ],
)
def test_code_that_prints_success_but_fails_an_assert(code: str) -> None:
    assert grade_code(_fenced(code), _TESTS, timeout=10) is False
    assert grade_code(_fenced(code), _HUMANEVAL_TESTS, timeout=10) is False


# The grade is the exit status of program-then-tests, and the program controls its
# exit status: it can end the process with status 0 before the tests run, or turn
# their failure into status 0. HumanEval's harness execs the program and counts any
# BaseException (SystemExit included) as a failure. These fail until it is fixed.

_UNITTEST_MAIN = (
    "import unittest\n\n"
    "def add(a, b):\n"
    "    return a * b\n\n"
    "class TestAdd(unittest.TestCase):\n"
    "    def test_two(self):\n"
    "        self.assertEqual(add(2, 2), 4)\n\n"
    'if __name__ == "__main__":\n'
    "    unittest.main()"
)


@pytest.mark.parametrize(
    "code",
    [
        # a realistic reply: the model's own (weak) tests with unittest.main(), which
        # exits with status 0 before the reference tests are reached
        _UNITTEST_MAIN,
        "import sys\n\ndef add(a, b):\n    return None\n\nsys.exit(0)",
        "import os\n\ndef add(a, b):\n    return None\n\nos._exit(0)",
        # a failed assert still ends with status 0
        "import atexit, os\natexit.register(lambda: os._exit(0))\n\n"
        "def add(a, b):\n    return None",
        "import os, sys\nsys.excepthook = lambda *args: os._exit(0)\n\n"
        "def add(a, b):\n    return None",
    ],
    ids=["unittest-main", "sys-exit", "os-exit", "atexit", "excepthook"],
)
def test_wrong_code_cannot_pass_by_exiting_with_status_zero(code: str) -> None:
    assert grade_code(_fenced(code), _TESTS, timeout=10) is False
