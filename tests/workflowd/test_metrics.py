"""The coordinator's metrics, fed from its commit path, read as a scrape would read them."""

from __future__ import annotations

import pytest

from workflowd import definition, engine
from workflowd.engine import Event
from workflowd.metrics import CoordinatorMetrics, split_address

FLOW = """
name: counted
steps:
  - id: hash
    task: files.manifest
    on: {agent: host-a}
    with: {path: /srv}
  - id: done
    task: noop
"""


def value(metrics: CoordinatorMetrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def commit(metrics: CoordinatorMetrics, state: engine.RunState, *events: Event):
    """Number and apply events as the store and the coordinator would, and count them."""
    numbered = [
        Event(e.type, e.step_id, e.attempt, e.agent, e.data, state.last_seq + i + 1, e.time_ms)
        for i, e in enumerate(events)
    ]
    after = engine.replay(state, numbered)
    metrics.committed(state, after, numbered)
    return after


@pytest.fixture
def state() -> engine.RunState:
    return engine.initial("r1", definition.load(FLOW, "counted.yaml"), {}, {})


def test_step_outcomes_are_counted_by_task(state):
    """Dispatches, starts, successes and failures are counted per task, durations observed."""
    metrics = CoordinatorMetrics()

    state = commit(metrics, state, Event(engine.RUN_STARTED, time_ms=1_000))
    state = commit(
        metrics, state, Event(engine.STEP_DISPATCHED, "hash", 1, "host-a", {}, 0, 1_000)
    )
    state = commit(metrics, state, Event(engine.STEP_STARTED, "hash", 1, "host-a", {}, 0, 1_100))
    failed = {"error": "task_error", "message": "no /srv"}
    state = commit(
        metrics, state, Event(engine.STEP_FAILED, "hash", 1, "host-a", failed, 0, 3_500)
    )

    assert value(metrics, "workflowd_steps_dispatched_total", task="files.manifest") == 1
    assert value(metrics, "workflowd_steps_started_total", task="files.manifest") == 1
    assert (
        value(metrics, "workflowd_steps_failed_total", task="files.manifest", error="task_error")
        == 1
    )
    duration = {"task": "files.manifest", "outcome": "failed"}
    assert value(metrics, "workflowd_step_duration_seconds_sum", **duration) == 2.5
    assert value(metrics, "workflowd_step_duration_seconds_count", **duration) == 1


def test_a_finished_run_is_counted_once(state):
    """A run is counted by its final state when it ends, and not again after."""
    metrics = CoordinatorMetrics()

    state = commit(metrics, state, Event(engine.RUN_STARTED, time_ms=1_000))
    state = commit(metrics, state, Event(engine.RUN_SUCCEEDED, time_ms=2_000))
    commit(metrics, state, Event(engine.STEP_LOG, "hash", 1, "host-a", {"message": "late"}))

    assert value(metrics, "workflowd_runs_finished_total", state="succeeded") == 1
    assert value(metrics, "workflowd_runs_finished_total", state="failed") == 0


def test_unknown_failure_kinds_cannot_mint_labels(state):
    """A failure kind the product does not know (a rogue agent's) is counted as "other"."""
    metrics = CoordinatorMetrics()
    state = commit(metrics, state, Event(engine.STEP_DISPATCHED, "hash", 1, "host-a", {}, 0, 1))

    commit(metrics, state, Event(engine.STEP_FAILED, "hash", 1, "host-a", {"error": "x" * 99}))

    assert (
        value(metrics, "workflowd_steps_failed_total", task="files.manifest", error="other") == 1
    )


def test_runs_and_agents_are_read_when_scraped():
    """The gauges of unfinished runs and connected agents ask the coordinator at scrape time."""
    metrics = CoordinatorMetrics()
    runs = ["running", "running", "pending"]
    agents = [3]
    metrics.track(lambda: runs, lambda: agents[0])

    assert value(metrics, "workflowd_runs", state="running") == 2
    assert value(metrics, "workflowd_runs", state="pending") == 1
    assert value(metrics, "workflowd_agents_connected") == 3
    runs.clear()
    agents[0] = 0
    assert value(metrics, "workflowd_runs", state="running") == 0
    assert value(metrics, "workflowd_agents_connected") == 0


def test_reconnects_are_told_from_first_connections():
    """An agent seen before counts as a reconnect."""
    metrics = CoordinatorMetrics()

    metrics.agent_connected(reconnect=False)
    metrics.agent_connected(reconnect=True)
    metrics.agent_connected(reconnect=True)

    assert value(metrics, "workflowd_agent_connects_total", kind="first") == 1
    assert value(metrics, "workflowd_agent_connects_total", kind="reconnect") == 2


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:9471", ("127.0.0.1", 9471)),
        (":9471", ("0.0.0.0", 9471)),  # noqa: S104 - the address under test
        ("[::1]:9471", ("::1", 9471)),
    ],
)
def test_split_address(address, expected):
    """HOST:PORT, :PORT and [V6]:PORT are understood."""
    assert split_address(address) == expected


@pytest.mark.parametrize("address", ["9471", "host:", "host:port"])
def test_split_address_refuses_nonsense(address):
    """Anything but HOST:PORT with a numeric port is refused."""
    with pytest.raises(ValueError, match="is not HOST:PORT"):
        split_address(address)
