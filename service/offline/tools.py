"""Tool calling in the offline voice, so that `make run` shows it without a key.

It calls a tool when one is offered and the user names it ("get_weather" or "get weather"), when
`tool_choice` names one, or when `tool_choice` is "required" (then the first tool). Arguments hold the
schema's required properties, filled from the user's words: an enum value the user said (else the first),
the first number said for numbers, the words after the last "in/for/at/about/to/of" (else all the words)
for strings. When the conversation ends with tool results, it speaks them instead.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from service.offline import wire
from service.offline.chat_request import OpenAIError

Json = dict[str, Any]

# Real streams cut the arguments into pieces of a few characters, anywhere.
ARGUMENT_PIECE_CHARS = 7
MAX_SPOKEN_RESULT_CHARS = 300
_PREPOSITIONS = ("in", "for", "at", "about", "to", "of", "on")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
CHOICE_MODES = ("none", "auto", "required")


@dataclass(frozen=True)
class PlannedCall:
    """A call the offline voice makes: a fresh id, the function's name and its arguments as JSON text."""

    id: str
    name: str
    arguments: str


def _function_tools(body: Json) -> list[Json]:
    tools = body.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise OpenAIError("Invalid type for 'tools': expected an array.", "tools", "invalid_type")
    functions: list[Json] = []
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
            raise OpenAIError(f"Invalid 'tools[{index}]': expected a function tool.", f"tools[{index}]")
        if not isinstance(function.get("name"), str) or not function["name"]:
            raise OpenAIError(
                f"Missing required parameter: 'tools[{index}].function.name'.",
                f"tools[{index}].function.name",
                "missing_required_parameter",
            )
        functions.append(function)
    return functions


def plan_tool_call(body: Json, user_text: str) -> PlannedCall | None:
    """The call to make for this request, or None to answer in words. Raises OpenAIError for bad tools."""
    functions = _function_tools(body)
    choice = body.get("tool_choice")
    if choice is not None and not functions:
        raise OpenAIError(
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
            "tool_choice",
        )
    forced: str | None = None
    if isinstance(choice, dict):
        forced = (choice.get("function") or {}).get("name")
        if not any(f["name"] == forced for f in functions):
            raise OpenAIError(
                f"Invalid value for 'tool_choice': no function named {forced!r}.", "tool_choice"
            )
        choice = None
    elif choice is not None and choice not in CHOICE_MODES:
        raise OpenAIError(f"Invalid value for 'tool_choice': {choice!r}.", "tool_choice", "invalid_value")
    return choose_call(functions, choice, forced, user_text)


def choose_call(
    functions: Sequence[Json], mode: str | None, forced: str | None, user_text: str
) -> PlannedCall | None:
    """The call to make, given checked functions (each a dict with a non-empty `name` and optional
    `parameters`), the tool_choice mode (None, "none", "auto", "required") or a forced function's name
    (one of them); None to answer in words. Shared by the Chat Completions and Realtime faces."""
    if not functions or mode == "none":
        return None
    if forced is not None:
        chosen = next((f for f in functions if f["name"] == forced), None)
    else:
        chosen = next((f for f in functions if _names(user_text, f["name"])), None)
        if chosen is None and mode == "required":
            chosen = functions[0]
    if chosen is None:
        return None
    arguments = fill_arguments(chosen.get("parameters"), _without_name(user_text, chosen["name"]))
    return PlannedCall(new_call_id(), chosen["name"], json.dumps(arguments, ensure_ascii=False))


def _spoken_forms(name: str) -> list[str]:
    return [name.lower(), re.sub(r"[_\-]+", " ", name).lower()]


def _names(text: str, name: str) -> bool:
    lowered = text.lower()
    return any(re.search(rf"\b{re.escape(form)}\b", lowered) for form in _spoken_forms(name))


def _without_name(text: str, name: str) -> str:
    for form in _spoken_forms(name):
        text = re.sub(rf"\b{re.escape(form)}\b", " ", text, flags=re.IGNORECASE)
    return " ".join(text.split())


