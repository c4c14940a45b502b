"""Bad input at submit: a clear error naming the place, and nothing stored."""

from __future__ import annotations

import pytest

from tests.cluster import Cluster

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """One coordinator for every refusal: none of them may leave a run behind."""
    shared = Cluster(tmp_path_factory.mktemp("refusals"))
    shared.start_daemon()
    yield shared
    shared.close()


CASES = {
    "malformed YAML": (
        "name: x\nsteps:\n  - id: a\n    task: noop\n   with: {}\n",
        [":5:4: invalid YAML"],
    ),
    "missing step id": (
        "name: x\nsteps:\n  - task: noop\n",
        [":3:5: steps[0].id: Field required"],
    ),
    "duplicate step id": (
        "name: x\nsteps:\n  - {id: a, task: noop}\n  - {id: a, task: noop}\n",
        [":4:10: steps[1].id: duplicate step id 'a'"],
    ),
    "unknown plugin": (
        "name: x\nsteps:\n  - {id: a, task: no.such.plugin}\n",
        [":3:19: steps[0].task: unknown task plugin 'no.such.plugin'"],
    ),
    "wrong parameter type": (
        "name: x\nsteps:\n  - id: a\n    task: sleep\n    with:\n      seconds: soon\n",
        [":6:16: steps[0].with.seconds: 'soon' is not of type 'number'"],
    ),
    "unknown parameter": (
        "name: x\nsteps:\n  - id: a\n    task: sleep\n    with: {seconds: 1, colour: red}\n",
        [":5:11: steps[0].with: unknown parameter for sleep"],
    ),
    "reference to a later step": (
        "name: x\nsteps:\n"
        "  - id: a\n    task: sleep\n    with: {seconds: '${{ steps.b.outputs.slept_s }}'}\n"
        "  - {id: b, task: noop}\n",
        [
            ":5:21: steps[0].with.seconds: 'steps.b.outputs.slept_s' reads step 'b', "
            "which does not run before 'a'"
        ],
    ),
    "reference to an unknown step": (
        "name: x\nsteps:\n"
        "  - id: a\n    task: sleep\n    with: {seconds: '${{ steps.ghost.outputs.x }}'}\n",
        ["steps[0].with.seconds: 'steps.ghost.outputs.x' reads unknown step 'ghost'"],
    ),
    "duplicate key": (
        "name: x\nname: y\nsteps:\n  - {id: a, task: noop}\n",
        [":2:1: name: duplicate key 'name'"],
    ),
    "python tag": (
        "name: !!python/object/apply:os.system ['true']\nsteps:\n  - {id: a, task: noop}\n",
        [":1:7: refused: tag !!python/object/apply:os.system is not allowed"],
    ),
    "code in an expression": (
        "name: x\nsteps:\n  - id: a\n    task: sleep\n"
        "    with: {seconds: '${{ inputs.__class__.__mro__ }}'}\n",
        ["'inputs.__class__.__mro__': expressions cannot read private attributes"],
    ),
    "not a mapping": ("- just\n- a list\n", [":1:1: a workflow is a mapping with name and steps"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_definition_is_refused_and_nothing_stored(
    cluster: Cluster, write_flow, case: str
) -> None:
    """Each bad definition is refused with its place and reason, and no run is created."""
    text, expected = CASES[case]
    path = write_flow(text, "bad.yaml")

    result = cluster.ctl("submit", str(path))

    assert result.code == 1
    assert result.stdout == ""
    for fragment in expected:
        assert fragment in result.stderr
    assert str(path) in result.stderr
    assert cluster.ctl("list", "--json").stdout == ""
    validated = cluster.ctl("validate", str(path))
    assert validated.code == 1
    assert expected[0] in validated.stderr


GOOD = """
name: typed
inputs:
  count: {type: integer, default: 1}
  label: {type: string}
steps:
  - {id: a, task: noop}
"""


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (
            ["--input", "colour=red", "--input", "label=x"],
            "unknown input 'colour' (declared: count, label)",
        ),
        (
            ["--input", "count=many", "--input", "label=x"],
            "input 'count': expected integer, got 'many'",
        ),
        ([], "input 'label' is required and has no default"),
    ],
)
def test_bad_inputs_are_refused(
    cluster: Cluster, write_flow, inputs: list[str], message: str
) -> None:
    """Unknown, mistyped or missing run inputs are refused at submit; nothing is stored."""
    result = cluster.ctl("submit", str(write_flow(GOOD)), *inputs)
    assert result.code == 1
    assert message in result.stderr
    assert cluster.ctl("list", "--json").stdout == ""


def test_validate_accepts_a_good_file_without_storing(cluster: Cluster, write_flow) -> None:
    """validate reports a good file as valid and starts nothing."""
    result = cluster.ctl("validate", str(write_flow(GOOD)), "--input", "label=x")
    assert result.code == 0
    assert "valid workflow 'typed' with 1 steps" in result.stdout
    assert cluster.ctl("list", "--json").stdout == ""


def test_unreachable_coordinator_is_a_clear_error(tmp_path, write_flow) -> None:
    """workflowctl against a port where nothing listens says so and exits 4."""
    from tests.cluster import Cluster as Fresh

    idle = Fresh(tmp_path)  # never started
    result = idle.ctl("submit", str(write_flow(GOOD)))
    assert result.code == 4
    assert f"cannot reach workflowd at {idle.address}" in result.stderr


@pytest.mark.parametrize("spoil", ["outbox is a file", "journal is a directory"])
def test_an_agent_whose_outbox_cannot_be_used_says_so_and_does_not_start(
    tmp_path, spoil: str
) -> None:
    """The outbox is where results wait to be acknowledged: an agent that cannot use it
    stops at once with one line naming it, not a traceback, and connects to nothing."""
    import subprocess

    from tests.cluster import BIN

    work = tmp_path / "work"
    work.mkdir()
    if spoil == "outbox is a file":
        (work / "outbox").write_text("not a directory")
    else:
        (work / "outbox" / "held.journal").mkdir(parents=True)
    done = subprocess.run(
        [str(BIN / "workflow-agent"), "--name", "host-a", "--work-dir", str(work)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert f"Error: the outbox in {work / 'outbox'} cannot be used" in done.stderr
    assert "Traceback" not in done.stderr
