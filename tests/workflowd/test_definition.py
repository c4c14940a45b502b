"""Workflow definitions: YAML to an immutable model, and every refusal placed in its file."""

from __future__ import annotations

import pydantic
import pytest

from workflowd import definition
from workflowd.definition import check_tasks, load, resolve_inputs
from workflowd.errors import DefinitionError
from workflowd.plugins.basic import Noop, Sleep
from workflowd.plugins.manifest import FilesManifest, ManifestCompare

FILENAME = "flow.yaml"

GOOD = """\
name: provenance
description: Prove two hosts hold the same tree.
inputs:
  path_a: {type: string, default: /srv/data}
  path_b: {type: string}
config:
  tolerance: 0
steps:
  - id: manifest-a
    task: files.manifest
    on: {agent: host-a}
    with:
      path: ${{ inputs.path_a }}
  - id: manifest-b
    task: files.manifest
    on: {labels: {role: storage}}
    needs: []
    with: {path: "${{ inputs.path_b }}"}
  - id: compare
    task: manifest.compare
    needs: [manifest-a, manifest-b]
    with:
      left: ${{ steps.manifest-a.outputs.manifest }}
      right: ${{ steps.manifest-b.outputs.manifest }}
"""

SCHEMAS = {
    task.name: task.params_schema() for task in (Noop, Sleep, FilesManifest, ManifestCompare)
}


def problems(text: str) -> list[str]:
    """The lines a user is shown when a definition is refused."""
    with pytest.raises(DefinitionError) as caught:
        load(text, FILENAME)
    return [str(issue) for issue in caught.value.issues]


def place(line: str) -> str:
    """The file:line:column and field at the start of a reported line."""
    return ": ".join(line.split(": ")[:2])


def one_step(extra: str) -> str:
    """A one-step workflow whose step mapping ends with `extra` (flow style)."""
    return "name: x\nsteps:\n  - {id: a, task: noop" + extra + "}\n"


# ------------------------------------------------------------------ good input


def test_good_definition_loads_into_the_model():
    """A valid definition yields its name, inputs, config, steps and placements."""
    workflow = load(GOOD, FILENAME)

    assert workflow.name == "provenance"
    assert [step.id for step in workflow.steps] == ["manifest-a", "manifest-b", "compare"]
    assert workflow.inputs["path_a"].default == "/srv/data"
    assert not workflow.inputs["path_a"].required
    assert workflow.inputs["path_b"].required
    assert workflow.config == {"tolerance": 0}
    assert workflow.steps[0].on.agent == "host-a"
    assert workflow.steps[0].on.describe() == "agent host-a"
    assert workflow.steps[1].on.describe() == "labels role=storage"
    assert workflow.steps[2].on.on_coordinator
    assert workflow.steps[2].on.describe() == "coordinator"
    assert workflow.steps[0].with_ == {"path": "${{ inputs.path_a }}"}
    assert workflow.step("compare").task == "manifest.compare"


def test_model_is_frozen():
    """Assigning to a loaded workflow or one of its steps raises."""
    workflow = load(GOOD, FILENAME)

    with pytest.raises(pydantic.ValidationError, match="frozen"):
        workflow.name = "other"
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        workflow.steps[0].task = "noop"
    with pytest.raises(TypeError):
        workflow.steps[0] = workflow.steps[1]


def test_yaml_12_scalars():
    """on/no/yes/off stay strings, 010 is ten, 1:30 and dates stay strings, true/false are bool."""
    text = """\
name: x
config:
  a: on
  b: no
  c: yes
  d: off
  e: 010
  f: 1:30
  g: 2024-01-01
  h: true
  i: false
  j: 0x10
  k: 0o10
  l: 1.5
  m: ~
steps:
  - {id: a, task: noop}
"""
    config = load(text, FILENAME).config

    assert config == {
        "a": "on",
        "b": "no",
        "c": "yes",
        "d": "off",
        "e": 10,
        "f": "1:30",
        "g": "2024-01-01",
        "h": True,
        "i": False,
        "j": 16,
        "k": 8,
        "l": 1.5,
        "m": None,
    }
    assert type(config["e"]) is int


