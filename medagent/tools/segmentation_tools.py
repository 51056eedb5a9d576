"""Tools ``segment_chest_anatomy`` and ``segment_lung_fields``: measurements, a mask NPZ and an overlay PNG."""

from __future__ import annotations

import asyncio
import io
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from medagent.errors import InvalidToolArguments
from medagent.experts.cxr_anatomy import CxrAnatomySegmenter
from medagent.experts.lung_fields import LungFieldSegmenter
from medagent.experts.segmentation import Segmentation
from medagent.imaging.mask_overlay import masks_overlay_png
from medagent.imaging.record import ImageRecord
from medagent.runtime.expert import Expert
from medagent.tools.artifacts import ArtifactKind, ArtifactStore
from medagent.tools.spec import ImageId, Tool, ToolContext, ToolPolicy

MASK_MEDIA_TYPE = "application/x-npz"


class SegmentationInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_id: ImageId
    structures: list[str] | None = Field(
        default=None, description="only these structures (names as the tool lists them); omit for all"
    )


def requested_structures(requested: list[str] | None, valid: list[str], tool: str) -> list[str]:
    """The structures to report, in the model's order; a planner mistake raises a retry naming the valid ones."""
    if requested is None:
        return list(valid)
    if not requested:
        raise InvalidToolArguments("`structures` is empty; omit it to get every structure", tool=tool)
    unknown = [name for name in requested if name not in valid]
    if unknown:
        raise InvalidToolArguments(
            f"unknown structure(s) {', '.join(repr(u) for u in unknown[:5])}; valid: {', '.join(valid)}", tool=tool
        )
    wanted = set(requested)
    return [name for name in valid if name in wanted]


def masks_npz(masks: dict[str, np.ndarray]) -> bytes:
    """Boolean masks keyed by label, compressed (``np.load(...)[label]`` reads one back)."""
    buffer = io.BytesIO()
    # typed Any: numpy's stub reads ** keys as possibly its allow_pickle flag (no expert names a mask that)
    arrays: dict[str, Any] = {label: np.asarray(mask, dtype=bool) for label, mask in masks.items()}
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def _encode(result: Segmentation, image: ImageRecord) -> tuple[bytes, bytes]:
    masks = result.masks
    return masks_npz(masks), masks_overlay_png(image.as_2d(), masks)


SegmentationT = TypeVar("SegmentationT", bound=Segmentation)


async def store_masks(result: SegmentationT, image: ImageRecord, image_id: str, artifacts: ArtifactStore,
                      name: str) -> SegmentationT:
    """``result`` with its masks stored as an NPZ and an overlay PNG (``mask_id``, ``overlay_id`` set)."""
    # compressing masks and encoding the PNG take long enough to stall the event loop
    npz, png = await asyncio.to_thread(_encode, result, image)
    provenance = result.provenance.model_dump()
    shared: dict[str, Any] = {"source": image_id, "labels": result.labels(),
                              "shape": [result.image_height, result.image_width]}
    mask = artifacts.put_bytes(npz, ArtifactKind.MASK, MASK_MEDIA_TYPE, ".npz",
                               metadata={**shared, "format": "npz of boolean arrays keyed by label"},
                               provenance=provenance)
    overlay = artifacts.put_png(png, ArtifactKind.OVERLAY, metadata={**shared, "shows": f"{name} masks"},
                                provenance=provenance)
    return result.model_copy(update={"mask_id": mask.id, "overlay_id": overlay.id})


def _segmentation_tool(name: str, expert: Expert[ImageRecord, Segmentation], valid: list[str],
                       policy: ToolPolicy) -> Tool[SegmentationInput, Segmentation]:
    async def run(arguments: SegmentationInput, context: ToolContext) -> Segmentation:
        wanted = requested_structures(arguments.structures, valid, name)
        image = context.load_image(arguments.image_id)
        expert.card.check_image(image, expert.name)  # a precondition failure before any weights are needed
        result = (await expert(image)).restricted_to(wanted)
        return await store_masks(result, image, arguments.image_id, context.artifacts, name)

    return Tool(name=name, card=expert.card, input_model=SegmentationInput, output_model=Segmentation, run=run,
                policy=policy, ready=expert.ready)


def segmentation_tools(anatomy: CxrAnatomySegmenter, lung_fields: LungFieldSegmenter) -> list[Tool[Any, Any]]:
    """Both segmentation tools; register them with ``ToolRegistry.register``."""
    return [
        # CPU inference of the 68 M-parameter PSPNet takes seconds per image, plus the first load
        _segmentation_tool("segment_chest_anatomy", anatomy, anatomy.structures(),
                           ToolPolicy(timeout_s=180, max_concurrency=8)),
        _segmentation_tool("segment_lung_fields", lung_fields, list(lung_fields.card.valid_arguments["structures"]),
                           ToolPolicy(timeout_s=30, max_concurrency=2)),
    ]
