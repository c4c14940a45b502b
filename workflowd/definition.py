"""Workflow definitions: YAML text to a validated, immutable model.

Loading happens in three passes, each of which reports every problem it finds
with the file, line, column and field:

1. YAML: a parser within limits (size, nesting, values, aliases) that
   refuses duplicate keys and any tag beyond plain values, records where each
   value sits, and types plain scalars by the schema of their place (`1.10`
   is text where text is wanted, `1e3` a number where a number is);
2. shape: the pydantic model below;
3. meaning: unique step ids, known dependencies without cycles, expressions
   that read only what exists before the step runs.

Checking steps against task plugins (`check_tasks`) and resolving run inputs
(`resolve_inputs`) need the coordinator's knowledge and are separate calls.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
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
MAX_STEPS = 1000

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


_PYTHON_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "list": list,
    "object": dict,
}


def _fits(value: Any, kind: str) -> bool:
    """Whether a value is of an input type (booleans are not numbers, numbers are finite)."""
    if isinstance(value, bool) != (kind == "boolean"):
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return isinstance(value, _PYTHON_TYPES[kind])


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
        if len(steps) > MAX_STEPS:
            raise ValueError(f"a workflow has at most {MAX_STEPS} steps, not {len(steps)}")
        return steps

    # Lookups built once per definition: the engine asks them for every step
    # on every decision. (A duplicate id is refused later, with its place in
    # the file; until then the first step with the id counts.)

    @cached_property
    def step_ids(self) -> frozenset[str]:
        return frozenset(self._by_id)

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
    def plan_index(self) -> dict[str, int]:
        """Each step id's place in `plan`."""
        return {s.id: index for index, s in enumerate(self.steps)}

    @cached_property
    def dependents(self) -> dict[str, tuple[int, ...]]:
        """For each step id, the places in `plan` of the steps that need it."""
        found: dict[str, list[int]] = {s.id: [] for s in self.steps}
        for index, step in enumerate(self.steps):
            for need in self._needs[step.id]:
                found[need].append(index)
        return {sid: tuple(places) for sid, places in found.items()}

    @cached_property
    def fanout_steps(self) -> tuple[Step, ...]:
        return tuple(step for step in self.steps if step.on.all)

    def step(self, step_id: str) -> Step:
        return self._by_id[step_id]

    def dependencies(self, step_id: str) -> tuple[str, ...]:
        """The steps that must succeed first: `needs`, or else the previous step."""
        return self._needs[step_id]


# ----------------------------------------------------------------- pass 1: YAML

# A document is refused, quickly and before any value is built, when it nests
# deeper than MAX_DEPTH, uses more than MAX_ALIASES aliases, or holds more than
# MAX_VALUES values once every alias is counted as often as it is used (the
# "billion laughs" document is a few lines that expand to 10**9 values).
MAX_DEPTH = 64
MAX_ALIASES = 100
MAX_VALUES = 50_000

Positions = dict[tuple, tuple[int, int]]
Schema = Mapping[str, Any]

_TAG = "tag:yaml.org,2002:"
_NULL, _BOOL, _INT, _FLOAT, _STR = (
    _TAG + kind for kind in ("null", "bool", "int", "float", "str")
)
_SEQ, _MAP, _MERGE = (_TAG + kind for kind in ("seq", "map", "merge"))
_ALLOWED_TAGS = frozenset({_NULL, _BOOL, _INT, _FLOAT, _STR, _SEQ, _MAP, _MERGE})

# YAML 1.2 core schema: what a plain scalar is when nothing says otherwise.
_CORE = {
    _NULL: re.compile(r"^(?:~|null|Null|NULL|)$"),
    _BOOL: re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    _INT: re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
    _FLOAT: re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
}
_PLAIN_TAGS = (_NULL, _BOOL, _INT, _FLOAT)
# Where the schema asks for a boolean, these words mean what they say.
_BOOLEAN_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


class _Refused(yaml.MarkedYAMLError):
    """Well-formed YAML this loader does not take: too deep, too many values or aliases."""


