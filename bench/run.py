"""The benchmark suite: coordinator throughput, step latency, agent scale, tail latency.

    .venv/bin/python bench/run.py            (what `make bench` runs)
    .venv/bin/python bench/run.py --smoke    (every benchmark at a trivial size)
    .venv/bin/python bench/run.py --only baseline,latency

Every benchmark starts its own processes on loopback ports, with state in a
temporary directory, and stops them when it ends. The first one measures the
ceiling of one gRPC stream on this machine (a plain ping-pong between two
processes) and every figure after it is also given as a ratio to that
ceiling, measured in the same run, because the machine may be shared. A
benchmark that fails or cannot run here (no Redis, no Celery) is reported as
such and the others go on. The table is printed as Markdown and the figures
are written as JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import common
import grpc
import pymongo
from common import BENCH, BIN, Procs, percentile
from pymongo.errors import PyMongoError

from workflowd.rpc import workflow_pb2 as pb
from workflowd.rpc import workflow_pb2_grpc as rpc

RESULTS = BENCH / "results"
FINISHED = ("succeeded", "failed", "cancelled")

# The targets: reported against, never asserted.
TARGET_STEPS_PER_S = 3000
TARGET_RATIO = 0.30
TARGET_STEP_P50_US = 1500
TARGET_STEP_P99_US = 2500
TARGET_KB_PER_AGENT = 100
TARGET_TAIL_P99_MS = 50


# ------------------------------------------------------------------ helpers


def submit_all(address: str, source: str, count: int) -> list[str]:
    """Submit `count` runs of one definition at once; their run ids."""

    async def submit() -> list[str]:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = rpc.ControlServiceStub(channel)
            request = pb.SubmitRequest(
                source=pb.DefinitionSource(yaml=source, filename="bench.yaml")
            )
            replies = await asyncio.gather(
                *(stub.Submit(request, timeout=600) for _ in range(count))
            )
        return [reply.run_id for reply in replies]

    return asyncio.run(submit())


def wait_runs(address: str, run_ids: list[str], timeout_s: float) -> list[pb.RunSummary]:
    """Poll until every run has finished; their summaries."""
    wanted = set(run_ids)
    with grpc.insecure_channel(address) as channel:
        stub = rpc.ControlServiceStub(channel)

        def done() -> list[pb.RunSummary] | None:
            # a run id sorts by creation time: these runs are the newest ones
            runs = [
                r
                for r in stub.ListRuns(pb.ListRunsRequest(limit=len(wanted)), timeout=30).runs
                if r.run_id in wanted
            ]
            finished = [r for r in runs if r.status in FINISHED]
            return finished if len(finished) == len(wanted) else None

        # polled slowly: listing runs costs the coordinator CPU the runs need
        # (the end is taken from the runs' own update times, not from the poll)
        return common.wait_for(done, timeout_s, f"{len(wanted)} runs to finish", interval_s=0.5)


def wait_agents(daemon: common.Daemon, count: int, timeout_s: float = 60) -> None:
    common.wait_for(lambda: daemon.agents_connected() >= count, timeout_s, f"{count} agents")


def start_secantus(procs: Procs) -> str:
    port = common.free_port()
    procs.spawn(
        "secantusd",
        [
            str(BIN / "secantusd-py"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--storage-path",
            str(procs.root / "mongo-data"),
            # fsync the journal on commit: j:true then means on disk, as on mongod
            "--sync-on-commit",
            "--log-level",
            "WARNING",
        ],
    )

    def answers() -> bool:
        try:
            with pymongo.MongoClient(
                f"mongodb://127.0.0.1:{port}/?directConnection=true",
                serverSelectionTimeoutMS=500,
            ) as client:
                client.admin.command("ping")
        except PyMongoError:
            return False
        return True

    common.wait_for(answers, 60, "secantusd-py")
    return f"mongodb://127.0.0.1:{port}/bench"


# --------------------------------------------------------------- benchmarks


def bench_baseline(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """A plain grpc.aio ping-pong on one stream between two processes; and the disk."""
    with common.processes(root) as procs:
        port = common.free_port()
        procs.spawn(
            "pingpong-server", [sys.executable, str(BENCH / "pingpong.py"), "serve", str(port)]
        )
        client = subprocess.run(
            [
                sys.executable,
                str(BENCH / "pingpong.py"),
                "client",
                f"127.0.0.1:{port}",
                "--seconds",
                str(args.pingpong_s),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    result = json.loads(client.stdout)
    result["fsync"] = common.fsync_us(root)
    return result


def bench_throughput(args: argparse.Namespace, root: Path, store: str) -> dict[str, Any]:
    """Four agents; many runs of no-op steps submitted at once; steps per second end to end."""
    runs = args.runs if store == "sqlite" else args.mongo_runs
    steps = args.steps
    with common.processes(root) as procs:
        uri = f"sqlite://{root / 'workflowd.db'}" if store == "sqlite" else start_secantus(procs)
        daemon = common.start_workflowd(procs, uri)
        agents = [
            common.start_agent(procs, daemon, f"agent-{i}", "--label", "role=bench")
            for i in range(args.agents)
        ]
        wait_agents(daemon, args.agents)
        source = common.sequential_flow("throughput", steps)
        pids = [daemon.pid, *(agent.pid for agent in agents)]
        cpu_before = [common.cpu_s(pid) for pid in pids]
        started_ms = time.time() * 1000
        with (
            common.profiled(procs, daemon.pid, args.profile, f"throughput-{store}"),
            common.profiled(procs, agents[0].pid, args.profile, f"throughput-{store}-agent"),
        ):
            run_ids = submit_all(daemon.address, source, runs)
            submitted_ms = time.time() * 1000
            summaries = wait_runs(daemon.address, run_ids, args.run_timeout_s)
        cpu_after = [common.cpu_s(pid) for pid in pids]
        rss = common.rss_bytes(daemon.pid)
    ended_ms = max(s.updated_ms for s in summaries)
    seconds = (ended_ms - started_ms) / 1000
    total = runs * steps
    coordinator_cpu = cpu_after[0] - cpu_before[0]
    agents_cpu = sum(cpu_after[1:]) - sum(cpu_before[1:])
    return {
        "store": store,
        "agents": args.agents,
        "runs": runs,
        "steps_per_run": steps,
        "steps": total,
        "failed_runs": sum(s.status != "succeeded" for s in summaries),
        "submit_s": (submitted_ms - started_ms) / 1000,
        "seconds": seconds,
        "steps_per_s": total / seconds,
        "coordinator_cpu_s": coordinator_cpu,
        "coordinator_cpu_us_per_step": coordinator_cpu / total * 1e6,
        "agents_cpu_us_per_step": agents_cpu / total * 1e6,
        "coordinator_rss_mib": rss / 2**20,
    }


def bench_latency(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Sequential no-op steps on one agent, timed on the agent's stream; several runs,
    each against a fresh workflowd, and each figure the median of theirs."""
    runs = [
        latency_once(args, root / f"run-{index}", profile=index == 0)
        for index in range(args.latency_repeats)
    ]
    found: dict[str, Any] = {"steps": args.latency_steps, "repeats": len(runs)}
    failed = [run["status"] for run in runs if run["status"] != "succeeded"]
    found["status"] = failed[0] if failed else "succeeded"
    for key in runs[0]:
        if key not in ("steps", "status"):
            found[key] = statistics.median(run[key] for run in runs)
    found["runs"] = runs
    return found


