"""Helpers the benchmarks share: processes on loopback ports, /proc readings, percentiles."""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from workflowd.rpc import workflow_pb2 as pb
from workflowd.rpc import workflow_pb2_grpc as rpc

BIN = Path(sys.executable).parent
BENCH = Path(__file__).resolve().parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(
    condition: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.05
) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(interval_s)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of `values` (0 < fraction <= 1)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS for process {pid}")


def fsync_us(directory: Path, count: int = 100) -> dict[str, float]:
    """How long one small write plus fsync takes on the disk the stores use."""
    path = directory / "fsync-probe"
    samples = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(count):
            os.write(fd, b"x" * 128)
            started = time.perf_counter()
            os.fsync(fd)
            samples.append((time.perf_counter() - started) * 1e6)
    finally:
        os.close(fd)
        path.unlink()
    return {"p50_us": percentile(samples, 0.5), "p99_us": percentile(samples, 0.99)}


def machine() -> dict[str, Any]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    memory_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory_kb = int(line.split()[1])
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "sqlite": sqlite3.sqlite_version,
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


@dataclass
class Procs:
    """Processes started by one benchmark; all of them are stopped on exit."""

    root: Path
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(
        self, name: str, argv: list[str], env: dict[str, str] | None = None, **kwargs: Any
    ) -> subprocess.Popen[bytes]:
        log = (self.root / f"{name}.log").open("ab")
        process = subprocess.Popen(
            argv,
            stdout=kwargs.pop("stdout", log),
            stderr=log,
            cwd=self.root,
            env={**os.environ, **(env or {})},
            **kwargs,
        )
        self.started.append(process)
        return process

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self, process: subprocess.Popen[bytes], timeout_s: float = 15) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    def close(self) -> None:
        for process in reversed(self.started):
            self.stop(process)


@contextlib.contextmanager
def processes(root: Path) -> Iterator[Procs]:
    procs = Procs(root)
    try:
        yield procs
    finally:
        procs.close()


@dataclass
class Daemon:
    """One workflowd on a loopback port."""

    process: subprocess.Popen[bytes]
    address: str

    @property
    def pid(self) -> int:
        return self.process.pid

    def control(self) -> rpc.ControlServiceStub:
        return rpc.ControlServiceStub(grpc.insecure_channel(self.address))

    def agents_connected(self) -> int:
        with grpc.insecure_channel(self.address) as channel:
            reply = rpc.ControlServiceStub(channel).ListAgents(pb.ListAgentsRequest(), timeout=30)
        return sum(agent.connected for agent in reply.agents)


def start_workflowd(procs: Procs, store_uri: str, *extra: str) -> Daemon:
    address = f"127.0.0.1:{free_port()}"
    process = procs.spawn(
        "workflowd",
        [str(BIN / "workflowd"), "--listen", address, "--store", store_uri, *extra],
    )

    def serving() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"workflowd exited {process.returncode}:\n{procs.log('workflowd')}")
        with grpc.insecure_channel(address) as channel:
            try:
                rpc.ControlServiceStub(channel).ListRuns(pb.ListRunsRequest(limit=1), timeout=1)
            except grpc.RpcError:
                return False
        return True

    wait_for(serving, 60, "workflowd to serve")
    return Daemon(process, address)


def start_agent(
    procs: Procs, daemon: Daemon, name: str, *extra: str, probe: Path | None = None
) -> subprocess.Popen[bytes]:
    """A real `workflow-agent`; with `probe`, the instrumented one writing timings there."""
    work = procs.root / f"agent-{name}"
    work.mkdir(exist_ok=True)
    common = ["--coordinator", daemon.address, "--name", name, "--work-dir", str(work), *extra]
    if probe is None:
        argv = [str(BIN / "workflow-agent"), *common, "--log-level", "warning"]
    else:
        argv = [sys.executable, str(BENCH / "probe_agent.py"), "--timings", str(probe), *common]
    return procs.spawn(f"agent-{name}", argv)


@contextlib.contextmanager
def profiled(procs: Procs, pid: int, out: Path | None, name: str) -> Iterator[None]:
    """Sample a process with py-spy while the block runs, when `out` is a directory.

    Writes NAME.txt, collapsed stacks (one line per stack with its sample
    count), which flame graph tools read and `sort -k2 -n` ranks.
    """
    spy = BIN / "py-spy"
    if out is None or not spy.exists():
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    sampler = procs.spawn(
        f"py-spy-{name}",
        [
            str(spy),
            "record",
            "--pid",
            str(pid),
            "--rate",
            "250",
            "--format",
            "raw",
            "--nonblocking",
            "--output",
            str(out / f"{name}.txt"),
        ],
    )
    try:
        yield
    finally:
        sampler.send_signal(signal.SIGINT)
        sampler.wait(60)


def sequential_flow(name: str, steps: int, task: str = "noop", on: str = "") -> str:
    """A workflow of `steps` steps, each after the previous one."""
    placement = on or "{labels: {role: bench}}"
    lines = [f"name: {name}", "steps:"]
    for index in range(steps):
        lines += [f"  - id: s{index}", f"    task: {task}", f"    on: {placement}"]
    return "\n".join(lines) + "\n"