def test_placement_key_on_is_read_as_a_word():
    """`on:` as a key names the placement rather than turning into the boolean True."""
    workflow = load("name: x\nsteps:\n  - {id: a, task: noop, on: {agent: h1}}\n", FILENAME)

    assert workflow.steps[0].on.agent == "h1"


def test_dependencies_default_to_the_previous_step():
    """Without needs a step waits for the one before it; the first waits for nothing."""
    workflow = load(
        "name: x\nsteps:\n  - {id: a, task: noop}\n  - {id: b, task: noop}\n"
        "  - {id: c, task: noop}\n",
        FILENAME,
    )

    assert workflow.dependencies("a") == ()
    assert workflow.dependencies("b") == ("a",)
    assert workflow.dependencies("c") == ("b",)


def test_dependencies_follow_needs():
    """`needs` replaces the default: [] means none, a list means exactly those steps."""
    workflow = load(GOOD, FILENAME)

    assert workflow.dependencies("manifest-a") == ()
    assert workflow.dependencies("manifest-b") == ()
    assert workflow.dependencies("compare") == ("manifest-a", "manifest-b")
    with pytest.raises(KeyError):
        workflow.dependencies("ghost")


# ------------------------------------------------------------------ refusals


def test_malformed_yaml_is_placed():
    """Broken YAML is refused with the line and column where the parser gave up."""
    found = problems("name: x\nsteps:\n  - id: a\n    task: noop\n   with: {}\n")

    assert len(found) == 1
    assert found[0].startswith(f"{FILENAME}:5:4: invalid YAML: ")
    assert "did not find expected '-' indicator" in found[0]


@pytest.mark.parametrize("text", ["", "# only a comment\n", "\n\n"])
def test_empty_document(text):
    """An empty file is refused as empty, at line 1."""
    assert problems(text) == [f"{FILENAME}:1:1: the document is empty"]


@pytest.mark.parametrize("text", ["- a\n- b\n", "just words\n", "42\n"])
def test_document_that_is_not_a_mapping(text):
    """A list or scalar at the top is refused: a workflow is a mapping."""
    assert problems(text) == [f"{FILENAME}:1:1: a workflow is a mapping with name and steps"]


def test_missing_name_and_steps():
    """Both missing required top-level fields are reported, each by name."""
    assert problems("description: nothing\n") == [
        f"{FILENAME}:1:1: name: Field required",
        f"{FILENAME}:1:1: steps: Field required",
    ]


def test_empty_steps():
    """An empty step list is refused where it is written."""
    assert problems("name: x\nsteps: []\n") == [
        f"{FILENAME}:2:8: steps: a workflow needs at least one step"
    ]


def test_missing_step_id():
    """A step without id is refused at that step."""
    assert problems("name: x\nsteps:\n  - task: noop\n") == [
        f"{FILENAME}:3:5: steps[0].id: Field required"
    ]


@pytest.mark.parametrize("bad", ["Upper", "-lead", "with space", "a.b", "x" * 64])
def test_invalid_step_id(bad):
    """Step ids outside lowercase letters, digits, - and _ (max 63) are refused with the rule."""
    found = problems(f"name: x\nsteps:\n  - id: '{bad}'\n    task: noop\n")

    assert found == [
        f"{FILENAME}:3:9: steps[0].id: invalid step id {bad!r}: use lowercase letters, "
        "digits, '-' and '_', starting with a letter or digit, at most 63 characters"
    ]


def test_duplicate_step_id():
    """The second step with an id already used is refused at its id."""
    found = problems("name: x\nsteps:\n  - {id: a, task: noop}\n  - {id: a, task: noop}\n")

    assert found == [f"{FILENAME}:4:10: steps[1].id: duplicate step id 'a'"]


def test_duplicate_keys_all_reported():
    """Each duplicated mapping key is refused at its second occurrence, at any depth."""
    found = problems(
        "name: x\nname: y\nsteps:\n  - id: a\n    task: noop\n    with: {p: 1, p: 2}\n"
    )

    assert found == [
        f"{FILENAME}:2:1: name: duplicate key 'name'",
        f"{FILENAME}:6:18: steps[0].with.p: duplicate key 'p'",
    ]


