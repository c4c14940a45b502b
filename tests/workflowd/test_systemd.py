"""The sd_notify protocol against a socket the test listens on, and the event-loop watchdog."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from workflowd import systemd


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A datagram socket bound to a path, as systemd's notify socket is."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        yield str(path), sock


def received(sock: socket.socket, timeout_s: float = 0.0) -> list[str]:
    """Every datagram already waiting on `sock` (or arriving within `timeout_s`)."""
    sock.settimeout(timeout_s or 0.001)
    found = []
    while True:
        try:
            found.append(sock.recv(4096).decode())
        except (TimeoutError, BlockingIOError):
            return found


def test_send_to_a_path(listener):
    """Lines are sent as one datagram, newline-separated, to a socket path."""
    address, sock = listener

    assert systemd.send(address, "READY=1", "STATUS=serving")

    assert sock.recv(4096) == b"READY=1\nSTATUS=serving"


def test_send_to_an_abstract_address():
    """An address starting with '@' names a socket in the abstract namespace."""
    name = f"workflowd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)

        assert systemd.send("@" + name, "WATCHDOG=1")

        assert sock.recv(4096) == b"WATCHDOG=1"


def test_send_to_nothing_listening(tmp_path):
    """A socket nobody listens on is reported as not sent, without raising."""
    assert not systemd.send(str(tmp_path / "gone.sock"), "READY=1")


def test_send_to_an_unsupported_address():
    """An address that is neither a path nor abstract is refused."""
    assert not systemd.send("vsock:2:1234", "READY=1")


@pytest.mark.parametrize(
    ("environ", "interval_s"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}, 1.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, None),
    ],
)
def test_watchdog_interval(environ, interval_s):
    """The watchdog is fed at half its period, and only by the process it is meant for."""
    assert systemd.watchdog_interval_s(environ) == interval_s


def test_notifier_without_socket_does_nothing():
    """Outside systemd (no NOTIFY_SOCKET) the notifier is silent and starts no task."""

    async def scenario() -> None:
        notifier = systemd.ServiceNotifier(environ={})
        notifier.ready("serving")
        assert notifier._ticker is None
        notifier.stopping()
        await notifier.close()

    asyncio.run(scenario())


def test_notifier_takes_its_variables_out_of_the_environment(listener):
    """Processes the service starts do not inherit the right to speak for it."""
    address, _ = listener
    environ = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000", "PATH": "/bin"}

    systemd.ServiceNotifier(environ=environ)

    assert environ == {"PATH": "/bin"}


def test_ready_watchdog_status_and_stopping(listener):
    """READY=1 with the pid and status, WATCHDOG=1 at every half period, then STOPPING=1."""
    address, sock = listener
    statuses = iter(["1 agents connected", "1 agents connected", "2 agents connected"])

    async def scenario() -> None:
        notifier = systemd.ServiceNotifier(
            status=lambda: next(statuses, "2 agents connected"),
            environ={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "100000"},
        )
        notifier.ready("serving on 127.0.0.1:7471")
        await asyncio.sleep(0.22)  # ticks at 0, 0.05, 0.10, 0.15, 0.20
        notifier.stopping("stopping")
        await notifier.close()

    asyncio.run(scenario())

    messages = received(sock)
    assert messages[0] == f"READY=1\nMAINPID={os.getpid()}\nSTATUS=serving on 127.0.0.1:7471"
    assert messages[-1] == "STOPPING=1\nSTATUS=stopping"
    assert messages.count("WATCHDOG=1") >= 4
    # a status is sent when it changes, not at every tick
    assert [m for m in messages if m.startswith("STATUS=")] == [
        "STATUS=1 agents connected",
        "STATUS=2 agents connected",
    ]


def test_watchdog_is_fed_while_stopping(listener):
    """After STOPPING=1 the watchdog is still fed, and no status overwrites "stopping"."""
    address, sock = listener

    async def scenario() -> None:
        notifier = systemd.ServiceNotifier(
            status=lambda: "busy",
            environ={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "100000"},
        )
        notifier.ready()
        notifier.stopping("draining")
        await asyncio.sleep(0.17)
        await notifier.close()

    asyncio.run(scenario())

    messages = received(sock)
    after = messages[messages.index("STOPPING=1\nSTATUS=draining") + 1 :]
    assert after.count("WATCHDOG=1") >= 2
    assert set(after) == {"WATCHDOG=1"}


def test_a_wedged_loop_stops_feeding_the_watchdog(listener):
    """While the event loop is blocked no WATCHDOG=1 is sent, so systemd would restart us."""
    address, sock = listener

    async def scenario() -> None:
        notifier = systemd.ServiceNotifier(
            environ={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "100000"}
        )
        notifier.ready()
        await asyncio.sleep(0.2)
        time.sleep(0.5)  # noqa: ASYNC251 - the wedge under test: a blocking call on the loop
        await asyncio.sleep(0.2)
        await notifier.close()

    service = threading.Thread(target=asyncio.run, args=(scenario(),))
    service.start()
    arrivals = []
    sock.settimeout(0.05)
    while service.is_alive():
        with contextlib.suppress(TimeoutError):
            if sock.recv(4096) == b"WATCHDOG=1":
                arrivals.append(time.monotonic())
    service.join()

    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert max(gaps) >= 0.45  # nothing while the loop was wedged
    assert sorted(gaps)[len(gaps) // 2] < 0.1  # about every 50 ms otherwise
