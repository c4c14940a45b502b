"""What operators rely on, against real processes: systemd notify, health, reflection, metrics,
logs, and workflowctl's live view, plain lines, signals and shell completion."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster import BIN, Cluster, free_port
from tests.terminal import Terminal
from workflowd import logs

pytestmark = pytest.mark.e2e

SECRET = "hunter2-do-not-log-me"  # noqa: S105 - made up, to look for in the logs

LIVE_FLOW = """
name: live
steps:
  - id: warm-up
    task: noop
  - id: crunch
    task: sleep
    on: {agent: host-a}
    with: {seconds: 2}
"""

LONG_FLOW = """
name: long
steps:
  - id: wait
    task: sleep
    with: {seconds: 120}
"""

LOGGING_FLOW = f"""
name: logging
steps:
  - id: here
    task: test.log
    with: {{secret: {SECRET}}}
  - id: there
    task: test.log
    on: {{agent: host-a}}
    with: {{secret: {SECRET}}}
"""

RETRIED_FLOW = """
name: retried
steps:
  - id: slow
    task: sleep
    with: {seconds: 30}
    timeout: 0.3
    retry: {attempts: 2, backoff: 0.1}
"""


# ------------------------------------------------------------------ systemd notify


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A datagram socket standing in for systemd's notify socket."""
    path = tmp_path / "notify.sock"
    assert len(str(path)) < 100, "a unix socket path must fit in sun_path"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        yield str(path), sock


def next_message(sock: socket.socket, prefix: str, timeout_s: float = 20) -> list[str]:
    """Datagrams received until one that starts with `prefix`; the last is that one."""
    deadline = time.monotonic() + timeout_s
    seen = []
    while True:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            seen.append(sock.recv(4096).decode())
        except TimeoutError:
            raise AssertionError(f"no {prefix} within {timeout_s}s; got {seen}") from None
        if seen[-1].startswith(prefix):
            return seen


def health_status(address: str, service: str = "") -> int:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    return reply.status


