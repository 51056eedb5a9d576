"""Heatmap overlay PNGs: a colour-mapped saliency map blended over the display image, boxes and a caption."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

SALIENCY_CAPTION = "saliency, not detection"
_BOX_COLOUR = (255, 255, 255)


def heatmap_overlay_png(
    image_2d: np.ndarray,
    heatmap: np.ndarray,
    boxes: Sequence[tuple[str, tuple[int, int, int, int]]] = (),
    *,
    caption: str = SALIENCY_CAPTION,
    max_alpha: float = 0.6,
) -> bytes:
    """``image_2d`` and ``heatmap``: float [0, 1], same shape. ``boxes``: (label, (x0, y0, x1, y1)) in pixels.

    The colour is blended in proportion to the heatmap, so regions without saliency keep the plain radiograph.
    """
    import cv2
    from PIL import Image, ImageDraw

    if image_2d.shape != heatmap.shape or image_2d.ndim != 2:
        raise ValueError(f"image {image_2d.shape} and heatmap {heatmap.shape} must be the same 2D shape")
    grey = np.clip(np.nan_to_num(image_2d), 0.0, 1.0).astype(np.float32)
    heat = np.clip(np.nan_to_num(heatmap), 0.0, 1.0).astype(np.float32)
    colour = cv2.applyColorMap((heat * 255.0).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1].astype(np.float32)
    alpha = (heat * max_alpha)[:, :, None]
    blended = (1.0 - alpha) * (grey[:, :, None] * 255.0) + alpha * colour
    canvas = Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    line = max(2, round(max(canvas.size) / 256))
    for index, (label, (x0, y0, x1, y1)) in enumerate(boxes):
        draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=_BOX_COLOUR, width=line)
        draw.text((x0 + line + 2, y0 + line + 1), f"{index + 1} {label}", fill=_BOX_COLOUR)
    if caption:
        # a dark band keeps the caption legible on any image
        height = canvas.size[1]
        draw.rectangle([0, height - 16, canvas.size[0], height], fill=(0, 0, 0))
        draw.text((4, height - 14), caption, fill=(255, 255, 255))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()
