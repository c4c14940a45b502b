"""Hiccups with real processes: killed, frozen and stopped daemons lose nothing, rerun nothing."""

from __future__ import annotations

import json
import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.cluster import Cluster, wait_for
from tests.e2e.ledger import count, ledger_lines
from workflow_agent.outbox import read_held

pytestmark = pytest.mark.e2e

# the crash tests run on both stores: same guarantees, whatever keeps the state
BOTH_STORES = pytest.mark.parametrize("make_cluster", ["sqlite", "mongodb"], indirect=True)


def count_flow(ledger: Path, steps: list[tuple[str, str]], **params: object) -> str:
    """A workflow of test.count steps: (step id, placement) pairs, run in order."""
    extra = "".join(f", {key}: {json.dumps(value)}" for key, value in params.items())
    lines = ["name: counted", "steps:"]
    for step_id, on in steps:
        lines += [
            f"  - id: {step_id}",
            "    task: test.count",
            f"    on: {on}",
            f"    with: {{ledger: {json.dumps(str(ledger))}{extra}}}",
        ]
    return "\n".join(lines) + "\n"


def successes(cluster: Cluster, run_id: str) -> Counter[str]:
    return Counter(e["step_id"] for e in cluster.history(run_id) if e["type"] == "step_succeeded")


@pytest.mark.parametrize(
    ("make_cluster", "seed", "length", "pause_s"),
    [
        ("sqlite", 1, 30, (0.05, 1.0)),
        ("sqlite", 2, 30, (0.05, 1.0)),
        # the test server behind the MongoDB store takes ~15 ms a durable write
        ("mongodb", 3, 20, (0.2, 1.5)),
    ],
    indirect=["make_cluster"],
)
def test_coordinator_killed_at_random_moments(
    make_cluster, write_flow, tmp_path, seed, length, pause_s
) -> None:
    """SIGKILL of workflowd at random moments of a long run: it ends, each step ran once."""
    cluster: Cluster = make_cluster()
    cluster.start_agent("a", "--allow", "*")
    cluster.start_agent("b", "--allow", "*")
    ledger = tmp_path / "ledger"
    steps = [(f"s{i:02d}", "{agent: a}" if i % 2 else "{agent: b}") for i in range(length)]
    run_id = cluster.ctl(
        "submit", str(write_flow(count_flow(ledger, steps, hold_s=0.1)))
    ).stdout.strip()

    rng = random.Random(seed)  # noqa: S311 - reproducible kill times, not secrets
    kills = 0
    # at most 25 kills, so that a slow machine cannot turn this into a livelock test
    while kills < 25 and cluster.run_status(run_id)["status"] == "running":
        time.sleep(rng.uniform(*pause_s))
        cluster.stop_daemon(signal.SIGKILL)
        kills += 1
        cluster.start_daemon()

    run = cluster.wait_run(run_id, 180)
    runs, done = count(ledger, "run"), count(ledger, "done")
    recorded = successes(cluster, run_id)
    twice = sorted(step for step, _ in steps if runs[step] != 1)
    print(f"\nseed {seed}: {kills} kills, steps run twice: {len(twice)}, status {run['status']}")
    assert kills >= 1
    assert run["status"] == "succeeded"
    assert twice == []
    assert all(done[step] == 1 for step, _ in steps)
    assert all(recorded[step] == 1 for step, _ in steps)


@BOTH_STORES
def test_agent_killed_mid_step_is_retried_after_restart(
    make_cluster, write_flow, tmp_path
) -> None:
    """An agent SIGKILLed during a step comes back; the lost attempt runs again, the run ends."""
    cluster: Cluster = make_cluster()
    cluster.start_agent("a", "--allow", "*")
    ledger = tmp_path / "ledger"
    flow = write_flow(count_flow(ledger, [("slow", "{agent: a}")], hold_s=2))
    run_id = cluster.ctl("submit", str(flow)).stdout.strip()

    wait_for(lambda: count(ledger, "run")["slow"] == 1, what="the step to start")
    cluster.stop_agent("a", signal.SIGKILL)
    cluster.start_agent("a", "--allow", "*")

    run = cluster.wait_run(run_id)
    assert run["status"] == "succeeded"
    assert run["steps"][0]["attempt"] == 2
    assert count(ledger, "run")["slow"] == 2
    assert count(ledger, "done")["slow"] == 1
    types = [e["type"] for e in cluster.history(run_id)]
    assert "step_interrupted" in types
    assert "step_failed" not in types


