"""The coordinator's run loop: stores what the engine decides, then carries it out.

Every change to a run goes through `_commit` under that run's lock: the events
are appended to the store first, then applied to the in-memory state, then
their effects happen (a step start sent to an agent, a local step begun), and
tail followers are woken. Nothing is acknowledged before it is stored.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from workflowd import definition, engine, wire
from workflowd.dispatch import AgentRegistry, AgentSession, AttemptKey
from workflowd.engine import COORDINATOR, Event, RunState
from workflowd.errors import DefinitionError, Issue, UnknownRunError
from workflowd.execution import Outcome, execute, for_wire
from workflowd.grpc_options import MAX_MESSAGE_BYTES
from workflowd.rpc import workflow_pb2 as pb
from workflowd.store.base import AgentRecord, RunRecord, Store, new_run_id
from workflowd.tasks import Report, StepContext, Task

log = structlog.get_logger()

FINAL_EVENTS = frozenset({engine.STEP_SUCCEEDED, engine.STEP_FAILED})


class Notifier:
    """Wakes whoever waits for news of a run (tail followers)."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def waiter(self, run_id: str) -> asyncio.Event:
        return self._events.setdefault(run_id, asyncio.Event())

    def notify(self, run_id: str) -> None:
        event = self._events.pop(run_id, None)
        if event is not None:
            event.set()


