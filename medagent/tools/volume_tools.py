"""Tool ``segment_volume``: a MONAI bundle on a 3D CT/MR volume, storing a NIfTI mask and slice overlays."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from medagent.experts.volume_segmentation import NIFTI_MEDIA_TYPE, VolumeRequest, VolumeSegmentation, VolumeSegmenter
from medagent.tools.artifacts import ArtifactKind
from medagent.tools.spec import ImageId, Tool, ToolContext, ToolPolicy


class VolumeSegmentationInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_id: ImageId
    labels: list[str] | None = Field(
        default=None, description="only these structures (names as the bundle's labels); omit for all"
    )


def _segment_volume_tool(segmenter: VolumeSegmenter) -> Tool[VolumeSegmentationInput, VolumeSegmentation]:
    async def run(arguments: VolumeSegmentationInput, context: ToolContext) -> VolumeSegmentation:
        image = context.load_image(arguments.image_id)
        # planner mistakes and unsuitable images fail before any weights are loaded
        segmenter.check_image(image)
        segmenter.check_labels(arguments.labels)
        result = await segmenter(VolumeRequest(image=image, labels=arguments.labels))
        provenance = result.provenance.model_dump()
        shared: dict[str, Any] = {"source": arguments.image_id, "bundle": result.bundle, "shape": result.shape}
        mask = context.artifacts.put_bytes(
            result.mask_nifti_gz(), ArtifactKind.MASK, NIFTI_MEDIA_TYPE, ".nii.gz",
            metadata={**shared, "format": "NIfTI-1 label map (gzip) with the input's affine",
                      "label_values": {str(item.value): item.label for item in result.labels}},
            provenance=provenance,
        )
        overlay_ids = [
            context.artifacts.put_png(png, ArtifactKind.OVERLAY, provenance=provenance, metadata={
                **shared, "shows": f"{label}: slice {index} of axis {result.slice_axis}, its largest area"}).id
            for label, index, png in result.overlay_pngs()
        ]
        return result.model_copy(update={"mask_id": mask.id, "overlay_ids": overlay_ids})

    return Tool(name="segment_volume", card=segmenter.card, input_model=VolumeSegmentationInput,
                output_model=VolumeSegmentation, run=run,
                # sliding windows over a whole CT take minutes on a CPU; one volume at a time bounds memory
                policy=ToolPolicy(timeout_s=900, max_concurrency=1), ready=segmenter.ready)


def volume_tools(segmenter: VolumeSegmenter) -> list[Tool[Any, Any]]:
    """The 3D segmentation tool; register it with ``ToolRegistry.register``."""
    return [_segment_volume_tool(segmenter)]
