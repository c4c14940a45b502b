"""What only the MongoDB store has: its indexes and schema, out-of-line data, and outages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bson
import pymongo
import pytest
from structlog.testing import capture_logs

from tests.cluster import free_port
from tests.mongo import SecantusServer, unique_database
from tests.workflowd.store.conftest import Run
from tests.workflowd.store.test_contract import log_event, record
from workflowd import engine
from workflowd.engine import Event
from workflowd.errors import StoreError
from workflowd.store import open_store
from workflowd.store.mongodb import (
    BATCH_INLINE_LIMIT_BYTES,
    SCHEMA_VERSION,
    MongoStore,
    StoreUnavailableError,
    list_query,
)


@pytest.fixture
def mongo(mongo_uri: str, run: Run) -> MongoStore:
    store = MongoStore(mongo_uri, wait_s=30)
    run(store.open())
    yield store
    run(store.close())


@pytest.fixture
def db(mongo_uri: str) -> Any:
    """A plain synchronous client on the test's database, to look at what the store wrote."""
    with pymongo.MongoClient(mongo_uri) as client:
        yield client.get_default_database()


def stages(plan: dict[str, Any]) -> list[str]:
    """Every stage name of an explain plan's winning plan, outermost first."""
    found, node = [], plan["queryPlanner"]["winningPlan"]
    while node:
        found.append(node["stage"])
        node = node.get("inputStage")
    return found


async def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.05)


def test_open_creates_the_schema_and_its_indexes(mongo: MongoStore, db: Any) -> None:
    """The first open records the schema version and creates every index the store uses."""
    assert db.meta.find_one({"_id": "schema"})["version"] == SCHEMA_VERSION
    assert {"newest_first", "by_status", "by_age", "idempotency_key"} <= set(
        db.runs.index_information()
    )
    events = db.events.index_information()
    assert events["run_seq"]["unique"]
    assert events["run_seq"]["key"] == [("run_id", 1), ("first", 1)]
    assert events["run_last"]["unique"]
    assert "blob_chunks" in db.blobs.index_information()
    assert "run_topic_seq" in db.messages.index_information()


def test_a_newer_schema_is_refused(mongo_uri: str, mongo: MongoStore, db: Any, run: Run) -> None:
    """A database written by a newer workflowd is refused with a clear error, untouched."""
    db.meta.update_one({"_id": "schema"}, {"$set": {"version": SCHEMA_VERSION + 1}})
    newer = MongoStore(mongo_uri, wait_s=30)

    with pytest.raises(StoreError, match="newer than this workflowd understands"):
        run(newer.open())
    run(newer.close())
    assert db.meta.find_one({"_id": "schema"})["version"] == SCHEMA_VERSION + 1


def test_list_and_history_reads_walk_an_index(mongo: MongoStore, db: Any, run: Run) -> None:
    """list_runs and events() are answered from indexes, never by scanning collections."""
    for i in range(30):
        stored, _ = run(mongo.create_run(record(run_id=f"{i:012x}bbbbbbbb"), [log_event("a")]))
        run(mongo.append(stored.run_id, [log_event("b")], "running"))

    for before in ("", f"{20:012x}bbbbbbbb"):
        plan = db.runs.find(list_query(before)).sort("run_id", -1).limit(10).explain()
        assert "IXSCAN" in stages(plan)
        assert "COLLSCAN" not in stages(plan)
    query = {"run_id": stored.run_id, "last": {"$gt": 1}}
    plan = db.events.find(query).sort("last", 1).limit(100).explain()
    assert "IXSCAN" in stages(plan)
    assert "COLLSCAN" not in stages(plan)
    page = run(mongo.list_runs(10, f"{20:012x}bbbbbbbb"))
    assert [r.run_id for r in page] == [f"{i:012x}bbbbbbbb" for i in range(19, 9, -1)]


def test_large_event_data_is_kept_out_of_line(mongo: MongoStore, db: Any, run: Run) -> None:
    """A 20 MB output goes to blob chunks; the history document stays small."""
    output = "y" * (20 * 1024 * 1024)
    stored, _ = run(mongo.create_run(record(), []))
    big = Event(engine.STEP_SUCCEEDED, "s", 1, "a", {"outputs": {"o": output}, "path": "run"})
    run(mongo.append(stored.run_id, [big, log_event("small")], "running"))

    batch = db.events.find_one({"run_id": stored.run_id})
    assert len(bson.encode(batch)) < BATCH_INLINE_LIMIT_BYTES
    assert "blob" in batch["events"][0]
    assert batch["events"][1]["data"] == '{"level": "info", "message": "small"}'
    chunks = db.blobs.count_documents({"run_id": stored.run_id})
    assert chunks == batch["events"][0]["blob"]["chunks"] >= 20
    assert run(mongo.events(stored.run_id))[0].data["outputs"]["o"] == output


