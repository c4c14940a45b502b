"""Running one step through its plugin: check, run, check again, roll back on failure.

Shared by the agent and by the coordinator's own steps. The outcome says which
path was taken: "check" when the desired state was already in place and the
plugin's run was skipped, "run" otherwise. A failure of the step's last
attempt, and a cancellation, run the plugin's rollback when it has one.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import json
from dataclasses import dataclass, field, replace
from typing import Any

import structlog
from pydantic import BaseModel, ValidationError

from workflowd import wire
from workflowd.errors import TaskError
from workflowd.tasks import Cancelled, StepContext, Task

log = structlog.get_logger()

# How long a cancelled sync plugin gets to notice `ctx.cancelled` and return.
CANCEL_WAIT_S = 30.0

# Failures that trying again cannot mend.
PERMANENT = frozenset({"invalid_params", "unknown_task", "cancelled", "interrupted"})


@dataclass(frozen=True)
class Outcome:
    ok: bool
    outputs: dict[str, Any] = field(default_factory=dict)
    path: str = "run"
    error: str = ""
    message: str = ""
    retryable: bool = False
    rolled_back: bool = False
    details: Any = None


async def _call(method: Any, ctx: StepContext, params: BaseModel) -> Any:
    if inspect.iscoroutinefunction(method):
        return await method(ctx, params)
    # the thread runs in a copy of this task's context, so that structlog's bound
    # run_id, step_id and agent reach what the plugin logs from there
    context = contextvars.copy_context()
    future = asyncio.get_running_loop().run_in_executor(
        None, functools.partial(context.run, method, ctx, params)
    )
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        # A thread cannot be stopped from outside: tell the plugin, then give
        # it time to return before the step is reported as stopped.
        ctx.cancelled.set()
        try:
            await asyncio.wait_for(future, CANCEL_WAIT_S)
        except Cancelled:
            raise  # the plugin noticed, in its own words
        except Exception:  # noqa: BLE001, S110 - its outcome no longer matters; the stop does
            pass
        raise


def _outputs(task: Task, value: Any) -> dict[str, Any]:
    """Normalise what a plugin returned to a JSON-ready dict."""
    if value is None:
        value = {}
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if task.Outputs is not None:
        value = task.Outputs.model_validate(value).model_dump(mode="json")
    if not isinstance(value, dict):
        raise TypeError(f"outputs must be a mapping, got {type(value).__name__}")
    json.dumps(value)  # fail here, with the plugin named, rather than on the wire
    return value


async def _attempt(task: Task, ctx: StepContext, params: BaseModel) -> Outcome:
    if task.has_check():
        found = await _call(task.check, ctx, params)
        if found is not None:
            return Outcome(True, _outputs(task, found), path="check")

    outputs = _outputs(task, await _call(task.run, ctx, params))

    if task.has_check() and await _call(task.check, ctx, params) is None:
        return Outcome(
            False,
            error="check_failed",
            message=f"{task.name} finished, but its check does not find the desired state",
            retryable=True,
        )
    return Outcome(True, outputs, path="run")


async def execute(
    task: Task, ctx: StepContext, raw_params: dict[str, Any], rollback_on_failure: bool = False
) -> Outcome:
    """Run a step's plugin and say how it went; never raises for the plugin's faults."""
    bound = log.bind(run_id=ctx.run_id, step_id=ctx.step_id, agent=ctx.host, task=task.name)
    try:
        params = task.Params.model_validate(raw_params)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'with'}: {e['msg']}" for e in exc.errors()
        )
        return Outcome(False, error="invalid_params", message=f"{task.name}: {problems}")

    try:
        outcome = await _attempt(task, ctx, params)
    except (Cancelled, asyncio.CancelledError) as exc:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            current.uncancel()
        if ctx.stop_reason == "interrupt":
            return Outcome(False, error="interrupted", message=ctx.stop_reason_text)
        message = f"cancelled ({ctx.stop_reason_text or 'by the plugin'})"
        if isinstance(exc, Cancelled):
            message += f": {exc}"
        outcome = Outcome(False, error="cancelled", message=message)
        rollback_on_failure = ctx.rollback_on_cancel
    except TaskError as exc:
        bound.info("task_failed", error=str(exc))
        outcome = Outcome(
            False,
            error="task_error",
            message=str(exc),
            retryable=exc.retryable,
            details=_jsonable(exc.details),
        )
    except Exception as exc:  # noqa: BLE001 - a plugin's bug fails its step, not its host
        bound.error("task_crashed", exc_info=True)
        outcome = Outcome(
            False, error="plugin_error", message=f"{type(exc).__name__}: {exc}", retryable=True
        )

    if outcome.ok or not rollback_on_failure or not task.has_rollback():
        return outcome
    return await _rollback(task, ctx, params, outcome, bound)


async def _rollback(
    task: Task, ctx: StepContext, params: BaseModel, outcome: Outcome, bound: Any
) -> Outcome:
    ctx.cancelled.clear()  # the rollback itself must be allowed to run
    try:
        await _call(task.rollback, ctx, params)
    except Exception as exc:  # noqa: BLE001 - a failed rollback is reported, not raised
        bound.error("rollback_failed", exc_info=True)
        message = f"{outcome.message}\nrollback failed: {type(exc).__name__}: {exc}"
        return Outcome(False, error=outcome.error, message=message, details=outcome.details)
    bound.info("rollback_done")
    return Outcome(
        False,
        error=outcome.error,
        message=outcome.message,
        retryable=False,
        rolled_back=True,
        details=outcome.details,
    )


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return None
    return value


def for_wire(outcome: Outcome, limit_bytes: int) -> tuple[Outcome, str]:
    """The outcome as it may be reported, and its outputs as JSON text.

    Outputs that are too large, too deep or not JSON turn a success into a
    failure that says so; a failure's details that cannot go are dropped;
    text is made valid UTF-8 and clipped.
    """
    limit_bytes -= wire.ENVELOPE_BYTES
    cleaned = replace(
        outcome,
        message=wire.clean_text(outcome.message),
        error=wire.clean_text(outcome.error, 100),
    )
    if cleaned.details is not None:
        try:
            wire.encode_outputs({"details": cleaned.details}, limit_bytes // 2)
        except wire.WireError:
            cleaned = replace(cleaned, details=None)
    try:
        text = wire.encode_outputs(outcome.outputs, limit_bytes)
    except wire.WireError as exc:
        if not outcome.ok:  # a failure keeps its reason
            return replace(cleaned, outputs={}), "{}"
        code = exc.code if exc.code != wire.WireError.code else "outputs_invalid"
        return Outcome(False, path=outcome.path, error=code, message=str(exc)), "{}"
    return cleaned, text
