"""Safety limits checked before any decoder touches a file.

Every check here runs on the file's size and first bytes only, so a hostile file is
refused in milliseconds without large allocations.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from medagent.errors import (
    FileTooLarge,
    ImageTooLarge,
    InputNotFound,
    PathOutsideWorkspace,
    TruncatedFile,
    UnsupportedFormat,
)

SourceFormat = Literal["png", "jpeg", "dicom", "nifti"]

_NIFTI1_HEADER = 348
_NIFTI2_HEADER = 540


class ImageLimits(BaseModel):
    """Caps applied to every input. Defaults suit clinical CXR, CT and MR studies."""

    max_file_bytes: int = Field(default=512 * 1024**2, gt=0)
    max_pixels: int = Field(default=256 * 1024**2, gt=0, description="voxels x frames x samples")
    allowed_formats: frozenset[SourceFormat] = frozenset({"png", "jpeg", "dicom", "nifti"})


def resolve_in_workspace(path: str | os.PathLike[str], workspace: Path | None) -> Path:
    """Resolve ``path``; when a workspace is configured, refuse anything resolving outside it."""
    candidate = Path(path)
    if workspace is not None:
        root = workspace.resolve()
        resolved = (root / candidate).resolve() if not candidate.is_absolute() else candidate.resolve()
        if not resolved.is_relative_to(root):
            raise PathOutsideWorkspace("the path resolves outside the configured workspace")
    else:
        resolved = candidate.resolve()
    if not resolved.is_file():
        raise InputNotFound("no readable file at the given path")
    return resolved


def check_file_size(path: Path, limits: ImageLimits) -> int:
    size = path.stat().st_size
    if size > limits.max_file_bytes:
        raise FileTooLarge(
            f"file is {size} bytes; the limit is {limits.max_file_bytes}",
            size=size,
            limit=limits.max_file_bytes,
        )
    if size == 0:
        raise TruncatedFile("file is empty")
    return size


def _gunzip_head(path: Path, count: int) -> bytes:
    with gzip.open(path, "rb") as stream:
        try:
            return stream.read(count)
        except (EOFError, OSError, zlib.error) as exc:
            raise TruncatedFile("gzip stream ends before the NIfTI header") from exc


def _looks_like_nifti(header: bytes) -> bool:
    if len(header) >= _NIFTI1_HEADER and header[344:347] in (b"n+1", b"ni1"):
        return True
    return len(header) >= _NIFTI2_HEADER and header[4:7] in (b"n+2", b"ni2")


def sniff_format(path: Path, limits: ImageLimits) -> SourceFormat:
    """Identify the format from content (never the file name) and check it is allowed."""
    with path.open("rb") as stream:
        head = stream.read(_NIFTI2_HEADER)
    detected: SourceFormat | None = None
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        detected = "png"
    elif head.startswith(b"\xff\xd8\xff"):
        detected = "jpeg"
    elif len(head) >= 132 and head[128:132] == b"DICM":
        detected = "dicom"
    elif _looks_like_nifti(head) or (
            head.startswith(b"\x1f\x8b") and _looks_like_nifti(_gunzip_head(path, _NIFTI2_HEADER))):
        detected = "nifti"
    if detected is None:
        hint = " (named .dcm but has no DICOM preamble and 'DICM' marker)" if path.suffix.lower() == ".dcm" else ""
        raise UnsupportedFormat(
            f"not a PNG, JPEG, DICOM Part 10 or NIfTI file{hint}",
            allowed=sorted(limits.allowed_formats),
        )
    if detected not in limits.allowed_formats:
        raise UnsupportedFormat(f"{detected} input is not allowed here", allowed=sorted(limits.allowed_formats))
    return detected


def check_pixel_count(shape: tuple[int, ...], limits: ImageLimits) -> int:
    count = 1
    for extent in shape:
        if extent < 0:
            raise ImageTooLarge("negative image dimension declared")
        count *= max(int(extent), 1)
    if count > limits.max_pixels:
        raise ImageTooLarge(
            f"image declares {count} pixels; the limit is {limits.max_pixels}",
            pixels=count,
            limit=limits.max_pixels,
        )
    return count
