"""Extra upstream request parameters (`TurnConfig.extra_body`): forwarded as written, or refused by name.

The rule: every parameter a client sends reaches the model unchanged, or the client gets INVALID_ARGUMENT
naming it. A parameter is refused when the gateway owns it (it builds that part of the request from typed
fields, so the client's copy would be overridden without a word), or when forwarding it would be a lie (the
model would act on it, and the gateway cannot relay what comes back: `n: 2` makes two choices and only one
is relayed). Unknown parameters pass: OpenAI-compatible upstreams have their own extensions.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from typing import Any

from service.errors import InvalidInput

MAX_EXTRA_BODY_BYTES = 64 * 1024
# Deeper JSON than this is not a request parameter; the limit keeps the parser off Python's recursion limit.
MAX_JSON_DEPTH = 32

# Built by the gateway from the turn's typed fields (or the OpenAI-compatible body's own typed parts).
OWNED: dict[str, str] = {
    "model": "set TurnConfig.model",
    "messages": "the gateway builds messages from the history and the input",
    "stream": "the gateway always streams from the upstream",
    "stream_options": "the gateway sets stream_options (it needs the usage chunk)",
    "modalities": "set TurnConfig.modalities",
    "audio": "set TurnConfig.voice and output_audio_format",
    "tools": "set TurnConfig.tools",
    "tool_choice": "set TurnConfig.tool_choice",
    "parallel_tool_calls": "set TurnConfig.parallel_tool_calls",
}

# What the model would act on while the gateway drops what it sends back, with the values that ask for
# nothing and so may pass: JSON null (the default, as if left out) and the default itself (n: 1,
# logprobs: false, top_logprobs: 0).
NOT_RELAYED: dict[str, tuple[str, tuple[object, ...]]] = {
    "n": ("only one choice is relayed; send n: 1 or leave it out", (1,)),
    "logprobs": ("log probabilities are not relayed", (False,)),
    "top_logprobs": ("log probabilities are not relayed", (0,)),
    "functions": ("legacy function calling is not relayed", ()),
    "function_call": ("legacy function calling is not relayed", ()),
    "web_search_options": ("web search annotations are not relayed", ()),
}

# Parameters a typed TurnConfig field also sets: one source per value.
TYPED: dict[str, str] = {
    "temperature": "temperature",
    "max_completion_tokens": "max_output_tokens",
    "max_tokens": "max_output_tokens",
}


class Refused(InvalidInput):
    """A parameter the gateway does not forward; `param` names it as the client wrote it."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message, field=param)
        self.param = param


def refusal(name: str, value: object) -> str | None:
    """Why `name` cannot be forwarded with `value`, or None when it passes."""
    if name in OWNED:
        return f"'{name}' is set by the gateway: {OWNED[name]}"
    if name in NOT_RELAYED:
        reason, defaults = NOT_RELAYED[name]
        # type() too: True == 1 in Python, and n: true is no default.
        if value is not None and not any(type(value) is type(d) and value == d for d in defaults):
            return f"'{name}' is not supported by this gateway: {reason}"
    return None


def parse_extra_body(text: str, prefix: str = "config.extra_body") -> dict[str, Any]:
    """The parameters of an `extra_body` JSON object text; Refused (naming `prefix`) if it is not one."""
    return parse_json_object(text, prefix, "extra_body", MAX_EXTRA_BODY_BYTES)


def parse_json_object(text: str, param: str, what: str, max_bytes: int) -> dict[str, Any]:
    """A JSON object written as text by a gRPC client (`extra_body`, a tool's `parameters_json`).

    Refused, naming `param`, when the text is over `max_bytes`, is not JSON (the message says where, in
    JSON's terms, never the parser's internals), is not an object, or holds what JSON cannot carry to the
    upstream (see `check_json`).
    """
    if len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        raise Refused(f"{what} is over the limit of {max_bytes} bytes", param)
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise Refused(f"{what} is not valid JSON: {exc.msg} at {where}", param) from None
    except RecursionError:
        raise Refused(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels", param) from None
    except ValueError as exc:
        # int() past sys.get_int_max_str_digits, or NaN / Infinity (from _no_constant).
        reason = str(exc) if isinstance(exc, _ConstantError) else "it holds a number with too many digits"
        raise Refused(f"{what} is not valid JSON: {reason}", param) from None
    if not isinstance(value, dict):
        raise Refused(f"{what} must be a JSON object", param)
    check_json(value, param)
    return value


def check_params(params: Mapping[str, Any], prefix: str, typed: Collection[str] = ()) -> None:
    """Refuse the first parameter that cannot be forwarded; `typed` names TurnConfig fields already set."""
    for name, value in params.items():
        param = f"{prefix}.{name}" if prefix else name
        reason = refusal(name, value)
        if reason is None and name in TYPED and TYPED[name] in typed:
            reason = f"'{name}' is also set by TurnConfig.{TYPED[name]}: set it in one place"
        if reason is not None:
            raise Refused(reason, param)


def check_json(value: Any, param: str) -> None:
    """Refuse what JSON cannot carry to the upstream: too deep, non-finite numbers, lone surrogates."""
    problem = json_problem(value, param, MAX_JSON_DEPTH)
    if problem is not None:
        path, why = problem
        raise Refused(f"'{path}' {why}" if path else f"the JSON {why}", path)


def json_problem(root: Any, root_path: str, max_depth: int) -> tuple[str, str] | None:
    """The first place in parsed JSON that no request may hold, as (path, why), or None.

    Deeper than `max_depth`, a NaN or Infinity (Python's parser takes them, JSON has none), or a lone
    surrogate in a string or key (not encodable as UTF-8). Walked iteratively, so no depth reaches
    Python's recursion limit. Paths read the way OpenAI names params: `metadata.k`, `history[0].text`.
    """
    pending: list[tuple[Any, str, int]] = [(root, root_path, 0)]
    while pending:
        value, path, depth = pending.pop()
        if depth > max_depth:
            return path, f"is nested deeper than {max_depth} levels"
        if isinstance(value, float) and not math.isfinite(value):
            return path, "must be a finite number (NaN and Infinity are not JSON)"
        if isinstance(value, str) and not _encodable(value):
            return path, _LONE_SURROGATE
        if isinstance(value, dict):
            for key, item in value.items():
                if not _encodable(key):
                    return path, _LONE_SURROGATE
                pending.append((item, f"{path}.{key}" if path else key, depth + 1))
        elif isinstance(value, list):
            pending.extend((item, f"{path}[{index}]", depth + 1) for index, item in enumerate(value))
    return None


_LONE_SURROGATE = "holds a lone surrogate, which is not valid Unicode"


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _ConstantError(ValueError):
    """NaN, Infinity or -Infinity, which Python's parser accepts and JSON does not."""


def _no_constant(name: str) -> None:
    raise _ConstantError(f"{name} is not a JSON number")
