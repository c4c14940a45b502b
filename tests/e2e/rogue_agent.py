"""A rogue agent, run as its own process by the tests: it connects to workflowd as an
agent and sends forged results for a step it was never given, malformed and random
messages, then bytes that are not a message at all.

    python rogue_agent.py --coordinator HOST:PORT --name NAME --run-id R --step-id S
        [--attempt N] [--random COUNT] [--seed SEED] [--tls-cert C --tls-key K --tls-ca CA]

It prints one JSON line saying what it sent and what it got back, and exits 0
whether or not the coordinator let it in.
"""

from __future__ import annotations

import argparse
import json
import queue
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from workflowd.batching import MAX_PER_MESSAGE
from workflowd.rpc import workflow_pb2 as pb

CONNECT = "/workflow.v1.AgentService/Connect"
_END = object()


def _channel(args: argparse.Namespace) -> grpc.Channel:
    if not args.tls_cert:
        return grpc.insecure_channel(args.coordinator)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(args.tls_ca).read_bytes(),
        private_key=Path(args.tls_key).read_bytes(),
        certificate_chain=Path(args.tls_cert).read_bytes(),
    )
    return grpc.secure_channel(args.coordinator, credentials)


def hello(name: str) -> pb.AgentMessage:
    plugin = pb.PluginInfo(name="noop", params_schema_json=json.dumps({"type": "object"}))
    return pb.AgentMessage(hello=pb.Hello(name=name, plugins=[plugin], version="0.0.0"))


def step(run_id: str, step_id: str, attempt: int, **kind: Any) -> pb.AgentMessage:
    ref = pb.AttemptRef(run_id=run_id, step_id=step_id, attempt=attempt)
    return pb.AgentMessage(step=pb.StepEvent(ref=ref, **kind))


def forgeries(run_id: str, step_id: str, attempt: int) -> list[pb.AgentMessage]:
    """Results and events for another agent's attempt, for neighbours of it, for nothing."""
    forged = {"forged": True, "note": "not from the agent that ran the step"}
    completed = pb.StepCompleted(outputs_json=json.dumps(forged), path="run")
    failed = pb.StepFailed(error="task_error", message="forged failure")
    messages = []
    for target in (
        (run_id, step_id, attempt),
        (run_id, step_id, attempt + 1),
        (run_id, step_id, max(attempt - 1, 0)),
        (run_id, "no-such-step", attempt),
        ("no-such-run", step_id, attempt),
        ("", "", 0),
    ):
        messages += [
            step(*target, started=pb.StepStarted()),
            step(*target, progress=pb.StepProgress(fraction=0.5, message="forged progress")),
            step(*target, log=pb.StepLog(level="error", message="forged log")),
            step(*target, completed=completed),
            step(*target, failed=failed),
        ]
    # a result before it started, a second hello, a step event without a kind
    messages += [step(run_id, step_id, attempt, completed=completed), hello("again")]
    messages.append(pb.AgentMessage(step=pb.StepEvent(ref=pb.AttemptRef(run_id=run_id))))
    # the same forgeries again, all in one batch, and a batch of more events than allowed
    events = [m.step for m in messages if m.WhichOneof("kind") == "step"]
    messages.append(pb.AgentMessage(steps=pb.StepEvents(events=events)))
    flood = [step(run_id, step_id, attempt, completed=completed).step] * (MAX_PER_MESSAGE + 1)
    messages.append(pb.AgentMessage(steps=pb.StepEvents(events=flood)))
    return messages


def _text(rng: random.Random) -> str:
    pools = [
        "abc-_0123456789",
        "ümlaut✓☃検証",
        "\x00\x07\x1b\u202e\ufeff",
        "${{ }}[]{}:'\"\\",
    ]
    size = rng.choice([0, 1, 5, 40, 2000])
    return "".join(rng.choice(rng.choice(pools)) for _ in range(size))


def _outputs_json(rng: random.Random) -> str:
    return rng.choice(
        [
            "{}",
            '{"ok": 1}',
            "[1, 2]",
            "not json",
            '{"nan": NaN}',
            '{"lone": "\\ud800"}',
            "[" * 5000 + "]" * 5000,
            '{"deep": ' + "[" * 100 + "]" * 100 + "}",
            json.dumps({"big": "x" * rng.choice([10, 100_000])}),
            _text(rng),
        ]
    )


