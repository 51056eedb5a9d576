"""PNG and JPEG loading through Pillow, with the pixel cap checked before decoding."""

from __future__ import annotations

import io
import warnings

import numpy as np

from medagent.errors import CorruptFile, ImageTooLarge, TruncatedFile
from medagent.imaging.limits import ImageLimits, check_pixel_count
from medagent.imaging.record import ImageRecord, Modality, SafeMetadata


def load_raster(data: bytes, source_format: str, sha256: str, limits: ImageLimits, modality: Modality) -> ImageRecord:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow checks its own pixel limit in open(): our cap below is the one that counts
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge("image exceeds the decoder's hard pixel limit") from exc
    except UnidentifiedImageError as exc:
        raise CorruptFile(f"{source_format} header could not be parsed") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise TruncatedFile(f"{source_format} header ends early or is corrupt") from exc
    bands = len(image.getbands())
    check_pixel_count((image.width, image.height, bands), limits)
    try:
        with warnings.catch_warnings():
            # our own cap was checked above; Pillow's fixed default must not override it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge("image exceeds the decoder's hard pixel limit") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise TruncatedFile(f"{source_format} data ends early or is corrupt") from exc

    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F", "L"):
        pixels = np.asarray(image, dtype=np.float32)
    else:
        pixels = np.asarray(image.convert("L"), dtype=np.float32)  # luminance for RGB/palette/alpha
    bits = 16 if image.mode.startswith("I;16") else 8 if image.mode != "F" else 32
    metadata = SafeMetadata(modality=modality, rows=image.height, columns=image.width, bits_stored=bits)
    # A fixed full-range window keeps 8-bit radiographs as stored (no per-image min-max stretch).
    window = ((2**bits - 1) / 2.0, float(2**bits - 1)) if image.mode in ("L", "I;16", "I;16B", "I;16L", "RGB", "RGBA", "P", "LA") else None
    return ImageRecord(
        pixels=pixels,
        modality=modality,
        source_format=source_format,
        source_sha256=sha256,
        window=window,
        metadata=metadata,
        modality_declared_by_user=modality is not Modality.UNKNOWN,
    )
