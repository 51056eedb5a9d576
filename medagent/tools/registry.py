"""The tool registry: schemas for the planner, argument validation, policy-enforced calls."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import json
import time
import weakref
from collections.abc import Callable, Collection
from contextlib import AbstractAsyncContextManager
from typing import Any

from pydantic import BaseModel, ValidationError

from medagent.errors import (
    ApprovalRequired,
    DuplicateTool,
    InvalidToolArguments,
    ToolNotOffered,
    ToolTimeout,
    UnknownTool,
)
from medagent.tools.schema_compat import planner_schema
from medagent.tools.spec import ARTIFACT_ID_MARKER, Tool, ToolContext

_MAX_ERRORS_SHOWN = 3
_MAX_KEY_SHOWN = 64  # planner-chosen keys quoted back in an error are cut to this many characters


def _shown(text: str) -> str:
    return text if len(text) <= _MAX_KEY_SHOWN else text[:_MAX_KEY_SHOWN] + "..."


def _artifact_fields(model: type[BaseModel]) -> tuple[str, ...]:
    """The input model's image-id fields (a tool's ``type[Any]`` model is passed on as the class it is)."""
    return _artifact_fields_of(model)


@functools.cache
def _argument_names(model: type[BaseModel]) -> frozenset[str]:
    """The keys a call may send (aliases where set): worked out once per input model, not per call."""
    return frozenset(info.alias or name for name, info in model.model_fields.items())


@functools.cache
def _artifact_fields_of(model: type[BaseModel]) -> tuple[str, ...]:
    fields = []
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra
        for meta in info.metadata:
            extra = extra or getattr(meta, "json_schema_extra", None)
        if isinstance(extra, dict) and ARTIFACT_ID_MARKER in extra:
            fields.append(name)
    return tuple(fields)


def reads_images(model: type[BaseModel]) -> bool:
    """Whether a tool with this input model takes attached images (an :data:`ImageId` field)."""
    return bool(_artifact_fields(model))


def _strict_schema(schema: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Close every object schema; report whether OpenAI strict mode can accept it (all fields required)."""
    strict = True

    def visit(node: Any) -> None:
        nonlocal strict
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                node["additionalProperties"] = False
                if set(node.get("required", [])) != set(node["properties"]):
                    strict = False
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(schema)
    return schema, strict


def describe_validation_error(error: ValidationError) -> str:
    """A short message a small model can act on."""
    parts = []
    for item in error.errors()[:_MAX_ERRORS_SHOWN]:
        location = _shown(".".join(str(part) for part in item["loc"]) or "arguments")
        if item["type"] == "missing":
            parts.append(f"`{location}` is required")
        elif item["type"] == "extra_forbidden":
            parts.append(f"`{location}` is not an argument of this tool")
        else:
            parts.append(f"`{location}`: {item['msg']}")
    more = len(error.errors()) - _MAX_ERRORS_SHOWN
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


