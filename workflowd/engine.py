"""The run state machine: pure decisions over a run's event history, no I/O.

A run's state is the fold of its events (`apply`). `decide` looks at a state,
the agents connected now, the time, and which agents have gone silent, and
returns the events that should happen next: dispatching ready steps, giving
up on attempts that timed out or whose agent is lost, scheduling retries,
fanning a step out over agents, settling wait steps from signals, recording
why a step waits, finishing the run. The coordinator stores those events,
applies them, and carries out their effects. `judge` tells whether a report
from an agent belongs to the attempt the run waits for, and `resume_plan`
which steps a resume runs again.

A fan-out step runs as instances, one per agent, kept in the state under the
key `STEP[AGENT]`; the engine treats each like a step pinned to its agent and
settles the fan-out step from them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
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
    RUN_CONFIG_UPDATED,
    RUN_FAILED,
    RUN_FINISHED,
    RUN_RESUMED,
    RUN_SIGNALLED,
    RUN_STARTED,
    RUN_SUBMITTED,
    RUN_SUCCEEDED,
    RUN_TERMINAL_EVENTS,
    RUNNING,
    SKIPPED,
    STEP_ACTIVE,
    STEP_DISPATCHED,
    STEP_FAILED,
    STEP_FANNED_OUT,
    STEP_FINISHED,
    STEP_INTERRUPTED,
    STEP_LOG,
    STEP_MESSAGE,
    STEP_OUTPUT,
    STEP_PROGRESS,
    STEP_RETRYING,
    STEP_SKIPPED,
    STEP_STARTED,
    STEP_SUCCEEDED,
    STEP_WAITING,
    SUCCEEDED,
    WAITING,
    Event,
)

DONE = frozenset({SUCCEEDED, SKIPPED})


@dataclass(frozen=True)
class StepState:
    status: str = PENDING
    attempt: int = 0  # the latest attempt's number; never reused within a run
    tries: int = 0  # attempts counted against the retry policy since the last resume
    agent: str = ""
    target: str = ""  # for a fan-out instance: the agent it belongs to
    outputs: Mapping[str, Any] | None = None
    partial: Mapping[str, Any] = field(default_factory=dict)  # outputs set while running
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


# the state of a step that nothing has happened to yet; frozen, so shared
_UNTOUCHED = StepState()


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
    signals: tuple[tuple[str, Any], ...] = ()  # (name, payload) in arrival order
    signals_used: Mapping[str, int] = field(default_factory=dict)
    topics: Mapping[str, tuple[tuple[str, Any], ...]] = field(default_factory=dict)
    last_seq: int = 0
    # What follows from `steps`, kept up to date as events apply so that a
    # decision costs what changed, not a pass over every step of a long run:
    # the places in the plan of the steps a decision must look at (every step
    # that has begun and is not done, every fan-out that has begun, every step
    # whose needs are all done; perhaps a few more), and how many steps are done.
    frontier: frozenset[int] | None = field(default=None, compare=False, repr=False)
    done_steps: int = field(default=0, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.frontier is None:
            object.__setattr__(self, "frontier", _frontier(self.workflow, self.steps))
            object.__setattr__(self, "done_steps", _done_steps(self.workflow, self.steps))

    def step(self, step_id: str) -> StepState:
        return self.steps.get(step_id, _UNTOUCHED)

    @property
    def finished(self) -> bool:
        return self.status in RUN_FINISHED

    def units(self) -> Iterator[tuple[str, Step]]:
        """Everything that runs as an attempt: plain steps and fan-out instances."""
        if not self.workflow.fanout_steps:
            yield from self.workflow.task_steps
            return
        for step in self.workflow.steps:
            if step.fans_out:
                for key in self.instances(step.id):
                    yield key, step
            elif step.task is not None:
                yield step.id, step

    def instances(self, step_id: str) -> list[str]:
        prefix = f"{step_id}["
        return [key for key in self.steps if key.startswith(prefix)]

    def active(self) -> list[str]:
        return [key for key, _ in self.units() if self.step(key).status in STEP_ACTIVE]

    def knows(self, key: str) -> bool:
        return key in self.workflow.step_ids or ("[" in key and key in self.steps)


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


def instance_key(step_id: str, agent: str) -> str:
    return f"{step_id}[{agent}]"


# ------------------------------------------------------------------ apply


def _evolve(value: Any, **changes: Any) -> Any:
    """A copy of a frozen dataclass with `changes`: what dataclasses.replace gives,
    for a tenth of its cost (it runs for every event a run replays)."""
    copy = object.__new__(type(value))
    copy.__dict__.update(value.__dict__, **changes)
    return copy


def _frontier(workflow: Workflow, steps: Mapping[str, StepState]) -> frozenset[int]:
    """RunState.frontier, worked out from every step."""
    found = set()
    for index, (sid, _, fans_out, _, needs) in enumerate(workflow.plan):
        current = steps.get(sid)
        if current is None:
            if all(steps.get(dep, _UNTOUCHED).status in DONE for dep in needs):
                found.add(index)
        elif fans_out or current.status not in DONE:
            found.add(index)
    return frozenset(found)


def _done_steps(workflow: Workflow, steps: Mapping[str, StepState]) -> int:
    return sum(steps.get(sid, _UNTOUCHED).status in DONE for sid in workflow.step_ids)


def _with_step(state: RunState, step_id: str, **changes: Any) -> RunState:
    steps = dict(state.steps)
    before = state.step(step_id)
    steps[step_id] = changed = _evolve(before, **changes)
    workflow = state.workflow
    index = workflow.plan_index.get(step_id)  # None for a fan-out instance
    was_done, done = before.status in DONE, changed.status in DONE
    if index is None or (was_done == done and step_id in state.steps):
        return _evolve(state, steps=steps)
    frontier = set(state.frontier or ())
    if not done or workflow.plan[index][2]:
        frontier.add(index)  # fan-outs stay: their instances are looked at
    else:
        frontier.discard(index)
    if done:
        frontier.update(workflow.dependents[step_id])  # they may be ready now
    return _evolve(
        state,
        steps=steps,
        frontier=frozenset(frontier),
        done_steps=state.done_steps + done - was_done,
    )


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
            for key in state.instances(step_id):
                del steps[key]
            steps[step_id] = StepState(attempt=state.step(step_id).attempt)
        return replace(
            state, status=RUNNING, error="", cancel_requested=False, steps=steps, frontier=None
        )
    if kind == RUN_CONFIG_UPDATED:
        return replace(state, config=dict(data.get("config", {})))
    if kind == RUN_SIGNALLED:
        signal = (str(data.get("name", "")), data.get("payload"))
        return replace(state, signals=(*state.signals, signal))
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
            partial={},
            started_ms=event.time_ms,
            finished_ms=0,
        )
    if kind == STEP_STARTED:
        return _with_step(state, step_id, status=RUNNING)
    if kind == STEP_OUTPUT:
        partial = {**current.partial, str(data.get("name", "")): data.get("value")}
        return _with_step(state, step_id, partial=partial)
    if kind == STEP_MESSAGE:
        topic = str(data.get("topic", ""))
        sent = (*state.topics.get(topic, ()), (step_id, data.get("payload")))
        return replace(state, topics={**state.topics, topic: sent})
    if kind == STEP_SUCCEEDED:
        if "signal" in data:
            used = dict(state.signals_used)
            used[data["signal"]] = used.get(data["signal"], 0) + 1
            state = replace(state, signals_used=used)
        return _with_step(
            state,
            step_id,
            status=SUCCEEDED,
            outputs={**current.partial, **dict(data.get("outputs", {}))},
            path=str(data.get("path", "run")),
            waiting_reason="",
            started_ms=current.started_ms or current.waiting_since_ms or event.time_ms,
            finished_ms=event.time_ms,
        )
    if kind == STEP_SKIPPED:
        return _with_step(state, step_id, status=SKIPPED, outputs={}, finished_ms=event.time_ms)
    if kind == STEP_FANNED_OUT:
        state = _with_step(
            state, step_id, status=RUNNING, started_ms=event.time_ms, waiting_reason=""
        )
        steps = dict(state.steps)
        for agent in data.get("agents", []):
            steps[instance_key(step_id, agent)] = StepState(target=agent)
        return replace(state, steps=steps)
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
    state = _evolve(state, last_seq=max(state.last_seq, event.seq))
    if event.step_id and (state.knows(event.step_id) or event.type == STEP_FANNED_OUT):
        return _apply_step(state, event)
    return _apply_run(state, event)


_RUN_STATUS = {
    RUN_STARTED: RUNNING,
    RUN_SUCCEEDED: SUCCEEDED,
    RUN_FAILED: FAILED,
    RUN_CANCELLED: CANCELLED,
    RUN_RESUMED: RUNNING,
}


def status_after(status: str, events: Sequence[Event]) -> str:
    """The run's status once `events` apply: what `replay(...).status` says, for less."""
    for event in events:
        if not event.step_id:
            status = _RUN_STATUS.get(event.type, status)
    return status


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
            step.id: {
                "outputs": dict(state.step(step.id).outputs or {}),
                "status": state.step(step.id).status,
            }
            for step in state.workflow.steps
        },
        "run": {"id": state.run_id, "name": state.workflow.name},
    }


