"""Running one step through its plugin: check, run, check again, and each way it can fail."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from workflowd.errors import TaskError
from workflowd.execution import Outcome, execute
from workflowd.tasks import Report, StepContext, Task


def make_ctx(scratch: Path, reports: list[Report] | None = None) -> StepContext:
    sink = reports if reports is not None else []
    return StepContext("run-1", "step-1", 1, "host-a", {}, scratch, report=sink.append)


def run_step(task: Task, scratch: Path, params: dict[str, Any] | None = None) -> Outcome:
    return asyncio.run(execute(task, make_ctx(scratch), params or {}))


# ------------------------------------------------------------------ test plugins


class MarkerParams(BaseModel):
    name: str


class MarkerOutputs(BaseModel):
    marker: str


class Marker(Task):
    """Makes sure a marker file exists; its check finds it when it is there."""

    name = "test.marker"
    Params = MarkerParams
    Outputs = MarkerOutputs

    def __init__(self) -> None:
        self.runs = 0

    def _path(self, ctx: StepContext, params: MarkerParams) -> Path:
        return ctx.scratch_dir / params.name

    def check(self, ctx: StepContext, params: MarkerParams) -> dict | None:
        path = self._path(ctx, params)
        return {"marker": path.read_text()} if path.exists() else None

    def run(self, ctx: StepContext, params: MarkerParams) -> dict:
        self.runs += 1
        self._path(ctx, params).write_text(f"made by run {self.runs}")
        return {"marker": f"made by run {self.runs}"}


class Forgetful(Task):
    """Its run claims success, but its check never finds the result."""

    name = "test.forgetful"

    def check(self, ctx: StepContext, params: BaseModel) -> None:
        return None

    def run(self, ctx: StepContext, params: BaseModel) -> dict:
        return {"done": True}


class Refuses(Task):
    name = "test.refuses"

    def __init__(self, details: object) -> None:
        self.details = details

    def run(self, ctx: StepContext, params: BaseModel) -> dict:
        raise TaskError("disk /data is full on host-a", details=self.details)


class Crashes(Task):
    name = "test.crashes"

    def run(self, ctx: StepContext, params: BaseModel) -> dict:
        return {"value": {}["missing"]}


class Threads(Task):
    """Records the thread its run executes in."""

    name = "test.threads"

    def run(self, ctx: StepContext, params: BaseModel) -> dict:
        return {"thread": threading.get_ident()}


class AsyncThreads(Task):
    name = "test.async"

    async def check(self, ctx: StepContext, params: BaseModel) -> dict | None:
        return None if not (ctx.scratch_dir / "done").exists() else {"thread": 0}

    async def run(self, ctx: StepContext, params: BaseModel) -> dict:
        await asyncio.sleep(0)
        (ctx.scratch_dir / "done").touch()
        return {"thread": threading.get_ident()}


class CountParams(BaseModel):
    class Limits(BaseModel):
        cpu: int

    count: int
    label: str
    limits: Limits | None = None


class Counts(Task):
    name = "test.counts"
    Params = CountParams

    def run(self, ctx: StepContext, params: CountParams) -> dict:
        return {"count": params.count, "label": params.label}


class CountOutputs(BaseModel):
    n: int


class Typed(Task):
    name = "test.typed"
    Outputs = CountOutputs

    def __init__(self, result: Any) -> None:
        self.result = result

    def run(self, ctx: StepContext, params: BaseModel) -> Any:
        return self.result


class Untyped(Typed):
    name = "test.untyped"
    Outputs = None


class CancelledMidway(Task):
    name = "test.cancelled"

    def run(self, ctx: StepContext, params: BaseModel) -> dict:
        ctx.cancelled.set()
        ctx.raise_if_cancelled()
        return {}


# ------------------------------------------------------------------ paths


def test_check_satisfied_skips_run(tmp_path):
    """When check finds the desired state, run is skipped and the path is "check"."""
    (tmp_path / "m").write_text("already here")
    task = Marker()

    outcome = run_step(task, tmp_path, {"name": "m"})

    assert outcome == Outcome(True, {"marker": "already here"}, path="check")
    assert task.runs == 0


def test_run_then_check_passes(tmp_path):
    """When check finds nothing, run runs, check passes after it, and its outputs are kept."""
    task = Marker()

    outcome = run_step(task, tmp_path, {"name": "m"})

    assert outcome == Outcome(True, {"marker": "made by run 1"}, path="run")
    assert task.runs == 1
    assert (tmp_path / "m").read_text() == "made by run 1"


def test_check_still_failing_after_run(tmp_path):
    """A run after which check still finds nothing fails with check_failed."""
    outcome = run_step(Forgetful(), tmp_path)

    assert not outcome.ok
    assert outcome.error == "check_failed"
    assert outcome.message == (
        "test.forgetful finished, but its check does not find the desired state"
    )


def test_task_error_gives_its_message_and_details(tmp_path):
    """A TaskError fails the step with its own message, and its details are kept."""
    outcome = run_step(Refuses({"free_bytes": 0, "path": "/data"}), tmp_path)

    assert outcome == Outcome(
        False,
        error="task_error",
        message="disk /data is full on host-a",
        retryable=True,
        details={"free_bytes": 0, "path": "/data"},
    )


def test_task_error_with_unserialisable_details(tmp_path):
    """Details that are not JSON are dropped; the message still reaches the user."""
    outcome = run_step(Refuses({"when": object()}), tmp_path)

    assert (outcome.error, outcome.message, outcome.details) == (
        "task_error",
        "disk /data is full on host-a",
        None,
    )


def test_task_error_without_details(tmp_path):
    """A TaskError without details leaves the outputs empty."""
    outcome = run_step(Refuses(None), tmp_path)

    assert (outcome.error, outcome.details) == ("task_error", None)


def test_crashing_plugin_gives_plugin_error(tmp_path):
    """An unexpected exception fails the step as plugin_error naming the exception type."""
    outcome = run_step(Crashes(), tmp_path)

    assert outcome == Outcome(
        False, error="plugin_error", message="KeyError: 'missing'", retryable=True
    )


def test_cancellation_gives_cancelled(tmp_path):
    """A plugin stopping at a cancellation fails the step as cancelled, naming the step."""
    outcome = run_step(CancelledMidway(), tmp_path)

    assert (outcome.ok, outcome.error, outcome.message) == (
        False,
        "cancelled",
        "cancelled (by the plugin): step step-1 was cancelled",
    )


# ------------------------------------------------------------------ params


def test_invalid_params_name_the_fields(tmp_path):
    """Parameters that do not fit the model fail as invalid_params naming every field."""
    outcome = run_step(Counts(), tmp_path, {"count": "many"})

    assert outcome.error == "invalid_params"
    assert outcome.message == (
        "test.counts: count: Input should be a valid integer, unable to parse string as an "
        "integer; label: Field required"
    )


def test_invalid_nested_param_names_its_path(tmp_path):
    """A bad value deep in the parameters is named by its dotted path."""
    outcome = run_step(Counts(), tmp_path, {"count": 1, "label": "x", "limits": {"cpu": "lots"}})

    assert outcome.error == "invalid_params"
    assert outcome.message.startswith("test.counts: limits.cpu: Input should be a valid integer")


def test_params_reach_the_plugin_validated(tmp_path):
    """The plugin receives its parameters parsed by its model."""
    outcome = run_step(Counts(), tmp_path, {"count": "3", "label": "x"})

    assert outcome == Outcome(True, {"count": 3, "label": "x"})


def test_unknown_params_are_refused_by_default(tmp_path):
    """A plugin without parameters refuses any it is given."""
    outcome = run_step(Threads(), tmp_path, {"colour": "red"})

    assert outcome.error == "invalid_params"
    assert outcome.message.startswith("test.threads: colour: Extra inputs are not permitted")


# ------------------------------------------------------------------ threads


def test_sync_plugin_runs_in_a_worker_thread(tmp_path):
    """A plain run function executes off the event loop's thread, so it may block."""

    async def main() -> tuple[int, Outcome]:
        return threading.get_ident(), await execute(Threads(), make_ctx(tmp_path), {})

    loop_thread, outcome = asyncio.run(main())

    assert outcome.ok
    assert outcome.outputs["thread"] != loop_thread


