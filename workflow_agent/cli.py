"""`workflow-agent`: connects to workflowd and runs the steps it is given."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from pathlib import Path

import click
import structlog
import uvloop

from workflow_agent.agent import Agent
from workflowd import DEFAULT_ADDRESS, __version__, logs, operations, systemd
from workflowd.config import config_file
from workflowd.credentials import channel_credentials
from workflowd.errors import WorkflowError
from workflowd.tasks import SAFE_PLUGINS, installed_plugins, load_plugins

log = structlog.get_logger()

DEFAULT_CONFIG = Path("/etc/workflow-agent/agent.toml")


def _labels(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str]:
    labels = {}
    for value in values:
        key, sep, label = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE")
        labels[key] = label
    return labels


# TODO: two agents on one host share this default; make it per agent name.
def _default_work_dir() -> Path:
    base = os.environ.get("STATE_DIRECTORY")
    return Path(base) if base else Path.home() / ".local" / "state" / "workflow-agent"


async def _serve(agent: Agent, metrics_listen: str = "") -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    exporter = operations.export(agent.metrics, metrics_listen)
    # Ready as a service once it runs: an agent whose coordinator is away keeps
    # trying to reach it, which is its normal work (STATUS says how it goes).
    service_manager = systemd.ServiceNotifier(status=operations.agent_status(agent))
    runner = asyncio.create_task(agent.run())
    service_manager.ready(f"connecting to {agent.coordinator}")
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
    service_manager.stopping(f"stopping, {agent.running} steps running")
    await agent.stop()
    await runner
    if exporter is not None:
        exporter.close()
    await service_manager.close()
    log.info("agent_stopped", agent=agent.name)


@config_file(DEFAULT_CONFIG, "WORKFLOW_AGENT_CONFIG")
@click.command(context_settings={"show_default": True})
@click.option(
    "--coordinator",
    default=DEFAULT_ADDRESS,
    envvar="WORKFLOW_COORDINATOR",
    show_envvar=True,
    help="HOST:PORT of workflowd.",
)
@click.option(
    "--name",
    default=socket.gethostname,
    show_default="the host name",
    envvar="WORKFLOW_AGENT_NAME",
    show_envvar=True,
    help="The name steps address this agent by.",
)
@click.option(
    "--label",
    "labels",
    multiple=True,
    callback=_labels,
    envvar="WORKFLOW_AGENT_LABELS",
    show_envvar=True,
    help="KEY=VALUE, repeatable; steps can select agents by label.",
)
@click.option(
    "--allow",
    multiple=True,
    default=list(SAFE_PLUGINS),
    show_default="the built-in plugins that run no commands: " + " ".join(SAFE_PLUGINS),
    envvar="WORKFLOW_AGENT_ALLOW",
    show_envvar=True,
    help="Glob of task plugins this agent may run, repeatable. Plugins that run commands "
    "(shell.run) must be named exactly: '*' does not allow them.",
)
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=_default_work_dir,
    show_default="$STATE_DIRECTORY, else ~/.local/state/workflow-agent",
    envvar="WORKFLOW_AGENT_WORK_DIR",
    show_envvar=True,
    help="Where steps get their scratch directories.",
)
@click.option(
    "--grace",
    "grace_s",
    default=30.0,
    envvar="WORKFLOW_AGENT_GRACE",
    show_envvar=True,
    help="Seconds running steps get to finish on SIGTERM.",
)
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="WORKFLOW_AGENT_TLS_CERT",
    show_envvar=True,
    help="Connect over TLS presenting this agent certificate (PEM), whose name is --name.",
)
@click.option(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="WORKFLOW_AGENT_TLS_KEY",
    show_envvar=True,
    help="The private key of --tls-cert (PEM).",
)
@click.option(
    "--tls-ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="WORKFLOW_AGENT_TLS_CA",
    show_envvar=True,
    help="CA that signed the coordinator's certificate (PEM); the system's roots by default.",
)
@click.option(
    "--log-level",
    default="info",
    envvar="WORKFLOW_AGENT_LOG_LEVEL",
    show_envvar=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@click.option(
    "--metrics-listen",
    default="",
    envvar="WORKFLOW_AGENT_METRICS_LISTEN",
    show_envvar=True,
    show_default="off",
    help="HOST:PORT to serve Prometheus metrics on, at /metrics.",
)
@click.version_option(__version__)
def main(
    coordinator: str,
    name: str,
    labels: dict[str, str],
    allow: tuple[str, ...],
    work_dir: Path,
    grace_s: float,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_ca: Path | None,
    log_level: str,
    metrics_listen: str,
) -> None:
    """Run workflow steps on this host for a workflowd coordinator."""
    logs.configure(log_level)
    credentials = None
    if tls_cert or tls_key or tls_ca:
        if not (tls_cert and tls_key):
            raise click.UsageError(
                "TLS needs --tls-cert and --tls-key: agents present certificates"
            )
        try:
            credentials = channel_credentials(tls_ca, tls_cert, tls_key)
        except WorkflowError as exc:
            raise click.ClickException(str(exc)) from None
    plugins = load_plugins(allow)
    log.info(
        "agent_starting",
        agent=name,
        coordinator=coordinator,
        labels=labels,
        plugins=sorted(plugins),
        tls=credentials is not None,
    )
    metrics = operations.agent_metrics(metrics_listen)
    try:
        agent = Agent(
            coordinator,
            name,
            labels,
            plugins,
            work_dir,
            grace_s,
            metrics=metrics,
            credentials=credentials,
        )
    except WorkflowError as exc:
        raise click.ClickException(str(exc)) from None
    agent.installed = installed_plugins()
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(_serve(agent, metrics_listen))


if __name__ == "__main__":
    main()
