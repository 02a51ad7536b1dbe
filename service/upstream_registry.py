"""The upstreams `AUDIOCHAT_UPSTREAM` can name, and how each is opened for `audiochat serve`.

Each kind says whether it needs OPENAI_API_KEY, which API answers models the mapping does not name
(`service.upstream_routing`), and how to build it. A new kind (another local voice, another vendor) is
one `UpstreamKind` in `KINDS`; the setting's validation and the CLI's choices follow from it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.offline.app import OfflineVoiceSettings
from service.offline.server import OfflineVoiceServer
from service.realtime_upstream import RealtimeUpstream
from service.upstream import OpenAIUpstream, Upstream
from service.upstream_routing import CHAT_COMPLETIONS, REALTIME, ModelRoutes, RoutedUpstream, prefixes

if TYPE_CHECKING:
    from service.settings import Settings

log = logging.getLogger(__name__)

# Opens the kind's upstream; what it starts is stopped by the stack.
Opener = Callable[["Settings", AsyncExitStack], Awaitable[Upstream]]


@dataclass(frozen=True, slots=True)
class UpstreamKind:
    """One value of AUDIOCHAT_UPSTREAM."""

    name: str
    api: str  # the API of models the mapping does not name: chat_completions or realtime
    needs_key: bool
    open: Opener
    default_model: str


def routes(settings: Settings, default: str) -> ModelRoutes:
    """The model-name mapping from the settings, with `default` for unnamed models."""
    return ModelRoutes(
        default=default,
        realtime_prefixes=prefixes(settings.realtime_models),
        chat_prefixes=prefixes(settings.chat_completions_models),
    )


def routed(settings: Settings, api_key: str, base_url: str | None, default: str) -> RoutedUpstream:
    """Both APIs at one base URL (the Realtime one derived from it: ws(s)://.../realtime)."""
    chat = OpenAIUpstream(api_key=api_key, base_url=base_url, deadlines=settings.deadlines)
    realtime = RealtimeUpstream(
        api_key=api_key,
        base_url=base_url,
        deadlines=settings.deadlines,
        decode_limits=settings.limits.decode_limits,
    )
    return RoutedUpstream(routes(settings, default), {CHAT_COMPLETIONS: chat, REALTIME: realtime})


def _openai(default: str) -> Opener:
    async def open_openai(settings: Settings, stack: AsyncExitStack) -> Upstream:
        upstream = routed(settings, settings.openai_api_key, settings.openai_base_url or None, default)
        stack.push_async_callback(upstream.close)
        api = "Realtime API" if default == REALTIME else "Chat Completions"
        # Where requests go: the given base URL, else the SDK's (OPENAI_BASE_URL or OpenAI's own).
        base_url = getattr(upstream.for_model(""), "base_url", None)
        log.info(f"upstream: OpenAI {api}", extra={"base_url": base_url})
        return upstream

    return open_openai


def _offline(default: str) -> Opener:
    """The offline voice, started in-process; it speaks both APIs (`/v1/chat/completions` and the
    `/v1/realtime` WebSocket) at one loopback base URL, so the model mapping works on it as on OpenAI."""

    async def open_offline(settings: Settings, stack: AsyncExitStack) -> Upstream:
        voice = OfflineVoiceServer(OfflineVoiceSettings(realtime_factor=settings.offline_realtime_factor))
        await stack.enter_async_context(voice)
        log.info(
            "no OPENAI_API_KEY: answering with the offline voice, %s by default",
            "Realtime API" if default == REALTIME else "Chat Completions",
            extra={"base_url": voice.base_url},
        )
        upstream = routed(settings, "offline", voice.base_url, default)
        stack.push_async_callback(upstream.close)
        return upstream

    return open_offline


CHAT_MODEL = "gpt-4o-audio-preview"
REALTIME_MODEL = "gpt-realtime"

KINDS: dict[str, UpstreamKind] = {
    kind.name: kind
    for kind in (
        UpstreamKind("openai", CHAT_COMPLETIONS, True, _openai(CHAT_COMPLETIONS), CHAT_MODEL),
        UpstreamKind("openai-realtime", REALTIME, True, _openai(REALTIME), REALTIME_MODEL),
        UpstreamKind("offline", CHAT_COMPLETIONS, False, _offline(CHAT_COMPLETIONS), CHAT_MODEL),
        UpstreamKind("offline-realtime", REALTIME, False, _offline(REALTIME), REALTIME_MODEL),
    )
}


@asynccontextmanager
async def open_upstream(settings: Settings) -> AsyncIterator[Upstream]:
    """The configured upstream, open until the context ends."""
    async with AsyncExitStack() as stack:
        yield await KINDS[settings.upstream_kind].open(settings, stack)
