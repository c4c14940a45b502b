"""The run state machine: what it dispatches, where, when it waits, fails and finishes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest

from workflowd import engine
from workflowd.definition import load
from workflowd.engine import (
    ACCEPT,
    COORDINATOR,
    DUPLICATE,
    FOREIGN,
    STALE,
    AgentView,
    Event,
    RunState,
    apply,
    decide,
    initial,
    judge,
    replay,
)


class Run:
    """A run driven the way the coordinator drives it: decide, number, apply."""

    def __init__(self, text: str, inputs: dict | None = None) -> None:
        workflow = load(text, "flow.yaml")
        self.start = initial("run-1", workflow, inputs or {}, workflow.config)
        self.state = self.start
        self.history: list[Event] = []

    def record(self, *events: Event) -> list[Event]:
        """Number events as the store does and apply them."""
        numbered = []
        for event in events:
            seq = len(self.history) + 1
            numbered.append(replace(event, seq=seq, time_ms=1000 * seq))
            self.history.append(numbered[-1])
            self.state = apply(self.state, numbered[-1])
        return numbered

    def decide(self, agents: Sequence[AgentView] = ()) -> list[Event]:
        return self.record(*decide(self.state, agents))

    def succeed(self, step_id: str, outputs: dict | None = None) -> None:
        step = self.state.step(step_id)
        self.record(
            Event(
                engine.STEP_SUCCEEDED,
                step_id,
                step.attempt,
                step.agent,
                data={"outputs": outputs or {}},
            )
        )

    def fail(self, step_id: str, message: str) -> None:
        step = self.state.step(step_id)
        self.record(
            Event(
                engine.STEP_FAILED,
                step_id,
                step.attempt,
                step.agent,
                data={"error": "task_error", "message": message},
            )
        )


def kinds(events: Sequence[Event]) -> list[tuple[str, str]]:
    return [(event.type, event.step_id) for event in events]


def agent(name: str, *plugins: str, running: int = 0, **labels: str) -> AgentView:
    return AgentView(name, labels, frozenset(plugins or ("noop",)), running)


SEQUENTIAL = """\
name: seq
steps:
  - {id: a, task: noop}
  - {id: b, task: noop}
  - {id: c, task: noop}
"""

PARALLEL = """\
name: par
steps:
  - {id: a, task: noop}
  - {id: b, task: noop, needs: []}
  - {id: c, task: noop, needs: []}
  - {id: d, task: noop, needs: [a, b, c]}
"""

ON_HOST_A = """\
name: remote
steps:
  - {id: a, task: noop, on: {agent: host-a}}
"""

ON_LABELS = """\
name: labelled
steps:
  - {id: a, task: noop, on: {labels: {role: storage}}}
