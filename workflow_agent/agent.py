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
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import structlog

from workflow_agent.outbox import Outbox
from workflowd import __version__, batching, wire
from workflowd.dispatch import AttemptKey
from workflowd.execution import Outcome, execute, for_wire
from workflowd.grpc_options import CHANNEL_OPTIONS, MAX_MESSAGE_BYTES
from workflowd.rpc import workflow_pb2 as pb
from workflowd.rpc import workflow_pb2_grpc as rpc
from workflowd.tasks import Report, StepContext, Task

if TYPE_CHECKING:
    from workflowd.metrics import AgentMetrics

log = structlog.get_logger()


class Rejected(Exception):  # noqa: N818 - names what the coordinator said
    pass


def _ref(key: AttemptKey) -> pb.AttemptRef:
    return pb.AttemptRef(run_id=key[0], step_id=key[1], attempt=key[2])


def _step(key: AttemptKey, **kind: object) -> pb.AgentMessage:
    return pb.AgentMessage(step=pb.StepEvent(ref=_ref(key), **kind))


# A step still running after this long is announced (StepStarted); the result
# of one that ends sooner stands for its start.
ANNOUNCE_AFTER_S = 0.02

# Codes that say the coordinator refused this agent, not that the network failed.
REFUSED_CODES = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
    }
)


def _json(value: object) -> str:
    """A plugin's message or output value as JSON text, or null when it is not JSON."""
    try:
        return json.dumps(wire.clean_value(value), allow_nan=False)
    except (TypeError, ValueError):
        return "null"


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
    if outcome.error == "interrupted":
        return _step(key, interrupted=pb.StepInterrupted(reason=outcome.message))
    failed = pb.StepFailed(
        error=outcome.error,
        message=outcome.message,
        retryable=outcome.retryable,
        rolled_back=outcome.rolled_back,
        details_json=json.dumps(outcome.details) if outcome.details is not None else "",
    )
    return _step(key, failed=failed)


def _outcome(outcome: Outcome) -> str:
    if outcome.ok:
        return "succeeded"
    if outcome.error in ("interrupted", "cancelled"):
        return outcome.error
    return "failed"


# Run and step ids name directories under the work dir: nothing that climbs out.
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
# a step id, or a fan-out instance: the step id and its agent's name in brackets
_STEP_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}(\[[^\[\]\x00-\x1f]{1,200}\])?$")
_UNSAFE_IN_PATH = re.compile(r"[^A-Za-z0-9_.-]")


