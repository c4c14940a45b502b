"""`shell.run`: runs a command on the host. Refused unless the host allows it by name.

The command is an argument vector run without a shell, so nothing in a
parameter is ever interpreted as shell syntax. Standard output and error are
captured (their last MAX_CAPTURE_BYTES each), decoded as UTF-8 with invalid
bytes replaced. A non-zero exit fails the step.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from workflowd.errors import TaskError
from workflowd.tasks import StepContext, Task

MAX_CAPTURE_BYTES = 1 << 20
_CHUNK_BYTES = 1 << 16
_DETAIL_CHARS = 4000


class ShellParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    command: list[str] = Field(
        min_length=1, description="The program and its arguments; no shell is involved."
    )
    cwd: str | None = Field(
        default=None, description="Working directory; the step's scratch directory by default."
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Variables set on top of the agent's environment."
    )
    timeout_s: float | None = Field(
        default=None, gt=0, description="Kill the command after this many seconds."
    )


class ShellOutputs(BaseModel):
    exit_code: int
    stdout: str
    stderr: str


class _Tail:
    """The last `limit` bytes of a stream, and how many were dropped before them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.dropped = 0

    async def drain(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(_CHUNK_BYTES):
            self.data += chunk
            if len(self.data) > self.limit:
                cut = len(self.data) - self.limit
                del self.data[:cut]
                self.dropped += cut

    def text(self) -> str:
        text = self.data.decode("utf-8", "replace")
        return f"[{self.dropped} bytes dropped]\n{text}" if self.dropped else text


def _kill(process: asyncio.subprocess.Process) -> None:
    # the command runs in its own session: kill whatever it started, too
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


class ShellRun(Task):
    name = "shell.run"
    description = "Runs a command (an argument list, no shell); a non-zero exit fails the step."
    Params = ShellParams
    Outputs = ShellOutputs
    requires_explicit_allow = True

    async def run(self, ctx: StepContext, params: ShellParams) -> ShellOutputs:
        cwd = Path(params.cwd) if params.cwd else ctx.scratch_dir
        ctx.log.info("command_started", program=params.command[0], cwd=str(cwd))
        try:
            process = await asyncio.create_subprocess_exec(
                *params.command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=cwd,
                env={**os.environ, **params.env},
                start_new_session=True,
            )
        except OSError as exc:
            raise TaskError(f"cannot run {params.command[0]!r}: {exc.strerror or exc}") from None

        stdout, stderr = _Tail(MAX_CAPTURE_BYTES), _Tail(MAX_CAPTURE_BYTES)
        pipes = (process.stdout, process.stderr)
        drains = [
            tail.drain(pipe) for tail, pipe in zip((stdout, stderr), pipes, strict=True) if pipe
        ]
        done = asyncio.gather(*drains, process.wait())
        try:
            await asyncio.wait_for(done, params.timeout_s)
        except TimeoutError:
            raise TaskError(f"command timed out after {params.timeout_s:g}s") from None
        finally:
            # cancelled or timed out: leave nothing running, nor unreaped, behind the step
            if process.returncode is None:
                _kill(process)
                await process.wait()

        outputs = ShellOutputs(
            exit_code=process.returncode, stdout=stdout.text(), stderr=stderr.text()
        )
        if outputs.exit_code != 0:
            raise TaskError(_failure(outputs), details=_short(outputs))
        return outputs


def _failure(outputs: ShellOutputs) -> str:
    if outputs.exit_code < 0:
        what = f"command was killed by signal {-outputs.exit_code}"
    else:
        what = f"command exited with status {outputs.exit_code}"
    last = outputs.stderr.strip().splitlines()[-1:] or outputs.stdout.strip().splitlines()[-1:]
    return f"{what}: {last[0][:500]}" if last else what


def _short(outputs: ShellOutputs) -> dict[str, object]:
    return {
        "exit_code": outputs.exit_code,
        "stdout": outputs.stdout[-_DETAIL_CHARS:],
        "stderr": outputs.stderr[-_DETAIL_CHARS:],
    }
