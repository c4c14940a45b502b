"""Running one step through its plugin: check, run, check again.

Shared by the agent and by the coordinator's own steps. The outcome says which
path was taken: "check" when the desired state was already in place and the
plugin's run was skipped, "run" otherwise.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from dataclasses import dataclass, field
from typing import Any

import structlog
from pydantic import BaseModel, ValidationError

from workflowd import wire
from workflowd.errors import TaskError
from workflowd.tasks import Cancelled, StepContext, Task

log = structlog.get_logger()


@dataclass(frozen=True)
class Outcome:
    ok: bool
    outputs: dict[str, Any] = field(default_factory=dict)
    path: str = "run"
    error: str = ""
    message: str = ""


async def _call(method: Any, ctx: StepContext, params: BaseModel) -> Any:
    if inspect.iscoroutinefunction(method):
        return await method(ctx, params)
    return await asyncio.to_thread(method, ctx, params)


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


async def execute(task: Task, ctx: StepContext, raw_params: dict[str, Any]) -> Outcome:
    bound = log.bind(run_id=ctx.run_id, step_id=ctx.step_id, agent=ctx.host, task=task.name)
    try:
        params = task.Params.model_validate(raw_params)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'with'}: {e['msg']}" for e in exc.errors()
        )
        return Outcome(False, error="invalid_params", message=f"{task.name}: {problems}")

    try:
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
            )
        return Outcome(True, outputs, path="run")
    except Cancelled as exc:
        return Outcome(False, error="cancelled", message=str(exc))
    except TaskError as exc:
        bound.info("task_failed", error=str(exc))
        message = str(exc)
        return Outcome(False, error="task_error", message=message, outputs=_details(exc))
    except Exception as exc:  # noqa: BLE001 - a plugin's bug fails its step, not its host
        bound.error("task_crashed", exc_info=True)
        return Outcome(False, error="plugin_error", message=f"{type(exc).__name__}: {exc}")


def _details(exc: TaskError) -> dict[str, Any]:
    if exc.details is None:
        return {}
    try:
        json.dumps(exc.details)
    except (TypeError, ValueError):
        return {}
    return {"details": exc.details}


def for_wire(outcome: Outcome, limit_bytes: int) -> tuple[Outcome, str]:
    """The outcome as it may be reported, and its outputs as JSON text.

    Outputs that are too large, too deep or not JSON turn a success into a
    failure that says so; text is made valid UTF-8 and clipped.
    """
    limit_bytes -= wire.ENVELOPE_BYTES
    message = wire.clean_text(outcome.message)
    error = wire.clean_text(outcome.error, 100)
    try:
        text = wire.encode_outputs(outcome.outputs, limit_bytes)
    except wire.WireError as exc:
        if not outcome.ok:  # a failure keeps its reason; its details are dropped
            return Outcome(False, path=outcome.path, error=error, message=message), "{}"
        code = exc.code if exc.code != wire.WireError.code else "outputs_invalid"
        return Outcome(False, path=outcome.path, error=code, message=str(exc)), "{}"
    cleaned = Outcome(outcome.ok, outcome.outputs, outcome.path, error, message)
    return cleaned, text
