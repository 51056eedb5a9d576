"""MCP shapes of medagent's tools: listings with the planner's input schemas and the typed output schemas, the
``upload_image`` tool, results as structured content (plus the overlay PNGs a call drew, bounded), and typed
medagent errors as tool errors (code and message; never a traceback)."""

from __future__ import annotations

import base64
import binascii
import json
import logging
from typing import Any

import mcp_types as types
from pydantic import BaseModel, Field

from medagent.errors import FileTooLarge, InvalidToolArguments, UnknownArtifact
from medagent.imaging import Modality
from medagent.tools.artifacts import ArtifactKind, ArtifactStore, referenced_ids
from medagent.tools.invoke import ErrorRecord
from medagent.tools.spec import Tool

UPLOAD_TOOL = "upload_image"
CARD_URI = "medagent://cards/{name}"
ARTIFACT_URI = "medagent://artifacts/{artifact_id}"
IMAGE_ID_HINT = " Images: pass the image_id that upload_image returned in this session (never a path)."

MODALITIES = tuple(m.value for m in Modality if m is not Modality.UNKNOWN)

logger = logging.getLogger("medagent.mcp")


class UploadResult(BaseModel):
    image_id: str = Field(description="what the expert tools take as their image id argument, in this session")
    summary: dict[str, Any] = Field(description="modality, format, shape and the like; no patient data")


def base64_length(size: int) -> int:
    """Characters of ``size`` bytes in padded base64."""
    return 4 * ((size + 2) // 3)


def upload_listing(max_bytes: int) -> types.Tool:
    schema = {
        "type": "object",
        "properties": {
            "content_base64": {"type": "string", "maxLength": base64_length(max_bytes),
                               "description": f"the image file's bytes (DICOM, PNG, JPEG or NIfTI), base64; at "
                                              f"most {max_bytes} bytes before encoding"},
            "modality": {"anyOf": [{"type": "string", "enum": list(MODALITIES)}, {"type": "null"}],
                         "description": "the modality, when the file does not say (PNG, JPEG, NIfTI)"},
        },
        "required": ["content_base64"],
        "additionalProperties": False,
    }
    return types.Tool(
        name=UPLOAD_TOOL, title="Upload an image",
        description="Attach an image to this MCP session: it is checked (size, format, pixel count), de-identified "
                    "and stored; returns the image_id the expert tools take. Only this session can use the id.",
        input_schema=schema, output_schema=output_schema(UploadResult),
        annotations=types.ToolAnnotations(title="Upload an image", read_only_hint=False, destructive_hint=False,
                                          idempotent_hint=True, open_world_hint=False))


def output_schema(model: type[BaseModel]) -> dict[str, Any] | None:
    """The JSON schema of what a tool returns (as serialised), when it is an object schema."""
    schema = model.model_json_schema(mode="serialization")
    return schema if schema.get("type") == "object" else None


def tool_listing(tool: Tool[Any, Any], parameters: dict[str, Any]) -> types.Tool:
    """An expert tool as MCP lists it: ``parameters`` is the schema the planner is offered; the card is in the
    description and, whole, at the resource ``medagent://cards/<name>``."""
    description = tool.description + IMAGE_ID_HINT + f" Model card: {CARD_URI.format(name=tool.name)}."
    return types.Tool(
        name=tool.name, title=tool.name.replace("_", " ").capitalize(), description=description,
        input_schema=parameters, output_schema=output_schema(tool.output_model),
        annotations=types.ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True,
                                          open_world_hint=False),
        meta={"medagent/model_card": tool.card_dict()})


def decode_upload(arguments: dict[str, Any], max_bytes: int) -> tuple[bytes, str | None]:
    """The bytes and declared modality of an ``upload_image`` call, checked before anything is decoded."""
    unexpected = sorted(set(arguments) - {"content_base64", "modality"})
    if unexpected:
        raise InvalidToolArguments("upload_image takes the image's bytes as base64 in `content_base64` (and an "
                                   "optional `modality`); no other argument, and never a path", tool=UPLOAD_TOOL)
    content, modality = arguments.get("content_base64"), arguments.get("modality")
    if not isinstance(content, str) or not content:
        raise InvalidToolArguments("`content_base64` must be a non-empty base64 string", tool=UPLOAD_TOOL)
    if modality is not None and modality not in MODALITIES:
        raise InvalidToolArguments("`modality` must be a DICOM modality code such as CR, DX, CT or MR",
                                   tool=UPLOAD_TOOL)
    if len(content) > base64_length(max_bytes):
        size = len(content) * 3 // 4
        raise FileTooLarge(f"the image is about {size} bytes; the limit is {max_bytes}", size=size, limit=max_bytes)
    try:
        data = base64.b64decode(content, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidToolArguments("`content_base64` is not valid base64", tool=UPLOAD_TOOL) from None
    if len(data) > max_bytes:
        raise FileTooLarge(f"the image is {len(data)} bytes; the limit is {max_bytes}", size=len(data),
                           limit=max_bytes)
    return data, modality


def success(output: dict[str, Any], store: ArtifactStore | None = None, *, max_images: int = 0,
            max_image_bytes: int = 0) -> types.CallToolResult:
    """The typed output as structured content and as JSON text; with ``store``, the overlay PNGs it names (at
    most ``max_images``, each at most ``max_image_bytes``) as image content."""
    content: list[types.ContentBlock] = [types.TextContent(text=json.dumps(output))]
    if store is None or not max_images:
        return types.CallToolResult(content=content, structured_content=output)
    for artifact_id in referenced_ids(output):
        try:
            artifact = store.get(artifact_id)
        except UnknownArtifact:  # an id-shaped string that names nothing stored
            continue
        if artifact.kind is ArtifactKind.OVERLAY and artifact.media_type == "image/png" \
                and artifact.size_bytes <= max_image_bytes:
            data = base64.b64encode(store.read_bytes(artifact_id)).decode("ascii")
            content.append(types.ImageContent(data=data, mime_type="image/png"))
            if len(content) > max_images:
                break
    return types.CallToolResult(content=content, structured_content=output)


def failure(error: BaseException, tool: str) -> types.CallToolResult:
    """A tool error: a typed medagent error by its code and message, anything else by its type's name only."""
    record = ErrorRecord.from_exception(error)
    if record.code == "unexpected_error":
        logger.error("tool call failed unexpectedly", extra={"fields": {"tool": tool, "error": record.message}})
    payload = record.model_dump(mode="json")
    return types.CallToolResult(content=[types.TextContent(text=f"[{record.code}] {record.message}")],
                                structured_content={"error": payload}, is_error=True)
