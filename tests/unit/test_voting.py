from __future__ import annotations

import random
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avengers_graph.errors import InvalidInputError
from avengers_graph.formats import (
    canonical_math,
    extract_choice,
    extract_code,
    extract_math,
    extract_number,
    extract_text,
    last_code_block,
)
from avengers_graph.voting import (
    EXTRACTORS,
    VoteResult,
    majority_answer,
    majority_vote,
    resolve_extractor,
    semantic_vote,
    vote,
)

# ---------------------------------------------------------------------------
# extract_number
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # thousands separators, trailing zeros, currency, scientific notation
        ("1,000", "1000"),
        ("1000", "1000"),
        ("1000.0", "1000"),
        ("1000.00", "1000"),
        ("$1,000", "1000"),
        ("1e3", "1000"),
        ("1,234,567.890", "123456789/100"),
        ("It costs $3.50 per item.", "7/2"),
        # fractions
        ("0.5", "1/2"),
        (".5", "1/2"),
        ("1/2", "1/2"),
        (r"$\frac{1}{2}$", "1/2"),
        (r"\dfrac12", "1/2"),
        (r"\tfrac{3}{4}", "3/4"),
        # signs and percent
        ("-3", "-3"),
        ("\u22123", "-3"),
        ("50%", "50"),
        ("-0", "0"),
        # explicit final answers beat later numbers
        ("#### 72", "72"),
        ("Natalia sold 48 clips.\n#### 72", "72"),
        ("The answer is 72 apples, but 3 were rotten.", "72"),
        ("Answer: 72\nCheck: 70 + 2 = 72, and 5 more.", "72"),
        ("answer: $1,000.50", "2001/2"),
        ("The answer is: **42**", "42"),
        (r"The answer is $\frac{3}{4}$.", "3/4"),
        (r"The answer is $1.5 \times 10^{3}$", "1500"),
        ("Final answer: -7.", "-7"),
        # units and trailing period
        ("18 dollars", "18"),
        ("The total is 18 dollars.", "18"),
        # the last number in running text
        ("5 + 3 = 8", "8"),
        ("First 10, then 20, finally 30.", "30"),
        ("5-3", "3"),
        ("version 1.2.3", "6/5"),
        # boxed answers win over everything else
        (r"\boxed{72}", "72"),
        (r"So the answer is \boxed{72}. Earlier we had 5.", "72"),
        (r"\boxed{1} no wait \boxed{2}", "2"),
        (r"\fbox{7}", "7"),
        (r"\boxed{1{,}000}", "1000"),
        (r"\boxed{1\,000}", "1000"),
        (r"\boxed{\frac{1}{2}}", "1/2"),
        (r"\boxed{\dfrac12}", "1/2"),
        (r"\boxed{\frac{-1}{2}}", "-1/2"),
        (r"$\boxed{-\frac{1}{2}}$", "-1/2"),
        (r"\boxed{.5}", "1/2"),
        (r"\boxed{0.50}", "1/2"),
        (r"\boxed{5.}", "5"),
        (r"\boxed{\$18}", "18"),
        (r"\boxed{18\%}", "18"),
        (r"\boxed{30^\circ}", "30"),
        (r"\boxed{30^{\circ}}", "30"),
        (r"\boxed{x = 5}", "5"),
        (r"\boxed{72 \text{ dollars}}", "72"),
        (r"\boxed{18 dollars}", "18"),
        (r"\boxed{2.5 \times 10^{3}}", "2500"),
        (r"\boxed{1e3}", "1000"),
        (r"\boxed{ 42 }", "42"),
        (r"\boxed 5", "5"),
        (r"\boxed{5} and then an empty \boxed{}", "5"),
        (r"truncated reply \boxed{72", "72"),
        (r"\boxed{\boxed{9}}", "9"),
        # boxed expressions that are not numbers: normalised LaTeX
        (r"\boxed{x^{2} + 1}", "x^2+1"),
        (r"\boxed{x^2+1}", "x^2+1"),
        (r"\boxed{(1, 2)}", "(1,2)"),
        (r"\boxed{\left( 1,2 \right)}", "(1,2)"),
        (r"\boxed{\dfrac{\pi}{2}}", r"\frac{\pi}{2}"),
        (r"\boxed{3\sqrt2}", r"3\sqrt{2}"),
        (r"\boxed{3\sqrt{2}}", r"3\sqrt{2}"),
        (r"\boxed{2x}", "2x"),
        (r"\boxed{\text{Monday}}", "Monday"),
        (r"\boxed{1,2}", "1,2"),
        (r"\boxed{1/0}", "1/0"),
        (r"\boxed{x = \frac{\pi}{2}}", r"\frac{\pi}{2}"),
        # nothing to extract
        ("no numbers here", None),
        ("", None),
        ("x2 and y3", None),
        (r"\boxed{}", None),
    ],
)
def test_extract_number_cases(text: str, expected: str | None) -> None:
    assert extract_number(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # bare answers (a direct answer, a program's printed line) are keyed whole;
        # the replies below are recorded MATH-500 answers of the Qwen experts
        ("Evelyn", "Evelyn"),
        (r"\text{Evelyn}", "Evelyn"),
        ("(6,31,-1)", "(6,31,-1)"),
        ("(6, 31, -1)", "(6,31,-1)"),
        (r"\frac{\sqrt{3}}{2}", r"\frac{\sqrt{3}}{2}"),
        ("6.00000000000000", "6"),
        ("13535", "13535"),
        ("x = 5", "5"),
        ("5 + 3 = 8", "8"),
        ("No solution", "Nosolution"),
        ("(29)", "29"),
        (":83", "83"),
        ("The student with the greatest average speed is Evyn.", None),  # a sentence
        # prose around numbers, boxes and markers read as extract_number reads them
        ("Total cost: 85", "85"),
        ("The speed is 4 miles per hour.", "4"),
        (r"so \boxed{\text{Evelyn}}.", "Evelyn"),
        (r"\boxed{}", None),
        ("Answer: 12", "12"),
        ("", None),
        ("several\nlines with no number", None),
    ],
)
def test_extract_math_cases(text: str, expected: str | None) -> None:
    assert extract_math(text) == expected


