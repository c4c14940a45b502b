"""Who may call what: TLS credentials, peers named by certificates, and bearer tokens.

With TLS, every peer presents a certificate from the client CA: an agent's
stream is admitted only with an agent certificate whose name is the one its
hello claims; the control API admits operator certificates, or a valid bearer
token from a peer whose certificate is not an agent's. Without TLS (loopback,
or an explicit --insecure) the agent stream is open, and the control API is
open unless a token file is configured.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import structlog

from workflowd.certs import ROLE_AGENT, ROLE_OPERATOR, Identity, identity_from_pem
from workflowd.credentials import (
    TOKEN_METADATA,
    TOKEN_SCHEME,
    SecurityError,
    bearer_metadata,
    channel_credentials,
    read_file,
)

__all__ = [
    "AccessPolicy",
    "ControlAuthInterceptor",
    "SecurityError",
    "Tokens",
    "bearer_metadata",
    "channel_credentials",
    "server_credentials",
]

log = structlog.get_logger()

MIN_TOKEN_CHARS = 16
# Services any peer may call: liveness probes carry no data.
OPEN_SERVICES = ("/grpc.health.v1.Health/",)
AGENT_SERVICE = "/workflow.v1.AgentService/"

Refusal = tuple[grpc.StatusCode, str]


def server_credentials(cert: Path, key: Path, client_ca: Path) -> grpc.ServerCredentials:
    """TLS that requires every client to present a certificate from `client_ca`."""
    # TODO: gRPC Python can require client certificates or not ask for them, not ask
    # and accept either; an operator with a token but no certificate would need a
    # second listener for the control API, served with server-only TLS.
    return grpc.ssl_server_credentials(
        [(read_file(key, "TLS key"), read_file(cert, "TLS certificate"))],
        root_certificates=read_file(client_ca, "client CA"),
        require_client_auth=True,
    )


class Tokens:
    """Bearer tokens accepted by the control API, kept as SHA-256 digests only."""

    def __init__(self, tokens: list[str]) -> None:
        self._digests = tuple(hashlib.sha256(t.encode()).digest() for t in tokens)

    @classmethod
    def from_file(cls, path: Path) -> Tokens:
        """One token per line; blank lines and lines starting with # are ignored."""
        text = read_file(path, "token file").decode("utf-8", "replace")
        tokens = [
            line.strip()
            for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
        if not tokens:
            raise SecurityError(f"the token file {path} holds no token")
        if short := [i for i, t in enumerate(tokens, 1) if len(t) < MIN_TOKEN_CHARS]:
            raise SecurityError(
                f"tokens in {path} must have at least {MIN_TOKEN_CHARS} characters "
                f"(token {short[0]} has fewer)"
            )
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("token_file_readable_by_others", path=str(path))
        return cls(tokens)

    def accepts(self, token: str) -> bool:
        digest = hashlib.sha256(token.encode("utf-8", "replace")).digest()
        # compare with every token, in constant time, whatever matches first
        found = False
        for known in self._digests:
            found |= hmac.compare_digest(digest, known)
        return found


@functools.lru_cache(maxsize=1024)
def _identity(pem: bytes) -> Identity:
    return identity_from_pem(pem)


def peer_identity(context: grpc.aio.ServicerContext) -> Identity | None:
    """The identity in the peer's verified certificate; None without one."""
    pems = context.auth_context().get("x509_pem_cert")
    if not pems:
        return None
    try:
        return _identity(bytes(pems[0]))
    except ValueError:
        return None


def _bearer(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == TOKEN_METADATA and isinstance(value, str) and value.startswith(TOKEN_SCHEME):
            return value.removeprefix(TOKEN_SCHEME).strip()
    return ""


@dataclass(frozen=True)
class AccessPolicy:
    """What the coordinator requires of agents and of control API callers."""

    tls: bool = False
    tokens: Tokens | None = field(default=None, repr=False)

    @property
    def control_open(self) -> bool:
        return not self.tls and self.tokens is None

    def agent_refusal(self, context: grpc.aio.ServicerContext, name: str) -> Refusal | None:
        """Why an agent stream claiming `name` is refused, or None to admit it."""
        if not self.tls:
            return None
        identity = peer_identity(context)
        if identity is None:
            return grpc.StatusCode.UNAUTHENTICATED, "agents must present a client certificate"
        if ROLE_AGENT not in identity.roles:
            return (
                grpc.StatusCode.PERMISSION_DENIED,
                f"the certificate of {identity.common_name!r} is not an agent certificate",
            )
        if not identity.is_named(name):
            return (
                grpc.StatusCode.PERMISSION_DENIED,
                f"the certificate names {identity.common_name!r}, but the hello claims {name!r}",
            )
        return None

    def control_refusal(self, context: grpc.aio.ServicerContext) -> Refusal | None:
        """Why a control API call is refused, or None to serve it."""
        identity = peer_identity(context) if self.tls else None
        if identity is not None and ROLE_AGENT in identity.roles:
            return (
                grpc.StatusCode.PERMISSION_DENIED,
                "agent certificates cannot call the control API",
            )
        if identity is not None and ROLE_OPERATOR in identity.roles:
            return None
        token = _bearer(context)
        if token and self.tokens is not None:
            if self.tokens.accepts(token):
                return None
            return grpc.StatusCode.UNAUTHENTICATED, "the token is not valid"
        if self.control_open:
            return None
        wanted = " or ".join(
            what
            for what, offered in (
                ("an operator certificate", self.tls),
                ("a bearer token (--token)", self.tokens is not None),
            )
            if offered
        )
        return grpc.StatusCode.UNAUTHENTICATED, f"the control API needs {wanted}"


class ControlAuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks the caller of every method but the agent stream and health checks."""

    def __init__(self, policy: AccessPolicy) -> None:
        self.policy = policy

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method or ""
        if handler is None or method.startswith((AGENT_SERVICE, *OPEN_SERVICES)):
            return handler
        return _guarded(handler, self.policy, method)


async def _check(policy: AccessPolicy, context: grpc.aio.ServicerContext, method: str) -> None:
    refusal = policy.control_refusal(context)
    if refusal is not None:
        code, reason = refusal
        log.warning("control_call_refused", method=method, code=code.name, reason=reason)
        await context.abort(code, reason)


def _guarded(handler: grpc.RpcMethodHandler, policy: AccessPolicy, method: str) -> Any:
    """The same handler, checking the caller before it runs."""
    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await _check(policy, context, method)
            return await inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **serializers)
    if handler.unary_stream:
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator:
            await _check(policy, context, method)
            async for response in _responses(inner_us(request, context)):
                yield response

        return grpc.unary_stream_rpc_method_handler(unary_stream, **serializers)
    if handler.stream_unary:
        inner_su = handler.stream_unary

        async def stream_unary(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            await _check(policy, context, method)
            return await inner_su(requests, context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **serializers)
    inner_ss = handler.stream_stream

    async def stream_stream(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator:
        await _check(policy, context, method)
        async for response in _responses(inner_ss(requests, context)):
            yield response

    return grpc.stream_stream_rpc_method_handler(stream_stream, **serializers)


async def _responses(result: Any) -> AsyncIterator:
    """A streaming handler's responses, whether it yields them or writes them itself."""
    if hasattr(result, "__aiter__"):
        async for response in result:
            yield response
    elif result is not None:
        await result
