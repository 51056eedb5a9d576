"""NIfTI-1/2 loading through nibabel, with the header checked before any voxel is read."""

from __future__ import annotations

import warnings
import zlib
from pathlib import Path

import numpy as np

from medagent.errors import CorruptFile, ResourceExhausted, TruncatedFile
from medagent.imaging.limits import ImageLimits, check_pixel_count
from medagent.imaging.record import ImageRecord, Modality, SafeMetadata


def load_nifti(path: Path, file_size: int, sha256: str, limits: ImageLimits, modality: Modality) -> ImageRecord:
    import nibabel as nib

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # header oddities are checked below, not printed
            image = nib.load(str(path))
        if not isinstance(image, nib.Nifti1Image):  # NIfTI-2 images are Nifti1Image subclasses too
            raise TypeError("not a NIfTI image")
        header = image.header
        shape = tuple(int(extent) for extent in header.get_data_shape())
        # the file's vox_offset: a loaded image's header copy has it reset to 0, its data proxy keeps it
        offset = int(getattr(image.dataobj, "offset", header.get_data_offset()))
        itemsize = header.get_data_dtype().itemsize
        zooms = tuple(float(z) for z in header.get_zooms()[: min(3, len(shape))])
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types (HeaderDataError is not a ValueError)
        # from None: nibabel's messages name the file path, which may identify a patient
        raise CorruptFile(f"NIfTI header could not be parsed ({type(exc).__name__})") from None
    if not shape or min(shape) < 1:  # nibabel reads dim[0] = 0 as shape (0,): an image without voxels
        raise CorruptFile("NIfTI header declares an empty image")
    check_pixel_count(shape, limits)

    if not path.name.endswith(".gz"):
        needed = offset + int(np.prod(shape)) * itemsize
        if needed > file_size:
            raise TruncatedFile(f"NIfTI header declares {needed} bytes of voxels and header; the file has {file_size}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            voxels = np.asarray(image.get_fdata(dtype=np.float32), dtype=np.float32)
    except (EOFError, OSError, zlib.error, ValueError) as exc:
        raise TruncatedFile(f"NIfTI voxel data ends early or is corrupt ({type(exc).__name__})") from None
    except MemoryError:
        raise ResourceExhausted("not enough memory to read the NIfTI voxels") from None
    except Exception as exc:  # noqa: BLE001 - e.g. OverflowError for a voxel offset beyond any file
        raise CorruptFile(f"NIfTI voxel data could not be read ({type(exc).__name__})") from None

    affine = image.affine
    try:
        codes = nib.aff2axcodes(affine) if affine is not None else ()
    except (ValueError, TypeError, np.linalg.LinAlgError):
        codes = ()
    # a degenerate affine (zero or NaN columns) gives None for some axes: no orientation then
    orientation = "".join(codes) if codes and all(isinstance(code, str) for code in codes) else None
    metadata = SafeMetadata(modality=modality, rows=shape[0], columns=shape[1] if len(shape) > 1 else None)
    return ImageRecord(
        pixels=voxels,
        modality=modality,
        source_format="nifti",
        source_sha256=sha256,
        spacing_mm=zooms if all(z > 0 for z in zooms) else None,
        orientation=orientation,
        affine=affine.tolist() if affine is not None else None,
        metadata=metadata,
        modality_declared_by_user=modality is not Modality.UNKNOWN,
    )
