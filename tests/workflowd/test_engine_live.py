"""The engine's live-run decisions: fan-out, wait steps and signals, when, messages, config."""

from __future__ import annotations

from dataclasses import replace

from workflowd import engine
from workflowd.definition import load
from workflowd.engine import AgentView, Event, apply, decide, initial

WEB = [AgentView(f"web-{i}", {"role": "web"}, frozenset({"noop"})) for i in (1, 2, 3)]


class Driven:
    def __init__(self, text: str) -> None:
        workflow = load(text, "flow.yaml")
        self.state = initial("run-1", workflow, {"go": False}, workflow.config)
        self.seq = 0
        self.now_ms = 1_000

    def record(self, *events: Event) -> list[Event]:
        numbered = []
        for event in events:
            self.seq += 1
            numbered.append(replace(event, seq=self.seq, time_ms=self.now_ms))
            self.state = apply(self.state, numbered[-1])
        return numbered

    def decide(self, agents=WEB) -> list[Event]:
        return self.record(*decide(self.state, agents, self.now_ms))

    def finish(self, key: str, ok: bool = True, **data: object) -> None:
        step = self.state.step(key)
        kind = engine.STEP_SUCCEEDED if ok else engine.STEP_FAILED
        self.record(Event(kind, key, step.attempt, step.agent, data))


FAN = """
name: fan
steps:
  - id: roll
    task: noop
    on: {labels: {role: web}, all: true}
    strategy: {max_parallel: 2, max_failures: 0}
"""


def test_fan_out_snapshots_matching_agents_and_respects_max_parallel():
    """A fan-out step makes one instance per matching agent and runs at most max_parallel."""
    run = Driven(FAN)
    fanned = run.decide()
    assert [(e.type, e.data.get("agents")) for e in fanned][-1] == (
        "step_fanned_out",
        ["web-1", "web-2", "web-3"],
    )
    dispatched = run.decide()
    assert [(e.step_id, e.agent) for e in dispatched] == [
        ("roll[web-1]", "web-1"),
        ("roll[web-2]", "web-2"),
    ]
    run.finish("roll[web-1]", outputs={"url": "a"})
    assert [(e.step_id, e.agent) for e in run.decide()] == [("roll[web-3]", "web-3")]


def test_fan_out_outputs_are_keyed_by_agent():
    """When every instance succeeded the step succeeds with each instance's outputs by agent."""
    run = Driven(FAN.replace("max_parallel: 2", "max_parallel: 3"))
    run.decide()
    run.decide()
    for name in ("web-1", "web-2", "web-3"):
        run.finish(f"roll[{name}]", outputs={"host": name})
    settled = run.decide()
    assert settled[0].type == "step_succeeded"
    assert settled[0].data["outputs"] == {n: {"host": n} for n in ("web-1", "web-2", "web-3")}
    assert run.decide()[0].type == "run_succeeded"


def test_fan_out_stops_past_max_failures():
    """Past max_failures no new instance starts, and the step fails once active ones end."""
    run = Driven(FAN)
    run.decide()
    run.decide()
    run.finish("roll[web-1]", ok=False, message="broken", retryable=False)
    assert run.decide() == []  # web-2 still runs; web-3 must not start
    run.finish("roll[web-2]", outputs={})
    failed = run.decide()
    assert failed[0].type == "step_failed"
    assert "1 of 3 instances failed (max_failures 0): web-1: broken" in failed[0].data["message"]
    assert run.state.step("roll[web-3]").attempt == 0


def test_a_fan_out_instance_waits_for_its_own_agent_only():
    """An instance whose agent left waits for that agent; it never moves to another."""
    run = Driven(FAN.replace("max_parallel: 2", "max_parallel: 3"))
    run.decide()
    events = run.decide(agents=WEB[:2])
    waiting = [e for e in events if e.type == "step_waiting"]
    assert [(e.step_id, e.data["reason"]) for e in waiting] == [
        ("roll[web-3]", "agent web-3 is not connected")
    ]


GATE = """
name: gate
steps:
  - {id: approval, wait: {signal: approve, timeout: 60s}}
  - {id: after, task: noop, with: {who: "${{ steps.approval.outputs.by }}"}}
"""


