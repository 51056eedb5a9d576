"""Model cards: what an expert does, on what input, and how well."""

from __future__ import annotations

from pydantic import BaseModel, Field

from medagent.errors import PreconditionFailed
from medagent.imaging.record import ImageRecord, Modality


class ModelCard(BaseModel):
    """What the tool does, on what input, and how well: read by people and by the planner."""

    summary: str
    modalities: list[Modality] | None = Field(default=None, description="accepted modalities; None accepts any")
    body_parts: list[str] | None = None
    dimensionality: list[int] = Field(default_factory=lambda: [2])
    valid_arguments: dict[str, list[str]] = Field(default_factory=dict)
    performance: str | None = Field(default=None, description="known accuracy, with its source")
    limitations: list[str] = Field(default_factory=list)
    references: list[str] = Field(default_factory=list)

    def check_image(self, image: ImageRecord, tool_name: str) -> None:
        """Raise :class:`PreconditionFailed` when ``image`` is outside what this tool accepts."""
        if self.modalities is not None and image.modality not in self.modalities:
            accepted = ", ".join(m.value for m in self.modalities)
            hint = (
                " (the modality is unknown: declare it when attaching a PNG/JPEG/NIfTI image)"
                if image.modality is Modality.UNKNOWN
                else ""
            )
            raise PreconditionFailed(
                f"{tool_name} accepts {accepted} images; this image is {image.modality.value}{hint}",
                tool=tool_name,
                modality=image.modality.value,
            )
        if image.ndim not in self.dimensionality and not (image.ndim == 3 and 2 in self.dimensionality and image.pixels.shape[0] == 1):
            raise PreconditionFailed(
                f"{tool_name} accepts {'/'.join(map(str, self.dimensionality))}D images; this image is {image.ndim}D",
                tool=tool_name,
            )
        body_part = (image.metadata.body_part or "").upper()
        if self.body_parts and body_part and body_part not in {b.upper() for b in self.body_parts}:
            raise PreconditionFailed(
                f"{tool_name} accepts {', '.join(self.body_parts)}; this image is labelled {body_part}", tool=tool_name
            )
