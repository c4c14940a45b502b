"""`${{ ... }}` expressions: finding, checking and evaluating them in the sandbox."""

from __future__ import annotations

import pytest

from workflowd.expressions import ExpressionError, contains, find, references, render

STEP_IDS = frozenset({"manifest", "manifest-a", "build_1"})

CONTEXT = {
    "inputs": {"n": 3, "items": [1, 2], "name": "demo", "flag": True, "nothing": None},
    "config": {"limits": {"cpu": 2}},
    "steps": {
        "manifest": {"outputs": {"files": 10}},
        "manifest-a": {"outputs": {"manifest": [{"path": "a", "size": 1}], "files": 1}},
    },
    "run": {"id": "r-1", "name": "provenance"},
}


def evaluate(value):
    return render(value, CONTEXT, STEP_IDS)


# ------------------------------------------------------------------ render


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${{ inputs.items }}", [1, 2]),
        ("${{ config.limits }}", {"cpu": 2}),
        ("${{ inputs.n }}", 3),
        ("${{ inputs.flag }}", True),
        ("${{ inputs.nothing }}", None),
        ("  ${{ inputs.items }}  ", [1, 2]),
        ("${{inputs.n}}", 3),
        ("${{ inputs.n * 2 }}", 6),
    ],
)
def test_single_expression_keeps_its_type(text, expected):
    """A string that is exactly one expression evaluates to the value itself, not its text."""
    value = evaluate(text)

    assert value == expected
    assert type(value) is type(expected)


def test_interpolation_into_text():
    """Text around expressions makes a string with each value written out."""
    assert evaluate("run ${{ run.name }} has ${{ inputs.n }} items: ${{ inputs.items }}") == (
        "run provenance has 3 items: [1, 2]"
    )


def test_interpolation_writes_booleans_and_none_plainly():
    """Inside text, booleans read true/false and None is empty."""
    assert evaluate("flag=${{ inputs.flag }} nothing=[${{ inputs.nothing }}]") == (
        "flag=true nothing=[]"
    )


def test_two_adjacent_expressions_make_text():
    """Two expressions with nothing between them are joined as text."""
    assert evaluate("${{ inputs.n }}${{ inputs.n }}") == "33"


def test_hyphenated_step_id():
    """`steps.manifest-a.outputs.x` reads step manifest-a, not manifest minus a."""
    assert evaluate("${{ steps.manifest-a.outputs.manifest }}") == [{"path": "a", "size": 1}]
    assert evaluate("${{ steps.manifest.outputs.files }}") == 10


def test_hyphenated_step_id_in_arithmetic():
    """A hyphenated step id still reads correctly next to a minus sign."""
    assert evaluate("${{ steps.manifest-a.outputs.files - inputs.n }}") == -2


def test_render_walks_nested_values():
    """Expressions inside dicts and lists are evaluated; other values pass through."""
    assert evaluate({"a": ["${{ inputs.n }}", "x"], "b": {"c": "${{ run.id }}"}, "d": 4}) == {
        "a": [3, "x"],
        "b": {"c": "r-1"},
        "d": 4,
    }


def test_text_without_expressions_is_unchanged():
    """A plain string is returned as it is."""
    assert evaluate("no expressions {{ here }}") == "no expressions {{ here }}"


def test_sandbox_refuses_dunder_attributes():
    """Reaching for `__class__` is refused before anything is evaluated."""
    with pytest.raises(ExpressionError, match="cannot read private attributes") as caught:
        evaluate("${{ inputs.name.__class__ }}")

    assert "'inputs.name.__class__'" in str(caught.value)
    assert "__class__" in str(caught.value)


def test_sandbox_refuses_dunder_on_undefined():
    """`inputs.x.__class__` on a missing input is refused the same way."""
    with pytest.raises(ExpressionError, match="cannot read private attributes"):
        evaluate("${{ inputs.x.__class__ }}")


def test_sandbox_refuses_mutating_methods():
    """Even reading a mutating method such as list.append is refused."""
    with pytest.raises(ExpressionError, match="refused by the sandbox") as caught:
        evaluate("${{ inputs.items.append }}")

    assert "append" in str(caught.value)


def test_undefined_output_key_names_the_expression():
    """Reading an output a step did not produce fails with the expression and the missing key."""
    with pytest.raises(ExpressionError) as caught:
        evaluate("${{ steps.manifest.outputs.nope }}")

    assert str(caught.value) == (
        "'steps.manifest.outputs.nope': 'dict object' has no attribute 'nope'"
    )


