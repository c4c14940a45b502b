"""The gRPC services of workflowd: the agent stream and the control API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from workflowd import __version__, engine
from workflowd.coordinator import Coordinator
from workflowd.dispatch import AgentSession
from workflowd.engine import Event, ResumeError, RunState
from workflowd.errors import DefinitionError, Issue, UnknownRunError
from workflowd.grpc_options import SERVER_OPTIONS
from workflowd.rpc import workflow_pb2 as pb
from workflowd.rpc import workflow_pb2_grpc as rpc
from workflowd.store.base import now_ms

log = structlog.get_logger()

HELLO_TIMEOUT_S = 10.0
HEARTBEAT_INTERVAL_S = 5.0
TAIL_BATCH = 500


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
    """Translate an agent's step report into a history event."""
    kind = message.WhichOneof("kind")
    base = (ref.step_id, ref.attempt, agent)
    if kind == "started":
        return Event(engine.STEP_STARTED, *base)
    if kind == "progress":
        data = {"fraction": message.progress.fraction, "message": message.progress.message}
        return Event(engine.STEP_PROGRESS, *base, data)
    if kind == "log":
        return Event(
            engine.STEP_LOG, *base, {"level": message.log.level, "message": message.log.message}
        )
    if kind == "completed":
        outputs = json.loads(message.completed.outputs_json or "{}")
        if not isinstance(outputs, dict):
            raise ValueError("outputs_json is not a JSON object")
        return Event(
            engine.STEP_SUCCEEDED, *base, {"outputs": outputs, "path": message.completed.path}
        )
    if kind == "failed":
        failed = message.failed
        data: dict[str, object] = {
            "error": failed.error,
            "message": failed.message,
            "retryable": failed.retryable,
            "rolled_back": failed.rolled_back,
        }
        if failed.details_json:
            data["details"] = json.loads(failed.details_json)
        return Event(engine.STEP_FAILED, *base, data)
    if kind == "message":
        data = {
            "topic": message.message.topic,
            "payload": json.loads(message.message.payload_json),
        }
        return Event(engine.STEP_MESSAGE, *base, data)
    if kind == "output":
        data = {"name": message.output.name, "value": json.loads(message.output.value_json)}
        return Event(engine.STEP_OUTPUT, *base, data)
    if kind == "interrupted":
        return Event(engine.STEP_INTERRUPTED, *base, {"reason": message.interrupted.reason})
    raise ValueError(f"step event without a kind: {kind!r}")


