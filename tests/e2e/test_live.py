"""Live runs across hosts: config changes, messages, signals, parallel branches, fan-out."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.cluster import Cluster, wait_for
from tests.e2e.ledger import count

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).parents[2] / "examples"


def step_status(cluster: Cluster, run_id: str, step_id: str) -> str:
    return {s["step_id"]: s for s in cluster.run_status(run_id)["steps"]}[step_id]["status"]


def test_config_change_reaches_running_steps_on_agent_and_coordinator(
    cluster: Cluster, write_flow
) -> None:
    """config set reaches steps running on an agent and on the coordinator, and later steps."""
    cluster.start_agent("a", "--allow", "*")
    flow = write_flow(
        "name: live-config\nconfig: {mode: wait}\nsteps:\n"
        "  - {id: remote, task: test.await_config, on: {agent: a}, needs: [],"
        " with: {key: mode, value: go}}\n"
        "  - {id: local, task: test.await_config, needs: [], with: {key: mode, value: go}}\n"
        "  - {id: later, task: test.send, needs: [remote, local],"
        " with: {topic: t, payload: '${{ config.mode }}'}}\n"
    )
    run_id = cluster.ctl("submit", str(flow)).stdout.strip()
    wait_for(
        lambda: {step_status(cluster, run_id, s) for s in ("remote", "local")} == {"running"},
        what="both steps to run",
    )

    result = cluster.ctl("config", "set", run_id, "mode=go")

    assert result.code == 0, result.stderr
    assert '"mode": "go"' in result.stdout
    run = cluster.wait_run(run_id)
    assert run["status"] == "succeeded"
    steps = {s["step_id"]: s for s in run["steps"]}
    assert steps["remote"]["outputs"]["seen"] == ["wait", "go"]
    assert steps["local"]["outputs"]["seen"] == ["wait", "go"]
    later = [e for e in cluster.history(run_id) if e["type"] == "step_dispatched"][-1]
    assert later["data"]["params"]["payload"] == "go"
    assert any(e["type"] == "run_config_updated" for e in cluster.history(run_id))


def test_message_crosses_hosts_and_survives_a_coordinator_restart(
    cluster: Cluster, write_flow
) -> None:
    """A step on one agent receives what a step on another sent, across a SIGKILL of workflowd."""
    cluster.start_agent("a", "--allow", "*")
    cluster.start_agent("b", "--allow", "*")
    flow = write_flow(
        "name: chat\nsteps:\n"
        "  - {id: listen, task: test.receive, on: {agent: b}, needs: [],"
        " with: {topic: news, count: 2, timeout_s: 60}}\n"
        "  - {id: early, task: test.send, on: {agent: a}, needs: [],"
        " with: {topic: news, payload: {n: 1}}}\n"
        "  - {id: gate, wait: {signal: go}, needs: []}\n"
        "  - {id: late, task: test.send, on: {agent: a}, needs: [gate],"
        " with: {topic: news, payload: {n: 2}}}\n"
    )
    run_id = cluster.ctl("submit", str(flow)).stdout.strip()
    wait_for(lambda: step_status(cluster, run_id, "early") == "succeeded", what="the first send")

    cluster.stop_daemon(signal.SIGKILL)
    cluster.start_daemon()
    wait_for(lambda: cluster.agent_connected("b"), what="agent b to reconnect")
    assert cluster.ctl("signal", run_id, "go").code == 0

    run = cluster.wait_run(run_id, 60)
    assert run["status"] == "succeeded", run
    steps = {s["step_id"]: s for s in run["steps"]}
    assert steps["listen"]["outputs"]["messages"] == [{"n": 1}, {"n": 2}]
    assert steps["listen"]["attempt"] == 1


def test_declared_outputs_are_published_to_their_topic(cluster: Cluster, write_flow) -> None:
    """An output a step declares in publish goes to its topic as soon as the step sets it."""
    cluster.start_agent("a", "--allow", "*")
    flow = write_flow(
        "name: publish\nsteps:\n"
        "  - {id: maker, task: test.send, on: {agent: a}, needs: [],"
        " with: {topic: unused, payload: 42, output: answer}, publish: {answer: answers}}\n"
        "  - {id: taker, task: test.receive, needs: [], with: {topic: answers}}\n"
    )
    result = cluster.ctl("submit", "--follow", str(flow))
    assert result.code == 0, result.stdout
    steps = {s["step_id"]: s for s in cluster.run_status(result.stdout.split()[0])["steps"]}
    assert steps["taker"]["outputs"]["messages"] == [42]
    assert steps["maker"]["outputs"]["answer"] == 42


def test_wait_step_goes_on_with_its_signal_payload(cluster: Cluster, write_flow) -> None:
    """A wait step pauses its run visibly until its signal; the payload becomes its output."""
    flow = write_flow(
        "name: gate\nsteps:\n  - {id: approval, wait: {signal: approve}}\n"
        "  - {id: after, task: test.send,"
        " with: {topic: t, payload: '${{ steps.approval.outputs.by }}'}}\n"
    )
    run_id = cluster.ctl("submit", str(flow)).stdout.strip()
    run = wait_for(
        lambda: (s := cluster.run_status(run_id))["steps"][0]["status"] == "waiting" and s,
        what="the gate to wait",
    )
    assert run["steps"][0]["waiting_reason"] == "waiting for signal approve"

    sent = cluster.ctl("signal", run_id, "approve", '{"by": "alice"}')

    assert "delivered to approval" in sent.stdout
    run = cluster.wait_run(run_id)
    assert run["status"] == "succeeded"
    assert run["steps"][0]["outputs"] == {"by": "alice"}
    dispatched = [e for e in cluster.history(run_id) if e["type"] == "step_dispatched"]
    assert dispatched[0]["data"]["params"]["payload"] == "alice"


def test_wait_step_times_out_without_its_signal(cluster: Cluster, write_flow) -> None:
    """Without its signal a wait step fails at its timeout, and the run can be resumed."""
    flow = write_flow("name: gate\nsteps:\n  - {id: approval, wait: {signal: ok, timeout: 1s}}\n")
    result = cluster.ctl("submit", "--follow", str(flow))
    assert result.code == 1
    assert "no signal 'ok' within 1s" in result.stdout


def test_diamond_runs_its_middle_steps_at_the_same_time(
    cluster: Cluster, write_flow, tmp_path
) -> None:
    """a -> (b, c) -> d: b and c both start before either finishes; d runs after both."""
    cluster.start_agent("x", "--allow", "*")
    cluster.start_agent("y", "--allow", "*")
    ledger = tmp_path / "ledger"
    step = f"task: test.count, with: {{ledger: '{ledger}', hold_s: 1}}"
    flow = write_flow(
        "name: diamond\nsteps:\n"
        f"  - {{id: a, {step}, on: {{agent: x}}}}\n"
        f"  - {{id: b, {step}, on: {{agent: x}}, needs: [a]}}\n"
        f"  - {{id: c, {step}, on: {{agent: y}}, needs: [a]}}\n"
        f"  - {{id: d, {step}, on: {{agent: y}}, needs: [b, c]}}\n"
    )
    result = cluster.ctl("submit", "--follow", str(flow))
    assert result.code == 0, result.stdout
    history = cluster.history(result.stdout.split()[0])
    order = [
        (e["type"], e["step_id"])
        for e in history
        if e["type"] in ("step_started", "step_succeeded")
    ]
    started_b = order.index(("step_started", "b"))
    started_c = order.index(("step_started", "c"))
    first_done = min(order.index(("step_succeeded", "b")), order.index(("step_succeeded", "c")))
    assert max(started_b, started_c) < first_done
    assert order.index(("step_started", "d")) > max(
        order.index(("step_succeeded", "b")), order.index(("step_succeeded", "c"))
    )


def test_fan_out_respects_max_parallel(cluster: Cluster, write_flow, tmp_path) -> None:
    """A fan-out over three agents never runs more than max_parallel instances at once."""
    for name in ("web-1", "web-2", "web-3"):
        cluster.start_agent(name, "--allow", "*", "--label", "role=web")
    ledger = tmp_path / "ledger"
    flow = write_flow(
        "name: fan\nsteps:\n  - id: roll\n    task: test.count\n"
        "    on: {labels: {role: web}, all: true}\n    strategy: {max_parallel: 2}\n"
        f"    with: {{ledger: '{ledger}', hold_s: 0.5}}\n"
    )
    result = cluster.ctl("submit", "--follow", str(flow))
    assert result.code == 0, result.stdout
    run_id = result.stdout.split()[0]

    running, most = 0, 0
    for event in cluster.history(run_id):
        if event["type"] == "step_dispatched":
            running += 1
            most = max(most, running)
        elif event["type"] in ("step_succeeded", "step_failed") and "[" in event["step_id"]:
            running -= 1
    assert most == 2
    run = cluster.run_status(run_id)
    roll = {s["step_id"]: s for s in run["steps"]}["roll"]
    assert sorted(roll["outputs"]) == ["web-1", "web-2", "web-3"]
    assert count(ledger, "done") == {"roll[web-1]": 1, "roll[web-2]": 1, "roll[web-3]": 1}


def test_fan_out_stops_at_max_failures(cluster: Cluster, write_flow, tmp_path) -> None:
    """Once more instances failed than max_failures allows, no further instance starts."""
    for name in ("web-1", "web-2", "web-3"):
        cluster.start_agent(name, "--allow", "*", "--label", "role=web")
    ledger = tmp_path / "ledger"
    flow = write_flow(
        "name: fan\nsteps:\n  - id: roll\n    task: test.count\n"
        "    on: {labels: {role: web}, all: true}\n"
        "    strategy: {max_parallel: 1, max_failures: 0}\n"
        f"    with: {{ledger: '{ledger}', fail_on: [web-1]}}\n"
    )
    result = cluster.ctl("submit", "--follow", str(flow))
    assert result.code == 1
    assert (
        "1 of 3 instances failed (max_failures 0): web-1: told to fail on web-1" in result.stdout
    )
    assert set(count(ledger, "run")) == {"roll[web-1]"}


def test_when_false_skips_a_step(cluster: Cluster, write_flow) -> None:
    """A step whose when is false is skipped and the run goes on without it."""
    flow = write_flow(
        "name: cond\ninputs: {deploy: {type: boolean, default: false}}\nsteps:\n"
        "  - {id: maybe, task: noop, when: '${{ inputs.deploy }}'}\n"
        "  - {id: always, task: noop}\n"
    )
    result = cluster.ctl("submit", "--follow", str(flow))
    assert result.code == 0
    steps = {
        s["step_id"]: s["status"] for s in cluster.run_status(result.stdout.split()[0])["steps"]
    }
    assert steps == {"maybe": "skipped", "always": "succeeded"}


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("'a' * 1000000000", "refused by the sandbox: * would make more than 100000 items"),
        ("2 ** 100000000", "expressions cannot use **"),
        ("inputs.__class__.__mro__", "expressions cannot read private attributes"),
        ("lipsum()", "cannot call functions"),
        ("range(10)", "cannot call functions"),
        ("self", "unknown name 'self'"),
        ("config.update({'a': 1})", "cannot call functions"),
    ],
)
def test_hostile_expressions_are_refused(
    cluster: Cluster, write_flow, expr: str, message: str
) -> None:
    """Expressions that try to run code, escape the sandbox or exhaust memory are refused."""
    payload = "${{ " + expr + " }}"
    step = f'{{id: a, task: test.send, with: {{topic: t, payload: "{payload}"}}}}'
    flow = write_flow(f"name: bad\nsteps:\n  - {step}\n")
    result = cluster.ctl("submit", "--follow", str(flow))
    assert result.code == 1
    assert message in result.stdout + result.stderr
