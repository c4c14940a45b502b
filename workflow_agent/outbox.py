"""The agent's durable outbox: final step results kept on disk until acknowledged.

A result is written before it is sent, so a result the coordinator may
have seen is never lost by the agent: whatever crashes, the agent sends it
again when it comes back, until it is acknowledged.

Writes run on a thread of their own, so the agent's event loop never waits
on a disk. The results that arrive while one write is under way are written
together by the next (one file, one fsync for it and one for the directory):
under load, many results share a write. Each file is written to a temporary
name, flushed and renamed, so a crash leaves either the whole file or none
of it, and is removed once every result in it is acknowledged.

A file holds one serialised AgentMessage (as older agents wrote them), or
MAGIC followed by messages each preceded by its length (4 bytes, big-endian).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import structlog

from workflowd.dispatch import AttemptKey
from workflowd.rpc import workflow_pb2 as pb

log = structlog.get_logger()

MAGIC = b"workflow-outbox 2\n"


def _key(message: pb.AgentMessage) -> AttemptKey:
    ref = message.step.ref
    return (ref.run_id, ref.step_id, ref.attempt)


def _messages(data: bytes) -> list[pb.AgentMessage]:
    if not data.startswith(MAGIC):
        message = pb.AgentMessage()
        message.ParseFromString(data)
        return [message]
    found = []
    at = len(MAGIC)
    while at < len(data):
        size = int.from_bytes(data[at : at + 4], "big")
        body = data[at + 4 : at + 4 + size]
        if len(body) != size:
            raise ValueError("truncated outbox file")
        message = pb.AgentMessage()
        message.ParseFromString(body)
        found.append(message)
        at += 4 + size
    return found


def _age(path: Path) -> tuple[bool, str]:
    """Files sort oldest first: an older agent's (named after their attempt), then
    this one's (named after the time they were written)."""
    stamp = path.name.split("-", 1)[0]
    return (len(stamp) == 20 and stamp.isdigit(), path.name)


class Outbox:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._disk = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._names = itertools.count()
        # what follows changes under the lock: the disk thread reads it too
        self._lock = threading.Lock()
        self._held: dict[AttemptKey, pb.AgentMessage] = {}
        self._unwritten: dict[AttemptKey, tuple[pb.AgentMessage, Future[None]]] = {}
        self._writing: dict[AttemptKey, Future[None]] = {}  # put, and not written yet
        self._file_of: dict[AttemptKey, Path] = {}
        self._file_keys: dict[Path, set[AttemptKey]] = {}
        self._write_queued = False

    def load(self) -> None:
        """Read the results a previous life of this agent did not get acknowledged."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for leftover in self.directory.glob("*.tmp"):
            leftover.unlink()  # a write that a crash interrupted: never acknowledged, never sent
        for path in sorted(self.directory.glob("*.result"), key=_age):
            try:
                messages = _messages(path.read_bytes())
                keys = [_key(message) for message in messages]
            except Exception:
                log.exception("outbox_entry_unreadable", path=str(path))
                path.rename(path.with_suffix(".damaged"))
                continue
            for key, message in zip(keys, messages, strict=True):
                # files load oldest first: a result put again replaces the older one,
                # whose file a crash kept from being removed
                self._forget_file(key)
                self._held[key] = message
                self._file_of[key] = path
                self._file_keys.setdefault(path, set()).add(key)

    def put(self, key: AttemptKey, message: pb.AgentMessage) -> Future[None]:
        """Hold a result until it is acknowledged. The future is done once it is on disk.

        A result put again for the same attempt replaces the one held.
        """
        written: Future[None] = Future()
        with self._lock:
            self._held[key] = message
            replaced = self._unwritten.get(key)
            if replaced is not None:  # its write is this one now
                written.add_done_callback(lambda _, old=replaced[1]: old.set_result(None))
            self._unwritten[key] = (message, written)
            self._writing[key] = written
            queue = not self._write_queued
            self._write_queued = True
        if queue:
            self._disk.submit(self._write_waiting)
        return written

    async def keep(self, key: AttemptKey, message: pb.AgentMessage) -> None:
        """Put a result and wait until it is on disk (or its write failed, which is logged)."""
        await asyncio.wrap_future(self.put(key, message))

    def _write_waiting(self) -> None:
        """On the disk thread: write every result waiting now, in one file."""
        with self._lock:
            waiting, self._unwritten = self._unwritten, {}
            self._write_queued = False
        if not waiting:
            return
        path = self.directory / f"{time.time_ns():020d}-{os.getpid()}-{next(self._names)}.result"
        try:
            self._write(path, [message for message, _ in waiting.values()])
        except OSError:
            # sent all the same: the coordinator stores it if it hears it
            log.exception("outbox_write_failed", path=str(path), results=len(waiting))
        else:
            with self._lock:
                kept = {key for key in waiting if key in self._held}
                for key in kept:
                    self._forget_file(key)
                    self._file_of[key] = path
                if kept:
                    self._file_keys[path] = kept
            if not kept:  # all acknowledged while they were being written
                self._remove(path)
        with self._lock:
            for key, (_, written) in waiting.items():
                if self._writing.get(key) is written:
                    del self._writing[key]
        for _, written in waiting.values():
            written.set_result(None)

    def _write(self, path: Path, messages: list[pb.AgentMessage]) -> None:
        temporary = path.with_suffix(".tmp")
        with temporary.open("wb") as stream:
            stream.write(MAGIC)
            for message in messages:
                body = message.SerializeToString()
                stream.write(len(body).to_bytes(4, "big"))
                stream.write(body)
            stream.flush()
            os.fsync(stream.fileno())
        temporary.replace(path)
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def _forget_file(self, key: AttemptKey) -> None:
        """Under the lock: the key leaves the file that held it; an empty file goes."""
        path = self._file_of.pop(key, None)
        if path is None:
            return
        keys = self._file_keys.get(path, set())
        keys.discard(key)
        if not keys:
            self._file_keys.pop(path, None)
            self._disk.submit(self._remove, path)

    def ack(self, key: AttemptKey) -> None:
        with self._lock:
            self._held.pop(key, None)
            self._writing.pop(key, None)
            self._forget_file(key)

    def _remove(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    async def flush(self) -> None:
        """Wait until every write and removal asked for so far is done."""
        await asyncio.wrap_future(self._disk.submit(lambda: None))

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