def test_damaged_out_of_line_data_is_reported_not_returned(
    mongo: MongoStore, db: Any, run: Run
) -> None:
    """A missing blob chunk makes events() fail with the run and seq, never return cut data."""
    stored, _ = run(mongo.create_run(record(), []))
    big = Event(engine.STEP_SUCCEEDED, "s", 1, "a", {"outputs": {"o": "z" * 3_000_000}})
    run(mongo.append(stored.run_id, [big], "running"))
    db.blobs.delete_one({"run_id": stored.run_id, "n": 1})

    with pytest.raises(StoreError, match=f"run {stored.run_id} event 1 is damaged"):
        run(mongo.events(stored.run_id))


def test_a_retried_write_is_recognised_as_already_there(
    mongo: MongoStore, db: Any, run: Run
) -> None:
    """A batch written again after a lost answer lands once; another writer's is not taken."""
    stored, _ = run(mongo.create_run(record(), [log_event("a")]))
    batch = {
        "_id": f"{stored.run_id}:{2:012d}",
        "run_id": stored.run_id,
        "first": 2,
        "last": 2,
        "status": "running",
        "time_ms": 1,
        "token": "ours",
        "events": [{"type": "step_log", "step_id": "", "attempt": 0, "agent": "", "data": "{}"}],
    }

    assert run(mongo._claim(dict(batch)))
    assert run(mongo._claim(dict(batch))), "the second try finds its own batch"
    assert not run(mongo._claim({**batch, "token": "theirs"}))
    assert db.events.count_documents({"run_id": stored.run_id}) == 2
    # the run record lags behind this hand-made batch; the next append numbers after it
    numbered = run(mongo.append(stored.run_id, [log_event("c")], "running"))
    assert [e.seq for e in numbered] == [3]


class _Writes(pymongo.monitoring.CommandListener):
    """The insert and update commands sent to one database while `watching` is set.

    pymongo registers listeners for the whole process, for every client made after:
    this one counts only while a test asks it to."""

    def __init__(self) -> None:
        self.database = ""
        self.commands: list[str] = []

    def started(self, event: Any) -> None:
        if event.database_name == self.database and event.command_name in ("insert", "update"):
            self.commands.append(event.command_name)

    def succeeded(self, event: Any) -> None:
        pass

    def failed(self, event: Any) -> None:
        pass


_WRITES = _Writes()
pymongo.monitoring.register(_WRITES)


def test_appends_to_many_runs_at_once_share_one_insert_and_land_in_order(
    mongo: MongoStore, db: Any, run: Run
) -> None:
    """Appends that wait together go in one insert of history batches and one update of
    runs; each run's history is numbered without a gap and its record follows it."""
    runs = [run(mongo.create_run(record(), [log_event("first")]))[0] for _ in range(30)]

    async def burst() -> list[list[Event]]:
        appends = [
            mongo.append(s.run_id, [log_event("a"), log_event("b")], "running") for s in runs
        ]
        return await asyncio.gather(*appends)

    _WRITES.database, _WRITES.commands = db.name, []
    try:
        appended = run(burst())
    finally:
        _WRITES.database = ""

    assert [[e.seq for e in events] for events in appended] == [[2, 3]] * len(runs)
    # the first append may go alone, the others wait for it and go together
    assert _WRITES.commands.count("insert") <= 2, _WRITES.commands
    assert _WRITES.commands.count("update") <= 2, _WRITES.commands
    for stored in runs:
        assert [b["first"] for b in db.events.find({"run_id": stored.run_id})] == [1, 2]
        assert db.runs.find_one({"_id": stored.run_id})["last_seq"] == 3


def test_a_seq_taken_by_another_writer_is_renumbered_after_it(
    mongo_uri: str, mongo: MongoStore, db: Any, run: Run
) -> None:
    """This store's idea of a run's last seq is only a guess: when another writer
    appended meanwhile, the batch goes after the newest one, with no gap and no overlap."""
    stored, _ = run(mongo.create_run(record(), [log_event("a")]))
    other = MongoStore(mongo_uri, wait_s=30)
    run(other.open())
    run(other.append(stored.run_id, [log_event("b"), log_event("c")], "running"))
    run(other.close())

    numbered = run(mongo.append(stored.run_id, [log_event("d")], "running"))

    assert [e.seq for e in numbered] == [4]
    history = run(mongo.events(stored.run_id))
    assert [(e.seq, e.data["message"]) for e in history] == [
        (1, "a"),
        (2, "b"),
        (3, "c"),
        (4, "d"),
    ]
    assert db.runs.find_one({"_id": stored.run_id})["last_seq"] == 4


