"""The agent's durable outbox: final step results kept on disk until acknowledged.

A result is written before it is sent, so a result the coordinator may
have seen is never lost by the agent: whatever crashes, the agent sends it
again when it comes back, until it is acknowledged.

Results are appended to one journal file, each record with its length and
a CRC-32, and made durable by one fdatasync: far cheaper than a new file,
its rename and a directory fsync for each. Writes run on a thread of their
own, so the agent's event loop never waits on a disk, and the results that
arrive while one write is under way are written together by the next. An
acknowledgement is appended too, with the next write, without waiting for
the disk: lost in a crash, it only means the result is sent again, and the
coordinator recognises a result it has stored. Once the journal has grown
well past what it still holds, it is compacted: what is held is written to
a new file that replaces it (written, fsynced, renamed, the directory
fsynced), so that a crash leaves the old journal or the new one.

On start, a torn last record (a crash in the middle of a write, before the
write was reported done) is cut off; a journal damaged elsewhere is set
aside, keeping every record that can still be read, before the damage and
after it. Result files of older agents (one file per write) are read and
folded into the journal.
"""

from __future__ import annotations

import asyncio
import os
import threading
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import structlog
from google.protobuf.message import DecodeError, Message

from workflowd.dispatch import AttemptKey
from workflowd.errors import WorkflowError
from workflowd.rpc import workflow_pb2 as pb

log = structlog.get_logger()

JOURNAL = "held.journal"
JOURNAL_MAGIC = b"workflow-outbox journal 1\n"
_PUT, _ACK = b"P", b"A"
# A record: its payload's length, a CRC-32 of those 4 bytes, a CRC-32 of the
# payload (big-endian, 4 bytes each), then the payload (a kind byte and a body).
# The length has a checksum of its own so that a damaged length is told from
# a torn last record: either would point past the end of the file.
_HEADER_BYTES = 12
# The journal is compacted once it exceeds this, and twice its size after the last compaction.
COMPACT_MIN_BYTES = 1 << 20

# The files older agents wrote: one serialised AgentMessage, or this followed by
# messages each preceded by its length (4 bytes, big-endian).
LEGACY_MAGIC = b"workflow-outbox 2\n"


def _key(message: pb.AgentMessage) -> AttemptKey:
    ref = message.step.ref
    return (ref.run_id, ref.step_id, ref.attempt)


def _record(kind: bytes, body: bytes) -> bytes:
    payload = kind + body
    size = len(payload).to_bytes(4, "big")
    return (
        size
        + zlib.crc32(size).to_bytes(4, "big")
        + zlib.crc32(payload).to_bytes(4, "big")
        + payload
    )


class OutboxError(WorkflowError):
    """The outbox cannot be read or written where it is: the agent cannot start."""


class JournalDamagedError(ValueError):
    """A record that is not the last one cannot be read: the disk, not a crash."""

    def __init__(self, offset: int, held: dict[AttemptKey, pb.AgentMessage]) -> None:
        super().__init__(f"unreadable record at byte {offset}")
        self.offset = offset
        self.held = held


def _whole_record(data: bytes, at: int) -> bool:
    """Whether a record whose checksums hold starts at `at`."""
    header = data[at : at + _HEADER_BYTES]
    if len(header) < _HEADER_BYTES or zlib.crc32(header[:4]) != int.from_bytes(header[4:8], "big"):
        return False
    end = at + _HEADER_BYTES + int.from_bytes(header[:4], "big")
    payload = data[at + _HEADER_BYTES : end]
    return end <= len(data) and zlib.crc32(payload) == int.from_bytes(header[8:], "big")


def read_journal(data: bytes) -> tuple[dict[AttemptKey, pb.AgentMessage], int]:
    """What a journal holds, oldest first, and where its last whole record ends.

    Raises JournalDamagedError when a record other than the last cannot be read;
    what it holds then is every record that could be read, before the damage and
    after it (the next place where a record's checksums hold).
    """
    if not data.startswith(JOURNAL_MAGIC):
        raise JournalDamagedError(0, {})
    held: dict[AttemptKey, pb.AgentMessage] = {}
    damaged_at: int | None = None
    at = len(JOURNAL_MAGIC)
    while at < len(data):
        header = data[at : at + _HEADER_BYTES]
        if len(header) < _HEADER_BYTES or not data[at:].strip(b"\0"):
            # the last record, torn by a crash mid-write (it was never reported
            # done), or zeros where the crash left the file longer than its data
            break
        end = at + _HEADER_BYTES + int.from_bytes(header[:4], "big")
        whole = _whole_record(data, at)
        length_holds = zlib.crc32(header[:4]) == int.from_bytes(header[4:8], "big")
        if not whole and length_holds and end >= len(data):
            break  # the last record, torn: its length was written, not all of its payload
        if not (whole and _apply(held, data[at + _HEADER_BYTES : end])):
            # damage: a length, a payload or a kind that is wrong. Read on from
            # the next record, if any: a record's two checksums do not hold by chance
            damaged_at = at if damaged_at is None else damaged_at
            at = next((i for i in range(at + 1, len(data)) if _whole_record(data, i)), len(data))
            continue
        at = end
    if damaged_at is not None:
        raise JournalDamagedError(damaged_at, held)
    return held, at


