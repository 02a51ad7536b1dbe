"""A Realtime session's conversation: its items, checked as the API checks `conversation.item.create`.

Bounded like the API's own context: past `max_items` items or `max_chars` characters of stored items, the
oldest are dropped first (the API's `truncation: auto`). Input audio is never stored, only its duration:
the offline voice cannot understand it anyway, and it would hold megabytes per turn.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from service.offline.realtime_config import RealtimeError
from service.offline.realtime_events import Json, audio_tokens_for_ms, new_id, output_text_tokens, pcm_ms

DEFAULT_MAX_ITEMS = 1000
DEFAULT_MAX_CHARS = 4 * 1024 * 1024
MAX_ITEM_ID_CHARS = 32
_ITEM_KEYS = {
    "message": {"id", "type", "object", "status", "role", "content"},
    "function_call": {"id", "type", "object", "status", "name", "arguments", "call_id"},
    "function_call_output": {"id", "type", "object", "status", "call_id", "output"},
}
_PART_TYPES = {
    "user": ("input_text", "input_audio"),
    "system": ("input_text",),
    "assistant": ("output_text", "output_audio"),
}


@dataclass
class Item:
    """One conversation item: `json` as server events show it, `audio_ms` of its audio (input or output)."""

    json: Json
    audio_ms: int = 0
    has_audio: bool = False

    @property
    def id(self) -> str:
        """The item's id."""
        item_id: str = self.json["id"]
        return item_id

    def text(self) -> str:
        """The item's words: texts and transcripts of a message, arguments of a call, a call's output."""
        kind = self.json["type"]
        if kind == "function_call":
            return str(self.json["arguments"])
        if kind == "function_call_output":
            return str(self.json["output"])
        words = [part.get("text") or part.get("transcript") or "" for part in self.json["content"]]
        return " ".join(word for word in words if word)


@dataclass(frozen=True)
class Prompt:
    """What a response answers: tool results to read back, or the last user message's words and audio."""

    results: list[tuple[str, str]]
    user_text: str
    user_audio_seconds: float | None
    text_tokens: int
    audio_tokens: int


def _unknown(param: str) -> RealtimeError:
    return RealtimeError(f"Unknown parameter: '{param}'.", param, "unknown_parameter")


