"""The embedded store: one SQLite file in WAL mode, written from one thread.

Writes run on a single writer thread, so that the event loop never blocks on
disk and writes are serialised without locks of our own; reads run on a
thread and connection of their own, which WAL lets read while a write
commits. Transactions are committed with synchronous=FULL: a returned
`append` survives a power cut.

Group commit: the writes that wait while a transaction commits go together
into the next one, each under a savepoint of its own, so that one fsync makes
all of them durable and a write that fails leaves the others unharmed. No
write returns before the transaction holding it has committed.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from workflowd.engine import Event
from workflowd.errors import StoreError
from workflowd.events import RUN_FINISHED
from workflowd.store.base import AgentRecord, RunRecord, Store, now_ms

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    source TEXT NOT NULL,
    filename TEXT NOT NULL,
    inputs_json TEXT NOT NULL,
    config_json TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    idempotency_key TEXT UNIQUE,
    last_seq INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status);
CREATE INDEX IF NOT EXISTS runs_by_age ON runs (status, updated_ms);
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,
    type TEXT NOT NULL,
    step_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    agent TEXT NOT NULL,
    data_json TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS agents (
    name TEXT PRIMARY KEY,
    labels_json TEXT NOT NULL,
    plugins_json TEXT NOT NULL,
    version TEXT NOT NULL,
    connected INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL
);
"""

T = TypeVar("T")

# The most writes one transaction carries: the first of them waits for the last.
MAX_GROUP = 1000


def _run(row: sqlite3.Row) -> RunRecord:
    return RunRecord(
        run_id=row["run_id"],
        name=row["name"],
        source=row["source"],
        filename=row["filename"],
        inputs=json.loads(row["inputs_json"]),
        config=json.loads(row["config_json"]),
        status=row["status"],
        created_ms=row["created_ms"],
        updated_ms=row["updated_ms"],
        idempotency_key=row["idempotency_key"] or "",
        last_seq=row["last_seq"],
    )


def _event(row: sqlite3.Row) -> Event:
    return Event(
        type=row["type"],
        step_id=row["step_id"],
        attempt=row["attempt"],
        agent=row["agent"],
        data=json.loads(row["data_json"]),
        seq=row["seq"],
        time_ms=row["time_ms"],
    )