def latency_once(args: argparse.Namespace, root: Path, profile: bool) -> dict[str, Any]:
    """One run of sequential no-op steps on one agent."""
    root.mkdir()
    steps = args.latency_steps
    timings = root / "probe.json"
    out = args.profile if profile else None
    with common.processes(root) as procs:
        daemon = common.start_workflowd(procs, f"sqlite://{root / 'workflowd.db'}")
        probe = common.start_agent(procs, daemon, "probe", "--label", "role=bench", probe=timings)
        wait_agents(daemon, 1)
        with (
            common.profiled(procs, daemon.pid, out, "latency"),
            common.profiled(procs, probe.pid, out, "latency-agent"),
        ):
            [run_id] = submit_all(daemon.address, common.sequential_flow("latency", steps), 1)
            [summary] = wait_runs(daemon.address, [run_id], args.run_timeout_s)
        procs.stop(probe)
    data = json.loads(timings.read_text())
    starts, results = data["starts"], data["results"]
    gaps, cycles = [], []
    for index in range(steps - 1):
        this, following = f"{run_id}/s{index}/1", f"{run_id}/s{index + 1}/1"
        gaps.append((starts[following] - results[this]) / 1000)
        cycles.append((starts[following] - starts[this]) / 1000)
    return {
        "steps": steps,
        "status": summary.status,
        "run_s": (summary.updated_ms - summary.created_ms) / 1000,
        "result_to_dispatch_p50_us": percentile(gaps, 0.5),
        "result_to_dispatch_p99_us": percentile(gaps, 0.99),
        "step_wall_p50_us": percentile(cycles, 0.5),
        "step_wall_p99_us": percentile(cycles, 0.99),
        "step_wall_mean_us": sum(cycles) / len(cycles),
    }