def _missing(param: str) -> RealtimeError:
    return RealtimeError(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")


def _string(value: Any, param: str, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if value is None:
        raise _missing(param)
    if not isinstance(value, str):
        raise RealtimeError(f"Invalid type for '{param}': expected a string.", param, "invalid_type")
    return value


def check_item(raw: Any, param: str = "item") -> Item:
    """A client's item (message, function_call or function_call_output) as the server stores it."""
    if not isinstance(raw, dict):
        raise RealtimeError(f"Invalid type for '{param}': expected an object.", param, "invalid_type")
    kind = raw.get("type")
    if not isinstance(kind, str) or kind not in _ITEM_KEYS:
        raise RealtimeError(
            f"Invalid value: '{kind}'. Supported values are: 'message', 'function_call', "
            "'function_call_output'.",
            f"{param}.type",
        )
    for key in raw:
        if key not in _ITEM_KEYS[kind]:
            raise _unknown(f"{param}.{key}")
    item_id = _string(raw.get("id"), f"{param}.id", required=False) or new_id("item")
    if len(item_id) > MAX_ITEM_ID_CHARS:
        raise RealtimeError(
            f"Invalid '{param}.id': string too long. Expected a maximum length of {MAX_ITEM_ID_CHARS}.",
            f"{param}.id",
            "string_above_max_length",
        )
    base: Json = {"id": item_id, "type": kind, "object": "realtime.item", "status": "completed"}
    if kind == "function_call":
        base["name"] = _string(raw.get("name"), f"{param}.name")
        base["call_id"] = _string(raw.get("call_id"), f"{param}.call_id", required=False) or new_id("call")
        base["arguments"] = _string(raw.get("arguments"), f"{param}.arguments", required=False)
        return Item(base)
    if kind == "function_call_output":
        base["call_id"] = _string(raw.get("call_id"), f"{param}.call_id")
        base["output"] = _string(raw.get("output"), f"{param}.output")
        return Item(base)
    return _check_message(raw, base, param)


def _check_message(raw: Json, base: Json, param: str) -> Item:
    role = raw.get("role")
    if not isinstance(role, str) or role not in _PART_TYPES:
        raise RealtimeError(
            f"Invalid value: '{role}'. Supported values are: 'user', 'assistant', 'system'.", f"{param}.role"
        )
    content = raw.get("content")
    if not isinstance(content, list):
        raise (
            _missing(f"{param}.content")
            if content is None
            else RealtimeError(
                f"Invalid type for '{param}.content': expected an array.", f"{param}.content", "invalid_type"
            )
        )
    parts: list[Json] = []
    audio_ms = 0
    has_audio = False
    for index, part in enumerate(content):
        where = f"{param}.content[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "input_image" and role == "user":
            raise RealtimeError("The offline voice cannot see images.", f"{where}.type", "unsupported_value")
        if kind not in _PART_TYPES[role]:
            allowed = ", ".join(f"'{name}'" for name in _PART_TYPES[role])
            raise RealtimeError(f"Invalid value: '{kind}'. Supported values are: {allowed}.", f"{where}.type")
        assert isinstance(part, dict)
        for key in part:
            if key not in ("type", "text", "audio", "transcript"):
                raise _unknown(f"{where}.{key}")
        if kind in ("input_text", "output_text"):
            parts.append({"type": kind, "text": _string(part.get("text"), f"{where}.text")})
        elif kind == "input_audio":
            audio_ms += _input_audio_ms(part.get("audio"), f"{where}.audio")
            has_audio = True
            parts.append({"type": kind, "transcript": part.get("transcript")})
        else:  # output_audio: an earlier answer given back as its transcript
            transcript = _string(part.get("transcript"), f"{where}.transcript", required=False)
            parts.append({"type": kind, "transcript": transcript})
    return Item({**base, "role": role, "content": parts}, audio_ms, has_audio)


def _input_audio_ms(data: Any, param: str) -> int:
    try:
        pcm = base64.b64decode(_string(data, param), validate=True)
    except binascii.Error as exc:
        raise RealtimeError(f"Invalid '{param}': not base64 ({exc}).", param) from exc
    return pcm_ms(len(pcm))


class Conversation:
    """The items of one session, in order, bounded (oldest dropped first)."""

    def __init__(self, max_items: int = DEFAULT_MAX_ITEMS, max_chars: int = DEFAULT_MAX_CHARS) -> None:
        self.id = new_id("conv")
        self._items: OrderedDict[str, Item] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._chars = 0
        self._max_items = max_items
        self._max_chars = max_chars

    def __len__(self) -> int:
        return len(self._items)

    def get(self, item_id: str) -> Item | None:
        """The item with this id, if the conversation still holds it."""
        return self._items.get(item_id)

    def items(self) -> list[Item]:
        """The items in order."""
        return list(self._items.values())

    def last_id(self) -> str | None:
        """The id of the last item, None when empty."""
        return next(reversed(self._items), None)

    def add(self, item: Item, previous_item_id: str | None = None) -> str | None:
        """Insert `item` after `previous_item_id` ("root": first; None: last) and return the id it follows."""
        if item.id in self._items:
            raise RealtimeError(
                f"Item with id '{item.id}' already exists.", "item.id", "item_id_already_exists"
            )
        if previous_item_id not in (None, "root") and previous_item_id not in self._items:
            raise RealtimeError(
                f"Error adding item: the previous item with id '{previous_item_id}' does not exist.",
                "previous_item_id",
                "item_not_found",
            )
        follows = self.last_id() if previous_item_id is None else previous_item_id
        self._items[item.id] = item
        if previous_item_id is not None:
            # Move every item that came after `previous_item_id` behind the new one.
            after = list(self._items)
            cut = 0 if previous_item_id == "root" else after.index(previous_item_id) + 1
            for later in after[cut:-1]:
                self._items.move_to_end(later)
        self.resized(item)
        return None if follows == "root" else follows

    def resized(self, item: Item) -> None:
        """Recount `item`'s size (it grew or shrank) and drop the oldest items while over the bounds."""
        size = len(json.dumps(item.json))
        self._chars += size - self._sizes.get(item.id, 0)
        self._sizes[item.id] = size
        while len(self._items) > 1 and (len(self._items) > self._max_items or self._chars > self._max_chars):
            oldest = next(iter(self._items))
            if oldest == item.id:
                break
            self.delete(oldest)

    def delete(self, item_id: str) -> bool:
        """Remove an item; False if there was none."""
        if self._items.pop(item_id, None) is None:
            return False
        self._chars -= self._sizes.pop(item_id, 0)
        return True


def prompt_of(items: list[Item]) -> Prompt:
    """What a response to `items` answers, and the prompt's token counts."""
    text = sum(output_text_tokens(item.text()) for item in items)
    audio = sum(audio_tokens_for_ms(item.audio_ms) for item in items)
    index = len(items)
    while index > 0 and items[index - 1].json["type"] == "function_call_output":
        index -= 1
    if index < len(items):
        names = {
            item.json["call_id"]: item.json["name"] for item in items if item.json["type"] == "function_call"
        }
        results = [
            (names.get(item.json["call_id"], "the tool"), item.json["output"]) for item in items[index:]
        ]
        return Prompt(results, "", None, text, audio)
    user = next((i for i in reversed(items) if i.json.get("role") == "user"), None)
    if user is None:
        return Prompt([], "", None, text, audio)
    seconds = user.audio_ms / 1000 if user.has_audio else None
    words = " ".join(part.get("text") or "" for part in user.json["content"] if part["type"] == "input_text")
    return Prompt([], words.strip(), seconds, text, audio)
