"""The wire contract between an expert service (``medagent expert serve``) and its client: versioned JSON
models, the routes, and the bounds both sides enforce. No web framework is imported here.

    GET  /v1/health               liveness, protocol, medagent and library versions
    GET  /v1/ready                each tool's readiness (weights present), without loading a model
    GET  /v1/tools                the tools: card, policy, input and output JSON schemas
    POST /v1/tools/{name}/batch   typed predictions, one result or typed error per item
    GET  /v1/artifacts/{id}       a mask, overlay or heatmap a call wrote (its id listed in that call's result),
                                  kept for the service's artifact lifetime

``PROTOCOL_VERSION`` changes whenever a change would make an older peer misread a message; both sides refuse
another version with a typed error instead of guessing.
"""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from medagent.errors import ErrorFamily
from medagent.imaging.record import DeidReport, Modality, SafeMetadata

PROTOCOL_VERSION = 2
PREFIX = "/v1"
PROTOCOL_HEADER = "x-medagent-protocol"  # sent with every request, checked before its body is read
TOOL_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"

MAX_ITEMS = 64  # calls per batch request: above any micro-batch, bounds a hostile client
MAX_IMAGES_PER_ITEM = 4  # images one call reads (prior vs current is 2)
MAX_IMAGE_BYTES = 96 * 1024**2  # one decoded pixel array (a 4096 x 4096 float32 radiograph is 64 MiB)
MAX_REQUEST_BYTES = 256 * 1024**2  # one request body, base64 included
MAX_RESPONSE_BYTES = 16 * 1024**2  # one response body: typed results, never pixels
MAX_DESCRIPTION_BYTES = 4 * 1024**2  # /v1/tools: schemas of up to 256 tools
MAX_MESSAGE = 1000  # characters of an error message that crosses the wire
MAX_ARTIFACTS_PER_ITEM = 128  # masks and overlays one call may write (a volume: one overlay per label)
MAX_ARTIFACT_BYTES = 64 * 1024**2  # one mask or overlay, before base64
MAX_ARTIFACT_METADATA_BYTES = 64 * 1024  # its metadata and provenance, as JSON
# what an artifact from a service may be, and the file suffix this side stores it under (never the service's word)
ARTIFACT_MEDIA_TYPES = {"image/png": ".png", "application/x-npz": ".npz", "application/x-npy": ".npy",
                        "application/gzip": ".nii.gz", "application/json": ".json", "text/plain": ".txt"}

_ImageKey = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
ArtifactKey = Annotated[str, Field(pattern=r"^[a-z]{2,8}-[0-9a-f]{6,64}$")]
LIBRARIES = ("numpy", "pydantic", "pydantic-core", "fastapi", "uvicorn", "httpx", "torch", "transformers")


class _Wire(BaseModel):
    """A message read from the other side: unknown keys refused (the protocol version says what exists)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ImagePayload(_Wire):
    """A de-identified image: the pixel array (``.npy`` bytes, base64; integer-valued pixels travel in the
    smallest integer type that holds them exactly) with what experts route and measure on. Never a path, never the
    source file's hash; the service hashes the pixels it received."""

    npy_b64: str = Field(max_length=(MAX_IMAGE_BYTES * 4) // 3 + 1024)
    modality: Modality
    source_format: Literal["png", "jpeg", "dicom", "nifti", "npy"]
    spacing_mm: tuple[float, ...] | None = Field(default=None, max_length=4)
    orientation: str | None = Field(default=None, max_length=32)
    affine: list[Annotated[list[float], Field(max_length=4)]] | None = Field(default=None, max_length=4)
    window: tuple[float, float] | None = None
    metadata: SafeMetadata = Field(default_factory=SafeMetadata)
    deid: DeidReport | None = None
    modality_declared_by_user: bool = False
    modality_detected: bool = False


class CallItem(_Wire):
    """One call: the tool's arguments as the planner sent them (validated again on the service) and the images
    its image-id arguments name."""

    arguments: dict[str, Any]
    images: dict[_ImageKey, ImagePayload] = Field(default_factory=dict, max_length=MAX_IMAGES_PER_ITEM)


class BatchRequest(_Wire):
    protocol: int
    items: list[CallItem] = Field(min_length=1, max_length=MAX_ITEMS)


class WireError(_Wire):
    """A typed error (:mod:`medagent.errors`): its stable code and family, a bounded message."""

    code: str = Field(max_length=64, pattern=r"^[a-z][a-z0-9_]{0,63}$")
    family: ErrorFamily
    message: str = Field(max_length=MAX_MESSAGE)


class ItemResult(_Wire):
    ok: bool
    output: dict[str, Any] | None = None
    error: WireError | None = None
    # ids in ``output`` of what the call wrote (masks, overlays): fetched from /v1/artifacts/{id}
    artifacts: list[ArtifactKey] = Field(default_factory=list, max_length=MAX_ARTIFACTS_PER_ITEM)


class ArtifactPayload(_Wire):
    """What a call wrote, as the service stored it: the bytes (base64) and the record that goes with them. Never
    an input image (those stay where they were attached) and never a path."""

    id: ArtifactKey
    kind: Literal["mask", "overlay", "heatmap", "report"]
    media_type: str = Field(max_length=64)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    content_b64: str = Field(max_length=(MAX_ARTIFACT_BYTES * 4) // 3 + 8)
    metadata: dict[str, Any] = Field(default_factory=dict)
    provenance: dict[str, Any] = Field(default_factory=dict)


class BatchResponse(_Wire):
    protocol: int
    items: list[ItemResult] = Field(max_length=MAX_ITEMS)


class ErrorResponse(_Wire):
    """What every non-2xx answer carries (a whole request refused: too large, wrong protocol, unknown tool)."""

    protocol: int
    error: WireError


class ToolDescription(_Wire):
    name: str = Field(pattern=TOOL_NAME_PATTERN)
    card: dict[str, Any]  # medagent.cards.ModelCard as JSON
    policy: dict[str, Any]  # medagent.tools.spec.ToolPolicy as JSON
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    # where the models are defined ("module:qualname"): a client may use its own class when the schemas agree
    input_class: str | None = Field(default=None, max_length=300)
    output_class: str | None = Field(default=None, max_length=300)
    ready: bool = True


class ServiceDescription(_Wire):
    protocol: int
    medagent: str
    library_versions: dict[str, str]
    max_items: int
    max_request_bytes: int
    tools: list[ToolDescription] = Field(max_length=256)


class Health(_Wire):
    status: Literal["ok"]
    protocol: int
    medagent: str
    library_versions: dict[str, str]
    tools: int


class Readiness(_Wire):
    protocol: int
    ready: bool
    tools: dict[str, bool]


def library_versions() -> dict[str, str]:
    """Python's and the installed versions of the libraries that shape results and the wire (absent: left out)."""
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found
