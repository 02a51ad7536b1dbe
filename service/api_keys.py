"""API keys: who may call audiochat, on the gRPC port and at the edge alike."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from pathlib import Path

from service.settings import Settings

AUTHORIZATION = "authorization"  # the HTTP header, and the gRPC metadata key, carrying `Bearer <key>`


class ApiKeys:
    """The accepted keys, kept as digests and compared in constant time."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = [digest(key) for key in keys if key]

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
        presented = digest(key)
        # Compare with every key, so the time taken does not tell which one matched.
        return sum(hmac.compare_digest(presented, known) for known in self._digests) > 0

    def accepts_headers(self, headers: Mapping[str, str]) -> bool:
        """Whether the request's `Authorization: Bearer <key>` is accepted."""
        return self.accepts(bearer_token(headers.get(AUTHORIZATION, "")))


def digest(key: str) -> bytes:
    """SHA-256 of a key: what is kept in memory instead of the key, and compared."""
    return hashlib.sha256(key.encode()).digest()


def bearer_token(authorization: str) -> str | None:
    """The key of an `Authorization: Bearer <key>` value, or None for any other scheme."""
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def bearer_metadata(key: str | None) -> tuple[tuple[str, str], ...]:
    """gRPC metadata carrying `key`, or nothing without one."""
    return ((AUTHORIZATION, f"Bearer {key}"),) if key else ()