def test_a_bare_math_answer_grades_against_its_reference() -> None:
    from avengers_graph.formats import grade_math, grade_number

    assert grade_math("Evelyn", r"\text{Evelyn}")
    assert grade_math("(6, 31, -1)", "(6,31,-1)")
    assert not grade_math("-1", "(6,31,-1)")
    assert not grade_number("(6, 31, -1)", "(6,31,-1)")  # numbers: the last number
    assert grade_math(r"The answer is \boxed{\text{Evelyn}}.", r"\text{Evelyn}")


@pytest.mark.parametrize(
    "variants",
    [
        ["1,000", "1000", "1000.0", "1000.00", "$1,000", "1e3", r"\boxed{1000}", "#### 1,000"],
        ["0.5", "1/2", r"\frac{1}{2}", r"\dfrac12", r"\boxed{\frac12}", "The answer is .50"],
        ["-3", "\u22123", r"\boxed{-3}", "Answer: -3.0"],
        ["50%", "50", r"\boxed{50\%}", "50 percent"],
    ],
)
def test_extract_number_equal_values_give_equal_keys(variants: list[str]) -> None:
    assert len({extract_number(text) for text in variants}) == 1


def test_extract_number_does_not_blow_up_on_huge_numbers() -> None:
    assert extract_number("1e999999999") == "1e999999999"
    huge = "9" * 6000
    assert extract_number(huge) == huge


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("72", "72"),
        ("$5", "5"),
        (r"\frac{1}{2}", "1/2"),
        ("x^{2}+1", "x^2+1"),
        ("   ", None),
    ],
)
def test_canonical_math(answer: str, expected: str | None) -> None:
    assert canonical_math(answer) == expected


# ---------------------------------------------------------------------------
# extract_choice
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"\boxed{B}", "B"),
        (r"\boxed{(C)}", "C"),
        (r"Answer: $\boxed{\text{C}}$", "C"),
        ("Answer: B", "B"),
        ("Answer: A", "A"),
        ("Answer:\nC", "C"),
        ("answer is (B)", "B"),
        ("Answer: (b)", "B"),
        ("answer is b.", "B"),
        ("The correct option is B.", "B"),
        ("The final answer is E", "E"),
        ("**Answer:** C", "C"),
        ("The answer is: **C**", "C"),
        ("answer is option (D)", "D"),
        ("It's a trick: answer = b", "B"),
        ("The answer is A because it is", "A"),
        ("(B)", "B"),
        ("B) 42", "B"),
        ("B. because 42 is even", "B"),
        ("B", "B"),
        ("b", "B"),
        ("**B**", "B"),
        ("  (d)  ", "D"),
        ("B\n\nBecause the others are wrong.", "B"),
        ("A good answer is C", "C"),
        ("I think the answer is D because", "D"),
        ("Option A is wrong. Option B is right.", "B"),
        ("(A) is wrong, the answer is C. Wait, actually the answer is (D).", "D"),
        ("Among (A) and (C), I pick the second.", "C"),
        # not choices
        ("I think", None),
        ("I'm not sure", None),
        ("The answer is a good one", None),
        ("the answers are a mess", None),
        ("Answer: I think it is unclear", None),
        ("", None),
        ("42", None),
    ],
)
def test_extract_choice_cases(text: str, expected: str | None) -> None:
    assert extract_choice(text) == expected


