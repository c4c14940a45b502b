"""`workflowctl`: submit, follow and inspect workflow runs."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any, NoReturn

import click
import grpc
from click.shell_completion import CompletionItem
from rich.console import Console
from rich.table import Table

from workflowd import DEFAULT_ADDRESS, events
from workflowd.credentials import bearer_metadata, channel_credentials
from workflowd.errors import WorkflowError
from workflowd.grpc_options import CHANNEL_OPTIONS
from workflowd.render import LivePrinter, PlainPrinter, attempts, summarize_outputs
from workflowd.rpc import workflow_pb2 as pb
from workflowd.rpc import workflow_pb2_grpc as rpc

# exit codes
OK, RUN_FAILED, USAGE, NOT_FOUND, UNREACHABLE, DENIED = 0, 1, 2, 3, 4, 5
# stopped by a signal while following a run: 128 + the signal's number, as shells report it
INTERRUPTED, TERMINATED, BROKEN_PIPE = 128 + signal.SIGINT, 128 + signal.SIGTERM, 141


class Terminated(KeyboardInterrupt):
    """SIGTERM while following a run: raised like Ctrl-C, so that one path cleans up."""


def _terminate(_signum: int, _frame: object) -> None:
    raise Terminated


class Client:
    """The control API of one workflowd; the channel opens on first use."""

    def __init__(
        self,
        address: str,
        tls_ca: Path | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        token: str = "",
    ) -> None:
        self.address = address
        self.tls_ca, self.tls_cert, self.tls_key = tls_ca, tls_cert, tls_key
        self.metadata = bearer_metadata(token)

    @property
    def tls(self) -> bool:
        return any((self.tls_ca, self.tls_cert, self.tls_key))

    @cached_property
    def channel(self) -> grpc.Channel:
        if not self.tls:
            return grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        try:
            credentials = channel_credentials(self.tls_ca, self.tls_cert, self.tls_key)
        except WorkflowError as exc:
            raise click.ClickException(str(exc)) from None
        return grpc.secure_channel(self.address, credentials, options=CHANNEL_OPTIONS)

    @cached_property
    def control(self) -> rpc.ControlServiceStub:
        return rpc.ControlServiceStub(self.channel)

    def call(self, method: str, request: Any, timeout_s: float = 30.0) -> Any:
        try:
            return getattr(self.control, method)(
                request, timeout=timeout_s, metadata=self.metadata
            )
        except grpc.RpcError as exc:
            self.fail(exc)

    def fail(self, exc: grpc.RpcError) -> NoReturn:
        code = exc.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            hint = (
                "is it running, does it serve TLS, and does it accept your certificate "
                "(--tls-cert, --tls-key, --tls-ca)?"
                if self.tls
                else "is it running? (set --coordinator or WORKFLOW_COORDINATOR; "
                "if it serves TLS, give --tls-ca, --tls-cert and --tls-key)"
            )
            click.echo(f"error: cannot reach workflowd at {self.address}: {hint}", err=True)
            sys.exit(UNREACHABLE)
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            click.echo(f"error: workflowd refused the call: {exc.details()}", err=True)
            sys.exit(DENIED)
        if code == grpc.StatusCode.NOT_FOUND:
            click.echo(f"error: {exc.details()}", err=True)
            sys.exit(NOT_FOUND)
        if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
            click.echo(exc.details(), err=True)
            sys.exit(RUN_FAILED)
        click.echo(f"error: {code.name}: {exc.details()}", err=True)
        sys.exit(UNREACHABLE)


def _inputs(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str]:
    inputs = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE")
        inputs[key] = text
    return inputs


def _source(path: Path) -> pb.DefinitionSource:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.FileError(str(path), hint=str(exc)) from None
    return pb.DefinitionSource(yaml=text, filename=str(path))


def _event_dict(event: pb.Event) -> dict[str, Any]:
    return {
        "run_id": event.run_id,
        "seq": event.seq,
        "time_ms": event.time_ms,
        "type": event.type,
        "step_id": event.step_id,
        "attempt": event.attempt,
        "agent": event.agent,
        "data": json.loads(event.data_json or "{}"),
    }


def _stream(client: Client, run_id: str, follow: bool) -> Iterator[dict[str, Any]]:
    try:
        request = pb.TailRequest(run_id=run_id, follow=follow)
        for event in client.control.Tail(request, metadata=client.metadata):
            yield _event_dict(event)
    except grpc.RpcError as exc:
        client.fail(exc)


def _complete_run(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[Any]:
    """Shell completion of a RUN_ID: the coordinator's recent runs, nothing when it is away."""
    address = ctx.find_root().params.get("coordinator") or DEFAULT_ADDRESS
    try:
        with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
            runs = (
                rpc.ControlServiceStub(channel)
                .ListRuns(pb.ListRunsRequest(limit=100), timeout=2.0)
                .runs
            )
    except grpc.RpcError:
        return []
    return [
        CompletionItem(run.run_id, help=f"{run.name} ({run.status})")
        for run in runs
        if run.run_id.startswith(incomplete)
    ]


