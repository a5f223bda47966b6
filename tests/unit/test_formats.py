"""Answer formats: detection from the question, and what each format holds."""

from __future__ import annotations

from collections import Counter

import pytest

from avengers_graph.errors import InvalidInputError
from avengers_graph.eval.benchmarks import BENCHMARKS, load_benchmark
from avengers_graph.formats import (
    FORMATS,
    STRATEGIES,
    Detected,
    detect,
    extract_label,
    get_format,
    option_letters,
    option_text,
)

# chat, agent and RAG prompts as users send them, with the format the contract gives them
PROMPTS = [
    ("What is the capital of France?", "free"),
    ("Hi! How are you today?", "free"),
    ("Summarize in 3 bullet points: revenue grew 12% in 2023 to $4.1B.", "free"),
    ("Write a haiku about autumn.", "free"),
    ("Explain why the sky is blue.", "free"),
    ("I have 2 cats and 3 dogs, what should I name them?", "free"),
    ("What's the weather in Paris in celsius?", "free"),
    ("Convert 10 miles to kilometers and multiply by 3.", "free"),
    ("Translate 'good morning' into Spanish.", "free"),
    ("Who wrote Hamlet?", "free"),
    ("Is Python or Java better for beginners?", "free"),
    (
        "Use the context to answer.\nContext: ACME was founded in 1999.\n"
        "Question: When was ACME founded?",
        "free",
    ),
    (
        "Use the context to answer.\nContext: ACME has 250 staff in 3 offices.\n"
        "Question: How many staff does ACME have?",
        "number",
    ),
    ("What is 17 * 23?", "number"),
    ("Tom has 3 apples and buys 5 more. How many apples does he have?", "number"),
    ("A train travels 60 km in 1.5 hours. What is its average speed in km/h?", "number"),
    ("Compute 2^10.", "number"),
    # GSM8K and MATH-500 questions the detector once missed
    (
        "Jill gets paid $20 per hour to teach and $30 to be a cheerleading coach. If she "
        "works 50 weeks a year, 35 hours a week as a teacher and 15 hours a week as a "
        "coach, what's her annual salary?",
        "number",
    ),
    (
        "Marissa is hiking a 12-mile trail. She took 1 hour to walk the first 4 miles. If "
        "she wants her average speed to be 4 miles per hour, what speed (in miles per "
        "hour) does she need to walk the remaining distance?",
        "number",
    ),
    (
        "What is the distance, in units, between the points $(2, -6)$ and $(-4, 3)$? "
        "Express your answer in simplest radical form.",
        "math",
    ),
    ("With 3 kids and 2 cars, which holiday spot fits us?", "free"),
    ("Solve $x^2 - 5x + 6 = 0$.", "math"),
    ("Find $\\frac{1}{2} + \\frac{1}{3}$.", "math"),
    ("Capital of France? A) Rome B) Paris", "choice"),
    ("Which planet is red?\nA) Venus\nB) Mars\nC) Jupiter\nD) Saturn", "choice"),
    ("Is the following statement true or false? The sun is a star.", "label"),
    ("Does this review sound positive or negative? 'Great food!'", "label"),
    ("Write a Python function that reverses a string.", "code"),
    ("def add(a, b):\n    '''Return a + b.'''\n", "code"),
]


@pytest.mark.parametrize(("question", "expected"), PROMPTS)
def test_chat_agent_and_rag_prompts(question: str, expected: str) -> None:
    assert detect(question).format == expected


# benchmark kind -> the formats its questions may be detected as
ACCEPTED = {
    "number": {"number", "math"},
    "math": {"math", "number"},
    "choice": {"choice"},
    "code": {"code"},
    "text": {"label"},
}
# share of each benchmark's questions detected as its kind, measured on 150 drawn
# questions (HumanEval: every short one); MATH-500 misses a few word problems
FLOOR = {"math500": 0.9}


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_benchmark_questions_are_detected_as_their_kind(name: str) -> None:
    items = load_benchmark(name, 150, seed=7) if name != "humaneval" else load_benchmark(name)
    kind = BENCHMARKS[name].kind
    found = Counter(detect(item["question"]).format in ACCEPTED[kind] for item in items)
    share = found[True] / len(items)
    assert share >= FLOOR.get(name, 0.98), (name, found)


def test_options_are_read_from_lines_or_inline() -> None:
    assert option_letters("Q?\n\nA) one\nB) two\nC) three") == ("A", "B", "C")
    assert option_letters("Q? (A) one (B) two") == ("A", "B")
    assert option_letters("Q?\nA. one\nB. two\nC. three\nD. four") == ("A", "B", "C", "D")
    assert option_letters("Plan A) is fine") == ()  # one letter is no list of options
    assert option_letters("Q?\nB) two\nC) three") == ()  # options start at A
    assert option_text("Capital? A) Rome B) Paris", "B") == "Paris"
    assert option_text("Q?\nA) one\nB) two words\n", "B") == "two words"


def test_labels_come_from_the_question() -> None:
    assert detect("Positive or negative? I loved it.") == Detected(
        "label", ("positive", "negative")
    )
    assert extract_label("Positive.", ("positive", "negative")) == "positive"
    assert extract_label("It is not negative.\nAnswer: positive", ("positive", "negative")) == (
        "positive"
    )
    assert extract_label("I cannot tell.", ("positive", "negative")) is None


def test_every_format_serves_its_strategies_with_a_budget() -> None:
    for fmt in FORMATS.values():
        assert set(fmt.instructions) == set(fmt.max_tokens)
        assert set(fmt.instructions) <= set(STRATEGIES)
        assert all(budget > 0 for budget in fmt.max_tokens.values())
    assert FORMATS["number"].serves("program")
    assert not FORMATS["choice"].serves("program")
    assert not FORMATS["code"].serves("program")
    assert FORMATS["free"].instruction("reason", Detected("free")) is None


def test_chance_rates() -> None:
    assert FORMATS["choice"].chance(Detected("choice", ("A", "B", "C", "D"))) == 0.25
    assert FORMATS["label"].chance(Detected("label", ("positive", "negative"))) == 0.5
    assert FORMATS["number"].chance(Detected("number")) == 0.0


def test_direct_choices_are_held_to_the_options() -> None:
    schema = FORMATS["choice"].constraint("direct", Detected("choice", ("A", "B", "C")))
    assert schema is not None
    answer = schema["json_schema"]["schema"]["properties"]["answer"]
    assert answer == {"type": "string", "enum": ["A", "B", "C"]}
    assert FORMATS["choice"].constraint("reason", Detected("choice", ("A", "B"))) is None


def test_label_instruction_names_the_labels() -> None:
    detected = Detected("label", ("positive", "negative"))
    assert FORMATS["label"].instruction("direct", detected) == (
        "Answer with one word: positive or negative."
    )
    # braces of other instructions are not templates
    assert "\\boxed{}" in (FORMATS["math"].instruction("reason", Detected("math")) or "")


def test_unknown_names_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="Unknown answer format 'poem'"):
        get_format("poem")
    with pytest.raises(InvalidInputError, match="does not serve 'choice'"):
        FORMATS["choice"].instruction("program", Detected("choice"))
