"""The gRPC services of workflowd: the agent stream and the control API."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import grpc
import jsonschema
import structlog
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from workflowd import __version__, batching, engine, wire
from workflowd.coordinator import Coordinator
from workflowd.dispatch import AgentSession
from workflowd.engine import Event, ResumeError, RunState
from workflowd.errors import DefinitionError, Issue, UnknownRunError
from workflowd.grpc_options import MAX_MESSAGE_BYTES, server_options
from workflowd.rpc import workflow_pb2 as pb
from workflowd.rpc import workflow_pb2_grpc as rpc
from workflowd.security import AccessPolicy, ControlAuthInterceptor
from workflowd.store.base import now_ms

log = structlog.get_logger()
T = TypeVar("T")

# The services a health check may name, besides "" for the whole server.
SERVICE_NAMES = (
    pb.DESCRIPTOR.services_by_name["AgentService"].full_name,
    pb.DESCRIPTOR.services_by_name["ControlService"].full_name,
)

HELLO_TIMEOUT_S = 10.0
HEARTBEAT_INTERVAL_S = 5.0
TAIL_BATCH = 500

# What a hello may hold; anything beyond is refused with the reason.
MAX_NAME_CHARS = 200
MAX_LABELS = 64
MAX_PLUGINS = 256
MAX_ATTEMPT_REFS = 10_000
# Rejected messages logged per stream before only every REJECTS_LOG_EVERY-th is.
REJECTS_LOGGED = 100
REJECTS_LOG_EVERY = 1000


def _issue_pb(issue: Issue) -> pb.DefinitionIssue:
    return pb.DefinitionIssue(
        filename=issue.filename,
        line=issue.line,
        column=issue.column,
        field=issue.field,
        message=issue.message,
    )


def event_pb(run_id: str, event: Event) -> pb.Event:
    return pb.Event(
        run_id=run_id,
        seq=event.seq,
        time_ms=event.time_ms,
        type=event.type,
        step_id=event.step_id,
        attempt=event.attempt,
        agent=event.agent,
        data_json=json.dumps(event.data),
    )


def step_event(ref: pb.AttemptRef, agent: str, message: pb.StepEvent) -> Event:
    """Translate an agent's step report into a history event.

    Raises WireError for a report that cannot be taken as it is; text is made
    valid and clipped, numbers made finite.
    """
    kind = message.WhichOneof("kind")
    base = (ref.step_id, ref.attempt, agent)
    if kind == "started":
        return Event(engine.STEP_STARTED, *base)
    if kind == "progress":
        data = {
            "fraction": wire.fraction(message.progress.fraction),
            "message": wire.clean_text(message.progress.message),
        }
        return Event(engine.STEP_PROGRESS, *base, data)
    if kind == "log":
        data = {
            "level": wire.level(message.log.level),
            "message": wire.clean_text(message.log.message),
        }
        return Event(engine.STEP_LOG, *base, data)
    if kind == "completed":
        outputs = wire.decode_outputs(message.completed.outputs_json)
        path = message.completed.path if message.completed.path in ("check", "run") else "run"
        return Event(engine.STEP_SUCCEEDED, *base, {"outputs": outputs, "path": path})
    if kind == "failed":
        failed = message.failed
        data: dict[str, object] = {
            "error": wire.clean_text(failed.error, 100),
            "message": wire.clean_text(failed.message),
            "retryable": failed.retryable,
            "rolled_back": failed.rolled_back,
        }
        if failed.details_json:
            data["details"] = _json_value(failed.details_json)
        return Event(engine.STEP_FAILED, *base, data)
    if kind == "message":
        data = {
            "topic": wire.clean_text(message.message.topic, 200),
            "payload": _json_value(message.message.payload_json),
        }
        return Event(engine.STEP_MESSAGE, *base, data)
    if kind == "output":
        data = {
            "name": wire.clean_text(message.output.name, 200),
            "value": _json_value(message.output.value_json),
        }
        return Event(engine.STEP_OUTPUT, *base, data)
    if kind == "interrupted":
        reason = wire.clean_text(message.interrupted.reason)
        return Event(engine.STEP_INTERRUPTED, *base, {"reason": reason})
    raise wire.WireError("a step event without a kind")


async def whole(change: Coroutine[Any, Any, T]) -> T:
    """Carry a change to runs through even when its caller stops waiting (a call
    cancelled by its client or deadline): stopped half way, the store would hold
    events that the runs' state in memory lacks. Its outcome still reaches a
    caller that waits."""
    task = asyncio.ensure_future(change)
    task.add_done_callback(_outcome_seen)
    return await asyncio.shield(task)


def _outcome_seen(task: asyncio.Future[Any]) -> None:
    # a caller that left cannot hear of a refusal; the coordinator logs its own faults
    if not task.cancelled():
        task.exception()


def _json_value(text: str) -> object:
    """Any JSON value an agent sent, checked like outputs are (finite, not too deep)."""
    return wire.decode_outputs('{"value": ' + (text or "null") + "}")["value"]


def hello_problem(hello: pb.Hello) -> str | None:
    """What makes a hello unacceptable, or None."""
    name = hello.name
    if not name or len(name) > MAX_NAME_CHARS or not name.isprintable() or name != name.strip():
        return f"an agent name has 1 to {MAX_NAME_CHARS} printable characters"
    if name == engine.COORDINATOR:
        return f"{engine.COORDINATOR!r} is reserved for the coordinator's own steps"
    if len(hello.labels) > MAX_LABELS or any(
        len(k) > MAX_NAME_CHARS or len(v) > MAX_NAME_CHARS for k, v in hello.labels.items()
    ):
        return f"at most {MAX_LABELS} labels, each key and value of {MAX_NAME_CHARS} characters"
    if len(hello.plugins) > MAX_PLUGINS:
        return f"at most {MAX_PLUGINS} plugins"
    if len(hello.running) + len(hello.held) > MAX_ATTEMPT_REFS:
        return f"at most {MAX_ATTEMPT_REFS} running and held attempts"
    for plugin in hello.plugins:
        if not plugin.name or len(plugin.name) > MAX_NAME_CHARS:
            return "a plugin without a proper name"
        text = plugin.params_schema_json or "{}"
        # a fleet's agents advertise the same few schemas: the usual ones are checked once
        problem = _known_schema_problem(text) if len(text) <= 65536 else schema_problem(text)
        if problem is not None:
            return f"plugin {plugin.name}: the parameter schema is not a JSON Schema: {problem}"
    return None


def schema_problem(text: str) -> str | None:
    """What makes an advertised parameter schema unusable, or None."""
    try:
        schema = json.loads(text)
        if not isinstance(schema, dict):
            raise ValueError("not an object")
        jsonschema.Draft202012Validator.check_schema(schema)
    except (ValueError, RecursionError, jsonschema.SchemaError) as exc:
        return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return None


# checking a schema against the meta-schema costs milliseconds
_known_schema_problem = functools.lru_cache(maxsize=256)(schema_problem)


class AgentService(rpc.AgentServiceServicer):
    def __init__(
        self,
        coordinator: Coordinator,
        policy: AccessPolicy | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S,
    ) -> None:
        self.coordinator = coordinator
        self.policy = policy or AccessPolicy()
        self.max_message_bytes = max_message_bytes
        self.heartbeat_interval_s = heartbeat_interval_s

    async def _hello(self, context: grpc.aio.ServicerContext) -> pb.Hello:
        """The stream's hello, once its name, credentials and contents are accepted."""
        try:
            first = await asyncio.wait_for(context.read(), HELLO_TIMEOUT_S)
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no hello within 10s")
        if first is grpc.aio.EOF or first.WhichOneof("kind") != "hello" or not first.hello.name:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the first message must be a hello with a name"
            )
        hello = first.hello
        refusal = self.policy.agent_refusal(context, hello.name)
        if refusal is None and (problem := hello_problem(hello)) is not None:
            refusal = grpc.StatusCode.INVALID_ARGUMENT, problem
        if refusal is not None:
            code, reason = refusal
            log.warning(
                "agent_refused",
                agent=wire.clean_text(hello.name, MAX_NAME_CHARS),
                peer=context.peer(),
                code=code.name,
                reason=reason,
            )
            await context.abort(code, reason)
        return hello

    async def Connect(self, request_iterator: object, context: grpc.aio.ServicerContext) -> None:
        hello = await self._hello(context)
        session = AgentSession(
            name=hello.name,
            labels=dict(hello.labels),
            plugins=frozenset(info.name for info in hello.plugins),
            version=hello.version,
            batched_acks=hello.batched_acks,
            batched_starts=hello.batched_starts,
        )
        bound = log.bind(agent=session.name)
        await whole(self.coordinator.agent_connected(session, hello))
        await context.write(
            pb.CoordinatorMessage(
                welcome=pb.Welcome(
                    coordinator_version=__version__,
                    heartbeat_interval_s=self.heartbeat_interval_s,
                    max_message_bytes=self.max_message_bytes,
                    batched_events=True,
                )
            )
        )
        # one task reads, one writes; the stream ends when either does
        handling: set[asyncio.Task[None]] = set()  # reports being stored
        reader = asyncio.create_task(self._read(session, context, handling))
        writer = asyncio.create_task(self._write(session, context))
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                failure = None if task.cancelled() else task.exception()
                if isinstance(failure, grpc.aio.AbortError):
                    raise failure
                if failure is not None:
                    # one agent's broken stream must not stop the daemon
                    bound.error("agent_stream_failed", exc_info=failure)
        finally:
            session.closed = True  # no step goes to it while its last reports are stored
            for task in (reader, writer):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(reader, writer, return_exceptions=True)
                # the reports being stored are seen through before the agent is let go
                for failure in await asyncio.gather(*handling, return_exceptions=True):
                    if isinstance(failure, Exception):
                        bound.error("agent_report_failed", exc_info=failure)
            await self.coordinator.agent_disconnected(session)

    async def _read(
        self,
        session: AgentSession,
        context: grpc.aio.ServicerContext,
        handling: set[asyncio.Task[None]],
    ) -> None:
        while True:
            try:
                message = await context.read()
            except DecodeError:
                # not a message at all: the stream cannot be trusted to carry more
                self._rejected(session, "agent_message_undecodable")
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, "a message could not be decoded"
                )
            if message is grpc.aio.EOF:
                return
            session.last_seen = time.monotonic()
            if message.WhichOneof("kind") == "heartbeat":
                self._heartbeat(session, message.heartbeat)
                continue
            # A report being stored is seen through to the end even when the
            # stream ends meanwhile: the store and the run's state must agree.
            task = asyncio.create_task(self._handle(session, message))
            handling.add(task)
            task.add_done_callback(handling.discard)
            await asyncio.shield(task)

    async def _write(self, session: AgentSession, context: grpc.aio.ServicerContext) -> None:
        # each message costs 100-300 us of grpc-aio: the starts that wait go together
        budget_bytes = self.max_message_bytes // 2
        while (messages := await session.take_outgoing()) is not None:
            for message in batching.coordinator_messages(
                messages, session.batched_starts, budget_bytes
            ):
                await context.write(message)

    def _rejected(self, session: AgentSession, event: str, **fields: object) -> None:
        """Log a message the coordinator refused, without letting a flood flood the log."""
        session.rejected += 1
        if session.rejected <= REJECTS_LOGGED or session.rejected % REJECTS_LOG_EVERY == 0:
            log.warning(event, agent=session.name, rejected=session.rejected, **fields)

    def _heartbeat(self, session: AgentSession, heartbeat: pb.Heartbeat) -> None:
        if heartbeat.draining and not session.draining:
            log.info("agent_draining", agent=session.name)
            session.draining = True

    async def _handle(self, session: AgentSession, message: pb.AgentMessage) -> None:
        kind = message.WhichOneof("kind")
        if kind == "step":
            await self._report(session, message.step)
        elif kind == "steps" and len(message.steps.events) > batching.MAX_PER_MESSAGE:
            self._rejected(
                session,
                "agent_message_too_many_events",
                events=len(message.steps.events),
                limit=batching.MAX_PER_MESSAGE,
            )
        elif kind == "steps":
            await self._reports(session, list(message.steps.events))
        else:
            self._rejected(session, "agent_message_unexpected", kind=kind)

    async def _reports(self, session: AgentSession, events: list[pb.StepEvent]) -> None:
        """Several reports at once: in order within a run, the runs side by side (so
        that their writes share a commit). Each is seen through, whatever the others do."""
        by_run: dict[str, list[pb.StepEvent]] = {}
        for event in events:
            by_run.setdefault(event.ref.run_id, []).append(event)

        async def in_order(reports: list[pb.StepEvent]) -> None:
            for report in reports:
                await self._report(session, report)

        outcomes = await asyncio.gather(
            *(in_order(reports) for reports in by_run.values()), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _report(self, session: AgentSession, step: pb.StepEvent) -> None:
        ref = step.ref
        where = {
            "run_id": wire.clean_text(ref.run_id, 100),
            "step_id": wire.clean_text(ref.step_id, 100),
            "attempt": ref.attempt,
        }
        if step.WhichOneof("kind") == "receive":
            receive = step.receive
            verdict = await self.coordinator.receive(
                session.name,
                ref.run_id,
                ref.step_id,
                ref.attempt,
                wire.clean_text(receive.topic, 200),
                receive.after_index,
            )
            if verdict == engine.FOREIGN:
                self._rejected(session, "receive_rejected", **where, verdict=verdict)
            elif verdict != engine.ACCEPT:
                log.debug("receive_ignored", agent=session.name, **where, verdict=verdict)
            return
        try:
            event = step_event(ref, session.name, step)
        except wire.WireError as exc:
            self._rejected(session, "agent_message_malformed", **where, error=str(exc))
            return
        verdict = await self.coordinator.report(
            session.name, ref.run_id, event, implies_started=step.implies_started
        )
        if verdict == engine.FOREIGN:
            # about a run or attempt never given to this agent: a forgery or a bug
            self._rejected(session, "report_rejected", **where, verdict=verdict, type=event.type)
        elif verdict != engine.ACCEPT:
            log.debug("report_ignored", agent=session.name, **where, verdict=verdict)
        final = (engine.STEP_SUCCEEDED, engine.STEP_FAILED, engine.STEP_INTERRUPTED)
        if event.type in final and verdict != engine.FOREIGN:
            session.acknowledge(ref)


def _summary(state: RunState, created_ms: int, updated_ms: int) -> pb.RunSummary:
    return pb.RunSummary(
        run_id=state.run_id,
        name=state.workflow.name,
        status=state.status,
        created_ms=created_ms,
        updated_ms=updated_ms,
    )


@contextlib.asynccontextmanager
async def _refusals_as_status(context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    """The product's refusals of a control call, as statuses a client can act on."""
    try:
        yield
    except UnknownRunError as exc:
        await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
    except json.JSONDecodeError as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the value is not JSON: {exc}")
    except ResumeError as exc:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))


