"""Overlay PNGs of segmentation masks: each label tinted in its own colour, with a legend."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np

# 16 well-separated colours (Glasbey-like), so 14 anatomical structures never share one
MASK_COLOURS: list[tuple[int, int, int]] = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195),
]


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # scalable when Pillow has FreeType
    except (ImportError, OSError, TypeError):
        return ImageFont.load_default()


def masks_overlay_png(image_2d: np.ndarray, masks: Mapping[str, np.ndarray], alpha: float = 0.4,
                      max_side: int = 1024) -> bytes:
    """``image_2d``: float [0, 1]. ``masks``: label -> boolean array of the image's shape.

    Masks are blended in order (later ones on top, overlaps mix) and outlined; the legend lists every
    label with its colour, marking empty masks "not found". Images larger than ``max_side`` are shrunk
    for display only.
    """
    import cv2
    from PIL import Image, ImageDraw

    if image_2d.ndim != 2:
        raise ValueError("masks_overlay_png expects a 2D image")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError("alpha must lie in [0, 1]")
    height, width = image_2d.shape
    scale = min(1.0, max_side / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    grey = np.clip(np.nan_to_num(image_2d.astype(np.float32)), 0.0, 1.0)
    if scale < 1.0:
        grey = np.asarray(cv2.resize(grey, size, interpolation=cv2.INTER_AREA), dtype=np.float32)
    canvas = np.repeat(grey[:, :, None] * 255.0, 3, axis=2)
    outline_px = max(1, round(max(size) / 512))
    outlines = []
    for index, (label, mask) in enumerate(masks.items()):
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (height, width):
            raise ValueError(f"mask {label!r} does not match the image shape")
        if scale < 1.0:
            mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
        colour = MASK_COLOURS[index % len(MASK_COLOURS)]
        canvas[mask] = (1.0 - alpha) * canvas[mask] + alpha * np.array(colour, dtype=np.float32)
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        outlines.append((contours, colour))
    rgb = np.ascontiguousarray(np.clip(canvas, 0, 255).astype(np.uint8))
    for contours, colour in outlines:  # outlines last, so a later tint never hides an earlier border
        cv2.drawContours(rgb, contours, -1, colour, outline_px)
    picture = Image.fromarray(rgb)
    _draw_legend(ImageDraw.Draw(picture), masks, max(size))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def _draw_legend(draw: Any, masks: Mapping[str, np.ndarray], side: int) -> None:
    text_px = max(10, side // 48)
    font = _font(text_px)
    line = text_px + 4
    entries = [(label, bool(np.any(mask))) for label, mask in masks.items()]
    texts = [label if present else f"{label} (not found)" for label, present in entries]
    widest = max((draw.textlength(text, font=font) for text in texts), default=0)
    # a dark panel behind the legend keeps it readable over bright anatomy
    draw.rectangle([2, 2, 12 + text_px + widest, 6 + line * len(texts)], fill=(0, 0, 0))
    for index, text in enumerate(texts):
        top = 4 + index * line
        colour = MASK_COLOURS[index % len(MASK_COLOURS)]
        draw.rectangle([5, top + 2, 5 + text_px - 4, top + text_px - 2], fill=colour)
        draw.text((8 + text_px, top), text, fill=colour if entries[index][1] else (160, 160, 160), font=font)
