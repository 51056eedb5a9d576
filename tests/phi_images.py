"""Real image files carrying made-up PHI: a DICOM CT (pydicom's CT_small) with a distinctive patient name, id and
institution in its header, and a radiograph PNG with the name in a tEXt chunk; and a corrupt PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

PATIENT_NAME = "Qzyxwarth^Velmorina"
PATIENT_ID = "PHI-ID-4471902"
INSTITUTION = "Saint Brimbleworth Infirmary"
PHI = (PATIENT_NAME, PATIENT_ID, INSTITUTION, "Qzyxwarth", "Velmorina", "Brimbleworth")


def phi_dicom(folder: Path, name: str = "ct-phi.dcm", *, shift: int = 0) -> Path:
    """CT_small with the PHI above in its header; ``shift``: added to its pixels, for distinct images."""
    import pydicom
    from pydicom.data import get_testdata_file

    dataset = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    dataset.PatientName = PATIENT_NAME
    dataset.PatientID = PATIENT_ID
    dataset.InstitutionName = INSTITUTION
    if shift:
        pixels = dataset.pixel_array.astype(np.int16) + shift
        dataset.PixelData = pixels.astype(dataset.pixel_array.dtype).tobytes()
    path = folder / name
    dataset.save_as(path)
    return path


def phi_png(source: Path, folder: Path, name: str = "cxr-phi.png") -> Path:
    """A real radiograph (``source``) as a PNG whose tEXt chunks name the patient."""
    info = PngInfo()
    info.add_text("PatientName", PATIENT_NAME)
    info.add_text("Comment", f"{PATIENT_ID} at {INSTITUTION}")
    path = folder / name
    Image.open(source).convert("L").save(path, pnginfo=info)
    return path


def corrupt_png(folder: Path, name: str = "broken.png") -> Path:
    """A PNG signature followed by garbage: sniffed as PNG, undecodable."""
    path = folder / name
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    return path


def carries_phi(data: bytes) -> list[str]:
    """The PHI strings found in ``data`` (raw bytes, or a pickle of what was shipped)."""
    return [value for value in PHI if value.encode() in data]