# TODO: follow a run across a workflowd restart (reconnect and go on from the last seq).
def follow_run(client: Client, run_id: str, as_json: bool, follow: bool = True) -> int:
    """Print a run's history, then its live events; the exit code says how it ended."""
    console = Console(highlight=False, soft_wrap=True)
    printer = (
        None
        if as_json
        else (LivePrinter(console) if console.is_terminal else PlainPrinter(console))
    )
    final = ""
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        for event in _stream(client, run_id, follow=follow):
            if event["type"] in events.RUN_TERMINAL_EVENTS:
                final = event["type"]
            if printer is None:
                click.echo(json.dumps(event))
            else:
                printer.handle(event)
    except KeyboardInterrupt as exc:
        # the run goes on; only watching it stops
        if printer is not None:
            printer.close()
            printer = None
        return TERMINATED if isinstance(exc, Terminated) else INTERRUPTED
    except BrokenPipeError:
        # the reader went away (`| head`): say nothing more, and let the exit not flush
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        printer = None
        return BROKEN_PIPE
    finally:
        signal.signal(signal.SIGTERM, previous)
        if printer is not None:
            printer.close()
    return OK if final == events.RUN_SUCCEEDED else RUN_FAILED


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--coordinator",
    default=DEFAULT_ADDRESS,
    envvar="WORKFLOW_COORDINATOR",
    show_envvar=True,
    show_default=True,
    help="HOST:PORT of workflowd.",
)
@click.option(
    "--tls-ca",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="WORKFLOW_TLS_CA",
    show_envvar=True,
    help="Connect over TLS, trusting this CA for the coordinator's certificate (PEM).",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="WORKFLOW_TLS_CERT",
    show_envvar=True,
    help="Operator certificate to present (PEM).",
)
@click.option(
    "--tls-key",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="WORKFLOW_TLS_KEY",
    show_envvar=True,
    help="The private key of --tls-cert (PEM).",
)
@click.option(
    "--token",
    default="",
    envvar="WORKFLOW_TOKEN",
    show_envvar=True,
    help="Bearer token for the control API. Prefer --token-file: arguments are visible to "
    "other users of this host.",
)
@click.option(
    "--token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="WORKFLOW_TOKEN_FILE",
    show_envvar=True,
    help="File whose first line is the bearer token.",
)
@click.pass_context
def main(
    ctx: click.Context,
    coordinator: str,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    token: str,
    token_file: Path | None,
) -> None:
    """Submit, follow and inspect workflow runs.

    Exit codes: 0 success, 1 run failed or definition refused, 2 usage,
    3 unknown run, 4 workflowd unreachable, 5 refused (credentials).
    """
    if token_file is not None and not token:
        lines = token_file.read_text(encoding="utf-8", errors="replace").splitlines()
        token = lines[0].strip() if lines else ""
    ctx.obj = Client(coordinator, tls_ca, tls_cert, tls_key, token)


@main.command()
@click.argument("flow", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--input", "-i", "inputs", multiple=True, callback=_inputs, help="KEY=VALUE, repeatable."
)
@click.option(
    "--key", default="", help="Idempotency key: a second submit with it returns the same run."
)
@click.option(
    "--follow", "-f", is_flag=True, help="Tail the run until it ends; exit with its outcome."
)
@click.option("--json", "as_json", is_flag=True, help="JSON lines when following.")
@click.pass_obj
def submit(
    client: Client, flow: Path, inputs: dict[str, str], key: str, follow: bool, as_json: bool
) -> None:
    """Check FLOW and start a run of it; print the run id."""
    response = client.call(
        "Submit", pb.SubmitRequest(source=_source(flow), inputs=inputs, idempotency_key=key)
    )
    click.echo(response.run_id)
    if response.existing:
        click.echo(f"(an earlier run holds key {key!r}; that run is returned)", err=True)
    if follow:
        sys.exit(follow_run(client, response.run_id, as_json))


