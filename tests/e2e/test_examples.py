"""The examples of the README, run for real: DH identification and a rolling deployment."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.cluster import Cluster, free_port, wait_for
from workflowd.plugins.dh import keypair

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).parents[2] / "examples"


@pytest.fixture
def prover(cluster: Cluster, tmp_path: Path) -> tuple[Path, int]:
    """An agent labelled role=prover holding a secret exponent in a file of its own."""
    secret, public = keypair()
    secret_file = tmp_path / "prover-secret"
    secret_file.write_text(str(secret))
    cluster.start_agent("prover-host", "--label", "role=prover", "--allow", "dh.prove")
    return secret_file, public


def test_dh_identification_accepts_the_prover_that_knows_x(cluster: Cluster, prover) -> None:
    """The prover holding x answers the verifier's challenge and is accepted."""
    secret_file, public = prover
    result = cluster.ctl(
        "submit",
        str(EXAMPLES / "dh-koe.yaml"),
        "--input",
        f"public_y={public}",
        "--input",
        f"secret_file={secret_file}",
        "--follow",
    )
    assert result.code == 0, result.stdout + result.stderr
    run = cluster.run_status(result.stdout.split()[0])
    steps = {s["step_id"]: s for s in run["steps"]}
    assert steps["verify"]["outputs"]["accepted"] is True
    assert steps["prove"]["agent"] == "prover-host"
    messages = [e for e in cluster.history(run["run_id"]) if e["type"] == "step_message"]
    assert [m["data"]["topic"] for m in messages] == ["dh.challenge", "dh.response"]


def test_dh_identification_rejects_a_prover_without_x(cluster: Cluster, prover, tmp_path) -> None:
    """A prover that does not know x (it holds another number) is rejected."""
    _, public = prover
    impostor, _ = keypair()
    wrong = tmp_path / "wrong-secret"
    wrong.write_text(str(impostor))
    result = cluster.ctl(
        "submit",
        str(EXAMPLES / "dh-koe.yaml"),
        "--input",
        f"public_y={public}",
        "--input",
        f"secret_file={wrong}",
        "--follow",
    )
    assert result.code == 1
    assert "identification rejected" in result.stdout


def served(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config.json", timeout=2) as response:
            return json.loads(response.read())["version"]
    except OSError:
        return None


@pytest.fixture
def web_hosts(cluster: Cluster):
    """Three agents labelled role=web, each with its own port; web-1 is the canary."""
    ports = {name: free_port() for name in ("web-1", "web-2", "web-3")}
    for name, port in ports.items():
        labels = ["--allow", "web.deploy", "--label", "role=web", "--label", f"port={port}"]
        if name == "web-1":
            labels += ["--label", "canary=yes"]
        cluster.start_agent(name, *labels)
    yield ports
    for name in ports:  # the services outlive their steps on purpose; stop them here
        pid_file = cluster.root / f"agent-{name}" / "state" / "sites" / "web" / "server.pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text()), signal.SIGTERM)


def deploy(cluster: Cluster, version: str) -> str:
    result = cluster.ctl(
        "submit", str(EXAMPLES / "rolling-deploy.yaml"), "--input", f"version={version}"
    )
    assert result.code == 0, result.stderr
    return result.stdout.strip()


def test_rolling_deploy_waits_for_approval_then_rolls_one_host_at_a_time(
    cluster: Cluster, web_hosts
) -> None:
    """The canary is deployed, the rest waits for approval, then every host serves the version."""
    run_id = deploy(cluster, "2.0")
    wait_for(lambda: served(web_hosts["web-1"]) == "2.0", what="the canary to serve 2.0")
    wait_for(
        lambda: (
            {s["step_id"]: s for s in cluster.run_status(run_id)["steps"]}["approve"]["status"]
            == "waiting"
        ),
        what="the approval gate",
    )
    assert served(web_hosts["web-2"]) is None

    assert cluster.ctl("signal", run_id, "approve", '{"by": "ops"}').code == 0
    run = cluster.wait_run(run_id, 60)

    assert run["status"] == "succeeded", run
    assert {name: served(port) for name, port in web_hosts.items()} == dict.fromkeys(
        web_hosts, "2.0"
    )
    history = cluster.history(run_id)
    rollout = [
        e for e in history if e["step_id"].startswith("rollout[") and e["type"] == "step_succeeded"
    ]
    assert len(rollout) == 3
    assert [e["data"]["path"] for e in rollout if e["step_id"] == "rollout[web-1]"] == ["check"]


def test_rolling_deploy_rolls_back_a_host_whose_health_check_fails(
    cluster: Cluster, web_hosts, tmp_path
) -> None:
    """A host serving the wrong version fails its check, is rolled back, and the rollout stops."""
    first = deploy(cluster, "1.0")
    wait_for(lambda: served(web_hosts["web-1"]) == "1.0", what="the canary")
    cluster.ctl("signal", first, "approve")
    assert cluster.wait_run(first, 60)["status"] == "succeeded"

    # web-2's port is taken over by a stray server that keeps serving an old version
    pid_file = cluster.root / "agent-web-2" / "state" / "sites" / "web" / "server.pid"
    os.kill(int(pid_file.read_text()), signal.SIGTERM)
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "config.json").write_text(json.dumps({"version": "0.9"}))
    wait_for(lambda: served(web_hosts["web-2"]) is None, what="web-2 to stop")
    holder = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(web_hosts["web-2"]), "--bind", "127.0.0.1"],
        cwd=stray,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: served(web_hosts["web-2"]) == "0.9", what="the stray server")
        second = deploy(cluster, "2.0")
        wait_for(lambda: served(web_hosts["web-1"]) == "2.0", what="the canary")
        cluster.ctl("signal", second, "approve")
        run = cluster.wait_run(second, 60)
    finally:
        holder.kill()

    assert run["status"] == "failed"
    assert "web-2: health check failed on web-2" in run["error"]
    web2_config = cluster.root / "agent-web-2" / "state" / "sites" / "web" / "config.json"
    assert json.loads(web2_config.read_text())["version"] == "1.0"  # rolled back
    assert served(web_hosts["web-3"]) == "1.0"  # never reached: the rollout stopped
    failed = [e for e in cluster.history(second) if e["type"] == "step_failed"]
    assert failed[0]["data"]["rolled_back"] is True