def _apply(held: dict[AttemptKey, pb.AgentMessage], payload: bytes) -> bool:
    """Apply one record's payload to what is held; False if it is not a record."""
    kind, body = payload[:1], payload[1:]
    try:
        if kind == _PUT:
            message = pb.AgentMessage.FromString(body)
            held.pop(_key(message), None)  # put again: the newer one, in its place
            held[_key(message)] = message
        elif kind == _ACK:
            ref = pb.AttemptRef.FromString(body)
            held.pop((ref.run_id, ref.step_id, ref.attempt), None)
        else:
            return False
    except DecodeError:
        return False
    return True


def read_held(directory: Path) -> dict[AttemptKey, pb.AgentMessage]:
    """The results an outbox directory holds, as an agent starting now would find them.

    Only reads: nothing is repaired or moved (that is Outbox.load's part).
    """
    held, _ = _legacy(directory, set_aside=False)
    path = directory / JOURNAL
    if path.exists():
        try:
            found, _ = read_journal(path.read_bytes())
        except JournalDamagedError as exc:
            found = exc.held
        for key, message in found.items():
            held.pop(key, None)
            held[key] = message
    return held


def _legacy_messages(data: bytes) -> list[pb.AgentMessage]:
    if not data.startswith(LEGACY_MAGIC):
        return [pb.AgentMessage.FromString(data)]
    found = []
    at = len(LEGACY_MAGIC)
    while at < len(data):
        size = int.from_bytes(data[at : at + 4], "big")
        body = data[at + 4 : at + 4 + size]
        if len(body) != size:
            raise ValueError("truncated outbox file")
        found.append(pb.AgentMessage.FromString(body))
        at += 4 + size
    return found


def _legacy_age(path: Path) -> tuple[bool, str]:
    """Older agents' files sort oldest first: named after their attempt, then by time."""
    stamp = path.name.split("-", 1)[0]
    return (len(stamp) == 20 and stamp.isdigit(), path.name)