@main.command()
@click.argument("flow", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--input", "-i", "inputs", multiple=True, callback=_inputs, help="KEY=VALUE, repeatable."
)
@click.pass_obj
def validate(client: Client, flow: Path, inputs: dict[str, str]) -> None:
    """Check FLOW as submit would, without starting anything."""
    response = client.call("Validate", pb.ValidateRequest(source=_source(flow), inputs=inputs))
    if response.issues:
        for issue in response.issues:
            place = (
                f"{issue.filename}:{issue.line}:{issue.column}" if issue.line else issue.filename
            )
            field = f" {issue.field}:" if issue.field else ""
            click.echo(f"{place}:{field} {issue.message}", err=True)
        sys.exit(RUN_FAILED)
    click.echo(f"{flow}: valid workflow {response.name!r} with {len(response.step_ids)} steps")


@main.command()
@click.argument("run_id", shell_complete=_complete_run)
@click.option("--reason", default="", help="Recorded in the run's history.")
@click.pass_obj
def cancel(client: Client, run_id: str, reason: str) -> None:
    """Stop a run: running steps are told to stop (and roll back), nothing new starts."""
    response = client.call("Cancel", pb.CancelRequest(run_id=run_id, reason=reason))
    click.echo(f"{run_id}: {response.status}")


@main.command()
@click.argument("run_id", shell_complete=_complete_run)
@click.option("--from", "from_step", default="", help="Re-run this step and every step after it.")
@click.option(
    "--follow", "-f", is_flag=True, help="Tail the run until it ends; exit with its outcome."
)
@click.option("--json", "as_json", is_flag=True, help="JSON lines when following.")
@click.pass_obj
def resume(client: Client, run_id: str, from_step: str, follow: bool, as_json: bool) -> None:
    """Continue a failed or cancelled run from its first unfinished step.

    Finished steps keep their outputs and are not run again, unless --from
    names one: then it and every step that depends on it run again.
    """
    response = client.call("Resume", pb.ResumeRequest(run_id=run_id, from_step=from_step))
    click.echo(f"{run_id}: resumed; running again: {', '.join(response.rerun_steps)}", err=True)
    if follow:
        sys.exit(follow_run(client, run_id, as_json))


def _json_or_text(text: str) -> str:
    """A value given on the command line, as JSON: numbers, booleans, objects stay
    what they are; anything that is not JSON is a string."""
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return json.dumps(text)
    return text


@main.group()
def config() -> None:
    """Change a running run's configuration."""


@config.command(name="set")
@click.argument("run_id", shell_complete=_complete_run)
@click.argument("assignment", metavar="KEY=VALUE")
@click.pass_obj
def config_set(client: Client, run_id: str, assignment: str) -> None:
    """Set KEY to VALUE (JSON, or else text) and push it to the run's running steps."""
    key, sep, value = assignment.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"{assignment!r} is not KEY=VALUE", param_hint="KEY=VALUE")
    request = pb.UpdateConfigRequest(run_id=run_id, key=key, value_json=_json_or_text(value))
    response = client.call("UpdateConfig", request)
    click.echo(response.config_json)


@main.command(name="signal")
@click.argument("run_id", shell_complete=_complete_run)
@click.argument("name")
@click.argument("payload", required=False, default="")
@click.pass_obj
def send_signal(client: Client, run_id: str, name: str, payload: str) -> None:
    """Send signal NAME to a run; a wait step for it goes on, with PAYLOAD as its output."""
    request = pb.SignalRequest(
        run_id=run_id, name=name, payload_json=_json_or_text(payload) if payload else ""
    )
    response = client.call("Signal", request)
    waiting = ", ".join(response.waiting_steps) or "no step yet; kept for the first that waits"
    click.echo(f"{run_id}: signal {name} delivered to {waiting}")


@main.command()
@click.argument("run_id", shell_complete=_complete_run)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event.")
@click.option(
    "--follow/--no-follow",
    default=True,
    show_default=True,
    help="Keep following a running run until it ends.",
)
@click.pass_obj
def tail(client: Client, run_id: str, as_json: bool, follow: bool) -> None:
    """Show a run's history from the start, then follow it live until it ends.

    Exits 0 when the run succeeded, 1 when it failed, was cancelled, or (with
    --no-follow) has not ended yet.
    """
    sys.exit(follow_run(client, run_id, as_json, follow))


