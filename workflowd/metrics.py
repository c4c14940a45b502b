"""Prometheus metrics of the coordinator and of the agent, and the HTTP endpoint serving them.

Each program has its own registry (no global one): `CoordinatorMetrics` is fed
by the coordinator's commit path, `AgentMetrics` by the agent. Updates are a
counter increment or a histogram observation each, cheap enough for the
commit path; the gauges of runs and agents are read only when scraped.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from workflowd import __version__, events

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from workflowd.engine import RunState
    from workflowd.events import Event

# Step durations run from under a second (noop) to hours (a data copy).
STEP_BUCKETS_S = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
# A store write is a WAL append and an fsync: around a millisecond, more on a busy disk.
STORE_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# The failure kinds the product itself reports; anything else an agent sends
# is counted as "other", so that a rogue agent cannot mint label values.
ERROR_KINDS = frozenset(
    {
        "agent_error",
        "agent_lost",
        "agent_unavailable",
        "cancelled",
        "check_failed",
        "expression_error",
        "invalid_params",
        "plugin_error",
        "task_error",
        "timeout",
        "unknown_task",
    }
)

_COUNTED = frozenset(
    {
        events.STEP_DISPATCHED,
        events.STEP_STARTED,
        events.STEP_SUCCEEDED,
        events.STEP_FAILED,
        events.STEP_INTERRUPTED,
    }
)


def _task(state: RunState, step_id: str) -> str:
    try:
        return state.workflow.step(step_id).task
    except KeyError:
        return "unknown"


class _RunsCollector(Collector):
    """`workflowd_runs{state}`: the unfinished runs the coordinator holds, read at scrape time."""

    def __init__(self, statuses: Callable[[], Iterable[str]]) -> None:
        self._statuses = statuses

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = collections.Counter(self._statuses())
        family = GaugeMetricFamily(
            "workflowd_runs",
            "Unfinished runs held by the coordinator, by state.",
            labels=["state"],
        )
        for state in sorted({events.PENDING, events.RUNNING, *counts}):
            family.add_metric([state], counts.get(state, 0))
        yield family


def _standard(registry: CollectorRegistry) -> None:
    """Process, platform and garbage-collector metrics, as every Python exporter has."""
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)


class CoordinatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        _standard(r)
        Gauge("workflowd_build_info", "workflowd's version.", ["version"], registry=r).labels(
            __version__
        ).set(1)
        self.runs_finished = Counter(
            "workflowd_runs_finished", "Runs that ended, by final state.", ["state"], registry=r
        )
        self.steps_dispatched = Counter(
            "workflowd_steps_dispatched", "Step attempts handed to a host.", ["task"], registry=r
        )
        self.steps_started = Counter(
            "workflowd_steps_started", "Step attempts their host started.", ["task"], registry=r
        )
        self.steps_succeeded = Counter(
            "workflowd_steps_succeeded", "Step attempts that succeeded.", ["task"], registry=r
        )
        self.steps_failed = Counter(
            "workflowd_steps_failed",
            "Step attempts that failed, by kind of failure.",
            ["task", "error"],
            registry=r,
        )
        self.steps_interrupted = Counter(
            "workflowd_steps_interrupted",
            "Step attempts cut short by a host shutting down or restarting (they run again).",
            ["task"],
            registry=r,
        )
        self.step_duration = Histogram(
            "workflowd_step_duration_seconds",
            "Time from handing a step attempt to its host to its result.",
            ["task", "outcome"],
            buckets=STEP_BUCKETS_S,
            registry=r,
        )
        self.store_write = Histogram(
            "workflowd_store_write_seconds",
            "Latency of durable writes to the state store.",
            ["op"],
            buckets=STORE_BUCKETS_S,
            registry=r,
        )
        self.agents_connected = Gauge(
            "workflowd_agents_connected", "Agents with a live stream.", registry=r
        )
        self.agent_connects = Counter(
            "workflowd_agent_connects",
            "Agent streams opened: an agent's first, or a reconnect of one seen before.",
            ["kind"],
            registry=r,
        )
        for kind in ("first", "reconnect"):
            self.agent_connects.labels(kind)
        for state in sorted(events.RUN_FINISHED):
            self.runs_finished.labels(state)

    def track(
        self, run_statuses: Callable[[], Iterable[str]], connected: Callable[[], int]
    ) -> None:
        """Read the unfinished runs and the connected agents when scraped."""
        self.registry.register(_RunsCollector(run_statuses))
        self.agents_connected.set_function(connected)

    def committed(self, before: RunState, after: RunState, stored: Sequence[Event]) -> None:
        """Count what one commit to a run's history did."""
        dispatched_ms: dict[str, int] = {}
        for event in stored:
            kind = event.type
            if kind not in _COUNTED:
                continue
            task = _task(after, event.step_id)
            if kind == events.STEP_DISPATCHED:
                dispatched_ms[event.step_id] = event.time_ms
                self.steps_dispatched.labels(task).inc()
            elif kind == events.STEP_STARTED:
                self.steps_started.labels(task).inc()
            elif kind == events.STEP_INTERRUPTED:
                self.steps_interrupted.labels(task).inc()
            else:
                since_ms = (
                    dispatched_ms.get(event.step_id) or before.step(event.step_id).started_ms
                )
                self._result(task, event, since_ms)
        if after.finished and not before.finished:
            self.runs_finished.labels(after.status).inc()

    def _result(self, task: str, event: Event, since_ms: int) -> None:
        if event.type == events.STEP_SUCCEEDED:
            outcome = "succeeded"
            self.steps_succeeded.labels(task).inc()
        else:
            outcome = "failed"
            error = str(event.data.get("error", ""))
            self.steps_failed.labels(task, error if error in ERROR_KINDS else "other").inc()
        if since_ms and event.time_ms >= since_ms:
            took_s = (event.time_ms - since_ms) / 1000
            self.step_duration.labels(task, outcome).observe(took_s)

    def store_written(self, op: str, seconds: float) -> None:
        self.store_write.labels(op).observe(seconds)

    def agent_connected(self, reconnect: bool) -> None:
        self.agent_connects.labels("reconnect" if reconnect else "first").inc()


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        _standard(r)
        self.connected = Gauge(
            "workflow_agent_connected", "1 while the stream to the coordinator is up.", registry=r
        )
        self.connects = Counter(
            "workflow_agent_connects", "Streams opened to the coordinator.", registry=r
        )
        self.stream_losses = Counter(
            "workflow_agent_stream_losses",
            "Streams that dropped or could not be opened (each is followed by a reconnect).",
            registry=r,
        )
        self.steps = Counter(
            "workflow_agent_steps",
            "Step attempts run here, by outcome.",
            ["task", "outcome"],
            registry=r,
        )
        self.steps_running = Gauge(
            "workflow_agent_steps_running", "Step attempts running now.", registry=r
        )
        self.step_duration = Histogram(
            "workflow_agent_step_duration_seconds",
            "Time a step attempt took on this host.",
            ["task", "outcome"],
            buckets=STEP_BUCKETS_S,
            registry=r,
        )

    def step_finished(self, task: str, outcome: str, seconds: float) -> None:
        self.steps.labels(task, outcome).inc()
        self.step_duration.labels(task, outcome).observe(seconds)


def split_address(address: str) -> tuple[str, int]:
    """HOST:PORT (or [V6]:PORT) to a host and a port number."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{address!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - ":PORT" asks for every address


class Exporter:
    """The /metrics HTTP endpoint, served from its own thread."""

    def __init__(self, registry: CollectorRegistry, address: str) -> None:
        host, port = split_address(address)
        self._server: WSGIServer
        self._thread: threading.Thread
        self._server, self._thread = start_http_server(port, host, registry=registry)
        self.port = self._server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