@dataclass
class _Write:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():  # its caller was cancelled; the write stands all the same
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class SQLiteStore(Store):
    def __init__(self, path: str, exclusive: bool = False) -> None:
        self.path = path
        self.exclusive = exclusive  # hold a lock: no second coordinator on this file
        self._db: sqlite3.Connection | None = None
        self._lock_file: Any = None
        self._reader: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        self._read_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-read")
        self._pending_lock = threading.Lock()
        self._pending: list[_Write] = []
        self._flush_queued = False

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run on the writer thread, outside any group (opening, closing)."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a read on the reader's connection; it sees every write that has returned."""
        if self._reader is None:
            return await self._call(fn, self.db, *args)
        return await asyncio.get_running_loop().run_in_executor(
            self._read_thread, fn, self._reader, *args
        )

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a write in the next group transaction; return once that has committed."""
        loop = asyncio.get_running_loop()
        write = _Write(fn, args, loop, loop.create_future())
        with self._pending_lock:
            self._pending.append(write)
            queue = not self._flush_queued
            self._flush_queued = True
        if queue:
            self._thread.submit(self._flush)
        return await write.future

    def _flush(self) -> None:
        """On the writer thread: commit every waiting write in one transaction."""
        with self._pending_lock:
            group, self._pending = self._pending[:MAX_GROUP], self._pending[MAX_GROUP:]
            if self._pending:
                self._thread.submit(self._flush)
            else:
                self._flush_queued = False
        outcomes: list[tuple[bool, Any]] = []
        try:
            db = self.db
            db.execute("BEGIN IMMEDIATE")
            try:
                for write in group:
                    db.execute("SAVEPOINT one_write")
                    try:
                        value = write.fn(*write.args)
                    except Exception as exc:  # noqa: BLE001 - handed to the write's caller
                        db.execute("ROLLBACK TO one_write")
                        outcomes.append((False, exc))
                    else:
                        outcomes.append((True, value))
                    db.execute("RELEASE one_write")
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except Exception as exc:  # noqa: BLE001 - every write of the group failed with it
            failed = exc if isinstance(exc, StoreError) else StoreError(f"SQLite store: {exc}")
            outcomes = [(False, failed)] * len(group)
        for write, (ok, value) in zip(group, outcomes, strict=True):
            write.loop.call_soon_threadsafe(_settle, write.future, ok, value)

    # -- life cycle

    async def open(self) -> None:
        await self._call(self._open)
        if self.path != ":memory:":
            loop = asyncio.get_running_loop()
            self._reader = await loop.run_in_executor(self._read_thread, self._connect)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(Path(self.path).expanduser(), isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA busy_timeout=5000")
        return db

    def _open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).expanduser().parent.mkdir(parents=True, exist_ok=True)
            if self.exclusive:
                self._take_file_lock()
        try:
            db = sqlite3.connect(Path(self.path).expanduser(), isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite store {self.path}: {exc}") from None
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")
        with db:
            db.executescript(_SCHEMA)
        found = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if found is None:
            db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(found["value"]) > SCHEMA_VERSION:
            db.close()
            raise StoreError(
                f"{self.path} has schema version {found['value']}, newer than this "
                f"workflowd understands ({SCHEMA_VERSION}); upgrade workflowd"
            )
        self._db = db

    def _take_file_lock(self) -> None:
        """Hold an exclusive lock beside the file: two coordinators on one store
        would both drive its runs."""
        lock_path = Path(f"{self.path}.lock").expanduser()
        self._lock_file = lock_path.open("a")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise StoreError(
                f"another workflowd is using {self.path}; stop it first, or give this one "
                "a store of its own (--store)"
            ) from None

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        if self._reader is not None:
            await loop.run_in_executor(self._read_thread, self._reader.close)
            self._reader = None
        if self._db is not None:
            await self._call(self._db.close)
            self._db = None
        if self._lock_file is not None:
            self._lock_file.close()  # closing the file releases the lock
            self._lock_file = None
        self._read_thread.shutdown(wait=True)
        self._thread.shutdown(wait=True)

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("store is not open")
        return self._db

    # -- runs and events

    async def create_run(self, run: RunRecord, events: Sequence[Event]) -> tuple[RunRecord, bool]:
        return await self._write(self._create_run, run, events)

    def _create_run(self, run: RunRecord, events: Sequence[Event]) -> tuple[RunRecord, bool]:
        db = self.db
        if run.idempotency_key:
            row = db.execute(
                "SELECT * FROM runs WHERE idempotency_key=?", (run.idempotency_key,)
            ).fetchone()
            if row is not None:
                return _run(row), False
        now = now_ms()
        db.execute(
            "INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                run.run_id,
                run.name,
                run.status,
                run.source,
                run.filename,
                json.dumps(run.inputs),
                json.dumps(run.config),
                now,
                now,
                run.idempotency_key or None,
                len(events),
            ),
        )
        self._insert_events(run.run_id, 0, events, now)
        row = db.execute("SELECT * FROM runs WHERE run_id=?", (run.run_id,)).fetchone()
        return _run(row), True

    def _insert_events(
        self, run_id: str, last_seq: int, events: Sequence[Event], now: int
    ) -> list[Event]:
        numbered = []
        rows = []
        for seq, event in enumerate(events, start=last_seq + 1):
            numbered.append(
                Event(event.type, event.step_id, event.attempt, event.agent, event.data, seq, now)
            )
            rows.append(
                (
                    run_id,
                    seq,
                    now,
                    event.type,
                    event.step_id,
                    event.attempt,
                    event.agent,
                    json.dumps(event.data),
                )
            )
        self.db.executemany("INSERT INTO events VALUES (?,?,?,?,?,?,?,?)", rows)
        return numbered

    async def append(self, run_id: str, events: Sequence[Event], status: str) -> list[Event]:
        return await self._write(self._append, run_id, events, status)

    def _append(self, run_id: str, events: Sequence[Event], status: str) -> list[Event]:
        db = self.db
        row = db.execute("SELECT last_seq FROM runs WHERE run_id=?", (run_id,)).fetchone()
        if row is None:
            raise StoreError(f"no run {run_id}")
        now = now_ms()
        numbered = self._insert_events(run_id, row["last_seq"], events, now)
        db.execute(
            "UPDATE runs SET last_seq=?, status=?, updated_ms=? WHERE run_id=?",
            (row["last_seq"] + len(events), status, now, run_id),
        )
        return numbered

    async def events(self, run_id: str, after_seq: int = 0, limit: int = 1000) -> list[Event]:
        return await self._read(_events, run_id, after_seq, limit)

    async def get_run(self, run_id: str) -> RunRecord | None:
        return await self._read(_get_run, run_id)

    async def list_runs(self, limit: int = 50, before_run_id: str = "") -> list[RunRecord]:
        return await self._read(_list_runs, limit, before_run_id)

    async def runs_with_status(self, statuses: Iterable[str]) -> list[RunRecord]:
        return await self._read(_runs_with_status, list(statuses))

    async def prune(self, finished_before_ms: int) -> int:
        return await self._write(self._prune, finished_before_ms)

    def _prune(self, finished_before_ms: int) -> int:
        db = self.db
        finished = sorted(RUN_FINISHED)
        marks = ",".join("?" * len(finished))
        old = f"SELECT run_id FROM runs WHERE status IN ({marks}) AND updated_ms<?"  # noqa: S608 - marks only
        params = (*finished, finished_before_ms)
        db.execute(f"DELETE FROM events WHERE run_id IN ({old})", params)  # noqa: S608 - marks only
        return db.execute(f"DELETE FROM runs WHERE run_id IN ({old})", params).rowcount  # noqa: S608 - marks only

    # -- agents

    async def save_agent(self, agent: AgentRecord) -> None:
        await self._write(self._save_agent, agent)

    def _save_agent(self, agent: AgentRecord) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO agents VALUES (?,?,?,?,?,?)",
            (
                agent.name,
                json.dumps(dict(agent.labels)),
                json.dumps({k: dict(v) for k, v in agent.plugins.items()}),
                agent.version,
                int(agent.connected),
                agent.last_seen_ms or now_ms(),
            ),
        )

    async def set_agent_connected(self, name: str, connected: bool) -> None:
        await self._write(self._set_agent_connected, name, connected)

    def _set_agent_connected(self, name: str, connected: bool) -> None:
        self.db.execute(
            "UPDATE agents SET connected=?, last_seen_ms=? WHERE name=?",
            (int(connected), now_ms(), name),
        )

    async def agents(self) -> list[AgentRecord]:
        return await self._read(_agents)


# -- reads: each takes the connection it reads from


def _events(db: sqlite3.Connection, run_id: str, after_seq: int, limit: int) -> list[Event]:
    rows = db.execute(
        "SELECT * FROM events WHERE run_id=? AND seq>? ORDER BY seq LIMIT ?",
        (run_id, after_seq, limit),
    ).fetchall()
    return [_event(row) for row in rows]


def _get_run(db: sqlite3.Connection, run_id: str) -> RunRecord | None:
    row = db.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()
    return None if row is None else _run(row)


def _list_runs(db: sqlite3.Connection, limit: int, before_run_id: str) -> list[RunRecord]:
    # run ids sort by creation time, so the primary key pages the history
    if before_run_id:
        rows = db.execute(
            "SELECT * FROM runs WHERE run_id<? ORDER BY run_id DESC LIMIT ?",
            (before_run_id, limit),
        )
    else:
        rows = db.execute("SELECT * FROM runs ORDER BY run_id DESC LIMIT ?", (limit,))
    return [_run(row) for row in rows.fetchall()]


def _runs_with_status(db: sqlite3.Connection, statuses: list[str]) -> list[RunRecord]:
    marks = ",".join("?" * len(statuses))
    rows = db.execute(
        f"SELECT * FROM runs WHERE status IN ({marks}) ORDER BY run_id",  # noqa: S608 - marks only
        statuses,
    ).fetchall()
    return [_run(row) for row in rows]


def _agents(db: sqlite3.Connection) -> list[AgentRecord]:
    rows = db.execute("SELECT * FROM agents ORDER BY name").fetchall()
    return [
        AgentRecord(
            name=row["name"],
            labels=json.loads(row["labels_json"]),
            plugins=json.loads(row["plugins_json"]),
            version=row["version"],
            connected=bool(row["connected"]),
            last_seen_ms=row["last_seen_ms"],
        )
        for row in rows
    ]
