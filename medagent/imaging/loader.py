"""One entry point for every supported image format."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from medagent.errors import ImageInputError, TruncatedFile
from medagent.imaging.deid import Deidentifier
from medagent.imaging.limits import ImageLimits, check_file_size, resolve_in_workspace, sniff_format
from medagent.imaging.record import ImageRecord, Modality


class ImageLoader:
    """Loads PNG, JPEG, DICOM (a file, or a folder holding one series) and NIfTI files into :class:`ImageRecord` under safety limits.

    ``workspace``: when set, only files that resolve inside it are read.
    ``modality``: a user's declaration for formats that carry none (PNG, JPEG, NIfTI);
    DICOM files always use their own Modality tag.
    """

    def __init__(
        self,
        deidentifier: Deidentifier,
        limits: ImageLimits | None = None,
        workspace: Path | None = None,
    ) -> None:
        self.deidentifier = deidentifier
        self.limits = limits or ImageLimits()
        self.workspace = workspace

    def load(self, path: str | os.PathLike[str], modality: Modality | str | None = None) -> ImageRecord:
        declared = Modality.parse(str(modality)) if modality else Modality.UNKNOWN
        base = self.workspace if self.workspace is not None and not Path(path).is_absolute() else Path()
        if (base / path).is_dir():  # a folder is one DICOM series (the largest, when it holds several)
            from medagent.imaging.series import load_dicom_series

            return load_dicom_series(base / path, self.deidentifier, self.limits, workspace=self.workspace)
        resolved = resolve_in_workspace(path, self.workspace)
        size = check_file_size(resolved, self.limits)
        source_format = sniff_format(resolved, self.limits)
        if source_format == "nifti":
            from medagent.imaging.nifti import load_nifti

            return load_nifti(resolved, size, _sha256_file(resolved), self.limits, declared)
        data = resolved.read_bytes()  # bounded by max_file_bytes above
        if len(data) != size:
            raise TruncatedFile("file changed size while being read")
        sha256 = hashlib.sha256(data).hexdigest()
        if source_format == "dicom":
            from medagent.imaging.dicom import load_dicom

            return load_dicom(data, sha256, self.limits, self.deidentifier)
        from medagent.imaging.raster import load_raster

        return load_raster(data, source_format, sha256, self.limits, declared)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


__all__ = ["ImageInputError", "ImageLoader"]
