"""The peer baseline: Celery with a local Redis, the same no-op task.

    celery -A celery_peer worker ...          (the worker; BENCH_REDIS_URL names Redis)
    python bench/celery_peer.py client --tasks 4000 --sequential 500

The client submits `--tasks` no-op tasks at once and waits for every result
(throughput), then makes `--sequential` round trips one after another
(latency: submit, then wait for the result), and prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from celery import Celery
from celery.result import ResultSet

REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")

app = Celery("celery_peer", broker=f"{REDIS}/0", backend=f"{REDIS}/1")
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="noop")
def noop() -> dict:
    return {}


def client(tasks: int, sequential: int) -> dict[str, float]:
    noop.delay().get(timeout=60)  # the worker is up and the connections are made

    started = time.perf_counter()
    pending = ResultSet([noop.delay() for _ in range(tasks)])
    submitted = time.perf_counter()
    # the backend's own way to wait for many results (one subscription for all)
    pending.join_native(timeout=300)
    elapsed = time.perf_counter() - started

    samples = []
    for _ in range(sequential):
        begun = time.perf_counter()
        noop.delay().get(timeout=60)
        samples.append((time.perf_counter() - begun) * 1e6)
    samples.sort()
    return {
        "tasks": tasks,
        "seconds": elapsed,
        "submit_s": submitted - started,
        "tasks_per_s": tasks / elapsed,
        "sequential": sequential,
        "round_trip_p50_us": samples[len(samples) // 2],
        "round_trip_p99_us": samples[min(len(samples) - 1, int(len(samples) * 0.99))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    client_parser = sub.add_parser("client")
    client_parser.add_argument("--tasks", type=int, default=4000)
    client_parser.add_argument("--sequential", type=int, default=500)
    args = parser.parse_args()
    print(json.dumps(client(args.tasks, args.sequential)))


if __name__ == "__main__":
    main()
