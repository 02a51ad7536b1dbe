"""Which upstream API answers a request: by the model it names, else the configured default.

Two APIs speak: Chat Completions (`chat_completions`) and the Realtime API (`realtime`). A model whose name
starts with one of `realtime_prefixes` goes to Realtime, one starting with one of `chat_prefixes` to Chat
Completions, any other to `default` (AUDIOCHAT_UPSTREAM's API). The longest matching prefix wins, so a
mapping can carve a model out of a broader one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from audiochat.v1 import audiochat_pb2 as pb
from service.metrics import UPSTREAM_APIS
from service.upstream import AnswerStream, Upstream

CHAT_COMPLETIONS, REALTIME = APIS = UPSTREAM_APIS  # also the bounded values of the `upstream` metric label


@dataclass(frozen=True, slots=True)
class ModelRoutes:
    """The model-name mapping: prefixes per API, and the API of every other model."""

    default: str = CHAT_COMPLETIONS
    realtime_prefixes: tuple[str, ...] = ()
    chat_prefixes: tuple[str, ...] = ()

    def api_for(self, model: str) -> str:
        """`chat_completions` or `realtime` for this model name."""
        best, api = -1, self.default
        for prefixes, name in ((self.realtime_prefixes, REALTIME), (self.chat_prefixes, CHAT_COMPLETIONS)):
            for prefix in prefixes:
                if model.startswith(prefix) and len(prefix) > best:
                    best, api = len(prefix), name
        return api


def prefixes(setting: str) -> tuple[str, ...]:
    """A comma-separated setting as a tuple of non-empty, stripped prefixes."""
    return tuple(part.strip() for part in setting.split(",") if part.strip())


class RoutedUpstream:
    """Sends each request to the upstream of its model's API (the Upstream interface)."""

    def __init__(self, routes: ModelRoutes, by_api: Mapping[str, Upstream]) -> None:
        self.routes = routes
        self._by_api = dict(by_api)

    def for_model(self, model: str) -> Upstream:
        """The upstream that answers this model (the default API's when the other is not configured)."""
        return self._by_api.get(self.routes.api_for(model)) or self._by_api[self.routes.default]

    @asynccontextmanager
    async def open(self, params: Mapping[str, Any]) -> AsyncIterator[AnswerStream]:
        """Open the stream on the model's upstream."""
        async with self.for_model(str(params.get("model", ""))).open(params) as stream:
            yield stream

    async def list_models(self) -> list[pb.Model] | None:
        """The Chat Completions upstream's list (the Realtime API has none), else None."""
        upstream = self._by_api.get(CHAT_COMPLETIONS)
        return await upstream.list_models() if upstream is not None else None

    async def close(self) -> None:
        """Close every upstream."""
        for upstream in self._by_api.values():
            await upstream.close()


def resolve(upstream: Upstream, model: str) -> Upstream:
    """The concrete upstream that answers `model` (itself unless it routes)."""
    return upstream.for_model(model) if isinstance(upstream, RoutedUpstream) else upstream


def api_name(upstream: Upstream, model: str) -> str:
    """The `upstream` metric label of what answers `model`: `chat_completions` or `realtime`."""
    name = getattr(resolve(upstream, model), "name", CHAT_COMPLETIONS)
    return name if name in APIS else CHAT_COMPLETIONS


def takes_audio_ids(upstream: Upstream, model: str) -> bool:
    """Whether the upstream answering `model` understands Chat Completions audio ids in the history."""
    return bool(getattr(resolve(upstream, model), "takes_audio_ids", True))


def for_conversation(upstream: Upstream, model: str) -> Upstream:
    """What a conversation on `model` talks to: a session of its own where the API has sessions
    (service.realtime_session, opening now), else the shared upstream."""
    concrete = resolve(upstream, model)
    start = getattr(concrete, "conversation", None)
    return start(model) if start is not None else upstream


async def truncate_heard(upstream: Upstream, played_ms: int) -> None:
    """The listener heard `played_ms` of the last answer: a session upstream cuts its memory of it there."""
    truncate = getattr(upstream, "truncate", None)
    if truncate is not None:
        await truncate(played_ms)


async def end_conversation(upstream: Upstream, shared: Upstream) -> None:
    """The conversation is over: close its own session (never the shared upstream)."""
    if upstream is not shared:
        await upstream.close()