def test_a_run_record_left_behind_by_a_crash_is_repaired(
    mongo: MongoStore, db: Any, run: Run
) -> None:
    """When a crash came between history and run record, the record follows the history."""
    stored, _ = run(mongo.create_run(record(), [log_event("a")]))
    run(mongo.append(stored.run_id, [log_event("b")], "running"))
    entries = [{"type": "run_succeeded", "step_id": "", "attempt": 0, "agent": "", "data": "{}"}]
    run(mongo._write_batch(stored.run_id, entries, "succeeded", 2, renumber=False))

    assert run(mongo.runs_with_status(["running"])) == []
    repaired = run(mongo.get_run(stored.run_id))
    assert (repaired.status, repaired.last_seq) == ("succeeded", 3)


def test_an_unreachable_database_at_start_gives_a_clear_error(run: Run) -> None:
    """open() retries with backoff for wait_s, then fails with one line naming the store."""
    uri = f"mongodb://user:secret@127.0.0.1:{free_port()}/wf"
    store = open_store(uri, wait_s=3)
    started = time.monotonic()

    with capture_logs() as logs, pytest.raises(StoreUnavailableError) as failure:
        run(store.open())
    run(store.close())

    assert 2.5 < time.monotonic() - started < 15
    message = str(failure.value)
    assert "\n" not in message
    assert "unreachable after 3s" in message
    assert "secret" not in message
    retries = [e for e in logs if e["event"] == "store_unavailable"]
    assert retries
    assert all("secret" not in e["store"] for e in retries)


def test_open_waits_for_a_database_that_comes_up_later(tmp_path: Path, run: Run) -> None:
    """A store opened before its database starts connects once the database is up."""
    server = SecantusServer(tmp_path / "late")

    async def scenario() -> None:
        store = open_store(server.uri(), wait_s=0)
        with capture_logs() as logs:
            opening = asyncio.create_task(store.open())
            await wait_until(
                lambda: any(e["event"] == "store_unavailable" for e in logs), 30, "a retry"
            )
            assert not opening.done()
            server.start(wait=False)
            await asyncio.wait_for(opening, 90)
        await store.close()

    try:
        run(scenario())
    finally:
        server.stop()


def test_a_database_killed_mid_run_loses_nothing_and_work_continues(
    tmp_path: Path, run: Run
) -> None:
    """With the database killed an append waits; back, it lands after the rest, none lost."""
    server = SecantusServer(tmp_path / "db")
    server.start()
    uri = server.uri(unique_database())

    async def scenario() -> tuple[str, list[Event]]:
        store = open_store(uri, wait_s=30)
        await store.open()
        stored, _ = await store.create_run(record(), [log_event("before-0")])
        await store.append(stored.run_id, [log_event("before-1")], "running")
        server.kill()
        with capture_logs() as logs:
            appending = asyncio.create_task(
                store.append(stored.run_id, [log_event("during")], "running")
            )
            await wait_until(
                lambda: any(e["event"] == "store_unavailable" for e in logs), 60, "an outage"
            )
            assert not appending.done()
            server.start(wait=False)
            numbered = await asyncio.wait_for(appending, 120)
            assert any(e["event"] == "store_recovered" for e in logs)
        assert [e.seq for e in numbered] == [3]
        await store.append(stored.run_id, [log_event("after")], "succeeded")
        history = await store.events(stored.run_id)
        await store.close()
        return stored.run_id, history

    try:
        run_id, history = run(scenario())
    finally:
        server.stop()

    assert [(e.seq, e.data["message"]) for e in history] == [
        (1, "before-0"),
        (2, "before-1"),
        (3, "during"),
        (4, "after"),
    ]
    assert run_id


def test_history_reads_span_many_batch_documents(
    mongo: MongoStore, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """events() reads history spread over more batch documents than one call fetches."""
    monkeypatch.setattr("workflowd.store.mongodb.READ_BATCHES", 3)
    stored, _ = run(mongo.create_run(record(), [log_event("0")]))
    for i in range(1, 20, 2):
        run(mongo.append(stored.run_id, [log_event(str(i)), log_event(str(i + 1))], "running"))

    assert [e.data["message"] for e in run(mongo.events(stored.run_id))] == [
        str(n) for n in range(21)
    ]
    assert [e.seq for e in run(mongo.events(stored.run_id, 4, 9))] == list(range(5, 14))


@pytest.mark.parametrize(
    "uri", ["mongodb://", "mongodb://127.0.0.1:notaport/db", "mongodb://h:1:2/db"]
)
def test_a_malformed_uri_is_refused_before_connecting(uri: str) -> None:
    """A MongoDB URI that cannot be parsed is a StoreError that names it."""
    with pytest.raises(StoreError, match="bad MongoDB store URI"):
        open_store(uri)