class Coordinator:
    def __init__(
        self,
        store: Store,
        plugins: Mapping[str, type[Task]],
        scratch_root: Path | None = None,
    ) -> None:
        self.store = store
        self.plugins = dict(plugins)
        self.agents = AgentRegistry()
        self.notifier = Notifier()
        self.scratch_root = scratch_root or Path(tempfile.gettempdir()) / "workflowd-scratch"
        self._states: dict[str, RunState] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._local: dict[AttemptKey, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        # the largest message the server sends and receives; results must fit
        self.max_message_bytes = MAX_MESSAGE_BYTES

    # ------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Pick up every run that was going when the coordinator last stopped."""
        for record in await self.store.runs_with_status([engine.PENDING, engine.RUNNING]):
            state = await self._load(record)
            self._states[record.run_id] = state
            interrupted = [
                Event(
                    engine.STEP_INTERRUPTED,
                    step_id,
                    step.attempt,
                    COORDINATOR,
                    {"reason": "the coordinator restarted while the step ran on it"},
                )
                for step_id, step in state.steps.items()
                if step.agent == COORDINATOR and step.status in engine.STEP_ACTIVE
            ]
            if interrupted:
                async with self._locks[record.run_id]:
                    await self._commit(record.run_id, interrupted)
            log.info("run_recovered", run_id=record.run_id, status=state.status)
            self._spawn(self.advance(record.run_id))

    async def stop(self) -> None:
        for task in list(self._local.values()):
            task.cancel()
        for session in self.agents.sessions():
            session.close()
        await asyncio.gather(*self._local.values(), *self._background, return_exceptions=True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --------------------------------------------------------------- runs

    async def _load(self, record: RunRecord) -> RunState:
        # typed by the same task schemas as at submit; parsing runs off the event loop
        # TODO: store the typed parameters with the run, so that a task schema that
        # changed since the submit cannot retype a plain scalar on recovery.
        catalog = await self.catalog()
        workflow = await asyncio.to_thread(
            definition.load, record.source, record.filename, catalog
        )
        state = engine.initial(record.run_id, workflow, record.inputs, record.config)
        after = 0
        while batch := await self.store.events(record.run_id, after, 5000):
            state = engine.replay(state, batch)
            after = batch[-1].seq
        return state

    async def run_state(self, run_id: str) -> RunState:
        if run_id in self._states:
            return self._states[run_id]
        record = await self.store.get_run(run_id)
        if record is None:
            raise UnknownRunError(run_id)
        return await self._load(record)

    async def catalog(self) -> dict[str, dict[str, Any]]:
        """Parameter schemas of every task known here or on any agent seen."""
        schemas: dict[str, dict[str, Any]] = {}
        for agent in await self.store.agents():
            schemas.update({name: dict(schema) for name, schema in agent.plugins.items()})
        for session in self.agents.sessions():
            for name, info in session.plugins.items():
                schemas[name] = json.loads(info.params_schema_json or "{}")
        for name, cls in self.plugins.items():
            schemas[name] = cls.params_schema()
        return schemas

    async def check(
        self, source: str, filename: str, inputs: Mapping[str, str]
    ) -> tuple[definition.Workflow, dict[str, Any]]:
        """Everything submit checks, without storing anything.

        Parsing a large or hostile document takes CPU time: it runs in a worker
        thread so that agents' streams and other calls are served meanwhile.
        """
        catalog = await self.catalog()
        return await asyncio.to_thread(self._check, source, filename, inputs, catalog)

    def _check(
        self,
        source: str,
        filename: str,
        inputs: Mapping[str, str],
        catalog: Mapping[str, Mapping[str, Any]],
    ) -> tuple[definition.Workflow, dict[str, Any]]:
        workflow = definition.load(source, filename, catalog)
        issues = definition.check_tasks(workflow, catalog, source, filename)
        for index, step in enumerate(workflow.steps):
            if step.on.on_coordinator and step.task in catalog and step.task not in self.plugins:
                line, column = definition.locate(source, filename, ("steps", index, "on"))
                issues.append(
                    Issue(
                        f"task {step.task} is not installed on the coordinator; "
                        "run the step on an agent that has it",
                        f"steps[{index}].on",
                        filename,
                        line,
                        column,
                    )
                )
        if issues:
            raise DefinitionError(issues)
        return workflow, definition.resolve_inputs(workflow, inputs)

    async def submit(
        self, source: str, filename: str, inputs: Mapping[str, str], key: str = ""
    ) -> tuple[str, bool]:
        """Check and store a new run, then start it. Returns (run id, existing)."""
        workflow, values = await self.check(source, filename, inputs)
        record = RunRecord(
            run_id=new_run_id(),
            name=workflow.name,
            source=source,
            filename=filename,
            inputs=values,
            config=dict(workflow.config),
            idempotency_key=key,
        )
        first = Event(
            engine.RUN_SUBMITTED,
            data={"name": workflow.name, "inputs": values, "config": dict(workflow.config)},
        )
        stored, created = await self.store.create_run(record, [first])
        if not created:
            log.info("run_submit_deduplicated", run_id=stored.run_id, key=key)
            return stored.run_id, True
        self._states[stored.run_id] = await self._load(stored)
        log.info("run_submitted", run_id=stored.run_id, workflow=workflow.name)
        await self.advance(stored.run_id)
        return stored.run_id, False

    async def advance(self, run_id: str) -> None:
        """Commit whatever the engine decides until it has nothing more to do."""
        async with self._locks[run_id]:
            while (state := self._states.get(run_id)) is not None:
                events = engine.decide(state, self.agents.views())
                if not events:
                    break
                await self._commit(run_id, events)

    async def _commit(self, run_id: str, events: list[Event]) -> RunState:
        """Store events, apply them, carry out their effects. Caller holds the run lock."""
        state = self._states[run_id]
        status = engine.replay(state, events).status
        stored = await self.store.append(run_id, events, status)
        state = engine.replay(state, stored)
        self._states[run_id] = state
        self.notifier.notify(run_id)

        for event in stored:
            self._log_event(run_id, event)
            if event.type == engine.STEP_DISPATCHED:
                self._start_step(run_id, event)
        if state.finished:
            self._states.pop(run_id, None)
            self._locks.pop(run_id, None)
        return state

    def _log_event(self, run_id: str, event: Event) -> None:
        if event.type in (engine.STEP_PROGRESS, engine.STEP_LOG):
            return
        context = {"step_id": event.step_id, "attempt": event.attempt, "agent": event.agent}
        log.info(event.type, run_id=run_id, **{k: v for k, v in context.items() if v})

    def _start_step(self, run_id: str, event: Event) -> None:
        key = (run_id, event.step_id, event.attempt)
        task_name = str(event.data["task"])
        params = dict(event.data.get("params", {}))
        if event.agent == COORDINATOR:
            self._local[key] = asyncio.create_task(self._run_local(key, task_name, params))
            return
        session = self.agents.get(event.agent)
        if session is None:
            # The agent left between the decision and now; its hello will tell
            # whether it has the attempt, and reconciliation reruns it if not.
            log.warning("dispatch_target_gone", run_id=run_id, step_id=event.step_id)
            return
        state = self._states[run_id]
        message = pb.CoordinatorMessage(
            start=pb.StartStep(
                ref=pb.AttemptRef(run_id=run_id, step_id=event.step_id, attempt=event.attempt),
                task=task_name,
                params_json=json.dumps(params),
                config_json=json.dumps(dict(state.config)),
            )
        )
        if (size := message.ByteSize()) > self.max_message_bytes:
            # sent, it would break the agent's stream, and be sent again on reconnect
            failed = Event(
                engine.STEP_FAILED,
                event.step_id,
                event.attempt,
                event.agent,
                {
                    "error": "params_too_large",
                    "message": f"the step's parameters and configuration take {size} bytes, "
                    f"more than the limit of {self.max_message_bytes} bytes",
                },
            )
            self._spawn(self.report(event.agent, run_id, failed))
            return
        session.running.add(key)
        session.send(message)

    # ------------------------------------------------------- step reports

    async def report(self, agent: str, run_id: str, event: Event) -> str:
        """Apply a report about a step attempt from an agent (or a local step).

        Returns the engine's verdict; the result is stored when it is "accept".
        Anything else changes nothing: a report about a run that does not exist,
        or about an attempt that was never given to `agent`, is "foreign".
        """
        state = self._states.get(run_id)
        if state is None:
            # a finished or unknown run: nothing to change, whatever it says
            return engine.STALE if await self.store.get_run(run_id) else engine.FOREIGN
        async with self._locks[run_id]:
            state = self._states.get(run_id)
            if state is None:
                return engine.STALE
            verdict = engine.judge(state, agent, event.step_id, event.attempt)
            if verdict != engine.ACCEPT:
                # the caller logs it: it knows whether a flood is under way
                return verdict
            if event.type == engine.STEP_STARTED and state.step(event.step_id).status != (
                engine.DISPATCHED
            ):
                return engine.DUPLICATE
            await self._commit(run_id, [event])
        if event.type in FINAL_EVENTS:
            session = self.agents.get(agent)
            if session is not None:
                session.running.discard((run_id, event.step_id, event.attempt))
            await self.advance(run_id)
        return verdict

    async def _run_local(self, key: AttemptKey, task_name: str, params: dict[str, Any]) -> None:
        run_id, step_id, attempt = key
        queue: asyncio.Queue[Report | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        state = self._states[run_id]
        scratch = self.scratch_root / run_id / f"{step_id}-{attempt}"
        scratch.mkdir(parents=True, exist_ok=True)
        ctx = StepContext(
            run_id=run_id,
            step_id=step_id,
            attempt=attempt,
            host=COORDINATOR,
            config=state.config,
            scratch_dir=scratch,
            report=lambda item: loop.call_soon_threadsafe(queue.put_nowait, item),
        )

        async def forward() -> None:
            while (item := await queue.get()) is not None:
                kind, value, message = item
                await self.report(COORDINATOR, run_id, _report_event(key, kind, value, message))

        forwarder = asyncio.create_task(forward())
        try:
            started = Event(engine.STEP_STARTED, step_id, attempt, COORDINATOR)
            await self.report(COORDINATOR, run_id, started)
            outcome = await execute(self.plugins[task_name](), ctx, params)
            # reports from worker threads were queued before execute returned
            queue.put_nowait(None)
            await forwarder
            outcome = _storable(outcome, self.max_message_bytes)
            await self.report(COORDINATOR, run_id, outcome_event(key, COORDINATOR, outcome))
        finally:
            forwarder.cancel()
            self._local.pop(key, None)

    # ------------------------------------------------------------- agents

    async def agent_connected(self, session: AgentSession, hello: pb.Hello) -> None:
        """Reconcile what the agent says it has, then make it available for steps."""
        has = {(r.run_id, r.step_id, r.attempt) for r in (*hello.running, *hello.held)}
        session.running = {(r.run_id, r.step_id, r.attempt) for r in hello.running}
        for run_id, state in list(self._states.items()):
            lost = [
                Event(
                    engine.STEP_INTERRUPTED,
                    step_id,
                    step.attempt,
                    session.name,
                    {"reason": f"agent {session.name} reconnected without this attempt"},
                )
                for step_id, step in state.steps.items()
                if step.agent == session.name
                and step.status in engine.STEP_ACTIVE
                and (run_id, step_id, step.attempt) not in has
            ]
            if lost:
                async with self._locks[run_id]:
                    await self._commit(run_id, lost)

        old = self.agents.add(session)
        if old is not None:
            log.warning("agent_replaced", agent=session.name)
            old.close()
        await self.store.save_agent(
            AgentRecord(
                name=session.name,
                labels=session.labels,
                plugins={
                    name: json.loads(info.params_schema_json or "{}")
                    for name, info in session.plugins.items()
                },
                version=session.version,
                connected=True,
            )
        )
        log.info("agent_connected", agent=session.name, labels=session.labels)
        for run_id in list(self._states):
            await self.advance(run_id)

    async def agent_disconnected(self, session: AgentSession) -> None:
        if self.agents.remove(session):
            await self.store.set_agent_connected(session.name, False)
            log.info("agent_disconnected", agent=session.name)


def _storable(outcome: Outcome, limit_bytes: int) -> Outcome:
    """A local step's outcome held to the rules of the wire: it is read through it."""
    checked, text = for_wire(outcome, limit_bytes)
    return Outcome(checked.ok, json.loads(text), checked.path, checked.error, checked.message)


def _report_event(key: AttemptKey, kind: str, value: Any, message: str) -> Event:
    _, step_id, attempt = key
    message = wire.clean_text(message)
    if kind == "progress":
        return Event(
            engine.STEP_PROGRESS,
            step_id,
            attempt,
            COORDINATOR,
            {"fraction": wire.fraction(value), "message": message},
        )
    return Event(
        engine.STEP_LOG,
        step_id,
        attempt,
        COORDINATOR,
        {"level": wire.level(value), "message": message},
    )


def outcome_event(key: AttemptKey, agent: str, outcome: Any) -> Event:
    _, step_id, attempt = key
    if outcome.ok:
        return Event(
            engine.STEP_SUCCEEDED,
            step_id,
            attempt,
            agent,
            {"outputs": outcome.outputs, "path": outcome.path},
        )
    data = {"error": outcome.error, "message": outcome.message, **outcome.outputs}
    return Event(engine.STEP_FAILED, step_id, attempt, agent, data)
