"""Property-based tests of the definition loader: whatever arrives, a model or a placed error.

Example counts are kept small enough for a two-core machine; together these
tests try EXAMPLES_TOTAL documents in a few seconds.
"""

from __future__ import annotations

import json
import time

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from workflowd import definition
from workflowd.errors import DefinitionError
from workflowd.tasks import load_plugins

SCHEMAS = {name: cls.params_schema() for name, cls in load_plugins().items()}

NOISE_EXAMPLES = 400
ROUND_TRIP_EXAMPLES = 150
TYPING_EXAMPLES = 200
ALIAS_EXAMPLES = 60
EXAMPLES_TOTAL = NOISE_EXAMPLES + ROUND_TRIP_EXAMPLES + TYPING_EXAMPLES + ALIAS_EXAMPLES


def examples(count: int) -> settings:
    return settings(
        max_examples=count,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


KINDS = (
    "invalid YAML",
    "refused: nested",
    "refused: tag",
    "refused: recursive",
    "refused: alias",
    "refused: anchor",
    "refused: a definition is one",
    "refused",
    "duplicate key",
    "character",
    "the text is not valid UTF-8",
    "the document is empty",
    "a workflow is a mapping",
)


def kind(result: definition.Workflow | DefinitionError) -> str:
    """The class of an outcome, for hypothesis' statistics (--hypothesis-show-statistics)."""
    if not isinstance(result, DefinitionError):
        return "accepted"
    message = result.issues[0].message
    return next((k for k in KINDS if message.startswith(k)), "refused by shape or meaning")


def outcome(text: str) -> definition.Workflow | DefinitionError:
    """What submit's checks make of a text: a workflow, or the error listing its issues."""
    try:
        workflow = definition.load(text, "f.yaml", SCHEMAS)
    except DefinitionError as exc:
        return exc
    issues = definition.check_tasks(workflow, SCHEMAS, text, "f.yaml")
    return DefinitionError(issues) if issues else workflow


# Pieces of YAML, of definitions and of attacks on both, joined at random.
FRAGMENTS = [
    "name: ", "steps:\n", "  - ", "id: a", "task: noop", "task: sleep", "with: ", "seconds: ",
    "on: ", "{agent: h}", "needs: [a]", "inputs:\n", "config:\n", "  ", "\n", ": ", "- ",
    ", ", "[", "]", "{", "}", "&a ", "*a", "&b ", "*b", "<<: ", "? ", "!!python/object:os.system",
    "!!binary ", "!!str ", "!!int ", "!local ", "---\n", "...\n", "%YAML 1.2\n", "|\n", ">\n",
    "'", '"', "#", "${{ ", " }}", "inputs.x", "steps.a.outputs", "__class__", "()", "**", "~",
    "null", "NO", "1.10", "1e3", "010", "0x1F", ".nan", "-.inf", "9" * 50, "ü", "✓",
]  # fmt: skip
# Characters no YAML stream may hold, and text that is not UTF-8: rarer, not absent.
RARE = ["\t", "\x00", "\x07", "\ufeff", "\u2028", "\ud800", "\udcff"]
words = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x2FF, blacklist_categories=("Cc",)),
    max_size=8,
)
common = st.one_of(st.sampled_from(FRAGMENTS), words)
pieces = st.one_of(common, common, common, st.sampled_from(RARE))
VALID = [
    "name: x\nsteps:\n  - {id: a, task: noop}\n",
    "name: x\ninputs:\n  n: {type: number, default: 1}\nconfig: {k: [1, 2]}\nsteps:\n"
    "  - id: a\n    task: sleep\n    on: {agent: h}\n    with: {seconds: '${{ inputs.n }}'}\n"
    "  - {id: b, task: noop, needs: [a]}\n",
    "name: x\nconfig:\n  base: &b {task: noop}\nsteps:\n  - {<<: *b, id: a}\n",
]


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A valid definition with a few pieces put in, or cut out, at random places."""
    text = draw(st.sampled_from(VALID))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        if draw(st.booleans()):
            text = text[:at] + draw(pieces) + text[at:]
        else:
            text = text[:at] + text[at + draw(st.integers(1, 5)) :]
    return text


documents = st.one_of(
    st.lists(common, max_size=60).map("".join),
    st.lists(pieces, max_size=60).map("".join),
    mutated(),
)


@examples(NOISE_EXAMPLES)
@given(documents)
def test_any_text_loads_or_is_refused_with_a_place(text: str) -> None:
    """Random text, well-formed or not, gives a workflow or issues that each have a place."""
    started = time.perf_counter()

    result = outcome(text)

    event(kind(result))
    assert time.perf_counter() - started < 1.0
    if isinstance(result, DefinitionError):
        assert result.issues
        assert all(issue.line >= 1 and issue.column >= 1 for issue in result.issues)


printable = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="\ufeff"),
    max_size=12,
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | printable,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(printable, children, max_size=4)
    ),
    max_leaves=25,
)


@examples(ROUND_TRIP_EXAMPLES)
@given(st.dictionaries(printable, json_values, max_size=5))
def test_json_values_round_trip_through_config(config: dict) -> None:
    """Any JSON value written as JSON (which is YAML) comes back from `config` unchanged."""
    document = {"name": "x", "config": config, "steps": [{"id": "a", "task": "noop"}]}

    workflow = definition.load(json.dumps(document, ensure_ascii=False), "f.yaml")

    assert workflow.config == config
    assert json.dumps(workflow.config, sort_keys=True) == json.dumps(config, sort_keys=True)


CORE_INT = r"\A[-+]?[0-9]{1,12}\Z|\A0o[0-7]{1,8}\Z|\A0x[0-9a-fA-F]{1,8}\Z"
CORE_FLOAT = r"\A[-+]?(\.[0-9]{1,6}|[0-9]{1,6}(\.[0-9]{0,6})?)([eE][-+]?[0-9]{1,2})?\Z"
WORDS = ["true", "False", "TRUE", "NO", "yes", "on", "Off", "y", "1.10", "1:30", "2024-01-01"]
plain_scalars = st.one_of(
    st.from_regex(CORE_INT), st.from_regex(CORE_FLOAT), st.sampled_from(WORDS)
)


@examples(TYPING_EXAMPLES)
@given(plain_scalars)
def test_plain_scalars_are_their_text_where_text_is_wanted(written: str) -> None:
    """Where a task wants text, a plain scalar is the text written, whatever it looks like."""
    text = (
        f"name: x\nsteps:\n  - id: a\n    task: files.manifest\n    with:\n      path: {written}\n"
    )

    workflow = definition.load(text, "f.yaml", SCHEMAS)

    assert workflow.steps[0].with_["path"] == written


@examples(ALIAS_EXAMPLES)
@given(st.integers(1, 12), st.integers(1, 12))
def test_alias_towers_are_refused_quickly_when_they_expand_too_far(
    levels: int, width: int
) -> None:
    """Anchors of anchors: accepted while small, refused quickly once they expand too far."""
    lines = ["name: x", "config:", "  t:", "  - &l0 [v]"]
    for level in range(1, levels + 1):
        lines.append(f"  - &l{level} [" + ", ".join([f"*l{level - 1}"] * width) + "]")
    lines += ["steps:", "  - {id: a, task: noop}"]
    text = "\n".join(lines) + "\n"

    started = time.perf_counter()
    result = outcome(text)

    event(kind(result))
    assert time.perf_counter() - started < 1.0
    refused = isinstance(result, DefinitionError)
    assert refused == (
        levels * width > definition.MAX_ALIASES
        or expanded_values(levels, width) > definition.MAX_VALUES
    )
    if refused:
        assert "refused: more than" in str(result)


def expanded_values(levels: int, width: int) -> int:
    """Values of the tower document once every alias is replaced by what it names."""
    tower = [2]  # [v]: a list and its one text
    for _ in range(levels):
        tower.append(1 + width * tower[-1])
    # the mappings, keys and texts around the tower: 7 above it, 7 in the steps
    return 14 + sum(tower)
