"""The store contract: what the coordinator relies on, checked on SQLite and on MongoDB alike."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.workflowd.store.conftest import Run
from workflowd import engine
from workflowd.coordinator import Coordinator
from workflowd.dispatch import AgentSession
from workflowd.engine import Event
from workflowd.errors import StoreError
from workflowd.rpc import workflow_pb2 as pb
from workflowd.store import AgentRecord, RunRecord, Store
from workflowd.store.base import new_run_id, now_ms


def record(key: str = "", name: str = "flow", run_id: str = "") -> RunRecord:
    return RunRecord(
        run_id=run_id or new_run_id(),
        name=name,
        source="name: flow\nsteps: []\n",
        filename="flow.yaml",
        inputs={"path": "/srv/data", "count": 3},
        config={"tolerance": 0},
        idempotency_key=key,
    )


def log_event(text: str, step_id: str = "s") -> Event:
    return Event(engine.STEP_LOG, step_id, 1, "host-a", {"level": "info", "message": text})


def test_a_new_run_is_stored_with_its_first_events_numbered_from_one(
    store: Store, run: Run
) -> None:
    """create_run stores the run and numbers its first events 1..n."""
    submitted = Event(engine.RUN_SUBMITTED, data={"name": "flow", "inputs": {}})
    stored, created = run(store.create_run(record(), [submitted, log_event("hello")]))

    assert created
    assert stored.last_seq == 2
    assert stored.status == "pending"
    again = run(store.get_run(stored.run_id))
    assert again == stored
    assert again.inputs == {"path": "/srv/data", "count": 3}
    history = run(store.events(stored.run_id))
    assert [(e.seq, e.type) for e in history] == [(1, "run_submitted"), (2, "step_log")]
    assert history[1].data == {"level": "info", "message": "hello"}
    assert history[0].time_ms > 0


def test_an_idempotency_key_returns_the_earlier_run_and_writes_nothing(
    store: Store, run: Run
) -> None:
    """A second create_run with a key that an earlier run holds returns that run, unchanged."""
    first, created = run(store.create_run(record("k-1"), [log_event("one")]))
    second_id = new_run_id()
    again, created_again = run(store.create_run(record("k-1", run_id=second_id), [log_event("2")]))

    assert created
    assert not created_again
    assert again.run_id == first.run_id
    assert run(store.get_run(second_id)) is None
    assert run(store.events(second_id)) == []
    assert [e.data["message"] for e in run(store.events(first.run_id))] == ["one"]


def test_concurrent_submits_with_one_key_make_one_run(store: Store, run: Run) -> None:
    """Submits racing with the same idempotency key all get the same single run."""

    async def race() -> list[tuple[RunRecord, bool]]:
        return await asyncio.gather(
            *(store.create_run(record("same"), [log_event(str(i))]) for i in range(6))
        )

    results = run(race())

    assert sum(created for _, created in results) == 1
    assert len({stored.run_id for stored, _ in results}) == 1
    assert len(run(store.list_runs(100))) == 1


def test_append_numbers_events_after_the_last_and_sets_the_status(store: Store, run: Run) -> None:
    """append continues the numbering, returns the events numbered, and records the status."""
    stored, _ = run(store.create_run(record(), [log_event("a")]))
    numbered = run(store.append(stored.run_id, [log_event("b"), log_event("c")], "running"))

    assert [(e.seq, e.data["message"]) for e in numbered] == [(2, "b"), (3, "c")]
    assert all(e.time_ms > 0 for e in numbered)
    after = run(store.get_run(stored.run_id))
    assert (after.status, after.last_seq) == ("running", 3)
    assert after.updated_ms >= stored.updated_ms
    assert run(store.events(stored.run_id)) == [run(store.events(stored.run_id))[0], *numbered]


def test_append_to_an_unknown_run_is_refused(store: Store, run: Run) -> None:
    """Appending to a run that does not exist raises StoreError and creates nothing."""
    with pytest.raises(StoreError):
        run(store.append("0000000000nosuchrun", [log_event("x")], "running"))
    assert run(store.get_run("0000000000nosuchrun")) is None


def test_concurrent_appends_to_one_run_leave_no_gap_and_no_duplicate(
    open_one: Callable[[], Store], run: Run
) -> None:
    """Appends racing on one run, through two store handles, number 1..n once each."""
    first, second = open_one(), open_one()
    stored, _ = run(first.create_run(record(), [log_event("start")]))

    async def race() -> list[list[Event]]:
        calls = [
            (first if i % 2 else second).append(
                stored.run_id, [log_event(f"{i}.{j}") for j in range(1 + i % 3)], "running"
            )
            for i in range(24)
        ]
        return await asyncio.gather(*calls)

    batches = run(race())
    history = run(first.events(stored.run_id, 0, 10_000))

    assert [e.seq for e in history] == list(range(1, len(history) + 1))
    assert len(history) == 1 + sum(1 + i % 3 for i in range(24))
    by_seq = {e.seq: e.data["message"] for e in history}
    for batch in batches:
        seqs = [e.seq for e in batch]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a batch stays together"
        assert all(by_seq[e.seq] == e.data["message"] for e in batch)
    assert run(second.get_run(stored.run_id)).last_seq == len(history)


def test_history_is_read_from_any_sequence_number_in_pages(store: Store, run: Run) -> None:
    """events(after_seq, limit) returns the events after that number, in order, at most limit."""
    stored, _ = run(store.create_run(record(), [log_event("0")]))
    for i in range(1, 40, 3):
        run(store.append(stored.run_id, [log_event(str(n)) for n in range(i, i + 3)], "running"))

    assert [e.seq for e in run(store.events(stored.run_id, 17, 5))] == [18, 19, 20, 21, 22]
    assert run(store.events(stored.run_id, 40)) == []
    paged, after = [], 0
    while batch := run(store.events(stored.run_id, after, 4)):
        assert len(batch) <= 4
        paged.extend(batch)
        after = batch[-1].seq
    assert [e.data["message"] for e in paged] == [str(n) for n in range(40)]
    assert [e.seq for e in paged] == list(range(1, 41))


def test_user_data_round_trips_exactly(store: Store, run: Run) -> None:
    """Keys with $ and dots, big integers, unicode and nesting come back as they went in."""
    data = {
        "outputs": {
            "$schema": "x",
            "a.b": {"$ref": [1, 2.5, None, True]},
            "big": 2**70,
            "text": "naïve ✓ \u0000 end",
            "empty": {},
        },
        "path": "run",
    }
    stored, _ = run(store.create_run(record(), []))
    run(store.append(stored.run_id, [Event(engine.STEP_SUCCEEDED, "s", 1, "a", data)], "running"))

    assert run(store.events(stored.run_id))[0].data == data


def test_a_20_mb_output_and_a_large_log_round_trip_intact(store: Store, run: Run) -> None:
    """A step output of 20 MB and a 3 MB log line are stored and read back byte for byte."""
    output = os.urandom(10 * 1024 * 1024).hex()
    line = "x" * (3 * 1024 * 1024)
    stored, _ = run(store.create_run(record(), [log_event("small")]))
    events = [
        Event(engine.STEP_SUCCEEDED, "big", 1, "a", {"outputs": {"blob": output}, "path": "run"}),
        log_event(line),
        log_event("after"),
    ]
    run(store.append(stored.run_id, events, "running"))

    history = run(store.events(stored.run_id))
    assert [e.seq for e in history] == [1, 2, 3, 4]
    assert history[1].data["outputs"]["blob"] == output
    assert history[2].data["message"] == line
    assert history[3].data["message"] == "after"
    assert [e.seq for e in run(store.events(stored.run_id, 2, 1))] == [3]


def test_list_pages_back_through_runs_newest_first(store: Store, run: Run) -> None:
    """list_runs returns the newest runs first and before_run_id pages back through all."""
    ids = []
    for i in range(23):
        stored, _ = run(store.create_run(record(run_id=f"{i:012x}aaaaaaaa"), []))
        ids.append(stored.run_id)

    first = run(store.list_runs(10))
    assert [r.run_id for r in first] == ids[::-1][:10]
    seen, before = [], ""
    while page := run(store.list_runs(10, before)):
        seen.extend(r.run_id for r in page)
        before = page[-1].run_id
    assert seen == ids[::-1]


def test_runs_with_status_finds_exactly_those(store: Store, run: Run) -> None:
    """runs_with_status returns the runs in the given statuses, by run id."""
    statuses = ["running", "succeeded", "pending", "running", "failed"]
    ids = []
    for status in statuses:
        stored, _ = run(store.create_run(record(), [log_event("x")]))
        run(store.append(stored.run_id, [log_event("y")], status))
        ids.append(stored.run_id)

    found = run(store.runs_with_status(["pending", "running"]))
    assert [r.run_id for r in found] == sorted(
        run_id for run_id, s in zip(ids, statuses, strict=True) if s in ("pending", "running")
    )
    assert {r.status for r in found} == {"pending", "running"}
    assert run(store.runs_with_status(["cancelled"])) == []


def test_prune_removes_only_old_finished_runs_with_their_history(store: Store, run: Run) -> None:
    """prune drops finished runs older than the cutoff, history included, and keeps the rest."""
    made = {}
    for status in ("succeeded", "failed", "cancelled", "running", "pending"):
        stored, _ = run(store.create_run(record(), [log_event("x" * 100_000)]))
        run(store.append(stored.run_id, [log_event("y")], status))
        made[status] = stored.run_id
    cutoff = now_ms() + 1
    late, _ = run(store.create_run(record(), [log_event("late")]))
    run(store.append(late.run_id, [log_event("done")], "succeeded"))
    run(store.append(late.run_id, [], "succeeded"))

    assert run(store.prune(cutoff)) == 3
    for status in ("succeeded", "failed", "cancelled"):
        assert run(store.get_run(made[status])) is None
        assert run(store.events(made[status])) == []
    for status in ("running", "pending"):
        assert run(store.get_run(made[status])).status == status
        assert len(run(store.events(made[status]))) == 2
    assert run(store.get_run(late.run_id)).status == "succeeded"
    assert run(store.prune(cutoff)) == 0


def test_agents_are_saved_replaced_and_marked(store: Store, run: Run) -> None:
    """save_agent upserts by name, set_agent_connected flips the flag, agents() sorts by name."""
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$defs": {"a.b": {}}}
    run(store.save_agent(AgentRecord("web-1", {"role": "web"}, {"noop": schema}, "1.0", True)))
    run(store.save_agent(AgentRecord("db-1", {}, {}, "1.0", True)))
    run(store.save_agent(AgentRecord("web-1", {"role": "web", "zone": "b"}, {}, "1.1", True)))
    run(store.set_agent_connected("db-1", False))

    agents = run(store.agents())
    assert [a.name for a in agents] == ["db-1", "web-1"]
    assert not agents[0].connected
    assert agents[0].last_seen_ms > 0
    assert agents[1].labels == {"role": "web", "zone": "b"}
    assert agents[1].version == "1.1"
    run(store.save_agent(AgentRecord("x", {}, {"noop": schema}, "1", True)))
    assert run(store.agents())[-1].plugins == {"noop": schema}


FLOW = """
name: once
steps:
  - id: only
    task: noop
    on: {agent: a}