def test_workflowd_speaks_the_notify_protocol(tmp_path: Path, notify_socket) -> None:
    """workflowd says READY=1 once it serves, feeds the watchdog, and STOPPING=1 on SIGTERM."""
    address, sock = notify_socket
    cluster = Cluster(tmp_path)
    try:
        cluster.start_daemon(wait=False, env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"})
        (ready,) = next_message(sock, "READY=1")

        # ready means serving: no polling needed once systemd has been told
        assert health_status(cluster.address) == health_pb2.HealthCheckResponse.SERVING
        assert f"MAINPID={cluster.daemon.pid}" in ready.splitlines()
        assert "STATUS=serving on " + cluster.address in ready.splitlines()
        beats = [m for m in next_message(sock, "WATCHDOG=1") if m == "WATCHDOG=1"]
        beats += [m for m in next_message(sock, "WATCHDOG=1") if m == "WATCHDOG=1"]
        assert len(beats) == 2

        cluster.daemon.send_signal(signal.SIGTERM)
        stopping = next_message(sock, "STOPPING=1")[-1]
        assert cluster.daemon.wait(20) == 0
        assert "STOPPING=1" in stopping.splitlines()
        cluster.daemon = None
    finally:
        cluster.close()


def test_agent_speaks_the_notify_protocol(cluster: Cluster, notify_socket) -> None:
    """An agent says READY=1 at start, reports its connection in STATUS=, and STOPPING=1."""
    address, sock = notify_socket

    cluster.start_agent(
        "host-a", env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"}, wait=False
    )

    assert next_message(sock, "READY=1")[-1].startswith("READY=1\n")
    connected = next_message(sock, f"STATUS=connected to {cluster.address}")
    assert "WATCHDOG=1" in connected + next_message(sock, "WATCHDOG=1")
    assert cluster.stop_agent("host-a") == 0
    assert "STOPPING=1" in next_message(sock, "STOPPING=1")[-1].splitlines()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_daemons_shut_down_gracefully(cluster: Cluster, signum: int) -> None:
    """workflowd and an agent exit 0 on SIGTERM and on SIGINT, having said that they stopped."""
    cluster.start_agent("host-a")

    assert cluster.stop_agent("host-a", signum) == 0
    assert cluster.stop_daemon(signum) == 0

    assert "workflowd_stopped" in [line["event"] for line in json_log(cluster, "workflowd")]
    assert "agent_stopped" in [line["event"] for line in json_log(cluster, "agent-host-a")]
    assert "Traceback" not in cluster.log("workflowd") + cluster.log("agent-host-a")


# ------------------------------------------------------------------ health and reflection


def test_health_service_answers_serving(cluster: Cluster) -> None:
    """The standard health service says SERVING for the server and for each of its services."""
    for service in ("", "workflow.v1.ControlService", "workflow.v1.AgentService"):
        assert health_status(cluster.address, service) == health_pb2.HealthCheckResponse.SERVING

    with pytest.raises(grpc.RpcError) as unknown:
        health_status(cluster.address, "no.such.Service")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_describes_the_services(cluster: Cluster) -> None:
    """Server reflection lists the services and describes their methods, as grpcurl needs."""
    with grpc.insecure_channel(cluster.address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        control = DescriptorPool(database).FindServiceByName("workflow.v1.ControlService")

    assert {
        "workflow.v1.ControlService",
        "workflow.v1.AgentService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services
    assert {"Submit", "Tail", "GetRun", "ListAgents"} <= {m.name for m in control.methods}


# ------------------------------------------------------------------ metrics


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
        text = page.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_after_a_run_show_the_run(make_cluster, write_flow) -> None:
    """A scrape after a run shows it finished, its steps counted and timed, and the agent."""
    daemon_port, agent_port = free_port(), free_port()
    cluster = make_cluster("--metrics-listen", f"127.0.0.1:{daemon_port}")
    cluster.start_agent("host-a", "--metrics-listen", f"127.0.0.1:{agent_port}")

    result = cluster.ctl("submit", "--follow", str(write_flow(LIVE_FLOW)))
    assert result.code == 0, result.stdout + result.stderr
    coordinator, agent = scrape(daemon_port), scrape(agent_port)

    assert coordinator[("workflowd_runs_finished_total", (("state", "succeeded"),))] == 1
    assert coordinator[("workflowd_runs", (("state", "running"),))] == 0
    for task in ("noop", "sleep"):
        assert coordinator[("workflowd_steps_dispatched_total", (("task", task),))] == 1
        assert coordinator[("workflowd_steps_started_total", (("task", task),))] == 1
        assert coordinator[("workflowd_steps_succeeded_total", (("task", task),))] == 1
    slept = (("outcome", "succeeded"), ("task", "sleep"))
    assert coordinator[("workflowd_step_duration_seconds_count", slept)] == 1
    assert coordinator[("workflowd_step_duration_seconds_sum", slept)] >= 2.0
    assert coordinator[("workflowd_agents_connected", ())] == 1
    assert coordinator[("workflowd_agent_connects_total", (("kind", "first"),))] == 1
    appends = coordinator[("workflowd_store_write_seconds_count", (("op", "append"),))]
    assert appends >= 5

    assert agent[("workflow_agent_connected", ())] == 1
    assert agent[("workflow_agent_connects_total", ())] == 1
    assert (
        agent[("workflow_agent_steps_total", (("outcome", "succeeded"), ("task", "sleep")))] == 1
    )


def test_metrics_count_failures_and_reconnects(make_cluster, write_flow) -> None:
    """Failed steps are counted by kind of failure, and an agent's return as a reconnect."""
    port = free_port()
    cluster = make_cluster("--metrics-listen", f"127.0.0.1:{port}")
    cluster.start_agent("host-a")
    cluster.stop_agent("host-a")
    cluster.start_agent("host-a")

    result = cluster.ctl("submit", "--follow", str(write_flow(RETRIED_FLOW)))
    assert result.code == 1
    samples = scrape(port)

    timeouts = (("error", "timeout"), ("task", "sleep"))
    assert samples[("workflowd_steps_failed_total", timeouts)] == 2
    assert samples[("workflowd_runs_finished_total", (("state", "failed"),))] == 1
    assert samples[("workflowd_agent_connects_total", (("kind", "first"),))] == 1
    assert samples[("workflowd_agent_connects_total", (("kind", "reconnect"),))] == 1


def test_metrics_port_in_use_is_a_clear_error(make_cluster, tmp_path) -> None:
    """workflowd refuses to start when its metrics port is taken, and says so."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [
                str(BIN / "workflowd"),
                "--listen",
                f"127.0.0.1:{free_port()}",
                "--store",
                str(tmp_path / "db.sqlite"),
                "--metrics-listen",
                f"127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    assert done.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in done.stderr


# ------------------------------------------------------------------ logs


def json_log(cluster: Cluster, name: str) -> list[dict]:
    return [json.loads(line) for line in cluster.log(name).splitlines() if line.startswith("{")]


def test_every_line_about_a_run_carries_its_context(cluster: Cluster, write_flow) -> None:
    """On both daemons every log line of a run has run_id, step_id and agent; no secret shows."""
    cluster.start_agent("host-a", "--allow", "test.log")

    result = cluster.ctl("submit", "--follow", str(write_flow(LOGGING_FLOW)))
    assert result.code == 0, result.stdout + result.stderr
    run_id = result.stdout.split()[0]
    daemon, agent = json_log(cluster, "workflowd"), json_log(cluster, "agent-host-a")

    for lines in (daemon, agent):
        about_the_run = [line for line in lines if line.get("run_id") == run_id]
        assert about_the_run
        for line in about_the_run:
            assert {"run_id", "step_id", "agent"} <= line.keys(), line
    # what the plugin logged with a bare structlog logger, in its worker thread
    (here,) = [line for line in daemon if line["event"] == "test_log_plain"]
    (there,) = [line for line in agent if line["event"] == "test_log_plain"]
    assert (here["run_id"], here["step_id"], here["agent"]) == (run_id, "here", "coordinator")
    assert (there["run_id"], there["step_id"], there["agent"]) == (run_id, "there", "host-a")
    assert here["api_token"] == logs.REDACTED
    # neither the journal nor the run's own history of logs holds the secret
    assert SECRET not in cluster.log("workflowd") + cluster.log("agent-host-a")
    logged = [e for e in cluster.history(run_id) if e["type"] == "step_log"]
    assert logged
    assert all(SECRET not in e["data"]["message"] for e in logged)


# ------------------------------------------------------------------ workflowctl


def on_terminal(cluster: Cluster, *args: str) -> Terminal:
    return Terminal([str(BIN / "workflowctl"), *args], cluster._env(), str(cluster.root))


def test_tail_on_a_terminal_shows_live_step_lines(cluster: Cluster, write_flow) -> None:
    """On a terminal, tail draws one live line per step: state, bar, percentage, host."""
    cluster.start_agent("host-a")
    run_id = cluster.ctl("submit", str(write_flow(LIVE_FLOW))).stdout.strip()

    terminal = on_terminal(cluster, "tail", run_id)
    code = terminal.wait()

    screen = terminal.output
    assert code == 0, screen
    assert "\x1b[" in screen  # drawn for a terminal: colours and cursor movement
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)
    assert re.search(r"crunch +━", plain)  # the step's bar
    assert "on host-a" in plain
    # progress while it ran, not only the end
    assert {int(p) for p in re.findall(r"\b(\d{1,2})%", plain)} & set(range(1, 100))
    final = plain.rstrip().splitlines()[-2:]
    assert [line.split()[:3] for line in final] == [
        ["✓", "succeeded", "warm-up"],
        ["✓", "succeeded", "crunch"],
    ]


def test_tail_piped_prints_plain_lines(cluster: Cluster, write_flow) -> None:
    """Piped, tail writes plain timestamped lines without terminal codes."""
    cluster.start_agent("host-a")
    run_id = cluster.ctl("submit", str(write_flow(LIVE_FLOW))).stdout.strip()

    result = cluster.ctl("tail", run_id)

    assert result.code == 0, result.stderr
    assert "\x1b" not in result.stdout
    lines = result.stdout.splitlines()
    assert all(re.match(r"\d\d:\d\d:\d\d  ", line) for line in lines), lines
    assert any(line.endswith("crunch: started on host-a") for line in lines)
    assert any("crunch: succeeded on host-a in" in line for line in lines)
    assert lines[-1].endswith(" run succeeded in " + lines[-1].rsplit(" ", 1)[-1])


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_tail_stops_cleanly_on_a_signal(cluster: Cluster, write_flow, signum, code) -> None:
    """Ctrl-C or SIGTERM stops tail at once, without a traceback; the run goes on."""
    run_id = cluster.ctl("submit", str(write_flow(LONG_FLOW))).stdout.strip()
    terminal = on_terminal(cluster, "tail", run_id)
    terminal.read_until(lambda screen: "wait" in screen and "running" in screen)

    terminal.signal(signum)

    assert terminal.wait(20) == code
    assert "Traceback" not in terminal.output
    assert "\x1b[?25h" in terminal.output  # the cursor is shown again
    assert cluster.run_status(run_id)["status"] == "running"


def test_status_shows_each_attempt(cluster: Cluster, write_flow) -> None:
    """status lists every attempt of a step tried again: host, times, outcome and error."""
    run_id = cluster.ctl("submit", str(write_flow(RETRIED_FLOW))).stdout.strip()
    run = cluster.wait_run(run_id)

    tries = run["steps"][0]["attempts"]
    assert [(t["attempt"], t["outcome"], t["error"]) for t in tries] == [
        (1, "failed", "timeout"),
        (2, "failed", "timeout"),
    ]
    assert all(t["host"] == "coordinator" and t["finished_ms"] > t["dispatched_ms"] for t in tries)
    human = cluster.ctl("status", run_id).stdout.splitlines()
    attempt_lines = [line.split() for line in human if line.lstrip().startswith("#")]
    assert [words[:3] for words in attempt_lines] == [
        ["#1", "coordinator", "failed"],
        ["#2", "coordinator", "failed"],
    ]
    assert all("timeout: timed out after 0.3s" in " ".join(w) for w in attempt_lines)


def test_list_and_agents_are_tables(cluster: Cluster, write_flow) -> None:
    """list and agents print a header row and one row per run or agent."""
    cluster.start_agent("host-a", "--label", "role=web")
    run_id = cluster.ctl("submit", "--follow", str(write_flow(LIVE_FLOW))).stdout.split()[0]

    runs = cluster.ctl("list").stdout.splitlines()
    agents = cluster.ctl("agents").stdout.splitlines()

    assert runs[0].split() == ["run", "workflow", "status", "created", "updated"]
    assert runs[1].split()[:3] == [run_id, "live", "succeeded"]
    assert agents[0].split()[:3] == ["agent", "state", "labels"]
    assert agents[1].split()[:4] == ["host-a", "connected", "role=web", "0"]


def test_shell_completion(cluster: Cluster, write_flow) -> None:
    """workflowctl completes its commands and, from the coordinator, run ids."""
    run_id = cluster.ctl("submit", str(write_flow(LIVE_FLOW.replace("host-a", "nobody")))).stdout

    def complete(words: str, shell: str = "bash") -> str:
        env = cluster._env(
            {
                "_WORKFLOWCTL_COMPLETE": f"{shell}_complete",
                "COMP_WORDS": words,
                "COMP_CWORD": str(len(words.split(" ")) - 1),
            }
        )
        done = subprocess.run(
            [str(BIN / "workflowctl")], env=env, capture_output=True, text=True, check=True
        )
        return done.stdout

    script = subprocess.run(
        [str(BIN / "workflowctl")],
        env=cluster._env({"_WORKFLOWCTL_COMPLETE": "bash_source"}),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "complete -o nosort -F _workflowctl_completion workflowctl" in script
    assert complete("workflowctl ta").splitlines() == ["plain,tail"]
    assert f"plain,{run_id.strip()}" in complete("workflowctl status ").splitlines()
