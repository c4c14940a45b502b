"""A rogue agent process forges results for a real agent's step: it is rejected and logged,
and the real run goes on as if it had never spoken."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.cluster import Cluster, Pki, wait_for
from workflowd.batching import MAX_PER_MESSAGE

pytestmark = pytest.mark.e2e

ROGUE = Path(__file__).with_name("rogue_agent.py")
RANDOM_MESSAGES = 300

SLOW = """
name: honest
steps:
  - {id: slow, task: sleep, on: {agent: host-a}, with: {seconds: 3}}
  - {id: after, task: noop, on: {agent: host-a}}
"""


def rogue(cluster: Cluster, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, str(ROGUE), "--coordinator", cluster.address, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout)


def daemon_events(cluster: Cluster) -> list[dict]:
    lines = cluster.log("workflowd").splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def start_honest_run(cluster: Cluster, write_flow) -> str:
    cluster.start_agent("host-a")
    run_id = cluster.ctl("submit", str(write_flow(SLOW))).stdout.strip()
    wait_for(
        lambda: cluster.run_status(run_id)["steps"][0]["status"] == "running",
        what="the honest step to run",
    )
    return run_id


def assert_unaffected(cluster: Cluster, run_id: str) -> None:
    """The run succeeded on the honest agent's word alone, which is still connected."""
    run = cluster.wait_run(run_id)
    assert run["status"] == "succeeded"
    assert set(run["steps"][0]["outputs"]) == {"slept_s"}
    history = cluster.ctl("tail", run_id, "--json").json_lines()
    assert {e["agent"] for e in history if e["agent"]} == {"host-a"}
    slow = Counter(e["type"] for e in history if e["step_id"] == "slow")
    assert slow["step_succeeded"] == 1
    assert slow["step_started"] == 1
    assert set(slow) <= {"step_dispatched", "step_started", "step_progress", "step_succeeded"}
    assert cluster.agent_connected("host-a")


def test_forged_results_from_a_rogue_agent_change_nothing(cluster: Cluster, write_flow) -> None:
    """Forged, malformed, random and undecodable messages are rejected; the real run succeeds."""
    run_id = start_honest_run(cluster, write_flow)

    report = rogue(
        cluster,
        *("--name", "rogue", "--run-id", run_id, "--step-id", "slow"),
        *("--random", str(RANDOM_MESSAGES), "--seed", "7", "--garbage"),
    )

    assert report["welcome"] == "welcome"
    assert report["sent"] == 1 + report["forged"] + RANDOM_MESSAGES
    assert report["garbage"]["refused"] == "INVALID_ARGUMENT"
    assert_unaffected(cluster, run_id)
    events = daemon_events(cluster)
    rejected = [e for e in events if e.get("agent") == "rogue" and e["level"] == "warning"]
    kinds = Counter(e["event"] for e in rejected)
    assert kinds["report_rejected"] > 0
    assert kinds["agent_message_malformed"] > 0
    assert kinds["agent_message_undecodable"] == 1
    assert kinds["agent_message_too_many_events"] == 1
    forged = [
        e
        for e in rejected
        if e["event"] == "report_rejected" and e["run_id"] == run_id and e["step_id"] == "slow"
    ]
    assert {e["type"] for e in forged} >= {"step_succeeded", "step_failed", "step_progress"}
    assert not [e for e in events if e["event"] == "agent_stream_failed"]


def test_forgeries_batched_in_one_message_are_each_rejected(cluster: Cluster, write_flow) -> None:
    """Forgeries sent alone and then in one StepEvents message are each refused, both times."""
    run_id = start_honest_run(cluster, write_flow)

    report = rogue(cluster, "--name", "rogue", "--run-id", run_id, "--step-id", "slow")

    assert report["sent"] == 1 + report["forged"]
    assert_unaffected(cluster, run_id)
    rejected = [e for e in daemon_events(cluster) if e.get("agent") == "rogue"]
    forged = Counter(
        e["type"] for e in rejected if e["event"] == "report_rejected" and e["run_id"] == run_id
    )
    assert forged["step_succeeded"] > 0
    assert all(count % 2 == 0 for count in forged.values()), forged
    assert [e["events"] for e in rejected if e["event"] == "agent_message_too_many_events"] == [
        MAX_PER_MESSAGE + 1
    ]


