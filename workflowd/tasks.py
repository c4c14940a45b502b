"""The task-plugin SDK: the base class plugins derive from, the step context, the registry.

A plugin is a `Task` subclass registered under the entry-point group
`workflow.tasks`. Its `Params` model is its parameter schema; its `Outputs`
model, when given, is its output schema. `run` does the work; `check`, when a
plugin defines it, recognises work already done; `rollback` compensates.
Each of the three may be a plain function (run in a worker thread, so it may
block) or a coroutine function.
"""

from __future__ import annotations

import asyncio
import copy
import fnmatch
import functools
import threading
import time
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import structlog
from pydantic import BaseModel, ConfigDict

from workflowd import logs
from workflowd.errors import TaskError, WorkflowError

ENTRY_POINT_GROUP = "workflow.tasks"
PROGRESS_INTERVAL_S = 0.1

# What an agent runs when its configuration says nothing: the built-in plugins
# that neither run commands nor change the host.
SAFE_PLUGINS = ("noop", "sleep", "files.manifest", "manifest.compare")

log = structlog.get_logger()


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Cancelled(WorkflowError):  # noqa: N818 - a control-flow signal, not an error
    """Raised by `StepContext.raise_if_cancelled` once the step is cancelled."""

    code = "cancelled"


class Task:
    """Base class of task plugins. Subclasses set `name` and implement `run`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]] = NoParams
    Outputs: ClassVar[type[BaseModel] | None] = None
    # Plugins that run arbitrary commands or code set this: a host runs them
    # only when its allow-list names them exactly, never through a glob.
    requires_explicit_allow: ClassVar[bool] = False

    def run(self, ctx: StepContext, params: Any) -> Any:
        raise NotImplementedError

    def check(self, ctx: StepContext, params: Any) -> Any:
        """Return outputs when the desired state is already in place, else None."""
        return None

    def rollback(self, ctx: StepContext, params: Any) -> None:
        """Undo what `run` did. Called when the step fails for good."""

    @classmethod
    def has_check(cls) -> bool:
        return cls.check is not Task.check

    @classmethod
    def has_rollback(cls) -> bool:
        return cls.rollback is not Task.rollback

    @classmethod
    def params_schema(cls) -> dict[str, Any]:
        return copy.deepcopy(_json_schema(cls.Params))

    @classmethod
    def outputs_schema(cls) -> dict[str, Any]:
        if cls.Outputs is None:
            return {"type": "object"}
        return cls.Outputs.model_json_schema()


@functools.cache
def _json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A model's JSON Schema, worked out once: pydantic builds it anew on every call."""
    return model.model_json_schema()


# What a running step reports to its host, as (kind, a, b):
#   ("progress", fraction, message)   ("log", level, message)
#   ("message", topic, payload)       ("output", name, value)
#   ("receive", topic, after_index)   a request for the next message on a topic
Report = tuple[str, Any, Any]


