"""Experts: models behind typed results, with lazy loading, a shared cache and micro-batching."""

from medagent.cards import ModelCard
from medagent.runtime.expert import Expert, LoadedModel, WeightsStatus, pick_device
from medagent.runtime.results import BoundingBox, ExpertResult, Provenance

__all__ = ["BoundingBox", "Expert", "ExpertResult", "LoadedModel", "ModelCard", "Provenance", "WeightsStatus", "pick_device"]
