"""Bad input found by trying the product as a user: each is refused clearly, nothing breaks."""

from __future__ import annotations

import asyncio
import re

import pytest

from workflowd import definition, expressions
from workflowd.errors import DefinitionError, StoreError
from workflowd.store import open_store
from workflowd.store.sqlite import SQLiteStore


@pytest.mark.parametrize(
    "text",
    ["${{ inputs.s.upper }}", "before ${{ inputs.s.upper }} after", "${{ [inputs.s.lower] }}"],
)
def test_an_expression_that_gives_a_method_is_an_expression_error(text):
    """A value that is not data (a method) fails as an expression error, never reaches storage."""
    with pytest.raises(expressions.ExpressionError, match="gives builtin_function_or_method"):
        expressions.render(text, {"inputs": {"s": "ab"}}, frozenset())


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_inputs_refuse_numbers_json_cannot_carry(raw):
    """NaN and infinities are refused as number inputs: JSON readers could not read them back."""
    workflow = definition.load(
        "name: x\ninputs: {n: {type: number}}\nsteps:\n  - {id: a, task: noop}\n", "f.yaml"
    )
    with pytest.raises(DefinitionError, match="expected number"):
        definition.resolve_inputs(workflow, {"n": raw})


def test_an_input_default_must_fit_its_type():
    """A default of the wrong type is refused at load, placed in the file."""
    text = (
        "name: x\ninputs: {n: {type: integer, default: 'many'}}\nsteps:\n  - {id: a, task: noop}\n"
    )
    with pytest.raises(
        DefinitionError, match=re.escape("f.yaml:2:38: inputs.n.default: default 'many'")
    ):
        definition.load(text, "f.yaml")


def test_an_unknown_store_scheme_is_refused():
    """--store mysql://... is an error, not a file named after the URI."""
    with pytest.raises(StoreError, match="unknown store mysql://"):
        open_store("mysql://db/x")


def test_a_second_coordinator_cannot_open_a_locked_store(tmp_path):
    """Two coordinators on one SQLite file would both drive its runs: the second is refused."""

    async def scenario() -> None:
        first = SQLiteStore(str(tmp_path / "state.db"), exclusive=True)
        await first.open()
        second = SQLiteStore(str(tmp_path / "state.db"), exclusive=True)
        try:
            with pytest.raises(StoreError, match="another workflowd is using"):
                await second.open()
        finally:
            await first.close()
        third = SQLiteStore(str(tmp_path / "state.db"), exclusive=True)
        await third.open()  # released on close
        await third.close()

    asyncio.run(scenario())
