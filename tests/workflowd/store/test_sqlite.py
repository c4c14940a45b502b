"""The SQLite store: runs, their numbered event histories, agents, and the file's schema."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from workflowd.errors import StoreError
from workflowd.events import Event
from workflowd.store import AgentRecord, RunRecord, open_store
from workflowd.store.sqlite import SCHEMA_VERSION, SQLiteStore

T = TypeVar("T")


def with_store(path: Path, body: Callable[[SQLiteStore], Awaitable[T]]) -> T:
    """Open a store on a file, run `body` with it, close it."""

    async def main() -> T:
        store = SQLiteStore(str(path))
        try:
            await store.open()
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(main())


def run_record(run_id: str = "run-01", key: str = "", name: str = "flow") -> RunRecord:
    return RunRecord(
        run_id=run_id,
        name=name,
        source="name: flow\nsteps: [{id: a, task: noop}]\n",
        filename="flow.yaml",
        inputs={"path": "/srv/data", "count": 3},
        config={"tolerance": 0},
        idempotency_key=key,
    )


def submitted(run_id: str = "run-01") -> list[Event]:
    return [Event("run_submitted", data={"name": "flow"}), Event("run_started")]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "workflowd.db"


def test_create_run_numbers_events_from_one(db):
    """A new run is stored with its first events numbered 1, 2 and timestamped."""

    async def body(store: SQLiteStore):
        created, fresh = await store.create_run(run_record(), submitted())
        return created, fresh, await store.events("run-01")

    created, fresh, events = with_store(db, body)

    assert fresh
    assert (created.run_id, created.name, created.status, created.last_seq) == (
        "run-01",
        "flow",
        "pending",
        2,
    )
    assert created.inputs == {"path": "/srv/data", "count": 3}
    assert created.config == {"tolerance": 0}
    assert created.created_ms > 0
    assert [(e.seq, e.type, dict(e.data)) for e in events] == [
        (1, "run_submitted", {"name": "flow"}),
        (2, "run_started", {}),
    ]
    assert all(e.time_ms >= created.created_ms for e in events)


def test_append_numbers_contiguously_and_sets_status(db):
    """Appended events continue the numbering and the run takes the given status."""

    async def body(store: SQLiteStore):
        await store.create_run(run_record(), submitted())
        first = await store.append(
            "run-01",
            [
                Event("step_dispatched", "a", 1, "host-a", {"task": "noop", "params": {}}),
                Event("step_started", "a", 1, "host-a"),
            ],
            "running",
        )
        second = await store.append("run-01", [Event("step_succeeded", "a", 1, "host-a")], "x")
        return first, second, await store.get_run("run-01"), await store.events("run-01")

    first, second, run, events = with_store(db, body)

    assert [e.seq for e in first] == [3, 4]
    assert [e.seq for e in second] == [5]
    assert (first[0].step_id, first[0].attempt, first[0].agent) == ("a", 1, "host-a")
    assert (run.status, run.last_seq) == ("x", 5)
    assert run.updated_ms >= run.created_ms
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert events[2] == first[0]


def test_append_to_an_unknown_run(db):
    """Appending to a run that does not exist fails naming it, and writes nothing."""

    async def body(store: SQLiteStore):
        with pytest.raises(StoreError, match="no run ghost"):
            await store.append("ghost", [Event("run_started")], "running")
        return await store.events("ghost")

    assert with_store(db, body) == []


def test_events_after_seq_with_limit(db):
    """`events` returns those after a sequence number, in order, at most `limit`."""

    async def body(store: SQLiteStore):
        await store.create_run(run_record(), submitted())
        await store.append(
            "run-01", [Event("step_log", "a", 1, data={"n": n}) for n in range(8)], "running"
        )
        return (
            await store.events("run-01", after_seq=3, limit=4),
            await store.events("run-01", after_seq=9),
            await store.events("run-01", after_seq=10),
        )

    window, tail, nothing = with_store(db, body)

    assert [(e.seq, e.data["n"]) for e in window] == [(4, 1), (5, 2), (6, 3), (7, 4)]
    assert [e.seq for e in tail] == [10]
    assert nothing == []


def test_event_data_round_trips(db):
    """Nested event data comes back as it was stored."""
    data = {"outputs": {"manifest": [{"path": "a", "size": 1}], "equal": True, "ratio": 0.5}}

    async def body(store: SQLiteStore):
        await store.create_run(run_record(), [Event("step_succeeded", "a", 2, "h", data)])
        return await store.events("run-01")

    assert [dict(e.data) for e in with_store(db, body)] == [data]


def test_idempotency_key_returns_the_earlier_run(db):
    """A second run with the same key returns the first run and writes nothing."""

    async def body(store: SQLiteStore):
        first, _ = await store.create_run(run_record("run-01", key="deploy-42"), submitted())
        again, fresh = await store.create_run(
            run_record("run-02", key="deploy-42", name="other"), submitted()
        )
        return (
            first,
            again,
            fresh,
            await store.get_run("run-02"),
            await store.events("run-01"),
            await store.list_runs(),
        )

    first, again, fresh, missing, events, runs = with_store(db, body)

    assert not fresh
    assert again == first
    assert (again.run_id, again.name, again.idempotency_key) == ("run-01", "flow", "deploy-42")
    assert missing is None
    assert len(events) == 2
    assert [run.run_id for run in runs] == ["run-01"]


def test_runs_without_key_are_all_stored(db):
    """Runs without an idempotency key never collide with each other."""

    async def body(store: SQLiteStore):
        results = [await store.create_run(run_record(f"run-0{i}"), []) for i in range(3)]
        return [fresh for _, fresh in results], await store.list_runs()

    fresh, runs = with_store(db, body)

    assert fresh == [True, True, True]
    assert len(runs) == 3


def test_list_runs_newest_first_with_paging(db):
    """Runs are listed newest first; before_run_id pages back through older ones."""

    async def body(store: SQLiteStore):
        for i in range(1, 6):
            await store.create_run(run_record(f"run-0{i}"), submitted())
        return (
            await store.list_runs(limit=2),
            await store.list_runs(limit=2, before_run_id="run-04"),
            await store.list_runs(limit=2, before_run_id="run-02"),
            await store.list_runs(limit=2, before_run_id="run-01"),
        )

    pages = with_store(db, body)

    assert [[run.run_id for run in page] for page in pages] == [
        ["run-05", "run-04"],
        ["run-03", "run-02"],
        ["run-01"],
        [],
    ]


def test_runs_with_status(db):
    """Runs are selected by status, in id order."""

    async def body(store: SQLiteStore):
        for i, status in enumerate(["running", "succeeded", "running", "failed"], start=1):
            await store.create_run(run_record(f"run-0{i}"), [])
            await store.append(f"run-0{i}", [Event("run_started")], status)
        return (
            await store.runs_with_status(["running"]),
            await store.runs_with_status({"failed", "succeeded"}),
            await store.runs_with_status(["cancelled"]),
        )

    running, done, none = with_store(db, body)

    assert [run.run_id for run in running] == ["run-01", "run-03"]
    assert [(run.run_id, run.status) for run in done] == [
        ("run-02", "succeeded"),
        ("run-04", "failed"),
    ]
    assert none == []


def test_agents_are_saved_listed_and_marked(db):
    """Agents are kept with labels and plugin schemas, listed by name, marked (dis)connected."""
    schema = {"type": "object", "properties": {"seconds": {"type": "number"}}}

    async def body(store: SQLiteStore):
        await store.save_agent(
            AgentRecord("host-b", {"role": "storage"}, {"sleep": schema}, "1.0", True, 1000)
        )
        await store.save_agent(AgentRecord("host-a", {}, {"noop": {}}, "1.0", True))
        saved = await store.agents()
        await store.set_agent_connected("host-b", False)
        await store.set_agent_connected("ghost", True)
        return saved, await store.agents()

    saved, marked = with_store(db, body)

    assert [a.name for a in saved] == ["host-a", "host-b"]
    assert saved[1] == AgentRecord(
        "host-b", {"role": "storage"}, {"sleep": schema}, "1.0", True, 1000
    )
    assert saved[0].last_seen_ms > 0
    assert [(a.name, a.connected) for a in marked] == [("host-a", True), ("host-b", False)]
    assert marked[1].last_seen_ms > 1000


def test_saving_an_agent_again_replaces_it(db):
    """A reconnecting agent's new labels and plugins replace the old ones."""

    async def body(store: SQLiteStore):
        await store.save_agent(AgentRecord("host-a", {"role": "old"}, {"noop": {}}, "1.0", True))
        await store.save_agent(AgentRecord("host-a", {"role": "new"}, {"sleep": {}}, "1.1", True))
        return await store.agents()

    (agent,) = with_store(db, body)

    assert (dict(agent.labels), dict(agent.plugins), agent.version) == (
        {"role": "new"},
        {"sleep": {}},
        "1.1",
    )


