"""Temporal comparison on real chest X-rays: registration recovers a known motion, change is localised."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medagent.config import Settings
from medagent.errors import InvalidToolArguments, PreconditionFailed
from medagent.experts.cxr_classifier import CxrClassifier
from medagent.experts.temporal import ChangeThresholds, StudyDifferencer, finding_changes
from medagent.imaging import ImageLoader
from medagent.imaging.record import ImageRecord
from medagent.tools.artifacts import ArtifactStore
from medagent.tools.builtin import Toolbox
from medagent.tools.spec import ToolContext
from medagent.tools.temporal_tools import compare_studies_tool


def _moved(record: ImageRecord, dx: float, dy: float, degrees: float) -> ImageRecord:
    """The same radiograph repositioned: rotated about its centre and shifted, as at a follow-up visit."""
    import cv2

    pixels = record.pixels.astype(np.float32)
    height, width = pixels.shape
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    matrix[:, 2] += (dx, dy)
    moved = cv2.warpAffine(pixels, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return record.model_copy(update={"pixels": moved, "source_sha256": "moved"})


@pytest.fixture
def cxr(loader: ImageLoader, nih_images: list[Path]) -> ImageRecord:
    return loader.load(nih_images[0], modality="DX")


@pytest.mark.asyncio
async def test_registration_recovers_a_known_motion_and_finds_no_change(cxr: ImageRecord) -> None:
    differencer = StudyDifferencer()
    prior = _moved(cxr, dx=-24.0, dy=16.0, degrees=3.0)
    change = await differencer((prior, cxr))
    registration = change.registration
    # the prior was rotated by +3 degrees and shifted; mapping current -> prior undoes exactly that motion
    assert registration.correlation_after > registration.correlation_before
    assert registration.correlation_after > 0.95
    assert abs(abs(registration.rotation_deg) - 3.0) < 0.3
    assert abs(registration.scale - 1.0) < 0.01
    assert change.verdict == "unchanged", change.reason
    differencer.close()


@pytest.mark.asyncio
async def test_a_new_opacity_is_found_where_it_was_added(cxr: ImageRecord) -> None:
    differencer = StudyDifferencer()
    current = cxr.pixels.astype(np.float32).copy()
    height, width = current.shape
    y0, x0 = int(height * 0.55), int(width * 0.62)  # a dense blob in the lower left lung field (image right)
    yy, xx = np.mgrid[:height, :width]
    blob = np.exp(-(((yy - y0) / (height * 0.05)) ** 2 + ((xx - x0) / (width * 0.05)) ** 2))
    current += blob * float(np.ptp(current)) * 0.6
    after = cxr.model_copy(update={"pixels": current, "source_sha256": "with-blob"})
    change = await differencer((_moved(cxr, dx=10, dy=-6, degrees=-1.5), after))
    assert change.verdict == "changed"
    box = change.largest_change
    assert box is not None and box.x0 <= x0 <= box.x1 and box.y0 <= y0 <= box.y1
    assert box.width_mm is None  # a PNG carries no pixel spacing: pixels only
    assert change.changed_fraction < 0.1
    differencer.close()


@pytest.mark.asyncio
@pytest.mark.torch
async def test_compare_tool_stores_an_overlay_and_reports_classifier_deltas(
        tmp_path: Path, loader: ImageLoader, nih_images: list[Path]) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    ids = [store.put_image(loader.load(path, modality="DX")).id for path in nih_images]
    classifier = CxrClassifier(cache_dir=tmp_path / "xrv", allow_untrained_test_only=True)
    tool = compare_studies_tool(StudyDifferencer(), classifier)
    context = ToolContext(artifacts=store, image_ids=ids)
    comparison = await tool.run(tool.input_model(prior_image_id=ids[1], current_image_id=ids[0]), context)
    assert comparison.findings_compared and comparison.provenance.untrained
    assert "UNTRAINED" in comparison.summary_text()
    assert len(comparison.findings) == 18
    assert all(abs(f.delta - (f.current_probability - f.prior_probability)) < 1e-3 for f in comparison.findings)
    assert comparison.overlay_id is not None
    overlay = Image.open(io.BytesIO(store.read_bytes(comparison.overlay_id)))
    assert overlay.format == "PNG"
    with pytest.raises(InvalidToolArguments):
        await tool.run(tool.input_model(prior_image_id=ids[0], current_image_id=ids[0]), context)
    classifier.close()


@pytest.mark.asyncio
async def test_a_ct_slice_against_a_radiograph_is_refused(cxr: ImageRecord, loader: ImageLoader,
                                                         pydicom_ct: Path) -> None:
    ct = loader.load(pydicom_ct)
    with pytest.raises(PreconditionFailed, match="one modality"):
        await StudyDifferencer()((ct, cxr))


def test_finding_status_follows_operating_thresholds() -> None:
    from medagent.experts.cxr_classifier import Classification, FindingScore
    from medagent.runtime.results import Provenance

    def scores(effusion: float, mass: float) -> Classification:
        findings = [FindingScore(label="Effusion", probability=effusion, operating_threshold=0.3),
                    FindingScore(label="Mass", probability=mass, operating_threshold=None)]
        return Classification(provenance=Provenance(expert="x", model_id="x"), weights="x", findings=findings,
                              input_resolution=224)

    changes = {c.label: c.status for c in finding_changes(scores(0.2, 0.5), scores(0.4, 0.55), 0.1)}
    assert changes == {"Effusion": "new", "Mass": "unchanged"}
    changes = {c.label: c.status for c in finding_changes(scores(0.4, 0.5), scores(0.2, 0.75), 0.1)}
    assert changes == {"Effusion": "resolved", "Mass": "increased"}
    assert ChangeThresholds().probability_delta == 0.1


def test_compare_studies_is_offered_only_with_two_images(settings: Settings, nih_images: list[Path]) -> None:
    toolbox = Toolbox(settings)
    first, second = (toolbox.attach(path, modality="DX").id for path in nih_images)
    assert "compare_studies" not in toolbox.offered_tools(toolbox.image_summaries([first]))
    assert "compare_studies" in toolbox.offered_tools(toolbox.image_summaries([first, second]))
    toolbox.close()


def test_an_unchanged_file_is_decoded_once_and_a_changed_one_again(settings: Settings, nih_images: list[Path],
                                                                    tmp_path: Path) -> None:
    toolbox = Toolbox(settings)
    loads = []
    original = toolbox.loader.load
    toolbox.loader.load = lambda *a, **k: loads.append(a) or original(*a, **k)  # type: ignore[method-assign]
    copy = tmp_path / "copy.png"
    copy.write_bytes(nih_images[0].read_bytes())
    first = toolbox.attach(copy, modality="DX")
    assert toolbox.attach(copy, modality="DX").id == first.id and len(loads) == 1
    copy.write_bytes(nih_images[1].read_bytes())  # new content: decoded and stored anew
    assert toolbox.attach(copy, modality="DX").id != first.id and len(loads) == 2
    toolbox.close()
