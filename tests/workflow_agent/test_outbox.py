"""The agent's outbox: results held until acknowledged, on disk when that takes a while."""

from __future__ import annotations

import asyncio
from pathlib import Path

from workflow_agent.outbox import Outbox
from workflowd.rpc import workflow_pb2 as pb


def result(step_id: str) -> pb.AgentMessage:
    ref = pb.AttemptRef(run_id="run1", step_id=step_id, attempt=1)
    completed = pb.StepCompleted(outputs_json="{}", path="run")
    return pb.AgentMessage(step=pb.StepEvent(ref=ref, completed=completed))


def key(step_id: str) -> tuple[str, str, int]:
    return ("run1", step_id, 1)


def settle(outbox: Outbox) -> None:
    asyncio.run(outbox.flush())


def test_result_acknowledged_at_once_never_touches_the_disk(tmp_path: Path) -> None:
    """A result acknowledged before its write is due is never written."""
    outbox = Outbox(tmp_path)
    outbox.load()
    outbox.put(key("a"), result("a"))
    outbox.ack(key("a"))
    settle(outbox)
    assert list(tmp_path.iterdir()) == []
    assert key("a") not in outbox


def test_unacknowledged_results_survive_a_restart_and_leave_once_acknowledged(
    tmp_path: Path,
) -> None:
    """Results written together come back after a restart; their file goes with the last ack."""
    outbox = Outbox(tmp_path)
    outbox.load()
    outbox.put(key("a"), result("a"))
    outbox.put(key("b"), result("b"))
    settle(outbox)
    assert len(list(tmp_path.glob("*.result"))) == 1

    again = Outbox(tmp_path)
    again.load()
    assert sorted(again.attempts()) == [key("a"), key("b")]
    again.ack(key("a"))
    settle(again)
    assert len(list(tmp_path.glob("*.result"))) == 1
    again.ack(key("b"))
    settle(again)
    assert list(tmp_path.glob("*.result")) == []


def test_a_result_file_of_an_older_agent_is_read(tmp_path: Path) -> None:
    """A file holding one bare message, as earlier agents wrote them, is still understood."""
    (tmp_path / "run1.a.1.result").write_bytes(result("a").SerializeToString())
    outbox = Outbox(tmp_path)
    outbox.load()
    assert outbox.attempts() == [key("a")]
    outbox.ack(key("a"))
    settle(outbox)
    assert list(tmp_path.glob("*.result")) == []
