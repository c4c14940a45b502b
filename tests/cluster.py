"""Real workflowd and workflow-agent processes on loopback ports, for the tests.

Every process is started as a user would start it, through its console
script, with its own state on disk; waiting is done by polling a condition
under a deadline, never by sleeping a guessed time.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from workflowd.rpc import workflow_pb2 as pb
from workflowd.rpc import workflow_pb2_grpc as rpc

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(
    condition: Callable[[], Any], timeout_s: float = 20.0, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


@dataclass
class Cluster:
    root: Path
    port: int = field(default_factory=free_port)
    # the daemon's --store: a MongoDB URI when set, else a SQLite file under root
    store_uri: str = ""
    daemon: subprocess.Popen[bytes] | None = None
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def store_path(self) -> Path:
        return self.root / "workflowd.db"

    def _env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env["WORKFLOW_COORDINATOR"] = self.address
        env.pop("WORKFLOWD_STORE", None)
        env.update(extra or {})
        return env

    def _spawn(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.root / f"{name}.log").open("ab")
        return subprocess.Popen(argv, stdout=log, stderr=log, env=self._env(env), cwd=self.root)

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- workflowd

    def start_daemon(
        self, *extra: str, wait: bool = True, env: dict[str, str] | None = None
    ) -> None:
        self.daemon = self._spawn(
            "workflowd",
            [
                str(BIN / "workflowd"),
                "--listen",
                self.address,
                "--store",
                self.store_uri or str(self.store_path),
                *extra,
            ],
            env,
        )
        if wait:
            wait_for(self._serving, 20, "workflowd to serve")

    def _serving(self) -> bool:
        if self.daemon is not None and self.daemon.poll() is not None:
            raise AssertionError(
                f"workflowd exited {self.daemon.returncode}:\n{self.log('workflowd')}"
            )
        with grpc.insecure_channel(self.address) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
            except grpc.RpcError:
                return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def stop_daemon(self, sig: int = signal.SIGTERM) -> int:
        assert self.daemon is not None
        self.daemon.send_signal(sig)
        code = self.daemon.wait(20)
        self.daemon = None
        return code

    # -- agents

    def start_agent(
        self, name: str, *extra: str, wait: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        work = self.root / f"agent-{name}"
        work.mkdir(exist_ok=True)
        process = self._spawn(
            f"agent-{name}",
            [str(BIN / "workflow-agent"), "--name", name, "--work-dir", str(work), *extra],
            env,
        )
        self.agents[name] = process
        if wait:
            wait_for(lambda: self.agent_connected(name), 20, f"agent {name} to connect")
        return process

    def agent_connected(self, name: str) -> bool:
        process = self.agents.get(name)
        if process is not None and process.poll() is not None:
            raise AssertionError(
                f"agent {name} exited {process.returncode}:\n{self.log('agent-' + name)}"
            )
        return any(
            a.name == name and a.connected
            for a in self.control(lambda c: c.ListAgents(pb.ListAgentsRequest(), timeout=5)).agents
        )

    def stop_agent(self, name: str, sig: int = signal.SIGTERM) -> int:
        process = self.agents.pop(name)
        process.send_signal(sig)
        return process.wait(30)

    # -- clients

    def control(self, call: Callable[[rpc.ControlServiceStub], Any]) -> Any:
        with grpc.insecure_channel(self.address) as channel:
            return call(rpc.ControlServiceStub(channel))

    def ctl(self, *args: str, timeout_s: float = 120) -> Result:
        done = subprocess.run(
            [str(BIN / "workflowctl"), *args],
            capture_output=True,
            text=True,
            env=self._env(),
            cwd=self.root,
            timeout=timeout_s,
            check=False,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def history(self, run_id: str) -> list[dict[str, Any]]:
        result = self.ctl("tail", run_id, "--json", "--no-follow")
        assert result.code in (0, 1), result.stderr
        return result.json_lines()

    def run_status(self, run_id: str) -> dict[str, Any]:
        result = self.ctl("status", run_id, "--json")
        assert result.code == 0, result.stderr
        return json.loads(result.stdout)

    def wait_run(self, run_id: str, timeout_s: float = 60) -> dict[str, Any]:
        return wait_for(
            lambda: (
                (s := self.run_status(run_id))["status"] in ("succeeded", "failed", "cancelled")
                and s
            ),
            timeout_s,
            f"run {run_id} to finish",
        )

    def signal_agent(self, name: str, sig: int) -> None:
        self.agents[name].send_signal(sig)

    def close(self) -> None:
        for name in list(self.agents):
            process = self.agents.pop(name)
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)  # a stopped process cannot die otherwise
                process.kill()
            process.wait(10)
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.kill()
            self.daemon.wait(10)