class ToolRegistry:
    def __init__(self, tools: list[Tool[Any, Any]] | None = None) -> None:
        self._tools: dict[str, Tool[Any, Any]] = {}
        self._schemas: dict[str, tuple[dict[str, Any], bool]] = {}
        self._semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Semaphore]] = (
            weakref.WeakKeyDictionary()
        )
        self._limits: dict[str, int] = {}
        self._gates: dict[str, Callable[[], AbstractAsyncContextManager[object]]] = {}
        for tool in tools or []:
            self.register(tool)

    def register(self, tool: Tool[Any, Any]) -> None:
        if tool.name in self._tools:
            raise DuplicateTool(f"a tool named {tool.name!r} is already registered")
        self._tools[tool.name] = tool
        # built once: schema generation is not cheap, and every planner step needs the schemas
        schema = tool.input_model.model_json_schema()
        schema.pop("title", None)
        for name in _artifact_fields(tool.input_model):
            prop = schema["properties"][name]
            for key in (ARTIFACT_ID_MARKER, "title", "minLength", "maxLength"):
                prop.pop(key, None)
        self._schemas[tool.name] = _strict_schema(planner_schema(schema))  # compiles on every backend

    def __contains__(self, name: str) -> bool:
        return name in self._tools

    def names(self) -> list[str]:
        return sorted(self._tools)

    def tools(self) -> list[Tool[Any, Any]]:
        return [self._tools[name] for name in self.names()]

    def get(self, name: str) -> Tool[Any, Any]:
        try:
            return self._tools[name]
        except KeyError:
            raise UnknownTool(f"no tool named `{_shown(name)}`; available: {', '.join(self.names())}") from None

    def openai_tools(self, context: ToolContext | None = None, names: list[str] | None = None) -> list[dict[str, Any]]:
        """OpenAI-style ``tools`` entries (all, or those in ``names``), artifact ids restricted to the session's."""
        entries = []
        for tool in self.tools():
            if names is not None and tool.name not in names:
                continue
            base, strict = self._schemas[tool.name]
            schema = base
            if context is not None and _artifact_fields(tool.input_model):
                # copy only the path to the id fields; the rest of the cached schema is shared, read-only
                schema = {**base, "properties": dict(base["properties"])}
                for name in _artifact_fields(tool.input_model):
                    schema["properties"][name] = {**base["properties"][name], "enum": list(context.image_ids)}
            schema = copy.deepcopy(schema) if context is None else schema
            entries.append(
                {
                    "type": "function",
                    "function": {
                        "name": tool.name,
                        "description": tool.description,
                        "parameters": schema,
                        "strict": strict,
                    },
                }
            )
        return entries

    def validate(self, name: str, arguments: str | dict[str, Any], context: ToolContext) -> BaseModel:
        """Parse planner-supplied arguments into the tool's input model or raise a retry signal."""
        tool = self.get(name)
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments or "{}")
            except json.JSONDecodeError as exc:
                raise InvalidToolArguments(f"arguments are not valid JSON ({exc.msg} at position {exc.pos})") from None
            except RecursionError:  # nested deeper than the parser goes: no tool takes such arguments
                raise InvalidToolArguments("arguments are nested too deeply") from None
        if not isinstance(arguments, dict):
            raise InvalidToolArguments("arguments must be a JSON object")
        model: type[BaseModel] = tool.input_model  # a Tool[Any, Any]'s model, as the class it is
        unexpected = sorted(set(arguments) - _argument_names(model))
        if unexpected:  # the exported schema forbids extra keys; enforce it whatever the model's config
            raise InvalidToolArguments(f"`{_shown(unexpected[0])}` is not an argument of this tool", tool=name)
        try:
            parsed = tool.input_model.model_validate(arguments)
        except ValidationError as exc:
            raise InvalidToolArguments(describe_validation_error(exc), tool=name) from None
        for field_name in _artifact_fields(tool.input_model):
            value = getattr(parsed, field_name)
            if value not in context.image_ids:
                allowed = ", ".join(context.image_ids) or "(no image is attached)"
                raise InvalidToolArguments(f"`{field_name}` must be one of: {allowed}", tool=name)
        return parsed

    def set_concurrency(self, name: str, limit: int) -> None:
        """Calls of tool ``name`` in flight at once, replacing its policy's ``max_concurrency`` (a study
        sets this for its hardware); takes effect for calls that start after it."""
        self.get(name)
        if limit < 1:
            raise ValueError("a concurrency limit must be at least 1")
        self._limits[name] = limit
        for per_loop in self._semaphores.values():
            per_loop.pop(name, None)

    def set_gate(self, name: str, gate: Callable[[], AbstractAsyncContextManager[object]]) -> None:
        """Also enter ``gate()`` around every call of tool ``name``, inside its own limit: a slot of a limit that
        several processes share (the case workers of a study on a cluster, limited per expert across it)."""
        self.get(name)
        self._gates[name] = gate

    def concurrency(self, name: str) -> int:
        return self._limits.get(name, self.get(name).policy.max_concurrency)

    def _semaphore(self, tool: Tool[Any, Any]) -> asyncio.Semaphore:
        per_loop = self._semaphores.setdefault(asyncio.get_running_loop(), {})
        if tool.name not in per_loop:
            per_loop[tool.name] = asyncio.Semaphore(self.concurrency(tool.name))
        return per_loop[tool.name]

    async def call(
        self,
        name: str,
        arguments: str | dict[str, Any],
        context: ToolContext,
        *,
        approved: bool = False,
        offered: Collection[str] | None = None,
    ) -> BaseModel:
        """Check the tool was offered (when ``offered`` is given), validate, check approval, then run under the
        tool's concurrency limit and timeout."""
        if offered is not None and name not in offered:
            raise ToolNotOffered(f"`{_shown(name)}` was not offered; offered: {', '.join(offered) or '(none)'}")
        tool = self.get(name)
        parsed = self.validate(name, arguments, context)
        if tool.policy.requires_approval and not approved:
            raise ApprovalRequired(f"tool {name} requires human approval before it runs", tool=name)
        gate = self._gates.get(name)
        async with self._semaphore(tool), gate() if gate is not None else contextlib.nullcontext():
            started = time.perf_counter()
            try:
                async with asyncio.timeout(tool.policy.timeout_s):  # no extra task per call, unlike wait_for
                    result = await tool.run(parsed, context)
            except TimeoutError:
                elapsed = time.perf_counter() - started
                raise ToolTimeout(
                    f"tool {name} did not finish within {tool.policy.timeout_s:g} s", tool=name, elapsed_s=elapsed
                ) from None
        if not isinstance(result, tool.output_model):
            result = tool.output_model.model_validate(result)
        return result