def random_messages(
    rng: random.Random, count: int, run_id: str, step_id: str, attempt: int
) -> list[pb.AgentMessage]:
    messages = []
    for _ in range(count):
        target = (
            rng.choice([run_id, "", _text(rng)]),
            rng.choice([step_id, "", _text(rng)]),
            rng.choice([attempt, 0, attempt + 1, 2**32 - 1]),
        )
        kind = rng.choice(["started", "progress", "log", "completed", "failed", "heartbeat"])
        if kind == "heartbeat":
            messages.append(pb.AgentMessage(heartbeat=pb.Heartbeat()))
        elif kind == "started":
            messages.append(step(*target, started=pb.StepStarted()))
        elif kind == "progress":
            fraction = rng.choice([0.5, -3.0, 1e308, float("nan"), float("inf")])
            progress = pb.StepProgress(fraction=fraction, message=_text(rng))
            messages.append(step(*target, progress=progress))
        elif kind == "log":
            messages.append(step(*target, log=pb.StepLog(level=_text(rng), message=_text(rng))))
        elif kind == "completed":
            completed = pb.StepCompleted(outputs_json=_outputs_json(rng), path=_text(rng))
            messages.append(step(*target, completed=completed))
        else:
            failed = pb.StepFailed(error=_text(rng), message=_text(rng))
            messages.append(step(*target, failed=failed))
    return messages


def _send(channel: grpc.Channel, first: bytes, rest: list[bytes]) -> dict[str, Any]:
    """One stream: `first` (a hello), then `rest` once the welcome is in; raw bytes both."""
    outbox: queue.Queue[object] = queue.Queue()
    outbox.put(first)

    def requests() -> Iterator[bytes]:
        while (item := outbox.get()) is not _END:
            yield item  # type: ignore[misc]

    call = channel.stream_stream(
        CONNECT, request_serializer=None, response_deserializer=pb.CoordinatorMessage.FromString
    )(requests())
    report: dict[str, Any] = {"sent": 1, "acks": 0}
    try:
        welcome = next(call)
        report["welcome"] = welcome.WhichOneof("kind")
        for item in rest:
            outbox.put(item)
        report["sent"] += len(rest)
        outbox.put(_END)
        for reply in call:
            report["acks"] += reply.WhichOneof("kind") == "ack"
    except grpc.RpcError as exc:
        outbox.put(_END)
        report["refused"] = exc.code().name
        report["details"] = exc.details()
    return report


def garbage(rng: random.Random) -> list[bytes]:
    """Bytes that are no AgentMessage: invalid UTF-8 in a string field, then noise."""
    run_id = b"\x0a\x03\xff\xfe\xfd"  # AttemptRef.run_id, not UTF-8
    event = b"\x0a" + bytes([len(run_id)]) + run_id  # StepEvent.ref
    message = b"\x12" + bytes([len(event)]) + event  # AgentMessage.step
    return [message, bytes(rng.randrange(256) for _ in range(64))]


def receive_flood(run_id: str, step_id: str, attempt: int, count: int) -> list[pb.AgentMessage]:
    """`count` requests for messages on another agent's attempt and on no run at all,
    in batches as large as allowed."""
    asks = [
        step(*target, receive=pb.ReceiveRequest(topic="forged", after_index=0)).step
        for target in ((run_id, step_id, attempt), ("no-such-run", step_id, attempt))
    ]
    events = [asks[index % 2] for index in range(count)]
    return [
        pb.AgentMessage(steps=pb.StepEvents(events=events[at : at + MAX_PER_MESSAGE]))
        for at in range(0, count, MAX_PER_MESSAGE)
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--name", default="rogue")
    parser.add_argument("--run-id", default="")
    parser.add_argument("--step-id", default="")
    parser.add_argument("--attempt", type=int, default=1)
    parser.add_argument("--random", type=int, default=0, dest="count")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--garbage", action="store_true")
    parser.add_argument("--receive-flood", type=int, default=0)
    parser.add_argument(
        "--result", metavar="OUTPUTS_JSON", help="send only this result for the attempt"
    )
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--tls-ca")
    args = parser.parse_args()

    rng = random.Random(args.seed)  # noqa: S311 - reproducible fuzzing, not secrets
    target = (args.run_id, args.step_id, args.attempt)
    messages = forgeries(*target) + random_messages(rng, args.count, *target)
    messages += receive_flood(*target, args.receive_flood)
    if args.result is not None:
        completed = pb.StepCompleted(outputs_json=args.result, path="run")
        messages = [step(*target, completed=completed)]
    first = hello(args.name).SerializeToString()
    with _channel(args) as channel:
        report = _send(channel, first, [m.SerializeToString() for m in messages])
        report["forged"] = len(forgeries(*target))
        report["random"] = args.count
        if args.garbage:
            report["garbage"] = _send(channel, first, garbage(rng))
    print(json.dumps(report))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
