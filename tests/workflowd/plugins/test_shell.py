"""shell.run: an argument list, its exit code and output, and nothing left running."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from workflowd.execution import Outcome, execute
from workflowd.plugins.shell import MAX_CAPTURE_BYTES, ShellRun
from workflowd.tasks import StepContext


def run(tmp_path: Path, params: dict) -> Outcome:
    ctx = StepContext(
        run_id="r", step_id="s", attempt=1, host="h", config={}, scratch_dir=tmp_path, report=print
    )
    return asyncio.run(execute(ShellRun(), ctx, params))


def python(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


def test_arguments_are_passed_without_a_shell(tmp_path: Path) -> None:
    """Arguments reach the program as they are: no shell expands them."""
    outcome = run(tmp_path, {"command": python("import sys; print(sys.argv[1:])", "$HOME", "*;x")})

    assert outcome.ok
    assert outcome.outputs == {"exit_code": 0, "stdout": "['$HOME', '*;x']\n", "stderr": ""}


def test_working_directory_and_environment(tmp_path: Path) -> None:
    """The command runs in the scratch directory by default, with the variables given."""
    code = "import os; print(os.getcwd(), os.environ['GREETING'])"

    outcome = run(tmp_path, {"command": python(code), "env": {"GREETING": "grüß"}})

    assert outcome.outputs["stdout"] == f"{tmp_path} grüß\n"


def test_non_zero_exit_fails_with_status_and_details(tmp_path: Path) -> None:
    """A non-zero exit fails the step; the failure keeps exit code and output as details."""
    outcome = run(tmp_path, {"command": python("import sys; print('out'); sys.exit('boom')")})

    assert not outcome.ok
    assert outcome.message == "command exited with status 1: boom"
    assert outcome.details == {"exit_code": 1, "stdout": "out\n", "stderr": "boom\n"}


def test_missing_program_is_a_clear_failure(tmp_path: Path) -> None:
    """A program that does not exist fails the step saying so."""
    outcome = run(tmp_path, {"command": ["/no/such/program"]})

    assert outcome.message == "cannot run '/no/such/program': No such file or directory"


def test_timeout_kills_the_command(tmp_path: Path) -> None:
    """A command past its timeout is killed, and the step fails saying so."""
    outcome = run(tmp_path, {"command": python("import time; time.sleep(30)"), "timeout_s": 0.5})

    assert outcome.message == "command timed out after 0.5s"


def test_cancelling_the_step_kills_the_command(tmp_path: Path) -> None:
    """A cancelled step leaves no process behind."""
    pid_file = tmp_path / "pid"
    code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(30)"

    async def scenario() -> None:
        ctx = StepContext("r", "s", 1, "h", {}, tmp_path, report=print)
        task = asyncio.create_task(ShellRun().run(ctx, ShellRun.Params(command=python(code))))
        while not pid_file.exists() or not pid_file.read_text():  # noqa: ASYNC110 - another process writes it
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_output_that_is_not_utf8_or_too_long(tmp_path: Path) -> None:
    """Invalid UTF-8 becomes U+FFFD; output beyond the capture keeps its tail, saying so."""
    code = (
        "import sys; sys.stdout.buffer.write(b'\\xff' + b'x' * "
        f"{MAX_CAPTURE_BYTES + 10}); sys.stderr.buffer.write(b'caf\\xe9')"
    )

    outcome = run(tmp_path, {"command": python(code)})

    assert outcome.outputs["stderr"] == "caf\ufffd"
    assert outcome.outputs["stdout"].startswith("[11 bytes dropped]\nxxx")
    assert len(outcome.outputs["stdout"]) == MAX_CAPTURE_BYTES + len("[11 bytes dropped]\n")