class _PythonParser(yaml.SafeLoader):
    """PyYAML's own parser, for when libyaml is missing.

    Its scanner reads to the end of every `[` it opens before it hands out a
    token, so deep flow nesting has to stop here, not in the composer.
    """

    def fetch_flow_collection_start(self, token_class: type) -> None:
        if self.flow_level >= MAX_DEPTH:
            raise _Refused(
                problem=f"nested deeper than {MAX_DEPTH} levels", problem_mark=self.get_mark()
            )
        super().fetch_flow_collection_start(token_class)


# libyaml parses about twenty times faster than pure Python
_Parser = yaml.CSafeLoader if getattr(yaml, "__with_libyaml__", False) else _PythonParser


def _scalar_tag(event: yaml.ScalarEvent) -> str:
    """YAML 1.2 core schema: `on`, `no`, `off` are text, `010` is ten, no dates."""
    if event.tag not in (None, "!"):
        return event.tag
    if not event.implicit[0]:
        return _STR  # quoted or block text
    if event.value == "<<":
        return _MERGE
    for tag in _PLAIN_TAGS:
        if _CORE[tag].match(event.value):
            return tag
    return _STR


def _compose_events(parser: Any) -> yaml.Node | None:
    """Build the node graph of a single-document stream, without recursion.

    Refuses, at the event that crosses it, more than MAX_DEPTH levels of
    nesting, MAX_VALUES values or MAX_ALIASES aliases.
    """
    parser.get_event()  # stream start
    if parser.check_event(yaml.StreamEndEvent):
        return None
    parser.get_event()  # document start
    anchors: dict[str, yaml.Node] = {}
    open_nodes: list[yaml.Node] = []
    keys: list[yaml.Node | None] = []  # the key waiting for its value, per open mapping
    values = aliases = 0
    root: yaml.Node | None = None
    while root is None:
        event = parser.get_event()
        if isinstance(event, yaml.CollectionEndEvent):
            node = open_nodes.pop()
            keys.pop()
            node.end_mark = event.end_mark
            if not open_nodes:
                root = node
            continue
        if isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_ALIASES:
                raise _Refused(
                    problem=f"more than {MAX_ALIASES} aliases", problem_mark=event.start_mark
                )
            if event.anchor not in anchors:
                raise _Refused(
                    problem=f"alias *{event.anchor} refers to no anchor",
                    problem_mark=event.start_mark,
                )
            node = anchors[event.anchor]
        else:
            values += 1
            if values > MAX_VALUES:
                raise _Refused(
                    problem=f"more than {MAX_VALUES} values", problem_mark=event.start_mark
                )
            if event.anchor is not None and event.anchor in anchors:
                raise _Refused(
                    problem=f"anchor &{event.anchor} is defined twice",
                    problem_mark=event.start_mark,
                )
            node = _node(event)
            if event.anchor is not None:
                anchors[event.anchor] = node
        if open_nodes:
            parent = open_nodes[-1]
            if isinstance(parent, yaml.SequenceNode):
                parent.value.append(node)
            elif keys[-1] is None:
                keys[-1] = node
            else:
                parent.value.append((keys[-1], node))
                keys[-1] = None
        if isinstance(event, yaml.CollectionStartEvent):
            if len(open_nodes) >= MAX_DEPTH:
                raise _Refused(
                    problem=f"nested deeper than {MAX_DEPTH} levels", problem_mark=event.start_mark
                )
            open_nodes.append(node)
            keys.append(None)
        elif not open_nodes:
            root = node
    parser.get_event()  # document end
    if not parser.check_event(yaml.StreamEndEvent):
        extra = parser.peek_event()
        raise _Refused(
            problem="a definition is one YAML document; found another",
            problem_mark=extra.start_mark,
        )
    return root


def _node(event: yaml.NodeEvent) -> yaml.Node:
    if isinstance(event, yaml.ScalarEvent):
        return yaml.ScalarNode(
            _scalar_tag(event), event.value, event.start_mark, event.end_mark, style=event.style
        )
    plain = event.tag in (None, "!")
    if isinstance(event, yaml.SequenceStartEvent):
        tag = _SEQ if plain else event.tag
        return yaml.SequenceNode(tag, [], event.start_mark, None, flow_style=event.flow_style)
    tag = _MAP if plain else event.tag
    return yaml.MappingNode(tag, [], event.start_mark, None, flow_style=event.flow_style)