class ControlService(rpc.ControlServiceServicer):
    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    async def Validate(
        self, request: pb.ValidateRequest, context: grpc.aio.ServicerContext
    ) -> pb.ValidateResponse:
        try:
            workflow, _ = await self.coordinator.check(
                request.source.yaml,
                request.source.filename or "<definition>",
                dict(request.inputs),
            )
        except DefinitionError as exc:
            return pb.ValidateResponse(issues=[_issue_pb(issue) for issue in exc.issues])
        return pb.ValidateResponse(name=workflow.name, step_ids=[s.id for s in workflow.steps])

    async def Submit(
        self, request: pb.SubmitRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitResponse:
        try:
            run_id, existing = await whole(
                self.coordinator.submit(
                    request.source.yaml,
                    request.source.filename or "<definition>",
                    dict(request.inputs),
                    request.idempotency_key,
                )
            )
        except DefinitionError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return pb.SubmitResponse(run_id=run_id, existing=existing)

    async def GetRun(
        self, request: pb.GetRunRequest, context: grpc.aio.ServicerContext
    ) -> pb.RunDetail:
        record = await self.coordinator.store.get_run(request.run_id)
        if record is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(UnknownRunError(request.run_id)))
        state = await self.coordinator.run_state(request.run_id)
        # TODO: each step's outputs fit a message, but many large ones together may not;
        # clip or page outputs here before a run outgrows what GetRun can send.
        steps = []
        units = [
            (key, step)
            for step in state.workflow.steps
            for key in [step.id, *state.instances(step.id)]
        ]
        for key, step in units:
            current = state.step(key)
            target = f"agent {current.target}" if current.target else step.on.describe()
            steps.append(
                pb.StepDetail(
                    step_id=key,
                    task=step.task or f"wait for signal {step.wait.signal if step.wait else ''}",
                    target=target,
                    status=current.status,
                    attempt=current.attempt,
                    agent=current.agent,
                    waiting_reason=current.waiting_reason,
                    error=current.error,
                    outputs_json=json.dumps(current.outputs)
                    if current.outputs is not None
                    else "",
                    started_ms=current.started_ms,
                    finished_ms=current.finished_ms,
                )
            )
        return pb.RunDetail(
            summary=_summary(state, record.created_ms, record.updated_ms),
            inputs_json=json.dumps(dict(state.inputs)),
            config_json=json.dumps(dict(state.config)),
            steps=steps,
            error=state.error,
        )

    async def ListRuns(
        self, request: pb.ListRunsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRunsResponse:
        limit = min(request.limit or 50, 1000)
        records = await self.coordinator.store.list_runs(limit, request.before_run_id)
        return pb.ListRunsResponse(
            runs=[
                pb.RunSummary(
                    run_id=r.run_id,
                    name=r.name,
                    status=r.status,
                    created_ms=r.created_ms,
                    updated_ms=r.updated_ms,
                )
                for r in records
            ]
        )

    async def Tail(
        self, request: pb.TailRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.Event]:
        store = self.coordinator.store
        if await store.get_run(request.run_id) is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(UnknownRunError(request.run_id)))
        after = request.after_seq
        while True:
            # take the waiter before reading, so that no append slips between the two
            waiter = self.coordinator.notifier.waiter(request.run_id)
            batch = await store.events(request.run_id, after, TAIL_BATCH)
            for event in batch:
                yield event_pb(request.run_id, event)
                after = event.seq
            if len(batch) == TAIL_BATCH:
                continue
            if not request.follow:
                return
            record = await store.get_run(request.run_id)
            if (
                record is not None
                and record.status in engine.RUN_FINISHED
                and record.last_seq <= after
            ):
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.wait(), 5.0)

    async def Cancel(
        self, request: pb.CancelRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelResponse:
        async with _refusals_as_status(context):
            status = await whole(self.coordinator.cancel(request.run_id, request.reason))
        return pb.CancelResponse(status=status)

    async def Resume(
        self, request: pb.ResumeRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResumeResponse:
        async with _refusals_as_status(context):
            rerun = await whole(self.coordinator.resume(request.run_id, request.from_step))
        return pb.ResumeResponse(run_id=request.run_id, rerun_steps=rerun)

    async def UpdateConfig(
        self, request: pb.UpdateConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateConfigResponse:
        async with _refusals_as_status(context):
            value = json.loads(request.value_json) if request.value_json else None
            config = await whole(
                self.coordinator.update_config(request.run_id, request.key, value)
            )
        return pb.UpdateConfigResponse(config_json=json.dumps(config))

    async def Signal(
        self, request: pb.SignalRequest, context: grpc.aio.ServicerContext
    ) -> pb.SignalResponse:
        async with _refusals_as_status(context):
            payload = json.loads(request.payload_json) if request.payload_json else None
            waiting = await whole(self.coordinator.signal(request.run_id, request.name, payload))
        return pb.SignalResponse(waiting_steps=waiting)

    async def ListAgents(
        self, request: pb.ListAgentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAgentsResponse:
        live = {s.name: s for s in self.coordinator.agents.sessions()}
        agents = []
        for record in await self.coordinator.store.agents():
            session = live.get(record.name)
            agents.append(
                pb.AgentInfo(
                    name=record.name,
                    labels=dict(record.labels),
                    plugins=sorted(record.plugins),
                    connected=session is not None,
                    last_seen_ms=record.last_seen_ms,
                    version=record.version,
                    running=len(session.running) if session else 0,
                )
            )
        return pb.ListAgentsResponse(agents=agents)

    async def PruneRuns(
        self, request: pb.PruneRunsRequest, context: grpc.aio.ServicerContext
    ) -> pb.PruneRunsResponse:
        if not request.older_than_s > 0:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "older_than_s must be a positive number"
            )
        before_ms = now_ms() - int(request.older_than_s * 1000)
        removed = await self.coordinator.store.prune(before_ms)
        log.info("runs_pruned", removed=removed, older_than_s=request.older_than_s)
        return pb.PruneRunsResponse(removed=removed)


def build_server(
    coordinator: Coordinator,
    policy: AccessPolicy | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S,
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    policy = policy or AccessPolicy()
    server = grpc.aio.server(
        options=server_options(max_message_bytes),
        interceptors=[ControlAuthInterceptor(policy)],
    )
    rpc.add_AgentServiceServicer_to_server(
        AgentService(coordinator, policy, max_message_bytes, heartbeat_interval_s), server
    )
    rpc.add_ControlServiceServicer_to_server(ControlService(coordinator), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (
        *SERVICE_NAMES,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server)
    return server, health_servicer