def _legacy(directory: Path, set_aside: bool) -> tuple[dict[AttemptKey, pb.AgentMessage], bool]:
    """What the result files of older agents hold, and whether there are any. A file
    that cannot be read is left out, and renamed *.damaged when `set_aside`."""
    held: dict[AttemptKey, pb.AgentMessage] = {}
    paths = sorted(directory.glob("*.result"), key=_legacy_age)
    for path in paths:
        try:
            messages = _legacy_messages(path.read_bytes())
        except (OSError, ValueError, DecodeError):
            if set_aside:
                log.exception("outbox_entry_unreadable", path=str(path))
                path.rename(path.with_suffix(".damaged"))
            continue
        for message in messages:
            held.pop(_key(message), None)  # files are read oldest first: the newer one wins
            held[_key(message)] = message
    return held, bool(paths)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class Outbox:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / JOURNAL
        self._disk = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        # what follows changes under the lock: the disk thread reads it too
        self._lock = threading.Lock()
        self._held: dict[AttemptKey, pb.AgentMessage] = {}
        self._writing: dict[AttemptKey, Future[None]] = {}  # put, and not written yet
        # records to append, in the order they were asked for: a put with the
        # future its writer waits on, or an acknowledgement (no future)
        self._waiting: list[tuple[bytes, Message, AttemptKey, Future[None] | None]] = []
        self._write_queued = False
        # the disk thread's own
        self._journal: BinaryIO | None = None  # open for appending
        self._journal_bytes = 0
        self._compact_at_bytes = COMPACT_MIN_BYTES

    # ------------------------------------------------------------ start

    def load(self) -> None:
        """Read what a previous life of this agent left unacknowledged, and repair the journal.

        Raises OutboxError when the directory or the journal cannot be used (not a
        directory, not readable): a results store the agent cannot trust.
        """
        try:
            self._load()
        except OSError as exc:
            raise OutboxError(
                f"the outbox in {self.directory} cannot be used: {exc.strerror or exc}"
                f"{f' ({exc.filename})' if exc.filename else ''}"
            ) from exc

    def _load(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for leftover in self.directory.glob("*.tmp"):
            leftover.unlink()  # a compaction that a crash interrupted: the journal stands
        held, rewrite = _legacy(self.directory, set_aside=True)
        if self.path.exists():
            data = self.path.read_bytes()
            try:
                found, end = read_journal(data)
            except JournalDamagedError as exc:
                log.error("outbox_journal_damaged", path=str(self.path), offset=exc.offset)
                self.path.rename(self.path.with_suffix(".damaged"))
                found, end, rewrite = exc.held, 0, True
            for key, message in found.items():
                held.pop(key, None)
                held[key] = message
            if not rewrite and end < len(data):
                log.warning("outbox_torn_record_dropped", path=str(self.path), offset=end)
                with self.path.open("r+b") as stream:
                    stream.truncate(end)
                    os.fsync(stream.fileno())
        else:
            rewrite = True
        self._held = held
        if rewrite:
            self._compact()  # a journal of its own, holding what was found
        for path in self.directory.glob("*.result"):
            path.unlink()  # folded into the journal, which is on disk

    # ----------------------------------------------------------- writes

    def put(self, key: AttemptKey, message: pb.AgentMessage) -> Future[None]:
        """Hold a result until it is acknowledged. The future is done once it is on disk.

        A result put again for the same attempt replaces the one held.
        """
        written: Future[None] = Future()
        with self._lock:
            self._held.pop(key, None)
            self._held[key] = message
            self._writing[key] = written
            self._waiting.append((_PUT, message, key, written))
            queue = not self._write_queued
            self._write_queued = True
        if queue:
            self._disk.submit(self._write_waiting)
        return written

    async def keep(self, key: AttemptKey, message: pb.AgentMessage) -> None:
        """Put a result and wait until it is on disk (or its write failed, which is logged)."""
        await asyncio.wrap_future(self.put(key, message))

    def ack(self, key: AttemptKey) -> None:
        """Forget an acknowledged result; the journal hears of it with its next write."""
        ref = pb.AttemptRef(run_id=key[0], step_id=key[1], attempt=key[2])
        with self._lock:
            if self._held.pop(key, None) is None:
                return
            self._writing.pop(key, None)
            self._waiting.append((_ACK, ref, key, None))

    async def flush(self) -> None:
        """Wait until everything asked for so far is on disk, acknowledgements too."""
        await asyncio.wrap_future(self._disk.submit(self._write_waiting))

    def _write_waiting(self) -> None:
        """On the disk thread: append every record waiting now, with one fdatasync."""
        with self._lock:
            waiting, self._waiting = self._waiting, []
            self._write_queued = False
        if not waiting:
            return
        records = b"".join(_record(kind, item.SerializeToString()) for kind, item, _, _ in waiting)
        try:
            self._append(records)
        except OSError:
            # sent all the same: the coordinator stores it if it hears it
            log.exception("outbox_write_failed", path=str(self.path), records=len(waiting))
        with self._lock:
            for _, _, key, written in waiting:
                if written is not None and self._writing.get(key) is written:
                    del self._writing[key]
        for _, _, _, written in waiting:
            if written is not None:
                written.set_result(None)
        if self._journal_bytes > self._compact_at_bytes:
            try:
                self._compact()
            except OSError:
                log.exception("outbox_compaction_failed", path=str(self.path))

    def _append(self, records: bytes) -> None:
        if self._journal is None:
            self._journal = self.path.open("ab")
            self._journal_bytes = self.path.stat().st_size
        self._journal.write(records)
        self._journal.flush()
        os.fdatasync(self._journal.fileno())
        self._journal_bytes += len(records)

    def _compact(self) -> None:
        """A new journal holding only what is held now, in place of the old one."""
        with self._lock:
            held = list(self._held.values())
        temporary = self.path.with_suffix(".tmp")
        with temporary.open("wb") as stream:
            stream.write(JOURNAL_MAGIC)
            for message in held:
                stream.write(_record(_PUT, message.SerializeToString()))
            stream.flush()
            os.fsync(stream.fileno())
        temporary.replace(self.path)
        _fsync_directory(self.directory)
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        size = self.path.stat().st_size
        self._compact_at_bytes = max(COMPACT_MIN_BYTES, 2 * size)

    # ------------------------------------------------------------ reads

    def __contains__(self, key: object) -> bool:
        return key in self._held

    def __len__(self) -> int:
        return len(self._held)

    def attempts(self) -> list[AttemptKey]:
        with self._lock:
            return list(self._held)

    def messages(self) -> list[pb.AgentMessage]:
        with self._lock:
            return list(self._held.values())

    def written(self) -> list[pb.AgentMessage]:
        """The results held that are on disk (the rest are being written)."""
        with self._lock:
            return [m for key, m in self._held.items() if key not in self._writing]

    def get(self, key: AttemptKey) -> pb.AgentMessage | None:
        with self._lock:
            return self._held.get(key)
