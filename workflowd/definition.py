"""Workflow definitions: YAML text to a validated, immutable model.

Loading happens in three passes, each of which reports every problem it finds
with the file, line, column and field:

1. YAML: a safe loader that records where each value sits and refuses
   duplicate keys;
2. shape: the pydantic model below;
3. meaning: unique step ids, known dependencies without cycles, expressions
   that read only what exists before the step runs.

Checking steps against task plugins (`check_tasks`) and resolving run inputs
(`resolve_inputs`) need the coordinator's knowledge and are separate calls.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import cached_property
from typing import Annotated, Any, Literal

import jsonschema
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from workflowd import expressions
from workflowd.errors import DefinitionError, Issue

MAX_DEFINITION_BYTES = 1 << 20

_STEP_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def _step_id(value: str) -> str:
    if not _STEP_ID.match(value):
        raise ValueError(
            f"invalid step id {value!r}: use lowercase letters, digits, '-' and '_', "
            "starting with a letter or digit, at most 63 characters"
        )
    return value


StepId = Annotated[str, AfterValidator(_step_id)]

_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(ms|s|m|h|d))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float:
    """Seconds from a number of seconds or text such as `500ms`, `2s`, `1m30s`, `1h`."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or text like 2s, 1m30s, 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and _DURATION.match(value.strip()):
        parts = _DURATION_PART.findall(value.strip())
        seconds = sum(float(number) * _UNIT_S[unit] for number, unit in parts)
    else:
        raise ValueError(f"invalid duration {value!r}; use seconds or text like 2s, 1m30s, 1h")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


InputType = Literal["string", "integer", "number", "boolean", "list", "object"]


class InputSpec(_Frozen):
    type: InputType = "string"
    default: Any = None
    description: str = ""

    @property
    def required(self) -> bool:
        return "default" not in self.model_fields_set


class Placement(_Frozen):
    """Where a step runs: the coordinator, one named agent, or any agent with labels."""

    agent: Name | None = None
    labels: dict[str, str] | None = None
    all: bool = False  # with labels: one instance on every matching agent

    @model_validator(mode="before")
    @classmethod
    def _from_word(cls, value: Any) -> Any:
        if value == "coordinator" or value is None:
            return {}
        if isinstance(value, str):
            raise ValueError(
                f"unknown placement {value!r}; use coordinator, {{agent: NAME}} "
                "or {labels: {KEY: VALUE}}"
            )
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Placement:
        if self.agent is not None and self.labels is not None:
            raise ValueError("give either agent or labels, not both")
        if self.labels is not None and not self.labels:
            raise ValueError("labels needs at least one KEY: VALUE")
        if self.all and self.labels is None:
            raise ValueError("all: true fans out over labels; give labels: {KEY: VALUE}")
        return self

    @property
    def on_coordinator(self) -> bool:
        return self.agent is None and self.labels is None

    def describe(self) -> str:
        if self.agent is not None:
            return f"agent {self.agent}"
        if self.labels is not None:
            labels = ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()))
            return f"every agent with {labels}" if self.all else f"labels {labels}"
        return "coordinator"


class RetryPolicy(_Frozen):
    """How often a failing step is tried, and how long to wait between tries.

    The wait doubles from `backoff` up to `max_backoff`, with jitter.
    """

    attempts: int = Field(default=1, ge=1, le=100)
    backoff: Duration = 1.0
    max_backoff: Duration = 60.0


class Wait(_Frozen):
    """A step that runs nothing: it pauses its branch until a signal arrives."""

    signal: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,100}$")]
    timeout: Duration | None = None


class Strategy(_Frozen):
    """How a fan-out step rolls over its agents."""

    max_parallel: int | None = Field(default=None, ge=1)
    max_failures: int = Field(default=0, ge=0)


Topic = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:/-]{1,200}$")]


