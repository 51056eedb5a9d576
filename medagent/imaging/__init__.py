"""Medical image I/O: PNG/JPEG/DICOM/NIfTI into one typed record, de-identified, under safety limits."""

from medagent.imaging.deid import Deidentifier, load_or_create_secret
from medagent.imaging.limits import ImageLimits
from medagent.imaging.loader import ImageLoader
from medagent.imaging.record import DeidReport, ImageRecord, Modality, SafeMetadata

__all__ = [
    "DeidReport",
    "Deidentifier",
    "ImageLimits",
    "ImageLoader",
    "ImageRecord",
    "Modality",
    "SafeMetadata",
    "load_or_create_secret",
]
