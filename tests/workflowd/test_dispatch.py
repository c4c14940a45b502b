"""Agent sessions: acknowledgements ride on the next step start, or go together soon."""

from __future__ import annotations

import asyncio

from workflowd.dispatch import ACK_LINGER_S, ACKS_PER_MESSAGE, AgentSession
from workflowd.rpc import workflow_pb2 as pb


def ref(step_id: str) -> pb.AttemptRef:
    return pb.AttemptRef(run_id="r1", step_id=step_id, attempt=1)


def drained(session: AgentSession) -> list[pb.CoordinatorMessage]:
    return [session.outbox.get_nowait() for _ in range(session.outbox.qsize())]


def test_acknowledgements_ride_on_the_next_step_start() -> None:
    async def scenario() -> list[pb.CoordinatorMessage]:
        session = AgentSession("a", {}, {"noop"}, "test", batched_acks=True)
        session.acknowledge(ref("s1"))
        session.acknowledge(ref("s2"))
        session.send(pb.CoordinatorMessage(start=pb.StartStep(ref=ref("s3"), task="noop")))
        await asyncio.sleep(ACK_LINGER_S * 3)  # and nothing more goes after
        return drained(session)

    (start,) = asyncio.run(scenario())
    assert start.start.ref.step_id == "s3"
    assert [r.step_id for r in start.start.acks] == ["s1", "s2"]


def test_acknowledgements_without_a_start_go_together_soon() -> None:
    async def scenario() -> tuple[int, list[pb.CoordinatorMessage]]:
        session = AgentSession("a", {}, {"noop"}, "test", batched_acks=True)
        for step_id in ("s1", "s2", "s3"):
            session.acknowledge(ref(step_id))
        at_once = session.outbox.qsize()
        await asyncio.sleep(ACK_LINGER_S * 3)
        return at_once, drained(session)

    at_once, (ack,) = asyncio.run(scenario())
    assert at_once == 0
    assert [r.step_id for r in (ack.ack.ref, *ack.ack.more)] == ["s1", "s2", "s3"]


def test_closing_a_session_sends_the_acknowledgements_first() -> None:
    async def scenario() -> list[pb.CoordinatorMessage | None]:
        session = AgentSession("a", {}, {"noop"}, "test", batched_acks=True)
        session.acknowledge(ref("s1"))
        session.close()
        return [session.outbox.get_nowait() for _ in range(session.outbox.qsize())]

    ack, end = asyncio.run(scenario())
    assert ack is not None
    assert ack.ack.ref.step_id == "s1"
    assert end is None


def test_an_agent_that_reads_one_acknowledgement_per_message_gets_them_so_at_once() -> None:
    """An agent whose hello does not offer batched_acks is acknowledged the old way."""

    async def scenario() -> list[pb.CoordinatorMessage]:
        session = AgentSession("old", {}, {"noop"}, "test")
        session.acknowledge(ref("s1"))
        session.acknowledge(ref("s2"))
        session.send(pb.CoordinatorMessage(start=pb.StartStep(ref=ref("s3"), task="noop")))
        return drained(session)

    first, second, start = asyncio.run(scenario())
    assert (first.ack.ref.step_id, list(first.ack.more)) == ("s1", [])
    assert (second.ack.ref.step_id, list(second.ack.more)) == ("s2", [])
    assert list(start.start.acks) == []


def test_many_acknowledgements_are_split_into_bounded_messages() -> None:
    count = ACKS_PER_MESSAGE * 2 + 5

    async def scenario() -> list[pb.CoordinatorMessage]:
        session = AgentSession("a", {}, {"noop"}, "test", batched_acks=True)
        for index in range(count):
            session.acknowledge(ref(f"s{index}"))
        session.send(pb.CoordinatorMessage(start=pb.StartStep(ref=ref("next"), task="noop")))
        return drained(session)

    *acks, start = asyncio.run(scenario())
    assert list(start.start.acks) == []  # too many to ride along: sent before it
    assert [1 + len(m.ack.more) for m in acks] == [ACKS_PER_MESSAGE, ACKS_PER_MESSAGE, 5]
    refs = [r.step_id for m in acks for r in (m.ack.ref, *m.ack.more)]
    assert refs == [f"s{index}" for index in range(count)]


def test_an_agent_whose_stream_ended_is_offered_no_step() -> None:
    """Between its stream's end and its goodbye, a session is not a candidate for steps."""
    from workflowd.dispatch import AgentRegistry

    registry = AgentRegistry()
    gone = AgentSession("gone", {}, {"noop"}, "test")
    registry.add(gone)
    registry.add(AgentSession("here", {}, {"noop"}, "test"))
    gone.closed = True
    assert [view.name for view in registry.views()] == ["here"]
