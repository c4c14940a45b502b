"""Messages waiting on a stream go together: runs of starts or events joined, in order."""

from __future__ import annotations

import asyncio

from workflowd import batching
from workflowd.dispatch import AgentSession
from workflowd.rpc import workflow_pb2 as pb


def start(step_id: str, params_json: str = "{}") -> pb.CoordinatorMessage:
    ref = pb.AttemptRef(run_id="r1", step_id=step_id, attempt=1)
    return pb.CoordinatorMessage(start=pb.StartStep(ref=ref, task="noop", params_json=params_json))


def cancel(step_id: str) -> pb.CoordinatorMessage:
    ref = pb.AttemptRef(run_id="r1", step_id=step_id, attempt=1)
    return pb.CoordinatorMessage(cancel=pb.CancelStep(ref=ref, reason="test"))


def result(step_id: str, outputs_json: str = "{}") -> pb.AgentMessage:
    ref = pb.AttemptRef(run_id="r1", step_id=step_id, attempt=1)
    completed = pb.StepCompleted(outputs_json=outputs_json, path="run")
    return pb.AgentMessage(step=pb.StepEvent(ref=ref, completed=completed))


def heartbeat() -> pb.AgentMessage:
    return pb.AgentMessage(heartbeat=pb.Heartbeat())


def step_ids(messages: list) -> list[object]:
    """Each written message as the step ids it carries (a list when joined)."""
    shown: list[object] = []
    for message in messages:
        kind = message.WhichOneof("kind")
        if kind == "starts":
            shown.append([s.ref.step_id for s in message.starts.starts])
        elif kind == "steps":
            shown.append([e.ref.step_id for e in message.steps.events])
        elif kind in ("start", "cancel"):
            shown.append(getattr(message, kind).ref.step_id)
        elif kind == "step":
            shown.append(message.step.ref.step_id)
        else:
            shown.append(kind)
    return shown


def test_consecutive_starts_go_in_one_message_and_a_cancel_keeps_its_place() -> None:
    """Starts queued together are joined; a cancel between them splits the run, in order."""
    queued = [start("a"), start("b"), cancel("a"), start("c"), start("d"), start("e")]

    written = batching.coordinator_messages(queued, batched_starts=True, budget_bytes=1 << 20)

    assert step_ids(written) == [["a", "b"], "a", ["c", "d", "e"]]
    assert written[0].starts.starts[1] == queued[1].start


def test_an_agent_that_does_not_read_batches_gets_each_message_alone() -> None:
    """Without batched_starts in the hello, every message is written as it was queued."""
    queued = [start("a"), start("b")]

    written = batching.coordinator_messages(queued, batched_starts=False, budget_bytes=1 << 20)

    assert written == queued


def test_a_lone_event_is_sent_as_it_is() -> None:
    """One step event alone is not wrapped: the message is the one queued."""
    written = batching.agent_messages([result("a")], batched_events=True, budget_bytes=1 << 20)

    assert written == [result("a")]


def test_events_are_joined_within_the_byte_budget() -> None:
    """No joined message exceeds the budget; one larger than it goes alone, unchanged."""
    big = '{"x": "' + "y" * 5000 + '"}'
    queued = [result("a"), result("b", big), result("c"), heartbeat(), result("d"), result("e")]

    written = batching.agent_messages(queued, batched_events=True, budget_bytes=2000)

    assert step_ids(written) == ["a", "b", "c", "heartbeat", ["d", "e"]]
    assert written[1] == queued[1]
    assert all(m.ByteSize() <= 2000 for m in written if m.WhichOneof("kind") == "steps")


def test_events_are_joined_at_most_max_per_message_to_one() -> None:
    """A long run of events is split in messages of at most MAX_PER_MESSAGE events."""
    count = batching.MAX_PER_MESSAGE * 2 + 3
    queued = [result(f"s{i}") for i in range(count)]

    written = batching.agent_messages(queued, batched_events=True, budget_bytes=1 << 30)

    sizes = [len(m.steps.events) if m.WhichOneof("kind") == "steps" else 1 for m in written]
    assert sizes == [batching.MAX_PER_MESSAGE, batching.MAX_PER_MESSAGE, 3]
    joined = [e.ref.step_id for m in written[:2] for e in m.steps.events]
    assert joined + [e.ref.step_id for e in written[2].steps.events] == [
        f"s{i}" for i in range(count)
    ]


def test_the_writer_takes_what_waits_and_stops_at_the_end_of_the_stream() -> None:
    """take_outgoing gives every message queued before the end, then None."""

    async def scenario() -> list:
        session = AgentSession("host-a", {}, frozenset({"noop"}), "test", batched_starts=True)
        session.send(start("a"))
        session.send(start("b"))
        session.close()
        session.send(start("late"))  # after the end: never written
        return [await session.take_outgoing(), await session.take_outgoing()]

    first, second = asyncio.run(scenario())

    assert step_ids(first) == ["a", "b"]
    assert second is None