def test_unknown_field():
    """A field the model does not know is refused by its path."""
    assert problems(one_step(", colour: red")) == [
        f"{FILENAME}:3:33: steps[0].colour: unknown field"
    ]


def test_unknown_top_level_field():
    """A misspelt top-level field is refused, placed at its value."""
    found = problems("name: x\nstep:\n  - {id: a, task: noop}\nsteps:\n  - {id: a, task: noop}\n")

    assert found == [f"{FILENAME}:3:3: step: unknown field"]


def test_placement_word_other_than_coordinator():
    """`on: somewhere` is refused with the placements that exist."""
    assert problems(one_step(", on: somewhere")) == [
        f"{FILENAME}:3:29: steps[0].on: unknown placement 'somewhere'; use coordinator, "
        "{agent: NAME} or {labels: {KEY: VALUE}}"
    ]


def test_placement_coordinator_word_is_accepted():
    """`on: coordinator` is the default placement, spelt out."""
    workflow = load(one_step(", on: coordinator"), FILENAME)

    assert workflow.steps[0].on.on_coordinator


def test_placement_agent_and_labels_together():
    """A placement naming both an agent and labels is refused."""
    assert problems(one_step(", on: {agent: h, labels: {role: x}}")) == [
        f"{FILENAME}:3:29: steps[0].on: give either agent or labels, not both"
    ]


def test_placement_empty_labels():
    """Empty labels are refused: they would match any agent by accident."""
    assert problems(one_step(", on: {labels: {}}")) == [
        f"{FILENAME}:3:29: steps[0].on: labels needs at least one KEY: VALUE"
    ]


def test_needs_unknown_step():
    """A need naming no step is refused at that entry."""
    assert problems(one_step(", needs: [ghost]")) == [
        f"{FILENAME}:3:33: steps[0].needs[0]: needs unknown step 'ghost'"
    ]


def test_dependency_cycle():
    """Steps needing each other are refused with the cycle spelt out."""
    found = problems(
        "name: x\nsteps:\n  - {id: a, task: noop, needs: [b]}\n"
        "  - {id: b, task: noop, needs: [a]}\n"
    )

    assert found == [f"{FILENAME}:3:3: steps: dependency cycle: a -> b -> a"]


def test_expression_reading_a_later_step():
    """A step reading a step that runs after it is refused with what to do."""
    found = problems(
        "name: x\nsteps:\n"
        "  - {id: a, task: noop, with: {p: '${{ steps.b.outputs.x }}'}}\n"
        "  - {id: b, task: noop}\n"
    )

    assert found == [
        f"{FILENAME}:3:35: steps[0].with.p: 'steps.b.outputs.x' reads step 'b', which does "
        "not run before 'a'; add it to needs or move it earlier"
    ]


def test_expression_reading_a_parallel_step():
    """A step with needs: [] cannot read the step written before it: it does not wait for it."""
    found = problems(
        "name: x\nsteps:\n  - {id: a, task: noop}\n"
        "  - {id: b, task: noop, needs: [], with: {p: '${{ steps.a.outputs.x }}'}}\n"
    )

    assert len(found) == 1
    assert "'steps.a.outputs.x' reads step 'a', which does not run before 'b'" in found[0]


def test_expression_reading_an_earlier_step_through_the_chain():
    """A step may read any step it transitively depends on."""
    workflow = load(
        "name: x\nsteps:\n  - {id: a, task: noop}\n  - {id: b, task: noop}\n"
        "  - {id: c, task: noop, with: {p: '${{ steps.a.outputs.x }}'}}\n",
        FILENAME,
    )

    assert workflow.dependencies("c") == ("b",)


def test_expression_reading_an_unknown_step():
    """Reading a step that does not exist is refused, naming it."""
    assert problems(one_step(", with: {p: '${{ steps.ghost.outputs.x }}'}")) == [
        f"{FILENAME}:3:35: steps[0].with.p: 'steps.ghost.outputs.x' reads unknown step 'ghost'"
    ]