def _check_size(text: str, filename: str) -> None:
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= MAX_DEFINITION_BYTES:
        return
    head = data[:MAX_DEFINITION_BYTES].decode("utf-8", "ignore")
    line = head.count("\n") + 1
    column = len(head) - head.rfind("\n")
    raise DefinitionError(
        [
            Issue(
                f"definition of {len(data)} bytes is larger than the limit of "
                f"{MAX_DEFINITION_BYTES} bytes",
                "",
                filename,
                line,
                column,
            )
        ]
    )


def _place_in_text(text: str, position: int) -> tuple[int, int]:
    line = text.count("\n", 0, position) + 1
    return line, position - text.rfind("\n", 0, position)


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _compose(text: str, filename: str) -> yaml.Node:
    """The document's node graph, refused when it is malformed or beyond the limits."""
    _check_size(text, filename)
    parser = None
    try:
        parser = _Parser(text)
        node = _compose_events(parser)
    except _Refused as exc:
        mark = exc.problem_mark
        raise DefinitionError(
            [Issue(f"refused: {exc.problem}", "", filename, mark.line + 1, mark.column + 1)]
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        message = " ".join(part for part in (exc.context, exc.problem) if part)
        if "maximum nesting depth" in message:  # libyaml's own limit, far above ours
            message = f"refused: nested deeper than {MAX_DEPTH} levels"
        else:
            message = f"invalid YAML: {message}"
        raise DefinitionError([Issue(message, "", filename, line, column)]) from None
    except yaml.reader.ReaderError as exc:
        line, column = _place_in_text(text, exc.position)
        character = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise DefinitionError(
            [Issue(f"character U+{character:04X} is not allowed", "", filename, line, column)]
        ) from None
    except UnicodeEncodeError as exc:
        # lone surrogates: bytes that were not UTF-8, decoded with surrogateescape
        line, column = _place_in_text(text, exc.start)
        raise DefinitionError(
            [Issue("the text is not valid UTF-8", "", filename, line, column)]
        ) from None
    except yaml.YAMLError as exc:
        raise DefinitionError([Issue(f"invalid YAML: {exc}", "", filename, 1, 1)]) from None
    finally:
        if parser is not None:
            parser.dispose()
    if node is None:
        raise DefinitionError([Issue("the document is empty", "", filename, 1, 1)])
    _inspect(node, filename)
    issues: list[Issue] = []
    _check_duplicates(node, issues, filename, ())
    if issues:
        raise DefinitionError(issues)
    return node


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _inspect(root: yaml.Node, filename: str) -> None:
    """Refuse foreign tags, recursive aliases, and what aliases would expand too far.

    Each distinct node is measured once (its expanded size and height), so a
    document that expands to billions of values is refused in microseconds.
    """
    measured: dict[int, tuple[int, int]] = {}
    active: set[int] = set()

    def refuse(node: yaml.Node, problem: str) -> DefinitionError:
        line, column = _mark(node)
        return DefinitionError([Issue(f"refused: {problem}", "", filename, line, column)])

    def visit(node: yaml.Node, depth: int) -> tuple[int, int]:
        """(values, levels of collections) of a node inside `depth` collections."""
        if id(node) in active:
            raise refuse(node, "recursive alias: an alias refers to a value that contains it")
        known = measured.get(id(node))
        if known is None:
            if node.tag not in _ALLOWED_TAGS:
                raise refuse(
                    node,
                    f"tag {node.tag.replace(_TAG, '!!')} is not allowed; a definition holds "
                    "plain text, numbers, booleans, null, lists and mappings",
                )
            children = _children(node)
            level = 0 if isinstance(node, yaml.ScalarNode) else 1
            if depth + level > MAX_DEPTH:
                raise refuse(node, f"nested deeper than {MAX_DEPTH} levels through aliases")
            active.add(id(node))
            size, height = 1, level
            for child in children:
                child_size, child_height = visit(child, depth + 1)
                size += child_size
                height = max(height, child_height + 1)
                if size > MAX_VALUES:
                    raise refuse(node, f"more than {MAX_VALUES} values once aliases are expanded")
            active.discard(id(node))
            known = measured[id(node)] = (size, height)
        if depth + known[1] > MAX_DEPTH:
            raise refuse(node, f"nested deeper than {MAX_DEPTH} levels through aliases")
        return known

    visit(root, 0)


def _check_duplicates(
    node: yaml.Node,
    issues: list[Issue],
    filename: str,
    path: tuple,
    checked: set[int] | None = None,
) -> None:
    """Report keys given twice in a mapping; each node is checked once, aliases or not."""
    checked = set() if checked is None else checked
    if id(node) in checked:
        return
    checked.add(id(node))
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
            _check_duplicates(value_node, issues, filename, (*path, key), checked)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_duplicates(item, issues, filename, (*path, index), checked)


# -- what the schema says a place holds


def _follow(ref: str, root: Schema) -> Any:
    """A local JSON pointer ("#/$defs/Entry"); None for anything else."""
    if not ref.startswith("#"):
        return None
    target: Any = root
    for part in ref[1:].split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(target, Mapping) or part not in target:
            return None
        target = target[part]
    return target


def _alternatives(schema: Any, root: Schema, depth: int = 0) -> list[Schema] | None:
    """The schemas a value may match here, $refs followed; None when anything goes."""
    if depth > 16 or not isinstance(schema, Mapping):
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return _alternatives(_follow(ref, root), root, depth + 1)
    branches = [
        branch
        for keyword in ("anyOf", "oneOf", "allOf")
        if isinstance(schema.get(keyword), list)
        for branch in schema[keyword]
    ]
    if branches and "type" not in schema:
        found: list[Schema] = []
        for branch in branches:
            more = _alternatives(branch, root, depth + 1)
            if more is None:
                return None
            found.extend(more)
        return found
    return [schema]


_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}


