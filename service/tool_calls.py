"""Folding streamed `delta.tool_calls` pieces into whole calls. Pure: no I/O.

The first piece of a call carries its `index`, `id`, `type` and `function.name` (with empty arguments);
later pieces carry the `index` and a piece of `function.arguments`, split anywhere. Pieces of several
calls may interleave, so calls are keyed and ordered by `index`, not by arrival. Some OpenAI-compatible
servers repeat the id and name on every piece (set, never concatenated) or leave `index` out (a piece
with a new id then starts the next call; one without continues the last).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from audiochat.v1 import audiochat_pb2 as pb

# A turn's tool calls are the model's output, already bounded by its token limit; these bounds only stop a
# broken upstream from growing memory without end. Reaching one fails the turn (in-band error).
MAX_TOOL_CALLS = 128
MAX_ARGUMENT_CHARS = 1 << 20  # all calls of one turn together


def _text(mapping: Mapping[str, Any], key: str) -> str:
    value = mapping.get(key)
    return value if isinstance(value, str) else ""


class ToolCallOverflow(ValueError):
    """The upstream sent more tool calls, or longer arguments, than a turn may hold."""


@dataclass(slots=True)
class _Call:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class ToolCallFolder:
    """Accumulates the tool calls of one answer."""

    __slots__ = ("_argument_chars", "_calls", "_last_index")

    def __init__(self) -> None:
        self._calls: dict[int, _Call] = {}
        self._last_index = -1
        self._argument_chars = 0

    def feed(self, pieces: Any) -> list[pb.ToolCallDelta]:
        """Fold one `delta.tool_calls` list; return one ToolCallDelta per piece, in arrival order.

        Raises ToolCallOverflow past MAX_TOOL_CALLS or MAX_ARGUMENT_CHARS, ValueError for a piece that is
        not an object.
        """
        deltas: list[pb.ToolCallDelta] = []
        if not isinstance(pieces, list):
            return deltas
        for piece in pieces:
            if not isinstance(piece, Mapping):
                raise ValueError(f"a delta.tool_calls piece must be an object, not {type(piece).__name__}")
            deltas.append(self._fold(piece))
        return deltas

    def _fold(self, piece: Mapping[str, Any]) -> pb.ToolCallDelta:
        function = piece.get("function")
        function = function if isinstance(function, Mapping) else {}
        call_id, name, arguments = _text(piece, "id"), _text(function, "name"), _text(function, "arguments")
        index = piece.get("index")
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            starts_new = call_id and (self._last_index < 0 or self._calls[self._last_index].id != call_id)
            index = self._last_index + 1 if starts_new or self._last_index < 0 else self._last_index
        call = self._calls.get(index)
        if call is None:
            if len(self._calls) >= MAX_TOOL_CALLS:
                raise ToolCallOverflow(f"the upstream sent over {MAX_TOOL_CALLS} tool calls in one answer")
            call = self._calls[index] = _Call()
        self._last_index = index
        delta = pb.ToolCallDelta(index=index, arguments=arguments)
        if call_id and not call.id:
            call.id = delta.id = call_id
        if name and not call.name:
            call.name = delta.name = name
        if arguments:
            self._argument_chars += len(arguments)
            if self._argument_chars > MAX_ARGUMENT_CHARS:
                raise ToolCallOverflow(
                    f"the upstream's tool call arguments are over {MAX_ARGUMENT_CHARS} characters"
                )
            call.arguments.append(arguments)
        return delta

    def calls(self) -> list[pb.ToolCall]:
        """The calls so far, ordered by index."""
        return [
            pb.ToolCall(id=call.id, name=call.name, arguments="".join(call.arguments))
            for _, call in sorted(self._calls.items())
        ]
