"""systemd's service notification protocol, and a watchdog fed from the event loop.

Under `Type=notify` systemd hands a service the address of a datagram socket in
`$NOTIFY_SOCKET`; the service sends newline-separated `KEY=VALUE` lines to it:
`READY=1` once it serves, `STOPPING=1` when it shuts down, `STATUS=...` for
`systemctl status`, and `WATCHDOG=1` at least every `$WATCHDOG_USEC`, else
systemd kills and restarts it.

NOTE: the protocol is one datagram, so it is implemented here in a few lines.
The pure-Python package for it (sdnotify) has had no release since 2017, and
the bindings to libsystemd (systemd-python, cysystemd) need a C build; neither
is worth a dependency.

The watchdog is fed by an asyncio task: a loop that is wedged (a blocking call,
a busy coroutine) stops feeding it, and systemd restarts the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable, MutableMapping

import structlog

log = structlog.get_logger()

# How often STATUS= is refreshed when systemd asks for no watchdog.
STATUS_INTERVAL_S = 5.0

_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def send(address: str, *lines: str) -> bool:
    """Send `lines` as one notification to `address`; False when it could not be sent.

    An address starting with '@' is in Linux's abstract socket namespace.
    """
    if address.startswith("@"):
        target = "\0" + address[1:]
    elif address.startswith("/"):
        target = address
    else:
        log.warning("systemd_notify_unsupported_address", address=address)
        return False
    payload = "\n".join(lines).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        # systemd reads its socket promptly; the timeout only bounds a pathological stall
        sock.settimeout(1.0)
        try:
            sock.connect(target)
            sock.sendall(payload)
        except OSError as exc:
            log.warning("systemd_notify_failed", address=address, error=str(exc))
            return False
    return True


def watchdog_interval_s(environ: MutableMapping[str, str]) -> float | None:
    """Half the watchdog period systemd asks for, or None when there is no watchdog for us."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (for example our parent)
    return int(usec) / 2 / 1_000_000


class ServiceNotifier:
    """Tells systemd when the service is ready and stopping, and feeds its watchdog.

    Does nothing when the process was not started with `NOTIFY_SOCKET`. The
    variables are removed from the environment (like sd_notify's
    `unset_environment`), so that processes the service starts do not speak
    for it. `status`, when given, is asked for a fresh STATUS= line at every tick.
    """

    def __init__(
        self,
        status: Callable[[], str] | None = None,
        environ: MutableMapping[str, str] | None = None,
    ) -> None:
        environ = os.environ if environ is None else environ
        self.address = environ.get("NOTIFY_SOCKET", "")
        self.watchdog_s = watchdog_interval_s(environ)
        for name in _VARIABLES:
            environ.pop(name, None)
        self._status = status
        self._last_status = ""
        self._ticker: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, *lines: str) -> bool:
        return bool(self.address) and send(self.address, *lines)

    def ready(self, status: str = "") -> None:
        """READY=1, and start feeding the watchdog from the running event loop."""
        if not self.enabled:
            return
        lines = ["READY=1", f"MAINPID={os.getpid()}"]
        if status:
            lines.append(f"STATUS={status}")
            self._last_status = status
        self.notify(*lines)
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick())

    def status(self, text: str) -> None:
        if self.enabled and text != self._last_status:
            self._last_status = text
            self.notify(f"STATUS={text}")

    def stopping(self, status: str = "stopping") -> None:
        """STOPPING=1. The watchdog is still fed: a shutdown that wedges is noticed too."""
        self._stopping = True
        if self.enabled:
            self._last_status = status
            self.notify("STOPPING=1", f"STATUS={status}")

    async def close(self) -> None:
        """Stop feeding the watchdog; the last thing before the process exits."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None

    async def _tick(self) -> None:
        interval_s = self.watchdog_s or STATUS_INTERVAL_S
        while True:
            if self.watchdog_s is not None:
                self.notify("WATCHDOG=1")
            if self._status is not None and not self._stopping:
                try:
                    self.status(self._status())
                except Exception:
                    log.exception("systemd_status_failed")
            await asyncio.sleep(interval_s)
