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
from collections.abc import Mapping
from pathlib import Path

import grpc
import structlog

from workflow_agent.outbox import Outbox
from workflowd import __version__
from workflowd.dispatch import AttemptKey
from workflowd.execution import Outcome, execute
from workflowd.grpc_options import CHANNEL_OPTIONS
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


def result_message(key: AttemptKey, outcome: Outcome) -> pb.AgentMessage:
    if outcome.ok:
        completed = pb.StepCompleted(outputs_json=json.dumps(outcome.outputs), path=outcome.path)
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
    ) -> None:
        self.coordinator = coordinator
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
        self._outbox: asyncio.Queue[pb.AgentMessage] | None = None
        self._stopping = asyncio.Event()
        self._draining = False
        self._acked = asyncio.Event()
        self.connected = asyncio.Event()

    # ------------------------------------------------------------ life cycle

    async def run(self) -> None:
        """Stay connected until `stop`; reconnect with backoff when the stream drops."""
        while not self._stopping.is_set():
            try:
                await self._session()
            except Rejected as exc:
                self.log.error("agent_rejected", reason=str(exc))
            except grpc.aio.AioRpcError as exc:
                self.log.warning(
                    "stream_lost",
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
            )
        )

    async def _session(self) -> None:
        async with grpc.aio.insecure_channel(self.coordinator, options=CHANNEL_OPTIONS) as channel:
            call = rpc.AgentServiceStub(channel).Connect()
            await call.write(self._hello())
            first = await call.read()
            if first is grpc.aio.EOF:
                raise Rejected("the coordinator closed the stream")
            if first.WhichOneof("kind") == "reject":
                raise Rejected(first.reject.reason)
            interval_s = first.welcome.heartbeat_interval_s or 5.0

            outbox: asyncio.Queue[pb.AgentMessage] = asyncio.Queue()
            for message in self._held.messages():
                outbox.put_nowait(message)
            for key, (_, ctx) in self._running.items():
                # receives a previous stream carried are asked for again
                for topic, after in ctx.pending_receives():
                    receive = pb.ReceiveRequest(topic=topic, after_index=after)
                    outbox.put_nowait(_step(key, receive=receive))
            self._outbox = outbox
            self.backoff.reset()
            self.connected.set()
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

    async def _write(
        self, call: grpc.aio.StreamStreamCall, outbox: asyncio.Queue[pb.AgentMessage]
    ) -> None:
        while True:
            await call.write(await outbox.get())
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
            self._start(message.start)
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
            ref = message.ack.ref
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
            labels=self.labels,
            state_dir=self.work_dir / "state",
        )
        task = asyncio.create_task(self._run_step(key, start, ctx))
        self._running[key] = (task, ctx)

    def _report(self, key: AttemptKey, item: Report) -> None:
        kind, first, second = item
        if kind == "progress":
            self._send(_step(key, progress=pb.StepProgress(fraction=first, message=second)))
        elif kind == "message":
            message = pb.StepMessage(topic=first, payload_json=json.dumps(second))
            self._send(_step(key, message=message))
        elif kind == "output":
            self._send(_step(key, output=pb.StepOutput(name=first, value_json=json.dumps(second))))
        elif kind == "receive":
            self._send(_step(key, receive=pb.ReceiveRequest(topic=first, after_index=second)))
        else:
            self._send(_step(key, log=pb.StepLog(level=first, message=second)))

    async def _run_step(self, key: AttemptKey, start: pb.StartStep, ctx: StepContext) -> None:
        bound = self.log.bind(run_id=key[0], step_id=key[1], attempt=key[2], task=start.task)
        self._send(_step(key, started=pb.StepStarted()))
        try:
            plugin = self.plugins.get(start.task)
            if plugin is None:
                outcome = Outcome(
                    False,
                    error="unknown_task",
                    message=f"task {start.task} is not installed or not allowed on {self.name}",
                )
            else:
                params = json.loads(start.params_json or "{}")
                outcome = await execute(plugin(), ctx, params, start.rollback_on_failure)
        except Exception as exc:  # noqa: BLE001 - a step's crash must not take the agent down
            bound.exception("step_crashed")
            outcome = Outcome(False, error="agent_error", message=f"{type(exc).__name__}: {exc}")
        finally:
            self._running.pop(key, None)
        bound.info("step_finished", ok=outcome.ok, path=outcome.path, error=outcome.error or None)
        message = result_message(key, outcome)
        if outcome.error != "interrupted":
            # kept on disk until acknowledged; an interruption is only news
            self._held.put(key, message)
        self._send(message)
