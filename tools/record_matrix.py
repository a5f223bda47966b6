"""Record the response matrix in chunks, one model at a time, committing as it goes.

A 2-core machine serves one llama.cpp model fastest when that model has both cores and
many parallel slots (samples batch across slots), so the recording runs model by model:
for every chunk of questions (the first ``--chunk``, then the first ``2 * --chunk`` ...
of the benchmark draw, round-robin over the benchmarks), each model's server is started
with ``--slots`` slots and all the cores, every strategy of that model answers the
chunk (``avengers eval record --only``), and the server stops. After each chunk the
matrix folder holds every expert's answers to the same questions and is committed
(``--commit``). A killed run resumes from the answer cache, or from the matrix.

    python tools/record_matrix.py --out avengers_graph/data/benchmarks --commit

Each step is the CLI, so the same commands can be run by hand.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

MODELS = ("smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")
"""The pool's models, cheapest first (entries of the eval pool file)."""
FEW_SAMPLES = ("smollm2-135m",)
"""Experts recorded with ``--few`` samples (their answers are near chance)."""


def avengers(*args: str) -> None:
    """Run one CLI command, echoing it; stop on failure."""
    command = [sys.executable, "-m", "avengers_graph", *args]
    print("+", " ".join(args), flush=True)
    subprocess.run(command, check=True)


def commit(out: Path, message: str) -> None:
    """Commit the matrix folder (nothing else) when it changed."""
    git = shutil.which("git") or "git"
    subprocess.run([git, "add", str(out)], check=True)
    staged = subprocess.run([git, "diff", "--cached", "--quiet", "--", str(out)], check=False)
    if staged.returncode != 0:
        subprocess.run([git, "commit", "-q", "-m", message, "--", str(out)], check=True)


def progress(out: Path) -> str:
    """``N samples, Q questions`` of the matrix folder."""
    from avengers_graph.eval.recording import ResponseMatrix

    matrix = ResponseMatrix.load(out)
    complete = matrix.complete()
    return f"{len(matrix.responses)} samples, {len(complete.questions)} questions complete"


def first_limit(out: Path, chunk: int) -> int:
    """The first chunk a matrix still lacks: the chunk after its complete questions.

    Chunks are prefixes of one draw, so a matrix whose first ``k * chunk`` questions are
    complete needs no replay of them (``eval record --limit`` would rewrite the folder
    with fewer questions, then grow it back).
    """
    from avengers_graph.eval.recording import ResponseMatrix

    if not (out / "responses.jsonl.gz").is_file():
        return chunk
    complete = len(ResponseMatrix.load(out).complete().questions)
    return (complete // chunk + 1) * chunk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("eval-matrix"))
    parser.add_argument("--config", type=Path, default=None, help="Pool file (eval pool).")
    parser.add_argument("--per-dataset", type=int, default=100)
    parser.add_argument(
        "--more", type=int, default=0, help="Questions per benchmark drawn after those."
    )
    parser.add_argument("--chunk", type=int, default=80, help="Questions added per round.")
    parser.add_argument(
        "--start", type=int, default=None, help="First limit (default: the first chunk missing)."
    )
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--few", type=int, default=3)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--commit", action="store_true", help="git commit after each chunk")
    args = parser.parse_args()

    total = 8 * (args.per_dataset + args.more)
    config = ["--config", str(args.config)] if args.config else []
    few = [arg for name in FEW_SAMPLES for arg in ("--expert-samples", f"{name}={args.few}")]
    limit = args.start or first_limit(args.out, args.chunk)
    while True:
        limit = min(limit, total)
        for model in args.models.split(","):
            started = time.monotonic()
            avengers(
                "local", "up", model, "--slots", str(args.slots), "--threads", str(args.threads)
            )
            try:
                avengers(
                    "eval", "record", *config, "--out", str(args.out),
                    "--per-dataset", str(args.per_dataset), "--more", str(args.more),
                    "--limit", str(limit),
                    "--samples", str(args.samples), *few, "--only", model,
                    "--max-concurrency", str(args.slots),
                )  # fmt: skip
            finally:
                avengers("local", "down", model)
            seconds = round(time.monotonic() - started)
            print(json.dumps({"model": model, "limit": limit, "seconds": seconds}), flush=True)
        if args.commit:
            commit(args.out, f"Response matrix: recording progress ({progress(args.out)})")
        if limit >= total:
            break
        limit += args.chunk


if __name__ == "__main__":
    main()
