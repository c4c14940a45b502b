"""The run state machine: pure decisions over a run's event history, no I/O.

A run's state is the fold of its events (`apply`). `decide` looks at a state,
the agents connected now, the time, and which agents have gone silent, and
returns the events that should happen next: dispatching ready steps, giving
up on attempts that timed out or whose agent is lost, scheduling retries,
recording why a step waits, finishing the run. The coordinator stores those
events, applies them, and carries out their effects. `judge` tells whether a
report from an agent belongs to the attempt the run is waiting for, and
`resume_plan` which steps a resume runs again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from workflowd import expressions
from workflowd.definition import Step, Workflow
from workflowd.errors import WorkflowError
from workflowd.events import (  # noqa: F401 - the engine's vocabulary, re-exported
    CANCELLED,
    COORDINATOR,
    DISPATCHED,
    FAILED,
    PENDING,
    RUN_CANCEL_REQUESTED,
    RUN_CANCELLED,
    RUN_FAILED,
    RUN_FINISHED,
    RUN_RESUMED,
    RUN_STARTED,
    RUN_SUBMITTED,
    RUN_SUCCEEDED,
    RUN_TERMINAL_EVENTS,
    RUNNING,
    STEP_ACTIVE,
    STEP_DISPATCHED,
    STEP_FAILED,
    STEP_FINISHED,
    STEP_INTERRUPTED,
    STEP_LOG,
    STEP_PROGRESS,
    STEP_RETRYING,
    STEP_STARTED,
    STEP_SUCCEEDED,
    STEP_WAITING,
    SUCCEEDED,
    WAITING,
    Event,
)


@dataclass(frozen=True)
class StepState:
    status: str = PENDING
    attempt: int = 0  # the latest attempt's number; never reused within a run
    tries: int = 0  # attempts counted against the retry policy since the last resume
    agent: str = ""
    outputs: Mapping[str, Any] | None = None
    path: str = ""  # "check" when the step was found already done, "run" otherwise
    error: str = ""
    retryable: bool = False
    abandoned: bool = False  # the coordinator gave up on the attempt (timeout, lost agent)
    failed_on: tuple[str, ...] = ()
    waiting_reason: str = ""
    waiting_since_ms: int = 0
    not_before_ms: int = 0
    started_ms: int = 0
    finished_ms: int = 0


@dataclass(frozen=True)
class RunState:
    run_id: str
    workflow: Workflow
    inputs: Mapping[str, Any]
    config: Mapping[str, Any]
    status: str = PENDING
    steps: Mapping[str, StepState] = field(default_factory=dict)
    error: str = ""
    cancel_requested: bool = False
    last_seq: int = 0

    def step(self, step_id: str) -> StepState:
        return self.steps.get(step_id, StepState())

    @property
    def finished(self) -> bool:
        return self.status in RUN_FINISHED

    def active(self) -> list[str]:
        return [s.id for s in self.workflow.steps if self.step(s.id).status in STEP_ACTIVE]


@dataclass(frozen=True)
class AgentView:
    """What the engine needs to know of a connected agent."""

    name: str
    labels: Mapping[str, str]
    plugins: frozenset[str]
    running: int = 0


@dataclass(frozen=True)
class Limits:
    """How long the engine waits before giving up on an absent agent."""

    agent_wait_ms: int = 3_600_000


class ResumeError(WorkflowError):
    code = "cannot_resume"


def initial(
    run_id: str, workflow: Workflow, inputs: Mapping[str, Any], config: Mapping[str, Any]
) -> RunState:
    return RunState(run_id, workflow, dict(inputs), dict(config))


# ------------------------------------------------------------------ apply


def _with_step(state: RunState, step_id: str, **changes: Any) -> RunState:
    steps = dict(state.steps)
    steps[step_id] = replace(state.step(step_id), **changes)
    return replace(state, steps=steps)


def _apply_run(state: RunState, event: Event) -> RunState:
    kind, data = event.type, event.data
    if kind == RUN_STARTED:
        return replace(state, status=RUNNING)
    if kind == RUN_SUCCEEDED:
        return replace(state, status=SUCCEEDED, error="")
    if kind == RUN_FAILED:
        return replace(state, status=FAILED, error=str(data.get("message", "")))
    if kind == RUN_CANCEL_REQUESTED:
        return replace(state, cancel_requested=True)
    if kind == RUN_CANCELLED:
        reason = str(data.get("reason", "")) or "cancelled"
        return replace(state, status=CANCELLED, error=reason)
    if kind == RUN_RESUMED:
        steps = dict(state.steps)
        for step_id in data.get("rerun", []):
            steps[step_id] = StepState(attempt=state.step(step_id).attempt)
        return replace(state, status=RUNNING, error="", cancel_requested=False, steps=steps)
    return state


def _apply_step(state: RunState, event: Event) -> RunState:
    kind, data, step_id = event.type, event.data, event.step_id
    current = state.step(step_id)
    if kind == STEP_WAITING:
        since = current.waiting_since_ms if current.status == WAITING else event.time_ms
        return _with_step(
            state,
            step_id,
            status=WAITING,
            waiting_reason=str(data.get("reason", "")),
            waiting_since_ms=since,
        )
    if kind == STEP_DISPATCHED:
        return _with_step(
            state,
            step_id,
            status=DISPATCHED,
            attempt=event.attempt,
            tries=current.tries + 1,
            agent=event.agent,
            waiting_reason="",
            waiting_since_ms=0,
            not_before_ms=0,
            error="",
            retryable=False,
            abandoned=False,
            outputs=None,
            started_ms=event.time_ms,
            finished_ms=0,
        )
    if kind == STEP_STARTED:
        return _with_step(state, step_id, status=RUNNING)
    if kind == STEP_SUCCEEDED:
        return _with_step(
            state,
            step_id,
            status=SUCCEEDED,
            outputs=dict(data.get("outputs", {})),
            path=str(data.get("path", "run")),
            finished_ms=event.time_ms,
        )
    if kind == STEP_FAILED:
        failed_on = current.failed_on
        if event.agent and event.agent != COORDINATOR:
            failed_on = (*failed_on, event.agent)
        return _with_step(
            state,
            step_id,
            status=FAILED,
            error=str(data.get("message", "")),
            retryable=bool(data.get("retryable", False)),
            abandoned=bool(data.get("abandon", False)),
            failed_on=failed_on,
            finished_ms=event.time_ms,
        )
    if kind == STEP_RETRYING:
        return _with_step(
            state, step_id, status=PENDING, not_before_ms=int(data.get("not_before_ms", 0))
        )
    if kind == STEP_INTERRUPTED:
        return _with_step(
            state,
            step_id,
            status=PENDING,
            tries=max(current.tries - 1, 0),
            error=str(data.get("reason", "")),
        )
    return state


def apply(state: RunState, event: Event) -> RunState:
    """The state after one event. Unknown event types change nothing but `last_seq`."""
    state = replace(state, last_seq=max(state.last_seq, event.seq))
    if event.step_id and event.step_id in state.workflow.step_ids:
        return _apply_step(state, event)
    return _apply_run(state, event)


def replay(state: RunState, events: Sequence[Event]) -> RunState:
    for event in events:
        state = apply(state, event)
    return state


# ----------------------------------------------------------------- decide


def expression_context(state: RunState) -> dict[str, Any]:
    return {
        "inputs": dict(state.inputs),
        "config": dict(state.config),
        "steps": {
            step_id: {"outputs": dict(step.outputs or {}), "status": step.status}
            for step_id, step in state.steps.items()
        },
        "run": {"id": state.run_id, "name": state.workflow.name},
    }


def backoff_ms(run_id: str, step: Step, tries: int) -> int:
    """The wait before try `tries + 1`: doubling, capped, with jitter.

    The jitter is derived from the run, step and try, so that the decision
    stays a pure function of the history.
    """
    policy = step.retry
    ceiling_s = min(policy.max_backoff, policy.backoff * 2 ** max(tries - 1, 0))
    digest = hashlib.sha256(f"{run_id}/{step.id}/{tries}".encode()).digest()
    fraction = int.from_bytes(digest[:4], "big") / 2**32
    return int(ceiling_s * (0.5 + 0.5 * fraction) * 1000)


def _abandon(state: RunState, now_ms: int, lost: frozenset[str]) -> list[Event]:
    """Give up on attempts whose agent is lost or whose time is up."""
    events = []
    for step in state.workflow.steps:
        current = state.step(step.id)
        if current.status not in STEP_ACTIVE:
            continue
        if current.agent in lost:
            message = f"agent {current.agent} stopped answering during attempt {current.attempt}"
            error = "agent_lost"
        elif step.timeout is not None and now_ms - current.started_ms > step.timeout * 1000:
            message = f"timed out after {step.timeout:g}s (attempt {current.attempt})"
            error = "timeout"
        else:
            continue
        data = {"error": error, "message": message, "retryable": True, "abandon": True}
        events.append(Event(STEP_FAILED, step.id, current.attempt, current.agent, data))
    return events


def _retries(state: RunState, now_ms: int) -> list[Event]:
    events = []
    for step in state.workflow.steps:
        current = state.step(step.id)
        if current.status == FAILED and current.retryable and current.tries < step.retry.attempts:
            delay_ms = backoff_ms(state.run_id, step, current.tries)
            data = {
                "delay_s": delay_ms / 1000,
                "not_before_ms": now_ms + delay_ms,
                "after": current.error,
                "next_try": current.tries + 1,
                "attempts": step.retry.attempts,
            }
            events.append(Event(STEP_RETRYING, step.id, current.attempt, data=data))
    return events


def _waited_too_long(state: RunState, now_ms: int, limits: Limits) -> list[Event]:
    events = []
    for step in state.workflow.steps:
        current = state.step(step.id)
        waited_ms = now_ms - current.waiting_since_ms
        if current.status == WAITING and waited_ms > limits.agent_wait_ms:
            message = (
                f"gave up waiting after {limits.agent_wait_ms / 1000:g}s: "
                f"{current.waiting_reason}; resume the run once it can be placed"
            )
            data = {"error": "agent_unavailable", "message": message, "retryable": False}
            events.append(Event(STEP_FAILED, step.id, current.attempt, data=data))
    return events


def decide(
    state: RunState,
    agents: Sequence[AgentView],
    now_ms: int = 0,
    lost: frozenset[str] = frozenset(),
    limits: Limits = Limits(),
) -> list[Event]:
    """The events that move a run forward.

    `agents` are the healthy connected agents, `lost` the names of agents
    that have been silent or gone for longer than the heartbeat limit.
    """
    if state.finished:
        return []
    start = [Event(RUN_STARTED)] if state.status == PENDING else []

    if abandoned := _abandon(state, now_ms, lost):
        return start + abandoned
    active = state.active()
    if state.cancel_requested:
        return start + ([] if active else [Event(RUN_CANCELLED)])
    if retries := _retries(state, now_ms):
        return start + retries

    failed = [s.id for s in state.workflow.steps if state.step(s.id).status == FAILED]
    if failed:
        if active:
            return start
        data = {"step_id": failed[0], "message": state.step(failed[0]).error, "failed": failed}
        return [*start, Event(RUN_FAILED, data=data)]
    if all(state.step(s.id).status == SUCCEEDED for s in state.workflow.steps):
        return [*start, Event(RUN_SUCCEEDED)]
    if expired := _waited_too_long(state, now_ms, limits):
        return start + expired

    load: dict[str, int] = {}
    events = list(start)
    for step in state.workflow.steps:
        if _ready(state, step, now_ms):
            event = _dispatch_or_wait(state, step, agents, load)
            if event is not None:
                events.append(event)
    return events


def _ready(state: RunState, step: Step, now_ms: int) -> bool:
    current = state.step(step.id)
    if current.status not in (PENDING, WAITING) or now_ms < current.not_before_ms:
        return False
    deps = state.workflow.dependencies(step.id)
    return all(state.step(dep).status == SUCCEEDED for dep in deps)


def _place(
    step: Step, avoid: tuple[str, ...], agents: Sequence[AgentView], load: dict[str, int]
) -> tuple[str, str]:
    """The agent to run a step on, or ("", why it has to wait).

    Among suitable agents the least loaded wins, preferring agents on which
    the step has not failed before, so that a retry moves to a healthy host.
    """
    where = step.on
    if where.agent is not None:
        matching = [a for a in agents if a.name == where.agent]
        absent = f"agent {where.agent} is not connected"
    else:
        wanted = dict(where.labels or {})
        matching = [a for a in agents if all(a.labels.get(k) == v for k, v in wanted.items())]
        absent = f"no connected agent has {where.describe()}"
    if not matching:
        return "", absent
    able = [a for a in matching if step.task in a.plugins]
    if not able:
        names = ", ".join(sorted(a.name for a in matching))
        return "", f"task {step.task} is not available on {names}"
    chosen = min(able, key=lambda a: (a.name in avoid, load.get(a.name, a.running), a.name))
    load[chosen.name] = load.get(chosen.name, chosen.running) + 1
    return chosen.name, ""


def _dispatch_or_wait(
    state: RunState, step: Step, agents: Sequence[AgentView], load: dict[str, int]
) -> Event | None:
    current = state.step(step.id)
    attempt = current.attempt + 1
    if step.on.on_coordinator:
        agent = COORDINATOR
    else:
        agent, reason = _place(step, current.failed_on, agents, load)
        if not agent:
            if current.status == WAITING and current.waiting_reason == reason:
                return None
            return Event(STEP_WAITING, step.id, data={"reason": reason})

    try:
        context = expression_context(state)
        params = expressions.render(step.with_, context, state.workflow.step_ids)
    except expressions.ExpressionError as exc:
        data = {"error": "expression_error", "message": str(exc), "retryable": False}
        return Event(STEP_FAILED, step.id, current.attempt, data=data)
    data = {
        "task": step.task,
        "params": params,
        "final": current.tries + 1 >= step.retry.attempts,
    }
    return Event(STEP_DISPATCHED, step.id, attempt, agent, data)


def next_wake_ms(state: RunState, limits: Limits = Limits()) -> int | None:
    """The earliest time at which `decide` may say something new without new events."""
    times = []
    for step in state.workflow.steps:
        current = state.step(step.id)
        if current.status in STEP_ACTIVE and step.timeout is not None:
            times.append(current.started_ms + int(step.timeout * 1000) + 1)
        elif current.status == PENDING and current.not_before_ms:
            times.append(current.not_before_ms)
        elif current.status == WAITING:
            times.append(current.waiting_since_ms + limits.agent_wait_ms + 1)
    return min(times, default=None)


# ------------------------------------------------------------------ judge

ACCEPT, DUPLICATE, STALE, FOREIGN = "accept", "duplicate", "stale", "foreign"


def judge(state: RunState, agent: str, step_id: str, attempt: int) -> str:
    """Whether a report about (step, attempt) from `agent` is to be applied.

    accept: it is about the attempt the run is waiting for;
    duplicate: that attempt already has its result (a re-sent result);
    stale: it is about an attempt the run no longer waits for (superseded,
    timed out, or its agent declared lost);
    foreign: the run never gave that attempt to that agent.
    """
    if step_id not in state.workflow.step_ids:
        return FOREIGN
    step = state.step(step_id)
    if attempt < step.attempt:
        return STALE
    if attempt != step.attempt or agent != step.agent:
        return FOREIGN
    if step.status in STEP_FINISHED:
        return STALE if step.abandoned else DUPLICATE
    if step.status in STEP_ACTIVE and not state.finished:
        return ACCEPT
    return STALE


# ----------------------------------------------------------------- resume


def descendants(workflow: Workflow, step_id: str) -> set[str]:
    found = {step_id}
    changed = True
    while changed:
        changed = False
        for step in workflow.steps:
            if step.id not in found and found & set(workflow.dependencies(step.id)):
                found.add(step.id)
                changed = True
    return found


def resume_plan(state: RunState, from_step: str = "") -> list[str]:
    """The steps a resume runs again, in definition order; raises when it cannot resume."""
    if state.status in (PENDING, RUNNING):
        raise ResumeError(f"run {state.run_id} is still {state.status}; cancel it first")
    if from_step and from_step not in state.workflow.step_ids:
        known = ", ".join(s.id for s in state.workflow.steps)
        raise ResumeError(f"run {state.run_id} has no step {from_step!r} (steps: {known})")
    if state.status == SUCCEEDED and not from_step:
        raise ResumeError(
            f"run {state.run_id} succeeded; nothing to resume (use --from STEP to re-run)"
        )
    again = descendants(state.workflow, from_step) if from_step else set()
    return [
        s.id for s in state.workflow.steps if s.id in again or state.step(s.id).status != SUCCEEDED
    ]
