"""Access policy of the coordinator: certificates, roles and tokens, without a network."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from workflowd import certs
from workflowd.security import AccessPolicy, SecurityError, Tokens

TOKEN = "a-token-of-thirty-two-characters"  # noqa: S105 - a test's own token


@dataclass
class FakeContext:
    """What the policy reads of a call: the peer's certificate and the call's metadata."""

    pem: bytes | None = None
    metadata: list[tuple[str, str]] = field(default_factory=list)

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [self.pem]} if self.pem else {}

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return self.metadata


@pytest.fixture(scope="module")
def pems(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("pki")
    certs.create_ca(root)
    found = {}
    for role, name in [("agent", "host-a"), ("operator", "alice"), ("coordinator", "localhost")]:
        cert, _ = certs.issue(root, role, name, root / f"{role}-{name}")
        found[role] = cert.read_bytes()
    return found


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def test_agent_stream_admits_only_an_agent_certificate_of_the_claimed_name(pems) -> None:
    """An agent certificate for the hello's name is admitted; others are refused with why."""
    policy = AccessPolicy(tls=True)

    assert policy.agent_refusal(FakeContext(pems["agent"]), "host-a") is None
    mismatch = policy.agent_refusal(FakeContext(pems["agent"]), "host-b")
    operator = policy.agent_refusal(FakeContext(pems["operator"]), "alice")
    nothing = policy.agent_refusal(FakeContext(), "host-a")

    assert mismatch == (
        grpc.StatusCode.PERMISSION_DENIED,
        "the certificate names 'host-a', but the hello claims 'host-b'",
    )
    assert operator[0] == grpc.StatusCode.PERMISSION_DENIED
    assert nothing[0] == grpc.StatusCode.UNAUTHENTICATED


def test_control_api_admits_operators_and_tokens_never_agents(pems) -> None:
    """Operator certificates or valid tokens call the control API; agent certificates never."""
    policy = AccessPolicy(tls=True, tokens=Tokens([TOKEN]))

    assert policy.control_refusal(FakeContext(pems["operator"])) is None
    assert policy.control_refusal(FakeContext(pems["coordinator"], bearer(TOKEN))) is None
    as_agent = policy.control_refusal(FakeContext(pems["agent"], bearer(TOKEN)))
    wrong = policy.control_refusal(FakeContext(pems["coordinator"], bearer("x" * 32)))
    without = policy.control_refusal(FakeContext(pems["coordinator"]))

    assert as_agent[0] == grpc.StatusCode.PERMISSION_DENIED
    assert wrong == (grpc.StatusCode.UNAUTHENTICATED, "the token is not valid")
    assert without == (
        grpc.StatusCode.UNAUTHENTICATED,
        "the control API needs an operator certificate or a bearer token (--token)",
    )


def test_without_tls_or_tokens_the_control_api_is_open() -> None:
    """On loopback without TLS or tokens, anyone on the host may call the control API."""
    assert AccessPolicy().control_refusal(FakeContext()) is None
    assert AccessPolicy().agent_refusal(FakeContext(), "anyone") is None


def test_token_file_ignores_comments_and_refuses_short_tokens(tmp_path: Path) -> None:
    """A token file holds one token a line; comments are skipped, short tokens refused."""
    good = tmp_path / "tokens"
    good.write_text(f"# rotated monthly\n\n{TOKEN}\n  second-token-also-long-enough  \n")
    short = tmp_path / "short"
    short.write_text("tiny\n")
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n")

    tokens = Tokens.from_file(good)

    assert tokens.accepts(TOKEN)
    assert tokens.accepts("second-token-also-long-enough")
    assert not tokens.accepts("# rotated monthly")
    with pytest.raises(SecurityError, match="at least 16 characters"):
        Tokens.from_file(short)
    with pytest.raises(SecurityError, match="holds no token"):
        Tokens.from_file(empty)


def test_identity_reads_names_and_roles(pems) -> None:
    """A certificate's identity is its common name, DNS names and workflow roles."""
    identity = certs.identity_from_pem(pems["agent"])

    assert identity.common_name == "host-a"
    assert identity.roles == frozenset({"agent"})
    assert identity.is_named("host-a")
    assert not identity.is_named("host-b")
