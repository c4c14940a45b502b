"""The real workflow agent, with clocks on its stream, for the latency benchmarks.

    python bench/probe_agent.py --timings FILE --coordinator HOST:PORT --name NAME ...

Runs `workflow_agent.agent.Agent` unchanged. Two of its methods are wrapped
only to note the time: when a step start arrives (`_take_start`) and when a final
result is queued on the stream (`_send`). On SIGTERM the agent stops as usual
and the times are written to FILE as JSON: {"starts": {key: ns}, "results":
{key: ns}}, keys "run_id/step_id/attempt", times from time.perf_counter_ns().

It also offers `bench.progress`, a plugin that reports progress with the wall
clock time in the message, so that the tail benchmark can tell how long each
report took to reach `workflowctl tail`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from pathlib import Path

import uvloop
from pydantic import BaseModel, ConfigDict

from workflow_agent.agent import Agent
from workflowd import logs
from workflowd.rpc import workflow_pb2 as pb
from workflowd.tasks import StepContext, Task, load_plugins

# the step context lets one progress report through per this interval
PROGRESS_GAP_S = 0.11


class ProgressParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reports: int = 50
    delay_s: float = 0.0


class Progress(Task):
    name = "bench.progress"
    description = "Reports progress `reports` times, the wall clock in ns as the message."
    Params = ProgressParams

    async def run(self, ctx: StepContext, params: ProgressParams) -> dict:
        await asyncio.sleep(params.delay_s)
        for index in range(params.reports):
            ctx.progress(index / params.reports, str(time.time_ns()))
            await asyncio.sleep(PROGRESS_GAP_S)
        return {}


def _key(ref: pb.AttemptRef) -> str:
    return f"{ref.run_id}/{ref.step_id}/{ref.attempt}"


class ProbeAgent(Agent):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.starts: dict[str, int] = {}
        self.results: dict[str, int] = {}

    def _take_start(self, start: pb.StartStep) -> None:
        self.starts[_key(start.ref)] = time.perf_counter_ns()
        super()._take_start(start)

    def _send(self, message: pb.AgentMessage) -> None:
        if message.WhichOneof("kind") == "step" and message.step.WhichOneof("kind") in (
            "completed",
            "failed",
        ):
            self.results[_key(message.step.ref)] = time.perf_counter_ns()
        super()._send(message)


async def serve(agent: ProbeAgent) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = asyncio.create_task(agent.run())
    await stop.wait()
    await agent.stop()
    await runner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timings", type=Path, required=True)
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--label", action="append", default=[])
    args = parser.parse_args()
    logs.configure("warning")
    plugins = {**load_plugins(), Progress.name: Progress}
    labels = dict(item.split("=", 1) for item in args.label)
    agent = ProbeAgent(args.coordinator, args.name, labels, plugins, args.work_dir, 5.0)
    uvloop.run(serve(agent))
    args.timings.write_text(json.dumps({"starts": agent.starts, "results": agent.results}))


if __name__ == "__main__":
    main()
