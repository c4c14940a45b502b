"""The agent's outbox: results on disk before they are sent, until acknowledged."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from workflow_agent.outbox import Outbox
from workflowd.rpc import workflow_pb2 as pb


def result(step_id: str, path: str = "run") -> pb.AgentMessage:
    ref = pb.AttemptRef(run_id="run1", step_id=step_id, attempt=1)
    completed = pb.StepCompleted(outputs_json="{}", path=path)
    return pb.AgentMessage(step=pb.StepEvent(ref=ref, completed=completed))


def key(step_id: str) -> tuple[str, str, int]:
    return ("run1", step_id, 1)


def settle(outbox: Outbox) -> None:
    asyncio.run(outbox.flush())


def reloaded(directory: Path) -> Outbox:
    """The outbox as an agent that restarts now finds it."""
    again = Outbox(directory)
    again.load()
    return again


def test_a_result_is_on_disk_when_its_write_is_done(tmp_path: Path) -> None:
    """Once put's future is done, a restarted agent finds the result, whatever happens next."""
    outbox = Outbox(tmp_path)
    outbox.load()
    outbox.put(key("a"), result("a")).result(timeout=10)
    assert reloaded(tmp_path).messages() == [result("a")]
    assert outbox.written() == [result("a")]


def test_results_put_together_share_a_file_and_leave_with_the_last_ack(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    outbox.load()
    writes = [outbox.put(key(step), result(step)) for step in "abc"]
    for write in writes:
        write.result(timeout=10)
    assert 1 <= len(list(tmp_path.glob("*.result"))) <= 2  # the first may go alone

    again = reloaded(tmp_path)
    assert sorted(again.attempts()) == [key("a"), key("b"), key("c")]
    for step in "abc":
        again.ack(key(step))
    settle(again)
    assert list(tmp_path.glob("*.result")) == []
    assert reloaded(tmp_path).attempts() == []


def test_an_acknowledged_result_is_gone_after_a_restart(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    outbox.load()
    outbox.put(key("a"), result("a")).result(timeout=10)
    outbox.put(key("b"), result("b")).result(timeout=10)
    outbox.ack(key("a"))
    settle(outbox)
    assert key("a") not in outbox
    assert reloaded(tmp_path).attempts() == [key("b")]


def test_a_result_put_again_replaces_the_one_held(tmp_path: Path) -> None:
    """The newer result is the one a restarted agent sends, and only it."""
    outbox = Outbox(tmp_path)
    outbox.load()
    outbox.put(key("a"), result("a", path="run")).result(timeout=10)
    outbox.put(key("a"), result("a", path="check")).result(timeout=10)
    settle(outbox)
    assert reloaded(tmp_path).messages() == [result("a", path="check")]
    assert len(list(tmp_path.glob("*.result"))) == 1


def test_a_result_file_of_an_older_agent_is_read(tmp_path: Path) -> None:
    """A file holding one bare message, as earlier agents wrote them, is still understood."""
    (tmp_path / "run1.a.1.result").write_bytes(result("a").SerializeToString())
    outbox = reloaded(tmp_path)
    assert outbox.attempts() == [key("a")]
    outbox.ack(key("a"))
    settle(outbox)
    assert list(tmp_path.glob("*.result")) == []


def test_a_damaged_file_is_set_aside_and_a_torn_write_dropped(tmp_path: Path) -> None:
    good = Outbox(tmp_path)
    good.load()
    good.put(key("a"), result("a")).result(timeout=10)
    (tmp_path / "broken.result").write_bytes(b"workflow-outbox 2\n\x00\x00\x10\x00short")
    (tmp_path / "torn.tmp").write_bytes(b"half")
    outbox = reloaded(tmp_path)
    assert outbox.attempts() == [key("a")]
    assert (tmp_path / "broken.damaged").exists()
    assert not (tmp_path / "torn.tmp").exists()


def test_a_replaced_result_left_behind_by_a_crash_does_not_come_back(tmp_path: Path) -> None:
    """Killed after writing a newer result for an attempt but before removing the older
    file, the agent sends the newer one, and once it is acknowledged, neither returns."""
    outbox = Outbox(tmp_path)
    outbox.load()
    outbox.put(key("a"), result("a", path="run")).result(timeout=10)
    older = {p.name: p.read_bytes() for p in tmp_path.glob("*.result")}
    outbox.put(key("a"), result("a", path="check")).result(timeout=10)
    settle(outbox)
    for name, data in older.items():  # as if the removal had not happened
        (tmp_path / name).write_bytes(data)

    again = reloaded(tmp_path)
    assert again.messages() == [result("a", path="check")]
    again.ack(key("a"))
    settle(again)
    assert reloaded(tmp_path).attempts() == []


def test_a_write_replaced_before_it_started_still_completes(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    outbox.load()
    blocker = outbox._disk.submit(time.sleep, 0.2)  # keep the disk thread busy
    first = outbox.put(key("a"), result("a", path="run"))
    second = outbox.put(key("a"), result("a", path="check"))
    second.result(timeout=10)
    first.result(timeout=10)
    blocker.result()
    assert reloaded(tmp_path).messages() == [result("a", path="check")]