def _start_problem(start: pb.StartStep) -> str:
    """Why a step start cannot be taken as it is, or ""."""
    if not (_SAFE_ID.fullmatch(start.ref.run_id) and _STEP_KEY.fullmatch(start.ref.step_id)):
        return "run and step ids must be letters, digits, '-' and '_' (and an agent in [])"
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
        # the exponent is bounded: 2**1024 no longer fits a float, and an agent
        # may keep retrying for hours while its coordinator is down
        ceiling = min(self.maximum_s, self.initial_s * 2 ** min(self.failures, 64))
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
        metrics: AgentMetrics | None = None,
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
        self._held = Outbox(work_dir / "outbox")
        self._held.load()
        self._running: dict[AttemptKey, tuple[asyncio.Task[None], StepContext]] = {}
        # steps whose start is not announced yet: a short step's result says it
        self._unannounced: dict[AttemptKey, asyncio.TimerHandle] = {}
        self._outbox: asyncio.Queue[pb.AgentMessage] | None = None
        self._stopping = asyncio.Event()
        self._draining = False
        self._acked = asyncio.Event()
        self.connected = asyncio.Event()
        # plugins installed here, allowed or not: to say why a step is refused
        self.installed: frozenset[str] = frozenset(self.plugins)
        # the coordinator's limit, once its welcome says it
        self.max_message_bytes = MAX_MESSAGE_BYTES
        self._batched_events = False  # the coordinator reads StepEvents, once it says so
        self.metrics = metrics
        if metrics is not None:
            metrics.steps_running.set_function(lambda: self.running)

    @property
    def running(self) -> int:
        """How many step attempts run here now."""
        return len(self._running)

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
                if self.metrics is not None:
                    self.metrics.connected.set(0)
            if self._stopping.is_set():
                break
            if self.metrics is not None:
                self.metrics.stream_losses.inc()
            delay = self.backoff.next_delay_s()
            self.log.info("reconnect_scheduled", delay_s=round(delay, 2))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def stop(self) -> None:
        """Stop taking steps; let running ones finish within the grace period."""
        if self._stopping.is_set():
            return
        self.log.info("agent_stopping", running=len(self._running))
        self._draining = True
        self._send(self._beat())
        tasks = {task: ctx for task, ctx in self._running.values()}
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=self.grace_s)
            for task in late:
                # reported as interrupted: the step runs again, it did not fail
                tasks[task].stop("interrupt", "the agent is shutting down")
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=5.0)
        # give the stream a moment to carry the last reports and their acknowledgements
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained(), 2.0)
        await self._held.flush()  # what is still held is on disk before the agent exits
        self._stopping.set()

    async def _drained(self) -> None:
        if self._outbox is not None:
            await self._outbox.join()
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
                held=[_ref(key) for key in self._held.attempts()],
                batched_acks=True,
                batched_starts=True,
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
            self._batched_events = first.welcome.batched_events

            outbox: asyncio.Queue[pb.AgentMessage] = asyncio.Queue()
            for message in self._held.written():
                outbox.put_nowait(message)  # the others go out once they are on disk
            for key, (_, ctx) in self._running.items():
                # receives a previous stream carried are asked for again
                for topic, after in ctx.pending_receives():
                    receive = pb.ReceiveRequest(topic=topic, after_index=after)
                    outbox.put_nowait(_step(key, receive=receive))
            self._outbox = outbox
            self.backoff.reset()
            self.connected.set()
            if self.metrics is not None:
                self.metrics.connects.inc()
                self.metrics.connected.set(1)
            self.log.info("agent_connected", coordinator=self.coordinator, resent=len(self._held))

            reader = asyncio.create_task(self._read(call))
            writer = asyncio.create_task(self._write(call, outbox))
            beat = asyncio.create_task(self._heartbeat(outbox, interval_s))
            stop = asyncio.create_task(self._stopping.wait())
            try:
                done, _ = await asyncio.wait(
                    {reader, writer, stop}, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done & {reader, writer}:
                    task.result()  # raises the stream's error, if it broke
                if reader in done:
                    self.log.warning("stream_closed_by_coordinator")
                    return
                # Stopping: half-close, and let the coordinator read everything
                # written so far before the channel goes away.
                beat.cancel()
                await call.done_writing()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(reader, 3.0)
            finally:
                for task in (reader, writer, beat, stop):
                    task.cancel()

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:
        while (message := await call.read()) is not grpc.aio.EOF:
            self._handle(message)

    def _adopt_limit(self, coordinator_limit: int) -> None:
        """Take the coordinator's message limit; held results that no longer fit fail."""
        self.max_message_bytes = min(MAX_MESSAGE_BYTES, coordinator_limit or MAX_MESSAGE_BYTES)
        for key, message in zip(self._held.attempts(), self._held.messages(), strict=True):
            if message.ByteSize() > self.max_message_bytes:
                size = message.ByteSize()
                self.log.warning("held_result_too_large", run_id=key[0], step_id=key[1], size=size)
                outcome = Outcome(
                    False,
                    error="outputs_too_large",
                    message=f"the result of {size} bytes exceeds the coordinator's limit of "
                    f"{self.max_message_bytes} bytes",
                )
                failure = result_message(key, outcome, self.max_message_bytes)
                failure.step.implies_started = message.step.implies_started
                self._keep_and_send(key, failure)

    async def _write(
        self, call: grpc.aio.StreamStreamCall, outbox: asyncio.Queue[pb.AgentMessage]
    ) -> None:
        while True:
            # what waits goes together: each message costs more than a short step
            taken = [await outbox.get()]
            while not outbox.empty() and len(taken) < batching.MAX_PER_MESSAGE:
                taken.append(outbox.get_nowait())
            budget_bytes = self.max_message_bytes // 2
            for message in batching.agent_messages(taken, self._batched_events, budget_bytes):
                await call.write(message)
            for _ in taken:
                outbox.task_done()

    async def _heartbeat(self, outbox: asyncio.Queue[pb.AgentMessage], interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            outbox.put_nowait(self._beat())

    def _beat(self) -> pb.AgentMessage:
        running = [_ref(key) for key in self._running]
        return pb.AgentMessage(heartbeat=pb.Heartbeat(running=running, draining=self._draining))

    def _send(self, message: pb.AgentMessage) -> None:
        """Queue a message on the live stream; dropped when there is none."""
        if self._outbox is not None:
            self._outbox.put_nowait(message)

    def _handle(self, message: pb.CoordinatorMessage) -> None:
        kind = message.WhichOneof("kind")
        if kind == "start":
            self._take_start(message.start)
        elif kind == "starts":
            for start in message.starts.starts:
                self._take_start(start)
        elif kind == "cancel":
            cancel = message.cancel
            key = (cancel.ref.run_id, cancel.ref.step_id, cancel.ref.attempt)
            if key in self._running:
                task, ctx = self._running[key]
                self.log.info(
                    "step_cancel_received", run_id=key[0], step_id=key[1], attempt=key[2]
                )
                ctx.stop("cancel", cancel.reason, cancel.rollback)
                task.cancel()
        elif kind == "ack":
            for ref in (message.ack.ref, *message.ack.more):
                self._held.ack((ref.run_id, ref.step_id, ref.attempt))
            self._acked.set()
        elif kind == "config":
            config = json.loads(message.config.config_json)
            for (run_id, _, _), (_, ctx) in self._running.items():
                if run_id == message.config.run_id:
                    ctx.update_config(config)
        elif kind == "delivery":
            delivery = message.delivery
            key = (delivery.ref.run_id, delivery.ref.step_id, delivery.ref.attempt)
            if key in self._running:
                payload = json.loads(delivery.payload_json)
                self._running[key][1].deliver(delivery.topic, delivery.index, payload)
        elif kind == "reject":
            raise Rejected(message.reject.reason)

    # ---------------------------------------------------------------- steps

    def _take_start(self, start: pb.StartStep) -> None:
        """A step start, and the acknowledgements that came with it."""
        for ref in start.acks:
            self._held.ack((ref.run_id, ref.step_id, ref.attempt))
        if start.acks:
            self._acked.set()
        self._start(start)

    def _start(self, start: pb.StartStep) -> None:
        key = (start.ref.run_id, start.ref.step_id, start.ref.attempt)
        bound = self.log.bind(run_id=key[0], step_id=key[1], attempt=key[2], task=start.task)
        if key in self._running or key in self._held:
            bound.info("step_start_duplicate")
            return
        if self._draining:
            bound.info("step_start_refused_stopping")
            refused = Outcome(False, error="interrupted", message=f"agent {self.name} is stopping")
            self._send(result_message(key, refused))
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
        # an instance key holds an agent name, which may hold any printable character
        directory = _UNSAFE_IN_PATH.sub("_", key[1])
        scratch = self.work_dir / "scratch" / key[0] / f"{directory}-{key[2]}"
        ctx = StepContext(
            run_id=key[0],
            step_id=key[1],
            attempt=key[2],
            host=self.name,
            config=json.loads(start.config_json or "{}"),
            scratch_dir=scratch,
            report=lambda item: loop.call_soon_threadsafe(self._report, key, item),
            labels=self.labels,
            state_dir=self.work_dir / "state",
        )
        task = asyncio.create_task(self._run_step(key, start, ctx))
        self._running[key] = (task, ctx)
        task.add_done_callback(lambda ended: self._ended_unstarted(key, ctx, ended))

    def _ended_unstarted(self, key: AttemptKey, ctx: StepContext, task: asyncio.Task) -> None:
        """A step's task that ended without running (cancelled at once) still reports."""
        if self._running.get(key, (None,))[0] is not task:
            return  # it ran, and said how it ended
        del self._running[key]
        timer = self._unannounced.pop(key, None)
        if timer is not None:
            timer.cancel()
        if ctx.stop_reason == "interrupt":
            outcome = Outcome(False, error="interrupted", message=ctx.stop_reason_text)
        else:
            reason = ctx.stop_reason_text or "before it started"
            outcome = Outcome(False, error="cancelled", message=f"cancelled ({reason})")
        self._finish(key, outcome)

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

    def _announce(self, key: AttemptKey) -> None:
        """Send a step's StepStarted, unless it went already.

        Without a stream the start stays unannounced: the result stands for it.
        """
        if self._outbox is None:
            return
        timer = self._unannounced.pop(key, None)
        if timer is not None:
            timer.cancel()
            self._send(_step(key, started=pb.StepStarted()))

    def _report(self, key: AttemptKey, item: Report) -> None:
        self._announce(key)  # what a step reports comes after its start
        kind, first, second = item
        if kind == "progress":
            progress = pb.StepProgress(
                fraction=wire.fraction(first), message=wire.clean_text(second)
            )
            self._send(_step(key, progress=progress))
        elif kind == "message":
            message = pb.StepMessage(topic=wire.clean_text(first, 200), payload_json=_json(second))
            self._send(_step(key, message=message))
        elif kind == "output":
            output = pb.StepOutput(name=wire.clean_text(first, 200), value_json=_json(second))
            self._send(_step(key, output=output))
        elif kind == "receive":
            receive = pb.ReceiveRequest(topic=wire.clean_text(first, 200), after_index=second)
            self._send(_step(key, receive=receive))
        else:
            log = pb.StepLog(level=wire.level(first), message=wire.clean_text(second))
            self._send(_step(key, log=log))

    async def _run_step(self, key: AttemptKey, start: pb.StartStep, ctx: StepContext) -> None:
        # everything logged while the step runs, by the plugin too, says which step it is
        structlog.contextvars.bind_contextvars(
            run_id=key[0], step_id=key[1], attempt=key[2], agent=self.name
        )
        bound = self.log.bind(run_id=key[0], step_id=key[1], attempt=key[2], task=start.task)
        began = time.monotonic()
        # announced once the step has run for ANNOUNCE_AFTER_S, or reports something;
        # a shorter step's result stands for its start (one message less per step)
        self._unannounced[key] = asyncio.get_running_loop().call_later(
            ANNOUNCE_AFTER_S, self._announce, key
        )
        try:
            params = json.loads(start.params_json or "{}")
            plugin = self.plugins[start.task]()
            outcome = await execute(plugin, ctx, params, start.rollback_on_failure)
        except Exception as exc:  # noqa: BLE001 - a step's crash must not take the agent down
            bound.exception("step_crashed")
            outcome = Outcome(False, error="agent_error", message=f"{type(exc).__name__}: {exc}")
        finally:
            self._running.pop(key, None)
        bound.info("step_finished", ok=outcome.ok, path=outcome.path, error=outcome.error or None)
        if self.metrics is not None:
            task = start.task if start.task in self.plugins else "unknown"
            self.metrics.step_finished(task, _outcome(outcome), time.monotonic() - began)
        self._finish(key, outcome)

    def _finish(self, key: AttemptKey, outcome: Outcome) -> None:
        """Hold the result until it is acknowledged, and send it."""
        message = result_message(key, outcome, self.max_message_bytes)
        timer = self._unannounced.pop(key, None)
        if timer is not None:
            timer.cancel()
            message.step.implies_started = True
        if message.step.WhichOneof("kind") == "failed" and outcome.ok:
            self.log.warning(
                "step_result_refused",
                run_id=key[0],
                step_id=key[1],
                error=message.step.failed.error,
                reason=message.step.failed.message,
            )
        if outcome.error != "interrupted":
            # kept on disk until acknowledged, and sent once it is there
            self._keep_and_send(key, message)
        else:
            self._send(message)  # an interruption is only news

    def _keep_and_send(self, key: AttemptKey, message: pb.AgentMessage) -> None:
        """Hold a result, and send it once it is on disk, unless it was replaced meanwhile."""
        loop = asyncio.get_running_loop()

        def send() -> None:
            if self._held.get(key) is message:
                self._send(message)

        self._held.put(key, message).add_done_callback(lambda _: loop.call_soon_threadsafe(send))
