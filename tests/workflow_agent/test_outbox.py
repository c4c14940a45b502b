"""The agent's outbox: results on disk before they are sent, until acknowledged."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from workflow_agent.outbox import COMPACT_MIN_BYTES, JOURNAL, Outbox, read_held
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


def test_results_put_together_are_all_held_until_each_is_acknowledged(tmp_path: Path) -> None:
    """Results written together come back after a restart, and leave with their acks."""
    outbox = Outbox(tmp_path)
    outbox.load()
    writes = [outbox.put(key(step), result(step)) for step in "abc"]
    for write in writes:
        write.result(timeout=10)

    again = reloaded(tmp_path)
    assert again.attempts() == [key("a"), key("b"), key("c")]
    for step in "abc":
        again.ack(key(step))
    settle(again)
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


def test_an_acknowledgement_lost_in_a_crash_only_means_the_result_is_sent_again(
    tmp_path: Path,
) -> None:
    """Acknowledgements reach the disk with the next write; a crash before that keeps
    the result, which is sent again (and recognised by the coordinator)."""
    outbox = Outbox(tmp_path)
    outbox.load()
    outbox.put(key("a"), result("a")).result(timeout=10)
    outbox.ack(key("a"))
    assert read_held(tmp_path) == {key("a"): result("a")}  # not written yet: a crash keeps it

    outbox.put(key("b"), result("b")).result(timeout=10)
    assert list(read_held(tmp_path)) == [key("b")]


def test_a_result_put_again_replaces_the_one_held(tmp_path: Path) -> None:
    """The newer result is the one a restarted agent sends, and only it."""
    outbox = Outbox(tmp_path)
    outbox.load()
    outbox.put(key("a"), result("a", path="run")).result(timeout=10)
    outbox.put(key("a"), result("a", path="check")).result(timeout=10)
    settle(outbox)
    assert reloaded(tmp_path).messages() == [result("a", path="check")]


def test_result_files_of_an_older_agent_are_read_and_folded_into_the_journal(
    tmp_path: Path,
) -> None:
    """Files holding one bare message or several, as earlier agents wrote them, are read;
    the newer of two results for one attempt wins, and the files give way to the journal."""
    (tmp_path / "run1.a.1.result").write_bytes(result("a").SerializeToString())
    several = b"workflow-outbox 2\n"
    for message in (result("b", path="run"), result("c")):
        body = message.SerializeToString()
        several += len(body).to_bytes(4, "big") + body
    (tmp_path / "00000000000000000001-1-0.result").write_bytes(several)
    newer = result("b", path="check").SerializeToString()
    (tmp_path / "00000000000000000002-1-0.result").write_bytes(newer)

    outbox = reloaded(tmp_path)

    assert outbox.attempts() == [key("a"), key("c"), key("b")]
    assert outbox.get(key("b")) == result("b", path="check")
    assert list(tmp_path.glob("*.result")) == []
    assert reloaded(tmp_path).messages() == outbox.messages()


def test_a_damaged_result_file_of_an_older_agent_is_set_aside(tmp_path: Path) -> None:
    good = Outbox(tmp_path)
    good.load()
    good.put(key("a"), result("a")).result(timeout=10)
    (tmp_path / "broken.result").write_bytes(b"workflow-outbox 2\n\x00\x00\x10\x00short")
    (tmp_path / "torn.tmp").write_bytes(b"half")
    outbox = reloaded(tmp_path)
    assert outbox.attempts() == [key("a")]
    assert (tmp_path / "broken.damaged").exists()
    assert not (tmp_path / "torn.tmp").exists()


def cut_in_header(data: bytearray, at: int) -> bytearray:
    return data[: at + 6]


def cut_in_payload(data: bytearray, at: int) -> bytearray:
    return data[: at + 20]


def zeros_after(data: bytearray, at: int) -> bytearray:
    return data[:at] + bytes(4096)  # the crash left the file longer than its data


@pytest.mark.parametrize("tear", [cut_in_header, cut_in_payload, zeros_after])
def test_a_record_torn_by_a_crash_is_cut_off_and_writing_goes_on(
    tmp_path: Path, tear: Callable[[bytearray, int], bytearray]
) -> None:
    """The end of a write that a crash interrupted (never reported done) is dropped,
    not taken for damage, and what is written after it is read back."""
    outbox = Outbox(tmp_path)
    outbox.load()
    outbox.put(key("a"), result("a")).result(timeout=10)
    size = (tmp_path / JOURNAL).stat().st_size
    outbox.put(key("b"), result("b")).result(timeout=10)
    data = bytearray((tmp_path / JOURNAL).read_bytes())
    (tmp_path / JOURNAL).write_bytes(bytes(tear(data, size)))

    again = reloaded(tmp_path)
    again.put(key("c"), result("c")).result(timeout=10)

    assert reloaded(tmp_path).attempts() == [key("a"), key("c")]
    assert not (tmp_path / "held.damaged").exists()


def three_results_with_damage(directory: Path, damage: Callable[[bytearray, int], None]) -> None:
    """Results a, b and c in a journal, then `damage` done to it at b's first byte."""
    outbox = Outbox(directory)
    outbox.load()
    outbox.put(key("a"), result("a")).result(timeout=10)
    size = (directory / JOURNAL).stat().st_size
    outbox.put(key("b"), result("b")).result(timeout=10)
    outbox.put(key("c"), result("c")).result(timeout=10)
    data = bytearray((directory / JOURNAL).read_bytes())
    damage(data, size)
    (directory / JOURNAL).write_bytes(bytes(data))


def flip_payload(data: bytearray, at: int) -> None:
    data[at + 14] ^= 0xFF  # inside b's payload


def flip_length(data: bytearray, at: int) -> None:
    data[at] = 0x7F  # b's length now points far past the end of the file


@pytest.mark.parametrize("damage", [flip_payload, flip_length], ids=["payload", "length"])
def test_a_journal_damaged_in_the_middle_is_set_aside_keeping_what_can_be_read(
    tmp_path: Path, damage: Callable[[bytearray, int], None]
) -> None:
    """A record that fails a checksum with more after it is damage, not a crash (even a
    length that points past the end): the journal is kept aside, and the results before
    the damage and after it are held in a new one."""
    three_results_with_damage(tmp_path, damage)

    again = reloaded(tmp_path)

    assert again.attempts() == [key("a"), key("c")]
    assert (tmp_path / "held.damaged").exists()
    assert reloaded(tmp_path).attempts() == [key("a"), key("c")]
    assert read_held(tmp_path).keys() == {key("a"), key("c")}


def test_the_journal_is_compacted_to_what_is_still_held(tmp_path: Path) -> None:
    """Once the journal has grown past its limit, acknowledged results leave the file;
    what is still held, and in its order, comes back after a restart."""
    outbox = Outbox(tmp_path)
    outbox.load()
    big = '{"x": "' + "y" * 10_000 + '"}'
    count = COMPACT_MIN_BYTES // 10_000 + 20
    for index in range(count):
        step = f"s{index}"
        ref = pb.AttemptRef(run_id="run1", step_id=step, attempt=1)
        message = pb.AgentMessage(
            step=pb.StepEvent(ref=ref, completed=pb.StepCompleted(outputs_json=big))
        )
        outbox.put(key(step), message).result(timeout=10)
        if index % 10:
            outbox.ack(key(step))
    settle(outbox)

    assert (tmp_path / JOURNAL).stat().st_size < COMPACT_MIN_BYTES
    kept = [key(f"s{index}") for index in range(0, count, 10)]
    assert reloaded(tmp_path).attempts() == kept


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