def test_a_flood_of_requests_for_others_messages_is_refused_and_logged_sparingly(
    cluster: Cluster, write_flow
) -> None:
    """Thousands of requests for messages on an attempt that is not the rogue's, or on
    no run, deliver nothing, and only the first hundred of them are logged."""
    run_id = start_honest_run(cluster, write_flow)

    rogue(
        cluster,
        *("--name", "rogue", "--run-id", run_id, "--step-id", "slow"),
        *("--receive-flood", "3000"),
    )

    assert_unaffected(cluster, run_id)
    refused = [
        e
        for e in daemon_events(cluster)
        if e.get("agent") == "rogue"
        and e["event"] == "receive_rejected"
        and e["run_id"] in (run_id, "no-such-run")
    ]
    assert {e["run_id"] for e in refused} == {run_id, "no-such-run"}
    assert 0 < len(refused) <= 100 + 3000 // 1000


def test_a_result_for_a_finished_run_is_a_quiet_duplicate_when_stored_and_stale_if_not(
    cluster: Cluster, write_flow
) -> None:
    """After a run has finished, its agent may send a result again (its acknowledgement
    was lost in a restart): the very result stored is a routine duplicate, not worth a
    warning; any other result for it is stale, and warned of. Neither changes the run."""
    run_id = start_honest_run(cluster, write_flow)
    run = cluster.wait_run(run_id)
    stored = run["steps"][0]["outputs"]
    cluster.stop_agent("host-a")
    where = ("--name", "host-a", "--run-id", run_id, "--step-id", "slow")

    rogue(cluster, *where, "--result", json.dumps(stored))
    rogue(cluster, *where, "--result", json.dumps({"slept_s": -1.0}))

    warned = [
        e
        for e in daemon_events(cluster)
        if e["event"] == "report_rejected" and e.get("run_id") == run_id
    ]
    assert [(e["verdict"], e["agent"], e["step_id"]) for e in warned] == [
        ("stale", "host-a", "slow")
    ]
    assert cluster.wait_run(run_id) == run
    history = cluster.history(run_id)
    assert Counter(e["step_id"] for e in history if e["type"] == "step_succeeded") == {
        "slow": 1,
        "after": 1,
    }


def test_rogue_cannot_claim_the_coordinators_name(cluster: Cluster, write_flow) -> None:
    """The name of the coordinator's own steps is reserved: a hello claiming it is refused."""
    run_id = start_honest_run(cluster, write_flow)

    report = rogue(cluster, "--name", "coordinator", "--run-id", run_id, "--step-id", "slow")

    assert report["refused"] == "INVALID_ARGUMENT"
    assert "reserved" in report["details"]
    assert_unaffected(cluster, run_id)


def test_rogue_with_its_own_certificate_is_held_to_its_name(tmp_path: Path, write_flow) -> None:
    """Over mutual TLS a rogue with a valid agent certificate can neither forge nor impersonate."""
    cluster = Cluster(tmp_path, pki=Pki(tmp_path / "pki"))
    cluster.start_daemon()
    try:
        run_id = start_honest_run(cluster, write_flow)
        credentials = cluster.pki.agent_args("rogue")

        forged = rogue(
            cluster, "--name", "rogue", "--run-id", run_id, "--step-id", "slow", *credentials
        )
        impostor = rogue(
            cluster, "--name", "host-a", "--run-id", run_id, "--step-id", "slow", *credentials
        )

        assert forged["welcome"] == "welcome"
        assert impostor["refused"] == "PERMISSION_DENIED"
        assert "the hello claims 'host-a'" in impostor["details"]
        assert_unaffected(cluster, run_id)
        rejected = [
            e
            for e in daemon_events(cluster)
            if e["event"] == "report_rejected" and e.get("agent") == "rogue"
        ]
        assert rejected
    finally:
        cluster.close()
