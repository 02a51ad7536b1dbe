"""A Realtime session's configuration: `session.update` and `response.create` checked as the API does.

What the offline voice cannot do is refused by name (an `error` event naming the parameter), never
accepted and ignored: input transcription, noise reduction, prompts, tracing, MCP tools, an idle timeout,
G.711 audio and speeds other than 1.0. `semantic_vad` is served by the same Silero server VAD as
`server_vad`, its eagerness read as a silence duration (low 2 s, medium/auto 1 s, high 0.5 s).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

from service.offline.realtime_events import Json, audio_format_json, new_id
from service.offline.speech import VOICES
from service.offline.tools import CHOICE_MODES
from service.vad.segmenter import VadSettings

DEFAULT_MODEL = "gpt-realtime"
MAX_SESSION_SECONDS = 3600  # the API's 60 minutes
MAX_OUTPUT_TOKENS = 4096
MODALITIES = ("text", "audio")
_SESSION_FIELDS = frozenset(
    {
        "type",
        "model",
        "instructions",
        "output_modalities",
        "audio",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "max_output_tokens",
        "tracing",
        "truncation",
        "prompt",
        "include",
    }
)
_RESPONSE_FIELDS = frozenset(
    {
        "audio",
        "conversation",
        "input",
        "instructions",
        "max_output_tokens",
        "metadata",
        "output_modalities",
        "tool_choice",
        "tools",
        "parallel_tool_calls",
        "prompt",
    }
)
# Refused unless null: things only a real model service does.
_UNSUPPORTED = {
    "tracing": "tracing",
    "prompt": "prompt templates",
    "include": "logprobs",
    "audio.input.transcription": "input audio transcription",
    "audio.input.noise_reduction": "noise reduction",
}
_EAGERNESS_SILENCE_MS = {"low": 2000, "medium": 1000, "auto": 1000, "high": 500}
_SERVER_VAD_KEYS = frozenset(
    {
        "type",
        "threshold",
        "prefix_padding_ms",
        "silence_duration_ms",
        "create_response",
        "interrupt_response",
        "idle_timeout_ms",
    }
)
_SEMANTIC_VAD_KEYS = frozenset({"type", "eagerness", "create_response", "interrupt_response"})


class RealtimeError(Exception):
    """A client event the API would refuse: becomes an `error` event with this message, code and param."""

    def __init__(self, message: str, param: str | None = None, code: str | None = "invalid_value") -> None:
        super().__init__(message)
        self.param = param
        self.code = code


def _invalid(value: Any, param: str, allowed: tuple[str, ...] | list[str]) -> RealtimeError:
    listing = ", ".join(f"'{item}'" for item in allowed)
    return RealtimeError(f"Invalid value: '{value}'. Supported values are: {listing}.", param)


def _unknown(param: str) -> RealtimeError:
    return RealtimeError(f"Unknown parameter: '{param}'.", param, "unknown_parameter")


def _type_error(param: str, expected: str) -> RealtimeError:
    return RealtimeError(f"Invalid type for '{param}': expected {expected}.", param, "invalid_type")


def default_turn_detection() -> Json:
    """The API's default: server VAD that answers at the end of speech and interrupts on new speech."""
    return {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
        "idle_timeout_ms": None,
        "create_response": True,
        "interrupt_response": True,
    }