"""


def test_a_hello_racing_a_result_does_not_undo_it(store: Store, run: Run, tmp_path: Path) -> None:
    """An agent's hello (it reconnected) that arrives while its result is being stored
    does not mark the finished attempt interrupted, nor make the step run again."""

    async def scenario() -> str:
        coordinator = Coordinator(store, {}, scratch_root=tmp_path)
        await coordinator.start()
        first = AgentSession("a", {}, {"noop": pb.PluginInfo(name="noop")}, "test")
        coordinator.agents.add(first)
        run_id, _ = await coordinator.submit(FLOW, "flow.yaml", {})
        result = Event(engine.STEP_SUCCEEDED, "only", 1, "a", {"outputs": {}, "path": "run"})
        again = AgentSession("a", {}, {"noop": pb.PluginInfo(name="noop")}, "test")
        await asyncio.gather(
            coordinator.report("a", run_id, result, implies_started=True),
            coordinator.agent_connected(again, pb.Hello(name="a")),
        )
        await coordinator.stop()
        return run_id

    run_id = run(scenario())

    types = [e.type for e in run(store.events(run_id))]
    assert engine.STEP_INTERRUPTED not in types
    assert types.count(engine.STEP_DISPATCHED) == 1
    assert types[-1] == engine.RUN_SUCCEEDED


def test_a_result_that_stands_for_its_start_is_stored_after_that_start(
    store: Store, run: Run, tmp_path: Path
) -> None:
    """A short step's agent sends only the result; the history still says it started."""

    async def scenario() -> str:
        coordinator = Coordinator(store, {}, scratch_root=tmp_path)
        coordinator.agents.add(AgentSession("a", {}, {"noop": pb.PluginInfo(name="noop")}, "test"))
        run_id, _ = await coordinator.submit(FLOW, "flow.yaml", {})
        result = Event(engine.STEP_SUCCEEDED, "only", 1, "a", {"outputs": {}, "path": "run"})
        assert await coordinator.report("a", run_id, result, implies_started=True) == "accept"
        await coordinator.stop()
        return run_id

    run_id = run(scenario())

    types = [e.type for e in run(store.events(run_id))]
    assert types == [
        engine.RUN_SUBMITTED,
        engine.RUN_STARTED,
        engine.STEP_DISPATCHED,
        engine.STEP_STARTED,
        engine.STEP_SUCCEEDED,
        engine.RUN_SUCCEEDED,
    ]


