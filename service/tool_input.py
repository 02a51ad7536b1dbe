"""Tools in a turn's input, validated: the tools offered, the calls in the history and their results.

The tools' JSON Schemas travel as JSON text so the upstream gets them as the client wrote them; they are
parsed here once, only to refuse what is not a JSON object before it costs an upstream round trip.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from audiochat.v1 import audiochat_pb2 as pb
from service.errors import InvalidInput, WrongState
from service.pass_through import parse_json_object

MAX_TOOLS = 128  # OpenAI's own limit per request
# One function's JSON Schema; far above real schemas, well under the gRPC message limit.
MAX_SCHEMA_BYTES = 256 * 1024

_CHOICE_MODES = {
    pb.TOOL_CHOICE_MODE_AUTO: "auto",
    pb.TOOL_CHOICE_MODE_NONE: "none",
    pb.TOOL_CHOICE_MODE_REQUIRED: "required",
}


@dataclass(frozen=True, slots=True)
class CalledTool:
    """One call an earlier answer made: its id, the function's name, the arguments as JSON text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolEntry:
    """A tool's result in the history (Chat Completions role "tool")."""

    tool_call_id: str
    content: str


def tool_params(config: pb.TurnConfig) -> dict[str, Any]:
    """The upstream request's `tools`, `tool_choice` and `parallel_tool_calls`, as the client set them.

    Raises InvalidInput naming the field for an unnamed or duplicate function, a schema that is not a JSON
    object, a choice naming a function not offered, or a choice without tools.
    """
    params: dict[str, Any] = {}
    tools: list[dict[str, Any]] = []
    names: set[str] = set()
    if len(config.tools) > MAX_TOOLS:
        raise InvalidInput(
            f"tools: {len(config.tools)} tools is over the limit of {MAX_TOOLS}", "config.tools"
        )
    for index, tool in enumerate(config.tools):
        where = f"tools[{index}].function"
        if not tool.HasField("function"):
            raise InvalidInput(
                f"tools[{index}]: only function tools are supported; set function", f"config.{where}"
            )
        function = tool.function
        if not function.name:
            raise InvalidInput(f"{where}.name is required", f"config.{where}.name")
        if function.name in names:
            raise InvalidInput(f"{where}.name {function.name!r} is offered twice", f"config.{where}.name")
        names.add(function.name)
        spec: dict[str, Any] = {"name": function.name}
        if function.description:
            spec["description"] = function.description
        if function.parameters_json:
            schema = parse_json_object(
                function.parameters_json,
                f"config.{where}.parameters_json",
                f"{where}.parameters_json",
                MAX_SCHEMA_BYTES,
            )
            spec["parameters"] = schema
        if function.HasField("strict"):
            spec["strict"] = function.strict
        tools.append({"type": "function", "function": spec})
    if tools:
        params["tools"] = tools
    choice = config.tool_choice
    which = choice.WhichOneof("choice") if config.HasField("tool_choice") else None
    if which is not None and not tools:
        raise InvalidInput("tool_choice is only allowed when tools are offered", "config.tool_choice")
    if which == "function_name":
        if choice.function_name not in names:
            raise InvalidInput(
                f"tool_choice.function_name {choice.function_name!r} is not one of the tools",
                "config.tool_choice.function_name",
            )
        params["tool_choice"] = {"type": "function", "function": {"name": choice.function_name}}
    elif which == "mode" and choice.mode != pb.TOOL_CHOICE_MODE_UNSPECIFIED:
        if choice.mode not in _CHOICE_MODES:
            raise InvalidInput(f"tool_choice.mode {choice.mode} is unknown", "config.tool_choice.mode")
        params["tool_choice"] = _CHOICE_MODES[choice.mode]
    if config.HasField("parallel_tool_calls"):
        if not tools:
            raise InvalidInput(
                "parallel_tool_calls is only allowed when tools are offered", "config.parallel_tool_calls"
            )
        params["parallel_tool_calls"] = config.parallel_tool_calls
    return params


def called_tools(calls: Iterable[pb.ToolCall], where: str) -> tuple[CalledTool, ...]:
    """Check an assistant message's calls: each needs an id (unique) and a function name."""
    result: list[CalledTool] = []
    for index, call in enumerate(calls):
        if not call.id or not call.name:
            raise InvalidInput(
                f"{where}.tool_calls[{index}] needs an id and a name", f"{where}.tool_calls[{index}]"
            )
        if any(earlier.id == call.id for earlier in result):
            raise InvalidInput(
                f"{where}.tool_calls[{index}].id {call.id!r} is used twice", f"{where}.tool_calls[{index}].id"
            )
        result.append(CalledTool(call.id, call.name, call.arguments))
    return tuple(result)


class PendingCalls:
    """The calls of the last assistant message that still wait for their results (one result per call)."""

    __slots__ = ("_answered", "_waiting")

    def __init__(self) -> None:
        self._waiting: tuple[str, ...] = ()
        self._answered: set[str] = set()

    @property
    def waiting(self) -> bool:
        """Whether some call has no result yet."""
        return len(self._answered) < len(self._waiting)

    @property
    def answered(self) -> int:
        """How many results arrived for the current calls."""
        return len(self._answered)

    def expect(self, calls: Iterable[CalledTool]) -> None:
        """An answer made these calls: their results come next."""
        self._waiting = tuple(call.id for call in calls)
        self._answered = set()

    def clear(self) -> None:
        """Forget the calls (their answer was cancelled)."""
        self.expect(())

    def answer(self, tool_call_id: str, where: str) -> None:
        """Record a result. Raises WrongState if no call waits, InvalidInput for an unknown or repeated id."""
        if not self._waiting:
            raise WrongState(f"{where}: no tool call is waiting for a result")
        if tool_call_id not in self._waiting:
            raise InvalidInput(
                f"{where}: unknown tool_call_id {tool_call_id!r}; waiting calls: {list(self._waiting)}",
                f"{where}.tool_call_id",
            )
        if tool_call_id in self._answered:
            raise InvalidInput(
                f"{where}: tool_call_id {tool_call_id!r} already has its result", f"{where}.tool_call_id"
            )
        self._answered.add(tool_call_id)

    def require_answered(self, where: str) -> None:
        """Raise InvalidInput if a call still has no result: the upstream refuses such a history."""
        if self.waiting:
            missing = [call_id for call_id in self._waiting if call_id not in self._answered]
            raise InvalidInput(f"{where}: tool calls {missing} have no tool_result", where)