def test_extract_choice_only_accepts_letters_in_choices() -> None:
    assert extract_choice("The answer is E", choices="ABCD") is None
    assert extract_choice("The answer is E. Earlier I said (B)", choices="ABCD") == "B"
    assert extract_choice("The answer is K", choices="ABCDEFGHIJK") == "K"
    assert extract_choice("The answer is K") is None


@pytest.mark.parametrize("choices", ["", "AB1", "A-B"])
def test_extract_choice_rejects_bad_choices(choices: str) -> None:
    with pytest.raises(InvalidInputError, match="choices"):
        extract_choice("A", choices=choices)


# ---------------------------------------------------------------------------
# extract_text
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Paris", "paris"),
        ("The answer is Paris.", "paris"),
        ("Answer: the Eiffel Tower!", "eiffel tower"),
        ("answer:   New   York ", "new york"),
        ("  An apple, a day  ", "apple day"),
        ("«Hello», world…", "hello world"),
        ("answers vary", "answers vary"),
        ("", None),
        ("   \n\t", None),
        ("The.", None),
    ],
)
def test_extract_text_cases(text: str, expected: str | None) -> None:
    assert extract_text(text) == expected


# ---------------------------------------------------------------------------
# extract_code
# ---------------------------------------------------------------------------

_FENCED = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\nDone."
_REFORMATTED = (
    '```py\ndef add(a,b):\n    """Add two numbers."""\n    # the sum\n    return (a+b)  # done\n```'
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (_FENCED, "def add(a, b):\n    return a + b"),
        (_REFORMATTED, "def add(a, b):\n    return a + b"),
        ("def add(a, b): return a + b", "def add(a, b):\n    return a + b"),
        ("```\nx=1\n```\nand\n```python\ny = 2\n```", "y = 2"),
        ("```python\nx = 1\n```\n```text\noutput: 1\n```", "x = 1"),
        ("```js\nlet x=1\n```", "let x=1"),
        ("```\nnot python (\n```", "not python ("),
        ("truncated:\n```python\nx = 1\n", "x = 1"),
        # a closing fence without its opening (Qwen2.5-Coder-0.5B on HumanEval/3)
        (
            "def below_zero(ops):\n    return any(ops)\n\nprint(below_zero([1]))\n```\n\n"
            "This function iterates through each operation in the list.",
            "def below_zero(ops):\n    return any(ops)\nprint(below_zero([1]))",
        ),
        ("Some words (\n```\nThis is prose.", "This is prose."),  # neither side parses
        (
            "1. Define it:\n   ```python\n   def f():\n       return 1\n   ```",
            "def f():\n    return 1",
        ),
        ('```python\ndef f():\n    """only a docstring"""\n```', "def f():\n    pass"),
        ("Just prose, not code.", "Just prose, not code."),
        ("", None),
        ("```python\n\n```", None),
    ],
)
def test_extract_code_cases(text: str, expected: str | None) -> None:
    assert extract_code(text) == expected


def test_extract_code_formatting_only_differences_compare_equal() -> None:
    assert extract_code(_FENCED) == extract_code(_REFORMATTED)
    assert extract_code(_FENCED) != extract_code(_FENCED.replace("a + b", "a - b"))


def test_last_code_block_keeps_the_raw_code() -> None:
    assert last_code_block(_REFORMATTED) == (
        'def add(a,b):\n    """Add two numbers."""\n    # the sum\n    return (a+b)  # done'
    )


# ---------------------------------------------------------------------------
# Extractors never raise; invariances (hypothesis)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["number", "choice", "text", "code"])
@settings(max_examples=300, deadline=None, database=None)
@given(text=st.text())
def test_extractors_never_raise(name: str, text: str) -> None:
    result = EXTRACTORS[name](text)
    assert result is None or isinstance(result, str)