def test_a_result_reported_twice_is_recorded_once(store: Store, run: Run, tmp_path: Path) -> None:
    """A step result that arrives again (re-sent after a reconnect) is not stored twice."""

    async def scenario() -> tuple[str, str, str]:
        coordinator = Coordinator(store, {}, scratch_root=tmp_path)
        coordinator.agents.add(AgentSession("a", {}, {"noop": pb.PluginInfo(name="noop")}, "test"))
        run_id, _ = await coordinator.submit(FLOW, "flow.yaml", {})
        await coordinator.report("a", run_id, Event(engine.STEP_STARTED, "only", 1, "a"))
        result = Event(engine.STEP_SUCCEEDED, "only", 1, "a", {"outputs": {}, "path": "run"})
        first = await coordinator.report("a", run_id, result)
        second = await coordinator.report("a", run_id, result)
        await coordinator.stop()
        return run_id, first, second

    run_id, first, second = run(scenario())

    assert first == engine.ACCEPT
    assert second in (engine.DUPLICATE, engine.STALE)
    history = run(store.events(run_id))
    assert [e.type for e in history].count(engine.STEP_SUCCEEDED) == 1
    assert history[-1].type == engine.RUN_SUCCEEDED
    assert run(store.get_run(run_id)).status == "succeeded"
