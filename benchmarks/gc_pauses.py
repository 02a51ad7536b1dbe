"""The gateway's garbage-collection pauses over a window, read from its own `audiochat_gc_pause_seconds`.

A full collection stops every stream at once, so it sets the gateway's worst case; the latency tail on a
shared machine is too noisy to show it, the gateway's own timing of each collection is not.
"""

from __future__ import annotations

import math
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

METRIC = "audiochat_gc_pause_seconds"
TIMEOUT_SECONDS = 5.0

# generation -> {"count": n, "sum": seconds, "buckets": {upper bound: cumulative count}}
Snapshot = dict[str, dict[str, Any]]


def snapshot(metrics_url: str) -> Snapshot:
    """The pause histogram per generation, now."""
    with urllib.request.urlopen(metrics_url, timeout=TIMEOUT_SECONDS) as response:
        text = response.read().decode()
    out: Snapshot = {}
    for family in text_string_to_metric_families(text):
        if family.name != METRIC:
            continue
        for sample in family.samples:
            generation = sample.labels.get("generation", "")
            entry = out.setdefault(generation, {"count": 0.0, "sum": 0.0, "buckets": {}})
            if sample.name.endswith("_count"):
                entry["count"] = sample.value
            elif sample.name.endswith("_sum"):
                entry["sum"] = sample.value
            elif sample.name.endswith("_bucket"):
                entry["buckets"][float(sample.labels["le"])] = sample.value
    return out


def between(before: Snapshot, after: Snapshot) -> dict[str, Any]:
    """Per generation: collections, total pause (ms) and an upper bound on the longest (ms)."""
    result: dict[str, Any] = {}
    for generation, end in sorted(after.items()):
        start = before.get(generation, {"count": 0.0, "sum": 0.0, "buckets": {}})
        count = end["count"] - start["count"]
        longest = None
        for bound in sorted(end["buckets"]):
            if end["buckets"][bound] - start["buckets"].get(bound, 0.0) >= count > 0:
                longest = None if math.isinf(bound) else bound * 1000
                break
        result[generation] = {
            "collections": int(count),
            "total_ms": (end["sum"] - start["sum"]) * 1000,
            "longest_ms_at_most": longest,
        }
    return result
