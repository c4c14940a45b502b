"""The task-plugin SDK: the base class plugins derive from, the step context, the registry.

A plugin is a `Task` subclass registered under the entry-point group
`workflow.tasks`. Its `Params` model is its parameter schema; its `Outputs`
model, when given, is its output schema. `run` does the work; `check`, when a
plugin defines it, recognises work already done; `rollback` compensates.
Each of the three may be a plain function (run in a worker thread, so it may
block) or a coroutine function.
"""

from __future__ import annotations

import fnmatch
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import structlog
from pydantic import BaseModel, ConfigDict

from workflowd.errors import WorkflowError

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
        return cls.Params.model_json_schema()

    @classmethod
    def outputs_schema(cls) -> dict[str, Any]:
        if cls.Outputs is None:
            return {"type": "object"}
        return cls.Outputs.model_json_schema()


# What a running step reports: ("progress", fraction, message) or ("log", level, message).
Report = tuple[str, Any, str]


@dataclass
class StepContext:
    """What a plugin sees of the step it runs. Safe to use from worker threads."""

    run_id: str
    step_id: str
    attempt: int
    host: str
    config: Mapping[str, Any]
    scratch_dir: Path
    report: Callable[[Report], None] = field(repr=False)
    cancelled: threading.Event = field(default_factory=threading.Event)
    _last_progress_s: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        self.config = MappingProxyType(dict(self.config))
        self.log = StepLogger(self)

    def progress(self, fraction: float | None, message: str = "") -> None:
        """Report how far the step is, 0..1 (None when unknown). Rate-limited."""
        now = time.monotonic()
        done = fraction is not None and fraction >= 1.0
        if not done and now - self._last_progress_s < PROGRESS_INTERVAL_S:
            return
        self._last_progress_s = now
        value = -1.0 if fraction is None else min(max(float(fraction), 0.0), 1.0)
        self.report(("progress", value, message))

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
        text = " ".join([event, *(f"{k}={v}" for k, v in fields.items())])
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