def test_async_plugin_runs_on_the_event_loop(tmp_path):
    """Coroutine check and run are awaited on the loop; check passes after run."""

    async def main() -> tuple[int, Outcome]:
        return threading.get_ident(), await execute(AsyncThreads(), make_ctx(tmp_path), {})

    loop_thread, outcome = asyncio.run(main())

    assert outcome == Outcome(True, {"thread": loop_thread}, path="run")


# ------------------------------------------------------------------ outputs


def test_outputs_are_validated_against_the_model(tmp_path):
    """Outputs are parsed by the Outputs model: values coerced, undeclared keys dropped."""
    outcome = run_step(Typed({"n": "3", "undeclared": 1}), tmp_path)

    assert outcome == Outcome(True, {"n": 3})


def test_outputs_model_instance_is_accepted(tmp_path):
    """A plugin may return an instance of its Outputs model."""
    outcome = run_step(Typed(CountOutputs(n=4)), tmp_path)

    assert outcome == Outcome(True, {"n": 4})


def test_outputs_not_fitting_the_model_fail_the_step(tmp_path):
    """Outputs missing a declared field fail the step as plugin_error naming the field."""
    outcome = run_step(Typed({"m": 1}), tmp_path)

    assert outcome.error == "plugin_error"
    assert outcome.message.startswith("ValidationError: 1 validation error for CountOutputs\nn\n")


def test_none_is_empty_outputs(tmp_path):
    """A plugin without an Outputs model that returns None succeeds with no outputs."""
    assert run_step(Untyped(None), tmp_path) == Outcome(True, {})


@pytest.mark.parametrize(
    ("result", "message"),
    [
        ([1, 2], "TypeError: outputs must be a mapping, got list"),
        ({"when": {1, 2}}, "TypeError: Object of type set is not JSON serializable"),
    ],
)
def test_outputs_must_be_a_json_mapping(tmp_path, result, message):
    """Outputs that are not a JSON object fail the step here, not on the wire."""
    outcome = run_step(Untyped(result), tmp_path)

    assert (outcome.error, outcome.message) == ("plugin_error", message)
