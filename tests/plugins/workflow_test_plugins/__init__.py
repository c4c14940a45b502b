"""`test.count`: a plugin whose every execution leaves a line in a ledger file.

The tests read the ledger to count how often each step really ran, was
rolled back, or was recognised as already done.

    run <run> <step> <attempt>        run() started
    done <run> <step> <attempt>       run() finished its work
    rollback <run> <step> <attempt>   rollback() ran

`test.log`: logs from its worker thread with a plain structlog logger (no
context bound by the plugin) and through the step's logger, each line with a
field named like a secret, so that tests can read what reaches the logs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import structlog
from pydantic import BaseModel, ConfigDict

from workflowd.errors import TaskError
from workflowd.tasks import Cancelled, StepContext, Task


class CountParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ledger: str
    hold_s: float = 0.0  # how long run() works, checking for cancellation
    fail_while: str | None = None  # run() fails while this file exists


def _append(ledger: str, line: str) -> None:
    with open(ledger, "a") as stream:
        stream.write(line + "\n")
        stream.flush()
        os.fsync(stream.fileno())


class Count(Task):
    name = "test.count"
    description = "Appends to a ledger once per execution; its check recognises finished work."
    Params = CountParams

    def check(self, ctx: StepContext, params: CountParams) -> dict | None:
        ledger = Path(params.ledger)
        if not ledger.exists():
            return None
        prefix = f"done {ctx.run_id} {ctx.step_id} "
        for line in ledger.read_text().splitlines():
            if line.startswith(prefix):
                return {"done_by_attempt": int(line.split()[-1])}
        return None

    def run(self, ctx: StepContext, params: CountParams) -> dict:
        who = f"{ctx.run_id} {ctx.step_id} {ctx.attempt}"
        _append(params.ledger, f"run {who}")
        deadline = time.monotonic() + params.hold_s
        while (left := deadline - time.monotonic()) > 0:
            if ctx.cancelled.is_set():
                raise Cancelled(f"{ctx.step_id} noticed its cancellation")
            ctx.progress(1 - left / params.hold_s, "working")
            time.sleep(min(left, 0.05))
        if params.fail_while and Path(params.fail_while).exists():
            raise TaskError(f"{params.fail_while} exists")
        _append(params.ledger, f"done {who}")
        return {"done_by_attempt": ctx.attempt}

    def rollback(self, ctx: StepContext, params: CountParams) -> None:
        _append(params.ledger, f"rollback {ctx.run_id} {ctx.step_id} {ctx.attempt}")


class LogParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    secret: str


class Log(Task):
    name = "test.log"
    description = "Logs a line with a plain structlog logger and one through ctx.log."
    Params = LogParams

    def run(self, ctx: StepContext, params: LogParams) -> dict:
        structlog.get_logger().info("test_log_plain", api_token=params.secret)
        ctx.log.info("test_log_step", password=params.secret)
        return {}
