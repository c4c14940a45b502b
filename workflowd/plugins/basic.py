"""`noop` and `sleep`: plugins with no side effects, for tests, demos and benchmarks."""

from __future__ import annotations

import asyncio
import time

from pydantic import BaseModel, ConfigDict, Field

from workflowd.tasks import StepContext, Task


class Noop(Task):
    name = "noop"
    description = "Does nothing and succeeds."

    async def run(self, ctx: StepContext, params: BaseModel) -> dict:
        return {}


class SleepParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(ge=0, le=7 * 24 * 3600, description="How long to sleep.")


class SleepOutputs(BaseModel):
    slept_s: float


class Sleep(Task):
    name = "sleep"
    description = "Sleeps for a number of seconds, reporting progress."
    Params = SleepParams
    Outputs = SleepOutputs

    async def run(self, ctx: StepContext, params: SleepParams) -> SleepOutputs:
        started = time.monotonic()
        deadline = started + params.seconds
        while (left := deadline - time.monotonic()) > 0:
            ctx.raise_if_cancelled()
            elapsed = params.seconds - left
            ctx.progress(elapsed / params.seconds, f"{elapsed:.1f}s of {params.seconds:g}s")
            await asyncio.sleep(min(left, 0.25))
        ctx.progress(1.0, f"slept {params.seconds:g}s")
        return SleepOutputs(slept_s=time.monotonic() - started)