class AgentService(rpc.AgentServiceServicer):
    def __init__(self, coordinator: Coordinator, heartbeat_interval_s: float) -> None:
        self.coordinator = coordinator
        self.heartbeat_interval_s = heartbeat_interval_s

    async def Connect(self, request_iterator: object, context: grpc.aio.ServicerContext) -> None:
        try:
            first = await asyncio.wait_for(context.read(), HELLO_TIMEOUT_S)
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no hello within 10s")
        if first is grpc.aio.EOF or first.WhichOneof("kind") != "hello" or not first.hello.name:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the first message must be a hello with a name"
            )
        hello = first.hello
        session = AgentSession(
            name=hello.name,
            labels=dict(hello.labels),
            plugins=frozenset(info.name for info in hello.plugins),
            version=hello.version,
        )
        bound = log.bind(agent=session.name)
        await self.coordinator.agent_connected(session, hello)
        await context.write(
            pb.CoordinatorMessage(
                welcome=pb.Welcome(
                    coordinator_version=__version__, heartbeat_interval_s=self.heartbeat_interval_s
                )
            )
        )
        # one task reads, one writes; the stream ends when either does
        reader = asyncio.create_task(self._read(session, context))
        writer = asyncio.create_task(self._write(session, context))
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    bound.error("agent_stream_failed", exc_info=task.exception())
        finally:
            for task in (reader, writer):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(reader, writer, return_exceptions=True)
            await self.coordinator.agent_disconnected(session)

    async def _read(self, session: AgentSession, context: grpc.aio.ServicerContext) -> None:
        while (message := await context.read()) is not grpc.aio.EOF:
            session.last_seen = time.monotonic()
            if message.WhichOneof("kind") == "heartbeat":
                self._heartbeat(session, message.heartbeat)
                continue
            # A report being stored is seen through to the end even when the
            # stream ends meanwhile: the store and the run's state must agree.
            await asyncio.shield(self._handle(session, message))

    async def _write(self, session: AgentSession, context: grpc.aio.ServicerContext) -> None:
        while (message := await session.outbox.get()) is not None:
            await context.write(message)

    def _heartbeat(self, session: AgentSession, heartbeat: pb.Heartbeat) -> None:
        if heartbeat.draining and not session.draining:
            log.info("agent_draining", agent=session.name)
            session.draining = True

    async def _handle(self, session: AgentSession, message: pb.AgentMessage) -> None:
        kind = message.WhichOneof("kind")
        if kind != "step":
            log.warning("agent_message_unexpected", agent=session.name, kind=kind)
            return
        ref = message.step.ref
        if message.step.WhichOneof("kind") == "receive":
            receive = message.step.receive
            await self.coordinator.receive(
                session.name,
                ref.run_id,
                ref.step_id,
                ref.attempt,
                receive.topic,
                receive.after_index,
            )
            return
        try:
            event = step_event(ref, session.name, message.step)
        except ValueError as exc:  # json.JSONDecodeError is a ValueError too
            log.warning("agent_message_malformed", agent=session.name, error=str(exc))
            return
        verdict = await self.coordinator.report(session.name, ref.run_id, event)
        # TODO: a step costs four messages (start and ack out, started and result
        # in), and each costs more than the rest of the step's work: an ack riding
        # on the next StartStep to the same agent needs a change to the protocol.
        final = (engine.STEP_SUCCEEDED, engine.STEP_FAILED, engine.STEP_INTERRUPTED)
        if event.type in final and verdict != engine.FOREIGN:
            session.send(pb.CoordinatorMessage(ack=pb.ResultAck(ref=ref)))


def _summary(state: RunState, created_ms: int, updated_ms: int) -> pb.RunSummary:
    return pb.RunSummary(
        run_id=state.run_id,
        name=state.workflow.name,
        status=state.status,
        created_ms=created_ms,
        updated_ms=updated_ms,
    )


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
            run_id, existing = await self.coordinator.submit(
                request.source.yaml,
                request.source.filename or "<definition>",
                dict(request.inputs),
                request.idempotency_key,
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
        try:
            status = await self.coordinator.cancel(request.run_id, request.reason)
        except UnknownRunError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        return pb.CancelResponse(status=status)

    async def Resume(
        self, request: pb.ResumeRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResumeResponse:
        try:
            rerun = await self.coordinator.resume(request.run_id, request.from_step)
        except UnknownRunError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except ResumeError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return pb.ResumeResponse(run_id=request.run_id, rerun_steps=rerun)

    async def UpdateConfig(
        self, request: pb.UpdateConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateConfigResponse:
        try:
            value = json.loads(request.value_json) if request.value_json else None
            config = await self.coordinator.update_config(request.run_id, request.key, value)
        except UnknownRunError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except json.JSONDecodeError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"value is not JSON: {exc}")
        except ResumeError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return pb.UpdateConfigResponse(config_json=json.dumps(config))

    async def Signal(
        self, request: pb.SignalRequest, context: grpc.aio.ServicerContext
    ) -> pb.SignalResponse:
        try:
            payload = json.loads(request.payload_json) if request.payload_json else None
            waiting = await self.coordinator.signal(request.run_id, request.name, payload)
        except UnknownRunError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except json.JSONDecodeError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"payload is not JSON: {exc}")
        except ResumeError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
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
    coordinator: Coordinator, heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    agent_service = AgentService(coordinator, heartbeat_interval_s)
    rpc.add_AgentServiceServicer_to_server(agent_service, server)
    rpc.add_ControlServiceServicer_to_server(ControlService(coordinator), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (
        pb.DESCRIPTOR.services_by_name["AgentService"].full_name,
        pb.DESCRIPTOR.services_by_name["ControlService"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server)
    return server, health_servicer
