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


WATERMARK = "UNTRAINED"


def watermark_untrained(png: bytes) -> bytes:
    """``png`` with the word UNTRAINED drawn large across it and in a red band at the top: an overlay made
    from random test-only weights must not be mistaken for a reading, even cropped or out of context."""
    from PIL import Image, ImageDraw, ImageFont

    with Image.open(io.BytesIO(png)) as opened:
        canvas = opened.convert("RGB")
    width, height = canvas.size
    size = max(10, min(width // 6, height // 4))
    try:
        font = ImageFont.load_default(size=size)  # scalable when Pillow has FreeType
    except (ImportError, OSError, TypeError):
        font = ImageFont.load_default()
    layer = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    left, top, right, bottom = draw.textbbox((0, 0), WATERMARK, font=font)
    x, y = (width - (right - left)) / 2 - left, (height - (bottom - top)) / 2 - top
    draw.text((x, y), WATERMARK, font=font, fill=(255, 0, 0, 150), stroke_width=max(1, size // 20),
              stroke_fill=(255, 255, 255, 150))
    band = max(12, size // 2)
    draw.rectangle([0, 0, width, band], fill=(176, 0, 32, 255))
    draw.text((4, 1), f"{WATERMARK} test-only weights: not a reading", fill=(255, 255, 255, 255))
    merged = Image.alpha_composite(canvas.convert("RGBA"), layer).convert("RGB")
    buffer = io.BytesIO()
    merged.save(buffer, format="PNG")
    return buffer.getvalue()
