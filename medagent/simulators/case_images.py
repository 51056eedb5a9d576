"""Embedded case images (3MDBench Parquet exports) written to disk de-identified, owner-only.

A case table may carry its images as bytes: DICOM files with every identifier intact, photos with
EXIF and text chunks. Nothing of that reaches the disk as it came. DICOM goes through the
:class:`Deidentifier` (the same profile as every loaded file) and is written back; PNG and JPEG are
decoded under the image limits and re-encoded as PNG without any metadata. The file is named by a
keyed digest of the original bytes (no hash that would confirm which original it came from),
written once, 0600 in a 0700 folder.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Final

from medagent.errors import MedagentError
from medagent.files import private_dir, write_private
from medagent.imaging.deid import Deidentifier
from medagent.imaging.limits import ImageLimits, check_pixel_count
from medagent.simulators.case_files import CaseFileError

_PNG_MODES: Final = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})


class EmbeddedImageError(Exception):
    """Why an embedded image was refused; the caller turns it into a located :class:`CaseFileError`."""


def _is_dicom(data: bytes) -> bool:
    return data[128:132] == b"DICM"


def _deidentified_dicom(data: bytes, deidentifier: Deidentifier) -> bytes:
    import pydicom

    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
        deidentifier.deidentify(dataset)
        out = io.BytesIO()
        dataset.save_as(out, enforce_file_format=False)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types, with values in their messages
        raise EmbeddedImageError(f"embedded DICOM could not be de-identified ({type(exc).__name__})") from None
    return out.getvalue()


def _reencoded_raster(data: bytes, limits: ImageLimits) -> bytes:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our cap below is the one that counts
            image: Image.Image = Image.open(io.BytesIO(data))
            check_pixel_count((image.width, image.height, len(image.getbands())), limits)
            image.load()
    except MedagentError as exc:  # over the pixel cap
        raise EmbeddedImageError(f"embedded image refused: {exc.message}") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for hostile or broken files
        raise EmbeddedImageError(f"embedded image could not be decoded ({type(exc).__name__})") from None
    if image.mode not in _PNG_MODES:
        image = image.convert("RGB")  # CMYK and YCbCr JPEGs
    out = io.BytesIO()
    image.save(out, format="PNG")  # no pnginfo/exif passed: text chunks and EXIF stay behind
    return out.getvalue()


def write_case_image(data: bytes, cache: Path, deidentifier: Deidentifier,
                     limits: ImageLimits | None = None) -> Path:
    """``data`` de-identified into ``cache`` (once per original); the path of the written file."""
    limits = limits or ImageLimits()
    if len(data) > limits.max_file_bytes:
        raise EmbeddedImageError(f"embedded image is {len(data)} bytes; the limit is {limits.max_file_bytes}")
    dicom = _is_dicom(data)
    target = cache / f"{deidentifier.content_id(data)}{'.dcm' if dicom else '.png'}"
    if target.is_file():
        return target
    if not dicom and not data.startswith((b"\x89PNG", b"\xff\xd8")):
        raise EmbeddedImageError("embedded image is not DICOM, PNG or JPEG")
    clean = _deidentified_dicom(data, deidentifier) if dicom else _reencoded_raster(data, limits)
    private_dir(cache)
    return write_private(target, clean)  # atomic: concurrent loaders never see half a file


def located(error: EmbeddedImageError, **where: object) -> CaseFileError:
    return CaseFileError.at(field="image", problem=str(error), **where)  # type: ignore[arg-type]


__all__ = ["EmbeddedImageError", "located", "write_case_image"]
