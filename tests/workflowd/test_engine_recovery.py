"""The engine's recovery decisions: retries, timeouts, lost agents, waits, cancel, resume."""

from __future__ import annotations

from dataclasses import replace

import pytest

from workflowd import engine
from workflowd.definition import load
from workflowd.engine import AgentView, Event, Limits, ResumeError, apply, decide, initial

A = AgentView("a", {"role": "w"}, frozenset({"noop"}))
B = AgentView("b", {"role": "w"}, frozenset({"noop"}))
DEFAULT_LIMITS = Limits()


class Clocked:
    """A run driven with an explicit clock, numbering events as the store does."""

    def __init__(self, text: str) -> None:
        workflow = load(text, "flow.yaml")
        self.state = initial("run-1", workflow, {}, workflow.config)
        self.seq = 0
        self.now_ms = 1_000

    def record(self, *events: Event) -> list[Event]:
        numbered = []
        for event in events:
            self.seq += 1
            numbered.append(replace(event, seq=self.seq, time_ms=self.now_ms))
            self.state = apply(self.state, numbered[-1])
        return numbered

    def decide(self, agents=(A, B), lost=frozenset(), limits=DEFAULT_LIMITS) -> list[Event]:
        return self.record(*decide(self.state, agents, self.now_ms, lost, limits))

    def report(self, kind: str, step_id: str, **data: object) -> None:
        step = self.state.step(step_id)
        self.record(Event(kind, step_id, step.attempt, step.agent, data))

    def types(self, events: list[Event]) -> list[str]:
        return [e.type for e in events]


RETRYING = """
name: r
steps:
  - id: job
    task: noop
    on: {labels: {role: w}}
    retry: {attempts: 3, backoff: 2s, max_backoff: 5s}
"""


def test_a_retryable_failure_is_retried_after_a_backoff_on_another_agent():
    """A failed try waits out its backoff, then runs again, preferably on another agent."""
    run = Clocked(RETRYING)
    first = run.decide()[-1]
    assert (first.type, first.agent, first.attempt) == ("step_dispatched", "a", 1)
    run.report("step_failed", "job", error="task_error", message="boom", retryable=True)

    retry = run.decide()
    assert run.types(retry) == ["step_retrying"]
    delay_ms = int(retry[0].data["delay_s"] * 1000)
    assert 1_000 <= delay_ms <= 2_000
    assert run.decide() == []  # still backing off

    run.now_ms += delay_ms
    second = run.decide()
    assert [(e.type, e.agent, e.attempt) for e in second] == [("step_dispatched", "b", 2)]


def test_backoff_doubles_up_to_its_ceiling_and_is_reproducible():
    """Backoff grows 2s, 4s, then stops at max_backoff 5s, with jitter in the upper half."""
    step = load(RETRYING, "f").steps[0]
    delays = [engine.backoff_ms("run-1", step, tries) for tries in (1, 2, 3, 4)]
    assert 1_000 <= delays[0] <= 2_000
    assert 2_000 <= delays[1] <= 4_000
    assert 2_500 <= delays[2] <= 5_000
    assert 2_500 <= delays[3] <= 5_000
    assert delays == [engine.backoff_ms("run-1", step, tries) for tries in (1, 2, 3, 4)]


def test_the_last_try_fails_the_run_and_is_marked_final():
    """Once the attempts are used up the run fails; the last dispatch says it is the final one."""
    run = Clocked(RETRYING)
    for attempt in (1, 2, 3):
        dispatched = [e for e in run.decide() if e.type == "step_dispatched"]
        assert dispatched[0].data["final"] is (attempt == 3)
        run.report("step_failed", "job", error="task_error", message="boom", retryable=True)
        retry = run.decide()
        if attempt < 3:
            run.now_ms += int(retry[0].data["delay_s"] * 1000) + 1
    assert run.types(retry) == ["run_failed"]
    assert run.state.status == "failed"


def test_a_permanent_failure_is_not_retried():
    """A failure marked not retryable fails the run at once, whatever the policy."""
    run = Clocked(RETRYING)
    run.decide()
    run.report("step_failed", "job", error="invalid_params", message="bad", retryable=False)
    assert run.types(run.decide()) == ["run_failed"]


def test_a_timed_out_attempt_is_abandoned_and_then_retried():
    """Past its timeout an attempt fails as abandoned; its late result is then stale."""
    run = Clocked(RETRYING.replace("    retry:", "    timeout: 10s\n    retry:"))
    run.decide()
    run.now_ms += 10_001
    timed_out = run.decide()
    assert [(e.type, e.data["error"], e.data["abandon"]) for e in timed_out] == [
        ("step_failed", "timeout", True)
    ]
    assert engine.judge(run.state, "a", "job", 1) == engine.STALE
    assert run.types(run.decide()) == ["step_retrying"]