def _console() -> Console:
    """Tables on a terminal fit it; piped, they keep long lines whole."""
    console = Console(highlight=False)
    return console if console.is_terminal else Console(highlight=False, width=200)


def _clock(ms: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000)) if ms else ""


def _took(start_ms: int, end_ms: int) -> str:
    return f"{(end_ms - start_ms) / 1000:.1f}s" if start_ms and end_ms else ""


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else ""


@main.command()
@click.argument("run_id", shell_complete=_complete_run)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def status(client: Client, run_id: str, as_json: bool) -> None:
    """Show a run, each of its steps, and each attempt of a step that was tried again."""
    run = client.call("GetRun", pb.GetRunRequest(run_id=run_id))
    tries = attempts(_stream(client, run_id, follow=False))
    if as_json:
        steps = [
            {
                "step_id": s.step_id,
                "task": s.task,
                "target": s.target,
                "status": s.status,
                "attempt": s.attempt,
                "agent": s.agent,
                "waiting_reason": s.waiting_reason,
                "error": s.error,
                "outputs": json.loads(s.outputs_json) if s.outputs_json else None,
                "started_ms": s.started_ms,
                "finished_ms": s.finished_ms,
                "attempts": [a.as_dict() for a in tries.get(s.step_id, [])],
            }
            for s in run.steps
        ]
        click.echo(
            json.dumps(
                {
                    "run_id": run.summary.run_id,
                    "name": run.summary.name,
                    "status": run.summary.status,
                    "created_ms": run.summary.created_ms,
                    "updated_ms": run.summary.updated_ms,
                    "inputs": json.loads(run.inputs_json),
                    "error": run.error,
                    "steps": steps,
                }
            )
        )
        return
    console = _console()
    console.print(f"run {run.summary.run_id}  {run.summary.name}  [bold]{run.summary.status}[/]")
    console.print(
        f"created {_when(run.summary.created_ms)}, updated {_when(run.summary.updated_ms)}"
    )
    table = Table(box=None, pad_edge=False)
    for column in ("step", "task", "where", "status", "attempt", "started", "took"):
        table.add_column(column, no_wrap=True)
    table.add_column("detail", no_wrap=True, overflow="ellipsis", max_width=80)
    for step in run.steps:
        detail = (step.waiting_reason or step.error).splitlines()[:1]
        if not detail and step.outputs_json:
            detail = [summarize_outputs(json.loads(step.outputs_json))]
        table.add_row(
            step.step_id,
            step.task,
            step.agent or step.target,
            step.status,
            str(step.attempt or ""),
            _clock(step.started_ms),
            _took(step.started_ms, step.finished_ms),
            "".join(detail),
        )
        history = tries.get(step.step_id, [])
        if len(history) < 2:
            continue
        # a step tried more than once: one line per attempt, oldest first
        for attempt in history:
            error = f"{attempt.error}: " if attempt.error else ""
            table.add_row(
                f"  #{attempt.attempt}",
                "",
                attempt.host,
                attempt.outcome,
                "",
                _clock(attempt.dispatched_ms),
                _took(attempt.dispatched_ms, attempt.finished_ms),
                error + "".join(attempt.message.splitlines()[:1]),
                style="dim",
            )
    console.print(table)
    if run.error:
        console.print(f"[red]error:[/] {run.error}", markup=True)


@main.command(name="list")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option(
    "--before", default="", metavar="RUN_ID", help="Page back: runs created before this one."
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def list_runs(client: Client, limit: int, before: str, as_json: bool) -> None:
    """Recent runs, newest first."""
    runs = client.call("ListRuns", pb.ListRunsRequest(limit=limit, before_run_id=before)).runs
    if as_json:
        for run in runs:
            click.echo(
                json.dumps(
                    {
                        "run_id": run.run_id,
                        "name": run.name,
                        "status": run.status,
                        "created_ms": run.created_ms,
                        "updated_ms": run.updated_ms,
                    }
                )
            )
        return
    table = Table(box=None, pad_edge=False)
    for column in ("run", "workflow", "status", "created", "updated"):
        table.add_column(column)
    for run in runs:
        table.add_row(
            run.run_id, run.name, run.status, _when(run.created_ms), _when(run.updated_ms)
        )
    _console().print(table)


class Duration(click.ParamType):
    """A length of time: a number with a unit, s m h d or w (seconds when none)."""

    name = "duration"
    UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float):
            return float(value)
        text = str(value).strip().lower()
        number = text.rstrip("smhdw")
        try:
            seconds = float(number) * self.UNITS[text[len(number) :]]
        except (ValueError, KeyError):
            self.fail(f"{value!r} is not a duration such as 90s, 12h, 30d or 2w", param, ctx)
        if not seconds > 0:
            self.fail(f"{value!r} is not a positive duration", param, ctx)
        return seconds


