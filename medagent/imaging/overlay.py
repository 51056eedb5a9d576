"""Overlay PNGs: boxes drawn on the display image, with a legend."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

_COLOURS = [(255, 64, 64), (64, 160, 255), (64, 220, 96), (255, 200, 0), (200, 96, 255)]


def boxes_overlay_png(image: np.ndarray, boxes: Sequence[tuple[str, tuple[int, int, int, int]]]) -> bytes:
    """``image``: float [0, 1] 2D. ``boxes``: (label, (x0, y0, x1, y1)) in pixel coordinates."""
    from PIL import Image, ImageDraw

    grey = (np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    canvas = Image.fromarray(grey, mode="L").convert("RGB")
    draw = ImageDraw.Draw(canvas)
    line = max(2, round(max(canvas.size) / 256))
    for index, (label, (x0, y0, x1, y1)) in enumerate(boxes):
        colour = _COLOURS[index % len(_COLOURS)]
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=colour, width=line)
        legend_y = 4 + index * 14
        draw.rectangle([4, legend_y, 14, legend_y + 10], fill=colour)
        draw.text((18, legend_y - 1), label, fill=colour)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()
