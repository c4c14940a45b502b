"""How fast `list` pages with many runs stored, on either store.

    .venv/bin/python bench/store_list.py sqlite:///tmp/bench.db --runs 100000
    .venv/bin/python bench/store_list.py mongodb://127.0.0.1:27017/bench --runs 100000

Fills the store with finished runs (each with a short history) through the
store's own `create_run` and `append`, then times `list_runs` for the newest
page and for pages deep in the history, and a history read. Results are
printed and written to bench/results/store_list-<kind>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

from workflowd import engine
from workflowd.engine import Event
from workflowd.store import open_store
from workflowd.store.base import RunRecord

RESULTS = Path(__file__).parent / "results"


def run_id(index: int) -> str:
    return f"{index:012x}{'0' * 8}"


async def fill(store, runs: int, concurrency: int) -> float:
    started = time.perf_counter()

    async def one(index: int) -> None:
        record = RunRecord(run_id(index), "bench", "name: bench\n", "bench.yaml", {}, {})
        await store.create_run(record, [Event(engine.RUN_SUBMITTED, data={"name": "bench"})])
        await store.append(run_id(index), [Event(engine.RUN_SUCCEEDED)], "succeeded")

    for start in range(0, runs, concurrency):
        await asyncio.gather(*(one(i) for i in range(start, min(runs, start + concurrency))))
    return time.perf_counter() - started


async def timed(call, repeat: int) -> dict[str, float]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    return {"median_ms": statistics.median(samples), "max_ms": max(samples)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("uri")
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    store = open_store(args.uri, wait_s=30)
    await store.open()
    have = await store.list_runs(1)
    fill_s = 0.0
    if not have or have[0].run_id != run_id(args.runs - 1):
        fill_s = await fill(store, args.runs, args.concurrency)
    results = {
        "uri_kind": args.uri.split(":", 1)[0],
        "runs": args.runs,
        "fill_s": round(fill_s, 1),
        "list_newest_50": await timed(lambda: store.list_runs(50), args.repeat),
        "list_middle_50": await timed(
            lambda: store.list_runs(50, run_id(args.runs // 2)), args.repeat
        ),
        "list_oldest_50": await timed(lambda: store.list_runs(50, run_id(60)), args.repeat),
        "history_of_one_run": await timed(
            lambda: store.events(run_id(args.runs // 3)), args.repeat
        ),
    }
    await store.close()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"store_list-{results['uri_kind']}.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
