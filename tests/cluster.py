"""Real workflowd and workflow-agent processes on loopback ports, for the tests.

Every process is started as a user would start it, through its console
script, with its own state on disk; waiting is done by polling a condition
under a deadline, never by sleeping a guessed time. A cluster made with a
`Pki` serves TLS: the coordinator, each agent and workflowctl get
certificates from its CA; one made with a `token` requires it of workflowctl.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from workflowd import certs
from workflowd.credentials import bearer_metadata, channel_credentials
from workflowd.rpc import workflow_pb2 as pb
from workflowd.rpc import workflow_pb2_grpc as rpc

# variables through which a test's own environment could change what a process does
_CREDENTIAL_VARIABLES = (
    "WORKFLOW_TLS_CA",
    "WORKFLOW_TLS_CERT",
    "WORKFLOW_TLS_KEY",
    "WORKFLOW_TOKEN",
    "WORKFLOW_TOKEN_FILE",
    "WORKFLOW_AGENT_TLS_CERT",
    "WORKFLOW_AGENT_TLS_KEY",
    "WORKFLOW_AGENT_TLS_CA",
    "WORKFLOW_AGENT_ALLOW",
    "WORKFLOWD_TLS_CERT",
    "WORKFLOWD_TLS_KEY",
    "WORKFLOWD_TLS_CLIENT_CA",
    "WORKFLOWD_CONTROL_TOKEN_FILE",
    "WORKFLOWD_INSECURE",
)

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
class Pki:
    """A CA on disk, and certificates issued by it on demand: (cert, key) paths."""

    root: Path
    issued: dict[tuple[str, str], tuple[Path, Path]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        certs.create_ca(self.root)

    @property
    def ca(self) -> Path:
        return self.root / certs.CA_CERT

    def issue(self, role: str, name: str) -> tuple[Path, Path]:
        if (role, name) not in self.issued:
            prefix = self.root / f"{role}-{len(self.issued)}"
            self.issued[role, name] = certs.issue(self.root, role, name, prefix)
        return self.issued[role, name]

    def coordinator(self) -> tuple[Path, Path]:
        return self.issue(certs.ROLE_COORDINATOR, "localhost")

    def operator(self) -> tuple[Path, Path]:
        return self.issue(certs.ROLE_OPERATOR, "test-operator")

    def agent(self, name: str) -> tuple[Path, Path]:
        return self.issue(certs.ROLE_AGENT, name)

    def agent_args(self, name: str) -> list[str]:
        cert, key = self.agent(name)
        return ["--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(self.ca)]


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
    pki: Pki | None = None
    token: str = ""

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
        for name in _CREDENTIAL_VARIABLES:
            env.pop(name, None)
        if self.pki is not None:
            cert, key = self.pki.operator()
            env.update(
                WORKFLOW_TLS_CA=str(self.pki.ca),
                WORKFLOW_TLS_CERT=str(cert),
                WORKFLOW_TLS_KEY=str(key),
            )
        if self.token:
            env["WORKFLOW_TOKEN"] = self.token
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
        security: list[str] = []
        if self.pki is not None:
            cert, key = self.pki.coordinator()
            security += ["--tls-cert", str(cert), "--tls-key", str(key)]
            security += ["--tls-client-ca", str(self.pki.ca)]
        if self.token:
            token_file = self.root / "tokens"
            token_file.write_text(f"# control API tokens\n{self.token}\n")
            token_file.chmod(0o600)
            security += ["--control-token-file", str(token_file)]
        self.daemon = self._spawn(
            "workflowd",
            [
                str(BIN / "workflowd"),
                "--listen",
                self.address,
                "--store",
                self.store_uri or str(self.store_path),
                *security,
                *extra,
            ],
            env,
        )
        if wait:
            wait_for(self._serving, 20, "workflowd to serve")

    def channel(self) -> grpc.Channel:
        """A channel to workflowd as an operator would open it."""
        if self.pki is None:
            return grpc.insecure_channel(self.address)
        cert, key = self.pki.operator()
        return grpc.secure_channel(self.address, channel_credentials(self.pki.ca, cert, key))

    def _serving(self) -> bool:
        if self.daemon is not None and self.daemon.poll() is not None:
            raise AssertionError(
                f"workflowd exited {self.daemon.returncode}:\n{self.log('workflowd')}"
            )
        with self.channel() as channel:
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
        self,
        name: str,
        *extra: str,
        wait: bool = True,
        env: dict[str, str] | None = None,
        tls: bool = True,
    ) -> subprocess.Popen[bytes]:
        """Start an agent; in a TLS cluster with a certificate for its name unless `tls` is off."""
        work = self.root / f"agent-{name}"
        work.mkdir(exist_ok=True)
        security = self.pki.agent_args(name) if self.pki is not None and tls else []
        process = self._spawn(
            f"agent-{name}",
            [
                str(BIN / "workflow-agent"),
                "--name",
                name,
                "--work-dir",
                str(work),
                *security,
                *extra,
            ],
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
        listed = self.control(
            lambda c: c.ListAgents(pb.ListAgentsRequest(), timeout=5, metadata=self.metadata)
        )
        return any(a.name == name and a.connected for a in listed.agents)

    def stop_agent(self, name: str, sig: int = signal.SIGTERM) -> int:
        process = self.agents.pop(name)
        process.send_signal(sig)
        return process.wait(30)

    # -- clients

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata an operator sends: the bearer token, when the cluster has one."""
        return bearer_metadata(self.token)

    def control(self, call: Callable[[rpc.ControlServiceStub], Any]) -> Any:
        """Call the control API; `call` gets the stub and passes `metadata=cluster.metadata`."""
        with self.channel() as channel:
            return call(rpc.ControlServiceStub(channel))

    def ctl(
        self, *args: str, timeout_s: float = 120, env: Mapping[str, str | None] | None = None
    ) -> Result:
        """Run workflowctl as the cluster's operator; `env` changes (None: removes) variables."""
        environment = self._env()
        for name, value in (env or {}).items():
            if value is None:
                environment.pop(name, None)
            else:
                environment[name] = value
        done = subprocess.run(
            [str(BIN / "workflowctl"), *args],
            capture_output=True,
            text=True,
            env=environment,
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