def test_wait_step_waits_visibly_then_takes_the_signal_payload():
    """A wait step waits with a reason until its signal; the payload is its output."""
    run = Driven(GATE)
    assert [e.type for e in run.decide()] == ["run_started", "step_waiting"]
    assert run.state.step("approval").waiting_reason == "waiting for signal approve"
    assert run.decide() == []
    run.record(Event(engine.RUN_SIGNALLED, data={"name": "approve", "payload": {"by": "ann"}}))
    settled = run.decide()
    assert (settled[0].type, settled[0].data["outputs"]) == ("step_succeeded", {"by": "ann"})
    assert run.decide()[0].data["params"] == {"who": "ann"}


def test_a_signal_is_consumed_once():
    """Two wait steps for one signal need two signals: each signal releases one step."""
    run = Driven(
        "name: two\nsteps:\n  - {id: a, wait: {signal: go}}\n  - {id: b, wait: {signal: go}}\n"
    )
    run.record(Event(engine.RUN_SIGNALLED, data={"name": "go", "payload": 1}))
    run.decide()
    assert run.state.step("a").status == "succeeded"
    run.decide()
    assert run.state.step("b").status == "waiting"
    run.record(Event(engine.RUN_SIGNALLED, data={"name": "go", "payload": 2}))
    run.decide()
    assert run.state.step("b").outputs == {"payload": 2}


def test_wait_step_times_out():
    """Without its signal a wait step fails at its own timeout, not the agent wait limit."""
    run = Driven(GATE)
    run.decide()
    run.now_ms += 60_001
    failed = run.decide()
    assert (failed[0].type, failed[0].data["error"]) == ("step_failed", "signal_timeout")
    assert engine.next_wake_ms(Driven(GATE).state) is None


def test_when_false_skips_and_dependents_go_on():
    """A false condition skips the step; a step that needs it still runs."""
    run = Driven(
        "name: w\ninputs: {go: {type: boolean}}\nsteps:\n"
        "  - {id: maybe, task: noop, when: '${{ inputs.go }}'}\n  - {id: next, task: noop}\n"
    )
    events = run.decide()
    assert [e.type for e in events] == ["run_started", "step_skipped"]
    assert [e.step_id for e in run.decide()] == ["next"]


def test_messages_are_delivered_in_order_and_never_to_their_sender():
    """next_message skips the receiver's own messages and those it already has."""
    run = Driven("name: m\nsteps:\n  - {id: a, task: noop}\n  - {id: b, task: noop}\n")
    for sender, payload in (("a", 1), ("b", 2), ("a", 3)):
        run.record(Event(engine.STEP_MESSAGE, sender, 1, "x", {"topic": "t", "payload": payload}))
    assert engine.next_message(run.state, "t", "b", 0) == (1, 1)
    assert engine.next_message(run.state, "t", "b", 1) == (3, 3)
    assert engine.next_message(run.state, "t", "b", 3) is None
    assert engine.next_message(run.state, "t", "a", 0) == (2, 2)
    assert engine.next_message(run.state, "other", "a", 0) is None


def test_config_updates_change_what_later_dispatches_read():
    """A config update is part of the state; later dispatches render the new value."""
    run = Driven(
        "name: c\nconfig: {mode: old}\nsteps:\n"
        "  - {id: a, task: noop}\n  - {id: b, task: noop, with: {m: '${{ config.mode }}'}}\n"
    )
    run.decide()
    run.record(Event(engine.RUN_CONFIG_UPDATED, data={"config": {"mode": "new"}}))
    run.finish("a")
    assert run.decide()[0].data["params"] == {"m": "new"}


def test_outputs_set_while_running_join_the_final_outputs():
    """Outputs set during a step are kept and merged with what it returns."""
    run = Driven("name: o\nsteps:\n  - {id: a, task: noop}\n")
    run.decide()
    step = run.state.step("a")
    run.record(
        Event(engine.STEP_OUTPUT, "a", step.attempt, step.agent, {"name": "early", "value": 1})
    )
    run.finish("a", outputs={"late": 2})
    assert run.state.step("a").outputs == {"early": 1, "late": 2}
