"""Property-based tests of how the coordinator takes agents' messages.

A real coordinator with a real SQLite store runs one workflow whose steps are
given to two agents; random sequences of messages, from those agents and from
a third that was given nothing, go through the agent service's handler. No
message may crash it, and a message about an attempt its sender was not given
(or about no attempt at all) must leave the run exactly as it was.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from workflowd import engine
from workflowd.coordinator import Coordinator
from workflowd.dispatch import AgentSession
from workflowd.rpc import workflow_pb2 as pb
from workflowd.server import AgentService
from workflowd.store import open_store
from workflowd.tasks import load_plugins

SEQUENCES = 80
MAX_MESSAGES = 25
AGENTS = ("host-a", "host-b", "rogue")
RUN = "<the run>"

FLOW = """
name: messages
steps:
  - {id: a, task: sleep, on: {agent: host-a}, with: {seconds: 1}}
  - {id: b, task: sleep, on: {agent: host-b}, with: {seconds: 1}, needs: []}
  - {id: c, task: sleep, on: {agent: host-a}, with: {seconds: 1}, needs: [a, b]}
"""
SLEEP = load_plugins(("sleep",))["sleep"]

texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
outputs_json = st.one_of(
    st.dictionaries(texts, st.integers() | texts | st.floats(allow_nan=False), max_size=3).map(
        json.dumps
    ),
    st.sampled_from(
        [
            "",
            "{}",
            "[]",
            "null",
            "not json",
            '{"x": NaN}',
            '{"x": Infinity}',
            '{"lone": "\\ud800"}',
            "[" * 3000 + "]" * 3000,
            '{"deep": ' + "[" * 80 + "]" * 80 + "}",
        ]
    ),
    texts,
)
kinds = st.one_of(
    st.builds(lambda: {"started": pb.StepStarted()}),
    st.builds(
        lambda f, m: {"progress": pb.StepProgress(fraction=f, message=m)},
        st.floats(),
        texts,
    ),
    st.builds(lambda lv, m: {"log": pb.StepLog(level=lv, message=m)}, texts, texts),
    st.builds(
        lambda o, p: {"completed": pb.StepCompleted(outputs_json=o, path=p)},
        outputs_json,
        st.sampled_from(["run", "check", "", "elsewhere"]),
    ),
    st.builds(lambda e, m: {"failed": pb.StepFailed(error=e, message=m)}, texts, texts),
    st.just({}),  # a step event without a kind
)
anything = st.tuples(
    st.sampled_from(AGENTS),
    st.sampled_from([RUN, RUN, RUN, "", "0000nosuchrun"]) | texts,
    st.sampled_from(["a", "b", "c", "", "zz"]),
    st.sampled_from([1, 1, 1, 0, 2, 2**32 - 1]),
    st.one_of(kinds, kinds, kinds, st.sampled_from(["heartbeat", "hello"])),
)
# what the agents given the steps would say, in any order: so that runs move on
done = st.builds(
    lambda: {"completed": pb.StepCompleted(outputs_json='{"slept_s": 1}', path="run")}
)
honest = st.tuples(
    st.sampled_from([("host-a", "a"), ("host-b", "b"), ("host-a", "c")]),
    st.one_of(kinds, done, done, done),
).map(lambda pair: (pair[0][0], RUN, pair[0][1], 1, pair[1]))
messages = st.one_of(anything, honest)


def to_message(run_id: str, step_id: str, attempt: int, kind: object) -> pb.AgentMessage:
    if kind == "heartbeat":
        return pb.AgentMessage(heartbeat=pb.Heartbeat())
    if kind == "hello":
        return pb.AgentMessage(hello=pb.Hello(name="again"))
    ref = pb.AttemptRef(run_id=run_id, step_id=step_id, attempt=attempt)
    return pb.AgentMessage(step=pb.StepEvent(ref=ref, **kind))


def given_to(state: engine.RunState, agent: str, step_id: str, attempt: int) -> bool:
    """Whether the run is waiting for `agent`'s word on this attempt (the test's own oracle)."""
    if state.finished or step_id not in state.workflow.step_ids:
        return False
    step = state.step(step_id)
    return (
        step.agent == agent
        and step.attempt == attempt
        and step.status in (engine.DISPATCHED, engine.RUNNING)
    )


async def scenario(sequence: list[tuple]) -> Counter:
    outcomes: Counter = Counter()
    with tempfile.TemporaryDirectory() as root:
        store = open_store(f"sqlite://{Path(root) / 'store.db'}")
        await store.open()
        coordinator = Coordinator(store, {}, scratch_root=Path(root) / "scratch")
        await coordinator.start()  # agents are let in once the runs are recovered
        service = AgentService(coordinator)
        info = pb.PluginInfo(name="sleep", params_schema_json=json.dumps(SLEEP.params_schema()))
        sessions = {}
        for name in AGENTS:
            sessions[name] = AgentSession(name, {}, {"sleep": info}, "test")
            await coordinator.agent_connected(sessions[name], pb.Hello(name=name))
        run_id, _ = await coordinator.submit(FLOW, "flow.yaml", {})
        try:
            for sender, run, step_id, attempt, kind in sequence:
                message = to_message(run_id if run == RUN else run, step_id, attempt, kind)
                await coordinator.store_waiting(run_id)
                before = await coordinator.run_state(run_id)
                allowed = run == RUN and given_to(before, sender, step_id, attempt)

                await service._handle(sessions[sender], message)
                await coordinator.store_waiting(run_id)  # reports that linger, stored now

                after = await coordinator.run_state(run_id)
                outcome = "may change the run" if allowed else "must not change the run"
                outcomes[outcome] += 1
                event(f"a message that {outcome}")
                if after.last_seq > before.last_seq:
                    event("a message that changed the run")
                if not allowed:
                    assert after.steps == before.steps
                    assert after.last_seq == before.last_seq
                    assert after.status == before.status

            # what is stored is what the coordinator believes, and only the agents given
            # an attempt ever reported on it
            state = await coordinator.run_state(run_id)
            history = await store.events(run_id, 0, 100_000)
            replayed = engine.replay(engine.initial(run_id, state.workflow, {}, {}), history)
            assert replayed.steps == state.steps
            assert [e.seq for e in history] == list(range(1, len(history) + 1))
            event(f"a run that ended {state.status}")
            dispatched = {
                (e.step_id, e.attempt): e.agent
                for e in history
                if e.type == engine.STEP_DISPATCHED
            }
            for stored in history:
                if stored.type in (engine.STEP_STARTED, engine.STEP_SUCCEEDED, engine.STEP_LOG):
                    assert dispatched[stored.step_id, stored.attempt] == stored.agent
        finally:
            await coordinator.stop()
            await store.close()
    return outcomes


@settings(
    max_examples=SEQUENCES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(messages, min_size=6, max_size=MAX_MESSAGES))
def test_random_agent_messages_never_crash_nor_change_what_they_should_not(
    sequence: list[tuple],
) -> None:
    """No message sequence crashes the handler; those about others' attempts change nothing."""
    asyncio.run(scenario(sequence))
