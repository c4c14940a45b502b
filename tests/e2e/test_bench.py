"""The benchmark harness runs end to end at a trivial size (speed is never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

BENCH = Path(__file__).resolve().parents[2] / "bench" / "run.py"


def test_bench_harness_runs_and_writes_its_figures(tmp_path: Path) -> None:
    """`bench/run.py --smoke` measures the ping-pong, a throughput and a latency run, and
    writes them as JSON."""
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--smoke",
            "--only",
            "baseline,throughput_sqlite,latency",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "latest.json").read_text())
    assert results["baseline"]["round_trips"] > 0
    assert results["throughput_sqlite"]["failed_runs"] == 0
    assert results["latency"]["status"] == "succeeded"
    assert "| ping-pong, one stream: round trips/s |" in done.stdout