class _LazyContext(Mapping[str, Any]):
    """The expression context of a state, built the first time an expression reads it.

    Most decisions render no expression at all (no `with`, no `when`), and
    building the context copies every step's outputs.
    """

    def __init__(self, state: RunState) -> None:
        self._state = state
        self._built: dict[str, Any] | None = None

    def _context(self) -> dict[str, Any]:
        if self._built is None:
            self._built = expression_context(self._state)
        return self._built

    def __getitem__(self, key: str) -> Any:
        return self._context()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._context())

    def __len__(self) -> int:
        return len(self._context())


def backoff_ms(run_id: str, step: Step, tries: int, key: str = "") -> int:
    """The wait before try `tries + 1`: doubling, capped, with jitter.

    The jitter is derived from the run, step and try, so that the decision
    stays a pure function of the history.
    """
    policy = step.retry
    ceiling_s = min(policy.max_backoff, policy.backoff * 2 ** max(tries - 1, 0))
    digest = hashlib.sha256(f"{run_id}/{key or step.id}/{tries}".encode()).digest()
    fraction = int.from_bytes(digest[:4], "big") / 2**32
    return int(ceiling_s * (0.5 + 0.5 * fraction) * 1000)


def _abandon(
    state: RunState, active: list[tuple[str, Step]], now_ms: int, lost: frozenset[str]
) -> list[Event]:
    """Give up on attempts whose agent is lost or whose time is up."""
    events = []
    for key, step in active:
        current = state.step(key)
        if current.agent in lost:
            message = f"agent {current.agent} stopped answering during attempt {current.attempt}"
            error = "agent_lost"
        elif step.timeout is not None and now_ms - current.started_ms > step.timeout * 1000:
            message = f"timed out after {step.timeout:g}s (attempt {current.attempt})"
            error = "timeout"
        else:
            continue
        data = {"error": error, "message": message, "retryable": True, "abandon": True}
        events.append(Event(STEP_FAILED, key, current.attempt, current.agent, data))
    return events