def test_attempts_on_a_lost_agent_fail_over():
    """An attempt on an agent declared lost fails as agent_lost and retries on a healthy one."""
    run = Clocked(RETRYING)
    run.decide()
    lost = run.decide(agents=(B,), lost=frozenset({"a"}))
    assert [(e.type, e.data["error"]) for e in lost] == [("step_failed", "agent_lost")]
    retry = run.decide(agents=(B,))
    run.now_ms += int(retry[0].data["delay_s"] * 1000)
    assert [(e.type, e.agent) for e in run.decide(agents=(B,))] == [("step_dispatched", "b")]


def test_waiting_too_long_for_an_agent_fails_the_step_resumably():
    """A step that waited past the limit for its agent fails, not retryable, and says why."""
    run = Clocked("name: w\nsteps:\n  - {id: job, task: noop, on: {agent: gone}}\n")
    limits = Limits(agent_wait_ms=60_000)
    assert run.types(run.decide(limits=limits)) == ["run_started", "step_waiting"]
    run.now_ms += 60_001
    failed = run.decide(limits=limits)
    assert failed[0].data["error"] == "agent_unavailable"
    assert "agent gone is not connected" in failed[0].data["message"]
    assert run.types(run.decide(limits=limits)) == ["run_failed"]


def test_cancel_stops_dispatching_and_ends_when_nothing_runs():
    """After a cancel request nothing new starts; the run is cancelled once active steps end."""
    run = Clocked("name: c\nsteps:\n  - {id: one, task: noop}\n  - {id: two, task: noop}\n")
    run.decide()
    run.record(Event(engine.RUN_CANCEL_REQUESTED, data={"reason": "stop"}))
    assert run.decide() == []  # step one still runs
    run.report("step_failed", "one", error="cancelled", message="cancelled")
    assert run.types(run.decide()) == ["run_cancelled"]
    assert run.state.step("two").attempt == 0


def test_an_interrupted_attempt_does_not_use_up_a_try():
    """An interruption returns the step to pending without counting against its retries."""
    run = Clocked(RETRYING)
    run.decide()
    run.report("step_interrupted", "job", reason="agent restarted")
    assert run.state.step("job").tries == 0
    assert run.decide()[0].attempt == 2


def test_resume_plan_keeps_finished_steps_and_from_reruns_dependents():
    """resume reruns unfinished steps; --from adds the step and everything that depends on it."""
    run = Clocked(
        "name: p\nsteps:\n  - {id: one, task: noop}\n  - {id: two, task: noop}\n"
        "  - {id: side, task: noop, needs: [one]}\n  - {id: three, task: noop, needs: [two]}\n"
    )
    run.decide()
    run.report("step_succeeded", "one")
    run.decide()
    run.report("step_succeeded", "two")
    run.report("step_succeeded", "side")
    run.decide()
    run.report("step_failed", "three", error="task_error", message="no")
    run.decide()
    assert run.state.status == "failed"

    assert engine.resume_plan(run.state) == ["three"]
    assert engine.resume_plan(run.state, "two") == ["two", "three"]
    run.record(Event(engine.RUN_RESUMED, data={"rerun": ["two", "three"]}))
    assert run.state.status == "running"
    assert run.state.step("two").status == "pending"
    assert run.state.step("two").attempt == 1  # numbering goes on, never reused
    assert run.state.step("one").status == "succeeded"


@pytest.mark.parametrize(
    ("status", "from_step", "message"),
    [
        ("running", "", "is still running; cancel it first"),
        ("succeeded", "", "nothing to resume"),
        ("failed", "ghost", "has no step 'ghost'"),
    ],
)
def test_resume_plan_refusals(status, from_step, message):
    """resume refuses running runs, succeeded runs without --from, and unknown steps."""
    run = Clocked("name: x\nsteps:\n  - {id: one, task: noop}\n")
    run.state = replace(run.state, status=status)
    with pytest.raises(ResumeError, match=message):
        engine.resume_plan(run.state, from_step)


def test_next_wake_is_the_earliest_deadline():
    """next_wake_ms names the time of the next timeout, backoff end or waiting limit."""
    run = Clocked(RETRYING.replace("    retry:", "    timeout: 30s\n    retry:"))
    assert engine.next_wake_ms(run.state) is None
    run.decide()
    assert engine.next_wake_ms(run.state) == run.now_ms + 30_001
