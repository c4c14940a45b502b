"""The agent at its edge: what it refuses to run, and results that would not fit the stream."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from workflow_agent.agent import Agent, result_message
from workflowd.execution import Outcome
from workflowd.rpc import workflow_pb2 as pb
from workflowd.tasks import load_plugins


def agent(tmp_path: Path) -> Agent:
    made = Agent("127.0.0.1:1", "host-a", {}, load_plugins(("noop",)), tmp_path)
    made.installed = frozenset({"noop", "shell.run"})
    return made


def start(task: str, run_id: str = "r1", config: str = "{}") -> pb.StartStep:
    return pb.StartStep(
        ref=pb.AttemptRef(run_id=run_id, step_id="s1", attempt=1),
        task=task,
        params_json=json.dumps({"command": ["touch", "never-created"]}),
        config_json=config,
    )


def sent_for(tmp_path: Path, message: pb.StartStep) -> list[pb.AgentMessage]:
    """What the agent sends back when it is given `message` (and nothing is left running)."""
    subject = agent(tmp_path)

    async def scenario() -> list[pb.AgentMessage]:
        subject._outbox = asyncio.Queue()
        subject._start(message)
        assert not subject._running
        await subject._held.flush()  # a result goes out once it is on disk
        await asyncio.sleep(0.01)
        return [subject._outbox.get_nowait() for _ in range(subject._outbox.qsize())]

    return asyncio.run(scenario())


@pytest.mark.parametrize(
    ("task", "error", "reason"),
    [
        (
            "shell.run",
            "task_not_allowed",
            "task shell.run is installed on host-a but not allowed there (allowed: noop); "
            "start the agent with --allow shell.run to allow it",
        ),
        ("no.such", "unknown_task", "task no.such is not installed on host-a"),
    ],
)
def test_a_step_the_agent_may_not_run_fails_with_the_reason(
    tmp_path: Path, task: str, error: str, reason: str
) -> None:
    """A start for a plugin not installed or not allowed fails at once, never started."""
    sent = sent_for(tmp_path, start(task))

    assert [m.step.WhichOneof("kind") for m in sent] == ["failed"]
    assert (sent[0].step.failed.error, sent[0].step.failed.message) == (error, reason)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (start("noop", run_id="../../etc"), "run and step ids must be letters"),
        (start("noop", config="[1"), "the run's configuration is not a JSON object"),
    ],
)
def test_malformed_starts_are_refused(tmp_path: Path, message: pb.StartStep, reason: str) -> None:
    """Ids that would climb out of the work dir, or a config that is not JSON, are refused."""
    sent = sent_for(tmp_path, message)

    assert sent[0].step.failed.error == "invalid_message"
    assert sent[0].step.failed.message.startswith(reason)
    assert not (tmp_path / "scratch").exists()


def test_a_result_too_large_for_the_stream_becomes_a_failure() -> None:
    """Outputs beyond the coordinator's limit are replaced by a failure that says so."""
    outcome = Outcome(True, {"blob": "x" * 200_000})

    message = result_message(("r1", "s1", 1), outcome, limit_bytes=65_536)

    assert message.step.failed.error == "outputs_too_large"
    assert message.step.failed.message == (
        "outputs of 200012 bytes exceed the limit of 61440 bytes"
    )
    assert message.ByteSize() < 65_536


def test_held_results_are_held_to_a_new_smaller_limit(tmp_path: Path) -> None:
    """After a reconnect to a coordinator with a smaller limit, held results that no longer
    fit are sent as failures instead of breaking the new stream."""
    subject = agent(tmp_path)
    key = ("r1", "s1", 1)
    subject._held.put(key, result_message(key, Outcome(True, {"blob": "x" * 100_000})))

    async def reconnect() -> None:
        subject._adopt_limit(65_536)
        await subject._held.flush()

    asyncio.run(reconnect())

    (held,) = subject._held.messages()
    assert held.step.failed.error == "outputs_too_large"
    assert subject.max_message_bytes == 65_536
    # and that is what a restarted agent would find on its disk
    restarted = agent(tmp_path)
    (kept,) = restarted._held.messages()
    assert kept.step.failed.error == "outputs_too_large"


def sent_by_step(tmp_path: Path, task: str, params: dict) -> list[pb.AgentMessage]:
    """What the agent sends for one step that it runs to its end."""
    subject = Agent("127.0.0.1:1", "host-a", {}, load_plugins(("noop", "sleep")), tmp_path)
    message = pb.StartStep(
        ref=pb.AttemptRef(run_id="r1", step_id="s1", attempt=1),
        task=task,
        params_json=json.dumps(params),
    )

    async def scenario() -> list[pb.AgentMessage]:
        subject._outbox = asyncio.Queue()
        subject._start(message)
        await asyncio.gather(*(task for task, _ in subject._running.values()))
        await subject._held.flush()  # a result goes out once it is on disk
        await asyncio.sleep(0.01)
        return [subject._outbox.get_nowait() for _ in range(subject._outbox.qsize())]

    return asyncio.run(scenario())


def test_a_short_step_sends_only_its_result_which_stands_for_its_start(tmp_path: Path) -> None:
    (result,) = sent_by_step(tmp_path, "noop", {})
    assert result.step.WhichOneof("kind") == "completed"
    assert result.step.implies_started


def test_a_step_that_reports_announces_its_start_first(tmp_path: Path) -> None:
    sent = sent_by_step(tmp_path, "sleep", {"seconds": 0.05})
    kinds = [m.step.WhichOneof("kind") for m in sent]
    assert kinds[0] == "started"
    assert kinds.count("started") == 1
    assert "progress" in kinds
    assert kinds[-1] == "completed"
    assert not sent[-1].step.implies_started


def test_a_step_cancelled_before_it_first_runs_reports_its_cancellation(tmp_path: Path) -> None:
    """A cancel that arrives with its start (before the step's task first runs) still ends
    the attempt with a result, and the agent no longer counts it as running."""
    subject = Agent("127.0.0.1:1", "host-a", {}, load_plugins(("noop", "sleep")), tmp_path)
    ref = pb.AttemptRef(run_id="r1", step_id="s1", attempt=1)

    async def scenario() -> list[pb.AgentMessage]:
        subject._outbox = asyncio.Queue()
        subject._handle(pb.CoordinatorMessage(start=pb.StartStep(ref=ref, task="noop")))
        cancel = pb.CancelStep(ref=ref, reason="run cancelled")
        subject._handle(pb.CoordinatorMessage(cancel=cancel))
        await asyncio.sleep(0.01)
        await subject._held.flush()
        await asyncio.sleep(0.01)
        return [subject._outbox.get_nowait() for _ in range(subject._outbox.qsize())]

    (result,) = asyncio.run(scenario())
    assert result.step.failed.error == "cancelled"
    assert "run cancelled" in result.step.failed.message
    assert subject.running == 0
