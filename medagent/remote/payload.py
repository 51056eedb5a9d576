"""Images on the wire: an :class:`ImageRecord`'s de-identified pixels and planner-safe facts, never a path.

The pixels travel as ``.npy`` bytes (no pickle; numpy reads its own format across versions) in base64. Pixels that
are whole numbers (8- or 16-bit radiographs, CT in HU) are sent in the smallest integer type that holds every value
exactly, a quarter or half of float32's bytes; the service turns them back into float32, bit for bit the same.
The service checks the array's header (type, shape, pixel count) before it reads the data.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io

import numpy as np

from medagent.errors import CorruptFile, ImageTooLarge
from medagent.imaging.limits import ImageLimits
from medagent.imaging.record import ImageRecord
from medagent.remote.protocol import MAX_IMAGE_BYTES, ImagePayload

_EXACT_TYPES = (np.uint8, np.int16, np.uint16, np.int32)  # tried in order: the first that holds every value
_ACCEPTED = {np.dtype(t) for t in (*_EXACT_TYPES, np.float32, np.float64, np.bool_)}
_UNSENT_METADATA = {"study_uid", "series_uid", "instance_uid", "study_date_shifted"}  # an expert needs none of them


def _compact(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype.kind == "f" and pixels.size and np.isfinite(pixels).all():
        low, high = float(pixels.min()), float(pixels.max())
        for kind in _EXACT_TYPES:
            info = np.iinfo(kind)
            if info.min <= low and high <= info.max:
                narrowed = pixels.astype(kind)
                if np.array_equal(narrowed, pixels):  # whole numbers only: exact
                    return narrowed
                break
    return pixels


def encode(record: ImageRecord) -> ImagePayload:
    """The payload of ``record`` (its pixels bounded like any image medagent reads)."""
    pixels = _compact(np.ascontiguousarray(record.pixels))
    if pixels.nbytes > MAX_IMAGE_BYTES:
        raise ImageTooLarge(f"the image is {pixels.nbytes} bytes; an expert service takes at most {MAX_IMAGE_BYTES}",
                            limit=MAX_IMAGE_BYTES)
    buffer = io.BytesIO()
    np.save(buffer, pixels, allow_pickle=False)
    metadata = record.metadata.model_copy(update=dict.fromkeys(_UNSENT_METADATA))
    return ImagePayload(npy_b64=base64.b64encode(buffer.getbuffer()).decode("ascii"), modality=record.modality,
                        source_format=record.source_format if record.source_format in
                        ("png", "jpeg", "dicom", "nifti") else "npy",
                        spacing_mm=record.spacing_mm, orientation=record.orientation, affine=record.affine,
                        window=record.window, metadata=metadata, deid=record.deid,
                        modality_declared_by_user=record.modality_declared_by_user,
                        modality_detected=record.modality_detected)


def decode(payload: ImagePayload, limits: ImageLimits | None = None) -> ImageRecord:
    """The :class:`ImageRecord` a payload describes, under ``limits`` (the service's): typed errors for a
    malformed array or one past the caps, checked from the header before the data is read."""
    limits = limits or ImageLimits()
    try:
        raw = base64.b64decode(payload.npy_b64, validate=True)
    except (binascii.Error, ValueError):
        raise CorruptFile("the image payload is not base64") from None
    stream = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read_header is None:
            raise ValueError("npy version")
        shape, fortran, dtype = read_header(stream)  # the header only: no data is read yet
    except (ValueError, SyntaxError, TypeError):
        raise CorruptFile("the image payload is not an .npy array") from None
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if dtype not in _ACCEPTED or dtype.hasobject or not 2 <= len(shape) <= 4:
        raise CorruptFile(f"the image payload must be a 2-4D numeric array (got {len(shape)}D {dtype.str})")
    if count > limits.max_pixels or count * dtype.itemsize > MAX_IMAGE_BYTES:
        raise ImageTooLarge(f"the image payload has {count} pixels; the limit is {limits.max_pixels}",
                            limit=limits.max_pixels)
    if len(raw) - stream.tell() != count * dtype.itemsize:
        raise CorruptFile("the image payload's data does not match its header")
    stream.seek(0)
    pixels = np.load(stream, allow_pickle=False).astype(np.float32, copy=False)
    if fortran:
        pixels = np.ascontiguousarray(pixels)
    return ImageRecord(pixels=pixels, modality=payload.modality, source_format=payload.source_format,
                       source_sha256=hashlib.sha256(raw).hexdigest(), spacing_mm=payload.spacing_mm,
                       orientation=payload.orientation, affine=payload.affine, window=payload.window,
                       metadata=payload.metadata, deid=payload.deid,
                       modality_declared_by_user=payload.modality_declared_by_user,
                       modality_detected=payload.modality_detected)