@main.command()
@click.option(
    "--older-than",
    "older_than_s",
    type=Duration(),
    required=True,
    help="Age of the runs to remove, e.g. 30d: finished and not updated for that long.",
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def prune(client: Client, older_than_s: float, as_json: bool) -> None:
    """Remove finished runs older than a given age, with their history."""
    response = client.call(
        "PruneRuns", pb.PruneRunsRequest(older_than_s=older_than_s), timeout_s=3600
    )
    if as_json:
        click.echo(json.dumps({"removed": response.removed}))
        return
    click.echo(f"removed {response.removed} finished runs")


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def agents(client: Client, as_json: bool) -> None:
    """Agents known to the coordinator, connected or not."""
    found = client.call("ListAgents", pb.ListAgentsRequest()).agents
    if as_json:
        for agent in found:
            click.echo(
                json.dumps(
                    {
                        "name": agent.name,
                        "labels": dict(agent.labels),
                        "plugins": list(agent.plugins),
                        "connected": agent.connected,
                        "last_seen_ms": agent.last_seen_ms,
                        "version": agent.version,
                        "running": agent.running,
                    }
                )
            )
        return
    table = Table(box=None, pad_edge=False)
    for column in ("agent", "state", "labels", "running", "last seen", "plugins"):
        table.add_column(column)
    for agent in found:
        labels = ",".join(f"{k}={v}" for k, v in sorted(agent.labels.items()))
        table.add_row(
            agent.name,
            "connected" if agent.connected else "gone",
            labels,
            str(agent.running),
            _when(agent.last_seen_ms),
            " ".join(agent.plugins),
        )
    _console().print(table)


@main.group(name="certs")
def certs_group() -> None:
    """Create a small CA and the certificates of a coordinator, its agents and operators.

    \b
    workflowctl certs init DIR
    workflowctl certs issue DIR coordinator coord.example.org --dns coord.example.org
    workflowctl certs issue DIR agent host-a
    workflowctl certs issue DIR operator alice
    """


# the certs commands load cryptography when they run, not when workflowctl starts
CA_DAYS, LEAF_DAYS, ROLES = 3650, 397, ("coordinator", "agent", "operator")


@certs_group.command(name="init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", default="workflow CA", show_default=True, help="The CA's common name.")
@click.option("--days", default=CA_DAYS, show_default=True, type=click.IntRange(1))
@click.option("--force", is_flag=True, help="Replace an existing CA.")
def certs_init(directory: Path, name: str, days: int, force: bool) -> None:
    """Create a CA in DIRECTORY: ca.pem (give it to every host) and ca.key (keep it safe)."""
    from workflowd import certs

    try:
        cert, key = certs.create_ca(directory, name, days, force)
    except WorkflowError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{cert}\n{key}")


@certs_group.command(name="issue")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("role", type=click.Choice(ROLES))
@click.argument("name")
@click.option("--dns", multiple=True, help="DNS name clients dial (coordinator), repeatable.")
@click.option("--ip", multiple=True, help="IP address clients dial (coordinator), repeatable.")
@click.option("--days", default=LEAF_DAYS, show_default=True, type=click.IntRange(1))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write OUT.pem and OUT.key; DIRECTORY/ROLE-NAME by default.",
)
@click.option("--force", is_flag=True, help="Replace existing files.")
def certs_issue(
    directory: Path,
    role: str,
    name: str,
    dns: tuple[str, ...],
    ip: tuple[str, ...],
    days: int,
    out: Path | None,
    force: bool,
) -> None:
    """Issue a ROLE certificate for NAME, signed by the CA in DIRECTORY.

    An agent's NAME is its --name; a coordinator's certificate names the
    addresses clients dial (localhost, 127.0.0.1 and ::1 by default).
    """
    from workflowd import certs

    prefix = out or directory / f"{role}-{name.replace('/', '_')}"
    try:
        cert, key = certs.issue(directory, role, name, prefix, dns, ip, days, force)
    except WorkflowError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{cert}\n{key}")


if __name__ == "__main__":
    main()
