"""PNG/JPEG frontal chest radiographs without a declared modality are recognised (DX, detected); anything
else stays UNKNOWN, and a declaration always wins."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medagent.config import Settings
from medagent.experts import cxr_detect
from medagent.imaging import Modality
from medagent.tools.builtin import Toolbox


@pytest.fixture
def toolbox(settings: Settings) -> Toolbox:
    return Toolbox(settings)


def _summary(toolbox: Toolbox, path: Path, modality: str | None = None) -> dict[str, object]:
    artifact = toolbox.attach(path, modality=modality)
    return toolbox.image_summaries([artifact.id])[artifact.id]


def _png(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    return path


def _dicom_slice_png(source: Path, target: Path, size: int = 512) -> Path:
    """A CT/MR slice as a user would export it: windowed to 8 bits and scaled up to radiograph size."""
    import pydicom

    pixels = pydicom.dcmread(source).pixel_array.astype(np.float32)
    low, high = np.percentile(pixels, (1, 99))
    grey = np.clip((pixels - low) / max(high - low, 1.0), 0, 1) * 255
    Image.fromarray(grey.astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR).save(target)
    return target


def _non_chest_images(folder: Path, pydicom_ct: Path, pydicom_mr: Path) -> list[Path]:
    """A CT and an MR slice, natural photographs, a gradient, noise, and a bright centre bar on grey."""
    rng = np.random.default_rng(0)
    images = [_dicom_slice_png(pydicom_ct, folder / "ct.png"), _dicom_slice_png(pydicom_mr, folder / "mr.png")]
    from skimage import data

    for name in ("camera", "astronaut", "coffee", "chelsea"):
        picture = getattr(data, name)()
        images.append(_png(folder / f"{name}.png", picture if picture.ndim == 2 else picture.mean(axis=2)))
    images.append(_png(folder / "gradient.png", np.tile(np.linspace(0, 255, 512), (512, 1))))
    images.append(_png(folder / "noise.png", rng.uniform(0, 255, (512, 512))))
    bar = np.full((512, 512), 90.0)
    bar[:, 230:282] = 220
    images.append(_png(folder / "bar.png", bar))
    return images


def test_the_shared_nih_chest_xrays_are_detected_as_dx(toolbox: Toolbox, nih_images: list[Path]) -> None:
    for path in nih_images:
        summary = _summary(toolbox, path)
        assert summary["modality"] == "DX" and summary["modality_source"] == "detected", path.name
        assert summary["body_part"] == "CHEST"


def test_a_jpeg_chest_xray_is_detected_too(toolbox: Toolbox, nih_images: list[Path], tmp_path: Path) -> None:
    target = tmp_path / "cxr.jpg"
    Image.open(nih_images[1]).convert("L").save(target, quality=90)
    assert _summary(toolbox, target)["modality_source"] == "detected"


@pytest.mark.asyncio
async def test_a_detected_chest_xray_is_accepted_by_the_chest_experts(toolbox: Toolbox, nih_images: list[Path]) -> None:
    artifact = toolbox.attach(nih_images[0])
    assert "locate_lungs" in toolbox.offered_tools(toolbox.image_summaries([artifact.id]))
    result = await toolbox.call("locate_lungs", {"image_id": artifact.id}, toolbox.context([artifact.id]))
    assert len(result.lungs) == 2  # type: ignore[attr-defined]


def test_images_that_are_not_chest_radiographs_stay_unknown(toolbox: Toolbox, tmp_path: Path, pydicom_ct: Path,
                                                            pydicom_mr: Path) -> None:
    for path in _non_chest_images(tmp_path, pydicom_ct, pydicom_mr):
        summary = _summary(toolbox, path)
        assert summary["modality"] == "UNKNOWN" and summary["modality_source"] == "unknown", path.name


@pytest.mark.parametrize("declared", ["CR", "DX", "MR"])
def test_a_declaration_wins(toolbox: Toolbox, nih_images: list[Path], declared: str) -> None:
    summary = _summary(toolbox, nih_images[0], declared)
    assert summary["modality"] == declared and summary["modality_source"] == "declared"


def test_dicom_keeps_its_own_modality(toolbox: Toolbox, pydicom_ct: Path) -> None:
    summary = _summary(toolbox, pydicom_ct)
    assert summary["modality"] == "CT" and summary["modality_source"] == "file"


def test_without_lungs_finder_the_classical_test_decides(toolbox: Toolbox, nih_images: list[Path], tmp_path: Path,
                                                          pydicom_ct: Path, pydicom_mr: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lungs_finder", None)  # import lungs_finder now raises ImportError
    assert cxr_detect.lungs_found_on_both_sides(np.zeros((512, 512), np.float32)) is None
    assert all(_summary(toolbox, path)["modality_source"] == "detected" for path in nih_images)
    assert all(_summary(toolbox, path)["modality"] == "UNKNOWN"
               for path in _non_chest_images(tmp_path, pydicom_ct, pydicom_mr))


def test_a_detector_failure_leaves_the_image_unknown_and_attached(toolbox: Toolbox, nih_images: list[Path],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(image: np.ndarray) -> bool:
        raise RuntimeError("detector broke")

    monkeypatch.setattr(cxr_detect, "column_profile_looks_like_a_chest", broken)
    summary = _summary(toolbox, nih_images[0])
    assert summary["modality"] == Modality.UNKNOWN.value and summary["modality_source"] == "unknown"


def test_small_or_oddly_shaped_pictures_are_not_read(toolbox: Toolbox, nih_images: list[Path], tmp_path: Path) -> None:
    original = Image.open(nih_images[0]).convert("L")
    thumbnail = tmp_path / "thumb.png"
    original.resize((128, 128)).save(thumbnail)
    banner = tmp_path / "banner.png"
    original.resize((1024, 256)).save(banner)
    assert _summary(toolbox, thumbnail)["modality"] == "UNKNOWN"
    assert _summary(toolbox, banner)["modality"] == "UNKNOWN"
