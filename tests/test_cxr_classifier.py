"""The TorchXRayVision classifier on real chest X-rays and the real DenseNet-121 architecture."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from medagent.errors import ConfigurationError, PreconditionFailed, WeightsUnavailable
from medagent.experts.cxr_classifier import DEFAULT_WEIGHTS_FILE, CxrClassifier, weight_names
from medagent.imaging import ImageLoader
from medagent.runtime.cache import ModelCache
from medagent.runtime.weights import sha256_file

pytestmark = pytest.mark.torch

DEFAULT_FILE = "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"


def _classifier(cache_dir: Path, **options: object) -> CxrClassifier:
    return CxrClassifier(cache_dir=cache_dir, cache=ModelCache(2 * 1024**3), **options)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_missing_weights_name_the_file_the_folder_and_the_url(tmp_path: Path, loader: ImageLoader,
                                                                     nih_images: list[Path]) -> None:
    classifier = _classifier(tmp_path / "cache")
    status = classifier.weights_status()
    assert not status.present and status.expected_path == str(tmp_path / "cache" / DEFAULT_FILE)
    with pytest.raises(WeightsUnavailable) as caught:
        await classifier(loader.load(nih_images[0], modality="DX"))
    message = caught.value.message
    assert DEFAULT_FILE in message and str(tmp_path / "cache") in message
    assert "github.com/mlmed/torchxrayvision/releases" in message
    assert caught.value.details["file_name"] == DEFAULT_FILE
    classifier.close()


@pytest.mark.asyncio
async def test_untrained_switch_runs_a_real_forward_pass_marked_untrained(
    tmp_path: Path, loader: ImageLoader, nih_images: list[Path]
) -> None:
    classifier = _classifier(tmp_path / "cache", allow_untrained_test_only=True)
    images = [loader.load(path, modality="DX") for path in nih_images]
    first, second = await asyncio.gather(*(classifier(image) for image in images))
    for result in (first, second):
        assert result.provenance.untrained is True
        assert result.provenance.weights_sha256 is None
        assert result.provenance.model_id == "torchxrayvision/densenet121-res224-all"
        labels = {finding.label for finding in result.findings}
        assert {"Cardiomegaly", "Effusion", "Pneumothorax"} <= labels and len(labels) == 18
        probabilities = [finding.probability for finding in result.findings]
        assert probabilities == sorted(probabilities, reverse=True)
        assert all(0.0 <= p <= 1.0 for p in probabilities)
        # thresholds come from the model's published operating points, not 0.5
        cardiomegaly = next(f for f in result.findings if f.label == "Cardiomegaly")
        assert cardiomegaly.operating_threshold == pytest.approx(0.050318155)
    # two different radiographs give different outputs from one batched forward pass
    assert [f.probability for f in first.findings] != [f.probability for f in second.findings] or \
        [f.label for f in first.findings] != [f.label for f in second.findings]
    classifier.close()


@pytest.mark.asyncio
async def test_batched_and_unbatched_results_agree(tmp_path: Path, loader: ImageLoader, nih_images: list[Path]) -> None:
    classifier = _classifier(tmp_path / "cache", allow_untrained_test_only=True, max_wait_ms=50)
    images = [loader.load(path, modality="DX") for path in nih_images] * 2
    batched = await asyncio.gather(*(classifier(image) for image in images))
    assert max(classifier.batch_sizes) > 1
    single = await classifier.run_unbatched(images[0])
    expected = {f.label: f.probability for f in single.findings}
    assert {f.label: f.probability for f in batched[0].findings} == pytest.approx(expected, abs=1e-4)
    classifier.close()


@pytest.mark.asyncio
async def test_a_random_network_saved_as_the_weight_file_loads(tmp_path: Path, loader: ImageLoader,
                                                               nih_images: list[Path]) -> None:
    """Not the published weights: a randomly initialised DenseNet saved under the publisher's file name is
    loaded through the library's own path (this proves loading and hashing, not the network's quality)."""
    import torch
    import torchxrayvision as xrv

    cache_dir = tmp_path / "xrv"
    cache_dir.mkdir()
    torch.manual_seed(1)
    saved = xrv.models.DenseNet(num_classes=18)
    torch.save(saved, cache_dir / DEFAULT_FILE)
    classifier = _classifier(cache_dir)
    assert classifier.weights_status().present
    result = await classifier(loader.load(nih_images[0], modality="DX"))
    assert result.provenance.untrained is False
    assert result.provenance.weights_sha256 == sha256_file(cache_dir / DEFAULT_FILE)
    # the loaded network is the saved one: same output as running the saved module directly
    image = classifier.preprocess(loader.load(nih_images[0], modality="DX"), 224)
    with torch.inference_mode():
        direct = torch.sigmoid(saved.eval()(torch.from_numpy(image[None]))).numpy()[0]
    labels = xrv.models.model_urls["densenet121-res224-all"]["labels"]
    by_label = {f.label: f.probability for f in result.findings}
    assert np.allclose([by_label[label] for label in labels], direct, atol=1e-4)
    classifier.close()


@pytest.mark.asyncio
async def test_ct_slice_is_refused_with_a_precondition_failure(tmp_path: Path, loader: ImageLoader,
                                                                pydicom_ct: Path) -> None:
    classifier = _classifier(tmp_path / "cache", allow_untrained_test_only=True)
    with pytest.raises(PreconditionFailed, match="accepts CR, DX images; this image is CT"):
        await classifier(loader.load(pydicom_ct))
    classifier.close()


@pytest.mark.asyncio
async def test_unknown_modality_png_is_refused_until_declared(tmp_path: Path, loader: ImageLoader,
                                                               nih_images: list[Path]) -> None:
    classifier = _classifier(tmp_path / "cache", allow_untrained_test_only=True)
    with pytest.raises(PreconditionFailed, match="declare it"):
        await classifier(loader.load(nih_images[0]))
    classifier.close()


def test_documented_weight_names_and_unknown_names(tmp_path: Path) -> None:
    assert {"densenet121-res224-all", "densenet121-res224-nih", "densenet121-res224-chex"} <= set(weight_names())
    with pytest.raises(ConfigurationError, match="unknown TorchXRayVision weights"):
        CxrClassifier("no-such-weights", cache_dir=tmp_path).weights_status()
    # the default's file name, known without importing torchxrayvision, is the one it downloads
    assert CxrClassifier(cache_dir=tmp_path).weights_file().file_name == DEFAULT_WEIGHTS_FILE
    classifier = CxrClassifier(cache_dir=tmp_path)
    assert not classifier.ready()
    (tmp_path / DEFAULT_WEIGHTS_FILE).write_bytes(b"")
    assert CxrClassifier(cache_dir=tmp_path).ready()


def test_construction_loads_nothing(tmp_path: Path) -> None:
    cache = ModelCache(1024**3)
    CxrClassifier(cache_dir=tmp_path, cache=cache, allow_untrained_test_only=True)
    assert cache.keys() == [] and cache.misses == 0
