"""Lung localizer, quality gate and DICOM header reader on real images."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from medagent.config import Settings
from medagent.errors import PreconditionFailed
from medagent.experts.dicom_header import DicomHeaderReader
from medagent.experts.lungs import LungLocalizer
from medagent.experts.quality import QualityAssessor
from medagent.imaging import ImageLoader
from medagent.imaging.record import ImageRecord
from medagent.runtime.cache import ModelCache
from medagent.tools.builtin import Toolbox
from tests.dicom_files import cr_dicom


def test_monochrome1_cr_is_inverted_and_spacing_corrected(tmp_path: Path, loader: ImageLoader,
                                                          nih_images: list[Path]) -> None:
    record = loader.load(cr_dicom(nih_images[0], tmp_path / "cr.dcm"))
    original = np.asarray(Image.open(nih_images[0]).convert("L"), dtype=np.float32) * 16
    assert record.modality.value == "CR" and record.metadata.view_position == "PA"
    # after inversion, brighter is higher again: the stored pixels come back up to a constant offset
    assert np.corrcoef(record.pixels.ravel(), original.ravel())[0, 1] > 0.999
    assert record.spacing_mm == pytest.approx((0.7 / 1.1, 0.7 / 1.1))


@pytest.mark.asyncio
async def test_lungs_found_on_both_real_radiographs(loader: ImageLoader, nih_images: list[Path]) -> None:
    localizer = LungLocalizer(cache=ModelCache(1024))
    for path in nih_images:
        result = await localizer(loader.load(path, modality="DX"))
        right, left = (next(l for l in result.lungs if l.side == side) for side in ("right", "left"))
        # patient's right lung is on the image's left in a PA view
        assert right.box.x1 <= left.box.x0 + 20
        for lung in (right, left):
            box = lung.box
            assert 0 <= box.x0 < box.x1 <= 512 and 0 <= box.y0 < box.y1 <= 512
            assert (box.x1 - box.x0) * (box.y1 - box.y0) > 0.1 * 512 * 256  # a lung, not a speck
            assert box.width_mm is None  # PNG: no spacing known, so no millimetres invented
    localizer.close()


@pytest.mark.asyncio
async def test_lung_boxes_in_millimetres_use_the_real_spacing(tmp_path: Path, loader: ImageLoader,
                                                              nih_images: list[Path]) -> None:
    localizer = LungLocalizer(cache=ModelCache(1024))
    result = await localizer(loader.load(cr_dicom(nih_images[1], tmp_path / "cr.dcm", 0.5, 1.0)))
    for lung in result.lungs:
        assert lung.box.width_mm == pytest.approx((lung.box.x1 - lung.box.x0) * 0.5, abs=0.1)
    localizer.close()


@pytest.mark.asyncio
async def test_lung_tool_writes_an_overlay_artifact(settings: Settings, nih_images: list[Path]) -> None:
    toolbox = Toolbox(settings)
    image = toolbox.attach(nih_images[0], modality="DX")
    context = toolbox.context([image.id])
    result = await toolbox.call("locate_lungs", {"image_id": image.id}, context)
    overlay = toolbox.store.get(result.overlay_id)  # type: ignore[attr-defined]
    with Image.open(io.BytesIO(toolbox.store.read_bytes(overlay.id))) as png:
        assert png.format == "PNG" and png.size == (512, 512) and png.mode == "RGB"
    with pytest.raises(PreconditionFailed):
        ct = toolbox.attach(pydicom.examples.get_path("ct"))
        await toolbox.call("locate_lungs", {"image_id": ct.id}, toolbox.context([ct.id]))
    toolbox.close()


@pytest.mark.asyncio
async def test_quality_gate_passes_real_images_and_flags_degraded_ones(loader: ImageLoader, nih_images: list[Path],
                                                                       pydicom_ct: Path) -> None:
    from scipy.ndimage import gaussian_filter

    assessor = QualityAssessor(cache=ModelCache(1024))
    for path in [*nih_images, pydicom_ct]:
        report = await assessor(loader.load(path))
        assert report.usable and report.flags == []
    real = loader.load(nih_images[0])

    def variant(pixels: np.ndarray) -> ImageRecord:
        return real.model_copy(update={"pixels": pixels.astype(np.float32)})

    noise = np.random.default_rng(0).normal(0, 60, real.pixels.shape)
    cases = {
        "blurred": variant(gaussian_filter(real.pixels, 8)),
        "noisy": variant(np.clip(real.pixels + noise, 0, 255)),
        "too_dark": variant(real.pixels * 0.15),
        "constant": variant(np.zeros_like(real.pixels)),
    }
    for expected, record in cases.items():
        report = await assessor(record)
        assert expected in {flag.code for flag in report.flags}, expected
    assert not (await assessor(cases["constant"])).usable
    assessor.close()


@pytest.mark.asyncio
async def test_dicom_header_is_planner_safe(loader: ImageLoader, pydicom_ct: Path, nih_images: list[Path]) -> None:
    reader = DicomHeaderReader(cache=ModelCache(1024))
    header = await reader(loader.load(pydicom_ct))
    assert header.metadata.modality.value == "CT" and header.metadata.kvp == 120.0
    assert header.pixel_spacing_mm == pytest.approx([0.661468, 0.661468])
    assert header.deidentification.attributes_changed > 0
    original = pydicom.dcmread(pydicom_ct)
    dumped = header.model_dump_json()
    for identifying in (str(original.PatientName), str(original.PatientID), str(original.StudyInstanceUID)):
        assert identifying not in dumped
    with pytest.raises(PreconditionFailed, match="reads DICOM files"):
        await reader(loader.load(nih_images[0]))
    reader.close()