def _retries(state: RunState, failed: list[tuple[str, Step]], now_ms: int) -> list[Event]:
    events = []
    for key, step in failed:
        current = state.step(key)
        if current.retryable and current.tries < step.retry.attempts:
            delay_ms = backoff_ms(state.run_id, step, current.tries, key)
            data = {
                "delay_s": delay_ms / 1000,
                "not_before_ms": now_ms + delay_ms,
                "after": current.error,
                "next_try": current.tries + 1,
                "attempts": step.retry.attempts,
            }
            events.append(Event(STEP_RETRYING, key, current.attempt, data=data))
    return events


def _expired(
    state: RunState, waiting: list[tuple[str, Step]], now_ms: int, limits: Limits
) -> list[Event]:
    """Waits that went on too long: for an agent, or for a signal."""
    events = []
    for key, step in waiting:
        current = state.step(key)
        waited_ms = now_ms - current.waiting_since_ms
        if step.wait is not None:
            if step.wait.timeout is None or waited_ms <= step.wait.timeout * 1000:
                continue
            message = f"no signal {step.wait.signal!r} within {step.wait.timeout:g}s"
            error = "signal_timeout"
        elif waited_ms > limits.agent_wait_ms:
            message = (
                f"gave up waiting after {limits.agent_wait_ms / 1000:g}s: "
                f"{current.waiting_reason}; resume the run once it can be placed"
            )
            error = "agent_unavailable"
        else:
            continue
        data = {"error": error, "message": message, "retryable": False}
        events.append(Event(STEP_FAILED, key, current.attempt, data=data))
    return events


