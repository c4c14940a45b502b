"""The coordinator's run loop: stores what the engine decides, then carries it out.

Every change to a run goes through `_commit` under that run's lock: the events
are appended to the store first, then applied to the in-memory state, then
their effects happen (a step start sent to an agent, a local step begun, an
abandoned attempt told to stop), and tail followers are woken. Nothing is
acknowledged before it is stored.

A step's final result is stored together with what the engine decides next
(the next step's dispatch, the run's end): one transaction, one fsync, and
the step start goes out as soon as it is durable.

Reports that nobody is told about (a step started, its progress, its log
lines) are stored with the next write of their run: a step's start waits up
to LINGER_S for it, so that a short step's start, result and successor share
one transaction; progress and log lines go at the loop's next turn. They are
judged when they arrive and again when they are stored, and applied only once
stored. A progress report still waiting (while the run's previous write
commits) is replaced by a newer one of the same attempt: under load the
history keeps the latest fraction, not every one.

A ticker watches the clock: agents that fell silent, attempts that ran out of
time, retries whose backoff is over, steps that waited too long for an agent.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from workflowd import definition, engine, wire
from workflowd.dispatch import AgentRegistry, AgentSession, AttemptKey
from workflowd.engine import COORDINATOR, Event, Limits, RunState
from workflowd.errors import DefinitionError, Issue, UnknownRunError
from workflowd.execution import Outcome, execute, for_wire
from workflowd.grpc_options import MAX_MESSAGE_BYTES
from workflowd.rpc import workflow_pb2 as pb
from workflowd.store.base import AgentRecord, RunRecord, Store, new_run_id, now_ms
from workflowd.tasks import Report, StepContext, Task

if TYPE_CHECKING:
    from workflowd.metrics import CoordinatorMetrics

log = structlog.get_logger()

FINAL_EVENTS = frozenset({engine.STEP_SUCCEEDED, engine.STEP_FAILED, engine.STEP_INTERRUPTED})
# reports that change nothing anyone waits on: stored with the run's next write
LAZY_EVENTS = frozenset({engine.STEP_STARTED, engine.STEP_PROGRESS, engine.STEP_LOG})
LINGER_S = 0.005
DEFINITIONS_KEPT = 32  # parsed definitions kept for the next submit of the same source
# logged at debug: a step's outcome is logged at info, and the history has them all
ROUTINE_EVENTS = frozenset({engine.STEP_DISPATCHED, engine.STEP_STARTED, engine.STEP_OUTPUT})
# decide rounds in one commit; a run needing more goes on in the next one
MAX_ROUNDS = 100


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


@dataclass
class Receiver:
    """A running step waiting for the next message on a topic."""

    agent: str
    key: str
    attempt: int
    after_index: int


class Coordinator:
    def __init__(
        self,
        store: Store,
        plugins: Mapping[str, type[Task]],
        scratch_root: Path | None = None,
        heartbeat_timeout_s: float = 15.0,
        limits: Limits = Limits(),  # noqa: B008 - a frozen value, safe to share
        tick_s: float = 0.25,
        metrics: CoordinatorMetrics | None = None,
    ) -> None:
        self.store = store
        self.plugins = dict(plugins)
        self.agents = AgentRegistry()
        self.notifier = Notifier()
        self.scratch_root = scratch_root or Path(tempfile.gettempdir()) / "workflowd-scratch"
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.limits = limits
        self.tick_s = tick_s
        self._states: dict[str, RunState] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._local: dict[AttemptKey, tuple[asyncio.Task[None], StepContext]] = {}
        self._gone_since: dict[str, float] = {}  # agent name -> monotonic time it went away
        self._background: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.Task[None] | None = None
        # set once `start` has loaded the runs that were going: agents that connect
        # earlier wait for it, or the attempts and results they hold would be
        # checked against runs not loaded yet (and their results dropped as stale)
        self._recovered = asyncio.Event()
        # run id -> topic -> steps waiting for a message there
        self._receivers: defaultdict[str, defaultdict[str, list[Receiver]]] = defaultdict(
            lambda: defaultdict(list)
        )
        self._known_agents: set[str] = set()  # names that have connected before, ever
        self.metrics = metrics
        if metrics is not None:
            metrics.track(self.run_statuses, lambda: len(self.agents.sessions()))
        # the largest message the server sends and receives; results must fit
        self.max_message_bytes = MAX_MESSAGE_BYTES
        # run id -> reports waiting to be stored with the run's next write
        self._lazy: dict[str, list[Event]] = {}
        self._lazy_timers: dict[str, asyncio.Handle] = {}
        # task name -> parameter schema, of agents seen and of local plugins (see catalog)
        self._agent_schemas: dict[str, dict[str, Any]] | None = None
        self._local_schemas: dict[str, dict[str, Any]] | None = None
        # run id -> (the config mapping, its JSON) for step starts
        self._config_json: dict[str, tuple[Mapping[str, Any], str]] = {}
        # (source, file name, task schemas) -> definition, least recently used first
        self._definitions: dict[tuple[str, str, str], definition.Workflow] = {}

    # ------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Pick up every run that was going when the coordinator last stopped."""
        for agent in await self.store.agents():
            self._known_agents.add(agent.name)
            if agent.connected:
                await self.store.set_agent_connected(agent.name, False)
        started = time.monotonic()
        for record in await self.store.runs_with_status([engine.PENDING, engine.RUNNING]):
            state = await self._load(record)
            self._states[record.run_id] = state
            for step_id in state.active():
                agent = state.step(step_id).agent
                if agent != COORDINATOR:
                    # it has until the heartbeat limit to come back and say what it holds
                    self._gone_since.setdefault(agent, started)
            local = [
                Event(
                    engine.STEP_INTERRUPTED,
                    step_id,
                    state.step(step_id).attempt,
                    COORDINATOR,
                    {"reason": "the coordinator restarted while the step ran on it"},
                )
                for step_id in state.active()
                if state.step(step_id).agent == COORDINATOR
            ]
            if local:
                async with self._locks[record.run_id]:
                    await self._commit(record.run_id, local)
            log.info("run_recovered", run_id=record.run_id, status=state.status)
            self._spawn(self._advance_guarded(record.run_id))
        self._recovered.set()
        self._ticker = asyncio.create_task(self._tick())

    async def stop(self) -> None:
        """Stop the clock and local steps; everything they did is already stored."""
        if self._ticker is not None:
            self._ticker.cancel()
        for run_id in list(self._lazy):
            await self.store_waiting(run_id)
        for task, ctx in list(self._local.values()):
            ctx.stop("interrupt", "the coordinator is shutting down")
            task.cancel()
        for session in self.agents.sessions():
            session.close()
        pending = [task for task, _ in self._local.values()] + list(self._background)
        await asyncio.gather(*pending, return_exceptions=True)

    def run_statuses(self) -> list[str]:
        """Statuses of the unfinished runs; called from the metrics thread, so it only reads."""
        return [state.status for state in list(self._states.values())]

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                await self._check_clock()
            except Exception:
                log.exception("tick_failed")

    async def _check_clock(self) -> None:
        now = time.monotonic()
        for session in self.agents.sessions():
            if now - session.last_seen > self.heartbeat_timeout_s:
                log.warning(
                    "agent_silent", agent=session.name, silent_s=round(now - session.last_seen, 1)
                )
                if self.agents.remove(session):
                    self._gone_since[session.name] = session.last_seen
                    await self.store.set_agent_connected(session.name, False)
                session.close()
        lost = self._lost(now)
        wall = now_ms()
        for run_id, state in list(self._states.items()):
            wake = engine.next_wake_ms(state, self.limits)
            on_lost = bool(lost) and any(state.step(s).agent in lost for s in state.active())
            if on_lost or (wake is not None and wake <= wall):
                await self._advance_guarded(run_id)

    def _lost(self, now: float) -> frozenset[str]:
        return frozenset(
            name
            for name, since in self._gone_since.items()
            if now - since > self.heartbeat_timeout_s
        )

    # --------------------------------------------------------------- runs

    async def _load(self, record: RunRecord) -> RunState:
        # typed by the same task schemas as at submit
        # TODO: store the typed parameters with the run, so that a task schema that
        # changed since the submit cannot retype a plain scalar on recovery.
        workflow = await self._definition(record.source, record.filename, await self.catalog())
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
        """Parameter schemas of every task known here or on any agent seen.

        The agents' part is read from the store once, then kept up to date as
        agents connect: every hello is stored, so the store holds nothing more.
        """
        if self._agent_schemas is None:
            schemas: dict[str, dict[str, Any]] = {}
            for agent in await self.store.agents():
                schemas.update({name: dict(schema) for name, schema in agent.plugins.items()})
            self._agent_schemas = schemas
        if self._local_schemas is None:
            self._local_schemas = {name: cls.params_schema() for name, cls in self.plugins.items()}
        # a session registered without a hello stored (tests do that) has no schemas
        unknown = {
            name: {}
            for session in self.agents.sessions()
            for name in session.plugins
            if name not in self._agent_schemas
        }
        return {**unknown, **self._agent_schemas, **self._local_schemas}

    async def check(
        self, source: str, filename: str, inputs: Mapping[str, str]
    ) -> tuple[definition.Workflow, dict[str, Any]]:
        """Everything submit checks, without storing anything.

        Parsing a large or hostile document takes CPU time: it runs in a worker
        thread so that agents' streams and other calls are served meanwhile.
        """
        catalog = await self.catalog()
        workflow = await self._definition(source, filename, catalog)
        return await asyncio.to_thread(self._check, workflow, source, filename, inputs, catalog)

    async def _definition(
        self, source: str, filename: str, catalog: Mapping[str, Mapping[str, Any]]
    ) -> definition.Workflow:
        """A definition, parsed and checked once for the many runs submitted from it.

        Parsing a large or hostile document takes CPU time: it runs in a worker
        thread so that agents' streams and other calls are served meanwhile.
        The model is immutable, so runs share it; it is kept per source and per
        task schemas (they type its parameters). A refused one is not kept.
        """
        key = (source, filename, json.dumps(catalog, sort_keys=True))
        found = self._definitions.pop(key, None)
        if found is None:
            found = await asyncio.to_thread(definition.load, source, filename, catalog)
        self._definitions[key] = found  # the most recently used last
        while len(self._definitions) > DEFINITIONS_KEPT:
            del self._definitions[next(iter(self._definitions))]
        return found

    def _check(
        self,
        workflow: definition.Workflow,
        source: str,
        filename: str,
        inputs: Mapping[str, str],
        catalog: Mapping[str, Mapping[str, Any]],
    ) -> tuple[definition.Workflow, dict[str, Any]]:
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
        written = time.perf_counter()
        stored, created = await self.store.create_run(record, [first])
        if self.metrics is not None:
            self.metrics.store_written("create_run", time.perf_counter() - written)
        if not created:
            log.info("run_submit_deduplicated", run_id=stored.run_id)
            return stored.run_id, True
        # the run as stored: its definition, and its one event numbered 1
        state = engine.initial(stored.run_id, workflow, stored.inputs, stored.config)
        self._states[stored.run_id] = engine.apply(
            state, replace(first, seq=1, time_ms=stored.created_ms)
        )
        log.info("run_submitted", run_id=stored.run_id, workflow=workflow.name)
        await self._advance_guarded(stored.run_id)
        return stored.run_id, False

    async def cancel(self, run_id: str, reason: str = "") -> str:
        """Ask a run to stop: running steps are told, nothing new starts."""
        state = await self.run_state(run_id)
        if state.finished:
            return state.status
        async with self._locks[run_id]:
            state = self._states.get(run_id)
            if state is not None and not state.cancel_requested:
                data = {"reason": reason or "cancelled by an operator"}
                await self._commit(run_id, [Event(engine.RUN_CANCEL_REQUESTED, data=data)])
        await self.advance(run_id)
        return (await self.run_state(run_id)).status

    async def resume(self, run_id: str, from_step: str = "") -> list[str]:
        """Run a failed or cancelled run again from its first unfinished step."""
        async with self._locks[run_id]:
            state = await self.run_state(run_id)
            rerun = engine.resume_plan(state, from_step)
            self._states[run_id] = state
            data = {"rerun": rerun, "from_step": from_step}
            await self._commit(run_id, [Event(engine.RUN_RESUMED, data=data)])
        log.info("run_resumed", run_id=run_id, rerun=rerun)
        await self.advance(run_id)
        return rerun

    async def advance(self, run_id: str) -> None:
        """Commit whatever the engine decides until it has nothing more to do."""
        async with self._locks[run_id]:
            settled = False
            while not settled and (state := self._states.get(run_id)) is not None:
                events, settled = self._decisions(state)
                if events:
                    await self._commit(run_id, events)

    def _decisions(self, state: RunState) -> tuple[list[Event], bool]:
        """What the engine decides, round after round, until it has nothing more to add.

        The rounds see the same agents, clock and lost agents; each round's
        dispatches count towards the agents' load in the next. Also says
        whether the engine had nothing more to add within MAX_ROUNDS.
        """
        lost = self._lost(time.monotonic())
        now = now_ms()
        views = self.agents.views()
        decided: list[Event] = []
        for _ in range(MAX_ROUNDS):
            events = engine.decide(state, views, now, lost, self.limits)
            if not events:
                return decided, True
            decided += events
            if all(event.type in engine.QUIESCENT for event in events):
                return decided, True  # another round would find nothing (the usual case)
            state = engine.replay(state, _stamped(events, now))
            if state.finished:
                return decided, True
            extra = Counter(e.agent for e in events if e.type == engine.STEP_DISPATCHED)
            if extra:
                views = [replace(v, running=v.running + extra[v.name]) for v in views]
        return decided, False

    async def _advance_guarded(self, run_id: str) -> None:
        """advance, for loops over many runs: one run's fault must not stop the others
        (nor an agent's connection, nor a submit that is already stored)."""
        try:
            await self.advance(run_id)
        except Exception:
            log.exception("advance_failed", run_id=run_id)

    async def _commit(self, run_id: str, events: list[Event]) -> RunState:
        """Store events, apply them, carry out their effects. Caller holds the run lock.

        Reports of the run still waiting to be stored go first, in arrival order.
        """
        before = self._states[run_id]
        events = [*self._take_lazy(run_id, before), *events]
        if not events:
            return before
        status = engine.status_after(before.status, events)
        written = time.perf_counter()
        stored = await self.store.append(run_id, events, status)
        if self.metrics is not None:
            self.metrics.store_written("append", time.perf_counter() - written)
        state = engine.replay(before, stored)
        self._states[run_id] = state
        self.notifier.notify(run_id)
        if self.metrics is not None:
            try:
                self.metrics.committed(before, state, stored)
            except Exception:
                # counting is not worth a commit: the history is stored, carry on
                log.exception("metrics_update_failed", run_id=run_id)

        for event in stored:
            self._log_event(run_id, event)
            if event.type == engine.STEP_DISPATCHED:
                self._start_step(run_id, event)
            elif event.type == engine.STEP_FAILED and event.data.get("abandon"):
                step = state.workflow.step(event.step_id)
                final = state.step(event.step_id).tries >= step.retry.attempts
                self._stop_attempt(
                    run_id, event.step_id, before.step(event.step_id), "abandoned", final
                )
            elif event.type == engine.RUN_CANCEL_REQUESTED:
                for step_id in state.active():
                    self._stop_attempt(run_id, step_id, state.step(step_id), "run cancelled", True)
            elif event.type == engine.STEP_MESSAGE:
                self._deliver_waiting(run_id, str(event.data["topic"]))
            elif event.type == engine.RUN_CONFIG_UPDATED:
                self._push_config(run_id, state)
        if state.finished:
            self._states.pop(run_id, None)
            self._locks.pop(run_id, None)
            self._receivers.pop(run_id, None)
            self._config_json.pop(run_id, None)
        return state

    # ---------------------------------------------------- lingering reports

    def _linger(self, run_id: str, event: Event) -> None:
        """Keep a report to be stored with the run's next write, at the latest in LINGER_S."""
        waiting = self._lazy.setdefault(run_id, [])
        timer = self._lazy_timers.get(run_id)
        loop = asyncio.get_running_loop()
        if event.type == engine.STEP_STARTED:
            if timer is None:
                self._lazy_timers[run_id] = loop.call_later(
                    LINGER_S, lambda: self._spawn(self.store_waiting(run_id))
                )
        elif timer is None or isinstance(timer, asyncio.TimerHandle):
            # progress and log lines are for people watching: stored at once (with
            # whatever else waits), not held back for a result that may be far off
            if timer is not None:
                timer.cancel()
            self._lazy_timers[run_id] = loop.call_soon(
                lambda: self._spawn(self.store_waiting(run_id))
            )
        if event.type == engine.STEP_PROGRESS:
            waiting[:] = [
                e
                for e in waiting
                if not (
                    e.type == engine.STEP_PROGRESS
                    and (e.step_id, e.attempt) == (event.step_id, event.attempt)
                )
            ]
        waiting.append(event)

    def _take_lazy(self, run_id: str, state: RunState) -> list[Event]:
        """The run's waiting reports that still belong to the attempts the run waits for."""
        taken = []
        timer = self._lazy_timers.pop(run_id, None)
        if timer is not None:
            timer.cancel()  # stored now, with this write
        for event in self._lazy.pop(run_id, ()):
            if engine.judge(state, event.agent, event.step_id, event.attempt) != engine.ACCEPT:
                continue  # the attempt ended or was given up on while the report waited
            if event.type == engine.STEP_STARTED:
                if state.step(event.step_id).status != engine.DISPATCHED:
                    continue
                state = engine.replay(state, [event])
            taken.append(event)
        return taken

    async def store_waiting(self, run_id: str) -> None:
        """Store now the run's reports that wait for its next write."""
        if run_id not in self._lazy:
            return  # stored with another write already
        async with self._locks[run_id]:
            if run_id in self._states and self._lazy.get(run_id):
                await self._commit(run_id, [])
            else:
                self._lazy.pop(run_id, None)
                self._lazy_timers.pop(run_id, None)

    def _log_event(self, run_id: str, event: Event) -> None:
        if event.type in (engine.STEP_PROGRESS, engine.STEP_LOG):
            return
        # all three given, even when empty: a local step's bound context must not leak in
        fields = {
            "step_id": event.step_id or None,
            "attempt": event.attempt or None,
            "agent": event.agent or None,
        }
        if event.type in (engine.STEP_FAILED, engine.RUN_FAILED, engine.STEP_INTERRUPTED):
            reason = (
                event.data.get("error") or event.data.get("reason") or event.data.get("step_id")
            )
            log.warning(event.type, run_id=run_id, reason=reason, **fields)
        elif event.type in ROUTINE_EVENTS:
            log.debug(event.type, run_id=run_id, **fields)
        else:
            log.info(event.type, run_id=run_id, **fields)

    def _start_step(self, run_id: str, event: Event) -> None:
        key = (run_id, event.step_id, event.attempt)
        task_name = str(event.data["task"])
        params = dict(event.data.get("params", {}))
        final = bool(event.data.get("final", True))
        if event.agent == COORDINATOR:
            self._run_local(key, task_name, params, final)
            return
        session = self.agents.get(event.agent)
        if session is None or session.closed:
            # The agent left between the decision and now; its hello will tell
            # whether it has the attempt, and reconciliation reruns it if not.
            log.warning(
                "dispatch_target_gone", run_id=run_id, step_id=event.step_id, agent=event.agent
            )
            return
        params_json = json.dumps(params)
        config_json = self._config_text(run_id)
        message = pb.CoordinatorMessage(
            start=pb.StartStep(
                ref=pb.AttemptRef(run_id=run_id, step_id=event.step_id, attempt=event.attempt),
                task=task_name,
                params_json=params_json,
                config_json=config_json,
                rollback_on_failure=final,
            )
        )
        # the texts are nearly all of it: the exact size is worked out only near the limit
        near = len(params_json) + len(config_json) > self.max_message_bytes - 65536
        if near and (size := message.ByteSize()) > self.max_message_bytes:
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

    def _config_text(self, run_id: str) -> str:
        """The run's configuration as JSON, encoded again only when it changed."""
        config = self._states[run_id].config
        cached = self._config_json.get(run_id)
        if cached is None or cached[0] is not config:
            cached = self._config_json[run_id] = (config, json.dumps(dict(config)))
        return cached[1]

    def _stop_attempt(
        self, run_id: str, step_id: str, step: engine.StepState, reason: str, rollback: bool
    ) -> None:
        """Tell whoever runs an attempt to stop it."""
        key = (run_id, step_id, step.attempt)
        if step.agent == COORDINATOR:
            local = self._local.get(key)
            if local is not None:
                task, ctx = local
                ctx.stop("cancel", reason, rollback)
                task.cancel()
            return
        session = self.agents.get(step.agent)
        if session is not None:
            session.running.discard(key)
            session.send(
                pb.CoordinatorMessage(
                    cancel=pb.CancelStep(
                        ref=pb.AttemptRef(run_id=key[0], step_id=key[1], attempt=key[2]),
                        reason=reason,
                        rollback=rollback,
                    )
                )
            )

    # ------------------------------------------------------- step reports

    async def report(
        self, agent: str, run_id: str, event: Event, implies_started: bool = False
    ) -> str:
        """Apply a report about a step attempt from an agent (or a local step).

        Returns the engine's verdict; the report is stored only when it is "accept".
        Anything else changes nothing: a report about a run that does not exist,
        or about an attempt that was never given to `agent`, is "foreign".
        A final result is stored with what the engine decides after it, and is
        stored when this returns. A started, progress or log report is kept to
        be stored with the run's next write (see LINGER_S). A final result that
        `implies_started` (a short step whose agent did not announce its start)
        is stored after the start it stands for.
        """
        if run_id not in self._states:
            # a finished or unknown run: nothing to change, whatever it says
            if await self.store.get_run(run_id) is None:
                return engine.FOREIGN
            verdict = await self._verdict_after_finish(run_id, event)
            return self._rejected(verdict, agent, run_id, event)
        if event.type in LAZY_EVENTS:
            return self._report_lazy(agent, run_id, event)
        async with self._locks[run_id]:
            state = self._states.get(run_id)
            if state is None:
                return self._rejected(engine.STALE, agent, run_id, event)
            verdict = engine.judge(state, agent, event.step_id, event.attempt)
            if verdict != engine.ACCEPT:
                return self._rejected(verdict, agent, run_id, event)
            events = [event, *self._published(state, event)]
            if implies_started and event.type in FINAL_EVENTS:
                events = [*self._implied_start(run_id, state, event), *events]
            settled = True
            if event.type in FINAL_EVENTS:
                session = self.agents.get(agent)
                if session is not None:
                    session.running.discard((run_id, event.step_id, event.attempt))
                decided, settled = self._decisions_after(state, events)
                events += decided
            await self._commit(run_id, events)
        if event.type in FINAL_EVENTS:
            self._forget_receivers(run_id, event.step_id, event.attempt)
        if not settled:
            await self.advance(run_id)
        return verdict

    async def _verdict_after_finish(self, run_id: str, event: Event) -> str:
        """A report about a run that has finished: a duplicate when its history holds
        this very result (re-sent because its acknowledgement was lost, as after a
        restart), stale otherwise (a result from an attempt the run gave up on)."""
        if event.type not in FINAL_EVENTS:
            return engine.STALE
        after = 0
        while found := await self.store.events(run_id, after):
            for stored in found:
                same = (stored.type, stored.step_id, stored.attempt, stored.agent, stored.data)
                if same == (event.type, event.step_id, event.attempt, event.agent, event.data):
                    return engine.DUPLICATE
            after = found[-1].seq
        return engine.STALE

    def _implied_start(self, run_id: str, state: RunState, event: Event) -> list[Event]:
        """The start a result stands for, unless it is known already."""
        attempt = (event.step_id, event.attempt)
        if state.step(event.step_id).status != engine.DISPATCHED or any(
            e.type == engine.STEP_STARTED and (e.step_id, e.attempt) == attempt
            for e in self._lazy.get(run_id, ())
        ):
            return []
        return [Event(engine.STEP_STARTED, event.step_id, event.attempt, event.agent)]

    def _decisions_after(self, state: RunState, events: list[Event]) -> tuple[list[Event], bool]:
        """What the engine decides once `events` apply; none if deciding fails.

        A result must be stored whatever happens: when deciding fails, the
        result is stored alone, and advancing the run is tried again after it.
        """
        try:
            return self._decisions(engine.replay(state, _stamped(events, now_ms())))
        except Exception:
            log.exception("decide_failed", run_id=state.run_id)
            return [], False

    def _report_lazy(self, agent: str, run_id: str, event: Event) -> str:
        state = self._states[run_id]
        verdict = engine.judge(state, agent, event.step_id, event.attempt)
        if verdict != engine.ACCEPT:
            return self._rejected(verdict, agent, run_id, event)
        if event.type == engine.STEP_STARTED:
            waiting = self._lazy.get(run_id, ())
            if state.step(event.step_id).status != engine.DISPATCHED or any(
                e.type == engine.STEP_STARTED
                and (e.step_id, e.attempt) == (event.step_id, event.attempt)
                for e in waiting
            ):
                return engine.DUPLICATE
        self._linger(run_id, event)
        return verdict

    def _published(self, state: RunState, event: Event) -> list[Event]:
        """An output that the step declares in `publish` also goes to its topic."""
        if event.type != engine.STEP_OUTPUT:
            return []
        step = state.workflow.step(event.step_id.split("[", 1)[0])
        topic = step.publish.get(str(event.data.get("name", "")))
        if topic is None:
            return []
        data = {"topic": topic, "payload": event.data.get("value"), "output": event.data["name"]}
        return [Event(engine.STEP_MESSAGE, event.step_id, event.attempt, event.agent, data)]

    # ------------------------------------------------------------ messages

    async def receive(
        self, agent: str, run_id: str, key: str, attempt: int, topic: str, after_index: int
    ) -> str:
        """A running step asks for the next message on a topic; answered now or on arrival."""
        state = self._states.get(run_id)
        if state is None:
            known = await self.store.get_run(run_id) is not None
            return engine.STALE if known else engine.FOREIGN
        verdict = engine.judge(state, agent, key, attempt)
        if verdict != engine.ACCEPT:
            return verdict  # foreign ones are logged by the agent service, rate-limited
        waiting = self._receivers[run_id][topic]
        waiting[:] = [r for r in waiting if (r.key, r.attempt) != (key, attempt)]
        waiting.append(Receiver(agent, key, attempt, after_index))
        self._deliver_waiting(run_id, topic)
        return verdict

    def _deliver_waiting(self, run_id: str, topic: str) -> None:
        state = self._states.get(run_id)
        waiting = self._receivers.get(run_id, {}).get(topic, [])
        if state is None or not waiting:
            return
        still = []
        for receiver in waiting:
            found = engine.next_message(state, topic, receiver.key, receiver.after_index)
            if found is None:
                still.append(receiver)
            else:
                self._deliver(run_id, receiver, topic, *found)
        waiting[:] = still

    def _deliver(
        self, run_id: str, receiver: Receiver, topic: str, index: int, payload: Any
    ) -> None:
        if receiver.agent == COORDINATOR:
            local = self._local.get((run_id, receiver.key, receiver.attempt))
            if local is not None:
                local[1].deliver(topic, index, payload)
            return
        session = self.agents.get(receiver.agent)
        if session is None:
            return  # the agent asks again after it reconnects
        ref = pb.AttemptRef(run_id=run_id, step_id=receiver.key, attempt=receiver.attempt)
        delivery = pb.Delivery(ref=ref, topic=topic, index=index, payload_json=json.dumps(payload))
        session.send(pb.CoordinatorMessage(delivery=delivery))

    def _forget_receivers(self, run_id: str, key: str, attempt: int) -> None:
        for waiting in self._receivers.get(run_id, {}).values():
            waiting[:] = [r for r in waiting if (r.key, r.attempt) != (key, attempt)]

    # ------------------------------------------------- config and signals

    async def update_config(self, run_id: str, key: str, value: Any) -> dict[str, Any]:
        """Change one key of a running run's configuration and push it to its steps."""
        state = await self.run_state(run_id)
        if state.finished:
            raise engine.ResumeError(f"run {run_id} is {state.status}; its configuration is final")
        async with self._locks[run_id]:
            config = {**self._states[run_id].config, key: value}
            data = {"key": key, "value": value, "config": config}
            await self._commit(run_id, [Event(engine.RUN_CONFIG_UPDATED, data=data)])
        await self.advance(run_id)
        return config

    def _push_config(self, run_id: str, state: RunState) -> None:
        message = pb.CoordinatorMessage(
            config=pb.ConfigUpdate(run_id=run_id, config_json=json.dumps(dict(state.config)))
        )
        told = set()
        for key in state.active():
            agent = state.step(key).agent
            if agent == COORDINATOR:
                local = self._local.get((run_id, key, state.step(key).attempt))
                if local is not None:
                    local[1].update_config(state.config)
            elif agent not in told and (session := self.agents.get(agent)) is not None:
                session.send(message)
                told.add(agent)

    async def signal(self, run_id: str, name: str, payload: Any) -> list[str]:
        """Record a signal for a run; wait steps for it go on."""
        state = await self.run_state(run_id)
        if state.finished:
            raise engine.ResumeError(f"run {run_id} is {state.status}; it takes no signals")
        waiting = [
            s.id
            for s in state.workflow.steps
            if s.wait is not None
            and s.wait.signal == name
            and state.step(s.id).status == "waiting"
        ]
        async with self._locks[run_id]:
            data = {"name": name, "payload": payload}
            await self._commit(run_id, [Event(engine.RUN_SIGNALLED, data=data)])
        await self.advance(run_id)
        return waiting

    # TODO: coalesce progress reports before storing them; each is an event in the history now.
    def _rejected(self, verdict: str, agent: str, run_id: str, event: Event) -> str:
        """Log a report that changes nothing.

        A re-sent duplicate is routine; a stale result (from an attempt given
        up on) is worth a warning. Foreign reports are logged by the agent
        service, which rate-limits a flood of them.
        """
        if verdict == engine.FOREIGN:
            return verdict
        if event.type in (engine.STEP_PROGRESS, engine.STEP_LOG):
            return verdict  # chatter from an attempt the run has moved past
        level = "debug" if verdict == engine.DUPLICATE else "warning"
        getattr(log, level)(
            "report_rejected",
            verdict=verdict,
            run_id=run_id,
            step_id=event.step_id,
            attempt=event.attempt,
            agent=agent,
            type=event.type,
        )
        return verdict

    def _run_local(
        self, key: AttemptKey, task_name: str, params: dict[str, Any], final: bool
    ) -> None:
        run_id, step_id, attempt = key
        queue: asyncio.Queue[Report | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        ctx = StepContext(
            run_id=run_id,
            step_id=step_id,
            attempt=attempt,
            host=COORDINATOR,
            config=self._states[run_id].config,
            scratch_dir=self.scratch_root / run_id / f"{step_id}-{attempt}",
            report=lambda item: loop.call_soon_threadsafe(queue.put_nowait, item),
            state_dir=self.scratch_root / "state",
        )

        async def forward() -> None:
            while (item := await queue.get()) is not None:
                if item[0] == "receive":
                    await self.receive(COORDINATOR, run_id, step_id, attempt, item[1], item[2])
                else:
                    await self.report(COORDINATOR, run_id, report_event(key, COORDINATOR, item))

        async def run() -> None:
            # everything logged while the step runs, by the plugin too, says which step it is
            structlog.contextvars.bind_contextvars(
                run_id=run_id, step_id=step_id, attempt=attempt, agent=COORDINATOR
            )
            forwarder = asyncio.create_task(forward())
            try:
                await self.report(
                    COORDINATOR, run_id, Event(engine.STEP_STARTED, step_id, attempt, COORDINATOR)
                )
                outcome = await execute(self.plugins[task_name](), ctx, params, final)
                # reports from worker threads were queued before execute returned
                queue.put_nowait(None)
                await forwarder
                if outcome.error == "interrupted":
                    return  # the coordinator is stopping; the restart reruns the step
                outcome = _storable(outcome, self.max_message_bytes)
                await self.report(COORDINATOR, run_id, outcome_event(key, COORDINATOR, outcome))
            finally:
                forwarder.cancel()
                self._local.pop(key, None)

        self._local[key] = (asyncio.create_task(run()), ctx)

    # ------------------------------------------------------------- agents

    async def agent_connected(self, session: AgentSession, hello: pb.Hello) -> None:
        """Reconcile what the agent says it has, then make it available for steps."""
        await self._recovered.wait()
        running = {(r.run_id, r.step_id, r.attempt) for r in hello.running}
        held = {(r.run_id, r.step_id, r.attempt) for r in hello.held}
        session.running = set(running)
        reason = f"agent {session.name} came back without the attempt"
        for run_id in list(self._states):
            if not any(
                self._states[run_id].step(step_id).agent == session.name
                for step_id in self._states[run_id].active()
            ):
                continue
            # judged under the run's lock: a result stored meanwhile ends the attempt
            async with self._locks[run_id]:
                state = self._states.get(run_id)
                if state is None:
                    continue  # the run finished meanwhile
                lost = [
                    Event(
                        engine.STEP_INTERRUPTED,
                        step_id,
                        state.step(step_id).attempt,
                        session.name,
                        {"reason": reason},
                    )
                    for step_id in state.active()
                    if state.step(step_id).agent == session.name
                    and (run_id, step_id, state.step(step_id).attempt) not in running | held
                ]
                if lost:
                    await self._commit(run_id, lost)
            if run_id not in self._states:
                self._locks.pop(run_id, None)

        old = self.agents.add(session)
        self._gone_since.pop(session.name, None)
        if self.metrics is not None:
            self.metrics.agent_connected(reconnect=session.name in self._known_agents)
        self._known_agents.add(session.name)
        if old is not None:
            # TODO: two live agents given one name (possible without TLS) replace each
            # other in turn and their steps run again; a duplicate should be refused.
            log.warning("agent_replaced", agent=session.name)
            old.close()
        schemas = _schemas(hello)
        if self._agent_schemas is not None:
            self._agent_schemas.update(schemas)
        await self.store.save_agent(
            AgentRecord(
                name=session.name,
                labels=session.labels,
                plugins=schemas,
                version=session.version,
                connected=True,
            )
        )
        log.info(
            "agent_connected",
            agent=session.name,
            labels=session.labels,
            running=len(running),
            held=len(held),
        )
        await self._stop_unwanted(session, running)
        for run_id in list(self._states):
            await self._advance_guarded(run_id)

    async def _stop_unwanted(self, session: AgentSession, running: set[AttemptKey]) -> None:
        """Attempts an agent still runs that no run waits for any more are stopped."""
        for key in running:
            state = self._states.get(key[0])
            verdict = engine.judge(state, session.name, key[1], key[2]) if state else engine.STALE
            if verdict in (engine.STALE, engine.FOREIGN):
                log.warning(
                    "stale_attempt_stopped",
                    agent=session.name,
                    run_id=key[0],
                    step_id=key[1],
                    attempt=key[2],
                )
                session.running.discard(key)
                ref = pb.AttemptRef(run_id=key[0], step_id=key[1], attempt=key[2])
                session.send(
                    pb.CoordinatorMessage(cancel=pb.CancelStep(ref=ref, reason="superseded"))
                )

    async def agent_disconnected(self, session: AgentSession) -> None:
        if self.agents.remove(session):
            self._gone_since[session.name] = time.monotonic()
            await self.store.set_agent_connected(session.name, False)
            log.info("agent_disconnected", agent=session.name)


def _storable(outcome: Outcome, limit_bytes: int) -> Outcome:
    """A local step's outcome held to the rules of the wire: it is read through it."""
    checked, text = for_wire(outcome, limit_bytes)
    return replace(checked, outputs=json.loads(text))


def _schemas(hello: pb.Hello) -> dict[str, dict[str, Any]]:
    return {info.name: json.loads(info.params_schema_json or "{}") for info in hello.plugins}


def _stamped(events: list[Event], time_ms: int) -> list[Event]:
    """Events as the store will number them, near enough: at this time, for deciding ahead.

    The engine reads event times (when a step began waiting, when it
    finished): events applied before they are stored need one.
    """
    return [replace(event, time_ms=time_ms) for event in events]


def report_event(key: AttemptKey, agent: str, item: Report) -> Event:
    """The history event for what a running step reported (all but receive requests)."""
    _, step_id, attempt = key
    kind, first, second = item
    if kind == "progress":
        data = {"fraction": wire.fraction(first), "message": wire.clean_text(second)}
        return Event(engine.STEP_PROGRESS, step_id, attempt, agent, data)
    if kind == "message":
        return Event(
            engine.STEP_MESSAGE, step_id, attempt, agent, {"topic": first, "payload": second}
        )
    if kind == "output":
        return Event(engine.STEP_OUTPUT, step_id, attempt, agent, {"name": first, "value": second})
    data = {"level": wire.level(first), "message": wire.clean_text(second)}
    return Event(engine.STEP_LOG, step_id, attempt, agent, data)


def outcome_event(key: AttemptKey, agent: str, outcome: Outcome) -> Event:
    _, step_id, attempt = key
    if outcome.ok:
        data = {"outputs": outcome.outputs, "path": outcome.path}
        return Event(engine.STEP_SUCCEEDED, step_id, attempt, agent, data)
    if outcome.error == "interrupted":
        return Event(engine.STEP_INTERRUPTED, step_id, attempt, agent, {"reason": outcome.message})
    data: dict[str, Any] = {
        "error": outcome.error,
        "message": outcome.message,
        "retryable": outcome.retryable,
        "rolled_back": outcome.rolled_back,
    }
    if outcome.details is not None:
        data["details"] = outcome.details
    return Event(engine.STEP_FAILED, step_id, attempt, agent, data)
