"""The store seen from outside: retention, and a MongoDB that is missing or lost mid-run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pymongo
import pytest

from tests.cluster import BIN, Cluster, free_port, wait_for
from tests.mongo import SecantusServer, unique_database

pytestmark = pytest.mark.e2e

ONE_STEP = """
name: one-step
steps:
  - id: only
    task: noop
    on: {agent: absent}
"""

SLOW = """
name: slow
steps:
  - id: nap
    task: sleep
    on: {agent: sleeper}
    with: {seconds: 3}
  - id: after
    task: noop
"""


@pytest.mark.parametrize("cluster", ["sqlite", "mongodb"], indirect=True)
def test_prune_removes_old_finished_runs_and_keeps_the_rest(cluster: Cluster, write_flow) -> None:
    """workflowctl prune removes finished runs past the age, never a run still going."""
    cluster.start_agent("x")
    done = cluster.ctl("submit", "--follow", str(write_flow(ONE_STEP.replace("absent", "x"))))
    assert done.code == 0, done.stdout + done.stderr
    finished = done.stdout.split()[0]
    waiting = cluster.ctl("submit", str(write_flow(ONE_STEP))).stdout.strip()

    removed = []
    wait_for(
        lambda: (
            removed.append(cluster.ctl("prune", "--older-than", "1s", "--json").json_lines())
            or sum(r[0]["removed"] for r in removed) >= 1
        ),
        30,
        "the finished run to be old enough to prune",
    )

    assert sum(r[0]["removed"] for r in removed) == 1
    assert cluster.ctl("status", finished).code == 3
    assert [r["run_id"] for r in cluster.ctl("list", "--json").json_lines()] == [waiting]
    assert cluster.run_status(waiting)["status"] == "running"
    refused = cluster.ctl("prune", "--older-than", "soon")
    assert refused.code == 2
    assert "not a duration" in refused.stderr


@pytest.mark.parametrize("cluster", ["sqlite", "mongodb"], indirect=True)
def test_list_pages_back_through_runs(cluster: Cluster, write_flow) -> None:
    """workflowctl list --limit N --before RUN_ID pages back through every run once."""
    flow = str(write_flow(ONE_STEP.replace("on: {agent: absent}", "on: coordinator")))
    ids = [cluster.ctl("submit", flow).stdout.strip() for _ in range(5)]

    pages, before = [], ""
    while page := cluster.ctl("list", "--limit", "2", "--before", before, "--json").json_lines():
        pages.append([run["run_id"] for run in page])
        before = page[-1]["run_id"]

    assert pages == [ids[4:2:-1], ids[2:0:-1], ids[:1]]


def test_workflowd_says_clearly_when_its_database_is_unreachable(tmp_path: Path) -> None:
    """An unreachable MongoDB at start-up: retries, then one clear error line, no traceback."""
    store = f"mongodb://127.0.0.1:{free_port()}/workflowd"
    done = subprocess.run(
        [str(BIN / "workflowd"), "--listen", f"127.0.0.1:{free_port()}", "--store", store],
        env={"WORKFLOWD_STORE_WAIT": "3", "PATH": str(BIN)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "store_unavailable" in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [errors[0]]
    assert f"MongoDB store {store} unreachable after 3s" in errors[0]


def test_a_run_survives_its_database_killed_and_restarted(tmp_path: Path) -> None:
    """MongoDB killed while a step runs: dispatch waits, and once it is back the run completes."""
    database = SecantusServer(tmp_path / "mongo")
    database.start()
    cluster = Cluster(tmp_path, store_uri=database.uri(unique_database()))
    try:
        cluster.start_daemon()
        cluster.start_agent("sleeper")
        flow = tmp_path / "slow.yaml"
        flow.write_text(SLOW)
        run_id = cluster.ctl("submit", str(flow)).stdout.strip()
        wait_for(
            lambda: cluster.run_status(run_id)["steps"][0]["status"] == "running",
            what="the step to run",
        )

        database.kill()
        wait_for(
            lambda: "store_unavailable" in cluster.log("workflowd"),
            60,
            "workflowd to notice the database is gone",
        )
        database.start()
        run = cluster.wait_run(run_id, 120)

        assert run["status"] == "succeeded", run
        assert [s["status"] for s in run["steps"]] == ["succeeded", "succeeded"]
        assert run["steps"][0]["attempt"] == 1
        assert "store_recovered" in cluster.log("workflowd")
        with pymongo.MongoClient(cluster.store_uri) as client:
            batches = list(client.get_default_database().events.find({"run_id": run_id}))
        types = [e["type"] for b in sorted(batches, key=lambda b: b["first"]) for e in b["events"]]
        seqs = sorted(seq for b in batches for seq in range(b["first"], b["last"] + 1))
        assert seqs == list(range(1, len(types) + 1))
        assert types.count("step_succeeded") == 2
        assert types[-1] == "run_succeeded"
        replay = cluster.ctl("tail", run_id, "--json").json_lines()
        assert [e["seq"] for e in replay] == seqs
    finally:
        cluster.close()
        database.stop()