def fill_arguments(schema: Any, words: str) -> Json:
    """Values for the schema's required properties, taken from `words` where the type allows."""
    if not isinstance(schema, dict):
        return {}
    properties = schema.get("properties")
    required = schema.get("required")
    if not isinstance(properties, dict):
        properties = {}
    if not isinstance(required, list):
        required = []
    # Enum values the user said answer their own property, not a free-text one ("in fahrenheit for Paris").
    free_text = words
    for spec in properties.values():
        enum = spec.get("enum") if isinstance(spec, dict) else None
        for item in enum if isinstance(enum, list) else []:
            if isinstance(item, str) and item:
                free_text = re.sub(rf"\b{re.escape(item)}\b", " ", free_text, flags=re.IGNORECASE)
    return {
        name: _value(properties.get(name) or {}, words, free_text)
        for name in required
        if isinstance(name, str)
    }


def _value(spec: Any, words: str, free_text: str) -> Any:
    spec = spec if isinstance(spec, dict) else {}
    enum = spec.get("enum")
    if isinstance(enum, list) and enum:
        said = next((item for item in enum if isinstance(item, str) and _names(words, item)), None)
        return said if said is not None else enum[0]
    kind = spec.get("type")
    if kind in ("integer", "number"):
        match = _NUMBER.search(words)
        number = float(match.group()) if match else float(spec.get("minimum", 0))
        return int(number) if kind == "integer" else number
    if kind == "boolean":
        return bool(re.search(r"\b(yes|true|on)\b", words, re.IGNORECASE))
    if kind == "array":
        return []
    if kind == "object":
        return {}
    return _phrase(free_text)


def _phrase(words: str) -> str:
    """The words after the last preposition ("weather in Paris" -> "Paris"), without punctuation."""
    tokens = [token.strip(".,;:!?\"'") for token in words.split()]
    tokens = [token for token in tokens if token]
    while tokens and tokens[-1].lower() in _PREPOSITIONS:
        tokens.pop()
    last = max((i for i, token in enumerate(tokens) if token.lower() in _PREPOSITIONS), default=-1)
    return " ".join(tokens[last + 1 :])


def new_call_id() -> str:
    """A fresh `call_...` id, like OpenAI's (24 random letters and digits)."""
    alphabet = string.ascii_letters + string.digits
    return "call_" + "".join(secrets.choice(alphabet) for _ in range(24))


def tool_results(messages: Sequence[Any]) -> list[tuple[str, str]]:
    """(function name, content) of the tool messages that end the conversation, when it ends with some."""
    results: list[tuple[str, str]] = []
    index = len(messages) - 1
    while index >= 0 and isinstance(messages[index], dict) and messages[index].get("role") == "tool":
        index -= 1
    names: dict[str, str] = {}
    calling = messages[index] if index >= 0 and isinstance(messages[index], dict) else {}
    for call in calling.get("tool_calls") or []:
        if isinstance(call, dict) and isinstance(call.get("function"), dict):
            names[str(call.get("id"))] = str(call["function"].get("name", "the tool"))
    for message in messages[index + 1 :]:
        content = message.get("content")
        if isinstance(content, list):
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        results.append((names.get(str(message.get("tool_call_id")), "the tool"), str(content or "")))
    return results


def speak_results(results: Sequence[tuple[str, str]]) -> str:
    """The continuation after tool results: what each tool returned, read out."""
    sentences = []
    for name, content in results:
        text = " ".join(content.split())
        if len(text) > MAX_SPOKEN_RESULT_CHARS:
            text = text[:MAX_SPOKEN_RESULT_CHARS].rstrip() + "…"
        sentences.append(f"{name} returned: {text or 'nothing'}.")
    return " ".join(sentences)


def preamble(call: PlannedCall) -> str:
    """What the voice says before it calls, like a model that says "let me check"."""
    return f"Let me call {call.name}."


def tool_call_chunks(ident: wire.StreamIdentity, call: PlannedCall, opening: bool) -> Iterator[Json]:
    """The call's pieces as real streams send them, then the `tool_calls` finish chunk.

    `opening`: the call is the first thing said, so its first chunk also carries role, content and refusal.
    """
    first: Json = {
        "index": 0,
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": ""},
    }
    delta: Json = {"tool_calls": [first]}
    if opening:
        delta = {"role": "assistant", "content": None, "refusal": None, **delta}
    yield wire.chunk(ident, delta)
    for start in range(0, len(call.arguments), ARGUMENT_PIECE_CHARS):
        piece = call.arguments[start : start + ARGUMENT_PIECE_CHARS]
        yield wire.chunk(ident, {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
    yield wire.finish_chunk(ident, "tool_calls")


def call_message_json(call: PlannedCall) -> Json:
    """The call in a non-streamed assistant message's `tool_calls`."""
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
