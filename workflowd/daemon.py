"""`workflowd`: the coordinator daemon."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import signal
import socket
from dataclasses import dataclass
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
from workflowd.grpc_options import MAX_MESSAGE_BYTES, MIN_MESSAGE_BYTES
from workflowd.security import AccessPolicy, Tokens, server_credentials
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


@dataclass(frozen=True)
class Security:
    """How workflowd lets peers in: TLS files, control tokens, plaintext beyond loopback."""

    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    control_token_file: Path | None = None
    insecure: bool = False

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


def is_loopback(listen: str) -> bool:
    """Whether a listen address reaches this host only."""
    if listen.startswith("unix:"):
        return True
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if not host:
        return False  # ":7471" is every interface
    try:
        found = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(found) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in found)


def check_security(listen: str, security: Security) -> None:
    """Refuse settings that would let in more than they say; warn about plaintext."""
    given = [security.tls_cert, security.tls_key, security.tls_client_ca]
    if any(given) and not all(given):
        raise click.UsageError(
            "TLS needs all of --tls-cert, --tls-key and --tls-client-ca (agents must present "
            "certificates from the client CA)"
        )
    if security.tls or is_loopback(listen):
        return
    if not security.insecure:
        raise click.UsageError(
            f"refusing to listen on {listen} without TLS: give --tls-cert, --tls-key and "
            "--tls-client-ca, or --insecure to serve plaintext beyond this host anyway"
        )
    log.warning(
        "listening_insecure",
        listen=listen,
        reason="without TLS anyone who can reach this address can connect as an agent",
    )


async def serve(
    listen: str,
    store_uri: str,
    security: Security | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    heartbeat_timeout_s: float = 15.0,
    agent_wait_s: float = 3600.0,
    store_wait_s: float = 0.0,
    metrics_listen: str = "",
) -> None:
    security = security or Security()
    try:
        tokens = (
            Tokens.from_file(security.control_token_file) if security.control_token_file else None
        )
        credentials = (
            server_credentials(security.tls_cert, security.tls_key, security.tls_client_ca)
            if security.tls_cert and security.tls_key and security.tls_client_ca
            else None
        )
    except WorkflowError as exc:
        raise click.ClickException(str(exc)) from None
    policy = AccessPolicy(tls=credentials is not None, tokens=tokens)
    if policy.control_open:
        log.warning("control_api_open", reason="no TLS and no --control-token-file")

    try:
        store = open_store(store_uri, wait_s=store_wait_s, exclusive=True)
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
    coordinator.max_message_bytes = max_message_bytes
    server, health = build_server(
        coordinator, policy, max_message_bytes, heartbeat_interval_s=heartbeat_timeout_s / 3
    )
    try:
        if credentials is None:
            port = server.add_insecure_port(listen)
        else:
            port = server.add_secure_port(listen, credentials)
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
        tls=policy.tls,
        control_tokens=tokens is not None,
        max_message_bytes=max_message_bytes,
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
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="WORKFLOWD_TLS_CERT",
    show_envvar=True,
    help="Serve TLS with this certificate (PEM); needs --tls-key and --tls-client-ca.",
)
@click.option(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="WORKFLOWD_TLS_KEY",
    show_envvar=True,
    help="The private key of --tls-cert (PEM).",
)
@click.option(
    "--tls-client-ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="WORKFLOWD_TLS_CLIENT_CA",
    show_envvar=True,
    help="CA whose certificates agents and operators must present (PEM).",
)
@click.option(
    "--control-token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="WORKFLOWD_CONTROL_TOKEN_FILE",
    show_envvar=True,
    help="File of bearer tokens (one a line) that workflowctl may present instead of an "
    "operator certificate.",
)
@click.option(
    "--insecure",
    is_flag=True,
    envvar="WORKFLOWD_INSECURE",
    show_envvar=True,
    help="Serve plaintext on an address other than loopback (without TLS, anyone who can reach "
    "it can connect as an agent).",
)
@click.option(
    "--max-message-bytes",
    type=click.IntRange(MIN_MESSAGE_BYTES, 1 << 30),
    default=MAX_MESSAGE_BYTES,
    envvar="WORKFLOWD_MAX_MESSAGE_BYTES",
    show_envvar=True,
    help="Largest message sent or received; a step result beyond it fails its step.",
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
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
    control_token_file: Path | None,
    insecure: bool,
    max_message_bytes: int,
) -> None:
    """Coordinate workflow runs across remote agents."""
    logs.configure(log_level)
    security = Security(tls_cert, tls_key, tls_client_ca, control_token_file, insecure)
    check_security(listen, security)
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(
            serve(
                listen,
                store_uri,
                security,
                max_message_bytes,
                heartbeat_timeout_s,
                agent_wait_s,
                store_wait_s,
                metrics_listen,
            )
        )


if __name__ == "__main__":
    main()