@BOTH_STORES
def test_result_finished_while_coordinator_down_survives_agent_restart(
    make_cluster, write_flow, tmp_path
) -> None:
    """A result finished while workflowd was down survives an agent restart and is delivered."""
    cluster: Cluster = make_cluster()
    cluster.start_agent("a", "--allow", "*")
    ledger = tmp_path / "ledger"
    flow = write_flow(count_flow(ledger, [("job", "{agent: a}")], hold_s=1))
    run_id = cluster.ctl("submit", str(flow)).stdout.strip()

    wait_for(lambda: count(ledger, "run")["job"] == 1, what="the step to start")
    cluster.stop_daemon(signal.SIGKILL)
    wait_for(lambda: count(ledger, "done")["job"] == 1, what="the step to finish")
    outbox = cluster.root / "agent-a" / "outbox"
    wait_for(lambda: read_held(outbox), what="the result to reach the outbox")
    cluster.stop_agent("a", signal.SIGKILL)
    cluster.start_agent("a", "--allow", "*", wait=False)
    cluster.start_daemon()

    run = cluster.wait_run(run_id)
    assert run["status"] == "succeeded"
    assert run["steps"][0]["attempt"] == 1
    assert count(ledger, "run")["job"] == 1
    cluster.stop_agent("a")  # its acknowledgements are on disk once it has stopped
    assert read_held(outbox) == {}


@BOTH_STORES
def test_frozen_agent_fails_over_and_its_late_result_is_rejected(
    make_cluster, write_flow, tmp_path
) -> None:
    """SIGSTOP on an agent mid-step: the heartbeat limit fires, the retry runs elsewhere,
    and after SIGCONT the stale attempt's result is rejected."""
    cluster: Cluster = make_cluster("--heartbeat-timeout", "1.5")
    cluster.start_agent("w1", "--allow", "*", "--label", "role=w")
    cluster.start_agent("w2", "--allow", "*", "--label", "role=w")
    ledger = tmp_path / "ledger"
    text = count_flow(ledger, [("job", "{labels: {role: w}}")], hold_s=3)
    text += "    retry: {attempts: 2, backoff: 100ms}\n"
    run_id = cluster.ctl("submit", str(write_flow(text))).stdout.strip()

    wait_for(lambda: count(ledger, "run")["job"] == 1, what="the step to start")
    frozen = cluster.run_status(run_id)["steps"][0]["agent"]
    cluster.signal_agent(frozen, signal.SIGSTOP)

    run = cluster.wait_run(run_id, 30)
    assert run["status"] == "succeeded"
    step = run["steps"][0]
    assert step["attempt"] == 2
    assert step["agent"] != frozen

    cluster.signal_agent(frozen, signal.SIGCONT)
    wait_for(
        lambda: "stale" in cluster.log("workflowd"),
        30,
        "the late attempt to be rejected as stale",
    )
    history = cluster.history(run_id)
    failures = [e for e in history if e["type"] == "step_failed"]
    assert [f["data"]["error"] for f in failures] == ["agent_lost"]
    assert successes(cluster, run_id) == {"job": 1}


