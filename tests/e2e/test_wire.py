"""What crosses the stream: allow-lists, shell.run, oversized results, text that is not UTF-8."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from tests.cluster import BIN, Cluster, free_port, wait_for
from workflowd.rpc import workflow_pb2 as pb
from workflowd.rpc import workflow_pb2_grpc as rpc

pytestmark = pytest.mark.e2e

SHELL = """
name: shell
steps:
  - id: cmd
    task: shell.run
    on: {{agent: {agent}}}
    with:
      command: {command}
"""


def shell_flow(write_flow, agent: str, *argv: str) -> str:
    return str(write_flow(SHELL.format(agent=agent, command=json.dumps(list(argv)))))


def python(code: str) -> tuple[str, str, str]:
    return (sys.executable, "-c", code)


def test_shell_run_reports_exit_code_and_output(cluster: Cluster, write_flow) -> None:
    """shell.run, allowed by name, runs an argument list and returns exit code and output."""
    cluster.start_agent("runner", "--allow", "shell.run")

    result = cluster.ctl(
        "submit", "--follow", shell_flow(write_flow, "runner", *python("print('hello ✓')"))
    )

    assert result.code == 0, result.stdout + result.stderr
    outputs = cluster.run_status(result.stdout.split()[0])["steps"][0]["outputs"]
    assert outputs == {"exit_code": 0, "stdout": "hello ✓\n", "stderr": ""}


def test_shell_run_fails_the_step_on_a_non_zero_exit(cluster: Cluster, write_flow) -> None:
    """A command that exits non-zero fails its step, saying the status and its last words."""
    cluster.start_agent("runner", "--allow", "shell.run")
    code = "import sys; print('about to fail', file=sys.stderr); sys.exit(3)"

    result = cluster.ctl("submit", "--follow", shell_flow(write_flow, "runner", *python(code)))

    assert result.code == 1
    step = cluster.run_status(result.stdout.split()[0])["steps"][0]
    assert step["error"] == "command exited with status 3: about to fail"


def test_invalid_utf8_output_is_replaced_not_fatal(cluster: Cluster, write_flow) -> None:
    """Bytes that are not UTF-8 in a command's output arrive as U+FFFD; the stream lives on."""
    cluster.start_agent("runner", "--allow", "shell.run")
    code = r"import sys; sys.stdout.buffer.write(b'caf\xe9 \xff\xfe ok\n')"

    result = cluster.ctl("submit", "--follow", shell_flow(write_flow, "runner", *python(code)))

    assert result.code == 0, result.stdout + result.stderr
    outputs = cluster.run_status(result.stdout.split()[0])["steps"][0]["outputs"]
    assert outputs["stdout"] == "caf\ufffd \ufffd\ufffd ok\n"
    assert "reconnect_scheduled" not in cluster.log("agent-runner")


@pytest.mark.parametrize("allow", [[], ["--allow", "*"], ["--allow", "shell.*"]])
def test_shell_run_is_not_allowed_by_default_or_by_glob(
    cluster: Cluster, write_flow, allow: list[str]
) -> None:
    """An agent lets shell.run in only when --allow names it: not by default, not by a glob."""
    cluster.start_agent("careful", *allow)
    # another agent allows it, so that the coordinator knows the task at submit
    cluster.start_agent("runner", "--allow", "shell.run")

    run_id = cluster.ctl(
        "submit", shell_flow(write_flow, "careful", *python("print(1)"))
    ).stdout.strip()

    step = wait_for(
        lambda: (s := cluster.run_status(run_id)["steps"][0])["status"] == "waiting" and s,
        what="the step to wait",
    )
    assert step["waiting_reason"] == "task shell.run is not available on careful"


class FakeCoordinator(rpc.AgentServiceServicer):
    """A coordinator that sends one agent one step start and records what comes back."""

    def __init__(self, start: pb.StartStep) -> None:
        self.start = start
        self.received: list[pb.AgentMessage] = []
        self.result = threading.Event()

    def Connect(self, requests: Iterator[pb.AgentMessage], context: grpc.ServicerContext):  # noqa: N802 - the .proto's method name
        next(requests)  # the hello
        yield pb.CoordinatorMessage(welcome=pb.Welcome(heartbeat_interval_s=5))
        yield pb.CoordinatorMessage(start=self.start)
        for message in requests:
            self.received.append(message)
            if message.step.WhichOneof("kind") in ("completed", "failed"):
                self.result.set()
                yield pb.CoordinatorMessage(ack=pb.ResultAck(ref=message.step.ref))
                return