class StepContext:
    """What a plugin sees of the step it runs. Safe to use from worker threads.

    Plugins read `run_id`, `step_id`, `attempt`, `host`, `labels`, `config`,
    `scratch_dir` (this attempt's own directory), `state_dir` (kept by the host
    across steps), `log`, and call `progress`, `send`, `receive`,
    `set_output`, `wait_config_change` and `raise_if_cancelled`. The host
    calls `stop`, `update_config` and `deliver`.
    """

    def __init__(
        self,
        run_id: str,
        step_id: str,
        attempt: int,
        host: str,
        config: Mapping[str, Any],
        scratch_dir: Path,
        report: Callable[[Report], None],
        labels: Mapping[str, str] | None = None,
        state_dir: Path | None = None,
    ) -> None:
        self.run_id = run_id
        self.step_id = step_id
        self.attempt = attempt
        self.host = host
        self.labels = MappingProxyType(dict(labels or {}))
        self._scratch_dir = scratch_dir
        self._state_dir = state_dir or scratch_dir
        self._made: set[Path] = set()
        self.report = report
        self.cancelled = threading.Event()
        # why the step is being stopped: "cancel" (rolls back when asked) or
        # "interrupt" (the host shuts down; the step will run again elsewhere)
        self.stop_reason = ""
        self.stop_reason_text = ""
        self.rollback_on_cancel = True
        self._changed = threading.Condition()
        self._config: Mapping[str, Any] = MappingProxyType(dict(config))
        self._config_version = 0
        self._inbox: dict[str, list[tuple[int, Any]]] = {}
        self._after: dict[str, int] = {}
        self._asking: set[str] = set()
        self._last_progress_s = 0.0
        self.log = StepLogger(self)

    # -- directories, made when a plugin first asks for them

    @property
    def scratch_dir(self) -> Path:
        """This attempt's own directory (most steps never need one: made on first use)."""
        return self._made_dir(self._scratch_dir)

    @property
    def state_dir(self) -> Path:
        """A directory the host keeps across steps."""
        return self._made_dir(self._state_dir)

    def _made_dir(self, path: Path) -> Path:
        if path not in self._made:
            path.mkdir(parents=True, exist_ok=True)
            self._made.add(path)
        return path

    # -- progress and outputs

    def progress(self, fraction: float | None, message: str = "") -> None:
        """Report how far the step is, 0..1 (None when unknown). Rate-limited."""
        now = time.monotonic()
        done = fraction is not None and fraction >= 1.0
        if not done and now - self._last_progress_s < PROGRESS_INTERVAL_S:
            return
        self._last_progress_s = now
        value = -1.0 if fraction is None else min(max(float(fraction), 0.0), 1.0)
        self.report(("progress", value, message))

    def set_output(self, name: str, value: Any) -> None:
        """Set one output now, before the step ends; a step may publish it to a topic."""
        self.report(("output", name, value))

    # -- live configuration

    @property
    def config(self) -> Mapping[str, Any]:
        """The run's configuration as it is now."""
        return self._config

    def wait_config_change(self, timeout_s: float | None = None) -> Mapping[str, Any] | None:
        """Block until the run's configuration changes; the new one, or None on timeout."""
        with self._changed:
            seen = self._config_version
            changed = self._changed.wait_for(
                lambda: self._config_version != seen or self.cancelled.is_set(), timeout_s
            )
            self.raise_if_cancelled()
            return self._config if changed else None

    async def config_changed(self, timeout_s: float | None = None) -> Mapping[str, Any] | None:
        """`wait_config_change` for async plugins."""
        return await asyncio.to_thread(self.wait_config_change, timeout_s)

    def update_config(self, config: Mapping[str, Any]) -> None:
        with self._changed:
            self._config = MappingProxyType(dict(config))
            self._config_version += 1
            self._changed.notify_all()

    # -- messages

    def send(self, topic: str, payload: Any) -> None:
        """Send a message to a topic of this run; any other step may receive it."""
        self.report(("message", topic, payload))

    def receive(self, topic: str, timeout_s: float | None = None) -> Any:
        """The next message on a topic that this step did not send, waiting for one.

        Each step receives each message of a topic once, in order, including
        messages sent before it started. Raises TaskError on timeout.
        """
        with self._changed:
            if not self._inbox.get(topic) and topic not in self._asking:
                self._asking.add(topic)
                self.report(("receive", topic, self._after.get(topic, 0)))
            arrived = self._changed.wait_for(
                lambda: bool(self._inbox.get(topic)) or self.cancelled.is_set(), timeout_s
            )
            self.raise_if_cancelled()
            if not arrived:
                raise TaskError(f"no message on topic {topic!r} within {timeout_s:g}s")
            _, payload = self._inbox[topic].pop(0)
            return payload

    async def areceive(self, topic: str, timeout_s: float | None = None) -> Any:
        """`receive` for async plugins."""
        return await asyncio.to_thread(self.receive, topic, timeout_s)

    def deliver(self, topic: str, index: int, payload: Any) -> None:
        """A message arrived for this step (called by the host)."""
        with self._changed:
            if index <= self._after.get(topic, 0):
                return  # delivered twice, across a reconnect
            self._after[topic] = index
            self._asking.discard(topic)
            self._inbox.setdefault(topic, []).append((index, payload))
            self._changed.notify_all()

    def pending_receives(self) -> list[tuple[str, int]]:
        """(topic, last index received) of every receive still waiting: to ask again."""
        with self._changed:
            return [(topic, self._after.get(topic, 0)) for topic in sorted(self._asking)]

    # -- stopping

    def stop(self, reason: str, text: str = "", rollback: bool = True) -> None:
        """Ask the plugin to stop (from the host, not from plugins)."""
        self.stop_reason = reason
        self.stop_reason_text = text or reason
        self.rollback_on_cancel = rollback
        self.cancelled.set()
        with self._changed:
            self._changed.notify_all()

    def raise_if_cancelled(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled(f"step {self.step_id} was cancelled")


class StepLogger:
    """Logs locally through structlog and into the run's history."""

    def __init__(self, ctx: StepContext) -> None:
        self._ctx = ctx
        self._local = log.bind(run_id=ctx.run_id, step_id=ctx.step_id, agent=ctx.host)

    def _emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        getattr(self._local, level)(event, **fields)
        # the run's history is a log too: secrets stay out of it
        shown = logs.redact(None, level, dict(fields))
        text = " ".join([event, *(f"{k}={v}" for k, v in shown.items())])
        self._ctx.report(("log", level, text))

    def debug(self, event: str, **fields: Any) -> None:
        self._emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit("error", event, fields)


def installed_plugins() -> frozenset[str]:
    """Names of every plugin installed here, allowed or not."""
    return frozenset(entry.name for entry in entry_points(group=ENTRY_POINT_GROUP))


def allows(allow: tuple[str, ...], name: str, explicit_only: bool) -> bool:
    """Whether an allow-list admits a plugin: by glob, or by exact name when it must be."""
    if explicit_only:
        return name in allow
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in allow)


def load_plugins(allow: tuple[str, ...] = ("*",)) -> dict[str, type[Task]]:
    """Installed plugins that the `allow` globs admit.

    A plugin that requires an explicit allow (one that runs commands) is
    admitted only when `allow` names it exactly: `*` does not let it in.
    """
    plugins: dict[str, type[Task]] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if not allows(allow, entry.name, explicit_only=False):
            continue
        try:
            cls = entry.load()
        except Exception:
            log.exception("plugin_load_failed", plugin=entry.name, target=entry.value)
            continue
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            log.error("plugin_not_a_task", plugin=entry.name, target=entry.value)
            continue
        if cls.requires_explicit_allow and not allows(allow, entry.name, explicit_only=True):
            log.info("plugin_needs_explicit_allow", plugin=entry.name)
            continue
        plugins[entry.name] = cls
    return plugins