def bench_scale(args: argparse.Namespace, root: Path, agents: int) -> dict[str, Any]:
    """Idle agents (many streams per process) held by one workflowd: memory and CPU."""
    with common.processes(root) as procs:
        daemon = common.start_workflowd(
            procs,
            f"sqlite://{root / 'workflowd.db'}",
            "--heartbeat-timeout",
            str(args.heartbeat_timeout_s),
            "--log-level",
            "warning",
        )
        time.sleep(1.0)
        rss_before = common.rss_bytes(daemon.pid)
        cpu_idle_0 = common.cpu_s(daemon.pid)
        time.sleep(args.cpu_window_s / 2)
        idle_cpu = (common.cpu_s(daemon.pid) - cpu_idle_0) / (args.cpu_window_s / 2)
        fleet = procs.spawn(
            "idle-agents",
            [
                sys.executable,
                str(BENCH / "idle_agents.py"),
                daemon.address,
                "--agents",
                str(agents),
                "--per-channel",
                str(args.streams_per_channel),
                "--prefix",
                f"idle{agents}",
            ],
            stdout=subprocess.PIPE,
        )
        if fleet.stdout is None:
            raise RuntimeError("the idle agents' output is not a pipe")
        ready = json.loads(fleet.stdout.readline() or "{}")
        if ready.get("welcomed") != agents:
            raise RuntimeError(f"only {ready} of {agents} agents connected")
        connected = daemon.agents_connected()
        time.sleep(args.settle_s)
        rss_after = common.rss_bytes(daemon.pid)
        cpu_0 = common.cpu_s(daemon.pid)
        time.sleep(args.cpu_window_s)
        cpu = (common.cpu_s(daemon.pid) - cpu_0) / args.cpu_window_s
        fleet.send_signal(15)
        beats = json.loads(fleet.stdout.readline() or "{}")
        fleet.wait(60)
    interval_s = args.heartbeat_timeout_s / 3
    beats_per_s = beats.get("beats_per_s") or agents / interval_s
    return {
        "agents": agents,
        "connected": connected,
        "streams_per_connection": args.streams_per_channel,
        "heartbeat_interval_s": interval_s,
        "connect_s": ready["connect_s"],
        "rss_before_mib": rss_before / 2**20,
        "rss_after_mib": rss_after / 2**20,
        "kb_per_agent": (rss_after - rss_before) / agents / 1024,
        "idle_cpu_percent": idle_cpu * 100,
        "cpu_percent": cpu * 100,
        "heartbeats_per_s": beats_per_s,
        "cpu_us_per_heartbeat": (cpu - idle_cpu) / beats_per_s * 1e6,
        "broken_streams": beats.get("broken", 0),
    }