@dataclass(frozen=True)
class _Hint:
    """A place in a JSON Schema, and the document its $refs point into."""

    schema: Schema
    root: Schema

    def types(self) -> frozenset[str] | None:
        alternatives = _alternatives(self.schema, self.root)
        if not alternatives:
            return None
        found: set[str] = set()
        for alternative in alternatives:
            kind = alternative.get("type")
            if isinstance(kind, str):
                found.add(kind)
            elif isinstance(kind, list):
                found.update(k for k in kind if isinstance(k, str))
            elif isinstance(alternative.get("enum"), list) or "const" in alternative:
                values = alternative.get("enum") or [alternative.get("const")]
                found.update(_JSON_TYPES.get(type(v), "object") for v in values)
            else:
                return None
        return frozenset(found)

    def _narrow(self, candidates: list[Any]) -> _Hint | None:
        if not candidates:
            return None
        schema = candidates[0] if len(candidates) == 1 else {"anyOf": candidates}
        return _Hint(schema, self.root)

    def _of_kind(self, kind: str) -> list[Schema] | None:
        alternatives = _alternatives(self.schema, self.root)
        if alternatives is None:
            return None
        found = []
        for alternative in alternatives:
            declared = alternative.get("type")
            if (
                declared is None
                or declared == kind
                or (isinstance(declared, list) and kind in declared)
            ):
                found.append(alternative)
        return found

    def key(self, name: str) -> _Hint | None:
        candidates = []
        for alternative in self._of_kind("object") or ():
            properties = alternative.get("properties")
            patterns = alternative.get("patternProperties")
            extra = alternative.get("additionalProperties")
            if isinstance(properties, Mapping) and name in properties:
                candidates.append(properties[name])
            elif isinstance(patterns, Mapping) and (
                matching := [s for p, s in patterns.items() if _pattern_matches(p, name)]
            ):
                candidates.extend(matching)
            elif isinstance(extra, Mapping):
                candidates.append(extra)
            elif extra is not False:
                return None
        return self._narrow(candidates)

    def item(self, index: int) -> _Hint | None:
        candidates = []
        for alternative in self._of_kind("array") or ():
            prefix = alternative.get("prefixItems")
            items = alternative.get("items")
            if isinstance(prefix, list) and index < len(prefix):
                candidates.append(prefix[index])
            elif isinstance(items, Mapping):
                candidates.append(items)
            else:
                return None
        return self._narrow(candidates)


def _pattern_matches(pattern: Any, name: str) -> bool:
    try:
        return isinstance(pattern, str) and re.search(pattern, name) is not None
    except re.error:
        return False