@dataclass
class SessionConfig:
    """One session's configuration, in the API's names; `json()` is what session.created/updated carry."""

    model: str = DEFAULT_MODEL
    id: str = field(default_factory=lambda: new_id("sess"))
    expires_at: int = field(default_factory=lambda: int(time.time()) + MAX_SESSION_SECONDS)
    instructions: str = ""
    output_modalities: list[str] = field(default_factory=lambda: ["audio"])
    voice: Any = "alloy"  # a name from VOICES or {"id": "voice_..."}
    turn_detection: Json | None = field(default_factory=default_turn_detection)
    tools: list[Json] = field(default_factory=list)
    tool_choice: Any = "auto"
    max_output_tokens: int | str = "inf"
    truncation: Any = "auto"
    # The offline voice makes at most one call per response, which either value allows.
    parallel_tool_calls: bool = True

    def json(self) -> Json:
        """The session object."""
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": self.id,
            "model": self.model,
            "output_modalities": list(self.output_modalities),
            "instructions": self.instructions,
            "tools": copy.deepcopy(self.tools),
            "tool_choice": copy.deepcopy(self.tool_choice),
            "max_output_tokens": self.max_output_tokens,
            "parallel_tool_calls": self.parallel_tool_calls,
            "tracing": None,
            "truncation": self.truncation,
            "prompt": None,
            "expires_at": self.expires_at,
            "include": None,
            "audio": {
                "input": {
                    "format": audio_format_json(),
                    "transcription": None,
                    "noise_reduction": None,
                    "turn_detection": copy.deepcopy(self.turn_detection),
                },
                "output": {"format": audio_format_json(), "voice": self.voice, "speed": 1.0},
            },
        }

    def vad_settings(self) -> VadSettings | None:
        """The server VAD's settings, or None when turns are committed by hand."""
        detection = self.turn_detection
        if detection is None:
            return None
        if detection["type"] == "semantic_vad":
            eagerness = detection.get("eagerness") or "auto"
            return VadSettings(silence_duration_ms=_EAGERNESS_SILENCE_MS[eagerness])
        return VadSettings(
            threshold=detection["threshold"],
            prefix_padding_ms=detection["prefix_padding_ms"],
            silence_duration_ms=detection["silence_duration_ms"],
        )

    def update(self, session: Any, voice_locked: bool) -> None:
        """Apply a `session.update`'s `session` (all checked before any is applied).

        `voice_locked`: the model has already spoken in this session, so the voice may not change.
        """
        if not isinstance(session, dict):
            raise _type_error("session", "an object")
        for key in session:
            if key not in _SESSION_FIELDS:
                raise _unknown(f"session.{key}")
        if session.get("type") != "realtime":
            if "type" not in session:
                raise RealtimeError(
                    "Missing required parameter: 'session.type'.",
                    "session.type",
                    "missing_required_parameter",
                )
            raise _invalid(session.get("type"), "session.type", ["realtime"])
        changed = copy.copy(self)
        _refuse_unsupported(session, "session")
        if "model" in session:
            if not isinstance(session["model"], str) or not session["model"]:
                raise _type_error("session.model", "a non-empty string")
            changed.model = session["model"]
        if "instructions" in session:
            changed.instructions = _string(session["instructions"], "session.instructions")
        if "output_modalities" in session:
            changed.output_modalities = check_modalities(session["output_modalities"], "session")
        if "max_output_tokens" in session:
            changed.max_output_tokens = check_max_output_tokens(session["max_output_tokens"], "session")
        if "parallel_tool_calls" in session:
            changed.parallel_tool_calls = _boolean(
                session["parallel_tool_calls"], "session.parallel_tool_calls"
            )
        if "truncation" in session:
            if session["truncation"] not in ("auto", "disabled"):
                raise _invalid(session["truncation"], "session.truncation", ["auto", "disabled"])
            changed.truncation = session["truncation"]
        if "tools" in session:
            changed.tools = check_tools(session["tools"], "session.tools")
        if "tool_choice" in session or "tools" in session:
            choice = session.get("tool_choice", changed.tool_choice)
            changed.tool_choice = check_tool_choice(choice, changed.tools, "session.tool_choice")
        audio = session.get("audio")
        if audio is not None:
            _apply_audio(changed, audio, voice_locked)
        self.__dict__.update(changed.__dict__)


def _boolean(value: Any, param: str) -> bool:
    if not isinstance(value, bool):
        raise _type_error(param, "a boolean")
    return value


