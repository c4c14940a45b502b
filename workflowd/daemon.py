"""`workflowd`: the coordinator daemon."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import click
import structlog
import uvloop
from grpc_health.v1 import health_pb2

from workflowd import DEFAULT_ADDRESS, __version__, logs, operations, systemd
from workflowd.config import config_file
from workflowd.coordinator import Coordinator
from workflowd.engine import Limits
from workflowd.errors import WorkflowError
from workflowd.server import SERVICE_NAMES, build_server
from workflowd.store import describe, open_store
from workflowd.tasks import load_plugins

log = structlog.get_logger()

DEFAULT_CONFIG = Path("/etc/workflowd/workflowd.toml")


def default_store() -> str:
    """$STATE_DIRECTORY under systemd, else the user's state directory."""
    base = os.environ.get("STATE_DIRECTORY") or os.environ.get("XDG_STATE_HOME")
    root = Path(base) if base else Path.home() / ".local" / "state"
    if not os.environ.get("STATE_DIRECTORY"):
        root = root / "workflowd"
    return f"sqlite://{root / 'workflowd.db'}"


async def serve(
    listen: str,
    store_uri: str,
    heartbeat_timeout_s: float = 15.0,
    agent_wait_s: float = 3600.0,
    store_wait_s: float = 0.0,
    metrics_listen: str = "",
) -> None:
    try:
        store = open_store(store_uri, wait_s=store_wait_s)
        await store.open()
    except WorkflowError as exc:
        raise click.ClickException(str(exc)) from None
    metrics = operations.coordinator_metrics(metrics_listen)
    coordinator = Coordinator(
        store,
        load_plugins(),
        heartbeat_timeout_s=heartbeat_timeout_s,
        limits=Limits(agent_wait_ms=int(agent_wait_s * 1000)),
        metrics=metrics,
    )
    server, health = build_server(coordinator, heartbeat_interval_s=heartbeat_timeout_s / 3)
    try:
        port = server.add_insecure_port(listen)
    except RuntimeError as exc:
        await store.close()
        raise click.ClickException(f"cannot listen on {listen}: {exc}") from None

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)

    await server.start()
    await coordinator.start()
    try:
        exporter = operations.export(metrics, metrics_listen)
    except click.ClickException:
        await coordinator.stop()
        await server.stop(grace=None)
        await store.close()
        raise
    for service in ("", *SERVICE_NAMES):
        await health.set(service, health_pb2.HealthCheckResponse.SERVING)
    service_manager = systemd.ServiceNotifier(
        status=operations.coordinator_status(coordinator, listen)
    )
    service_manager.ready(f"serving on {listen}")
    log.info(
        "workflowd_started",
        listen=listen,
        port=port,
        store=describe(store_uri),
        plugins=sorted(coordinator.plugins),
        version=__version__,
        metrics=metrics_listen and f"http://{metrics_listen}/metrics",
    )

    await stopping.wait()
    log.info("workflowd_stopping")
    service_manager.stopping()
    await health.enter_graceful_shutdown()
    await coordinator.stop()
    await server.stop(grace=5)
    if exporter is not None:
        exporter.close()
    await store.close()
    await service_manager.close()
    log.info("workflowd_stopped")


@config_file(DEFAULT_CONFIG, "WORKFLOWD_CONFIG")
@click.command(context_settings={"show_default": True})
@click.option(
    "--listen",
    default=DEFAULT_ADDRESS,
    envvar="WORKFLOWD_LISTEN",
    show_envvar=True,
    help="HOST:PORT to serve agents and workflowctl on.",
)
@click.option(
    "--store",
    "store_uri",
    envvar="WORKFLOWD_STORE",
    show_envvar=True,
    default=default_store,
    show_default="$STATE_DIRECTORY/workflowd.db, else ~/.local/state/workflowd/workflowd.db",
    help="State store: sqlite:///PATH (the embedded default), a file path, "
    "or mongodb://HOST[:PORT][,HOST...]/DATABASE[?replicaSet=NAME].",
)
@click.option(
    "--store-wait",
    "store_wait_s",
    default=0.0,
    type=click.FloatRange(min=0),
    envvar="WORKFLOWD_STORE_WAIT",
    show_envvar=True,
    help="Seconds to wait for a MongoDB store that is unreachable at start-up, "
    "retrying with backoff; 0 waits for ever.",
)
@click.option(
    "--log-level",
    default="info",
    envvar="WORKFLOWD_LOG_LEVEL",
    show_envvar=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@click.option(
    "--heartbeat-timeout",
    "heartbeat_timeout_s",
    default=15.0,
    type=click.FloatRange(min=0.5),
    envvar="WORKFLOWD_HEARTBEAT_TIMEOUT",
    show_envvar=True,
    help="Seconds of silence after which an agent counts as lost and its steps fail over.",
)
@click.option(
    "--agent-wait-limit",
    "agent_wait_s",
    default=3600.0,
    type=click.FloatRange(min=0),
    envvar="WORKFLOWD_AGENT_WAIT_LIMIT",
    show_envvar=True,
    help="Seconds a step waits for a suitable agent before it fails (resumably).",
)
@click.option(
    "--metrics-listen",
    default="",
    envvar="WORKFLOWD_METRICS_LISTEN",
    show_envvar=True,
    show_default="off",
    help="HOST:PORT to serve Prometheus metrics on, at /metrics.",
)
@click.version_option(__version__)
def main(
    listen: str,
    store_uri: str,
    store_wait_s: float,
    log_level: str,
    heartbeat_timeout_s: float,
    agent_wait_s: float,
    metrics_listen: str,
) -> None:
    """Coordinate workflow runs across remote agents."""
    logs.configure(log_level)
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(
            serve(
                listen,
                store_uri,
                heartbeat_timeout_s,
                agent_wait_s,
                store_wait_s,
                metrics_listen,
            )
        )


if __name__ == "__main__":
    main()
