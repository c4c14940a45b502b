"""The corpus of hostile and tricky definitions: each is refused with its own error and place.

Every file under `hostile/` says what it is on its first line and, on a line
`# expect: LINE:COLUMN: FIELD: MESSAGE`, the error it must produce. A few more
cases are too large to keep as files and are made here.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from workflowd import definition
from workflowd.errors import DefinitionError, Issue
from workflowd.tasks import load_plugins

CORPUS = Path(__file__).parent / "hostile"
FILES = sorted(CORPUS.glob("*.yaml"))
SCHEMAS = {name: cls.params_schema() for name, cls in load_plugins().items()}

# Refusing a hostile document must cost next to nothing; the slowest here
# take milliseconds, the limit leaves room for a loaded machine.
QUICK_S = 1.0
# The generated cases are large documents read to the place where they cross a
# limit (a megabyte, a thousand steps, 50,000 values): tenths of a second.
LARGE_S = 5.0


def refusal(text: str, filename: str) -> list[Issue]:
    """What submit says about a definition, as the coordinator checks it."""
    try:
        workflow = definition.load(text, filename, SCHEMAS)
    except DefinitionError as exc:
        return exc.issues
    return definition.check_tasks(workflow, SCHEMAS, text, filename)


def expectation(path: Path) -> str:
    for line in path.read_bytes().decode("utf-8", "surrogateescape").splitlines():
        if line.startswith("# expect: "):
            return line.removeprefix("# expect: ")
    raise AssertionError(f"{path.name} has no '# expect:' line")


def test_the_corpus_is_large_enough() -> None:
    """The corpus holds at least 30 hostile or tricky definitions, each with its expectation."""
    assert len(FILES) >= 30
    assert all(expectation(path) for path in FILES)


@pytest.mark.parametrize("path", FILES, ids=[path.stem for path in FILES])
def test_hostile_definition_is_refused_quickly_with_its_place(path: Path) -> None:
    """Each corpus file is refused, quickly, with the expected message at the expected place."""
    # bytes that are not UTF-8 reach the loader as lone surrogates
    text = path.read_bytes().decode("utf-8", "surrogateescape")

    started = time.perf_counter()
    issues = refusal(text, path.name)
    elapsed_s = time.perf_counter() - started

    assert issues, f"{path.name} was accepted"
    assert elapsed_s < QUICK_S
    assert all(issue.line >= 1 and issue.column >= 1 for issue in issues)
    assert f"{path.name}:{expectation(path)}" in str(issues[0])


def _chain(count: int, reverse: bool) -> str:
    """`count` steps, each needing the next one (reverse) or the one before."""
    lines = ["name: chain", "steps:"]
    for index in range(count):
        needs = f", needs: [s{index + 1}]" if reverse and index + 1 < count else ""
        if reverse and index + 1 == count:
            needs = ", needs: []"
        lines.append(f"  - {{id: s{index}, task: noop{needs}}}")
    return "\n".join(lines) + "\n"


GENERATED = {
    "larger than the size limit": (
        "name: big\nsteps:\n  - {id: a, task: noop}\nconfig:\n  blob: "
        + "x" * definition.MAX_DEFINITION_BYTES
        + "\n",
        "big.yaml:5:1048528: definition of 1048634 bytes is larger than the limit of 1048576",
    ),
    "more steps than allowed": (
        _chain(definition.MAX_STEPS + 1, reverse=False),
        "many.yaml:3:3: steps: a workflow has at most 1000 steps, not 1001",
    ),
    "more values than allowed": (
        "name: wide\nsteps:\n  - {id: a, task: noop}\nconfig:\n  v: ["
        + ", ".join(["1"] * definition.MAX_VALUES)
        + "]\n",
        "wide.yaml:5:149965: refused: more than 50000 values",
    ),
}


@pytest.mark.parametrize("case", list(GENERATED))
def test_generated_hostile_definition_is_refused_quickly(case: str) -> None:
    """Documents too large to keep as files are refused quickly, at the place they go wrong."""
    text, expected = GENERATED[case]
    filename = expected.split(":", 1)[0]

    started = time.perf_counter()
    issues = refusal(text, filename)
    elapsed_s = time.perf_counter() - started

    assert elapsed_s < LARGE_S
    assert expected in str(issues[0])


def test_a_long_chain_written_backwards_is_accepted() -> None:
    """A thousand steps each needing the next one load without recursion limits."""
    workflow = definition.load(_chain(definition.MAX_STEPS, reverse=True), "chain.yaml")

    assert workflow.dependencies("s0") == ("s1",)
    assert len(workflow.steps) == definition.MAX_STEPS