class Step(_Frozen):
    id: StepId
    task: Name | None = None
    wait: Wait | None = None
    description: str = ""
    on: Placement = Field(default_factory=Placement)
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    needs: tuple[StepId, ...] | None = None
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    timeout: Duration | None = None
    when: str | bool | None = None
    publish: dict[str, Topic] = Field(default_factory=dict)  # output name -> topic
    strategy: Strategy | None = None

    @field_validator("timeout")
    @classmethod
    def _positive(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError("timeout must be longer than zero")
        return value

    @field_validator("when")
    @classmethod
    def _condition(cls, value: str | bool | None) -> str | bool | None:
        if isinstance(value, str) and not re.fullmatch(r"\s*\$\{\{.*\}\}\s*", value, re.DOTALL):
            raise ValueError("when is one expression, written ${{ ... }}")
        return value

    @model_validator(mode="after")
    def _kind(self) -> Step:
        if (self.task is None) == (self.wait is None):
            raise ValueError("a step has either task: PLUGIN or wait: {signal: NAME}")
        if self.wait is not None and (self.with_ or self.publish or not self.on.on_coordinator):
            raise ValueError("a wait step takes no with, publish or on")
        if self.strategy is not None and not self.on.all:
            raise ValueError("strategy applies to fan-out steps (on: {labels: ..., all: true})")
        return self

    @cached_property
    def fans_out(self) -> bool:
        return self.on.all


class Workflow(_Frozen):
    name: Name
    description: str = ""
    inputs: dict[
        Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], InputSpec
    ] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)
    steps: tuple[Step, ...]

    @field_validator("steps")
    @classmethod
    def _not_empty(cls, steps: tuple[Step, ...]) -> tuple[Step, ...]:
        if not steps:
            raise ValueError("a workflow needs at least one step")
        return steps

    # Lookups built once per definition: the engine asks them for every step
    # on every decision. (A duplicate id is refused later, with its place in
    # the file; until then the first step with the id counts.)

    @cached_property
    def step_ids(self) -> frozenset[str]:
        return frozenset(step.id for step in self.steps)

    @cached_property
    def _by_id(self) -> dict[str, Step]:
        found: dict[str, Step] = {}
        for step in self.steps:
            found.setdefault(step.id, step)
        return found

    @cached_property
    def _needs(self) -> dict[str, tuple[str, ...]]:
        found: dict[str, tuple[str, ...]] = {}
        for index, step in enumerate(self.steps):
            previous = (self.steps[index - 1].id,) if index else ()
            found.setdefault(step.id, step.needs if step.needs is not None else previous)
        return found

    @cached_property
    def task_steps(self) -> tuple[tuple[str, Step], ...]:
        """(id, step) of the steps that run as one attempt: not wait steps, not fan-outs."""
        return tuple((s.id, s) for s in self.steps if s.task is not None and not s.on.all)

    @cached_property
    def plan(self) -> tuple[tuple[str, Step, bool, bool, tuple[str, ...]], ...]:
        """(id, step, fans out, runs a task, needs) of every step, in order, for hot loops."""
        return tuple(
            (s.id, s, s.on.all, s.task is not None, self._needs[s.id]) for s in self.steps
        )

    @cached_property
    def fanout_steps(self) -> tuple[Step, ...]:
        return tuple(step for step in self.steps if step.on.all)

    def step(self, step_id: str) -> Step:
        return self._by_id[step_id]

    def dependencies(self, step_id: str) -> tuple[str, ...]:
        """The steps that must succeed first: `needs`, or else the previous step."""
        return self._needs[step_id]


# ----------------------------------------------------------------- pass 1: YAML


Positions = dict[tuple, tuple[int, int]]


class _Loader(yaml.SafeLoader):
    """A safe loader that resolves plain scalars by YAML 1.2's core schema.

    YAML 1.1 reads `on`, `no` and `off` as booleans, `010` as octal, `1:30`
    as sexagesimal and `2024-01-01` as a date; operators mean none of these.
    """

    yaml_implicit_resolvers: dict = {}


