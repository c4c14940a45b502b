"""Many idle agents in one process: one gRPC stream each, over a few channels.

    python bench/idle_agents.py HOST:PORT --agents 1000 --per-channel 100 --prefix idle-a

Each stream says hello with a distinct name and the plugins a real agent
installed here would advertise (with their schemas), waits
for the Welcome, then sends a heartbeat at the interval the Welcome gives,
starting at a random offset so that the beats spread evenly over time. When
every stream has its Welcome the process prints one JSON line with how long
connecting took, then beats until SIGTERM (or --seconds), and prints how
many heartbeats it sent and how many streams broke.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import time

import grpc
import structlog
import uvloop

from workflowd.rpc import workflow_pb2 as pb
from workflowd.rpc import workflow_pb2_grpc as rpc
from workflowd.tasks import load_plugins

# stdout carries the JSON lines the harness reads; anything logged goes to stderr
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))

PLUGINS = [
    pb.PluginInfo(
        name=name,
        description=cls.description,
        params_schema_json=json.dumps(cls.params_schema()),
        outputs_schema_json=json.dumps(cls.outputs_schema()),
    )
    for name, cls in sorted(load_plugins().items())
]
BEAT = pb.AgentMessage(heartbeat=pb.Heartbeat())


class Fleet:
    def __init__(self, address: str, agents: int, per_channel: int, prefix: str) -> None:
        self.address = address
        self.agents = agents
        self.per_channel = per_channel
        self.prefix = prefix
        self.welcomed = 0
        self.beats = 0
        self.broken = 0
        self.all_welcomed = asyncio.Event()
        self.stop = asyncio.Event()

    async def agent(self, stub: rpc.AgentServiceStub, index: int, gate: asyncio.Semaphore) -> None:
        call = None
        try:
            async with gate:
                call = stub.Connect()
                name = f"{self.prefix}-{index:05d}"
                hello = pb.Hello(
                    name=name, labels={"role": "idle"}, plugins=PLUGINS, version="bench"
                )
                await call.write(pb.AgentMessage(hello=hello))
                first = await call.read()
            if first is grpc.aio.EOF or first.WhichOneof("kind") != "welcome":
                raise RuntimeError("no welcome")
        except (grpc.aio.AioRpcError, RuntimeError):
            self.broken += 1
            self._connected()
            return
        interval_s = first.welcome.heartbeat_interval_s or 5.0
        self.welcomed += 1
        self._connected()
        reader = asyncio.ensure_future(self._drain(call))
        try:
            await asyncio.sleep(random.uniform(0, interval_s))  # noqa: S311 - spreading, not secrets
            while not self.stop.is_set():
                await call.write(BEAT)
                self.beats += 1
                await asyncio.sleep(interval_s)
        except grpc.aio.AioRpcError:
            self.broken += 1
        finally:
            reader.cancel()
            call.cancel()

    def _connected(self) -> None:
        if self.welcomed + self.broken == self.agents:
            self.all_welcomed.set()

    async def _drain(self, call: grpc.aio.StreamStreamCall) -> None:
        while await call.read() is not grpc.aio.EOF:
            pass

    async def run(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop.set)
        channels = [
            grpc.aio.insecure_channel(
                self.address,
                # a connection of its own per channel, as separate agents would have
                options=[("grpc.use_local_subchannel_pool", 1)],
            )
            for _ in range(-(-self.agents // self.per_channel))
        ]
        gate = asyncio.Semaphore(200)
        started = time.monotonic()
        tasks = [
            asyncio.create_task(
                self.agent(rpc.AgentServiceStub(channels[i // self.per_channel]), i, gate)
            )
            for i in range(self.agents)
        ]
        waiter = asyncio.create_task(self.all_welcomed.wait())
        stopper = asyncio.create_task(self.stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        print(
            json.dumps(
                {
                    "welcomed": self.welcomed,
                    "broken": self.broken,
                    "connect_s": time.monotonic() - started,
                }
            ),
            flush=True,
        )
        beats_at_ready = self.beats
        ready = time.monotonic()
        with_deadline = (
            asyncio.wait_for(self.stop.wait(), seconds) if seconds else self.stop.wait()
        )
        try:
            await with_deadline
        except TimeoutError:
            self.stop.set()
        elapsed = time.monotonic() - ready
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in channels:
            await channel.close()
        print(
            json.dumps(
                {
                    "beats": self.beats - beats_at_ready,
                    "beats_per_s": (self.beats - beats_at_ready) / max(elapsed, 1e-9),
                    "broken": self.broken,
                }
            ),
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address")
    parser.add_argument("--agents", type=int, required=True)
    parser.add_argument("--per-channel", type=int, default=100)
    parser.add_argument("--prefix", default="idle")
    parser.add_argument("--seconds", type=float, default=0.0)
    args = parser.parse_args()
    fleet = Fleet(args.address, args.agents, args.per_channel, args.prefix)
    uvloop.run(fleet.run(args.seconds))
    sys.exit(0)


if __name__ == "__main__":
    main()
