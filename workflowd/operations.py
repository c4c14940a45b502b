"""What the daemons' command lines need for operations: metrics endpoints and status lines.

Kept out of `daemon` and the agent's CLI so that each of them needs only a few
calls: make the metrics (or None when no endpoint is asked for), export them
once the service listens, and a STATUS= line for systemd.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from workflow_agent.agent import Agent
    from workflowd.coordinator import Coordinator
    from workflowd.metrics import AgentMetrics, CoordinatorMetrics, Exporter

# NOTE: workflowd.metrics (and prometheus_client) is imported only when metrics
# are asked for: it is a tenth of a daemon's start-up time otherwise.


def coordinator_metrics(listen: str) -> CoordinatorMetrics | None:
    if not listen:
        return None
    from workflowd.metrics import CoordinatorMetrics

    return CoordinatorMetrics()


def agent_metrics(listen: str) -> AgentMetrics | None:
    if not listen:
        return None
    from workflowd.metrics import AgentMetrics

    return AgentMetrics()


def export(metrics: CoordinatorMetrics | AgentMetrics | None, listen: str) -> Exporter | None:
    """Serve `metrics` at http://LISTEN/metrics; a clear error when the port is taken."""
    if metrics is None or not listen:
        return None
    from workflowd.metrics import Exporter

    registry: CollectorRegistry = metrics.registry
    try:
        return Exporter(registry, listen)
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot serve metrics on {listen}: {exc}") from None


def coordinator_status(coordinator: Coordinator, listen: str) -> Callable[[], str]:
    """systemd's STATUS= line for workflowd: where it serves, its agents, its unfinished runs."""

    def status() -> str:
        agents = len(coordinator.agents.sessions())
        runs = len(coordinator.run_statuses())
        return f"serving on {listen}: {agents} agents connected, {runs} runs in progress"

    return status


def agent_status(agent: Agent) -> Callable[[], str]:
    """systemd's STATUS= line for an agent: its stream and the steps it runs."""

    def status() -> str:
        link = "connected to" if agent.connected.is_set() else "connecting to"
        return f"{link} {agent.coordinator}, {agent.running} steps running"

    return status
