"""API keys and browser origins: who may use the edge."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from service.settings import Settings

# A WebSocket client names the protocol and may carry its key as a second subprotocol,
# `audiochat.bearer.<key>`: browsers cannot set an Authorization header on a WebSocket.
WS_SUBPROTOCOL = "audiochat.v1"
WS_BEARER_PREFIX = "audiochat.bearer."


class ApiKeys:
    """The accepted keys, kept as digests and compared in constant time."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = [_digest(key) for key in keys if key]

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeys:
        """Keys from AUDIOCHAT_API_KEYS (comma-separated) and AUDIOCHAT_API_KEYS_FILE (one per line)."""
        keys = [key.strip() for key in settings.api_keys.split(",")]
        if settings.api_keys_file:
            lines = Path(settings.api_keys_file).read_text().splitlines()
            keys += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        return cls(keys)

    @property
    def open(self) -> bool:
        """No key configured: everyone is let in."""
        return not self._digests

    def accepts(self, key: str | None) -> bool:
        """Whether `key` is one of the keys (always true when none is configured)."""
        if self.open:
            return True
        if not key:
            return False
        digest = _digest(key)
        # Compare with every key, so the time taken does not tell which one matched.
        return sum(hmac.compare_digest(digest, known) for known in self._digests) > 0

    def accepts_headers(self, headers: Mapping[str, str]) -> bool:
        """Whether the request's `Authorization: Bearer <key>` is accepted."""
        scheme, _, token = headers.get("authorization", "").partition(" ")
        return self.accepts(token.strip() if scheme.lower() == "bearer" else None)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def subprotocol_token(offered: Iterable[str]) -> str | None:
    """The key carried in an `audiochat.bearer.<key>` subprotocol, if the client offered one."""
    for protocol in offered:
        if protocol.startswith(WS_BEARER_PREFIX):
            return protocol.removeprefix(WS_BEARER_PREFIX)
    return None


class Origins:
    """The browser origins allowed to open a WebSocket or read an SSE answer cross-origin."""

    def __init__(self, setting: str) -> None:
        entries = {entry.strip().rstrip("/") for entry in setting.split(",") if entry.strip()}
        self.any = "*" in entries
        self.allowed = frozenset(entries - {"*"})

    def allows(self, origin: str | None, host: str | None) -> bool:
        """Non-browser clients send no Origin; a browser's must be listed, or be this very host."""
        if origin is None or self.any or origin in self.allowed:
            return True
        # Same-origin pages (the web page served by this edge) need no configuration.
        return host is not None and urlsplit(origin).netloc == host