@settings(max_examples=200, deadline=None, database=None)
@given(text=st.text(alphabet=st.sampled_from("0123456789.,$%-\\{}boxedfrac /eE#answer: ")))
def test_extract_number_never_raises_on_number_like_text(text: str) -> None:
    result = extract_number(text)
    assert result is None or isinstance(result, str)


@settings(database=None)
@given(value=st.integers(min_value=-(10**15), max_value=10**15))
def test_extract_number_integer_invariance(value: int) -> None:
    expected = str(value)
    for text in (
        f"{value}",
        f"{value:,}",
        f"{value}.000",
        f"{value:,}.0",
        f"\\boxed{{{value:,}}}",
        f"The answer is {value:,}.",
        f"#### {value}",
        f"Answer: {value}.00",
    ):
        assert extract_number(text) == expected, text


@settings(database=None)
@given(
    value=st.decimals(
        min_value=Decimal("-1e9"), max_value=Decimal("1e9"), places=4, allow_nan=False
    ),
    zeros=st.integers(min_value=0, max_value=4),
)
def test_extract_number_decimal_invariance(value: Decimal, zeros: int) -> None:
    plain = format(value, "f")
    padded = plain + ("0" * zeros if "." in plain else "." + "0" * zeros)
    grouped = format(value, ",f")
    keys = {
        extract_number(text)
        for text in (plain, padded, grouped, f"\\boxed{{{grouped}}}", f"The answer is {padded}")
    }
    assert len(keys) == 1
    (key,) = keys
    assert key is not None
    numerator, _, denominator = key.partition("/")
    assert Decimal(numerator) / Decimal(denominator or "1") == value


_CHOICE_TEMPLATES = [
    "{}",
    "{}.",
    "({})",
    "Answer: {}",
    "The answer is ({})",
    "The correct option is {}.",
    "\\boxed{{{}}}",
    "Let me think step by step. A good answer is {}.",
    "{})\nBecause it fits.",
]


@settings(database=None)
@given(
    letter=st.sampled_from("ABCDEFGHIJ"),
    template=st.sampled_from(_CHOICE_TEMPLATES),
    lowercase=st.booleans(),
)
def test_extract_choice_recovers_letter(letter: str, template: str, lowercase: bool) -> None:
    shown = (
        letter.lower() if lowercase and template in {"{}", "({})", "The answer is ({})"} else letter
    )
    assert extract_choice(template.format(shown)) == letter


# ---------------------------------------------------------------------------
# majority_vote
# ---------------------------------------------------------------------------


def test_majority_vote_basic() -> None:
    result = majority_vote(["1", "2", "2", None, "1", "2"], [0, 1, 2, 0, 0, 1])
    keys: list[str | None] = ["1", "2", "2", None, "1", "2"]
    assert result == VoteResult(
        winner=1, answer="2", votes={"1": 2, "2": 3}, confidence=0.6, keys=keys
    )


def test_majority_vote_tie_goes_to_better_ranked_expert() -> None:
    # "b" appears first, but "a" was produced by the rank-0 expert.
    result = majority_vote(["b", "a", "b", "a"], [1, 2, 1, 0])
    assert result.answer == "a"
    assert result.winner == 3
    assert result.confidence == pytest.approx(0.5)


def test_majority_vote_tie_with_equal_ranks_goes_to_earliest() -> None:
    result = majority_vote(["b", "a", "a", "b"], [0, 0, 0, 0])
    assert result.answer == "b"
    assert result.winner == 0


def test_majority_vote_representative_is_best_ranked_then_earliest() -> None:
    result = majority_vote(["x", "y", "x", "x"], [2, 0, 1, 1])
    assert result.answer == "x"
    assert result.winner == 2


def test_majority_vote_all_none() -> None:
    result = majority_vote([None, None, None], [2, 1, 1])
    assert result == VoteResult(winner=1, answer="", votes={}, confidence=0.0, keys=[None] * 3)


@pytest.mark.parametrize(("keys", "ranks"), [([], []), (["a"], []), (["a", "b"], [0])])
def test_majority_vote_rejects_bad_input(keys: list[str | None], ranks: list[int]) -> None:
    with pytest.raises(InvalidInputError):
        majority_vote(keys, ranks)


_keys_and_ranks = st.integers(min_value=1, max_value=12).flatmap(
    lambda n: st.tuples(
        st.lists(st.one_of(st.none(), st.sampled_from("abcd")), min_size=n, max_size=n),
        st.lists(st.integers(min_value=0, max_value=4), min_size=n, max_size=n),
    )
)


