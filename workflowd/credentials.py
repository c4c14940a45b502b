"""What a client of workflowd presents: TLS credentials and a bearer token.

Light on purpose: workflowctl and the agent import it at start-up; the
server's side of the same (policy, certificates, tokens) is in `security`.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from workflowd.errors import WorkflowError

TOKEN_METADATA = "authorization"  # noqa: S105 - a header name, not a secret
TOKEN_SCHEME = "Bearer "  # noqa: S105 - the scheme word, not a secret


class SecurityError(WorkflowError):
    code = "security_error"


def read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SecurityError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


def channel_credentials(
    ca: Path | None, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials:
    """TLS that trusts `ca` (the system's roots when None), presenting `cert` when given."""
    if (cert is None) != (key is None):
        raise SecurityError("a client certificate needs its key, and a key its certificate")
    return grpc.ssl_channel_credentials(
        root_certificates=read_file(ca, "CA certificate") if ca else None,
        private_key=read_file(key, "TLS key") if key else None,
        certificate_chain=read_file(cert, "TLS certificate") if cert else None,
    )


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    return ((TOKEN_METADATA, TOKEN_SCHEME + token),) if token else ()