def test_step_timeout_applies_the_retry_policy(make_cluster, write_flow, tmp_path) -> None:
    """A step that outlives its timeout is stopped and retried; the last try rolls back."""
    cluster: Cluster = make_cluster()
    cluster.start_agent("a", "--allow", "*")
    ledger = tmp_path / "ledger"
    text = count_flow(ledger, [("slow", "{agent: a}")], hold_s=20)
    text += "    timeout: 1s\n    retry: {attempts: 2, backoff: 100ms}\n"

    result = cluster.ctl("submit", "--follow", str(write_flow(text)))

    assert result.code == 1
    assert "timed out after 1s (attempt 2)" in result.stdout
    assert "slow: retrying" in result.stdout
    lines = ledger_lines(ledger)
    wait_for(lambda: count(ledger, "rollback")["slow"] == 1, what="the final attempt's rollback")
    lines = ledger_lines(ledger)
    assert [(what, attempt) for what, _, _, attempt in lines] == [
        ("run", 1),
        ("run", 2),
        ("rollback", 2),
    ]


@BOTH_STORES
def test_resume_skips_finished_steps_and_from_reruns(make_cluster, write_flow, tmp_path) -> None:
    """After a fix, resume runs only unfinished steps; --from reruns a step and its followers."""
    cluster: Cluster = make_cluster()
    cluster.start_agent("a", "--allow", "*")
    ledger, broken = tmp_path / "ledger", tmp_path / "broken"
    broken.touch()
    text = count_flow(ledger, [("one", "{agent: a}")])
    text += count_flow(ledger, [("two", "{agent: a}")], fail_while=str(broken)).split("steps:\n")[
        1
    ]
    text += count_flow(ledger, [("three", "coordinator")]).split("steps:\n")[1]
    flow = write_flow(text)

    first = cluster.ctl("submit", "--follow", str(flow))
    assert first.code == 1
    run_id = first.stdout.split()[0]
    assert "broken exists" in first.stdout

    refused = cluster.ctl("resume", run_id, "--from", "nope")
    assert refused.code == 1
    assert "has no step 'nope'" in refused.stderr

    broken.unlink()
    resumed = cluster.ctl("resume", run_id, "--follow")
    assert resumed.code == 0, resumed.stdout + resumed.stderr
    assert "running again: two, three" in resumed.stderr
    assert count(ledger, "run") == {"one": 1, "two": 2, "three": 1}

    again = cluster.ctl("resume", run_id)
    assert again.code == 1
    assert "nothing to resume" in again.stderr

    rerun = cluster.ctl("resume", run_id, "--from", "two", "--follow")
    assert rerun.code == 0
    steps = {s["step_id"]: s for s in cluster.run_status(run_id)["steps"]}
    assert steps["one"]["attempt"] == 1
    assert steps["two"]["attempt"] == 3
    assert steps["three"]["attempt"] == 2
    # their check recognised the finished work: dispatched again, not run again
    assert count(ledger, "run") == {"one": 1, "two": 2, "three": 1}
    assert "(already done, run skipped)" in rerun.stdout


@BOTH_STORES
def test_cancel_reaches_the_plugin_and_rolls_back(make_cluster, write_flow, tmp_path) -> None:
    """cancel mid-step: the plugin sees it, its rollback runs, the run ends cancelled."""
    cluster: Cluster = make_cluster()
    cluster.start_agent("a", "--allow", "*")
    ledger = tmp_path / "ledger"
    flow = write_flow(
        count_flow(ledger, [("long", "{agent: a}"), ("never", "{agent: a}")], hold_s=30)
    )
    run_id = cluster.ctl("submit", str(flow)).stdout.strip()
    wait_for(lambda: count(ledger, "run")["long"] == 1, what="the step to start")

    result = cluster.ctl("cancel", run_id, "--reason", "changed my mind")

    assert result.code == 0
    run = cluster.wait_run(run_id, 20)
    assert run["status"] == "cancelled"
    assert count(ledger, "rollback") == {"long": 1}
    assert "never" not in count(ledger, "run")
    assert "long noticed its cancellation" in run["steps"][0]["error"]
    assert cluster.ctl("tail", run_id).code == 1


