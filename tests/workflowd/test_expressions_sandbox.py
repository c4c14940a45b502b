"""Expressions cannot run code, and cannot make values too large for the coordinator."""

from __future__ import annotations

import pytest

from workflowd import expressions

STEPS = frozenset({"a"})
CONTEXT = {
    "inputs": {"text": "ab", "numbers": [1, 2], "pattern": "%999999999d", "n": 7},
    "config": {},
    "steps": {"a": {"outputs": {"big": "x" * 1000}}},
    "run": {"id": "r", "name": "n"},
}


def render(text: str) -> object:
    return expressions.render(text, CONTEXT, STEPS)


@pytest.mark.parametrize(
    ("expr", "value"),
    [
        ("inputs.text * 3", "ababab"),
        ("inputs.numbers + inputs.numbers", [1, 2, 1, 2]),
        ("inputs.n % 4", 3),
        ("inputs.numbers | join('-')", "1-2"),
        ("steps.a.outputs.big | length", 1000),
        ("inputs.n is divisibleby 7", True),
    ],
)
def test_ordinary_expressions_still_work(expr: str, value: object) -> None:
    """Arithmetic, repetition, joining and the listed filters and tests work as before."""
    assert render("${{ " + expr + " }}") == value


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("inputs.text * 10000000", r"\* would make more than 100000 items"),
        ("steps.a.outputs.big * 1000", r"\* would make more than 100000 items"),
        ("inputs.pattern % inputs.n", "formatting text with % is not allowed"),
    ],
)
def test_evaluation_refuses_values_that_would_exhaust_the_coordinator(
    expr: str, message: str
) -> None:
    """Repetition and formatting that would build huge values are refused while evaluated."""
    with pytest.raises(expressions.ExpressionError, match=message):
        render("${{ " + expr + " }}")


def test_text_around_many_expressions_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Text made of many expressions stops growing at the limit, with a clear error."""
    monkeypatch.setattr(expressions, "_MAX_JOINED", 5000)

    with pytest.raises(expressions.ExpressionError, match="longer than 5000 characters"):
        render("${{ steps.a.outputs.big }}" * 10)


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("inputs.text.upper()", "cannot call functions"),
        ("2 ** 100000", "cannot use \\*\\*"),
        ("inputs.numbers | map('upper')", "filter 'map' is not allowed"),
        ("inputs.n is callable", "test 'callable' is not allowed"),
        ("steps.a.outputs.__class__", "private attributes"),
        ("inputs.text" + " ~ inputs.text" * 16, "more than 16 operands of ~"),
    ],
)
def test_checks_refuse_what_expressions_have_no_business_doing(expr: str, message: str) -> None:
    """Calls, **, unlisted filters and tests, private attributes and long ~ chains are refused."""
    with pytest.raises(expressions.ExpressionError, match=message):
        expressions.references(expr, STEPS)
