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
    ran_on: str | None = Field(default=None, description="where it ran: the expert service's host:port "
                               "(medagent expert serve); None in this process")


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

    @classmethod
    def from_pixels(cls, x0: int, y0: int, x1: int, y1: int, spacing_mm: tuple[float, ...] | None) -> BoundingBox:
        """A box in input pixels, with millimetre sizes only when the (row, col) pixel spacing is known."""
        row_mm, col_mm = spacing_mm if spacing_mm and len(spacing_mm) == 2 else (None, None)
        return cls(x0=int(x0), y0=int(y0), x1=int(x1), y1=int(y1),
                   width_mm=None if col_mm is None else round((x1 - x0) * col_mm, 1),
                   height_mm=None if row_mm is None else round((y1 - y0) * row_mm, 1))
