"""Wall time of ``avengers --help``: this tree against an earlier commit, side by side.

Usage::

    python tools/bench_cli_startup.py --before 9ace475 --runs 20

The earlier commit is exported (``git archive``) to a temporary folder; each run starts
a fresh interpreter with that folder, then this tree, first on ``PYTHONPATH`` and runs
``avengers --help`` (the console script's code: ``avengers_graph.app.cli:app``), the
two alternating so that a change in the machine's load hits both alike. Prints the
1-minute load average before and after, and the median, minimum and maximum of each.
Measure on a quiet machine (load below about 0.5).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = "import sys; from avengers_graph.app.cli import app; sys.argv[0] = 'avengers'; app()"


def export(revision: str, folder: Path) -> Path:
    """The tree of ``revision``, written to ``folder``."""
    archive = folder / "tree.tar"
    with archive.open("wb") as out:
        subprocess.run(
            ["git", "archive", revision],  # noqa: S607
            cwd=ROOT,
            stdout=out,
            check=True,
            timeout=120,
        )
    tree = folder / revision
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    return tree


def once(tree: Path) -> float:
    """Seconds for one ``avengers --help`` with ``tree`` first on the path."""
    env = {**os.environ, "PYTHONPATH": str(tree), "COLUMNS": "80"}
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", CODE, "--help"],
        env=env,
        stdout=subprocess.DEVNULL,
        check=True,
        timeout=120,
    )
    return time.perf_counter() - start


def main() -> None:
    """Run the comparison and print it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--before", required=True, help="git revision to compare with")
    parser.add_argument("--runs", type=int, default=20, help="runs of each")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        trees = {args.before: export(args.before, Path(folder)), "this tree": ROOT}
        for tree in trees.values():
            once(tree)  # warm the file system cache and the bytecode
        load = os.getloadavg()[0]
        times: dict[str, list[float]] = {name: [] for name in trees}
        for _ in range(args.runs):
            for name, tree in trees.items():
                times[name].append(once(tree))
        after = os.getloadavg()[0]
    print(f"1-minute load average: {load:.2f} before, {after:.2f} after; {args.runs} runs each")
    print("| tree | median s | min s | max s |")
    print("| --- | --- | --- | --- |")
    for name, seconds in times.items():
        print(
            f"| {name} | {statistics.median(seconds):.3f} | {min(seconds):.3f} "
            f"| {max(seconds):.3f} |"
        )


if __name__ == "__main__":
    main()
