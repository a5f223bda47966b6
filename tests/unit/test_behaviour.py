"""Code replies vote by what they compute on the question's example calls."""

from __future__ import annotations

from avengers_graph.formats.behaviour import behaviour_keys, generated_calls, probe_calls
from avengers_graph.voting import majority_vote

PROMPT = '''def add(a: int, b: int) -> int:
    """Add two numbers.
    >>> add(2, 3)
    5
    >>> add(-1, 1)
    0
    """
'''


def reply(code: str) -> str:
    return f"Here you go:\n```python\n{code}\n```"


LOOP = reply(
    "def add(a, b):\n    total = a\n    for _ in range(b):\n        total += 1\n    return total"
)
SUM = reply("def add(a, b):\n    return sum([a, b])")
PLUS = reply("def add(a, b):\n    return a + b")
WRONG = reply("def add(a, b):\n    return a - b")


def test_probe_calls_come_from_doctests_and_asserts() -> None:
    assert probe_calls(PROMPT) == ["add(2, 3)", "add(-1, 1)"]
    mbpp = "Write a function.\n\nassert f(1) == 2\nassert f(2) != 5\nassert x == 1"
    assert probe_calls(mbpp) == ["f(1)", "f(2)"]
    assert probe_calls("Write a function that adds.") == []


def test_different_code_with_the_same_behaviour_votes_together() -> None:
    keys = behaviour_keys([SUM, WRONG, PLUS, WRONG.replace("a - b", "b - a")], PROMPT)
    assert keys[0] == keys[2] == "behaviour:" + '["5", "0"]'
    assert keys[1] != keys[0]
    assert keys[3] != keys[1]  # wrong in a different way
    result = majority_vote(keys, [0, 1, 2, 3])
    assert result.winner == 0
    assert result.votes[keys[0]] == 2


def test_agreement_holds_only_on_the_probes_shown() -> None:
    # counting up b times agrees with a + b on these probes (b >= 0) ...
    assert len(set(behaviour_keys([LOOP, PLUS], PROMPT))) == 1
    # ... and a probe with a negative b tells them apart
    negative = PROMPT.replace(">>> add(-1, 1)\n    0", ">>> add(2, -3)\n    -1")
    loop_key, plus_key = behaviour_keys([LOOP, PLUS], negative)
    assert loop_key != plus_key


def test_exceptions_are_behaviour_and_broken_code_falls_back_to_syntax() -> None:
    raising = reply("def add(a, b):\n    raise ValueError('no')")
    broken = reply("def add(a, b) return a + b")
    keys = behaviour_keys([raising, broken], PROMPT)
    assert keys[0] == "behaviour:" + '["raises ValueError", "raises ValueError"]'
    assert keys[1] == "def add(a, b) return a + b"  # does not parse: stripped text


def test_endless_and_networked_programs_do_not_hang_or_connect() -> None:
    endless = reply("def add(a, b):\n    while True:\n        pass")
    networked = reply(
        "import socket\n"
        "def add(a, b):\n"
        "    socket.create_connection(('1.1.1.1', 80), timeout=1)\n"
        "    return a + b"
    )
    keys = behaviour_keys([endless, networked], PROMPT, timeout=2.0)
    assert keys[0] is not None
    assert not keys[0].startswith("behaviour:")  # timed out: the syntax key
    assert keys[1] is not None
    assert "5" not in keys[1].removeprefix("behaviour:")  # the connection was refused


def test_without_examples_calls_are_generated_from_the_signature() -> None:
    keys = behaviour_keys([PLUS, SUM, WRONG], "Write a function add(a, b) that adds.")
    assert keys[0] == keys[1]
    assert keys[0] is not None
    assert keys[0].startswith("behaviour:")
    assert keys[2] != keys[0]


def test_generated_calls_follow_the_stub_annotations() -> None:
    stub = (
        "from typing import List\n\n"
        "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
        '    """Whether two numbers are closer than threshold."""\n'
    )
    calls = generated_calls(stub, [])
    assert calls
    assert all(call.startswith("has_close_elements([") for call in calls)
    assert len(set(calls)) == len(calls)
    assert generated_calls("def f(x: dict) -> int:\n    pass", []) == []  # no values for dict
    assert generated_calls("def f(*args):\n    pass", []) == []
    assert generated_calls("Nothing to call.", ["print(1)"]) == []


def test_generated_calls_a_program_raises_on_are_not_compared() -> None:
    strict = reply("def inv(x: int) -> int:\n    return 10 // x")
    lenient = reply("def inv(x):\n    return 10 // x if x else 0")
    keys = behaviour_keys([strict, lenient], "Write inv(x: int) returning 10 // x.")
    assert keys[0] == keys[1]  # they differ only on inv(0), where one raises
    assert keys[0] is not None
    assert keys[0].startswith("behaviour:")


def test_without_any_usable_call_the_key_is_the_normalised_code() -> None:
    untyped = reply("def add(a: dict, b):  # comment\n    return a")
    same = reply("def add(a: dict, b):\n    return a")
    keys = behaviour_keys([untyped, same], "Add.")
    assert keys[0] == keys[1] == "def add(a: dict, b):\n    return a"


def test_the_graph_votes_code_by_behaviour(tmp_path) -> None:
    from avengers_graph import ChatAvengers
    from tests.fakes import KeywordEmbeddings, ScriptedExpert, constant
    from tests.unit.conftest import write_two_domain_store

    embeddings = KeywordEmbeddings({"math": 0, "code": 1})
    store = write_two_domain_store(tmp_path / "store", embeddings)
    experts = {
        "mathy": ScriptedExpert(respond=constant(WRONG)),
        "coder": ScriptedExpert(respond=constant(SUM)),
        "bard": ScriptedExpert(respond=constant(PLUS)),
    }
    llm = ChatAvengers(
        experts=experts, embeddings=embeddings, store=store, top_n=3, samples=1, seed=0
    )
    message = llm.invoke("code: complete this function\n" + PROMPT)
    record = message.response_metadata["avengers"]
    assert record["answer_format"] == "code:behaviour"
    assert record["votes"] == {"behaviour:" + '["5", "0"]': 2, "behaviour:" + '["-1", "-2"]': 1}
    assert record["winner"] == "coder"  # ranked first of the two that agree
    assert "sum([a, b])" in message.text