@settings(database=None)
@given(data=_keys_and_ranks, seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_majority_vote_invariants(data: tuple[list[str | None], list[int]], seed: int) -> None:
    keys, ranks = data
    result = majority_vote(keys, ranks)
    assert 0.0 <= result.confidence <= 1.0
    assert result.keys == keys
    assert 0 <= result.winner < len(keys)
    voters = [key for key in keys if key is not None]
    if not voters:
        assert result.votes == {}
        assert result.answer == ""
        assert ranks[result.winner] == min(ranks)
        return
    assert result.votes == {key: voters.count(key) for key in dict.fromkeys(voters)}
    assert result.votes[result.answer] == max(result.votes.values())
    assert keys[result.winner] == result.answer
    assert result.confidence == pytest.approx(result.votes[result.answer] / len(voters))
    # Shuffling the samples (each keeping its rank) does not change the answer.
    order = list(range(len(keys)))
    random.Random(seed).shuffle(order)
    shuffled = majority_vote([keys[i] for i in order], [ranks[i] for i in order])
    tied = [
        key
        for key, count in result.votes.items()
        if count == result.votes[result.answer]
        and min(r for k, r in zip(keys, ranks, strict=True) if k == key)
        == min(r for k, r in zip(keys, ranks, strict=True) if k == result.answer)
    ]
    if len(tied) == 1:
        assert shuffled.answer == result.answer
    else:  # a full tie is broken by order of appearance, so only the tied set is fixed
        assert shuffled.answer in tied


# ---------------------------------------------------------------------------
# semantic_vote
# ---------------------------------------------------------------------------


def test_semantic_vote_pair_wins_and_medoid_is_returned() -> None:
    vectors = np.array([[0.0, 1.0, 0.0], [1.0, 0.1, 0.0], [2.0, 0.0, 0.0], [1.0, -0.1, 0.0]])
    texts = ["Something else entirely.", "Paris  is\nthe capital.", "It is Paris.", "Paris."]
    result = semantic_vote(vectors, texts, [0, 1, 1, 1])
    # Sample 2 sits between samples 1 and 3, so it is the medoid of the group.
    assert result.winner == 2
    assert result.answer == "It is Paris."
    assert result.votes == {"Something else entirely.": 1, "It is Paris.": 3}
    assert result.confidence == pytest.approx(3 / 4)
    assert result.keys == [
        "Something else entirely.",
        "It is Paris.",
        "It is Paris.",
        "It is Paris.",
    ]


def test_semantic_vote_two_near_identical_and_one_far() -> None:
    vectors = [[1.0, 0.0], [0.0, 1.0], [0.0, 2.0]]  # 1 and 2 differ only in length
    result = semantic_vote(vectors, ["cats", "dogs  are\tgreat", "dogs are great!"], [0, 2, 1])
    # The pair wins; both are medoids with equal similarity, so the better rank wins.
    assert result.winner == 2
    assert result.answer == "dogs are great!"
    assert result.confidence == pytest.approx(2 / 3)


def test_semantic_vote_tie_goes_to_better_rank() -> None:
    vectors = [[1.0, 0.0], [0.0, 1.0]]
    result = semantic_vote(vectors, ["first", "second"], [3, 1])
    assert result.answer == "second"
    assert result.winner == 1
    assert result.confidence == pytest.approx(0.5)


def test_semantic_vote_single_sample_and_long_answer() -> None:
    text = "word " * 100
    result = semantic_vote(np.ones((1, 4)), [text], [0])
    assert result.winner == 0
    assert result.answer == " ".join(text.split())[:200]
    assert len(result.answer) == 200
    assert result.confidence == 1.0


def test_semantic_vote_threshold_controls_grouping() -> None:
    vectors = [[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]  # cos(0, 1) = 0.8
    strict = semantic_vote(vectors, ["a", "b", "c"], [0, 0, 0], threshold=0.9)
    loose = semantic_vote(vectors, ["a", "b", "c"], [0, 0, 0], threshold=0.7)
    assert len(strict.votes) == 3
    assert len(loose.votes) == 2
    assert loose.confidence == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("vectors", "texts", "ranks", "threshold"),
    [
        ([[1.0, 0.0]], [], [], 0.85),
        ([[1.0, 0.0]], ["a"], [0, 1], 0.85),
        ([[1.0, 0.0], [0.0, 1.0]], ["a"], [0], 0.85),
        ([[0.0, 0.0], [0.0, 1.0]], ["a", "b"], [0, 0], 0.85),
        ([[float("nan"), 0.0], [0.0, 1.0]], ["a", "b"], [0, 0], 0.85),
        ([1.0, 0.0], ["a", "b"], [0, 0], 0.85),
        ([[1.0, 0.0], [0.0, 1.0]], ["a", "b"], [0, 0], 1.5),
    ],
)
def test_semantic_vote_rejects_bad_input(
    vectors: list[list[float]], texts: list[str], ranks: list[int], threshold: float
) -> None:
    with pytest.raises(InvalidInputError):
        semantic_vote(vectors, texts, ranks, threshold=threshold)


# ---------------------------------------------------------------------------
# resolve_extractor and vote
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        ([r"so \boxed{5}", r"\boxed{6}", "I give up"], extract_number),
        ([r"\boxed{B}", r"\boxed{\text{(C)}}", "no idea"], extract_choice),
        (
            ["Answer: B", "The answer is (c)", "b", "hmm, hard to say with certainty"],
            extract_choice,
        ),
        (["```python\nx = 1\n```", "```\ny = 2\n```", "no code"], extract_code),
        (["#### 72", "The answer is 72.", "I computed it step by step and got it"], extract_number),
        (["72", "73.5", "Answer: 1,000"], extract_number),
        (["Paris", "The answer is Paris.", "paris, france"], extract_text),
        (
            [
                "The capital of France is Paris, which is also its largest city by far.",
                "Paris is the capital and the most populous city of France, of course.",
            ],
            None,
        ),
        ([], None),
    ],
)
def test_resolve_extractor_auto(texts: list[str], expected: object) -> None:
    assert resolve_extractor(texts) is expected