def test_expression_reading_own_outputs():
    """A step cannot read its own outputs."""
    assert problems(one_step(", with: {p: '${{ steps.a.outputs.x }}'}")) == [
        f"{FILENAME}:3:35: steps[0].with.p: 'steps.a.outputs.x': a step cannot read its own "
        "outputs"
    ]


def test_expression_reading_an_undeclared_input():
    """Reading an input the definition does not declare is refused."""
    assert problems(one_step(", with: {p: '${{ inputs.nope }}'}")) == [
        f"{FILENAME}:3:35: steps[0].with.p: 'inputs.nope' reads undeclared input 'nope'"
    ]


def test_expression_with_an_unknown_name():
    """Names other than inputs, config, steps and run are refused."""
    assert problems(one_step(", with: {p: '${{ os.environ }}'}")) == [
        f"{FILENAME}:3:35: steps[0].with.p: 'os.environ': unknown name 'os'; expressions read "
        "only config, inputs, run, steps"
    ]


def test_expression_with_a_call():
    """Function and method calls are refused at load time."""
    assert problems(one_step(", with: {p: '${{ config.x.upper() }}'}")) == [
        f"{FILENAME}:3:35: steps[0].with.p: 'config.x.upper()': expressions cannot call "
        "functions or methods"
    ]


def test_nested_expression_is_placed_by_its_path():
    """An expression deep inside a parameter is reported with its full path."""
    found = problems(
        "name: x\nsteps:\n  - id: a\n    task: noop\n    with:\n      outer:\n"
        "        - keep\n        - {inner: '${{ inputs.nope }}'}\n"
    )

    assert found == [
        f"{FILENAME}:8:19: steps[0].with.outer[1].inner: 'inputs.nope' reads undeclared "
        "input 'nope'"
    ]


def test_several_shape_problems_are_all_reported():
    """Every shape problem in one file is listed, not just the first."""
    found = problems(
        "name: x\nsteps:\n  - {id: a, task: noop, colour: red}\n  - {task: noop}\n"
        "  - {id: c, task: noop, on: {labels: {}}}\n"
    )

    assert found == [
        f"{FILENAME}:3:33: steps[0].colour: unknown field",
        f"{FILENAME}:4:5: steps[1].id: Field required",
        f"{FILENAME}:5:29: steps[2].on: labels needs at least one KEY: VALUE",
    ]


def test_several_expression_problems_are_all_reported():
    """Every bad expression in one file is listed, across steps and parameters."""
    found = problems(
        "name: x\nsteps:\n"
        "  - {id: a, task: noop, with: {p: '${{ steps.b.outputs.x }}'}}\n"
        "  - {id: b, task: noop}\n"
        "  - {id: c, task: noop, with: {p: '${{ inputs.z }}', q: '${{ run.id }} ${{ x }}'}}\n"
    )

    assert [place(line) for line in found] == [
        f"{FILENAME}:3:35: steps[0].with.p",
        f"{FILENAME}:5:35: steps[2].with.p",
        f"{FILENAME}:5:57: steps[2].with.q",
    ]
    assert "reads step 'b'" in found[0]
    assert "undeclared input 'z'" in found[1]
    assert "unknown name 'x'" in found[2]


def test_the_error_message_lists_every_issue():
    """The exception text is one placed line per problem."""
    with pytest.raises(DefinitionError) as caught:
        load("name: x\nname: y\nsteps: []\nsteps: []\n", FILENAME)

    assert str(caught.value).splitlines() == [
        f"{FILENAME}:2:1: name: duplicate key 'name'",
        f"{FILENAME}:4:1: steps: duplicate key 'steps'",
    ]
    assert caught.value.code == "invalid_definition"


def test_oversized_definition_is_refused():
    """A definition over the size limit is refused before parsing."""
    text = "name: x\n# " + "x" * definition.MAX_DEFINITION_BYTES + "\n"

    (found,) = problems(text)
    assert found.endswith(f"is larger than the limit of {definition.MAX_DEFINITION_BYTES} bytes")


