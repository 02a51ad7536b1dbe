"""Capacity by search: the largest number of streams a row holds, bracketed by bisection.

A size passes when the run is healthy (no error, nothing lost or reordered), its p99 added latency is under
the target and the server's core under its ceiling. The search doubles from a start size until a size
fails, then bisects between the largest pass and the smallest failure until they are within `precision`
of each other (or the step budget is spent), and says what broke at the failing size. A size at which the
load side itself saturates cannot be judged: the search stops there and says so instead of guessing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

Verdict = Literal["pass", "fail", "unmeasurable"]


@dataclass(frozen=True)
class Step:
    """One size tried: its verdict and why (the limit it broke, or the numbers that passed)."""

    streams: int
    verdict: Verdict
    why: str


@dataclass
class Capacity:
    """The bracket found: `largest_pass` holds, `smallest_fail` does not (None: never failed)."""

    largest_pass: int = 0
    smallest_fail: int | None = None
    stopped: str = ""  # why the search ended before bracketing within precision, if it did
    steps: list[Step] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """Plain values for the report."""
        return {
            "largest_pass": self.largest_pass,
            "smallest_fail": self.smallest_fail,
            "stopped": self.stopped,
            "steps": [{"streams": s.streams, "verdict": s.verdict, "why": s.why} for s in self.steps],
        }


def search(
    check: Callable[[int], tuple[Verdict, str]],
    *,
    start: int,
    limit: int,
    max_steps: int,
    precision: float = 0.1,
) -> Capacity:
    """Bracket the capacity; `check(streams)` runs one measurement and returns its verdict and why."""
    if start < 1 or limit < start or max_steps < 1:
        raise ValueError("need 1 <= start <= limit and at least one step")
    found = Capacity()
    streams = start
    while True:
        if len(found.steps) >= max_steps:
            found.stopped = f"step budget ({max_steps}) spent"
            break
        verdict, why = check(streams)
        found.steps.append(Step(streams, verdict, why))
        if verdict == "unmeasurable":
            found.stopped = f"the load side saturated at {streams} streams: {why}"
            break
        if verdict == "pass":
            found.largest_pass = max(found.largest_pass, streams)
        else:
            found.smallest_fail = (
                streams if found.smallest_fail is None else min(found.smallest_fail, streams)
            )
        low, high = found.largest_pass, found.smallest_fail
        if high is None:
            if streams >= limit:
                found.stopped = f"passed at the search's limit ({limit} streams)"
                break
            streams = min(limit, streams * 2)
            continue
        if high - low <= max(1, round(precision * max(low, 1))):
            break
        streams = (low + high) // 2
        if streams <= low:
            break
    return found
