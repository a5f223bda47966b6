"""The prompt contract: the same prompt in calibration and service, replies read as answers."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from avengers_graph.errors import InvalidInputError
from avengers_graph.experts.contract import Expert, as_expert, contract, validate_pool
from tests.fakes import ScriptedExpert, constant

CHOICE = "Which planet is red?\nA) Venus\nB) Mars\nC) Jupiter"
WORD = "Tom has 3 apples and buys 5 more. How many apples does he have?"


def test_the_instruction_goes_first_or_joins_the_system_prompt() -> None:
    terms = contract(CHOICE, "direct")
    alone = terms.messages([HumanMessage(CHOICE)])
    assert alone == [SystemMessage(terms.instruction), HumanMessage(CHOICE)]
    joined = terms.messages([SystemMessage("You are terse."), HumanMessage(CHOICE)])
    assert joined[0].content == f"You are terse.\n\n{terms.instruction}"
    assert joined[1:] == [HumanMessage(CHOICE)]


def test_free_text_goes_as_it_is() -> None:
    terms = contract("Tell me a joke.", "reason")
    messages = [SystemMessage("Be kind."), HumanMessage("Tell me a joke.")]
    assert terms.instruction is None
    assert terms.messages(messages) == messages
    assert "response_format" not in terms.options()


def test_options_carry_the_budget_and_the_constraint() -> None:
    direct = contract(CHOICE, "direct")
    assert direct.options()["max_tokens"] == 16
    assert direct.options()["response_format"]["json_schema"]["schema"]["properties"] == {
        "answer": {"type": "string", "enum": ["A", "B", "C"]}
    }
    assert direct.options(max_tokens=8)["max_tokens"] == 8  # a lower cap wins
    assert direct.options(max_tokens=4096)["max_tokens"] == 16  # the budget holds
    unconstrained = contract(CHOICE, "direct", constrain=False)
    assert "response_format" not in unconstrained.options()
    assert contract(WORD, "reason").options() == {"max_tokens": 1024}


def test_a_direct_reply_is_unwrapped_and_a_choice_rendered() -> None:
    answer = contract(CHOICE, "direct").answer(AIMessage('{"answer": "B"}'))
    assert answer.content == "B) Mars"
    assert answer.response_metadata["strategy"] == "direct"
    assert contract(CHOICE, "direct").key(str(answer.content)) == "B"
    number = contract(WORD, "direct").answer(AIMessage('{"answer": 8.0}'))
    assert number.content == "8"
    # a server that ignored the schema: the text is the answer
    assert contract(CHOICE, "direct").answer(AIMessage("B")).content == "B"


@pytest.mark.parametrize(
    ("reply", "key"),
    [
        # Recorded (Qwen2.5-Coder-0.5B, 16-token budget): llama.cpp's grammar for the
        # schema allows a fence and blank space around the object, and the budget ran out
        # in the blanks, after the answer or before the closing brace.
        ('```json\n{"answer": "C"}\n          ', "C"),
        ('{\n    "answer": "C"\n\n\n          \t\t    ', "C"),
        ('{ "answer": "B"    ', "B"),
        # cut before the value was whole, or nothing but blanks: no answer
        ('{ "answer": "B', None),
        ('{\n    "answer" :\n\n          ', None),
        ("```json\n\n         ", None),
    ],
)
def test_a_direct_object_in_a_fence_or_cut_in_blank_space_is_read(
    reply: str, key: str | None
) -> None:
    terms = contract(CHOICE, "direct")
    answer = str(terms.answer(AIMessage(reply)).content)
    assert terms.key(answer) == key
    assert answer == ({"B": "B) Mars", "C": "C) Jupiter"}[key] if key else reply)


def test_code_with_an_answer_dict_inside_is_not_unwrapped() -> None:
    question = "Write a Python function `f()` that returns a dict with the key 'answer'."
    reply = 'def f():\n    return {"answer": 42}\n'
    assert contract(question, "direct").answer(AIMessage(reply)).content == reply


def test_a_number_cut_in_the_blanks_after_it_is_whole() -> None:
    assert contract(WORD, "direct").answer(AIMessage('{"answer": 8    ')).content == "8"
    assert contract(WORD, "direct").answer(AIMessage('{"answer": 8')).content == '{"answer": 8'


def test_a_program_runs_and_its_output_is_the_answer() -> None:
    terms = contract(WORD, "program")
    reply = AIMessage(
        "```python\napples = 3 + 5\nprint(apples)\n```",
        usage_metadata={"input_tokens": 9, "output_tokens": 12, "total_tokens": 21},
    )
    answer = terms.answer(reply)
    assert answer.content == "8"
    assert terms.key(str(answer.content)) == "8"
    assert answer.usage_metadata == reply.usage_metadata
    program = answer.response_metadata["program"]
    assert program["source"] == "apples = 3 + 5\nprint(apples)"
    assert program["returncode"] == 0


def test_a_program_may_import_numpy_and_sympy() -> None:
    # Recorded: Qwen2.5-Coder-1.5B's program for MATH-500's "greatest integer less
    # than (sqrt 7 + sqrt 5)^6" (it answered 13535, right, once numpy was importable).
    reply = AIMessage(
        "We'll use the `numpy` library for accurate arithmetic operations.\n"
        "```python\nimport numpy as np\n\n# Define the expression\n"
        "expression_value = (np.sqrt(7) + np.sqrt(5))**6\n\n"
        "greatest_integer_less_than_expression = int(np.floor(expression_value))\n\n"
        "print(greatest_integer_less_than_expression)\n```\n```output\n1284\n```\n"
        "The greatest integer less than it is \\(\\boxed{1284}\\)."
    )
    question = "Find the greatest integer less than $(\\sqrt{7} + \\sqrt{5})^6.$"
    assert contract(question, "program").answer(reply).content == "13535"
    symbolic = AIMessage(
        "```python\nimport sympy as sp\nx = sp.symbols('x')\n"
        "print(max(sp.solve(x**2 - 5*x + 6, x)))\n```"
    )
    assert contract(WORD, "program").answer(symbolic).content == "3"


@pytest.mark.parametrize(
    "reply",
    [
        "```python\nraise SystemExit(3)\n```",
        "```python\nx = 1\n```",  # prints nothing
        "I would add them.",  # no code: the whole reply is tried as a program
    ],
)
def test_a_failed_program_gives_an_empty_answer_that_never_votes(reply: str) -> None:
    terms = contract(WORD, "program")
    answer = terms.answer(AIMessage(reply))
    assert answer.content == ""
    assert terms.key("") is None


def test_a_looping_program_is_stopped() -> None:
    terms = contract(WORD, "program")
    answer = terms.answer(AIMessage("```python\nwhile True:\n    pass\n```"), timeout=1.0)
    assert answer.content == ""
    assert answer.response_metadata["program"]["timed_out"] is True


def test_strategies_serve_only_their_formats() -> None:
    with pytest.raises(InvalidInputError, match="'program' strategy does not serve 'choice'"):
        contract(CHOICE, "program")
    with pytest.raises(InvalidInputError, match="Unknown strategy"):
        contract(CHOICE, "guess")  # type: ignore[arg-type]


def test_a_named_format_overrides_detection() -> None:
    assert contract("Tell me a joke.", "reason", answer_format="text").instruction is not None
    assert contract(WORD, "reason", answer_format="free").instruction is None


def test_experts() -> None:
    model = ScriptedExpert(model="m", respond=constant("ok"))
    assert as_expert(model) == Expert(model, "reason")
    assert validate_pool({"a": model, "b": Expert(model, "program")})["b"].strategy == "program"
    with pytest.raises(InvalidInputError, match="Unknown strategy"):
        Expert(model, "shout")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="not a LangChain BaseChatModel"):
        validate_pool({"a": "gpt"})  # type: ignore[dict-item]
    with pytest.raises(InvalidInputError, match="non-empty dict"):
        validate_pool({})
