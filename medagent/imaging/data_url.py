"""The de-identified display image as a PNG data URL: what image-reading models (a VLM planner, a specialist VLM)
are sent. One encoder for all of them, and one rule for images whose pixels may show identifying text."""

from __future__ import annotations

import base64
import io

import numpy as np

from medagent.imaging.record import ImageRecord


def display_data_url(record: ImageRecord, max_side: int = 512) -> str:
    """The record's 2D display view (middle slice of a volume) as 8-bit grey PNG, no side over ``max_side``."""
    from PIL import Image

    picture = Image.fromarray((np.clip(record.as_2d(), 0, 1) * 255).astype(np.uint8), mode="L")
    picture.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def shows_burned_in_text(record: ImageRecord) -> bool:
    """Whether the DICOM says BurnedInAnnotation=YES: such pixels are withheld from models unless the settings'
    ``send_burned_in_images`` allows them."""
    return record.deid is not None and record.deid.burned_in_annotation is True