@dataclass
class _Survey:
    """What one pass over a run's steps finds, in definition order.

    Units are what runs as an attempt (plain steps, fan-out instances).
    """

    active: list[tuple[str, Step]] = field(default_factory=list)  # units dispatched or running
    failed_units: list[tuple[str, Step]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # steps, instances not counted
    waiting: list[tuple[str, Step]] = field(default_factory=list)  # units and wait steps
    candidates: list[Step] = field(default_factory=list)  # ready, or fan-outs under way
    all_done: bool = True


def _survey(state: RunState, now_ms: int) -> _Survey:
    found = _Survey()
    steps = state.steps
    done = DONE
    untouched = _UNTOUCHED
    plan = state.workflow.plan
    found.all_done = state.done_steps == len(plan)
    # the steps outside the frontier would each be passed over: done, or not ready
    for index in sorted(state.frontier or ()):
        sid, step, fans_out, runs_task, needs = plan[index]
        current = steps.get(sid, untouched)
        status = current.status
        if fans_out:
            if status == FAILED:
                found.failed.append(sid)
            if status not in done:
                found.all_done = False
            for key in state.instances(sid):
                instance = steps[key].status
                if instance in STEP_ACTIVE:
                    found.active.append((key, step))
                elif instance == FAILED:
                    found.failed_units.append((key, step))
                elif instance == WAITING:
                    found.waiting.append((key, step))
            if status == RUNNING or _ready(state, sid, step, now_ms):
                found.candidates.append(step)
            continue
        if status in done:
            continue  # most steps of a long run: nothing to look at
        found.all_done = False
        if status == FAILED:
            found.failed.append(sid)
            if runs_task:
                found.failed_units.append((sid, step))
            continue
        if status in STEP_ACTIVE:
            if runs_task:
                found.active.append((sid, step))
            continue
        if status == WAITING:
            found.waiting.append((sid, step))
        elif status != PENDING:
            continue
        if now_ms < current.not_before_ms:
            continue
        for dep in needs:
            if steps.get(dep, untouched).status not in done:
                break
        else:
            found.candidates.append(step)
    return found


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
    found = _survey(state, now_ms)

    if abandoned := _abandon(state, found.active, now_ms, lost):
        return start + abandoned
    if state.cancel_requested:
        return start + ([] if found.active else [Event(RUN_CANCELLED)])
    if retries := _retries(state, found.failed_units, now_ms):
        return start + retries
    if settled := _settle_fanouts(state):
        return start + settled

    if failed := found.failed:
        if found.active:
            return start
        data = {"step_id": failed[0], "message": state.step(failed[0]).error, "failed": failed}
        return [*start, Event(RUN_FAILED, data=data)]
    if found.all_done:
        return [*start, Event(RUN_SUCCEEDED)]
    if expired := _expired(state, found.waiting, now_ms, limits):
        return start + expired

    load: dict[str, int] = {}
    events = list(start)
    context = _LazyContext(state)
    for step in found.candidates:
        if step.fans_out and state.step(step.id).status == RUNNING:
            events += _dispatch_instances(state, step, agents, load, now_ms, context)
        else:
            event = _start_step(state, step, agents, load, context)
            if event is not None:
                events.append(event)
    return events


# After events of only these kinds, `decide` on the new state has nothing to
# add: every ready step was dispatched, and a dispatch readies no other step.
QUIESCENT = frozenset({RUN_STARTED, STEP_DISPATCHED})


def _ready(state: RunState, key: str, step: Step, now_ms: int) -> bool:
    current = state.step(key)
    if current.status not in (PENDING, WAITING) or now_ms < current.not_before_ms:
        return False
    deps = state.workflow.dependencies(step.id)
    return all(state.step(dep).status in DONE for dep in deps)


def _start_step(
    state: RunState,
    step: Step,
    agents: Sequence[AgentView],
    load: dict[str, int],
    context: Mapping[str, Any],
) -> Event | None:
    """A ready step: skip it, settle or wait for its signal, fan it out, or dispatch it."""
    current = state.step(step.id)
    if step.when is not None and current.status == PENDING and current.attempt == 0:
        try:
            wanted = expressions.render(step.when, context, state.workflow.step_ids)
        except expressions.ExpressionError as exc:
            data = {"error": "expression_error", "message": f"when: {exc}", "retryable": False}
            return Event(STEP_FAILED, step.id, data=data)
        if not wanted:
            return Event(STEP_SKIPPED, step.id, data={"when": str(step.when)})
    if step.wait is not None:
        return _await_signal(state, step)
    if step.fans_out:
        return _fan_out(state, step, agents)
    return _dispatch_or_wait(state, step.id, step, agents, load, context)


def _await_signal(state: RunState, step: Step) -> Event | None:
    name = step.wait.signal if step.wait else ""
    matching = [payload for signal, payload in state.signals if signal == name]
    used = state.signals_used.get(name, 0)
    if len(matching) > used:
        payload = matching[used]
        outputs = payload if isinstance(payload, dict) else {"payload": payload}
        data = {"outputs": outputs, "path": "signal", "signal": name}
        return Event(STEP_SUCCEEDED, step.id, data=data)
    reason = f"waiting for signal {name}"
    if state.step(step.id).status == WAITING:
        return None
    return Event(STEP_WAITING, step.id, data={"reason": reason})


def _matching(step: Step, agents: Sequence[AgentView]) -> tuple[list[AgentView], str]:
    """Agents that fit a step's placement and have its plugin, or why there are none."""
    where = step.on
    if where.agent is not None:
        matching = [a for a in agents if a.name == where.agent]
        absent = f"agent {where.agent} is not connected"
    else:
        wanted = dict(where.labels or {})
        matching = [a for a in agents if all(a.labels.get(k) == v for k, v in wanted.items())]
        labels = ",".join(f"{k}={v}" for k, v in sorted(wanted.items()))
        absent = f"no connected agent has labels {labels}"
    if not matching:
        return [], absent
    able = [a for a in matching if step.task in a.plugins]
    if not able:
        names = ", ".join(sorted(a.name for a in matching))
        return [], f"task {step.task} is not available on {names}"
    return able, ""


def _fan_out(state: RunState, step: Step, agents: Sequence[AgentView]) -> Event | None:
    able, reason = _matching(step, agents)
    if not able:
        current = state.step(step.id)
        if current.status == WAITING and current.waiting_reason == reason:
            return None
        return Event(STEP_WAITING, step.id, data={"reason": reason})
    names = sorted(a.name for a in able)
    return Event(STEP_FANNED_OUT, step.id, data={"agents": names})


def _dispatch_instances(
    state: RunState,
    step: Step,
    agents: Sequence[AgentView],
    load: dict[str, int],
    now_ms: int,
    context: Mapping[str, Any],
) -> list[Event]:
    keys = state.instances(step.id)
    statuses = [state.step(key).status for key in keys]
    strategy = step.strategy
    if strategy is not None and statuses.count(FAILED) > strategy.max_failures:
        return []  # stopping: no new instance starts
    limit = strategy.max_parallel if strategy and strategy.max_parallel else len(keys)
    room = limit - sum(status in STEP_ACTIVE for status in statuses)
    events = []
    for key in keys:
        if room <= 0:
            break
        if _ready(state, key, step, now_ms):
            event = _dispatch_or_wait(state, key, step, agents, load, context)
            if event is not None:
                events.append(event)
                room -= event.type == STEP_DISPATCHED
    return events


def _settle_fanouts(state: RunState) -> list[Event]:
    """A fan-out step ends once its instances have, or fails past max_failures."""
    events = []
    for step in state.workflow.fanout_steps:
        if state.step(step.id).status != RUNNING:
            continue
        keys = state.instances(step.id)
        failed = [k for k in keys if state.step(k).status == FAILED]
        active = [k for k in keys if state.step(k).status in STEP_ACTIVE]
        allowed = step.strategy.max_failures if step.strategy else 0
        finished = all(state.step(k).status in (SUCCEEDED, FAILED) for k in keys)
        if active or not (finished or len(failed) > allowed):
            continue
        if len(failed) > allowed:
            reasons = "; ".join(
                f"{state.step(k).target}: {(state.step(k).error or 'failed').splitlines()[0]}"
                for k in failed
            )
            message = (
                f"{len(failed)} of {len(keys)} instances failed "
                f"(max_failures {allowed}): {reasons}"
            )
            data = {"error": "fanout_failed", "message": message, "retryable": False}
            events.append(Event(STEP_FAILED, step.id, data=data))
            continue
        outputs = {
            state.step(k).target: dict(state.step(k).outputs or {})
            for k in keys
            if state.step(k).status == SUCCEEDED
        }
        failed_on = [state.step(k).target for k in failed]
        data = {"outputs": outputs, "path": "fanout", "failed": failed_on}
        events.append(Event(STEP_SUCCEEDED, step.id, data=data))
    return events


def _place(
    step: Step,
    key: str,
    current: StepState,
    agents: Sequence[AgentView],
    load: dict[str, int],
) -> tuple[str, str]:
    """The agent to run a unit on, or ("", why it has to wait).

    Among suitable agents the least loaded wins, preferring agents on which
    the step has not failed before, so that a retry moves to a healthy host.
    A fan-out instance only ever runs on its own agent.
    """
    if current.target:
        pinned = [a for a in agents if a.name == current.target]
        if not pinned:
            return "", f"agent {current.target} is not connected"
        if step.task not in pinned[0].plugins:
            return "", f"task {step.task} is not available on {current.target}"
        return current.target, ""
    able, reason = _matching(step, agents)
    if not able:
        return "", reason
    avoid = current.failed_on
    chosen = min(able, key=lambda a: (a.name in avoid, load.get(a.name, a.running), a.name))
    load[chosen.name] = load.get(chosen.name, chosen.running) + 1
    return chosen.name, ""


def _dispatch_or_wait(
    state: RunState,
    key: str,
    step: Step,
    agents: Sequence[AgentView],
    load: dict[str, int],
    context: Mapping[str, Any],
) -> Event | None:
    current = state.step(key)
    attempt = current.attempt + 1
    if step.on.on_coordinator:
        agent = COORDINATOR
    else:
        agent, reason = _place(step, key, current, agents, load)
        if not agent:
            if current.status == WAITING and current.waiting_reason == reason:
                return None
            return Event(STEP_WAITING, key, data={"reason": reason})

    try:
        params = expressions.render(step.with_, context, state.workflow.step_ids)
    except expressions.ExpressionError as exc:
        data = {"error": "expression_error", "message": str(exc), "retryable": False}
        return Event(STEP_FAILED, key, current.attempt, data=data)
    data = {
        "task": step.task,
        "params": params,
        "final": current.tries + 1 >= step.retry.attempts,
    }
    return Event(STEP_DISPATCHED, key, attempt, agent, data)


def next_wake_ms(state: RunState, limits: Limits = Limits()) -> int | None:
    """The earliest time at which `decide` may say something new without new events."""
    times = []
    plan = state.workflow.plan
    # a step that has not begun, or is done, has no clock running: the frontier holds the rest
    for index in state.frontier or ():
        step = plan[index][1]
        for key in state.instances(step.id) if step.fans_out else [step.id]:
            current = state.step(key)
            if current.status in STEP_ACTIVE and step.timeout is not None:
                times.append(current.started_ms + int(step.timeout * 1000) + 1)
            elif current.status == PENDING and current.not_before_ms:
                times.append(current.not_before_ms)
            elif current.status == WAITING and step.wait is not None:
                if step.wait.timeout is not None:
                    times.append(current.waiting_since_ms + int(step.wait.timeout * 1000) + 1)
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
    if not state.knows(step_id):
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
        s.id for s in state.workflow.steps if s.id in again or state.step(s.id).status not in DONE
    ]


# -------------------------------------------------------------- messages


def next_message(
    state: RunState, topic: str, receiver: str, after_index: int
) -> tuple[int, Any] | None:
    """The first message on a topic past `after_index` that the receiver did not send.

    Indexes count every message of the topic from 1, so a receiver that keeps
    the last index it got asks again without losing or repeating one.
    """
    base = receiver.split("[", 1)[0]
    for index, (sender, payload) in enumerate(state.topics.get(topic, ()), start=1):
        if index > after_index and sender.split("[", 1)[0] != base:
            return index, payload
    return None
