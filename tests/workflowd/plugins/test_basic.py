"""`noop` and `sleep`: the plugins without side effects."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from workflowd.execution import Outcome, execute
from workflowd.plugins.basic import Noop, Sleep, SleepParams
from workflowd.tasks import Cancelled, Report, StepContext


def make_ctx(scratch: Path, reports: list[Report]) -> StepContext:
    return StepContext("run-1", "step-1", 1, "host-a", {}, scratch, report=reports.append)


def test_noop_succeeds_with_no_outputs(tmp_path):
    """noop succeeds on the run path with empty outputs."""
    outcome = asyncio.run(execute(Noop(), make_ctx(tmp_path, []), {}))

    assert outcome == Outcome(True, {}, path="run")


def test_noop_refuses_parameters(tmp_path):
    """noop takes no parameters and says so when given one."""
    outcome = asyncio.run(execute(Noop(), make_ctx(tmp_path, []), {"seconds": 1}))

    assert outcome.error == "invalid_params"
    assert outcome.message.startswith("noop: seconds: Extra inputs are not permitted")


def test_sleep_sleeps_and_reports_progress(tmp_path):
    """sleep waits at least the time asked, reports progress from 0 and ends at 1.0."""
    reports: list[Report] = []
    started = time.monotonic()

    outcome = asyncio.run(execute(Sleep(), make_ctx(tmp_path, reports), {"seconds": 0.3}))

    assert time.monotonic() - started >= 0.3
    assert outcome.ok
    assert outcome.outputs["slept_s"] >= 0.3
    assert reports[0] == ("progress", pytest.approx(0.0, abs=0.05), "0.0s of 0.3s")
    assert reports[-1] == ("progress", 1.0, "slept 0.3s")
    fractions = [fraction for _, fraction, _ in reports]
    assert fractions == sorted(fractions)
    assert len(reports) >= 3


def test_sleep_zero_seconds(tmp_path):
    """sleep 0 returns at once with full progress."""
    reports: list[Report] = []

    outcome = asyncio.run(execute(Sleep(), make_ctx(tmp_path, reports), {"seconds": 0}))

    assert outcome.ok
    assert reports == [("progress", 1.0, "slept 0s")]


def test_sleep_honours_cancellation(tmp_path):
    """A cancelled sleep stops at its next check with Cancelled, long before its time."""
    reports: list[Report] = []
    ctx = make_ctx(tmp_path, reports)

    def cancel_on_first_report(report: Report) -> None:
        reports.append(report)
        ctx.cancelled.set()

    ctx.report = cancel_on_first_report
    started = time.monotonic()

    async def main() -> None:
        await asyncio.wait_for(Sleep().run(ctx, SleepParams(seconds=60)), timeout=10)

    with pytest.raises(Cancelled, match="step step-1 was cancelled"):
        asyncio.run(main())
    assert time.monotonic() - started < 10
    assert reports == [("progress", pytest.approx(0.0, abs=0.01), "0.0s of 60s")]


def test_cancelled_sleep_outcome(tmp_path):
    """Through execute, a cancelled sleep fails its step as cancelled."""
    ctx = make_ctx(tmp_path, [])
    ctx.cancelled.set()

    outcome = asyncio.run(execute(Sleep(), ctx, {"seconds": 60}))

    assert (outcome.ok, outcome.error, outcome.message) == (
        False,
        "cancelled",
        "cancelled (by the plugin): step step-1 was cancelled",
    )


@pytest.mark.parametrize("seconds", [-1, "soon", 7 * 24 * 3600 + 1])
def test_sleep_refuses_bad_seconds(tmp_path, seconds):
    """Negative, non-numeric or over-a-week durations are refused as invalid_params."""
    outcome = asyncio.run(execute(Sleep(), make_ctx(tmp_path, []), {"seconds": seconds}))

    assert outcome.error == "invalid_params"
    assert outcome.message.startswith("sleep: seconds: ")
