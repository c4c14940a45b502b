"""The small CA: what it issues, and what it refuses to do."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from workflowd import certs


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    certs.create_ca(tmp_path)
    return tmp_path


def test_keys_are_private_and_the_ca_is_not_overwritten(ca: Path) -> None:
    """Keys are readable by their owner only; an existing CA is kept unless forced."""
    assert (ca / "ca.key").stat().st_mode & 0o777 == 0o600
    with pytest.raises(certs.CertificateError, match="exists; give --force"):
        certs.create_ca(ca)
    certs.create_ca(ca, force=True)


def test_coordinator_certificate_names_loopback_by_default(ca: Path) -> None:
    """A coordinator certificate without addresses given names localhost, 127.0.0.1 and ::1."""
    cert, _ = certs.issue(ca, "coordinator", "coord", ca / "c")

    loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    san = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["coord", "localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert certs.identity_from_pem(cert.read_bytes()).roles == frozenset({"coordinator"})


def test_agent_names_outside_ascii_are_kept_in_the_common_name(ca: Path) -> None:
    """An agent named outside ASCII gets that exact name as its certificate's common name."""
    cert, _ = certs.issue(ca, "agent", "hôte-ü", ca / "a")

    identity = certs.identity_from_pem(cert.read_bytes())
    assert identity.common_name == "hôte-ü"
    assert identity.dns_names == frozenset()  # not a DNS name
    assert identity.roles == frozenset({"agent"})


@pytest.mark.parametrize(
    ("role", "name", "extra", "message"),
    [
        ("admin", "x", {}, "unknown role 'admin'"),
        ("agent", "", {}, "1 to 64 characters"),
        ("coordinator", "c", {"ip_addresses": ("not-an-ip",)}, "does not appear to be an IPv4"),
        ("coordinator", "c", {"dns_names": ("bad name",)}, "is not a DNS name"),
    ],
)
def test_bad_requests_are_refused(
    ca: Path, role: str, name: str, extra: dict, message: str
) -> None:
    """Unknown roles, empty names and malformed addresses are refused with the reason."""
    with pytest.raises(certs.CertificateError, match=message):
        certs.issue(ca, role, name, ca / "out", **extra)


def test_issuing_without_a_ca_says_so(tmp_path: Path) -> None:
    """Issuing from a directory without a CA is a clear error."""
    with pytest.raises(certs.CertificateError, match="cannot read the CA"):
        certs.issue(tmp_path, "agent", "a", tmp_path / "a")


def test_workflowctl_offers_what_the_ca_knows() -> None:
    """workflowctl's certs commands, which load the CA code lazily, agree with it."""
    from workflowd import ctl

    assert (ctl.ROLES, ctl.CA_DAYS, ctl.LEAF_DAYS) == (certs.ROLES, certs.CA_DAYS, certs.LEAF_DAYS)