"""


# ------------------------------------------------------------------ dispatch


def test_sequential_steps_dispatch_one_at_a_time_in_order():
    """Without needs each step is dispatched only after the previous one succeeded."""
    run = Run(SEQUENTIAL)

    assert kinds(run.decide()) == [("run_started", ""), ("step_dispatched", "a")]
    assert run.decide() == []
    run.succeed("a")
    assert kinds(run.decide()) == [("step_dispatched", "b")]
    assert run.decide() == []
    run.succeed("b")
    assert kinds(run.decide()) == [("step_dispatched", "c")]


def test_first_dispatch_is_attempt_one_on_the_coordinator():
    """A step without placement goes to the coordinator as attempt 1 with its task."""
    run = Run(SEQUENTIAL)

    dispatched = run.decide()[1]

    assert (dispatched.agent, dispatched.attempt) == (COORDINATOR, 1)
    assert dispatched.agent == "coordinator"
    assert dispatched.data == {"task": "noop", "params": {}, "final": True}
    assert run.state.step("a").status == "dispatched"
    assert run.state.status == "running"


def test_needs_empty_steps_dispatch_together():
    """Steps with needs: [] dispatch alongside the first; a join waits for all of them."""
    run = Run(PARALLEL)

    assert kinds(run.decide()) == [
        ("run_started", ""),
        ("step_dispatched", "a"),
        ("step_dispatched", "b"),
        ("step_dispatched", "c"),
    ]
    run.succeed("a")
    run.succeed("c")
    assert run.decide() == []
    run.succeed("b")
    assert kinds(run.decide()) == [("step_dispatched", "d")]


def test_absent_agent_makes_the_step_wait_once():
    """A step for an agent that is not connected waits with one event stating why."""
    run = Run(ON_HOST_A)

    events = run.decide([agent("host-b")])

    assert kinds(events) == [("run_started", ""), ("step_waiting", "a")]
    assert events[1].data == {"reason": "agent host-a is not connected"}
    assert run.state.step("a").status == "waiting"
    assert run.state.step("a").waiting_reason == "agent host-a is not connected"
    assert run.decide([agent("host-b")]) == []
    assert run.decide([]) == []


def test_waiting_step_dispatches_once_its_agent_connects():
    """The waiting step is sent to its agent as soon as that agent is in the view."""
    run = Run(ON_HOST_A)
    run.decide([])

    events = run.decide([agent("host-b"), agent("host-a")])

    assert kinds(events) == [("step_dispatched", "a")]
    assert (events[0].agent, events[0].attempt) == ("host-a", 1)
    assert run.state.step("a").waiting_reason == ""


def test_a_new_waiting_reason_is_recorded():
    """When the reason a step waits changes, a new waiting event says so."""
    run = Run(ON_HOST_A)
    run.decide([])

    events = run.decide([agent("host-a", "sleep")])

    assert kinds(events) == [("step_waiting", "a")]
    assert events[0].data == {"reason": "task noop is not available on host-a"}
    assert run.decide([agent("host-a", "sleep")]) == []


def test_labels_pick_a_matching_agent_with_the_plugin_and_the_least_load():
    """Labels placement skips agents with other labels or without the plugin; least load wins."""
    run = Run(ON_LABELS)
    agents = [
        agent("busy", running=3, role="storage"),
        agent("idle-other-role", role="compute"),
        agent("idle-no-plugin", "sleep", role="storage"),
        agent("light", running=1, role="storage", zone="x"),
    ]

    events = run.decide(agents)

    assert kinds(events) == [("run_started", ""), ("step_dispatched", "a")]
    assert events[1].agent == "light"


def test_labels_spread_parallel_steps_over_agents():
    """Steps dispatched together count against the load of the agent they were given."""
    run = Run(
        "name: x\nsteps:\n"
        + "".join(
            f"  - {{id: s{i}, task: noop, needs: [], on: {{labels: {{role: w}}}}}}\n"
            for i in range(4)
        )
    )

    events = run.decide([agent("w1", role="w"), agent("w2", running=1, role="w")])

    assert [e.agent for e in events if e.type == "step_dispatched"] == ["w1", "w1", "w2", "w1"]


def test_labels_with_no_matching_agent_wait():
    """With no agent carrying the labels, the step waits naming the labels."""
    run = Run(ON_LABELS)

    events = run.decide([agent("h", role="compute")])

    assert events[1].data == {"reason": "no connected agent has labels role=storage"}


def test_task_not_available_names_the_agents():
    """Matching agents without the plugin make the step wait naming the task and the agents."""
    run = Run(ON_LABELS)

    events = run.decide([agent("h2", "sleep", role="storage"), agent("h1", "x", role="storage")])

    assert events[1].data == {"reason": "task noop is not available on h1, h2"}


def test_coordinator_placement_needs_no_agent():
    """A coordinator step is dispatched to the coordinator even with no agent connected."""
    run = Run("name: x\nsteps:\n  - {id: a, task: noop, on: coordinator}\n")

    events = run.decide([])

    assert [(e.type, e.agent) for e in events] == [
        ("run_started", ""),
        ("step_dispatched", "coordinator"),
    ]


def test_params_are_rendered_from_earlier_outputs_at_dispatch():
    """Parameters are evaluated at dispatch from inputs, config, run and earlier outputs."""
    run = Run(
        "name: flow\ninputs:\n  who: {}\nconfig:\n  level: 2\nsteps:\n"
        "  - {id: a, task: noop}\n"
        "  - id: b\n    task: noop\n    with:\n"
        "      files: ${{ steps.a.outputs.files }}\n"
        "      text: '${{ inputs.who }} at ${{ config.level }}'\n"
        "      run: '${{ run.name }}/${{ run.id }}'\n",
        inputs={"who": "ops"},
    )
    run.decide()
    run.succeed("a", {"files": [1, 2, 3]})

    events = run.decide()

    assert events[0].data["params"] == {
        "files": [1, 2, 3],
        "text": "ops at 2",
        "run": "flow/run-1",
    }


def test_expression_error_at_dispatch_fails_the_step_then_the_run():
    """An output that is missing at dispatch fails the step with the expression, then the run."""
    run = Run(
        "name: x\nsteps:\n  - {id: a, task: noop}\n"
        "  - {id: b, task: noop, with: {p: '${{ steps.a.outputs.nope }}'}}\n"
    )
    run.decide()
    run.succeed("a", {"files": 1})

    failed = run.decide()

    assert kinds(failed) == [("step_failed", "b")]
    assert failed[0].data["error"] == "expression_error"
    assert "'steps.a.outputs.nope'" in failed[0].data["message"]
    assert run.state.step("b").status == "failed"
    finished = run.decide()
    assert kinds(finished) == [("run_failed", "")]
    assert finished[0].data == {
        "step_id": "b",
        "message": failed[0].data["message"],
        "failed": ["b"],
    }
    assert run.state.status == "failed"
    assert run.state.error == failed[0].data["message"]


def test_failed_step_fails_the_run_only_when_nothing_is_active():
    """After a failure the run waits for running steps, dispatches nothing new, then fails."""
    run = Run(PARALLEL)
    run.decide()
    run.fail("a", "disk full")

    assert run.decide() == []
    run.succeed("b")
    assert run.decide() == []
    run.succeed("c")
    events = run.decide()

    assert kinds(events) == [("run_failed", "")]
    assert events[0].data == {"step_id": "a", "message": "disk full", "failed": ["a"]}
    assert run.state.step("d").status == "pending"


def test_every_failed_step_is_listed():
    """When several steps failed the run names the first and lists all of them."""
    run = Run(PARALLEL)
    run.decide()
    run.fail("c", "third")
    run.fail("a", "first")
    run.succeed("b")

    events = run.decide()

    assert events[0].data == {"step_id": "a", "message": "first", "failed": ["a", "c"]}


def test_all_succeeded_finishes_the_run_exactly_once():
    """Once every step succeeded the run succeeds, and nothing follows."""
    run = Run(SEQUENTIAL)
    for step_id in ("a", "b", "c"):
        run.decide()
        run.succeed(step_id)

    assert kinds(run.decide()) == [("run_succeeded", "")]
    assert run.state.status == "succeeded"
    assert run.state.finished
    assert run.decide() == []
    assert [e.type for e in run.history].count("run_succeeded") == 1


def test_interrupted_step_returns_to_pending_and_runs_again():
    """An interrupted attempt puts the step back to pending; the next dispatch is attempt 2."""
    run = Run(ON_HOST_A)
    run.decide([agent("host-a")])
    run.record(Event(engine.STEP_INTERRUPTED, "a", 1, "host-a", {"reason": "agent left"}))

    assert run.state.step("a").status == "pending"
    assert run.state.step("a").error == "agent left"
    assert kinds(run.decide([])) == [("step_waiting", "a")]
    events = run.decide([agent("host-a")])
    assert [(e.type, e.attempt, e.agent) for e in events] == [("step_dispatched", 2, "host-a")]
    assert run.state.step("a").error == ""


# ------------------------------------------------------------------ judge


@pytest.fixture
def dispatched() -> Run:
    """A run whose only step was given to host-a as attempt 1."""
    run = Run(ON_HOST_A)
    run.decide([agent("host-a")])
    return run


def test_judge_accepts_the_awaited_attempt(dispatched):
    """A report about the dispatched attempt from its agent is accepted, also once started."""
    assert judge(dispatched.state, "host-a", "a", 1) == ACCEPT
    dispatched.record(Event(engine.STEP_STARTED, "a", 1, "host-a"))
    assert judge(dispatched.state, "host-a", "a", 1) == ACCEPT


def test_judge_duplicate_after_the_attempt_finished(dispatched):
    """A result re-sent for an attempt that already has one is a duplicate."""
    dispatched.succeed("a")

    assert judge(dispatched.state, "host-a", "a", 1) == DUPLICATE


def test_judge_stale_for_an_older_attempt(dispatched):
    """A report about an attempt superseded by a later one is stale."""
    dispatched.record(Event(engine.STEP_INTERRUPTED, "a", 1, "host-a", {"reason": "lost"}))
    dispatched.decide([agent("host-a")])

    assert judge(dispatched.state, "host-a", "a", 1) == STALE
    assert judge(dispatched.state, "host-a", "a", 2) == ACCEPT


def test_judge_stale_once_the_attempt_was_interrupted(dispatched):
    """A report about an interrupted attempt not yet replaced is stale."""
    dispatched.record(Event(engine.STEP_INTERRUPTED, "a", 1, "host-a", {"reason": "lost"}))

    assert judge(dispatched.state, "host-a", "a", 1) == STALE


@pytest.mark.parametrize(
    ("reporter", "step_id", "attempt"),
    [("host-b", "a", 1), ("host-a", "ghost", 1), ("host-a", "a", 2)],
    ids=["other agent", "unknown step", "future attempt"],
)
def test_judge_foreign(dispatched, reporter, step_id, attempt):
    """Reports the run never asked for are foreign."""
    assert judge(dispatched.state, reporter, step_id, attempt) == FOREIGN


# ------------------------------------------------------------------ apply / replay


def test_replay_equals_the_state_built_step_by_step():
    """Replaying a whole history from the start gives the state the run reached live."""
    run = Run(PARALLEL)
    run.decide()
    run.record(Event(engine.STEP_STARTED, "a", 1, COORDINATOR))
    run.record(Event(engine.STEP_PROGRESS, "a", 1, COORDINATOR, {"fraction": 0.5}))
    run.succeed("a", {"n": 1})
    run.fail("b", "broken")
    run.succeed("c")
    run.decide()

    replayed = replay(run.start, run.history)

    assert replayed == run.state
    assert replayed.status == "failed"
    assert replayed.last_seq == len(run.history)
    assert replayed.step("a").outputs == {"n": 1}
    assert replayed.step("a").finished_ms > replayed.step("a").started_ms > 0


def test_replay_in_two_halves_equals_replay_at_once():
    """Folding a history in parts gives the same state as folding it whole."""
    run = Run(SEQUENTIAL)
    for step_id in ("a", "b", "c"):
        run.decide()
        run.succeed(step_id, {"id": step_id})
    run.decide()
    half = len(run.history) // 2

    assert replay(replay(run.start, run.history[:half]), run.history[half:]) == replay(
        run.start, run.history
    )


def test_unknown_event_type_only_advances_last_seq():
    """An event type the engine does not know leaves the state as it was but for last_seq."""
    state: RunState = Run(SEQUENTIAL).start

    after = apply(state, Event("something_new", "a", seq=7))

    assert after == replace(state, last_seq=7)


def test_after_only_dispatches_deciding_again_adds_nothing() -> None:
    """A decision of dispatches alone leaves nothing to decide: the coordinator stops there."""
    run = Run(
        "name: w\nsteps:\n"
        "  - {id: a, task: noop, on: {labels: {role: web}}}\n"
        "  - {id: b, task: noop, on: {labels: {role: web}}, needs: []}\n"
        "  - {id: c, task: noop, on: {labels: {role: web}}}\n"
    )
    agents = [
        AgentView("w1", {"role": "web"}, frozenset({"noop"})),
        AgentView("w2", {"role": "web"}, frozenset({"noop"})),
    ]
    first = run.decide(agents)
    assert {e.type for e in first} <= engine.QUIESCENT
    assert decide(run.state, agents) == []
    run.succeed("a")
    run.succeed("b")
    then = run.decide(agents)
    assert [e.step_id for e in then] == ["c"]
    assert decide(run.state, agents) == []


def test_status_after_agrees_with_replay() -> None:
    """The run status the coordinator stores is the one the fold of the events gives."""
    run = Run("name: w\nsteps:\n  - {id: a, task: noop, on: {labels: {role: web}}}\n")
    agents = [AgentView("w1", {"role": "web"}, frozenset({"noop"}))]
    before = run.state
    run.decide(agents)
    run.succeed("a")
    run.decide(agents)
    assert engine.status_after(before.status, run.history) == replay(before, run.history).status
    assert run.state.status == engine.SUCCEEDED
