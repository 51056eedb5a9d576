"""The experts a process uses, built from settings. Construction loads nothing."""

from __future__ import annotations

from dataclasses import dataclass

from medagent.config import Settings
from medagent.experts.cache import shared_cache
from medagent.experts.cxr_classifier import CxrClassifier
from medagent.experts.dicom_header import DicomHeaderReader
from medagent.experts.lungs import LungLocalizer
from medagent.experts.quality import QualityAssessor
from medagent.experts.runtime import Expert


@dataclass
class ExpertSuite:
    classifier: CxrClassifier
    lungs: LungLocalizer
    quality: QualityAssessor
    dicom_header: DicomHeaderReader

    @classmethod
    def from_settings(cls, settings: Settings, classifier_weights: str = "densenet121-res224-all") -> ExpertSuite:
        cache = shared_cache(settings.model_cache_mb)
        runtime = {"device": settings.device, "cache": cache}
        return cls(
            classifier=CxrClassifier(
                classifier_weights,
                cache_dir=settings.xrv_cache_dir,
                allow_untrained_test_only=settings.allow_untrained_test_only,
                max_batch_size=settings.max_batch_size,
                max_wait_ms=settings.max_batch_wait_ms,
                **runtime,
            ),
            lungs=LungLocalizer(**runtime),
            quality=QualityAssessor(**runtime),
            dicom_header=DicomHeaderReader(**runtime),
        )

    def all(self) -> list[Expert]:  # type: ignore[type-arg]
        return [self.quality, self.dicom_header, self.lungs, self.classifier]

    def close(self) -> None:
        for expert in self.all():
            expert.close()