def _core_schema(loader: type[yaml.SafeLoader]) -> None:

    resolvers = [
        ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
        ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", list("tTfF")),
        (
            "tag:yaml.org,2002:int",
            r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$",
            list("-+0123456789"),
        ),
        (
            "tag:yaml.org,2002:float",
            r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
            r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
            list("-+.0123456789"),
        ),
    ]
    for tag, pattern, first in resolvers:
        loader.add_implicit_resolver(tag, re.compile(pattern), first)
    loader.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), ["<"])

    def construct_int(self: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
        text = str(self.construct_scalar(node))
        if text.startswith(("0o", "0x")):
            return int(text[2:], 8 if text[1] == "o" else 16)
        return int(text, 10)

    def construct_float(self: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
        text = str(self.construct_scalar(node)).lower()
        if text.endswith(".inf"):
            return float("-inf") if text.startswith("-") else float("inf")
        return float("nan") if text == ".nan" else float(text)

    loader.add_constructor("tag:yaml.org,2002:int", construct_int)
    loader.add_constructor("tag:yaml.org,2002:float", construct_float)


_core_schema(_Loader)


def _check_duplicates(node: yaml.Node, issues: list[Issue], filename: str, path: tuple) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None and key in seen:
                issues.append(
                    Issue(
                        f"duplicate key {key!r}",
                        _format_path((*path, key)),
                        filename,
                        key_node.start_mark.line + 1,
                        key_node.start_mark.column + 1,
                    )
                )
            seen.add(key)
            _check_duplicates(value_node, issues, filename, (*path, key))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_duplicates(item, issues, filename, (*path, index))


def _record_positions(node: yaml.Node, path: tuple, positions: Positions) -> None:
    positions[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                _record_positions(value_node, (*path, key_node.value), positions)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record_positions(item, (*path, index), positions)


def _parse_yaml(text: str, filename: str) -> tuple[Any, Positions]:
    if len(text.encode("utf-8", "surrogatepass")) > MAX_DEFINITION_BYTES:
        raise DefinitionError(
            [Issue(f"definition larger than {MAX_DEFINITION_BYTES} bytes", "", filename)]
        )
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                raise DefinitionError([Issue("the document is empty", "", filename, 1, 1)])
            issues: list[Issue] = []
            _check_duplicates(node, issues, filename, ())
            if issues:
                raise DefinitionError(issues)
            data = loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        message = " ".join(part for part in (exc.context, exc.problem) if part)
        raise DefinitionError(
            [Issue(f"invalid YAML: {message}", "", filename, line, column)]
        ) from None
    except yaml.YAMLError as exc:
        raise DefinitionError([Issue(f"invalid YAML: {exc}", "", filename)]) from None
    except RecursionError:
        raise DefinitionError([Issue("the document is nested too deeply", "", filename)]) from None
    positions: Positions = {}
    _record_positions(node, (), positions)
    return data, positions


def _format_path(path: tuple) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _place(positions: Positions, path: tuple) -> tuple[int, int]:
    while path not in positions and path:
        path = path[:-1]
    return positions.get(path, (0, 0))


def _issue(message: str, path: tuple, filename: str, positions: Positions) -> Issue:
    line, column = _place(positions, path)
    return Issue(message, _format_path(path), filename, line, column)


# ---------------------------------------------------------------- pass 2: shape


def _shape(data: Any, filename: str, positions: Positions) -> Workflow:
    if not isinstance(data, dict):
        raise DefinitionError(
            [_issue("a workflow is a mapping with name and steps", (), filename, positions)]
        )
    try:
        return Workflow.model_validate(data)
    except ValidationError as exc:
        issues = []
        for error in exc.errors():
            # pydantic adds the model or branch name to some locations
            path = tuple(p for p in error["loc"] if not (isinstance(p, str) and "[" in p))
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown field"
            issues.append(_issue(message, path, filename, positions))
        raise DefinitionError(issues) from None


# -------------------------------------------------------------- pass 3: meaning


def _ancestors(workflow: Workflow) -> dict[str, set[str]]:
    """Every step's transitive dependencies; raises on cycles."""
    result: dict[str, set[str]] = {}

    def visit(step_id: str, trail: tuple[str, ...]) -> set[str]:
        if step_id in trail:
            cycle = " -> ".join((*trail[trail.index(step_id) :], step_id))
            raise ValueError(f"dependency cycle: {cycle}")
        if step_id not in result:
            found: set[str] = set()
            for dep in workflow.dependencies(step_id):
                found |= {dep, *visit(dep, (*trail, step_id))}
            result[step_id] = found
        return result[step_id]

    for step in workflow.steps:
        visit(step.id, ())
    return result


def _meaning(workflow: Workflow, filename: str, positions: Positions) -> list[Issue]:
    issues: list[Issue] = []
    seen: set[str] = set()
    for index, step in enumerate(workflow.steps):
        if step.id in seen:
            issues.append(
                _issue(
                    f"duplicate step id {step.id!r}", ("steps", index, "id"), filename, positions
                )
            )
        seen.add(step.id)
        for dep_index, dep in enumerate(step.needs or ()):
            if dep not in workflow.step_ids:
                issues.append(
                    _issue(
                        f"needs unknown step {dep!r}",
                        ("steps", index, "needs", dep_index),
                        filename,
                        positions,
                    )
                )
    if issues:
        return issues

    try:
        ancestors = _ancestors(workflow)
    except ValueError as exc:
        return [_issue(str(exc), ("steps",), filename, positions)]

    for index, step in enumerate(workflow.steps):
        found = list(expressions.find(step.with_, ("steps", index, "with")))
        found += list(expressions.find(step.when, ("steps", index, "when")))
        for path, expr in found:
            issues.extend(
                _check_expression(
                    workflow, step, expr, ancestors[step.id], path, filename, positions
                )
            )
    return issues


def _check_expression(
    workflow: Workflow,
    step: Step,
    expr: str,
    ancestors: set[str],
    path: tuple,
    filename: str,
    positions: Positions,
) -> list[Issue]:
    try:
        refs = expressions.references(expr, workflow.step_ids)
    except expressions.ExpressionError as exc:
        return [_issue(str(exc), path, filename, positions)]
    issues = []
    for root, name in refs:
        problem = None
        if root == "inputs" and name and name not in workflow.inputs:
            problem = f"{expr!r} reads undeclared input {name!r}"
        elif root == "steps" and name and name not in workflow.step_ids:
            problem = f"{expr!r} reads unknown step {name!r}"
        elif root == "steps" and name == step.id:
            problem = f"{expr!r}: a step cannot read its own outputs"
        elif root == "steps" and name and name not in ancestors:
            problem = (
                f"{expr!r} reads step {name!r}, which does not run before {step.id!r}; "
                "add it to needs or move it earlier"
            )
        if problem:
            issues.append(_issue(problem, path, filename, positions))
    return issues


# ------------------------------------------------------------------- public API


def load(text: str, filename: str = "<definition>") -> Workflow:
    """Parse and check a definition; raise DefinitionError listing every problem."""
    data, positions = _parse_yaml(text, filename)
    workflow = _shape(data, filename, positions)
    issues = _meaning(workflow, filename, positions)
    if issues:
        raise DefinitionError(issues)
    return workflow


def locate(text: str, filename: str, path: tuple) -> tuple[int, int]:
    """Line and column of a value in an already valid definition."""
    _, positions = _parse_yaml(text, filename)
    return _place(positions, path)


def check_tasks(
    workflow: Workflow,
    schemas: Mapping[str, Mapping[str, Any]],
    text: str,
    filename: str,
) -> list[Issue]:
    """Check each step's task exists and its static parameters fit its schema.

    `schemas` maps task names to the JSON Schema of their parameters. Values
    holding expressions are checked once evaluated, at dispatch.
    """
    issues = _task_issues(workflow, schemas, filename, {})
    if not issues:
        return []
    # the file is read again only to place what is wrong in it
    _, positions = _parse_yaml(text, filename)
    return _task_issues(workflow, schemas, filename, positions)


def _task_issues(
    workflow: Workflow,
    schemas: Mapping[str, Mapping[str, Any]],
    filename: str,
    positions: Positions,
) -> list[Issue]:
    issues = []
    for index, step in enumerate(workflow.steps):
        if step.task is None:
            continue  # a wait step runs no plugin
        schema = schemas.get(step.task)
        if schema is None:
            known = ", ".join(sorted(schemas)) or "none"
            issues.append(
                _issue(
                    f"unknown task plugin {step.task!r} (known: {known})",
                    ("steps", index, "task"),
                    filename,
                    positions,
                )
            )
            continue
        issues.extend(_check_params(step, index, schema, filename, positions))
    return issues


def _check_params(
    step: Step, index: int, schema: Mapping[str, Any], filename: str, positions: Positions
) -> list[Issue]:
    dynamic = {key for key, value in step.with_.items() if expressions.contains(value)}
    validator = jsonschema.Draft202012Validator(schema)
    issues = []
    for error in validator.iter_errors(step.with_):
        path = tuple(error.absolute_path)
        if path and path[0] in dynamic:
            continue
        message = error.message
        if error.validator == "required" and dynamic:
            missing = [k for k in schema.get("required", []) if k not in step.with_]
            if not missing:
                continue
        if error.validator == "additionalProperties":
            message = f"unknown parameter for {step.task}: {message}"
        issues.append(_issue(message, ("steps", index, "with", *path), filename, positions))
    return issues


def resolve_inputs(workflow: Workflow, given: Mapping[str, str]) -> dict[str, Any]:
    """Turn `--input KEY=VALUE` strings into typed run inputs, filling defaults."""
    issues = []
    values: dict[str, Any] = {}
    for key, raw in given.items():
        spec = workflow.inputs.get(key)
        if spec is None:
            declared = ", ".join(sorted(workflow.inputs)) or "none"
            issues.append(Issue(f"unknown input {key!r} (declared: {declared})", f"inputs.{key}"))
            continue
        try:
            values[key] = _convert(raw, spec.type)
        except ValueError as exc:
            issues.append(Issue(f"input {key!r}: {exc}", f"inputs.{key}"))
    for key, spec in workflow.inputs.items():
        if key in given:  # given with a bad value: already reported above
            continue
        if spec.required:
            issues.append(Issue(f"input {key!r} is required and has no default", f"inputs.{key}"))
        else:
            values[key] = spec.default
    if issues:
        raise DefinitionError(issues)
    return values


def _convert(raw: str, kind: str) -> Any:
    if kind == "string":
        return raw
    if kind == "boolean":
        lowered = raw.strip().lower()
        if lowered in {"true", "yes", "1"}:
            return True
        if lowered in {"false", "no", "0"}:
            return False
        raise ValueError(f"expected a boolean, got {raw!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        raise ValueError(f"expected {kind}, got {raw!r}") from None
    expected = {"integer": int, "number": (int, float), "list": list, "object": dict}[kind]
    if not isinstance(value, expected) or isinstance(value, bool):
        raise ValueError(f"expected {kind}, got {raw!r}")
    return value
