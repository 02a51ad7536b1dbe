"""API keys and browser origins: who may use the edge."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from service.api_keys import ApiKeys

__all__ = ["WS_BEARER_PREFIX", "WS_SUBPROTOCOL", "ApiKeys", "Origins", "subprotocol_token"]

# A WebSocket client names the protocol and may carry its key as a second subprotocol,
# `audiochat.bearer.<key>`: browsers cannot set an Authorization header on a WebSocket.
WS_SUBPROTOCOL = "audiochat.v1"
WS_BEARER_PREFIX = "audiochat.bearer."


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
