"""Definition loading: values typed by their schema, limits, and text that round-trips."""

from __future__ import annotations

from typing import Any

import pytest

from workflowd import definition
from workflowd.errors import DefinitionError

TEXT_AND_NUMBERS = {
    "text": {
        "type": "object",
        "properties": {
            "label": {"type": "string"},
            "count": {"type": "integer"},
            "ratio": {"type": "number"},
            "flag": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "maybe": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "entry": {"$ref": "#/$defs/Entry"},
        },
        "$defs": {"Entry": {"type": "object", "properties": {"version": {"type": "string"}}}},
    }
}


def with_value(field: str, written: str, schemas: Any = TEXT_AND_NUMBERS) -> Any:
    text = f"name: x\nsteps:\n  - id: a\n    task: text\n    with:\n      {field}: {written}\n"
    return definition.load(text, "f.yaml", schemas).steps[0].with_[field]


@pytest.mark.parametrize(
    ("field", "written", "expected"),
    [
        ("label", "1.10", "1.10"),
        ("label", "NO", "NO"),
        ("label", "1e3", "1e3"),
        ("label", "010", "010"),
        ("label", "true", "true"),
        ("label", "0x1F", "0x1F"),
        ("ratio", "1e3", 1000.0),
        ("ratio", "1.10", 1.1),
        ("ratio", "3", 3),
        ("count", "1e3", 1000),
        ("count", "010", 10),
        ("flag", "NO", False),
        ("flag", "yes", True),
        ("flag", "true", True),
        ("tags", "[NO, 1.10, 1e3]", ["NO", "1.10", "1e3"]),
        ("maybe", "1.10", "1.10"),
        ("maybe", "~", None),
        ("entry", "{version: 1.10}", {"version": "1.10"}),
    ],
)
def test_plain_scalars_mean_what_the_schema_says(field: str, written: str, expected: Any) -> None:
    """A plain scalar becomes the type its parameter's schema asks for: `1.10` text or number."""
    value = with_value(field, written)

    assert value == expected
    assert type(value) is type(expected)


def test_quoted_text_stays_text_where_a_number_is_wanted() -> None:
    """Quotes say text: "1e3" is not silently read as a number."""
    assert with_value("ratio", '"1e3"') == "1e3"


def test_without_a_schema_the_core_schema_applies() -> None:
    """Where nothing says what a value is, YAML 1.2's core schema decides."""
    assert with_value("label", "1.10", schemas={}) == 1.1
    assert with_value("label", "NO", schemas={}) == "NO"
    assert with_value("label", "on", schemas={}) == "on"


def test_input_defaults_are_typed_by_the_declared_type() -> None:
    """An input's default is read as its declared type: `1.10` stays text for a string."""
    workflow = definition.load(
        "name: x\n"
        "inputs:\n"
        "  version: {type: string, default: 1.10}\n"
        "  country: {type: string, default: NO}\n"
        "  size: {type: number, default: 1e3}\n"
        "  dry_run: {type: boolean, default: off}\n"
        "  retries: {type: integer, default: 3}\n"
        "steps:\n  - {id: a, task: noop}\n"
    )

    defaults = {name: spec.default for name, spec in workflow.inputs.items()}
    assert defaults == {
        "version": "1.10",
        "country": "NO",
        "size": 1000.0,
        "dry_run": False,
        "retries": 3,
    }


def test_names_and_labels_are_text() -> None:
    """Names, step ids, agent names and label values are text, whatever they look like."""
    workflow = definition.load(
        "name: 2024.10\nsteps:\n  - {id: '007', task: noop, on: {labels: {version: 1.10}}}\n"
    )

    assert workflow.name == "2024.10"
    assert workflow.steps[0].id == "007"
    assert workflow.steps[0].on.labels == {"version": "1.10"}


def test_mapping_keys_are_the_text_written() -> None:
    """Keys are text as written, as JSON will carry them: `1`, `true` and `~` included."""
    workflow = definition.load(
        "name: x\nconfig: {1: a, true: b, ~: c}\nsteps: [{id: a, task: noop}]\n"
    )

    assert workflow.config == {"1": "a", "true": "b", "~": "c"}


def test_merge_keys_apply_with_own_keys_winning() -> None:
    """`<<: *anchor` merges a mapping; the keys written beside it take precedence."""
    workflow = definition.load(
        "name: x\n"
        "config:\n"
        "  base: &base {task: sleep, with: {seconds: 1}}\n"
        "steps:\n"
        "  - {<<: *base, id: a}\n"
        "  - {<<: *base, id: b, with: {seconds: 2}}\n"
    )

    assert [(s.task, s.with_) for s in workflow.steps] == [
        ("sleep", {"seconds": 1}),
        ("sleep", {"seconds": 2}),
    ]


def test_non_ascii_text_round_trips() -> None:
    """Names, labels and values outside ASCII come back exactly as written."""
    workflow = definition.load(
        "name: Prüfung ✓ 検証\n"
        "config: {grüße: ☃}\n"
        "steps:\n"
        "  - {id: a, task: noop, on: {agent: hôte-ü}}\n"
        "  - {id: b, task: noop, on: {labels: {zone: süd}}}\n"
    )

    assert workflow.name == "Prüfung ✓ 検証"
    assert workflow.config == {"grüße": "☃"}
    assert workflow.steps[0].on.agent == "hôte-ü"
    assert workflow.steps[1].on.labels == {"zone": "süd"}


def test_errors_after_non_ascii_text_count_columns_in_characters() -> None:
    """The column of an error counts characters, not bytes, after non-ASCII text."""
    with pytest.raises(DefinitionError) as caught:
        definition.load(
            "name: x\nsteps:\n  - {description: ✓✓✓, id: a, task: noop, wrong: 1}\n", "f.yaml"
        )

    assert "f.yaml:3:50: steps[0].wrong: unknown field" in str(caught.value)


def test_aliases_within_limits_are_accepted() -> None:
    """Ordinary anchors and aliases, well under the limits, load as repeated values."""
    workflow = definition.load(
        "name: x\nconfig:\n  hosts: &hosts [a, b]\n  again: *hosts\nsteps: [{id: a, task: noop}]\n"
    )

    assert workflow.config["again"] == ["a", "b"]
