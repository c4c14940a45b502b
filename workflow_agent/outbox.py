"""The agent's durable outbox: final step results kept on disk until acknowledged.

Each result is one file named after its attempt, written to a temporary name,
flushed to disk and renamed, so a crash leaves either the whole result or
none of it. An agent that restarts reads its outbox and sends what it holds.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import structlog

from workflowd.dispatch import AttemptKey
from workflowd.rpc import workflow_pb2 as pb

log = structlog.get_logger()


def _name(key: AttemptKey) -> str:
    run_id, step_id, attempt = key
    return f"{run_id}.{step_id}.{attempt}.result"


class Outbox:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._held: dict[AttemptKey, pb.AgentMessage] = {}

    def load(self) -> None:
        """Read the results a previous life of this agent did not get acknowledged."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.directory.glob("*.result")):
            message = pb.AgentMessage()
            try:
                message.ParseFromString(path.read_bytes())
                ref = message.step.ref
                key = (ref.run_id, ref.step_id, ref.attempt)
            except Exception:
                log.exception("outbox_entry_unreadable", path=str(path))
                path.rename(path.with_suffix(".damaged"))
                continue
            self._held[key] = message
        for leftover in self.directory.glob("*.tmp"):
            leftover.unlink()  # a write that a crash interrupted: never acknowledged, never sent

    def put(self, key: AttemptKey, message: pb.AgentMessage) -> None:
        path = self.directory / _name(key)
        temporary = path.with_suffix(".tmp")
        with temporary.open("wb") as stream:
            stream.write(message.SerializeToString())
            stream.flush()
            os.fsync(stream.fileno())
        temporary.replace(path)
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        self._held[key] = message

    def ack(self, key: AttemptKey) -> None:
        self._held.pop(key, None)
        with contextlib.suppress(FileNotFoundError):
            (self.directory / _name(key)).unlink()

    def __contains__(self, key: object) -> bool:
        return key in self._held

    def __len__(self) -> int:
        return len(self._held)

    def attempts(self) -> list[AttemptKey]:
        return list(self._held)

    def messages(self) -> list[pb.AgentMessage]:
        return list(self._held.values())
