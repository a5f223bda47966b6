from __future__ import annotations

import pytest

from avengers_graph.errors import InvalidInputError
from avengers_graph.formats import (
    FORMATS,
    get_grader,
    grade_choice,
    grade_code,
    grade_math,
    grade_number,
    grade_text,
)


@pytest.mark.parametrize(
    ("output", "reference", "expected"),
    [
        ("The answer is 72.", "72", True),
        ("Natalia sold 72 clips.\n#### 72", "#### 72", True),
        (r"So \boxed{1000}", "#### 1,000", True),
        ("The total is $1,000.00", "1000", True),
        (r"\boxed{0.5}", r"\boxed{1/2}", True),
        (r"\boxed{\dfrac{1}{2}}", r"\frac{1}{2}", True),
        ("It costs 5 dollars.", "$5", True),
        (r"\boxed{x^{2} + 1}", "x^2+1", True),
        (r"\boxed{\left(1, 2\right)}", "(1,2)", True),
        ("The answer is 71.", "72", False),
        (r"\boxed{x^2-1}", "x^2+1", False),
        ("I do not know.", "72", False),
        ("", "72", False),
        ("The answer is 72 after 3 steps", "3", False),
    ],
)
def test_grade_number(output: str, reference: str, *, expected: bool) -> None:
    assert grade_number(output, reference) is expected


def test_grade_number_rejects_empty_reference() -> None:
    with pytest.raises(InvalidInputError, match="reference"):
        grade_number("72", "   ")


@pytest.mark.parametrize(
    ("output", "reference", "expected"),
    [
        ("The answer is B.", "B", True),
        ("Answer: (b)", "(b)", True),
        (r"\boxed{C}", "Answer: C", True),
        ("b", "B", True),
        ("A good answer is C", "C", True),
        ("The answer is K", "K", True),
        ("The answer is A.", "B", False),
        ("I think so.", "B", False),
        ("", "B", False),
    ],
)
def test_grade_choice(output: str, reference: str, *, expected: bool) -> None:
    assert grade_choice(output, reference) is expected


def test_grade_choice_rejects_reference_without_letter() -> None:
    with pytest.raises(InvalidInputError, match="letter"):
        grade_choice("B", "42")


@pytest.mark.parametrize(
    ("output", "reference", "expected"),
    [
        ("Paris", "Paris", True),
        ("The answer is: the Eiffel Tower!", "Eiffel Tower", True),
        ("Let me think.\nFrance's capital is well known.\n\nParis.\n", "paris", True),
        ("Paris is the capital.", "Paris", False),
        ("Lyon", "Paris", False),
        ("", "Paris", False),
    ],
)
def test_grade_text(output: str, reference: str, *, expected: bool) -> None:
    assert grade_text(output, reference) is expected


def test_grade_text_rejects_empty_reference() -> None:
    with pytest.raises(InvalidInputError, match="empty"):
        grade_text("Paris", " ... ")


_ADD = "Here is the function:\n```python\ndef add(a, b):\n    return a + b\n```\n"
_MBPP_TESTS = "assert add(1, 2) == 3\nassert add(-1, 1) == 0"
_HUMANEVAL_TESTS = (
    "def check(candidate):\n"
    "    assert candidate(1, 2) == 3\n"
    "    assert candidate(2, 2) == 4\n"
    "\n"
    "check(add)"
)


def test_grade_code_passing_code() -> None:
    assert grade_code(_ADD, _MBPP_TESTS, timeout=30) is True
    assert grade_code(_ADD, _HUMANEVAL_TESTS, timeout=30) is True


def test_grade_code_without_fence_and_with_future_import() -> None:
    code = "from __future__ import annotations\n\ndef add(a: int, b: int) -> int:\n    return a + b"
    assert grade_code(code, _MBPP_TESTS, timeout=30) is True


def test_grade_code_failing_assert() -> None:
    wrong = _ADD.replace("a + b", "a - b")
    assert grade_code(wrong, _MBPP_TESTS, timeout=30) is False
    assert grade_code(wrong, _HUMANEVAL_TESTS, timeout=30) is False


def test_grade_code_infinite_loop_times_out() -> None:
    looping = "```python\ndef add(a, b):\n    while True:\n        pass\n```"
    assert grade_code(looping, _MBPP_TESTS, timeout=1) is False


def test_grade_code_network_access_fails() -> None:
    sneaky = (
        "```python\n"
        "import socket\n"
        "def add(a, b):\n"
        "    socket.create_connection(('127.0.0.1', 9), timeout=1).close()\n"
        "    return a + b\n"
        "```"
    )
    assert grade_code(sneaky, _MBPP_TESTS, timeout=30) is False
    # Control: the same program without the network call passes.
    honest = sneaky.replace(
        "    socket.create_connection(('127.0.0.1', 9), timeout=1).close()\n", ""
    )
    assert grade_code(honest, _MBPP_TESTS, timeout=30) is True


def test_grade_code_no_code_is_wrong() -> None:
    assert grade_code("", _MBPP_TESTS) is False


def test_grade_code_rejects_check_that_is_never_called() -> None:
    with pytest.raises(InvalidInputError, match=r"check\(<entry_point>\)"):
        grade_code(_ADD, "def check(candidate):\n    assert candidate(1, 2) == 3\n")


def test_grade_code_rejects_invalid_tests() -> None:
    with pytest.raises(InvalidInputError, match="not valid Python"):
        grade_code(_ADD, "assert add(1, 2) ==")


def test_registries() -> None:
    gradable = {name for name, fmt in FORMATS.items() if fmt.gradable}
    assert gradable == {"number", "math", "choice", "label", "text", "code"}
    assert FORMATS["number"].grade is grade_number
    assert FORMATS["math"].grade is grade_math
    with pytest.raises(TypeError):
        FORMATS["new"] = FORMATS["text"]  # type: ignore[index]


def test_the_old_grading_module_still_works_with_a_warning() -> None:
    import importlib
    import sys

    sys.modules.pop("avengers_graph.grading", None)
    with pytest.warns(DeprecationWarning, match="avengers_graph.formats"):
        grading = importlib.import_module("avengers_graph.grading")
    assert grading.GRADERS["code"] is grade_code
    assert grading.get_grader("choice") is grade_choice


def test_get_grader() -> None:
    assert get_grader("number") is grade_number
    assert get_grader("code") is grade_code

    def custom(output: str, reference: str) -> bool:
        return output == reference

    assert get_grader(custom) is custom
    with pytest.raises(InvalidInputError, match=r"'number'.*'code'"):
        get_grader("numbers")
