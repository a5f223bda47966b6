"""Overhead of one sandboxed run: bubblewrap against the fallback, side by side.

Runs the same trivial program ``--runs`` times in each mode, alternating the order
each round so that both see the same machine load, and prints the median, 10th and
90th percentile wall-clock time of a whole :func:`avengers_graph.sandbox.run_python`
call (temporary folder, start-up, the program, the kill and the clean-up). A bare
interpreter start (``python -S -c pass``) is the floor both modes pay.

Usage: ``python tools/bench_sandbox.py --runs 20`` (needs a working bwrap; results
in docs/reliability.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from avengers_graph import sandbox

_PROGRAM = "print(sum(range(10)))"
_FALLBACK = "fallback (Isolation.PROCESS)"
_BUBBLEWRAP = "bubblewrap (Isolation.BUBBLEWRAP)"


def _timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) * 1000


def _sandboxed(config: sandbox._Bubblewrap | None) -> Callable[[], object]:
    def run() -> object:
        result = sandbox._execute(_PROGRAM, 10.0, 512, "", config)
        if result.stdout != "45\n":
            raise SystemExit(f"the program failed: {result}")
        return result

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    config, reason = sandbox._bubblewrap()
    if config is None:
        raise SystemExit(f"bubblewrap unavailable: {reason}")
    load = os.getloadavg()[0]
    interpreter = os.path.realpath(sys.executable)
    modes: dict[str, Callable[[], object]] = {
        "bare interpreter start (python -S -c pass)": lambda: subprocess.run(
            [interpreter, "-S", "-c", "pass"], check=True
        ),
        _FALLBACK: _sandboxed(None),
        _BUBBLEWRAP: _sandboxed(config),
    }
    for run in modes.values():  # warm the page cache
        run()
    times: dict[str, list[float]] = {name: [] for name in modes}
    for index in range(args.runs):
        order = list(modes) if index % 2 == 0 else list(reversed(modes))
        for name in order:
            times[name].append(_timed(modes[name]))
    bwrap_version = subprocess.run(
        [config.executable, "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    print(
        f"{args.runs} runs each, interleaved; {platform.python_version()}, {bwrap_version}, "
        f"Linux {platform.release()}, {os.cpu_count()} cores, "
        f"1-min load average before: {load:.2f}, as uid {os.geteuid()}"
    )
    print()
    print("| mode | median ms | p10 ms | p90 ms |")
    print("|---|---:|---:|---:|")
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, values in times.items():
        deciles = statistics.quantiles(values, n=10)
        print(f"| {name} | {medians[name]:.1f} | {deciles[0]:.1f} | {deciles[-1]:.1f} |")
    bubblewrap, fallback = medians[_BUBBLEWRAP], medians[_FALLBACK]
    overhead = bubblewrap - fallback
    print()
    print(f"bubblewrap costs {overhead:+.1f} ms per run over the fallback (medians).")


if __name__ == "__main__":
    main()