def bench_tail(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """From an agent's progress report to its line in `workflowctl tail --json`."""
    steps = args.tail_steps
    lines = ["name: tail", "steps:"]
    for index in range(steps):
        lines += [
            f"  - id: p{index}",
            "    task: bench.progress",
            "    on: {labels: {role: bench}}",
            "    needs: []",
            f"    with: {{reports: {args.tail_reports}, delay_s: 2.0}}",
        ]
    source = "\n".join(lines) + "\n"
    samples: list[float] = []
    with common.processes(root) as procs:
        daemon = common.start_workflowd(procs, f"sqlite://{root / 'workflowd.db'}")
        common.start_agent(procs, daemon, "probe", "--label", "role=bench", probe=root / "p.json")
        wait_agents(daemon, 1)
        [run_id] = submit_all(daemon.address, source, 1)
        tail = procs.spawn(
            "tail",
            [str(BIN / "workflowctl"), "--coordinator", daemon.address, "tail", run_id, "--json"],
            stdout=subprocess.PIPE,
        )
        if tail.stdout is None:
            raise RuntimeError("the tail's output is not a pipe")
        attached_ns = 0
        progress = 0
        for line in tail.stdout:
            received_ns = time.time_ns()
            attached_ns = attached_ns or received_ns
            event = json.loads(line)
            if event["type"] != "step_progress":
                continue
            progress += 1
            sent_ns = int(event["data"]["message"])
            if sent_ns > attached_ns:  # reported live, not replayed from the history
                samples.append((received_ns - sent_ns) / 1e6)
        tail.wait(60)
    return {
        "steps": steps,
        "reports_per_step": args.tail_reports,
        "progress_events_seen": progress,
        "samples": len(samples),
        "p50_ms": percentile(samples, 0.5),
        "p99_ms": percentile(samples, 0.99),
        "max_ms": max(samples, default=float("nan")),
    }


def _redis_server() -> str | None:
    found = shutil.which("redis-server")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        print("redis-server is missing: installing Debian's redis-server", flush=True)
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "check": False}
        subprocess.run(["apt-get", "update", "-qq"], timeout=300, **quiet)  # noqa: S607 - the system's apt-get
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "redis-server"],  # noqa: S607 - the system's apt-get
            timeout=600,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            **quiet,
        )
        found = shutil.which("redis-server")
    return found