def _string(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise _type_error(param, "a string")
    return value


def _refuse_unsupported(body: Json, prefix: str) -> None:
    for path, what in _UNSUPPORTED.items():
        value: Any = body
        for key in path.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            raise RealtimeError(
                f"The offline voice does not support {what}; set '{prefix}.{path}' to null or leave it out.",
                f"{prefix}.{path}",
                "unsupported_value",
            )


def _apply_audio(config: SessionConfig, audio: Any, voice_locked: bool) -> None:
    if not isinstance(audio, dict):
        raise _type_error("session.audio", "an object")
    for key in audio:
        if key not in ("input", "output"):
            raise _unknown(f"session.audio.{key}")
    audio_in = audio.get("input") or {}
    audio_out = audio.get("output") or {}
    for name, part in (("input", audio_in), ("output", audio_out)):
        if not isinstance(part, dict):
            raise _type_error(f"session.audio.{name}", "an object")
    for key in audio_in:
        if key not in ("format", "transcription", "noise_reduction", "turn_detection"):
            raise _unknown(f"session.audio.input.{key}")
    for key in audio_out:
        if key not in ("format", "voice", "speed"):
            raise _unknown(f"session.audio.output.{key}")
    check_format(audio_in.get("format"), "session.audio.input.format")
    check_format(audio_out.get("format"), "session.audio.output.format")
    if audio_out.get("speed") not in (None, 1, 1.0):
        raise RealtimeError(
            "The offline voice speaks at speed 1.0 only.", "session.audio.output.speed", "unsupported_value"
        )
    if "turn_detection" in audio_in:
        config.turn_detection = check_turn_detection(audio_in["turn_detection"])
    if audio_out.get("voice") is not None:
        voice = check_voice(audio_out["voice"], "session.audio.output.voice")
        if voice_locked and voice != config.voice:
            raise RealtimeError(
                "Cannot update a conversation's voice if assistant audio is present.",
                "session.audio.output.voice",
                "cannot_update_voice",
            )
        config.voice = voice


def check_format(value: Any, param: str) -> None:
    """Accept null or 24 kHz pcm; refuse G.711 (the offline voice has no codec for it) and anything else."""
    if value is None:
        return
    if not isinstance(value, dict):
        raise _type_error(param, "an object")
    kind = value.get("type")
    if kind in ("audio/pcmu", "audio/pcma"):
        raise RealtimeError(
            f"The offline voice speaks and hears audio/pcm (24 kHz pcm16) only, not {kind}.",
            f"{param}.type",
            "unsupported_value",
        )
    if kind != "audio/pcm":
        raise _invalid(kind, f"{param}.type", ["audio/pcm", "audio/pcmu", "audio/pcma"])
    if value.get("rate", 24_000) != 24_000:
        raise _invalid(value.get("rate"), f"{param}.rate", ["24000"])


def check_voice(value: Any, param: str) -> Any:
    """A voice name of VOICES or a custom voice {"id": ...}."""
    if isinstance(value, dict):
        if not isinstance(value.get("id"), str) or not value["id"]:
            raise RealtimeError(
                f"Missing required parameter: '{param}.id'.", f"{param}.id", "missing_required_parameter"
            )
        return {"id": value["id"]}
    if not isinstance(value, str) or value not in VOICES:
        raise _invalid(value, param, list(VOICES))
    return value


def check_modalities(value: Any, prefix: str) -> list[str]:
    """["audio"] or ["text"]: the API refuses both at once."""
    param = f"{prefix}.output_modalities"
    if not isinstance(value, list) or not value:
        raise _type_error(param, "a non-empty array")
    for index, modality in enumerate(value):
        if modality not in MODALITIES:
            raise _invalid(modality, f"{param}[{index}]", MODALITIES)
    if len(set(value)) > 1:
        raise RealtimeError(
            "It is not possible to request both 'text' and 'audio' output modalities at the same time.", param
        )
    return [value[0]]


def check_max_output_tokens(value: Any, prefix: str) -> int | str:
    """An integer from 1 to 4096, or "inf"."""
    param = f"{prefix}.max_output_tokens"
    if value == "inf":
        return "inf"
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_OUTPUT_TOKENS:
        raise RealtimeError(
            f"Invalid '{param}': expected an integer from 1 to {MAX_OUTPUT_TOKENS}, or 'inf'.", param
        )
    return value


def check_tools(value: Any, param: str) -> list[Json]:
    """Function tools in the Realtime shape ({"type": "function", "name", "description", "parameters"})."""
    if not isinstance(value, list):
        raise _type_error(param, "an array")
    tools: list[Json] = []
    for index, tool in enumerate(value):
        if not isinstance(tool, dict):
            raise _type_error(f"{param}[{index}]", "an object")
        if tool.get("type") == "mcp":
            raise RealtimeError(
                "The offline voice has no MCP tools; offer function tools.",
                f"{param}[{index}].type",
                "unsupported_value",
            )
        if tool.get("type", "function") != "function":
            raise _invalid(tool.get("type"), f"{param}[{index}].type", ["function", "mcp"])
        for key in tool:
            if key not in ("type", "name", "description", "parameters"):
                raise _unknown(f"{param}[{index}].{key}")
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise RealtimeError(
                f"Missing required parameter: '{param}[{index}].name'.",
                f"{param}[{index}].name",
                "missing_required_parameter",
            )
        if tool.get("parameters") is not None and not isinstance(tool["parameters"], dict):
            raise _type_error(f"{param}[{index}].parameters", "an object (a JSON schema)")
        tools.append({"type": "function", **{k: copy.deepcopy(v) for k, v in tool.items() if k != "type"}})
    return tools


def check_tool_choice(value: Any, tools: list[Json], param: str) -> Any:
    """ "auto", "none", "required" or {"type": "function", "name": one of `tools`}."""
    if isinstance(value, str):
        if value not in CHOICE_MODES:
            raise _invalid(value, param, CHOICE_MODES)
        return value
    if not isinstance(value, dict) or value.get("type") != "function":
        raise RealtimeError(
            f"Invalid '{param}': expected 'auto', 'none', 'required' or a function choice.", param
        )
    name = value.get("name")
    if not any(tool["name"] == name for tool in tools):
        raise RealtimeError(
            f"Invalid '{param}': no function named {name!r} among the tools.", f"{param}.name"
        )
    return {"type": "function", "name": name}


def check_turn_detection(value: Any) -> Json | None:
    """server_vad or semantic_vad with the API's defaults filled in, or None (commits by hand)."""
    param = "session.audio.input.turn_detection"
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _type_error(param, "an object or null")
    kind = value.get("type")
    allowed = {"server_vad": _SERVER_VAD_KEYS, "semantic_vad": _SEMANTIC_VAD_KEYS}.get(str(kind))
    if allowed is None:
        raise _invalid(kind, f"{param}.type", ["server_vad", "semantic_vad"])
    for key in value:
        if key not in allowed:
            raise _unknown(f"{param}.{key}")
    if value.get("idle_timeout_ms") is not None:
        raise RealtimeError(
            "The offline voice has no idle timeout; leave 'idle_timeout_ms' out.",
            f"{param}.idle_timeout_ms",
            "unsupported_value",
        )
    for key in ("create_response", "interrupt_response"):
        if not isinstance(value.get(key, True), bool):
            raise _type_error(f"{param}.{key}", "a boolean")
    if kind == "semantic_vad":
        eagerness = value.get("eagerness", "auto")
        if not isinstance(eagerness, str) or eagerness not in _EAGERNESS_SILENCE_MS:
            raise _invalid(eagerness, f"{param}.eagerness", list(_EAGERNESS_SILENCE_MS))
        return {
            "type": "semantic_vad",
            "eagerness": eagerness,
            "create_response": value.get("create_response", True),
            "interrupt_response": value.get("interrupt_response", True),
        }
    detection = default_turn_detection() | value
    threshold = detection["threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise RealtimeError(
            f"Invalid '{param}.threshold': expected a number from 0 to 1.", f"{param}.threshold"
        )
    for key in ("prefix_padding_ms", "silence_duration_ms"):
        ms = detection[key]
        if isinstance(ms, bool) or not isinstance(ms, int) or not 0 <= ms <= 10_000:
            raise RealtimeError(
                f"Invalid '{param}.{key}': expected whole ms from 0 to 10000.", f"{param}.{key}"
            )
    return detection


@dataclass
class ResponseParams:
    """What one `response.create` asks for, the session's configuration filling what it leaves out."""

    modalities: list[str]
    voice: Any
    tools: list[Json]
    tool_choice: Any
    max_output_tokens: int | str
    in_conversation: bool
    input: Any  # the raw `input` items (checked by the conversation), None for the conversation's
    metadata: Json | None


def response_params(body: Any, config: SessionConfig) -> ResponseParams:
    """Check a `response.create`'s `response` against the session's configuration."""
    body = {} if body is None else body
    if not isinstance(body, dict):
        raise _type_error("response", "an object")
    for key in body:
        if key not in _RESPONSE_FIELDS:
            raise _unknown(f"response.{key}")
    if body.get("prompt") is not None:
        raise RealtimeError(
            "The offline voice does not support prompt templates.", "response.prompt", "unsupported_value"
        )
    params = ResponseParams(
        modalities=list(config.output_modalities),
        voice=config.voice,
        tools=config.tools,
        tool_choice=config.tool_choice,
        max_output_tokens=config.max_output_tokens,
        in_conversation=True,
        input=body.get("input"),
        metadata=body.get("metadata"),
    )
    if "output_modalities" in body:
        params.modalities = check_modalities(body["output_modalities"], "response")
    if "max_output_tokens" in body:
        params.max_output_tokens = check_max_output_tokens(body["max_output_tokens"], "response")
    if "instructions" in body:
        _string(body["instructions"], "response.instructions")
    if "parallel_tool_calls" in body:
        _boolean(body["parallel_tool_calls"], "response.parallel_tool_calls")
    if "tools" in body:
        params.tools = check_tools(body["tools"], "response.tools")
    if "tool_choice" in body or "tools" in body:
        choice = body.get("tool_choice", params.tool_choice)
        params.tool_choice = check_tool_choice(choice, params.tools, "response.tool_choice")
    conversation = body.get("conversation", "auto")
    if conversation not in ("auto", "none"):
        raise _invalid(conversation, "response.conversation", ["auto", "none"])
    params.in_conversation = conversation == "auto"
    if params.input is not None and not isinstance(params.input, list):
        raise _type_error("response.input", "an array of items")
    if params.metadata is not None and not isinstance(params.metadata, dict):
        raise _type_error("response.metadata", "an object")
    audio = body.get("audio")
    if audio is not None:
        out = audio.get("output") if isinstance(audio, dict) else None
        if not isinstance(out, dict) or any(key not in ("format", "voice") for key in out):
            raise RealtimeError(
                "Invalid 'response.audio': expected {'output': {'format', 'voice'}}.", "response.audio"
            )
        check_format(out.get("format"), "response.audio.output.format")
        if out.get("voice") is not None:
            params.voice = check_voice(out["voice"], "response.audio.output.voice")
    return params