def test_undefined_inside_text_is_an_error():
    """A missing value inside text fails instead of rendering as empty."""
    with pytest.raises(ExpressionError) as caught:
        evaluate("value: ${{ inputs.missing }}")

    assert str(caught.value) == "'inputs.missing': 'dict object' has no attribute 'missing'"


def test_evaluation_errors_are_expression_errors():
    """An operation that fails at evaluation is reported with its type and the expression."""
    with pytest.raises(ExpressionError) as caught:
        evaluate("${{ inputs.n + inputs.name }}")

    assert str(caught.value).startswith("'inputs.n + inputs.name': TypeError: ")


@pytest.mark.parametrize("key", ["items", "keys", "values", "get", "copy", "update", "pop"])
def test_keys_named_like_dict_methods_read_the_value(key):
    """An input or output named like a dict method reads the value, not the method."""
    context = {
        "inputs": {key: [key]},
        "config": {},
        "steps": {"build_1": {"outputs": {key: 7}}},
        "run": {},
    }

    assert render(f"${{{{ inputs.{key} }}}}", context, STEP_IDS) == [key]
    assert render(f"${{{{ steps.build_1.outputs.{key} }}}}", context, STEP_IDS) == 7
    assert render(f"{key}=${{{{ inputs.{key} }}}}", context, STEP_IDS) == f"{key}=['{key}']"


# ------------------------------------------------------------------ references


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("inputs.a", {("inputs", "a")}),
        ("inputs['a']", {("inputs", "a")}),
        ("inputs", {("inputs", "")}),
        ("run.id", {("run", "id")}),
        ("inputs.a + config.b", {("inputs", "a"), ("config", "b")}),
        ("steps.manifest-a.outputs.x", {("steps", "manifest-a")}),
        ("steps.manifest.outputs.x", {("steps", "manifest")}),
        ("steps['build_1'].outputs", {("steps", "build_1")}),
        ("steps.ghost.outputs.x", {("steps", "ghost")}),
        ("inputs[config.key]", {("inputs", ""), ("config", "key")}),
    ],
)
def test_references(expr, expected):
    """`references` lists each (root, name) an expression reads, "" for a whole root."""
    assert references(expr, STEP_IDS) == expected


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("range(3)", "'range(3)': expressions cannot call functions or methods"),
        ("inputs.a.lower()", "'inputs.a.lower()': expressions cannot call functions or methods"),
        (
            "os.environ",
            "'os.environ': unknown name 'os'; expressions read only config, inputs, run, steps",
        ),
        ("", "empty expression"),
    ],
)
def test_references_refusals(expr, message):
    """Calls, unknown names and empty expressions are refused with a message naming them."""
    with pytest.raises(ExpressionError) as caught:
        references(expr, STEP_IDS)

    assert str(caught.value) == message


def test_references_syntax_error():
    """A syntax error is refused naming the expression."""
    with pytest.raises(ExpressionError, match=r"^invalid expression 'inputs\.a \+': "):
        references("inputs.a +", STEP_IDS)


def test_overlong_expression_is_refused():
    """Expressions over 2000 characters are refused, at check and at evaluation."""
    long = "inputs.a" + " + inputs.a" * 200

    with pytest.raises(ExpressionError, match="expression longer than 2000 characters"):
        references(long, STEP_IDS)
    with pytest.raises(ExpressionError, match="expression longer than 2000 characters"):
        evaluate("${{ " + long + " }}")


def test_expression_at_the_length_limit_is_accepted():
    """An expression of exactly 2000 characters is still checked normally."""
    expr = "inputs.a" + " " * (2000 - len("inputs.a"))

    assert references(expr, STEP_IDS) == {("inputs", "a")}


# ------------------------------------------------------------------ find


def test_find_yields_paths_and_expressions():
    """`find` gives every expression with the path of the value holding it."""
    value = {"a": ["x ${{ inputs.a }} ${{ config.b }}", 1], "b": {"c": "${{run.id}}"}}

    assert list(find(value, ("with",))) == [
        (("with", "a", 0), "inputs.a"),
        (("with", "a", 0), "config.b"),
        (("with", "b", "c"), "run.id"),
    ]


def test_contains():
    """`contains` tells whether a value holds any expression at any depth."""
    assert contains({"a": [{"b": "${{ inputs.x }}"}]})
    assert not contains({"a": [1, "plain", {"b": "{{ not ours }}"}]})
