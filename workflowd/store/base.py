"""The store interface the coordinator depends on, and the records it keeps.

A run is a row (its definition, inputs, status) plus an append-only history of
events numbered 1, 2, 3 ... per run. `append` assigns those numbers and is
durable when it returns: nothing is acknowledged to anyone before that.
"""

from __future__ import annotations

import abc
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from workflowd.engine import Event


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_run_id() -> str:
    """Sortable by creation time, unguessable enough to be shared."""
    return f"{now_ms():012x}{secrets.token_hex(4)}"


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    name: str
    source: str
    filename: str
    inputs: Mapping[str, Any]
    config: Mapping[str, Any]
    status: str = "pending"
    created_ms: int = 0
    updated_ms: int = 0
    idempotency_key: str = ""
    last_seq: int = 0


@dataclass(frozen=True)
class AgentRecord:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    plugins: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # name -> params schema
    version: str = ""
    connected: bool = False
    last_seen_ms: int = 0


class Store(abc.ABC):
    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def create_run(self, run: RunRecord, events: Sequence[Event]) -> tuple[RunRecord, bool]:
        """Store a new run with its first events.

        When the run has an idempotency key that an earlier run holds, nothing
        is written and that earlier run is returned with False.
        """

    @abc.abstractmethod
    async def append(self, run_id: str, events: Sequence[Event], status: str) -> list[Event]:
        """Append events to a run's history, set its status, return them numbered."""

    @abc.abstractmethod
    async def events(self, run_id: str, after_seq: int = 0, limit: int = 1000) -> list[Event]:
        """Events with seq > after_seq, in order, at most `limit`."""

    @abc.abstractmethod
    async def get_run(self, run_id: str) -> RunRecord | None: ...

    @abc.abstractmethod
    async def list_runs(self, limit: int = 50, before_run_id: str = "") -> list[RunRecord]:
        """Newest first; `before_run_id` pages back through older runs."""

    @abc.abstractmethod
    async def runs_with_status(self, statuses: Iterable[str]) -> list[RunRecord]: ...

    @abc.abstractmethod
    async def prune(self, finished_before_ms: int) -> int:
        """Remove finished runs last updated before this time, with their history.

        Returns how many runs were removed. Runs still pending or running are kept
        whatever their age.
        """

    @abc.abstractmethod
    async def save_agent(self, agent: AgentRecord) -> None: ...

    @abc.abstractmethod
    async def set_agent_connected(self, name: str, connected: bool) -> None: ...

    @abc.abstractmethod
    async def agents(self) -> list[AgentRecord]: ...