def test_data_survives_close_and_reopen(db):
    """Runs, events and agents are still there after the store is closed and opened again."""

    async def write(store: SQLiteStore):
        await store.create_run(run_record(key="k"), submitted())
        await store.append("run-01", [Event("run_succeeded")], "succeeded")
        await store.save_agent(AgentRecord("host-a", {"role": "x"}, {}, "1.0", True))

    async def read(store: SQLiteStore):
        return await store.get_run("run-01"), await store.events("run-01"), await store.agents()

    with_store(db, write)
    run, events, agents = with_store(db, read)

    assert (run.status, run.last_seq, run.idempotency_key) == ("succeeded", 3, "k")
    assert [e.type for e in events] == ["run_submitted", "run_started", "run_succeeded"]
    assert [(a.name, dict(a.labels)) for a in agents] == [("host-a", {"role": "x"})]


def test_newer_schema_version_is_refused(db):
    """A store file written by a newer workflowd is refused with what to do."""

    async def nothing(store: SQLiteStore) -> None:
        return None

    with_store(db, nothing)
    with sqlite3.connect(db) as raw:
        raw.execute(
            "UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),)
        )
    raw.close()

    with pytest.raises(StoreError) as caught:
        with_store(db, nothing)

    assert str(caught.value) == (
        f"{db} has schema version {SCHEMA_VERSION + 1}, newer than this workflowd "
        f"understands ({SCHEMA_VERSION}); upgrade workflowd"
    )