def test_the_same_result_twice_is_applied_once(cluster: Cluster, write_flow) -> None:
    """A result delivered twice for one attempt is recorded once and acknowledged both times."""
    import grpc

    from workflowd.rpc import workflow_pb2 as pb
    from workflowd.rpc import workflow_pb2_grpc as rpc

    run_id = cluster.ctl(
        "submit",
        str(write_flow("name: dup\nsteps:\n  - {id: only, task: noop, on: {agent: twice}}\n")),
    ).stdout.strip()

    outgoing: list[pb.AgentMessage] = [
        pb.AgentMessage(hello=pb.Hello(name="twice", plugins=[pb.PluginInfo(name="noop")]))
    ]
    import queue

    sending: queue.Queue[pb.AgentMessage | None] = queue.Queue()
    for message in outgoing:
        sending.put(message)
    with grpc.insecure_channel(cluster.address) as channel:
        replies = rpc.AgentServiceStub(channel).Connect(iter(sending.get, None))
        assert next(replies).WhichOneof("kind") == "welcome"
        start = next(replies).start
        done = pb.AgentMessage(
            step=pb.StepEvent(ref=start.ref, completed=pb.StepCompleted(outputs_json="{}"))
        )
        sending.put(done)
        sending.put(done)
        acked: list[pb.AttemptRef] = []
        while len(acked) < 2:  # acknowledgements that wait together go in one message
            reply = next(replies)
            assert reply.WhichOneof("kind") == "ack"
            acked += [reply.ack.ref, *reply.ack.more]
        sending.put(None)
    assert acked == [start.ref, start.ref]
    assert cluster.wait_run(run_id)["status"] == "succeeded"
    assert successes(cluster, run_id) == {"only": 1}


def test_submit_with_a_key_is_idempotent(cluster: Cluster, write_flow) -> None:
    """A second submit with the same key returns the first run instead of starting another."""
    flow = str(write_flow("name: once\nsteps:\n  - {id: a, task: noop}\n"))
    first = cluster.ctl("submit", "--key", "deploy-42", flow)
    second = cluster.ctl("submit", "--key", "deploy-42", flow)
    assert first.code == second.code == 0
    assert first.stdout == second.stdout
    assert "an earlier run holds key 'deploy-42'" in second.stderr
    assert len(cluster.ctl("list", "--json").json_lines()) == 1


def test_agent_sigterm_interrupts_instead_of_failing(make_cluster, write_flow, tmp_path) -> None:
    """SIGTERM past an agent's grace period reports the step interrupted; it runs again later."""
    cluster: Cluster = make_cluster()
    cluster.start_agent("a", "--allow", "*", "--grace", "0.3")
    ledger = tmp_path / "ledger"
    flow = write_flow(count_flow(ledger, [("job", "{agent: a}")], hold_s=2))
    run_id = cluster.ctl("submit", str(flow)).stdout.strip()
    wait_for(lambda: count(ledger, "run")["job"] == 1, what="the step to start")

    assert cluster.stop_agent("a", signal.SIGTERM) == 0
    interrupted = wait_for(
        lambda: [e for e in cluster.history(run_id) if e["type"] == "step_interrupted"],
        what="the interruption to be recorded",
    )
    assert "shutting down" in interrupted[0]["data"]["reason"]
    cluster.start_agent("a", "--allow", "*")

    run = cluster.wait_run(run_id)
    assert run["status"] == "succeeded"
    assert "step_failed" not in [e["type"] for e in cluster.history(run_id)]
    assert count(ledger, "rollback") == {}


def test_coordinator_step_interrupted_by_a_kill_runs_again(
    make_cluster, write_flow, tmp_path
) -> None:
    """A step running on the coordinator when it is killed runs again after the restart."""
    cluster: Cluster = make_cluster()
    ledger = tmp_path / "ledger"
    flow = write_flow(count_flow(ledger, [("local", "coordinator")], hold_s=1.5))
    run_id = cluster.ctl("submit", str(flow)).stdout.strip()
    wait_for(lambda: count(ledger, "run")["local"] == 1, what="the step to start")

    cluster.stop_daemon(signal.SIGKILL)
    cluster.start_daemon()

    run = cluster.wait_run(run_id)
    assert run["status"] == "succeeded"
    assert run["steps"][0]["attempt"] == 2
    assert count(ledger, "done") == {"local": 1}