def bench_celery(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Celery with a local Redis: the same no-op task, throughput and round-trip latency."""
    if importlib.util.find_spec("celery") is None or importlib.util.find_spec("redis") is None:
        return {
            "skipped": "celery or redis (the Python client) is not installed; make bench "
            "installs them with the bench extra"
        }
    server = _redis_server()
    if server is None:
        return {"skipped": "redis-server is not installed and could not be installed"}
    results: dict[str, Any] = {"worker_processes": args.agents}
    variants = {
        # Redis as it comes for a broker: nothing written to disk per task
        "in_memory": ["--save", "", "--appendonly", "no"],
        # every write to the append-only file fsynced, as our stores do per transition
        "fsync_always": ["--save", "", "--appendonly", "yes", "--appendfsync", "always"],
    }
    for name, persistence in variants.items():
        variant_root = root / name
        variant_root.mkdir()
        with common.processes(variant_root) as procs:
            port = common.free_port()
            procs.spawn(
                "redis",
                [
                    server,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(variant_root),
                    *persistence,
                ],
            )
            env = {"BENCH_REDIS_URL": f"redis://127.0.0.1:{port}", "PYTHONPATH": str(BENCH)}
            procs.spawn(
                "celery-worker",
                [
                    str(BIN / "celery"),
                    "-A",
                    "celery_peer",
                    "worker",
                    "--pool",
                    "prefork",
                    "--concurrency",
                    str(args.agents),
                    "--loglevel",
                    "warning",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                ],
                env=env,
            )
            client = subprocess.run(
                [
                    sys.executable,
                    str(BENCH / "celery_peer.py"),
                    "client",
                    "--tasks",
                    str(args.celery_tasks),
                    "--sequential",
                    str(args.latency_steps),
                ],
                capture_output=True,
                text=True,
                timeout=args.run_timeout_s,
                env={**os.environ, **env},
                check=False,
            )
            if client.returncode != 0:
                raise RuntimeError(f"celery client failed:\n{client.stderr[-3000:]}")
            results[name] = json.loads(client.stdout)
    return results


# -------------------------------------------------------------------- report


def _fmt(value: float, digits: int = 0) -> str:
    if value != value:  # NaN
        return "n/a"
    return f"{value:,.{digits}f}"


def rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(measure, value, ratio to the ping-pong, target) for the table."""
    base = results.get("baseline", {})
    rt_per_s = base.get("round_trips_per_s", float("nan"))
    us_per_rt = base.get("us_per_round_trip", float("nan"))
    out: list[tuple[str, str, str, str]] = []

    def per_s(value: float) -> str:
        return f"{value / rt_per_s:.2f}x"

    def per_us(value_us: float) -> str:
        return f"{value_us / us_per_rt:.1f}x"

    def verdict(ok: bool) -> str:
        return "met" if ok else "missed"

    if "round_trips_per_s" in base:
        out.append(("ping-pong, one stream: round trips/s", _fmt(rt_per_s), "1.00x", ""))
        out.append(
            (
                "ping-pong: µs per round trip (p50 / p99)",
                f"{_fmt(us_per_rt)} ({_fmt(base['p50_us'])} / {_fmt(base['p99_us'])})",
                "1.0x",
                "",
            )
        )
        out.append(
            (
                "disk: µs per fsync (p50 / p99)",
                f"{_fmt(base['fsync']['p50_us'])} / {_fmt(base['fsync']['p99_us'])}",
                per_us(base["fsync"]["p50_us"]),
                "",
            )
        )
    for store in ("sqlite", "mongodb"):
        found = results.get(f"throughput_{store}", {})
        if "steps_per_s" in found:
            value = found["steps_per_s"]
            target = ""
            if store == "sqlite":
                ok = value >= TARGET_STEPS_PER_S and value / rt_per_s >= TARGET_RATIO
                target = f"≥ {TARGET_STEPS_PER_S:,} and ≥ {TARGET_RATIO:.2f}x: {verdict(ok)}"
            out.append(
                (
                    f"throughput, {store}: steps/s ({found['runs']} runs × "
                    f"{found['steps_per_run']} steps, {found['agents']} agents)",
                    _fmt(value),
                    per_s(value),
                    target,
                )
            )
            out.append(
                (
                    f"throughput, {store}: coordinator CPU µs per step",
                    _fmt(found["coordinator_cpu_us_per_step"]),
                    per_us(found["coordinator_cpu_us_per_step"]),
                    "",
                )
            )
    lat = results.get("latency", {})
    if "step_wall_p50_us" in lat:
        for label, key in (
            ("result → next dispatch", "result_to_dispatch"),
            ("per-step wall time", "step_wall"),
        ):
            p50, p99 = lat[f"{key}_p50_us"], lat[f"{key}_p99_us"]
            ok = p50 < TARGET_STEP_P50_US and p99 < TARGET_STEP_P99_US
            out.append(
                (
                    f"latency, {lat['steps']} sequential steps: {label} µs (p50 / p99)",
                    f"{_fmt(p50)} / {_fmt(p99)}",
                    f"{per_us(p50)} / {per_us(p99)}",
                    f"< 1,500 / < 2,500: {verdict(ok)}",
                )
            )
    for key in sorted(k for k in results if k.startswith("scale_")):
        found = results[key]
        if "kb_per_agent" not in found:
            continue
        agents = found["agents"]
        target = ""
        if agents >= 10_000:
            target = f"< {TARGET_KB_PER_AGENT} KB: {verdict(found['kb_per_agent'] < 100)}"
        out.append(
            (
                f"scale, {agents:,} idle agents: coordinator KB per agent",
                _fmt(found["kb_per_agent"], 1),
                "",
                target,
            )
        )
        out.append(
            (
                f"scale, {agents:,} idle agents: heartbeats/s (every "
                f"{found['heartbeat_interval_s']:g} s); connecting all took s",
                f"{_fmt(found['heartbeats_per_s'])}; {_fmt(found['connect_s'], 1)}",
                "",
                "",
            )
        )
        out.append(
            (
                f"scale, {agents:,} idle agents: coordinator CPU % of one core",
                _fmt(found["cpu_percent"], 1),
                "",
                "",
            )
        )
        out.append(
            (
                f"scale, {agents:,} idle agents: CPU µs per heartbeat",
                _fmt(found["cpu_us_per_heartbeat"]),
                per_us(found["cpu_us_per_heartbeat"]),
                "",
            )
        )
    tail = results.get("tail", {})
    if "p50_ms" in tail:
        ok = tail["p99_ms"] < TARGET_TAIL_P99_MS
        out.append(
            (
                "tail: progress report → `workflowctl tail --json` ms (p50 / p99)",
                f"{_fmt(tail['p50_ms'], 1)} / {_fmt(tail['p99_ms'], 1)}",
                f"{per_us(tail['p50_ms'] * 1000)} / {per_us(tail['p99_ms'] * 1000)}",
                f"p99 < {TARGET_TAIL_P99_MS}: {verdict(ok)}",
            )
        )
    celery = results.get("celery", {})
    ours_tp = results.get("throughput_sqlite", {}).get("steps_per_s")
    ours_lat = lat.get("step_wall_p50_us")
    for name in ("in_memory", "fsync_always"):
        found = celery.get(name)
        if not found:
            continue
        tp, p50, p99 = found["tasks_per_s"], found["round_trip_p50_us"], found["round_trip_p99_us"]
        out.append(
            (
                f"Celery + Redis ({name.replace('_', ' ')}): tasks/s "
                f"({found['tasks']} at once, {celery['worker_processes']} worker processes)",
                _fmt(tp),
                per_s(tp),
                f"ours ahead: {verdict(ours_tp > tp)}" if ours_tp else "",
            )
        )
        out.append(
            (
                f"Celery + Redis ({name.replace('_', ' ')}): round trip µs (p50 / p99)",
                f"{_fmt(p50)} / {_fmt(p99)}",
                f"{per_us(p50)} / {per_us(p99)}",
                f"ours ahead: {verdict(ours_lat < p50)}" if ours_lat else "",
            )
        )
    if "skipped" in celery:
        out.append(("Celery + Redis", "skipped", "", celery["skipped"]))
    for key, found in results.items():
        if isinstance(found, dict) and "error" in found:
            out.append((key, "failed", "", found["error"].splitlines()[-1][:120]))
    return out


def markdown(results: dict[str, Any]) -> str:
    lines = ["| measure | value | ratio to ping-pong | target |", "|---|---:|---:|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows(results)]
    return "\n".join(lines)


def compare(before: dict[str, Any], after: dict[str, Any]) -> str:
    """Two runs side by side, each with its ratios to its own ping-pong."""
    earlier = {measure: (value, ratio) for measure, value, ratio, _ in rows(before)}
    lines = [
        "| measure | before | ratio | after | ratio | target (after) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for measure, value, ratio, target in rows(after):
        old_value, old_ratio = earlier.get(measure, ("", ""))
        lines.append(f"| {measure} | {old_value} | {old_ratio} | {value} | {ratio} | {target} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------- main


def sizes(args: argparse.Namespace) -> None:
    if args.smoke:
        args.pingpong_s = 0.5
        args.runs, args.mongo_runs, args.steps = 4, 2, 3
        args.latency_steps, args.latency_repeats = 10, 1
        args.scale = [20]
        args.cpu_window_s, args.settle_s = 1.0, 0.5
        args.tail_steps, args.tail_reports = 1, 3
        args.celery_tasks = 20
        args.run_timeout_s = 120


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated: baseline, throughput_sqlite, "
        "throughput_mongodb, latency, scale, tail, celery",
    )
    parser.add_argument("--smoke", action="store_true", help="every benchmark at a trivial size")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="sample workflowd with py-spy during throughput and latency; stacks go to DIR",
    )
    parser.add_argument("--pingpong-s", type=float, default=5.0)
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--mongo-runs", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--latency-steps", type=int, default=500)
    parser.add_argument(
        "--latency-repeats",
        type=int,
        default=3,
        help="latency runs, each against a fresh workflowd; each figure is their median",
    )
    parser.add_argument(
        "--scale", type=lambda s: [int(x) for x in s.split(",")], default=[1000, 10_000]
    )
    parser.add_argument("--streams-per-channel", type=int, default=100)
    # 30 s of silence: a heartbeat every 10 s, which one process can send for 10,000 streams
    parser.add_argument("--heartbeat-timeout-s", type=float, default=30.0)
    parser.add_argument("--settle-s", type=float, default=3.0)
    parser.add_argument("--cpu-window-s", type=float, default=10.0)
    parser.add_argument("--tail-steps", type=int, default=4)
    parser.add_argument("--tail-reports", type=int, default=60)
    parser.add_argument("--celery-tasks", type=int, default=4000)
    parser.add_argument("--run-timeout-s", type=float, default=300.0)
    parser.add_argument(
        "--compare",
        nargs=2,
        type=Path,
        metavar=("BEFORE", "AFTER"),
        help="print two results files side by side and exit",
    )
    args = parser.parse_args()
    if args.compare:
        before, after = (json.loads(path.read_text()) for path in args.compare)
        print(compare(before, after))
        return
    sizes(args)

    # 10,000 agents over connections of 100 streams need few descriptors, but
    # leave room for smaller --streams-per-channel
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    benchmarks: dict[str, Callable[[Path], dict[str, Any]]] = {
        "baseline": lambda root: bench_baseline(args, root),
        "throughput_sqlite": lambda root: bench_throughput(args, root, "sqlite"),
        "throughput_mongodb": lambda root: bench_throughput(args, root, "mongodb"),
        "latency": lambda root: bench_latency(args, root),
        "tail": lambda root: bench_tail(args, root),
    }
    for agents in args.scale:
        benchmarks[f"scale_{agents}"] = lambda root, n=agents: bench_scale(args, root, n)
    benchmarks["celery"] = lambda root: bench_celery(args, root)
    only = {name for name in args.only.split(",") if name}
    known = set(benchmarks) | {name.split("_")[0] for name in benchmarks}
    if only - known:
        unknown = ", ".join(sorted(only - known))
        sys.exit(f"run.py: no benchmark named {unknown}; there are {', '.join(benchmarks)}")
    if only and "baseline" not in only:
        print("note: without the baseline, the ratios to the ping-pong read nan", flush=True)

    results: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": common.machine(),
        "smoke": args.smoke,
        "open_files_limit": [soft, hard],
    }
    suite_started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="workflowd-bench-") as tmp:
        for name, bench in benchmarks.items():
            if only and name not in only and name.split("_")[0] not in only:
                continue
            print(f"== {name}", flush=True)
            # what the benchmark before wrote is on disk first: its writeback would
            # otherwise slow this one's fsyncs
            os.sync()
            started = time.monotonic()
            root = Path(tmp) / name
            root.mkdir()
            try:
                found = bench(root)
            except Exception as exc:  # noqa: BLE001 - one benchmark failing must not stop the rest
                traceback.print_exc()
                found = {"error": f"{type(exc).__name__}: {exc}"}
            found["bench_s"] = round(time.monotonic() - started, 1)
            results[name] = found
            print(json.dumps(found), flush=True)
    results["suite_s"] = round(time.monotonic() - suite_started, 1)

    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(results, indent=2)
    (args.out / f"bench-{stamp}.json").write_text(text)
    (args.out / "latest.json").write_text(text)
    print()
    print(markdown(results))
    print(f"\nwritten: {args.out / f'bench-{stamp}.json'} ({results['suite_s']:g} s)")


if __name__ == "__main__":
    main()
