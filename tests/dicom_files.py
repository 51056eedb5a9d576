"""Real DICOM files written for tests from real radiographs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid


def cr_dicom(png: Path, target: Path, spacing: float = 0.7, magnification: float = 1.1) -> Path:
    """A MONOCHROME1 CR DICOM made from a real NIH radiograph's pixels (inverted, as MONOCHROME1 stores them)."""
    pixels = np.asarray(Image.open(png).convert("L"), dtype=np.uint16) * 16  # 12-bit range
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(target), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    ds.PatientName, ds.PatientID = "Test^Person", "PID-42"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.EstimatedRadiographicMagnificationFactor = magnification
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.PixelData = (4095 - pixels).astype(np.uint16).tobytes()
    ds.save_as(target, enforce_file_format=True)
    return target
