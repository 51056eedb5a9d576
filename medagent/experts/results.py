"""Typed expert results. Every result carries provenance."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Provenance(BaseModel):
    expert: str
    model_id: str
    weights_sha256: str | None = Field(default=None, description="sha256 of the weight file; None when weightless")
    device: str = "cpu"
    untrained: bool = Field(default=False, description="True when random (test-only) weights produced this result")
    library_versions: dict[str, str] = Field(default_factory=dict)


class ExpertResult(BaseModel):
    provenance: Provenance

    def summary_text(self) -> str:
        """One plain sentence of the result, for planners and people (subclasses say what matters)."""
        return ""


class BoundingBox(BaseModel):
    """Pixel coordinates in the input image (x right, y down), half-open."""

    x0: int
    y0: int
    x1: int
    y1: int
    width_mm: float | None = None
    height_mm: float | None = None
