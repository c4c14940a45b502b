"""Runs driven through the real workflowctl: placement, waiting, tail, reconnects."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.cluster import BIN, Cluster, wait_for

pytestmark = pytest.mark.e2e

ONE_STEP = """
name: one-step
steps:
  - id: only
    task: {task}
    on: {on}
    with: {params}
"""


def flow(write_flow, task: str = "noop", on: str = "coordinator", params: str = "{}") -> str:
    return str(write_flow(ONE_STEP.format(task=task, on=on, params=params)))


def test_step_for_absent_agent_waits_visibly_then_runs(cluster: Cluster, write_flow) -> None:
    """A step for an agent that is not connected waits, says why, and runs once it connects."""
    run_id = cluster.ctl("submit", flow(write_flow, on="{agent: late}")).stdout.strip()

    waiting = wait_for(
        lambda: (s := cluster.run_status(run_id))["steps"][0]["status"] == "waiting" and s,
        what="the step to wait",
    )
    assert waiting["status"] == "running"
    assert waiting["steps"][0]["waiting_reason"] == "agent late is not connected"
    human = cluster.ctl("status", run_id)
    assert "agent late is not connected" in human.stdout

    cluster.start_agent("late")
    run = cluster.wait_run(run_id)
    assert run["status"] == "succeeded"
    assert run["steps"][0]["agent"] == "late"


def test_labels_pick_a_matching_agent(cluster: Cluster, write_flow) -> None:
    """A step placed by labels runs on an agent with those labels, never on another."""
    cluster.start_agent("db-1", "--label", "role=db")
    cluster.start_agent("web-1", "--label", "role=web", "--label", "zone=b")
    result = cluster.ctl("submit", "--follow", flow(write_flow, on="{labels: {role: web}}"))
    assert result.code == 0, result.stdout + result.stderr
    run = cluster.run_status(result.stdout.split()[0])
    assert run["steps"][0]["agent"] == "web-1"


def test_step_waits_when_matching_agent_lacks_the_task(cluster: Cluster, write_flow) -> None:
    """An agent that does not allow a task is not given it; the step says so while waiting."""
    cluster.start_agent("narrow", "--allow", "noop")
    run_id = cluster.ctl(
        "submit", flow(write_flow, "sleep", "{agent: narrow}", "{seconds: 0}")
    ).stdout.strip()
    run = wait_for(
        lambda: (s := cluster.run_status(run_id))["steps"][0]["status"] == "waiting" and s,
        what="the step to wait",
    )
    assert run["steps"][0]["waiting_reason"] == "task sleep is not available on narrow"


def test_tail_replays_a_finished_run_with_its_outcome(cluster: Cluster, write_flow) -> None:
    """tail of a finished run replays its whole history and exits with its outcome."""
    good = cluster.ctl("submit", "--follow", flow(write_flow)).stdout.split()[0]
    bad = cluster.ctl(
        "submit",
        "--follow",
        flow(write_flow, "files.manifest", params="{path: /nonexistent/tree}"),
    )
    assert bad.code == 1
    bad_id = bad.stdout.split()[0]

    replay = cluster.ctl("tail", good, "--json")
    events = replay.json_lines()
    assert replay.code == 0
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e["type"] for e in events] == [
        "run_submitted",
        "run_started",
        "step_dispatched",
        "step_started",
        "step_succeeded",
        "run_succeeded",
    ]

    failed = cluster.ctl("tail", bad_id)
    assert failed.code == 1
    assert (
        "only: failed on coordinator: /nonexistent/tree is not a directory on coordinator"
        in failed.stdout
    )
    assert "run failed at step only" in failed.stdout


def test_tail_of_an_unknown_run_says_so(cluster: Cluster) -> None:
    """tail of a run id that does not exist names it and exits 3."""
    result = cluster.ctl("tail", "0000000000nosuchrun")
    assert result.code == 3
    assert "no run with id '0000000000nosuchrun'" in result.stderr


def test_tail_follows_a_running_step_live(cluster: Cluster, write_flow) -> None:
    """A tail started while a step runs receives its progress as it happens, then the end."""
    cluster.start_agent("slow")
    run_id = cluster.ctl(
        "submit", flow(write_flow, "sleep", "{agent: slow}", "{seconds: 3}")
    ).stdout.strip()
    tail = subprocess.Popen(
        [str(BIN / "workflowctl"), "--coordinator", cluster.address, "tail", run_id, "--json"],
        stdout=subprocess.PIPE,
        text=True,
    )
    arrivals = []  # (when this test read it, event)
    assert tail.stdout is not None
    for line in tail.stdout:
        arrivals.append((time.monotonic(), json.loads(line)))
    assert tail.wait(30) == 0
    types = [event["type"] for _, event in arrivals]
    assert types.count("step_progress") >= 3
    assert types[-1] == "run_succeeded"
    # progress reached the tail as it happened: well before the step's end reached it
    first_progress = next(at for at, e in arrivals if e["type"] == "step_progress")
    finished = next(at for at, e in arrivals if e["type"] == "step_succeeded")
    assert finished - first_progress > 1.0


def test_agent_reconnects_after_the_coordinator_restarts(cluster: Cluster, write_flow) -> None:
    """An agent whose coordinator went away connects again by itself and takes new steps."""
    cluster.start_agent("steady")
    assert cluster.stop_daemon() == 0
    cluster.start_daemon()
    wait_for(lambda: cluster.agent_connected("steady"), 30, "the agent to reconnect")

    result = cluster.ctl("submit", "--follow", flow(write_flow, on="{agent: steady}"))
    assert result.code == 0, result.stdout + result.stderr
    assert "reconnect_scheduled" in cluster.log("agent-steady")


def test_list_and_agents_show_what_happened(cluster: Cluster, write_flow) -> None:
    """list shows runs newest first; agents shows who is connected."""
    cluster.start_agent("lister", "--label", "role=x", "--allow", "noop", "--allow", "sleep")
    first = cluster.ctl("submit", "--follow", flow(write_flow)).stdout.split()[0]
    second = cluster.ctl("submit", "--follow", flow(write_flow)).stdout.split()[0]

    runs = cluster.ctl("list", "--json").json_lines()
    assert [r["run_id"] for r in runs] == [second, first]
    assert {r["status"] for r in runs} == {"succeeded"}
    agents = cluster.ctl("agents", "--json").json_lines()
    assert agents == [
        {
            "name": "lister",
            "labels": {"role": "x"},
            "plugins": ["noop", "sleep"],
            "connected": True,
            "last_seen_ms": agents[0]["last_seen_ms"],
            "version": agents[0]["version"],
            "running": 0,
        }
    ]


def test_a_second_workflowd_on_the_same_port_or_store_refuses_to_start(cluster: Cluster) -> None:
    """Starting workflowd again on a busy port, or on a store in use, fails with a clear error."""
    import subprocess as sp

    same_port = sp.run(
        [
            str(BIN / "workflowd"),
            "--listen",
            cluster.address,
            "--store",
            str(cluster.root / "o.db"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert same_port.returncode != 0
    assert f"cannot listen on {cluster.address}" in same_port.stderr

    from tests.cluster import free_port

    same_store = sp.run(
        [
            str(BIN / "workflowd"),
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--store",
            str(cluster.store_path),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert same_store.returncode != 0
    assert "another workflowd is using" in same_store.stderr


def test_list_limit_out_of_range_is_a_usage_error(cluster: Cluster) -> None:
    """list --limit -1 is refused as a usage error (exit 2), without a traceback."""
    result = cluster.ctl("list", "--limit", "-1")
    assert result.code == 2
    assert "Traceback" not in result.stderr
