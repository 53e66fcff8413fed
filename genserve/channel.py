"""Client channels to a genserve server: plain text or TLS (a CA to trust, a client certificate
for mutual TLS), a bearer token on every call, and a retry policy.

    creds = Credentials(tls_ca=Path("ca.pem"), token="s3cret")
    channel = open_channel("genserve.example:443", creds)            # grpc.Channel
    channel = open_channel("127.0.0.1:50051", aio=True)             # grpc.aio.Channel

Retries: every genserve and KServe inference call is retried on UNAVAILABLE (up to
``RETRY_ATTEMPTS`` attempts, with backoff), through gRPC's own retry support (a service config),
so a call refused by a draining replica or cut by a replica that died goes to another one. They
are safe to retry: no call changes server state; a generation with a seed gives the same images
again (without one, the server draws a seed, and a retried call may draw another). gRPC retries a
call only until the server's first response message arrives, so a stream is never replayed in
part.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from genserve.serving.config import MAX_MESSAGE_BYTES

TOKEN_ENV = "GENSERVE_TOKEN"  # the bearer token, when no --token-file is given
RETRY_ATTEMPTS = 4  # the first try included
RETRIED_SERVICES = ("genserve.v1.GenerationService", "inference.GRPCInferenceService", "grpc.health.v1.Health")

SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": service} for service in RETRIED_SERVICES],
                "retryPolicy": {
                    "maxAttempts": RETRY_ATTEMPTS,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


@dataclass(frozen=True)
class Credentials:
    """How to reach a server: TLS when ``tls`` or any certificate is given; ``token`` is sent as
    ``authorization: Bearer <token>`` on every call."""

    tls: bool = False  # TLS trusting the system's CAs (or tls_ca)
    tls_ca: Path | None = None  # PEM CA bundle to trust (a private CA); implies TLS
    tls_cert: Path | None = None  # PEM client certificate, for mutual TLS
    tls_key: Path | None = None  # its private key
    server_name: str | None = None  # the name to check the server's certificate against, if not the target's host
    token: str | None = None

    @property
    def secure(self) -> bool:
        return self.tls or self.tls_ca is not None or self.tls_cert is not None

    def channel_credentials(self) -> grpc.ChannelCredentials:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("a client certificate needs its key: give both --tls-cert and --tls-key")
        return grpc.ssl_channel_credentials(
            root_certificates=self.tls_ca.read_bytes() if self.tls_ca else None,
            private_key=self.tls_key.read_bytes() if self.tls_key else None,
            certificate_chain=self.tls_cert.read_bytes() if self.tls_cert else None,
        )


def channel_options(retry: bool = True, extra: Sequence[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.enable_retries", int(retry)),
    ]
    if retry:
        options.append(("grpc.service_config", SERVICE_CONFIG))
    return options + list(extra)


class _Token(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every call (on plain-text channels too: behind a
    balancer that terminates TLS, or on loopback)."""

    def __init__(self, token: str):
        self._metadata = ("authorization", f"Bearer {token}")

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [*(details.metadata or ()), self._metadata]
        return _CallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready, details.compression
        )

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)


class _AioToken(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, token: str):
        self._metadata = ("authorization", f"Bearer {token}")

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), self._metadata)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(self._details(details), request)


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


def open_channel(
    target: str,
    credentials: Credentials | None = None,
    *,
    aio: bool = False,
    retry: bool = True,
    options: Sequence[tuple[str, Any]] = (),
) -> Any:
    """A ``grpc.Channel`` (``aio``: a ``grpc.aio.Channel``) to ``target`` as ``credentials`` say."""
    credentials = credentials or Credentials()
    opts = channel_options(retry, options)
    if credentials.server_name:
        opts.append(("grpc.ssl_target_name_override", credentials.server_name))
    if aio:
        interceptors = [_AioToken(credentials.token)] if credentials.token else None
        if credentials.secure:
            return grpc.aio.secure_channel(
                target, credentials.channel_credentials(), options=opts, interceptors=interceptors
            )
        return grpc.aio.insecure_channel(target, options=opts, interceptors=interceptors)
    if credentials.secure:
        channel = grpc.secure_channel(target, credentials.channel_credentials(), options=opts)
    else:
        channel = grpc.insecure_channel(target, options=opts)
    return grpc.intercept_channel(channel, _Token(credentials.token)) if credentials.token else channel


def read_token(path: Path | None) -> str | None:
    """The token in ``path`` (its first non-comment line), else $GENSERVE_TOKEN, else None."""
    if path is None:
        return os.environ.get(TOKEN_ENV) or None
    for line in path.read_text().splitlines():
        if line.strip() and not line.strip().startswith("#"):
            return line.strip()
    raise ValueError(f"no token in {path}")
