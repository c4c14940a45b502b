"""The agent's durable outbox: final step results kept on disk until acknowledged.

Results are written to files named `*.result`, each written to a temporary
name, flushed to disk and renamed, so a crash leaves either the whole file or
none of it. An agent that restarts reads its outbox and sends what it holds.

The disk work runs on a thread of its own, and a result goes out on the
stream before it is written: the agent's event loop never waits on a disk. A
result is written once it has gone WRITE_AFTER_S without an acknowledgement,
in one file with every other result waiting then (one fsync for the file, one
for the directory), so that a coordinator that answers at once costs the
agent no disk write at all: it has stored the result itself. An agent killed
within that time runs the step again, as if it had been killed a moment
before the step ended, unless the coordinator has stored the result. A file
is removed once every result in it is acknowledged.

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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import structlog

from workflowd.dispatch import AttemptKey
from workflowd.rpc import workflow_pb2 as pb

log = structlog.get_logger()

WRITE_AFTER_S = 0.05
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


class Outbox:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._disk = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._names = itertools.count()
        # what follows changes under the lock: the disk thread reads it too
        self._lock = threading.Lock()
        self._held: dict[AttemptKey, pb.AgentMessage] = {}
        self._unwritten: dict[AttemptKey, pb.AgentMessage] = {}
        self._file_of: dict[AttemptKey, Path] = {}
        self._file_keys: dict[Path, set[AttemptKey]] = {}
        self._write_queued = False

    def load(self) -> None:
        """Read the results a previous life of this agent did not get acknowledged."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for leftover in self.directory.glob("*.tmp"):
            leftover.unlink()  # a write that a crash interrupted: never acknowledged, never sent
        for path in sorted(self.directory.glob("*.result")):
            try:
                messages = _messages(path.read_bytes())
                keys = [_key(message) for message in messages]
            except Exception:
                log.exception("outbox_entry_unreadable", path=str(path))
                path.rename(path.with_suffix(".damaged"))
                continue
            for key, message in zip(keys, messages, strict=True):
                self._held[key] = message
                self._file_of[key] = path
                self._file_keys.setdefault(path, set()).add(key)

    def put(self, key: AttemptKey, message: pb.AgentMessage) -> None:
        """Hold a result until it is acknowledged; on disk if that takes WRITE_AFTER_S."""
        with self._lock:
            self._held[key] = message
            self._unwritten[key] = message
            queue = not self._write_queued
            self._write_queued = True
        if queue:
            self._disk.submit(self._write_waiting)

    def _write_waiting(self) -> None:
        time.sleep(WRITE_AFTER_S)  # the disk thread's own time: results acknowledged meanwhile
        with self._lock:
            waiting, self._unwritten = self._unwritten, {}
            self._write_queued = False
        if not waiting:
            return
        path = self.directory / f"{time.time_ns():020d}-{os.getpid()}-{next(self._names)}.result"
        try:
            self._write(path, list(waiting.values()))
        except OSError:
            log.exception("outbox_write_failed", path=str(path), results=len(waiting))
            return
        with self._lock:
            kept = {key for key in waiting if key in self._held}
            for key in kept:
                self._file_of[key] = path
            if kept:
                self._file_keys[path] = kept
        if not kept:  # all acknowledged while they were being written
            self._remove(path)

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

    def ack(self, key: AttemptKey) -> None:
        with self._lock:
            self._held.pop(key, None)
            self._unwritten.pop(key, None)
            path = self._file_of.pop(key, None)
            keys = self._file_keys.get(path, set()) if path is not None else set()
            keys.discard(key)
            done = path is not None and not keys
            if done:
                del self._file_keys[path]
        if done:
            self._disk.submit(self._remove, path)

    def _remove(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    async def flush(self) -> None:
        """Wait until every result held now is on disk (or acknowledged)."""
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
