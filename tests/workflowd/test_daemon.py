"""workflowd's start-up checks: plaintext stays on loopback unless told otherwise."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from structlog.testing import capture_logs

from workflowd.daemon import Security, check_security, is_loopback


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [
        ("127.0.0.1:7471", True),
        ("127.8.9.10:7471", True),
        ("[::1]:7471", True),
        ("localhost:7471", True),
        ("unix:/run/workflowd.sock", True),
        ("0.0.0.0:7471", False),
        ("[::]:7471", False),
        (":7471", False),
        ("192.0.2.10:7471", False),
        ("no-such-host.invalid:7471", False),
    ],
)
def test_loopback_addresses_are_recognised(listen: str, loopback: bool) -> None:
    """Loopback addresses, names and unix sockets are local; anything else is not."""
    assert is_loopback(listen) is loopback


def test_plaintext_beyond_loopback_is_refused() -> None:
    """Without TLS, an address beyond loopback is a usage error that names the way out."""
    with pytest.raises(click.UsageError, match="or --insecure"):
        check_security("0.0.0.0:7471", Security())


def test_insecure_serves_plaintext_with_a_warning() -> None:
    """--insecure allows plaintext beyond loopback, and says in the log what that means."""
    with capture_logs() as logs:
        check_security("0.0.0.0:7471", Security(insecure=True))

    assert [entry["event"] for entry in logs] == ["listening_insecure"]
    assert logs[0]["log_level"] == "warning"


def test_tls_needs_all_three_files(tmp_path: Path) -> None:
    """A certificate without its key or client CA is a usage error, not half of TLS."""
    with pytest.raises(click.UsageError, match="--tls-client-ca"):
        check_security("127.0.0.1:7471", Security(tls_cert=tmp_path / "c.pem"))
