"""The agent's connection life cycle and the steps it runs.

One outbound stream to the coordinator at a time. The agent says hello (name,
labels, plugins with their schemas, the attempts it runs and the results it
holds), then runs the steps it is sent and streams their events back. A final
result is kept until the coordinator acknowledges it, and sent again after a
reconnect. A dropped stream is reopened with jittered exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
from collections.abc import Mapping
from pathlib import Path

import grpc
import structlog

from workflowd import __version__, wire
from workflowd.dispatch import AttemptKey
from workflowd.execution import Outcome, execute, for_wire
from workflowd.grpc_options import CHANNEL_OPTIONS, MAX_MESSAGE_BYTES
from workflowd.rpc import workflow_pb2 as pb
from workflowd.rpc import workflow_pb2_grpc as rpc
from workflowd.tasks import Report, StepContext, Task

log = structlog.get_logger()


class Rejected(Exception):  # noqa: N818 - names what the coordinator said
    pass


def _ref(key: AttemptKey) -> pb.AttemptRef:
    return pb.AttemptRef(run_id=key[0], step_id=key[1], attempt=key[2])


def _step(key: AttemptKey, **kind: object) -> pb.AgentMessage:
    return pb.AgentMessage(step=pb.StepEvent(ref=_ref(key), **kind))


# Codes that say the coordinator refused this agent, not that the network failed.
REFUSED_CODES = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
    }
)


def result_message(
    key: AttemptKey, outcome: Outcome, limit_bytes: int = MAX_MESSAGE_BYTES
) -> pb.AgentMessage:
    """The final report of an attempt, within the coordinator's message size limit.

    Outputs too large (or not JSON) fail the step with a message that says so,
    rather than break the stream, and be sent again, after every reconnect.
    """
    outcome, outputs_json = for_wire(outcome, limit_bytes)
    if outcome.ok:
        completed = pb.StepCompleted(outputs_json=outputs_json, path=outcome.path)
        return _step(key, completed=completed)
    return _step(key, failed=pb.StepFailed(error=outcome.error, message=outcome.message))


# Run and step ids name directories under the work dir: nothing that climbs out.
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


def _start_problem(start: pb.StartStep) -> str:
    """Why a step start cannot be taken as it is, or ""."""
    if not (_SAFE_ID.fullmatch(start.ref.run_id) and _SAFE_ID.fullmatch(start.ref.step_id)):
        return "run and step ids must be letters, digits, '-' and '_'"
    try:
        config = json.loads(start.config_json or "{}")
    except (ValueError, RecursionError):
        config = None
    if not isinstance(config, dict):
        return "the run's configuration is not a JSON object"
    return ""


class Backoff:
    """Full-jitter exponential backoff: a random wait up to a doubling ceiling."""

    def __init__(self, initial_s: float = 0.5, maximum_s: float = 30.0) -> None:
        self.initial_s = initial_s
        self.maximum_s = maximum_s
        self.failures = 0

    def next_delay_s(self) -> float:
        ceiling = min(self.maximum_s, self.initial_s * 2**self.failures)
        self.failures += 1
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not secrets

    def reset(self) -> None:
        self.failures = 0


class Agent:
    def __init__(
        self,
        coordinator: str,
        name: str,
        labels: Mapping[str, str],
        plugins: Mapping[str, type[Task]],
        work_dir: Path,
        grace_s: float = 30.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.coordinator = coordinator
        self.credentials = credentials
        self.name = name
        self.labels = dict(labels)
        self.plugins = dict(plugins)
        self.work_dir = work_dir
        self.grace_s = grace_s
        self.backoff = Backoff()
        self.log = log.bind(agent=name)
        # TODO: keep held results in a durable on-disk outbox so they survive an agent restart.
        self._held: dict[AttemptKey, pb.AgentMessage] = {}
        self._running: dict[AttemptKey, tuple[asyncio.Task[None], StepContext]] = {}
        self._outbox: asyncio.Queue[pb.AgentMessage] | None = None
        self._stopping = asyncio.Event()
        self._acked = asyncio.Event()
        self.connected = asyncio.Event()
        # plugins installed here, allowed or not: to say why a step is refused
        self.installed: frozenset[str] = frozenset(self.plugins)
        # the coordinator's limit, once its welcome says it
        self.max_message_bytes = MAX_MESSAGE_BYTES

    # ------------------------------------------------------------ life cycle

    async def run(self) -> None:
        """Stay connected until `stop`; reconnect with backoff when the stream drops."""
        while not self._stopping.is_set():
            try:
                await self._session()
            except Rejected as exc:
                self.log.error("agent_rejected", reason=str(exc))
            except grpc.aio.AioRpcError as exc:
                # refused: a certificate, a name or a hello the coordinator will not take
                refused = exc.code() in REFUSED_CODES
                getattr(self.log, "error" if refused else "warning")(
                    "agent_refused" if refused else "stream_lost",
                    code=exc.code().name,
                    details=exc.details(),
                    coordinator=self.coordinator,
                )
            except Exception:
                self.log.exception("stream_failed")
            finally:
                self.connected.clear()
                self._outbox = None
            if self._stopping.is_set():
                break
            delay = self.backoff.next_delay_s()
            self.log.info("reconnect_scheduled", delay_s=round(delay, 2))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def stop(self) -> None:
        """Stop taking steps; let running ones finish within the grace period."""
        if self._stopping.is_set():
            return
        self.log.info("agent_stopping", running=len(self._running))
        tasks = [task for task, _ in self._running.values()]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=self.grace_s)
            for task in late:
                task.cancel()
            # give the stream a moment to carry the last results
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained(), 2.0)
        self._stopping.set()

    async def _drained(self) -> None:
        while self._held and self._outbox is not None:
            self._acked.clear()
            await self._acked.wait()

    # --------------------------------------------------------------- stream

    def _hello(self) -> pb.AgentMessage:
        plugins = [
            pb.PluginInfo(
                name=name,
                description=cls.description,
                params_schema_json=json.dumps(cls.params_schema()),
                outputs_schema_json=json.dumps(cls.outputs_schema()),
            )
            for name, cls in sorted(self.plugins.items())
        ]
        return pb.AgentMessage(
            hello=pb.Hello(
                name=self.name,
                labels=self.labels,
                plugins=plugins,
                version=__version__,
                running=[_ref(key) for key in self._running],
                held=[_ref(key) for key in self._held],
            )
        )

    def _channel(self) -> grpc.aio.Channel:
        if self.credentials is None:
            return grpc.aio.insecure_channel(self.coordinator, options=CHANNEL_OPTIONS)
        return grpc.aio.secure_channel(self.coordinator, self.credentials, options=CHANNEL_OPTIONS)

    async def _session(self) -> None:
        async with self._channel() as channel:
            call = rpc.AgentServiceStub(channel).Connect()
            await call.write(self._hello())
            first = await call.read()
            if first is grpc.aio.EOF:
                raise Rejected("the coordinator closed the stream")
            if first.WhichOneof("kind") == "reject":
                raise Rejected(first.reject.reason)
            interval_s = first.welcome.heartbeat_interval_s or 5.0
            self._adopt_limit(first.welcome.max_message_bytes)

            outbox: asyncio.Queue[pb.AgentMessage] = asyncio.Queue()
            for message in self._held.values():
                outbox.put_nowait(message)
            self._outbox = outbox
            self.backoff.reset()
            self.connected.set()
            self.log.info("agent_connected", coordinator=self.coordinator, resent=len(self._held))

            writer = asyncio.create_task(self._write(call, outbox))
            beat = asyncio.create_task(self._heartbeat(outbox, interval_s))
            stop = asyncio.create_task(self._stopping.wait())
            try:
                while True:
                    reader = asyncio.ensure_future(call.read())
                    done, _ = await asyncio.wait(
                        {reader, writer, stop}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if reader not in done:
                        reader.cancel()
                        if writer in done:
                            writer.result()  # raises the stream's error
                        return
                    message = reader.result()
                    if message is grpc.aio.EOF:
                        self.log.warning("stream_closed_by_coordinator")
                        return
                    self._handle(message)
            finally:
                for task in (writer, beat, stop):
                    task.cancel()
                with contextlib.suppress(Exception):
                    await call.done_writing()

    def _adopt_limit(self, coordinator_limit: int) -> None:
        """Take the coordinator's message limit; held results that no longer fit fail."""
        self.max_message_bytes = min(MAX_MESSAGE_BYTES, coordinator_limit or MAX_MESSAGE_BYTES)
        for key, message in list(self._held.items()):
            if message.ByteSize() > self.max_message_bytes:
                size = message.ByteSize()
                self.log.warning("held_result_too_large", run_id=key[0], step_id=key[1], size=size)
                outcome = Outcome(
                    False,
                    error="outputs_too_large",
                    message=f"the result of {size} bytes exceeds the coordinator's limit of "
                    f"{self.max_message_bytes} bytes",
                )
                self._held[key] = result_message(key, outcome, self.max_message_bytes)

    async def _write(
        self, call: grpc.aio.StreamStreamCall, outbox: asyncio.Queue[pb.AgentMessage]
    ) -> None:
        while True:
            await call.write(await outbox.get())

    async def _heartbeat(self, outbox: asyncio.Queue[pb.AgentMessage], interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            running = [_ref(key) for key in self._running]
            outbox.put_nowait(pb.AgentMessage(heartbeat=pb.Heartbeat(running=running)))

    def _send(self, message: pb.AgentMessage) -> None:
        """Queue a message on the live stream; dropped when there is none."""
        if self._outbox is not None:
            self._outbox.put_nowait(message)

    def _handle(self, message: pb.CoordinatorMessage) -> None:
        kind = message.WhichOneof("kind")
        if kind == "start":
            self._start(message.start)
        elif kind == "cancel":
            key = (
                message.cancel.ref.run_id,
                message.cancel.ref.step_id,
                message.cancel.ref.attempt,
            )
            if key in self._running:
                task, ctx = self._running[key]
                ctx.cancelled.set()
                task.cancel()
        elif kind == "ack":
            ref = message.ack.ref
            self._held.pop((ref.run_id, ref.step_id, ref.attempt), None)
            self._acked.set()
        elif kind == "reject":
            raise Rejected(message.reject.reason)

    # ---------------------------------------------------------------- steps

    def _start(self, start: pb.StartStep) -> None:
        key = (start.ref.run_id, start.ref.step_id, start.ref.attempt)
        bound = self.log.bind(run_id=key[0], step_id=key[1], attempt=key[2], task=start.task)
        if key in self._running or key in self._held:
            bound.info("step_start_duplicate")
            return
        if self._stopping.is_set():
            bound.info("step_start_refused_stopping")
            return
        if start.task not in self.plugins:
            # The coordinator only sends what this agent advertised; whoever
            # sends anything else is refused, and told why, without running it.
            outcome = self._refusal(start.task)
            bound.warning("step_refused", error=outcome.error, reason=outcome.message)
            self._finish(key, outcome)
            return
        problem = _start_problem(start)
        if problem:
            bound.warning("step_start_malformed", reason=problem)
            self._finish(key, Outcome(False, error="invalid_message", message=problem))
            return
        loop = asyncio.get_running_loop()
        scratch = self.work_dir / "scratch" / key[0] / f"{key[1]}-{key[2]}"
        ctx = StepContext(
            run_id=key[0],
            step_id=key[1],
            attempt=key[2],
            host=self.name,
            config=json.loads(start.config_json or "{}"),
            scratch_dir=scratch,
            report=lambda item: loop.call_soon_threadsafe(self._report, key, item),
        )
        task = asyncio.create_task(self._run_step(key, start, ctx))
        self._running[key] = (task, ctx)

    def _refusal(self, task: str) -> Outcome:
        if task in self.installed:
            allowed = ", ".join(sorted(self.plugins)) or "none"
            return Outcome(
                False,
                error="task_not_allowed",
                message=f"task {task} is installed on {self.name} but not allowed there "
                f"(allowed: {allowed}); start the agent with --allow {task} to allow it",
            )
        return Outcome(
            False, error="unknown_task", message=f"task {task} is not installed on {self.name}"
        )

    def _report(self, key: AttemptKey, item: Report) -> None:
        kind, value, message = item
        message = wire.clean_text(message)
        if kind == "progress":
            progress = pb.StepProgress(fraction=wire.fraction(value), message=message)
            self._send(_step(key, progress=progress))
        else:
            self._send(_step(key, log=pb.StepLog(level=wire.level(value), message=message)))

    async def _run_step(self, key: AttemptKey, start: pb.StartStep, ctx: StepContext) -> None:
        bound = self.log.bind(run_id=key[0], step_id=key[1], attempt=key[2], task=start.task)
        self._send(_step(key, started=pb.StepStarted()))
        try:
            ctx.scratch_dir.mkdir(parents=True, exist_ok=True)
            params = json.loads(start.params_json or "{}")
            outcome = await execute(self.plugins[start.task](), ctx, params)
        except asyncio.CancelledError:
            outcome = Outcome(False, error="cancelled", message="the step was cancelled")
        except Exception as exc:  # noqa: BLE001 - a step's crash must not take the agent down
            bound.exception("step_crashed")
            outcome = Outcome(False, error="agent_error", message=f"{type(exc).__name__}: {exc}")
        finally:
            self._running.pop(key, None)
        bound.info("step_finished", ok=outcome.ok, path=outcome.path, error=outcome.error or None)
        self._finish(key, outcome)

    def _finish(self, key: AttemptKey, outcome: Outcome) -> None:
        """Hold the result until it is acknowledged, and send it."""
        message = result_message(key, outcome, self.max_message_bytes)
        if message.step.WhichOneof("kind") == "failed" and outcome.ok:
            self.log.warning(
                "step_result_refused",
                run_id=key[0],
                step_id=key[1],
                error=message.step.failed.error,
                reason=message.step.failed.message,
            )
        self._held[key] = message
        self._send(message)
