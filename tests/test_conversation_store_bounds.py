"""The in-process conversation store is bounded in bytes and lets expired conversations go unasked.

Without both, every Converse/WebSocket conversation's config and last answer stayed for the TTL (an hour)
up to 10,000 of them: `make soak` grew about 160 MiB a minute.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
import uuid

import pytest
from prometheus_client import REGISTRY

from service.errors import UnknownConversation
from service.server import conversation_store
from service.settings import Settings
from service.state.conversations import (
    CONVERSATION_OVERHEAD_BYTES,
    EVENT_OVERHEAD_BYTES,
    TURN_LOG_OVERHEAD_BYTES,
    MemoryConversationStore,
)

ANSWER = [bytes(10_000)] * 10  # one turn's events: 100 kB


async def converse(store: MemoryConversationStore, conversation_id: str) -> None:
    """A conversation with one answered turn, as the servicer writes it."""
    epoch = await store.create(conversation_id, "owner", b"config")
    assert await store.open_turn(conversation_id, epoch, f"turn-{conversation_id}")
    await store.append(conversation_id, f"turn-{conversation_id}", 1, ANSWER)
    await store.close_turn(conversation_id, f"turn-{conversation_id}")


def held_for(config: bytes, events: list[bytes]) -> int:
    """What the store counts for a conversation with this config and a last turn of these events."""
    payload = len(config) + sum(map(len, events))
    overhead = CONVERSATION_OVERHEAD_BYTES + TURN_LOG_OVERHEAD_BYTES + EVENT_OVERHEAD_BYTES * len(events)
    return payload + overhead


@pytest.mark.parametrize(
    ("config_bytes", "event_bytes", "events"),
    [(200, 60, 40), (2_000, 4_800, 20), (50, 0, 0)],
    ids=["text deltas", "audio deltas", "no turn yet"],
)
async def test_the_byte_count_is_the_memory_the_store_holds(
    config_bytes: int, event_bytes: int, events: int
) -> None:
    # The cap bounds memory only if what is counted is what is held, objects and all: within 20%.
    store = MemoryConversationStore(ttl_seconds=3600, max_conversations=100_000, max_bytes=1 << 40)
    conversations = 500
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(conversations):
            conversation_id, turn_id = f"conv_{uuid.uuid4().hex}", f"turn_{uuid.uuid4().hex}"
            owner = uuid.uuid4().hex * 2  # a SHA-256 in hex, one per key
            await store.create(conversation_id, owner, bytes(config_bytes))
            if events:
                assert await store.open_turn(conversation_id, 1, turn_id)
                for _ in range(events):  # one append per event, as the turn's writer may
                    await store.append(conversation_id, turn_id, 1, [bytes(event_bytes)])
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert 0.8 <= store.bytes / held <= 1.2, (store.bytes / conversations, held / conversations)


async def test_past_the_byte_cap_the_least_recently_changed_conversations_go() -> None:
    store = MemoryConversationStore(ttl_seconds=3600, max_conversations=10_000, max_bytes=1_000_000)
    for n in range(30):
        await converse(store, f"c{n}")
    assert store.bytes <= 1_000_000
    with pytest.raises(UnknownConversation):
        await store.load("c0")
    assert (await store.read("c29", "turn-c29", 0)).events == ANSWER


async def test_expired_conversations_are_let_go_without_being_asked_for() -> None:
    store = MemoryConversationStore(ttl_seconds=0.05, max_conversations=10_000, max_bytes=1 << 30)
    for n in range(5):
        await converse(store, f"old{n}")
    await asyncio.sleep(0.1)
    await converse(store, "new")
    # Only the new conversation is held: the old ones went when the store next changed.
    assert store.bytes == held_for(b"config", ANSWER)


async def test_a_new_turn_lets_the_previous_turns_events_go() -> None:
    store = MemoryConversationStore(ttl_seconds=3600, max_conversations=10, max_bytes=1 << 30)
    await converse(store, "c")
    held = store.bytes
    assert await store.open_turn("c", 1, "turn-2")
    await store.append("c", "turn-2", 1, ANSWER[:1])
    assert store.bytes == held - sum(map(len, ANSWER)) + len(ANSWER[0]) - EVENT_OVERHEAD_BYTES * 9


async def test_the_core_exports_what_its_store_holds() -> None:
    store = conversation_store(Settings(max_stored_conversation_bytes=1_000_000))
    assert isinstance(store, MemoryConversationStore)
    for n in range(3):
        await converse(store, f"g{n}")
    assert REGISTRY.get_sample_value("audiochat_conversation_store_conversations") == 3
    held = REGISTRY.get_sample_value("audiochat_conversation_store_bytes")
    assert held == store.bytes and held >= 3 * sum(map(len, ANSWER))
