"""Experts: models behind typed results, with lazy loading, a shared cache and micro-batching."""

from medagent.cards import ModelCard
from medagent.runtime.results import BoundingBox, ExpertResult, Provenance
from medagent.runtime.expert import Expert, LoadedModel, WeightsStatus, pick_device

__all__ = ["BoundingBox", "Expert", "ExpertResult", "LoadedModel", "ModelCard", "Provenance", "WeightsStatus", "pick_device"]
