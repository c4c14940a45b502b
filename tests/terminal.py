"""Run a program on a pseudo-terminal, as a person at a terminal would, and read its screen output.

The program sees a real terminal (isatty, a window size), so it draws what it
draws for people: colours, cursor movement, live redraws.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Callable


class Terminal:
    def __init__(
        self, argv: list[str], env: dict[str, str], cwd: str, columns: int = 120, rows: int = 40
    ) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        env = {k: v for k, v in env.items() if k not in ("NO_COLOR", "COLUMNS", "LINES")}
        env["TERM"] = "xterm-256color"
        self.process = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd, close_fds=True
        )
        os.close(slave)
        self._master = master
        self._output = bytearray()
        self._closed = False

    @property
    def output(self) -> str:
        return self._output.decode(errors="replace")

    def _read(self, timeout_s: float) -> bool:
        """Read what is there; False once the program has closed the terminal."""
        if self._closed:
            return False
        ready, _, _ = select.select([self._master], [], [], timeout_s)
        if not ready:
            return True
        try:
            chunk = os.read(self._master, 65536)
        except OSError:  # EIO: every writer has closed the terminal
            chunk = b""
        if not chunk:
            self._closed = True
            return False
        self._output += chunk
        return True

    def read_until(self, condition: Callable[[str], bool], timeout_s: float = 30) -> str:
        deadline = time.monotonic() + timeout_s
        while not condition(self.output):
            if not self._read(0.05) and not condition(self.output):
                raise AssertionError(f"the program ended first; its output:\n{self.output}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s}s; output:\n{self.output}")
        return self.output

    def signal(self, signum: int = signal.SIGINT) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout_s: float = 60) -> int:
        """Read to the end and return the exit code."""
        deadline = time.monotonic() + timeout_s
        while self._read(0.05):
            if time.monotonic() > deadline:
                self.process.kill()
                raise AssertionError(f"still running after {timeout_s}s:\n{self.output}")
        code = self.process.wait(timeout_s)
        os.close(self._master)
        return code
