"""The run state machine: pure decisions over a run's event history, no I/O.

A run's state is the fold of its events (`apply`). `decide` looks at a state
and the agents currently connected and returns the events that should happen
next: dispatching ready steps, recording why a step waits, finishing the run.
The coordinator stores those events, applies them, and carries out their
effects (sending a step to an agent, running it locally). `judge` tells
whether a report from an agent belongs to the attempt the run is waiting for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from workflowd import expressions
from workflowd.definition import Step, Workflow
from workflowd.events import (  # noqa: F401 - the engine's vocabulary, re-exported
    CANCELLED,
    COORDINATOR,
    DISPATCHED,
    FAILED,
    PENDING,
    RUN_FAILED,
    RUN_FINISHED,
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
    attempt: int = 0
    agent: str = ""
    outputs: Mapping[str, Any] | None = None
    error: str = ""
    waiting_reason: str = ""
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
    last_seq: int = 0

    def step(self, step_id: str) -> StepState:
        return self.steps.get(step_id, StepState())

    @property
    def finished(self) -> bool:
        return self.status in RUN_FINISHED


@dataclass(frozen=True)
class AgentView:
    """What the engine needs to know of a connected agent."""

    name: str
    labels: Mapping[str, str]
    plugins: frozenset[str]
    running: int = 0


def initial(
    run_id: str, workflow: Workflow, inputs: Mapping[str, Any], config: Mapping[str, Any]
) -> RunState:
    return RunState(run_id, workflow, dict(inputs), dict(config))


# ------------------------------------------------------------------ apply


def _with_step(state: RunState, step_id: str, **changes: Any) -> RunState:
    steps = dict(state.steps)
    steps[step_id] = replace(state.step(step_id), **changes)
    return replace(state, steps=steps)


def apply(state: RunState, event: Event) -> RunState:
    """The state after one event. Unknown event types change nothing but `last_seq`."""
    state = replace(state, last_seq=max(state.last_seq, event.seq))
    kind, data = event.type, event.data

    if kind == RUN_STARTED:
        return replace(state, status=RUNNING)
    if kind == RUN_SUCCEEDED:
        return replace(state, status=SUCCEEDED, error="")
    if kind == RUN_FAILED:
        return replace(state, status=FAILED, error=str(data.get("message", "")))
    if kind == STEP_WAITING:
        return _with_step(
            state, event.step_id, status=WAITING, waiting_reason=str(data.get("reason", ""))
        )
    if kind == STEP_DISPATCHED:
        return _with_step(
            state,
            event.step_id,
            status=DISPATCHED,
            attempt=event.attempt,
            agent=event.agent,
            waiting_reason="",
            error="",
            outputs=None,
            started_ms=event.time_ms,
            finished_ms=0,
        )
    if kind == STEP_STARTED:
        return _with_step(state, event.step_id, status=RUNNING)
    if kind == STEP_SUCCEEDED:
        return _with_step(
            state,
            event.step_id,
            status=SUCCEEDED,
            outputs=dict(data.get("outputs", {})),
            finished_ms=event.time_ms,
        )
    if kind == STEP_INTERRUPTED:
        return _with_step(state, event.step_id, status=PENDING, error=str(data.get("reason", "")))
    if kind == STEP_FAILED:
        return _with_step(
            state,
            event.step_id,
            status=FAILED,
            error=str(data.get("message", "")),
            finished_ms=event.time_ms,
        )
    return state


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


def _ready(state: RunState, step: Step) -> bool:
    if state.step(step.id).status not in (PENDING, WAITING):
        return False
    deps = state.workflow.dependencies(step.id)
    return all(state.step(dep).status == SUCCEEDED for dep in deps)


def _place(step: Step, agents: Sequence[AgentView], load: dict[str, int]) -> tuple[str, str]:
    """The agent to run a step on, or ("", why it has to wait)."""
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
    chosen = min(able, key=lambda a: (load.get(a.name, a.running), a.name))
    load[chosen.name] = load.get(chosen.name, chosen.running) + 1
    return chosen.name, ""


def decide(state: RunState, agents: Sequence[AgentView]) -> list[Event]:
    """The events that move a run forward, given the agents connected now."""
    if state.finished:
        return []
    events: list[Event] = []
    if state.status == PENDING:
        events.append(Event(RUN_STARTED))

    steps = state.workflow.steps
    failed = [s.id for s in steps if state.step(s.id).status == FAILED]
    active = [s.id for s in steps if state.step(s.id).status in STEP_ACTIVE]
    if failed:
        if not active:
            first = state.step(failed[0])
            events.append(
                Event(
                    RUN_FAILED,
                    data={"step_id": failed[0], "message": first.error, "failed": failed},
                )
            )
        return events
    if all(state.step(s.id).status == SUCCEEDED for s in steps):
        return [*events, Event(RUN_SUCCEEDED)]

    load: dict[str, int] = {}
    context = expression_context(state)
    for step in steps:
        if _ready(state, step):
            events.append(_dispatch_or_wait(state, step, agents, load, context))
    return [e for e in events if e is not None]


def _dispatch_or_wait(
    state: RunState,
    step: Step,
    agents: Sequence[AgentView],
    load: dict[str, int],
    context: dict[str, Any],
) -> Event | None:
    current = state.step(step.id)
    attempt = current.attempt + 1
    try:
        params = expressions.render(step.with_, context, state.workflow.step_ids)
    except expressions.ExpressionError as exc:
        return Event(
            STEP_FAILED,
            step.id,
            attempt,
            data={"error": "expression_error", "message": str(exc)},
        )

    if step.on.on_coordinator:
        agent = COORDINATOR
    else:
        agent, reason = _place(step, agents, load)
        if not agent:
            if current.status == WAITING and current.waiting_reason == reason:
                return None
            return Event(STEP_WAITING, step.id, data={"reason": reason})
    return Event(
        STEP_DISPATCHED, step.id, attempt, agent, data={"task": step.task, "params": params}
    )


# ------------------------------------------------------------------ judge

ACCEPT, DUPLICATE, STALE, FOREIGN = "accept", "duplicate", "stale", "foreign"


def judge(state: RunState, agent: str, step_id: str, attempt: int) -> str:
    """Whether a report about (step, attempt) from `agent` is to be applied.

    accept: it is about the attempt the run is waiting for;
    duplicate: that attempt already has its result (a re-sent result);
    stale: it is about an earlier attempt, superseded since;
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
        return DUPLICATE
    if step.status in STEP_ACTIVE and not state.finished:
        return ACCEPT
    return STALE
