"""The ceiling for one stream: a plain grpc.aio bidirectional ping-pong on loopback.

    python bench/pingpong.py serve PORT
    python bench/pingpong.py client HOST:PORT --seconds 3

Nothing of workflowd runs here: the server only answers each message on the
stream with one message. Both sides use uvloop and the agent protocol's own
messages (a step result one way, a step start the other), so serialisation
costs what it costs the product. The client does sequential round trips for
a fixed time and prints one JSON line: round trips per second, microseconds
per round trip, and the p50 and p99 of single round trips.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import grpc
import uvloop

from workflowd.rpc import workflow_pb2 as pb
from workflowd.rpc import workflow_pb2_grpc as rpc

REF = pb.AttemptRef(run_id="0190f0a1b2c3d4e5f6a7b8c9", step_id="s17", attempt=1)
PING = pb.AgentMessage(
    step=pb.StepEvent(ref=REF, completed=pb.StepCompleted(outputs_json="{}", path="run"))
)
PONG = pb.CoordinatorMessage(
    start=pb.StartStep(ref=REF, task="noop", params_json="{}", config_json="{}")
)


class Echo(rpc.AgentServiceServicer):
    async def Connect(self, request_iterator: object, context: grpc.aio.ServicerContext) -> None:  # noqa: N802 - the service's method name
        while (message := await context.read()) is not grpc.aio.EOF:
            message.WhichOneof("kind")
            await context.write(PONG)


async def serve(port: int) -> None:
    server = grpc.aio.server()
    rpc.add_AgentServiceServicer_to_server(Echo(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def client(address: str, seconds: float, warmup_s: float) -> dict[str, float]:
    async with grpc.aio.insecure_channel(address) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        call = rpc.AgentServiceStub(channel).Connect()
        samples: list[float] = []
        warm_until = time.perf_counter() + warmup_s
        while time.perf_counter() < warm_until:
            await call.write(PING)
            await call.read()
        started = time.perf_counter()
        deadline = started + seconds
        while (now := time.perf_counter()) < deadline:
            await call.write(PING)
            reply = await call.read()
            reply.WhichOneof("kind")
            samples.append(time.perf_counter() - now)
        elapsed = time.perf_counter() - started
        await call.done_writing()
    samples.sort()
    return {
        "round_trips": len(samples),
        "seconds": round(elapsed, 3),
        "round_trips_per_s": len(samples) / elapsed,
        "us_per_round_trip": elapsed / len(samples) * 1e6,
        "p50_us": samples[len(samples) // 2] * 1e6,
        "p99_us": samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve_parser = sub.add_parser("serve")
    serve_parser.add_argument("port", type=int)
    client_parser = sub.add_parser("client")
    client_parser.add_argument("address")
    client_parser.add_argument("--seconds", type=float, default=3.0)
    client_parser.add_argument("--warmup", type=float, default=0.5)
    args = parser.parse_args()
    if args.command == "serve":
        uvloop.run(serve(args.port))
    else:
        print(json.dumps(uvloop.run(client(args.address, args.seconds, args.warmup))))


if __name__ == "__main__":
    main()
