"""The audio handles the offline voice issued, so later turns can refer to them until they expire."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

from service.offline.wire import new_audio_id

DEFAULT_TTL_SECONDS = 3600.0
DEFAULT_MAX_IDS = 10_000


class AudioIdStore:
    """A bounded map of issued audio ids to their expiry; the oldest ids are forgotten first."""

    def __init__(
        self,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        max_ids: int = DEFAULT_MAX_IDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_ids < 1:
            raise ValueError("max_ids must be at least 1")
        self._ttl = ttl_seconds
        self._max = max_ids
        self._clock = clock
        self._expiry: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._expiry)

    def issue(self) -> tuple[str, int]:
        """Return a new audio id and its expiry in unix seconds (rounded up, as OpenAI reports it)."""
        now = self._clock()
        self._drop_expired(now)
        while len(self._expiry) >= self._max:
            self._expiry.popitem(last=False)
        audio_id = new_audio_id()
        expires = now + self._ttl
        self._expiry[audio_id] = expires
        return audio_id, math.ceil(expires)

    def is_valid(self, audio_id: str) -> bool:
        """Whether `audio_id` was issued here and has not expired."""
        expires = self._expiry.get(audio_id)
        return expires is not None and self._clock() < expires

    def _drop_expired(self, now: float) -> None:
        # Ids are issued with one TTL, so insertion order is expiry order.
        while self._expiry:
            oldest, expires = next(iter(self._expiry.items()))
            if expires > now:
                break
            del self._expiry[oldest]
