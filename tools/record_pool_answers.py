"""Record a pool's answers to the bundled validation set, for calibration to replay.

    python tools/record_pool_answers.py --config avengers_graph/data/tools_pool.yaml \
        --out avengers_graph/data/tools_pool_answers.jsonl

Starts the pool's local servers (in ``AVENGERS_CACHE_DIR``; the ones it started are
stopped at the end), seeds a fresh answer cache with the answers already shipped
(``local_answers.jsonl`` and ``--known`` files), calibrates the pool on the bundled
validation set exactly as ``avengers calibrate`` would (the pool file's
``calibration`` options), so only the calls nobody recorded are made, and writes the
new answers (of the experts the known files do not cover) to ``--out``. The run is
resumable: the cache lives in ``--work`` and a killed run repeats no call.

After a prompt-contract change, ``--reuse`` the file being re-recorded: its answers to
calls the change left alone are replayed, only the changed calls are made, and
``--out`` holds exactly the calls the calibration planned (no stale answer):

    python tools/record_pool_answers.py --config avengers_graph/data/tools_pool.yaml \
        --reuse avengers_graph/data/tools_pool_answers.jsonl \
        --out avengers_graph/data/tools_pool_answers.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from avengers_graph.app.embedded import (
    RECORDED_ANSWERS,
    bundled,
    fetch_models,
    load,
    local_urls,
    read_jsonl,
)
from avengers_graph.calibration import calibrate
from avengers_graph.experts.cache import AnswerCache, CachedAnswer
from avengers_graph.local.pool import LocalPool
from avengers_graph.stores.chroma import ClusterStore


class _UsedAnswers(AnswerCache):
    """An answer cache that remembers the keys calibration read or wrote."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.used: set[str] = set()

    def get(self, key: str) -> CachedAnswer | None:
        answer = super().get(key)
        if answer is not None:
            self.used.add(key)
        return answer

    def put(self, key: str, expert: str, params: Mapping[str, Any], answer: CachedAnswer) -> None:
        super().put(key, expert, params, answer)
        self.used.add(key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="pool file")
    parser.add_argument("--out", required=True, type=Path, help="JSONL of the new answers")
    parser.add_argument("--known", type=Path, action="append", default=[], help="more answers")
    parser.add_argument(
        "--reuse", type=Path, default=None, help="earlier answers of the experts re-recorded"
    )
    parser.add_argument("--work", type=Path, default=Path(".avengers/record-answers"))
    parser.add_argument("--threads", type=int, default=None, help="threads per server")
    args = parser.parse_args()

    settings, pool = load(args.config)
    local = pool.local_models()
    fetch_models(local, settings.cache_dir)
    servers = LocalPool(settings.cache_dir)
    started = [name for name in local if name not in servers.servers()]
    args.work.mkdir(parents=True, exist_ok=True)
    cache = _UsedAnswers(args.work / "answers.sqlite")
    known: set[str] = set()
    for path in [bundled(RECORDED_ANSWERS), *args.known]:
        added = cache.import_jsonl(path)
        recorded = {json.loads(line)["expert"] for line in path.read_text().splitlines() if line}
        known |= recorded
        print(f"{path.name}: {added} recorded answers of {sorted(recorded)} imported")
    if args.reuse is not None:
        print(f"{args.reuse.name}: {cache.import_jsonl(args.reuse)} earlier answers to reuse")
    cache.used.clear()  # imports are not uses
    try:
        servers.up(local, threads=args.threads)
        options = pool.calibration.as_kwargs()
        rows = read_jsonl(bundled("validation.jsonl"))
        store = ClusterStore(path=args.work / "store", name="record")
        started_at = time.perf_counter()
        experts = pool.build_experts(local_urls(settings, pool))
        report = calibrate(
            experts,
            pool.embeddings.build(),
            rows,
            store,
            replace=True,
            cache=cache,
            progress=lambda done, total: print(f"  {done}/{total} calls", flush=True),
            **options,
        )
        seconds = time.perf_counter() - started_at
        print(
            f"calibration: {report.calls} expert calls made, {report.cached} answers from the "
            f"cache, {seconds:.0f} s"
        )
        for name, accuracy in report.experts.items():
            print(f"  {name}: accuracy {accuracy:.1%}")
    finally:
        if started:
            servers.down(started)
    new = [name for name in experts if name not in known]  # named before the servers stop
    count = cache.export_jsonl(args.out, experts=new, keys=cache.used)
    print(f"{args.out}: {count} answers of {new}")


if __name__ == "__main__":
    main()