def test_python_tags_are_refused():
    """The loader refuses Python object tags, naming the tag and its place."""
    found = problems("name: !!python/object/apply:os.system ['true']\nsteps: []\n")

    assert len(found) == 1
    assert found[0].startswith(
        f"{FILENAME}:1:7: refused: tag !!python/object/apply:os.system is not allowed"
    )


def test_locate_finds_a_value():
    """`locate` gives the line and column of a field in a valid definition."""
    assert definition.locate(GOOD, FILENAME, ("steps", 2, "with", "right")) == (24, 14)
    assert definition.locate(GOOD, FILENAME, ("steps", 1, "on")) == (16, 9)


# ------------------------------------------------------------------ check_tasks


def task_issues(text: str) -> list[str]:
    workflow = load(text, FILENAME)
    return [str(issue) for issue in check_tasks(workflow, SCHEMAS, text, FILENAME)]


def test_check_tasks_accepts_known_tasks_with_good_params():
    """A definition whose steps fit their plugins' schemas has no issues."""
    assert task_issues(GOOD) == []


def test_check_tasks_unknown_plugin():
    """An unknown task is refused with the plugins that are known."""
    assert task_issues("name: x\nsteps:\n  - {id: a, task: ghost}\n") == [
        f"{FILENAME}:3:19: steps[0].task: unknown task plugin 'ghost' "
        "(known: files.manifest, manifest.compare, noop, sleep)"
    ]


def test_check_tasks_unknown_plugin_with_no_plugins():
    """With no plugins at all the message says none are known."""
    text = "name: x\nsteps:\n  - {id: a, task: noop}\n"
    issues = check_tasks(load(text, FILENAME), {}, text, FILENAME)

    assert [issue.message for issue in issues] == ["unknown task plugin 'noop' (known: none)"]


def test_check_tasks_wrong_type():
    """A parameter of the wrong type is refused at its value."""
    text = "name: x\nsteps:\n  - id: a\n    task: sleep\n    with:\n      seconds: soon\n"

    assert task_issues(text) == [
        f"{FILENAME}:6:16: steps[0].with.seconds: 'soon' is not of type 'number'"
    ]


def test_check_tasks_missing_required_param():
    """A missing required parameter is refused, naming it."""
    assert task_issues("name: x\nsteps:\n  - id: a\n    task: sleep\n") == [
        f"{FILENAME}:3:5: steps[0].with: 'seconds' is a required property"
    ]


def test_check_tasks_unknown_param():
    """An extra parameter is refused naming the plugin and the parameter."""
    found = task_issues(
        "name: x\nsteps:\n  - id: a\n    task: sleep\n    with: {seconds: 1, colour: red}\n"
    )

    assert len(found) == 1
    assert found[0].startswith(f"{FILENAME}:5:11: steps[0].with: unknown parameter for sleep: ")
    assert "'colour' was unexpected" in found[0]


def test_check_tasks_skips_params_holding_expressions():
    """Parameters that hold expressions are checked at dispatch, not at submit."""
    text = (
        "name: x\ninputs:\n  secs: {type: string}\nsteps:\n"
        "  - {id: a, task: sleep, with: {seconds: '${{ inputs.secs }}'}}\n"
        "  - id: b\n    task: files.manifest\n"
        "    with: {path: '${{ inputs.secs }}', exclude: 'x ${{ inputs.secs }}'}\n"
    )

    assert task_issues(text) == []


def test_check_tasks_still_checks_static_params_beside_expressions():
    """A static bad parameter is refused even when another parameter holds an expression."""
    text = (
        "name: x\ninputs:\n  p: {type: string}\nsteps:\n"
        "  - {id: a, task: files.manifest, with: {path: '${{ inputs.p }}', exclude: 3}}\n"
    )

    assert task_issues(text) == [
        f"{FILENAME}:5:76: steps[0].with.exclude: 3 is not of type 'array'"
    ]