def _typed(value: Any, text: str, types: frozenset[str] | None) -> Any:
    """A plain scalar as the schema wants it: `1.10` stays text where text is wanted."""
    if types is None or value is None:
        return value
    kind = _JSON_TYPES[type(value)]
    if kind in types or (kind == "integer" and "number" in types):
        return value
    if kind == "number" and "integer" in types and value.is_integer():
        return int(value)
    if "boolean" in types and text.lower() in _BOOLEAN_WORDS:
        return _BOOLEAN_WORDS[text.lower()]
    if "string" in types:
        return text
    return value


_WORKFLOW_SCHEMA: Schema = Workflow.model_json_schema(by_alias=True)


class _Builder:
    """Turns composed nodes into plain values, each typed by the schema of its place.

    Mapping keys are always the text written: JSON, which carries parameters
    and outputs, has no other keys. `steps[i].with` is typed by the parameter
    schema of the step's task when it is known, an input's default by the
    input's declared type, and everything else by the workflow model.
    """

    def __init__(self, filename: str, schemas: Mapping[str, Schema] | None) -> None:
        self.filename = filename
        self.schemas = schemas or {}
        self.positions: Positions = {}
        self.built: dict[tuple[int, int], Any] = {}

    def error(self, node: yaml.Node, path: tuple, message: str) -> DefinitionError:
        line, column = _mark(node)
        return DefinitionError([Issue(message, _format_path(path), self.filename, line, column)])

    def build(self, root: yaml.Node) -> Any:
        return self.value(root, _Hint(_WORKFLOW_SCHEMA, _WORKFLOW_SCHEMA), ())

    def value(self, node: yaml.Node, hint: _Hint | None, path: tuple) -> Any:
        self.positions[path] = _mark(node)
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, hint, path)
        # A collection reached again through an alias, in a place of the same
        # schema, is the same value: build it once (as PyYAML does).
        key = (id(node), id(hint.schema) if hint else 0)
        if key in self.built:
            return self.built[key]
        if isinstance(node, yaml.SequenceNode):
            value: Any = [
                self.value(item, hint.item(index) if hint else None, (*path, index))
                for index, item in enumerate(node.value)
            ]
        else:
            pairs = self.pairs(node, path)
            value = {
                key: self.value(child, self.child(hint, key, path, pairs), (*path, key))
                for key, child in pairs.items()
            }
        self.built[key] = value
        return value

    def pairs(self, node: yaml.MappingNode, path: tuple) -> dict[str, yaml.Node]:
        """Key text to value node, `<<` merges applied: the mapping's own keys win."""
        merged: dict[str, yaml.Node] = {}
        own: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise self.error(key_node, path, "a mapping key must be text, not a collection")
            if key_node.tag != _MERGE:
                own[key_node.value] = value_node
                continue
            sources = (
                value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            )
            for source in sources:
                if not isinstance(source, yaml.MappingNode):
                    raise self.error(source, path, "<< merges a mapping or a list of mappings")
                for key, value in self.pairs(source, path).items():
                    merged.setdefault(key, value)
        return {**merged, **own}

    def child(
        self, hint: _Hint | None, key: str, path: tuple, pairs: Mapping[str, yaml.Node]
    ) -> _Hint | None:
        if len(path) == 2 and path[0] == "steps" and isinstance(path[1], int) and key == "with":
            task = pairs.get("task")
            schema = self.schemas.get(task.value) if isinstance(task, yaml.ScalarNode) else None
            return _Hint(schema, schema) if isinstance(schema, Mapping) else None
        if len(path) == 2 and path[0] == "inputs" and key == "default":
            declared = pairs.get("type")
            kind = declared.value if isinstance(declared, yaml.ScalarNode) else "string"
            kind = {"list": "array"}.get(kind, kind)
            return _Hint({"type": kind}, {})
        return hint.key(key) if hint else None

    def scalar(self, node: yaml.ScalarNode, hint: _Hint | None, path: tuple) -> Any:
        text = node.value
        tag = node.tag
        if tag == _MERGE:
            return text
        pattern = _CORE.get(tag)
        if tag != _STR and (pattern is None or not pattern.match(text)):
            # only an explicit tag gets here: `!!int ten`
            raise self.error(node, path, f"{text!r} is not a valid {tag.replace(_TAG, '')}")
        if tag == _STR:
            value: Any = text
        elif tag == _NULL:
            value = None
        elif tag == _BOOL:
            value = text.lower() == "true"
        elif tag == _INT:
            value = self.integer(node, path)
        else:
            value = _core_float(text)
        if not node.style:  # plain, not quoted text nor an explicit tag on it: `!!int "3"`
            value = _typed(value, text, hint.types() if hint else None)
        if isinstance(value, float) and not math.isfinite(value):
            raise self.error(node, path, f"{text} is not a finite number, and JSON has no other")
        return value

    def integer(self, node: yaml.ScalarNode, path: tuple) -> int:
        text = node.value
        try:
            if text.startswith(("0o", "0x")):
                return int(text[2:], 8 if text[1] == "o" else 16)
            return int(text, 10)
        except ValueError:
            # Python refuses to convert integers of more than 4300 digits
            raise self.error(node, path, f"integer of {len(text)} digits is too long") from None


