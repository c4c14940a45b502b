"""A small certificate authority for workflowd, its agents and its operators.

Enough for tests and small deployments: one CA, and certificates that say
what their holder is by a URI in their subject alternative names:
`workflow:coordinator`, `workflow:agent` or `workflow:operator`. An agent's
certificate carries the agent's name as its common name; the coordinator
admits an agent's stream only when that name is the one its hello claims.
Keys are ECDSA P-256, written readable by their owner only.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from workflowd.errors import WorkflowError

ROLE_COORDINATOR, ROLE_AGENT, ROLE_OPERATOR = "coordinator", "agent", "operator"
ROLES = (ROLE_COORDINATOR, ROLE_AGENT, ROLE_OPERATOR)
ROLE_URI_PREFIX = "workflow:"

CA_CERT, CA_KEY = "ca.pem", "ca.key"
CA_DAYS = 3650
LEAF_DAYS = 397

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")


class CertificateError(WorkflowError):
    code = "certificate_error"


@dataclass(frozen=True)
class Identity:
    """Who a certificate names, and what it lets its holder be."""

    common_name: str
    dns_names: frozenset[str]
    roles: frozenset[str]

    def is_named(self, name: str) -> bool:
        return name == self.common_name or name in self.dns_names


def identity_from_pem(pem: bytes) -> Identity:
    certificate = x509.load_pem_x509_certificate(pem)
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = str(names[0].value) if names else ""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return Identity(common_name, frozenset(), frozenset())
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    roles = frozenset(
        u.removeprefix(ROLE_URI_PREFIX) for u in uris if u.startswith(ROLE_URI_PREFIX)
    )
    return Identity(common_name, frozenset(san.get_values_for_type(x509.DNSName)), roles)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write(path: Path, data: bytes, private: bool, force: bool) -> None:
    if path.exists() and not force:
        raise CertificateError(f"{path} exists; give --force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(descriptor, "wb") as file:
        if private:
            os.fchmod(file.fileno(), 0o600)
        file.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def create_ca(
    directory: Path, common_name: str = "workflow CA", days: int = CA_DAYS, force: bool = False
) -> tuple[Path, Path]:
    """A new CA in `directory`: ca.pem and ca.key. Returns their paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    _write(key_path, _key_pem(key), private=True, force=force)
    _write(cert_path, certificate.public_bytes(serialization.Encoding.PEM), False, force)
    return cert_path, key_path


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        certificate = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), None)
    except (OSError, ValueError) as exc:
        raise CertificateError(f"cannot read the CA in {directory}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{directory / CA_KEY} is not an EC key made by `certs init`")
    return certificate, key


def issue(
    ca_directory: Path,
    role: str,
    name: str,
    out_prefix: Path,
    dns_names: tuple[str, ...] = (),
    ip_addresses: tuple[str, ...] = (),
    days: int = LEAF_DAYS,
    force: bool = False,
) -> tuple[Path, Path]:
    """A certificate and key for `name` in `role`, signed by the CA: PREFIX.pem, PREFIX.key.

    A coordinator's certificate names the addresses clients dial: `dns_names`
    and `ip_addresses`, by default localhost, 127.0.0.1 and ::1.
    """
    if role not in ROLES:
        raise CertificateError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    if not name or len(name) > 64:
        raise CertificateError("a certificate name has 1 to 64 characters")
    ca_certificate, ca_key = _load_ca(ca_directory)
    try:
        ips = [ipaddress.ip_address(ip) for ip in ip_addresses]
    except ValueError as exc:
        raise CertificateError(str(exc)) from None
    dns = list(dns_names)
    if role == ROLE_COORDINATOR and not dns and not ips:
        dns, ips = ["localhost"], [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    if _HOSTNAME.match(name) and name not in dns:
        dns.insert(0, name)
    for dns_name in dns:
        if not _HOSTNAME.match(dns_name):
            raise CertificateError(f"{dns_name!r} is not a DNS name")

    key = ec.generate_private_key(ec.SECP256R1())
    alternatives: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(ROLE_URI_PREFIX + role),
        *(x509.DNSName(d) for d in dns),
        *(x509.IPAddress(ip) for ip in ips),
    ]
    usage = ExtendedKeyUsageOID.SERVER_AUTH if role == ROLE_COORDINATOR else None
    now = _now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([usage or ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path = out_prefix.with_name(out_prefix.name + ".pem")
    key_path = out_prefix.with_name(out_prefix.name + ".key")
    _write(key_path, _key_pem(key), private=True, force=force)
    _write(cert_path, certificate.public_bytes(serialization.Encoding.PEM), False, force)
    return cert_path, key_path