def test_resolve_extractor_by_name_and_callable() -> None:
    assert resolve_extractor(["x"], "math") is extract_math
    assert resolve_extractor(["x"], "number") is extract_number
    assert resolve_extractor(["x"], "choice") is extract_choice
    assert resolve_extractor(["x"], "text") is extract_text
    assert resolve_extractor(["x"], "code") is extract_code
    assert resolve_extractor(["x"], "semantic") is None

    def custom(text: str) -> str | None:
        return text[:1] or None

    assert resolve_extractor(["x"], custom) is custom


def test_resolve_extractor_unknown_name_lists_valid_names() -> None:
    with pytest.raises(InvalidInputError, match=r"'auto'.*'number'.*'semantic'"):
        resolve_extractor(["x"], "numbr")


def test_vote_numbers() -> None:
    texts = [r"\boxed{1,000}", r"\boxed{1000.0}", r"\boxed{999}", "I don't know"]
    result = vote(texts, [2, 1, 0, 0])
    assert result.answer == "1000"
    assert result.winner == 1
    assert result.votes == {"1000": 2, "999": 1}
    assert result.keys == ["1000", "1000", "999", None]


def test_vote_falls_back_when_extractor_finds_nothing() -> None:
    texts = ["Paris", "paris!", "Lyon"]
    result = vote(texts, [1, 0, 2], answer_format="number")
    assert result.answer == "paris"
    assert result.winner == 1


def test_vote_semantic_with_vectors() -> None:
    texts = [
        "The capital of France is Paris, a city on the Seine with many museums.",
        "Paris is the capital of France and its largest city, on the Seine river.",
        "I believe the capital of France is Marseille, a port on the Mediterranean.",
    ]
    vectors = np.array([[1.0, 0.1], [1.0, 0.12], [0.1, 1.0]])
    result = vote(texts, [2, 1, 0], vectors=vectors)
    assert result.winner == 1
    assert result.answer == texts[1]
    assert result.confidence == pytest.approx(2 / 3)


def test_vote_semantic_without_vectors_uses_normalised_text() -> None:
    result = vote(["The Answer", "answer.", "other"], [1, 0, 0], answer_format="semantic")
    assert result.answer == "answer"
    assert result.winner == 1


def test_vote_rejects_bad_input() -> None:
    with pytest.raises(InvalidInputError):
        vote([], [])
    with pytest.raises(InvalidInputError):
        vote(["a"], [0, 1])
    with pytest.raises(InvalidInputError):
        vote(["a"], [0], answer_format="nope")


def test_majority_answer() -> None:
    texts = ["#### 5", "#### 6", "#### 6", "#### 5", "no number"]
    assert majority_answer(texts, extract_number) == ("5", 0)
    assert majority_answer(["#### 5", "#### 6", "#### 6"], extract_number) == ("6", 1)
    assert majority_answer(["nothing", "here"], extract_number) == (None, 0)
    assert majority_answer([], extract_number) == (None, 0)
