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
    source_formats: list[str] | None = Field(default=None, description="accepted file formats; None accepts any")
    valid_arguments: dict[str, list[str]] = Field(default_factory=dict)
    images_per_call: int = Field(default=1, ge=1, description="images one call needs (2 for prior vs current)")
    performance: str | None = Field(default=None, description="known accuracy, with its source")
    limitations: list[str] = Field(default_factory=list)
    references: list[str] = Field(default_factory=list)

    def mismatch(self, modality: Modality, ndim: int, source_format: str, body_part: str | None,
                 tool_name: str) -> str | None:
        """Why an image with these properties is outside what this tool accepts (None when it fits)."""
        if self.modalities is not None and modality not in self.modalities:
            accepted = ", ".join(m.value for m in self.modalities)
            hint = (" (the modality is unknown: declare it when attaching a PNG/JPEG/NIfTI image)"
                    if modality is Modality.UNKNOWN else "")
            return f"{tool_name} accepts {accepted} images; this image is {modality.value}{hint}"
        if self.source_formats is not None and source_format not in self.source_formats:
            return f"{tool_name} reads {'/'.join(self.source_formats)} files; this image came from a {source_format} file"
        if ndim not in self.dimensionality:
            return f"{tool_name} accepts {'/'.join(map(str, self.dimensionality))}D images; this image is {ndim}D"
        part = (body_part or "").upper()
        if self.body_parts and part and part not in {b.upper() for b in self.body_parts}:
            return f"{tool_name} accepts {', '.join(self.body_parts)}; this image is labelled {part}"
        return None

    def accepts_summary(self, summary: dict[str, object]) -> bool:
        """Whether an attached image (its planner-safe summary) suits this tool: used to offer only tools that fit."""
        modality = Modality.parse(str(summary.get("modality") or ""))
        shape = summary.get("shape") or []
        ndim = len(shape) if isinstance(shape, list) else 2
        body_part = summary.get("body_part")
        return self.mismatch(modality, ndim, str(summary.get("format", "")),
                             str(body_part) if body_part else None, "tool") is None

    def check_image(self, image: ImageRecord, tool_name: str) -> None:
        """Raise :class:`PreconditionFailed` when ``image`` is outside what this tool accepts."""
        reason = self.mismatch(image.modality, image.ndim, image.source_format, image.metadata.body_part, tool_name)
        if reason is not None:
            raise PreconditionFailed(reason, tool=tool_name, modality=image.modality.value)
