"""The steps a decision looks at are kept up to date as events apply; a decision made
from them is the one a look at every step would make."""

from __future__ import annotations

import json
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from workflowd import engine
from workflowd.definition import load
from workflowd.engine import AgentView, Event, RunState, apply, decide, initial

AGENTS = [AgentView(name, {"role": "w"}, frozenset({"noop"})) for name in ("host-a", "host-b")]


def flow(needs: list[list[int] | None], fan_out: set[int]) -> str:
    """A workflow of len(needs) steps: step i needs the steps listed (earlier ones only),
    or the previous step when None; the steps in fan_out run on every agent."""
    steps = []
    for index, wanted in enumerate(needs):
        step: dict = {"id": f"s{index}", "task": "noop", "retry": {"attempts": 2, "backoff": "1s"}}
        if index % 2:
            step["timeout"] = f"{10 + index}s"
        fanned = {"all": True, "labels": {"role": "w"}}
        step["on"] = fanned if index in fan_out else {"agent": "host-a"}
        if wanted is not None:
            step["needs"] = [f"s{n}" for n in sorted(set(wanted))]
        steps.append(step)
    return json.dumps({"name": "frontier", "steps": steps})


def fresh(state: RunState) -> RunState:
    """The same state with what follows from its steps worked out from every step."""
    return replace(state, frontier=None)


def every_step(state: RunState) -> RunState:
    """The same state with every step in its frontier: nothing passed over."""
    return replace(state, frontier=frozenset(range(len(state.workflow.plan))))


@st.composite
def workflows(draw: st.DrawFn) -> str:
    count = draw(st.integers(1, 8))
    needs = [
        draw(st.none() | st.lists(st.integers(0, index - 1), max_size=3)) if index else None
        for index in range(count)
    ]
    fan_out = draw(st.sets(st.integers(0, count - 1), max_size=2))
    return flow(needs, fan_out)


@settings(max_examples=150, deadline=None)
@given(text=workflows(), moves=st.lists(st.integers(0, 99), max_size=60))
def test_decisions_from_the_frontier_match_a_look_at_every_step(text: str, moves: list) -> None:
    """Whatever happens to a run (results, failures, retries, resumes), each decision made
    from the steps kept up to date equals the one made from a fresh look at every step,
    and so does the time the run next needs looking at (a retry's backoff, a timeout)."""
    state = initial("run-1", load(text, "flow.yaml"), {}, {})
    seq = 0
    now_ms = 1000

    def record(*events: Event) -> None:
        nonlocal state, seq
        for event in events:
            seq += 1
            state = apply(state, replace(event, seq=seq, time_ms=now_ms))

    for move in moves:
        now_ms += 1500  # past any retry backoff
        expected = decide(fresh(state), AGENTS, now_ms)
        assert decide(state, AGENTS, now_ms) == expected
        assert state.done_steps == fresh(state).done_steps
        assert engine.next_wake_ms(state) == engine.next_wake_ms(every_step(state))
        if state.finished:
            if state.status == engine.SUCCEEDED and move % 2:
                break
            from_step = f"s{move % len(state.workflow.steps)}" if move % 3 == 0 else ""
            try:
                rerun = engine.resume_plan(state, from_step)
            except engine.ResumeError:
                break
            record(Event(engine.RUN_RESUMED, data={"rerun": rerun}))
            continue
        if expected:
            record(*expected)
            continue
        active = state.active()
        if not active:
            break
        key = active[move % len(active)]
        current = state.step(key)
        if move % 4 == 0:
            data = {"error": "task_error", "message": "failed", "retryable": True}
            record(Event(engine.STEP_FAILED, key, current.attempt, current.agent, data))
        else:
            data = {"outputs": {}, "path": "run"}
            record(Event(engine.STEP_SUCCEEDED, key, current.attempt, current.agent, data))