def test_agent_refuses_a_step_it_does_not_allow(tmp_path: Path) -> None:
    """Told to run shell.run it does not allow, an agent fails the step with the reason."""
    witness = tmp_path / "ran"
    start = pb.StartStep(
        ref=pb.AttemptRef(run_id="r1", step_id="s1", attempt=1),
        task="shell.run",
        params_json=json.dumps({"command": ["touch", str(witness)]}),
        config_json="{}",
    )
    fake = FakeCoordinator(start)
    port = free_port()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    rpc.add_AgentServiceServicer_to_server(fake, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    cluster = Cluster(tmp_path, port=port)
    try:
        cluster.start_agent("victim", wait=False)
        assert fake.result.wait(30), cluster.log("agent-victim")
    finally:
        cluster.close()
        server.stop(0)

    kinds = [m.step.WhichOneof("kind") for m in fake.received if m.WhichOneof("kind") == "step"]
    assert kinds == ["failed"]  # never even started
    failed = fake.received[-1].step.failed
    assert failed.error == "task_not_allowed"
    assert "task shell.run is installed on victim but not allowed there" in failed.message
    assert "--allow shell.run" in failed.message
    assert not witness.exists()


def test_oversized_result_fails_its_step_and_keeps_the_stream(tmp_path: Path, write_flow) -> None:
    """A result beyond the coordinator's message limit fails its step; the stream stays up."""
    cluster = Cluster(tmp_path)
    cluster.start_daemon("--max-message-bytes", "262144")
    try:
        cluster.start_agent("big", "--allow", "shell.run", "--allow", "noop")
        big = cluster.ctl(
            "submit", "--follow", shell_flow(write_flow, "big", *python("print('x' * 300000)"))
        )
        after = cluster.ctl(
            "submit",
            "--follow",
            str(write_flow("name: after\nsteps:\n  - {id: a, task: noop, on: {agent: big}}\n")),
        )
        step = cluster.run_status(big.stdout.split()[0])["steps"][0]
        agent_log = cluster.log("agent-big")
    finally:
        cluster.close()

    assert big.code == 1
    assert step["error"].startswith("outputs of 300")
    assert step["error"].endswith("bytes exceed the limit of 258048 bytes")
    assert after.code == 0, after.stdout + after.stderr
    assert "reconnect_scheduled" not in agent_log
    assert '"event": "step_result_refused"' in agent_log


def test_non_ascii_names_round_trip(cluster: Cluster, write_flow) -> None:
    """A workflow, an agent, labels, inputs and outputs named outside ASCII come back intact."""
    cluster.start_agent("agent-ü", "--label", "zone=süd", "--allow", "shell.run")
    flow = write_flow(
        "name: Prüfung ✓\n"
        "inputs:\n  greeting: {type: string, default: grüß dich}\n"
        "steps:\n"
        "  - id: say\n"
        "    task: shell.run\n"
        "    on: {labels: {zone: süd}}\n"
        f"    with: {{command: [{sys.executable}, -c, 'import sys; print(sys.argv[1])', "
        "'${{ inputs.greeting }} ☃']}\n"
    )

    result = cluster.ctl("submit", "--follow", str(flow), "--input", "greeting=こんにちは")

    assert result.code == 0, result.stdout + result.stderr
    run = cluster.run_status(result.stdout.split()[0])
    assert run["name"] == "Prüfung ✓"
    assert run["steps"][0]["agent"] == "agent-ü"
    assert run["steps"][0]["outputs"]["stdout"] == "こんにちは ☃\n"
    agents = cluster.ctl("agents", "--json").json_lines()
    assert agents[0]["name"] == "agent-ü"
    assert agents[0]["labels"] == {"zone": "süd"}
    tail = cluster.ctl("tail", run["run_id"], "--json").json_lines()
    assert tail[0]["data"]["name"] == "Prüfung ✓"
    assert BIN.exists()
