"""medagent's expert tools as an MCP server (the official SDK's low-level ``Server``).

    root = Assembly()                                        # the toolbox every way in uses
    server = McpExperts(root.toolbox, transport="stdio").server()

Listed: the expert tools with the input schema the planner is offered and their typed output schemas, model cards
in the descriptions and as resources, and ``upload_image``. Images are referenced by the ids ``upload_image``
returned in the same session, never by paths; results come back as structured content, errors as tool errors."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import re
from typing import Any, Literal

import mcp_types as types
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError

from medagent import __version__
from medagent.errors import (
    ArgumentsTooLarge,
    ConfigurationError,
    InvalidToolArguments,
    MedagentError,
    SessionNotFound,
    UnknownArtifact,
    UnknownTool,
)
from medagent.mcp_server import results
from medagent.mcp_server.scopes import CallGate, SessionScopes
from medagent.tools.artifacts import referenced_ids
from medagent.tools.builtin import Toolbox
from medagent.tools.spec import ARTIFACT_ID_MARKER, Tool

Transport = Literal["stdio", "http"]
MIB = 1024**2
MAX_ARGUMENT_CHARS = 64 * 1024  # an expert tool's arguments (an upload's bytes are bounded on their own)
RESOURCE_NOT_FOUND = -32002
_ARTIFACT_ID = re.compile(r"[a-z]{2,8}-[0-9a-f]{6,64}")
_SESSION_HEADER = "mcp-session-id"
INSTRUCTIONS = ("medagent's medical-image experts. Upload an image with upload_image (its bytes as base64) and pass "
                "the image_id it returns to the expert tools; ids are private to this MCP session and paths are "
                "never read. Each tool's model card (what it accepts, its limits) is in its description and at "
                "medagent://cards/<tool>; masks and overlays a call returns are at medagent://artifacts/<id>.")


@dataclasses.dataclass(frozen=True)
class McpLimits:
    max_upload_bytes: int = 32 * MIB
    max_calls: int = 4  # running at once, over every session
    max_waiting: int = 16
    max_sessions: int = 64
    max_images_per_session: int = 64
    max_artifacts_per_session: int = 512
    session_idle_s: float = 1800.0
    overlay_images: int = 2  # overlay PNGs returned as image content per call (0: none)
    max_image_bytes: int = 2 * MIB
    max_resource_bytes: int = 16 * MIB


class McpExperts:
    """The tools offered, what each session may reach, and the handlers the MCP server runs."""

    def __init__(self, toolbox: Toolbox, *, transport: Transport, tools: list[str] | None = None,
                 limits: McpLimits | None = None) -> None:
        self.toolbox = toolbox
        self.transport = transport
        limits = limits or McpLimits()
        upload = min(limits.max_upload_bytes, toolbox.settings.limits.max_file_bytes)
        self.limits = dataclasses.replace(limits, max_upload_bytes=upload)
        self.scopes = SessionScopes(max_sessions=self.limits.max_sessions,
                                    max_images=self.limits.max_images_per_session,
                                    max_artifacts=self.limits.max_artifacts_per_session,
                                    idle_s=self.limits.session_idle_s)
        self.gate = CallGate(running=self.limits.max_calls, waiting=self.limits.max_waiting)
        self.offered = self._choose(tools)
        parameters = {entry["function"]["name"]: entry["function"]["parameters"]
                      for entry in toolbox.registry.openai_tools(names=[tool.name for tool in self.offered])}
        self._listing = [results.upload_listing(self.limits.max_upload_bytes),
                         *(results.tool_listing(tool, parameters[tool.name]) for tool in self.offered)]
        self._image_fields = {tool.name: _image_fields(tool) for tool in self.offered}

    def _choose(self, names: list[str] | None) -> list[Tool[Any, Any]]:
        registry = self.toolbox.registry
        if names is None:  # every tool that can run here and needs no human's approval per call
            return [tool for tool in registry.tools() if not tool.policy.requires_approval and _ready(tool)]
        chosen = []
        for name in dict.fromkeys(names):
            if name == results.UPLOAD_TOOL:
                continue  # always offered
            tool = registry.get(name)  # UnknownTool names the tools there are
            if tool.policy.requires_approval:
                raise ConfigurationError(f"tool {name} requires a human's approval per call, which MCP clients are "
                                         "not asked for here; use it through medagent's own agent instead")
            chosen.append(tool)
        return chosen

    def server(self) -> Server[Any]:
        return Server("medagent", version=__version__, title="medagent experts", instructions=INSTRUCTIONS,
                      on_list_tools=self.list_tools, on_call_tool=self.call_tool,
                      on_list_resources=self.list_resources, on_list_resource_templates=self.list_templates,
                      on_read_resource=self.read_resource)

    def _scope(self, ctx: ServerRequestContext[Any, Any]) -> str:
        """Whose images a request may reach: the stdio process's client, or the HTTP session the SDK routed it by
        (``Mcp-Session-Id``, checked by the session manager before the request reaches a handler)."""
        if self.transport == "stdio":
            return "stdio"
        headers = getattr(ctx.request, "headers", None)
        session = headers.get(_SESSION_HEADER) if headers is not None else None
        if not session:
            raise SessionNotFound("images are kept per MCP session; connect with a protocol version that has "
                                  "sessions (2025-06-18 or 2025-11-25)")
        return f"http:{session}"

    async def list_tools(self, ctx: ServerRequestContext[Any, Any],
                         params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=self._listing)

    async def call_tool(self, ctx: ServerRequestContext[Any, Any],
                        params: types.CallToolRequestParams) -> types.CallToolResult:
        name, arguments = params.name, dict(params.arguments or {})
        try:
            scope = self._scope(ctx)
            async with self.gate.slot():
                if name == results.UPLOAD_TOOL:
                    return await self._upload(scope, arguments)
                return await self._call(scope, name, arguments)
        except Exception as exc:  # noqa: BLE001 - every failure is a tool error; unexpected ones by type only
            known = name in self._image_fields or name == results.UPLOAD_TOOL
            return results.failure(exc, name if known else "unknown")

    async def _upload(self, scope: str, arguments: dict[str, Any]) -> types.CallToolResult:
        data, modality = results.decode_upload(arguments, self.limits.max_upload_bytes)
        artifact = await asyncio.to_thread(self.toolbox.attach_bytes, data, modality)
        self.scopes.add_image(scope, artifact.id)
        summary = self.toolbox.image_summaries([artifact.id])[artifact.id]
        return results.success(results.UploadResult(image_id=artifact.id, summary=summary).model_dump(mode="json"))

    async def _call(self, scope: str, name: str, arguments: dict[str, Any]) -> types.CallToolResult:
        if name not in self._image_fields:
            raise UnknownTool(f"no tool named `{name[:64]}` here; see tools/list")
        if len(json.dumps(arguments)) > MAX_ARGUMENT_CHARS:
            raise ArgumentsTooLarge(f"the arguments are over {MAX_ARGUMENT_CHARS} characters", tool=name)
        images = self.scopes.images(scope)
        for field in self._image_fields[name]:
            _check_image_id(field, arguments.get(field), images, name)
        value = await self.toolbox.registry.call(name, arguments, self.toolbox.context(images))
        output = value.model_dump(mode="json")
        self.scopes.add_artifacts(scope, referenced_ids(output))
        return await asyncio.to_thread(results.success, output, self.toolbox.store,
                                       max_images=self.limits.overlay_images,
                                       max_image_bytes=self.limits.max_image_bytes)

    async def list_resources(self, ctx: ServerRequestContext[Any, Any],
                             params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=[
            types.Resource(uri=results.CARD_URI.format(name=tool.name), name=f"{tool.name} model card",
                           description=tool.card.summary, mime_type="application/json") for tool in self.offered])

    async def list_templates(self, ctx: ServerRequestContext[Any, Any],
                             params: types.PaginatedRequestParams | None) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=[types.ResourceTemplate(
            uri_template=results.ARTIFACT_URI, name="artifact",
            description="a mask, overlay or image this MCP session uploaded or one of its tool calls returned")])

    async def read_resource(self, ctx: ServerRequestContext[Any, Any],
                            params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        uri = str(params.uri)
        card_prefix, artifact_prefix = results.CARD_URI.split("{")[0], results.ARTIFACT_URI.split("{")[0]
        if uri.startswith(card_prefix):
            tool = next((tool for tool in self.offered if tool.name == uri.removeprefix(card_prefix)), None)
            if tool is not None:
                return types.ReadResourceResult(contents=[types.TextResourceContents(
                    uri=uri, mime_type="application/json", text=json.dumps(tool.card_dict()))])
        elif uri.startswith(artifact_prefix):
            return await self._read_artifact(ctx, uri, uri.removeprefix(artifact_prefix))
        raise MCPError(code=RESOURCE_NOT_FOUND, message="no such resource")

    async def _read_artifact(self, ctx: ServerRequestContext[Any, Any], uri: str,
                             artifact_id: str) -> types.ReadResourceResult:
        try:
            if not _ARTIFACT_ID.fullmatch(artifact_id) or not self.scopes.reaches(self._scope(ctx), artifact_id):
                raise UnknownArtifact("no such artifact in this MCP session")
            artifact = self.toolbox.store.get(artifact_id)
            if artifact.size_bytes > self.limits.max_resource_bytes:
                raise UnknownArtifact(f"the artifact is over {self.limits.max_resource_bytes} bytes, more than "
                                      "this server sends")
            data = await asyncio.to_thread(self.toolbox.store.read_bytes, artifact_id)
        except MedagentError as exc:
            raise MCPError(code=RESOURCE_NOT_FOUND, message=f"[{exc.code}] {exc.message}") from None
        return types.ReadResourceResult(contents=[types.BlobResourceContents(
            uri=uri, mime_type=artifact.media_type, blob=base64.b64encode(data).decode("ascii"))])


def _ready(tool: Tool[Any, Any]) -> bool:
    try:
        return bool(tool.ready())
    except Exception:  # noqa: BLE001 - a tool that cannot say whether it is ready is not offered by default
        return False


def _image_fields(tool: Tool[Any, Any]) -> tuple[str, ...]:
    """The argument names (as sent) that hold an image id."""
    properties = tool.input_model.model_json_schema().get("properties", {})
    return tuple(name for name, schema in properties.items() if ARTIFACT_ID_MARKER in schema)


def _check_image_id(field: str, value: Any, images: list[str], tool: str) -> None:
    """A path where an image id belongs is refused as such; an id this session did not upload is unknown. Other
    values (missing, of the wrong type) are left to the tool's own validation, which says what is wrong."""
    if not isinstance(value, str) or value in images:
        return
    if not _ARTIFACT_ID.fullmatch(value) and any(mark in value for mark in ("/", "\\", ":", "~", "..")):
        raise InvalidToolArguments(f"`{field}` takes an image id from upload_image; paths are never read",
                                   tool=tool)
    raise UnknownArtifact(f"`{field}` names no image uploaded in this MCP session; upload it with upload_image")