def test_schema_version_is_recorded(db):
    """A new store file records the schema version it was written with."""

    async def nothing(store: SQLiteStore) -> None:
        return None

    with_store(db, nothing)
    with sqlite3.connect(db) as raw:
        (value,) = raw.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    raw.close()

    assert value == str(SCHEMA_VERSION)


def test_concurrent_appends_get_unique_contiguous_numbers(db):
    """Many appends at once each get their own numbers, with no gap and no repeat."""

    async def body(store: SQLiteStore):
        await store.create_run(run_record(), submitted())
        batches = await asyncio.gather(
            *(
                store.append(
                    "run-01",
                    [Event("step_log", data={"batch": i, "n": n}) for n in range(i % 3 + 1)],
                    "running",
                )
                for i in range(40)
            )
        )
        return batches, await store.events("run-01", limit=10_000), await store.get_run("run-01")

    batches, stored, run = with_store(db, body)

    seqs = sorted(e.seq for batch in batches for e in batch)
    total = sum(i % 3 + 1 for i in range(40))
    assert seqs == list(range(3, 3 + total))
    for batch in batches:
        assert [e.seq for e in batch] == list(range(batch[0].seq, batch[0].seq + len(batch)))
    assert [e.seq for e in stored] == list(range(1, 3 + total))
    assert run.last_seq == 2 + total


def test_calls_on_a_closed_store_are_refused(db):
    """Using a store that is not open raises StoreError saying so."""

    async def main() -> None:
        store = SQLiteStore(str(db))
        await store.open()
        await store.close()
        await store.close()  # closing twice is harmless
        fresh = SQLiteStore(str(db))
        with pytest.raises(StoreError, match="store is not open"):
            await fresh.get_run("run-01")
        await fresh.close()

    asyncio.run(main())


def test_open_store_reads_sqlite_uris(tmp_path):
    """`sqlite:///PATH` and a plain path both open the SQLite store at that path."""
    assert open_store(f"sqlite://{tmp_path}/a.db").path == f"{tmp_path}/a.db"
    assert open_store(f"{tmp_path}/b.db").path == f"{tmp_path}/b.db"