def _core_float(text: str) -> float:
    lowered = text.lower()
    if lowered.endswith(".inf"):
        return float("-inf") if lowered.startswith("-") else float("inf")
    return float("nan") if lowered == ".nan" else float(lowered)


def _parse_yaml(
    text: str, filename: str, schemas: Mapping[str, Schema] | None = None
) -> tuple[Any, Positions]:
    builder = _Builder(filename, schemas)
    data = builder.build(_compose(text, filename))
    return data, builder.positions


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
    """Every step's transitive dependencies; raises on cycles. No recursion: a chain
    of a thousand steps written in reverse order is as easy as one in order."""
    deps = {step.id: set(workflow.dependencies(step.id)) for step in workflow.steps}
    waiting = {step_id: len(found) for step_id, found in deps.items()}
    dependents: dict[str, list[str]] = {step_id: [] for step_id in deps}
    for step_id, found in deps.items():
        for dep in found:
            dependents[dep].append(step_id)
    ready = [step_id for step_id, count in waiting.items() if count == 0]
    result: dict[str, set[str]] = {}
    while ready:
        step_id = ready.pop()
        result[step_id] = set().union(*(result[dep] | {dep} for dep in deps[step_id]))
        for dependent in dependents[step_id]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                ready.append(dependent)
    if len(result) < len(deps):
        raise ValueError(f"dependency cycle: {_cycle(deps, set(deps) - set(result))}")
    return result


def _cycle(deps: Mapping[str, set[str]], stuck: set[str]) -> str:
    """One cycle among steps that wait on each other, as "a -> b -> a"."""
    trail: list[str] = []
    step_id = min(stuck)
    while step_id not in trail:
        trail.append(step_id)
        step_id = min(dep for dep in deps[step_id] if dep in stuck)
    return " -> ".join([*trail[trail.index(step_id) :], step_id])


_INPUT_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "list": list,
    "object": dict,
}


def _input_defaults(workflow: Workflow, filename: str, positions: Positions) -> list[Issue]:
    issues = []
    for name, spec in workflow.inputs.items():
        value = spec.default
        if value is None:
            continue
        fits = isinstance(value, _INPUT_TYPES[spec.type])
        if isinstance(value, bool) and spec.type != "boolean":
            fits = False
        if not fits:
            issues.append(
                _issue(
                    f"default {value!r} is not of type {spec.type!r}",
                    ("inputs", name, "default"),
                    filename,
                    positions,
                )
            )
    return issues


def _meaning(workflow: Workflow, filename: str, positions: Positions) -> list[Issue]:
    issues: list[Issue] = _input_defaults(workflow, filename, positions)
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


def load(
    text: str, filename: str = "<definition>", schemas: Mapping[str, Schema] | None = None
) -> Workflow:
    """Parse and check a definition; raise DefinitionError listing every problem.

    `schemas` maps task names to their parameter schemas; when given, each
    step's `with` values are typed by its task's schema, so that `1.10` is
    the text "1.10" where the task wants text and the number 1.1 where it
    wants a number.
    """
    data, positions = _parse_yaml(text, filename, schemas)
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
        value = json.loads(raw, parse_constant=_not_a_number)
    except (ValueError, RecursionError):
        raise ValueError(f"expected {kind}, got {raw!r}") from None
    if not _fits(value, kind) or (isinstance(value, float) and not math.isfinite(value)):
        raise ValueError(f"expected {kind}, got {raw!r}")
    return value


def _not_a_number(name: str) -> Any:
    raise ValueError(f"{name} is not a number an input can hold")
