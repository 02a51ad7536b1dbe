"""Tools in the edges' JSON, in OpenAI's shapes (so code written for Chat Completions carries over):

- `tools: [{"type": "function", "function": {"name", "description", "parameters", "strict"}}]`;
- `tool_choice: "auto" | "none" | "required" | {"type": "function", "function": {"name"}}`;
- `parallel_tool_calls: true | false`;
- an assistant message's `tool_calls: [{"id", "type": "function", "function": {"name", "arguments"}}]`
  (TurnCompleted's calls are sent in this shape too, so a client can put them back in the history as is);
- a tool's result: `{"role": "tool", "tool_call_id", "content"}`.

Only shapes are checked here (each error names its field); what the values mean is the core's to judge.
"""

from __future__ import annotations

import json
from typing import Any

from audiochat.v1 import audiochat_pb2 as pb

Json = dict[str, Any]

_MODES = {
    "auto": pb.TOOL_CHOICE_MODE_AUTO,
    "none": pb.TOOL_CHOICE_MODE_NONE,
    "required": pb.TOOL_CHOICE_MODE_REQUIRED,
}


class ToolJsonError(ValueError):
    """A tool field has the wrong shape; `param` names it (OpenAI's `param`)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def _object(value: Any, param: str) -> Json:
    if not isinstance(value, dict):
        raise ToolJsonError(f"'{param}' must be an object.", param)
    return value


def _string(value: Any, param: str, *, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise ToolJsonError(f"'{param}' must be a non-empty string.", param)
    return value


def set_tools(config: pb.TurnConfig, body: Json) -> None:
    """Copy `tools`, `tool_choice` and `parallel_tool_calls` from a request body into a TurnConfig."""
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise ToolJsonError("'tools' must be an array.", "tools")
        for index, tool in enumerate(tools):
            config.tools.append(_tool(tool, f"tools[{index}]"))
    choice = body.get("tool_choice")
    if choice is not None:
        if isinstance(choice, str) and choice in _MODES:
            config.tool_choice.mode = _MODES[choice]
        elif isinstance(choice, dict) and choice.get("type") == "function":
            function = _object(choice.get("function"), "tool_choice.function")
            config.tool_choice.function_name = _string(function.get("name"), "tool_choice.function.name")
        else:
            raise ToolJsonError(
                "'tool_choice' must be 'auto', 'none', 'required' or "
                '{"type": "function", "function": {"name": ...}}.',
                "tool_choice",
            )
    parallel = body.get("parallel_tool_calls")
    if parallel is not None:
        if not isinstance(parallel, bool):
            raise ToolJsonError("'parallel_tool_calls' must be a boolean.", "parallel_tool_calls")
        config.parallel_tool_calls = parallel


def _tool(tool: Any, param: str) -> pb.Tool:
    tool = _object(tool, param)
    if tool.get("type") != "function":
        raise ToolJsonError(
            f"'{param}.type' must be 'function': only function tools are supported.", f"{param}.type"
        )
    function = _object(tool.get("function"), f"{param}.function")
    spec = pb.FunctionTool(
        name=_string(function.get("name"), f"{param}.function.name"),
        description=_string(function.get("description"), f"{param}.function.description", required=False),
    )
    parameters = function.get("parameters")
    if parameters is not None:
        # Re-encoded from the parsed body: key order, strings and numbers stay as the client wrote them.
        spec.parameters_json = json.dumps(
            _object(parameters, f"{param}.function.parameters"), ensure_ascii=False
        )
    strict = function.get("strict")
    if strict is not None:
        if not isinstance(strict, bool):
            raise ToolJsonError(f"'{param}.function.strict' must be a boolean.", f"{param}.function.strict")
        spec.strict = strict
    return pb.Tool(function=spec)


def tool_calls(value: Any, param: str) -> list[pb.ToolCall]:
    """An assistant message's `tool_calls` array."""
    if not isinstance(value, list):
        raise ToolJsonError(f"'{param}' must be an array.", param)
    calls: list[pb.ToolCall] = []
    for index, call in enumerate(value):
        where = f"{param}[{index}]"
        call = _object(call, where)
        function = _object(call.get("function"), f"{where}.function")
        calls.append(
            pb.ToolCall(
                id=_string(call.get("id"), f"{where}.id"),
                name=_string(function.get("name"), f"{where}.function.name"),
                arguments=_string(function.get("arguments"), f"{where}.function.arguments", required=False),
            )
        )
    return calls


def tool_result(message: Json, param: str, content: str) -> pb.ToolResult:
    """A `{"role": "tool", "tool_call_id", "content"}` message, its content already read as text."""
    return pb.ToolResult(
        tool_call_id=_string(message.get("tool_call_id"), f"{param}.tool_call_id"), content=content
    )


def call_json(call: pb.ToolCall) -> Json:
    """A complete call in Chat Completions' shape."""
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def tool_call_delta_json(event: pb.TurnEvent) -> Json:
    """A piece of a call: `index` always; `id` and `name` on its first piece; `arguments` to append."""
    delta = event.tool_call
    payload: Json = {"index": delta.index}
    if delta.id:
        payload["id"] = delta.id
    if delta.name:
        payload["name"] = delta.name
    payload["arguments"] = delta.arguments
    return payload
