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
    fail_on: list[str] = []  # run() fails on these hosts


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
        if ctx.host in params.fail_on:
            raise TaskError(f"told to fail on {ctx.host}")
        _append(params.ledger, f"done {who}")
        return {"done_by_attempt": ctx.attempt}

    def rollback(self, ctx: StepContext, params: CountParams) -> None:
        _append(params.ledger, f"rollback {ctx.run_id} {ctx.step_id} {ctx.attempt}")


class SendParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    topic: str
    payload: object = None
    output: str | None = None  # also set this output to the payload, while running


class Send(Task):
    name = "test.send"
    description = "Sends one message to a topic of the run (and sets an output, if named)."
    Params = SendParams

    def run(self, ctx: StepContext, params: SendParams) -> dict:
        if params.output:
            ctx.set_output(params.output, params.payload)
        else:
            ctx.send(params.topic, params.payload)
        return {"sent": True}


class ReceiveParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    topic: str
    count: int = 1
    timeout_s: float = 30.0


class Receive(Task):
    name = "test.receive"
    description = "Receives messages from a topic of the run and returns them."
    Params = ReceiveParams

    async def run(self, ctx: StepContext, params: ReceiveParams) -> dict:
        ctx.progress(0.0, f"waiting on {params.topic}")
        got = [await ctx.areceive(params.topic, params.timeout_s) for _ in range(params.count)]
        return {"messages": got}


class AwaitConfigParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str
    value: object
    timeout_s: float = 30.0


class AwaitConfig(Task):
    name = "test.await_config"
    description = "Runs until the run's configuration sets key to value; reports what it saw."
    Params = AwaitConfigParams

    def run(self, ctx: StepContext, params: AwaitConfigParams) -> dict:
        seen = [ctx.config.get(params.key)]
        ctx.progress(0.0, f"{params.key}={seen[-1]!r}")
        deadline = time.monotonic() + params.timeout_s
        while ctx.config.get(params.key) != params.value:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TaskError(f"config {params.key} never became {params.value!r}: saw {seen}")
            changed = ctx.wait_config_change(left)
            if changed is not None:
                seen.append(changed.get(params.key))
        return {"seen": seen}


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
