"""Token usage between the upstream's JSON and `Usage`, both ways, with nothing added or lost.

A count the upstream did not send stays unset (proto3 `optional`), and is left out again when the usage is
written back as JSON; totals are the upstream's own, never sums of the details (an upstream may leave
`text_tokens` out, and 131 + 92 tokens are not 0 + 74).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from audiochat.v1 import audiochat_pb2 as pb

_UINT32_MAX = 2**32 - 1

# (Usage field, the upstream's details object or "" for the top level, the upstream's key), in the order
# OpenAI writes them, so JSON written back reads like the upstream's.
FIELDS: tuple[tuple[str, str, str], ...] = (
    ("input_tokens", "", "prompt_tokens"),
    ("output_tokens", "", "completion_tokens"),
    ("total_tokens", "", "total_tokens"),
    ("input_cached_tokens", "prompt_tokens_details", "cached_tokens"),
    ("input_audio_tokens", "prompt_tokens_details", "audio_tokens"),
    ("input_text_tokens", "prompt_tokens_details", "text_tokens"),
    ("input_image_tokens", "prompt_tokens_details", "image_tokens"),
    ("output_reasoning_tokens", "completion_tokens_details", "reasoning_tokens"),
    ("output_audio_tokens", "completion_tokens_details", "audio_tokens"),
    ("output_text_tokens", "completion_tokens_details", "text_tokens"),
    ("output_accepted_prediction_tokens", "completion_tokens_details", "accepted_prediction_tokens"),
    ("output_rejected_prediction_tokens", "completion_tokens_details", "rejected_prediction_tokens"),
)


def from_upstream(usage: Mapping[str, Any]) -> pb.Usage:
    """The counts the upstream sent; a missing, null or non-integer count stays unset."""
    result = pb.Usage()
    for field, group, key in FIELDS:
        source = usage.get(group) if group else usage
        value = source.get(key) if isinstance(source, Mapping) else None
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _UINT32_MAX:
            setattr(result, field, value)
    return result


def sent(usage: pb.Usage) -> dict[str, int]:
    """The counts that were sent, by Usage field name (the SSE and WebSocket `usage` event)."""
    present = {descriptor.name: value for descriptor, value in usage.ListFields()}
    return {field: present[field] for field, _, _ in FIELDS if field in present}


def to_upstream(usage: pb.Usage) -> dict[str, Any]:
    """The usage object as Chat Completions writes it, holding only the counts that were sent."""
    present = sent(usage)
    result: dict[str, Any] = {}
    for field, group, key in FIELDS:
        if field in present:
            target = result.setdefault(group, {}) if group else result
            target[key] = present[field]
    return result
