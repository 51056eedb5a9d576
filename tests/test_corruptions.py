"""Image corruptions for robustness arms, on the real NIH chest radiographs and nibabel's real MR volume."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from medagent.errors import ImageTooLarge, PreconditionFailed
from medagent.imaging import ImageLoader
from medagent.imaging.limits import ImageLimits
from medagent.imaging.record import ImageRecord
from medagent.questions.corruptions import Corruption, corrupt

ARMS: list[tuple[str, str | None]] = [
    ("gaussian_noise", None), ("blur", None), ("contrast", None), ("contrast", "up"), ("exposure", None),
    ("exposure", "up"), ("gamma", None), ("gamma", "up"), ("jpeg", None), ("pixelate", None)]


@pytest.fixture(scope="module")
def radiographs(nih_images: list[Path]) -> list[ImageRecord]:
    from medagent.imaging import Deidentifier
    from tests.conftest import TEST_SECRET

    loader = ImageLoader(Deidentifier(TEST_SECRET))
    return [loader.load(path) for path in nih_images]


def _mad(left: ImageRecord, right: ImageRecord) -> float:
    return float(np.mean(np.abs(left.pixels.astype(np.float64) - right.pixels)))


@pytest.mark.parametrize(("kind", "direction"), ARMS)
def test_each_kind_degrades_more_with_severity_and_keeps_the_record(
        radiographs: list[ImageRecord], kind: str, direction: str | None) -> None:
    for original in radiographs:
        before = original.pixels.copy()
        differences = []
        for severity in range(1, 6):
            corrupted = corrupt(original, Corruption(kind=kind, severity=severity, direction=direction, seed=3))
            assert corrupted.pixels.shape == original.pixels.shape
            assert corrupted.pixels.dtype == original.pixels.dtype
            assert corrupted.pixels.min() >= original.pixels.min() and corrupted.pixels.max() <= original.pixels.max()
            assert corrupted.model_dump(exclude={"pixels"}) == original.model_dump(exclude={"pixels"})
            differences.append(_mad(corrupted, original))
        assert differences[0] > 0.5, f"{kind}: severity 1 leaves the radiograph almost unchanged"
        assert all(b > a for a, b in itertools.pairwise(differences)), (kind, differences)
        np.testing.assert_array_equal(original.pixels, before)  # the input record is never written to


@pytest.mark.parametrize(("kind", "direction"), ARMS)
def test_a_seed_gives_the_same_image_and_noise_changes_with_the_seed(
        radiographs: list[ImageRecord], kind: str, direction: str | None) -> None:
    record = radiographs[0]
    first = corrupt(record, Corruption(kind=kind, severity=3, direction=direction, seed=7))
    again = corrupt(record, Corruption(kind=kind, severity=3, direction=direction, seed=7))
    other = corrupt(record, Corruption(kind=kind, severity=3, direction=direction, seed=8))
    np.testing.assert_array_equal(first.pixels, again.pixels)
    if kind == "gaussian_noise":
        assert _mad(first, other) > 1.0
    else:
        np.testing.assert_array_equal(first.pixels, other.pixels)


def test_two_images_get_different_noise_from_one_seed(radiographs: list[ImageRecord]) -> None:
    noise = [corrupt(record, Corruption(kind="gaussian_noise", severity=2, seed=1)).pixels.astype(np.float64)
             - record.pixels for record in radiographs]
    inside = [(record.pixels > 60) & (record.pixels < 180) for record in radiographs]  # away from clipping
    both = inside[0] & inside[1]
    correlation = np.corrcoef(noise[0][both], noise[1][both])[0, 1]
    assert abs(correlation) < 0.05


@pytest.mark.parametrize("severity", [0, 6, -1])
def test_severities_outside_one_to_five_are_refused(severity: int) -> None:
    with pytest.raises(ValidationError):
        Corruption(kind="blur", severity=severity)


def test_a_direction_only_where_it_means_something_and_known_kinds_only() -> None:
    with pytest.raises(ValidationError, match="no direction"):
        Corruption(kind="jpeg", severity=2, direction="up")
    with pytest.raises(ValidationError):
        Corruption.model_validate({"kind": "motion_blur", "severity": 2})
    with pytest.raises(ValidationError):
        Corruption.model_validate({"kind": "blur", "severity": 2, "strength": 9})
    up = Corruption(kind="contrast", severity=5, direction="up")
    assert (up.label, up.parameter) == ("contrast_up-5", 1.6)
    assert Corruption(kind="contrast", severity=5).parameter == 0.4
    described = Corruption(kind="jpeg", severity=4, seed=2).describe()
    assert described["corruption"] == "jpeg-4" and described["parameter"] == 10 and described["seed"] == 2


def test_images_over_the_pixel_limit_and_non_images_are_refused(radiographs: list[ImageRecord]) -> None:
    with pytest.raises(ImageTooLarge):
        corrupt(radiographs[0], Corruption(kind="blur", severity=1), limits=ImageLimits(max_pixels=100_000))
    flat = radiographs[0].model_copy(update={"pixels": radiographs[0].pixels[0]})
    with pytest.raises(PreconditionFailed):
        corrupt(flat, Corruption(kind="blur", severity=1))


def test_non_finite_voxels_stay_and_a_constant_image_is_unchanged(radiographs: list[ImageRecord]) -> None:
    pixels = radiographs[1].pixels.copy()
    pixels[100:110, 200:210] = np.nan
    pixels[0, 0] = np.inf
    holed = radiographs[1].model_copy(update={"pixels": pixels})
    out = corrupt(holed, Corruption(kind="blur", severity=5)).pixels
    assert np.isnan(out[100:110, 200:210]).all() and out[0, 0] == np.inf
    assert np.isfinite(out).sum() == np.isfinite(pixels).sum()
    constant = radiographs[1].model_copy(update={"pixels": np.full((64, 64), 17.0, dtype=np.float32)})
    np.testing.assert_array_equal(corrupt(constant, Corruption(kind="gaussian_noise", severity=5)).pixels, 17.0)


def test_integer_pixels_stay_integer(radiographs: list[ImageRecord]) -> None:
    record = radiographs[0].model_copy(update={"pixels": radiographs[0].pixels.astype(np.uint16)})
    out = corrupt(record, Corruption(kind="exposure", severity=3, direction="up")).pixels
    assert out.dtype == np.uint16 and out.max() <= record.pixels.max()
    assert np.abs(out.astype(np.int64) - record.pixels).mean() > 10


def test_a_volume_is_corrupted_plane_by_plane(nibabel_data: Path) -> None:
    from medagent.imaging import Deidentifier
    from tests.conftest import TEST_SECRET

    volume = ImageLoader(Deidentifier(TEST_SECRET)).load(nibabel_data / "anatomical.nii", modality="MR")
    assert volume.pixels.shape == (33, 41, 25)
    out = corrupt(volume, Corruption(kind="pixelate", severity=5)).pixels
    assert out.shape == volume.pixels.shape and out.dtype == volume.pixels.dtype
    # factor 0.1 of a 33 x 41 (x, y) plane keeps 3 x 4 blocks; slices along z are never mixed
    assert max(len(np.unique(out[:, :, z])) for z in range(out.shape[2])) <= 12
    assert len(np.unique(out[:, 20, :])) > 12
    blurred = corrupt(volume, Corruption(kind="blur", severity=5)).pixels
    assert blurred.min() >= volume.pixels.min() and blurred.max() <= volume.pixels.max()
    assert _mad(volume.model_copy(update={"pixels": blurred}), volume) > 0
