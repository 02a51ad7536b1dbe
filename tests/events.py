"""Helpers to collect and summarise the events of a turn in tests."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audiochat.v1 import audiochat_pb2 as pb
from service.usage import to_upstream as usage_to_upstream

FIXTURES = Path(__file__).parent / "fixtures" / "upstream"


def expected(name: str) -> dict[str, Any]:
    """The expected results of a capture."""
    result: dict[str, Any] = json.loads((FIXTURES / f"{name}.expected.json").read_text())
    return result


@dataclass
class Collected:
    """One turn's events, folded."""

    events: list[pb.TurnEvent] = field(default_factory=list)
    text: str = ""
    audio: bytearray = field(default_factory=bytearray)
    usage: pb.Usage | None = None
    completed: pb.TurnCompleted | None = None
    tool_calls: dict[int, pb.ToolCall] = field(default_factory=dict)  # folded from ToolCallDelta by index

    def add(self, event: pb.TurnEvent) -> None:
        """Fold one event, checking numbering as it goes."""
        if self.events:
            assert event.turn_id == self.events[0].turn_id
        assert event.sequence == len(self.events) + 1, "sequence numbers must have no gaps"
        self.events.append(event)
        kind = event.WhichOneof("event")
        if kind == "text":
            self.text += event.text.text
        elif kind == "audio":
            assert event.audio.start_sample * 2 == len(self.audio)
            self.audio += event.audio.data
        elif kind == "usage":
            self.usage = event.usage
        elif kind == "tool_call":
            delta = event.tool_call
            call = self.tool_calls.setdefault(delta.index, pb.ToolCall())
            assert not (delta.id and call.id), "a call's id arrives on its first piece only"
            call.id = delta.id or call.id
            call.name = delta.name or call.name
            call.arguments += delta.arguments
        elif kind == "completed":
            self.completed = event.completed

    @property
    def sha256(self) -> str:
        """SHA-256 of all audio, in order."""
        return hashlib.sha256(self.audio).hexdigest()

    def assert_matches(self, name: str) -> None:
        """Transcript, audio, finish reason, audio id, usage and error as the capture's expected results."""
        want = expected(name)
        done = self.completed
        assert done is not None
        assert self.events[0].HasField("started") and self.events[-1].HasField("completed")
        assert self.text == want["text"] == done.transcript
        assert len(self.audio) == want["audio_bytes"] == done.audio_samples * 2
        assert self.sha256 == want["audio_sha256"]
        assert done.audio_id == (want["audio_id"] or "")
        assert done.audio_expires_at == (want["expires_at"] or 0)
        reason = {
            "stop": pb.FINISH_REASON_STOP,
            "tool_calls": pb.FINISH_REASON_TOOL_CALLS,
            "error": pb.FINISH_REASON_ERROR,
        }[want["finish_reason"]]
        assert done.reason == reason
        want_calls = want.get("tool_calls") or []
        assert [call_json(call) for call in done.tool_calls] == want_calls
        assert [call_json(self.tool_calls[i]) for i in sorted(self.tool_calls)] == want_calls
        if want["usage"] is None:
            assert self.usage is None
        else:
            assert self.usage is not None
            assert usage_to_upstream(self.usage) == want["usage"], "usage exactly as the upstream sent it"
        if want["error"] is None:
            assert not done.HasField("error")
        else:
            assert done.error.upstream_code == want["error"]["type"]
            assert done.error.code == pb.ERROR_CODE_UNAVAILABLE and done.error.retryable


def call_json(call: pb.ToolCall) -> dict[str, str]:
    """A ToolCall as the captures' expected results write it."""
    return {"id": call.id, "name": call.name, "arguments": call.arguments}


def text_request(model: str, text: str = "Is a golden retriever a good family dog?") -> pb.StreamTurnRequest:
    """A StreamTurn request for a typed question."""
    return pb.StreamTurnRequest(config=pb.TurnConfig(model=model), input=pb.UserMessage(text=text))