def test_check_tasks_reports_every_step():
    """Problems in several steps are all reported."""
    found = task_issues(
        "name: x\nsteps:\n  - {id: a, task: ghost}\n  - {id: b, task: sleep}\n"
        "  - {id: c, task: sleep, with: {seconds: -1}}\n"
    )

    assert [place(line) for line in found] == [
        f"{FILENAME}:3:19: steps[0].task",
        f"{FILENAME}:4:5: steps[1].with",
        f"{FILENAME}:5:42: steps[2].with.seconds",
    ]
    assert found[2].endswith("-1 is less than the minimum of 0")


# ------------------------------------------------------------------ resolve_inputs

TYPED = """\
name: x
inputs:
  s: {type: string}
  i: {type: integer}
  n: {type: number}
  b: {type: boolean}
  l: {type: list}
  o: {type: object}
steps:
  - {id: a, task: noop}
"""

ALL_GIVEN = {"s": "010", "i": "10", "n": "1.5", "b": "yes", "l": "[1, 2]", "o": '{"k": 1}'}


def input_problems(text: str, given: dict[str, str]) -> list[str]:
    with pytest.raises(DefinitionError) as caught:
        resolve_inputs(load(text, FILENAME), given)
    return [str(issue) for issue in caught.value.issues]


def test_resolve_inputs_types_values():
    """Each declared type turns the given text into a value of that type."""
    values = resolve_inputs(load(TYPED, FILENAME), ALL_GIVEN)

    assert values == {"s": "010", "i": 10, "n": 1.5, "b": True, "l": [1, 2], "o": {"k": 1}}
    assert type(values["i"]) is int


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("YES", True), ("1", True), ("false", False), ("No", False), ("0", False)],
)
def test_resolve_inputs_booleans(text, expected):
    """Booleans read true/yes/1 and false/no/0 in any case."""
    values = resolve_inputs(load(TYPED, FILENAME), {**ALL_GIVEN, "b": text})

    assert values["b"] is expected


def test_resolve_inputs_number_accepts_integers():
    """A number input accepts a whole number."""
    values = resolve_inputs(load(TYPED, FILENAME), {**ALL_GIVEN, "n": "3"})

    assert values["n"] == 3


@pytest.mark.parametrize(
    ("key", "raw", "message"),
    [
        ("i", "1.5", "input 'i': expected integer, got '1.5'"),
        ("i", "true", "input 'i': expected integer, got 'true'"),
        ("i", "ten", "input 'i': expected integer, got 'ten'"),
        ("n", "abc", "input 'n': expected number, got 'abc'"),
        ("b", "maybe", "input 'b': expected a boolean, got 'maybe'"),
        ("l", "{}", "input 'l': expected list, got '{}'"),
        ("o", "[1]", "input 'o': expected object, got '[1]'"),
    ],
)
def test_resolve_inputs_wrong_type(key, raw, message):
    """A value that does not parse as its declared type is refused, and only for that."""
    assert input_problems(TYPED, {**ALL_GIVEN, key: raw}) == [
        f"<definition>: inputs.{key}: {message}"
    ]


def test_resolve_inputs_unknown_input():
    """An input the definition does not declare is refused with those it does."""
    assert input_problems(TYPED, {**ALL_GIVEN, "zz": "1"}) == [
        "<definition>: inputs.zz: unknown input 'zz' (declared: b, i, l, n, o, s)"
    ]


def test_resolve_inputs_missing_required():
    """Every required input left out is reported."""
    given = {k: v for k, v in ALL_GIVEN.items() if k not in ("i", "o")}

    assert input_problems(TYPED, given) == [
        "<definition>: inputs.i: input 'i' is required and has no default",
        "<definition>: inputs.o: input 'o' is required and has no default",
    ]


def test_resolve_inputs_fills_defaults():
    """Inputs not given take their defaults, including an explicit null; given values win."""
    text = (
        "name: x\ninputs:\n  a: {type: integer, default: 7}\n  b: {default: null}\n"
        "  c: {type: list, default: [x]}\nsteps:\n  - {id: a, task: noop}\n"
    )
    workflow = load(text, FILENAME)

    assert resolve_inputs(workflow, {}) == {"a": 7, "b": None, "c": ["x"]}
    assert resolve_inputs(workflow, {"a": "8"}) == {"a": 8, "b": None, "c": ["x"]}
