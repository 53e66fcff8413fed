"""Bearer-token authentication: ``authorization: Bearer <token>`` on every call but health.

Tokens come from a file, one per line (blank lines and ``#`` comments skipped), several at once so
that they can be rotated: add the new one, reload (SIGHUP), move the clients, remove the old one,
reload. Only SHA-256 digests are kept, and a presented token is compared by its digest, so the
comparison's timing says nothing about the tokens.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from pathlib import Path

from genserve.serving.errors import Unauthenticated

log = logging.getLogger(__name__)

AUTHORIZATION = "authorization"
SCHEME = "bearer "


class TokenFileError(ValueError):
    """The token file cannot be read or holds no token."""


def read_tokens(path: Path) -> frozenset[bytes]:
    """The SHA-256 digests of the tokens in ``path``; TokenFileError if unreadable or empty."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenFileError(f"cannot read the token file {path}: {exc}") from exc
    tokens = [line.strip() for line in text.splitlines()]
    tokens = [t for t in tokens if t and not t.startswith("#")]
    if not tokens:
        raise TokenFileError(f"the token file {path} holds no token (one per line)")
    return frozenset(_digest(t) for t in tokens)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenAuth:
    """The accepted tokens, from ``path``; ``reload`` re-reads it (keeping the old tokens if the
    file has become unreadable or empty, which would otherwise lock every client out)."""

    def __init__(self, path: Path):
        self.path = path
        self._digests = read_tokens(path)
        log.info("bearer tokens: %d from %s", len(self._digests), path)

    def reload(self) -> None:
        try:
            digests = read_tokens(self.path)
        except TokenFileError as exc:
            log.error("token reload failed, keeping the %d tokens in use: %s", len(self._digests), exc)
            return
        self._digests = digests
        log.info("bearer tokens reloaded: %d from %s", len(digests), self.path)

    def check(self, metadata: Iterable[tuple[str, str | bytes]]) -> None:
        """Unauthenticated unless ``metadata`` has ``authorization: Bearer <a valid token>``."""
        header = next((value for key, value in metadata if key == AUTHORIZATION), None)
        if header is None:
            raise Unauthenticated("this server requires `authorization: Bearer <token>` metadata")
        if not isinstance(header, str) or not header[: len(SCHEME)].lower() == SCHEME:
            raise Unauthenticated("the authorization metadata must be `Bearer <token>`")
        if _digest(header[len(SCHEME) :].strip()) not in self._digests:
            raise Unauthenticated("invalid bearer token")
