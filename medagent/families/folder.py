"""A local transformers folder as a family's weights: layout checks, typed absence, loading, provenance.

Only architectures transformers implements natively are loaded (``trust_remote_code`` is always False and
nothing is fetched), so no code shipped with a checkpoint ever runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medagent.errors import ConfigurationError, MissingDependency, WeightsUnavailable
from medagent.families.card import FolderCard
from medagent.runtime.expert import WeightsStatus
from medagent.runtime.results import Provenance
from medagent.runtime.weights import sha256_file

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
EXPECTED_LAYOUT = ["config.json", "model.safetensors (or model.safetensors.index.json with its shards)",
                   "the processor files (preprocessor_config.json; tokenizer files for text towers)"]
_MAX_SHARDS = 1024


class ModelFolder:
    """The folder a card names. Nothing here imports torch until :meth:`load`."""

    def __init__(self, card: FolderCard, expert: str, *, layout: list[str] | None = None,
                 required: tuple[str, ...] = ("config.json",)) -> None:
        self.card = card
        self.expert = expert
        self.path = Path(card.folder).expanduser()
        self.layout = layout or EXPECTED_LAYOUT
        self.required = required

    def weight_file(self) -> Path | None:
        return next((self.path / name for name in WEIGHT_FILES if (self.path / name).is_file()), None)

    def missing(self) -> list[str]:
        missing = [name for name in self.required if not (self.path / name).is_file()]
        weights = self.weight_file()
        if weights is None:
            missing.append(f"{WEIGHT_FILES[0]} (or {WEIGHT_FILES[1]} with its shards)")
        elif weights.name.endswith(".index.json"):
            try:
                shards = sorted(set(json.loads(weights.read_text())["weight_map"].values()))[:_MAX_SHARDS]
            except (ValueError, KeyError, TypeError, AttributeError):
                return [f"{weights.name} (unreadable)"]
            # a shard name that is not a plain file name would pick a path outside the folder
            missing += [s for s in shards if Path(str(s)).name != s or not (self.path / s).is_file()]
        return missing

    def status(self) -> WeightsStatus:
        missing = self.missing()
        return WeightsStatus(present=not missing, path=str(self.path) if not missing else None,
                             expected_path=str(self.path), url=self.source_url(),
                             message=f"missing: {', '.join(missing)}" if missing else None)

    def source_url(self) -> str | None:
        return f"https://huggingface.co/{self.card.model_id}" if self.card.model_id else None

    def require(self) -> Path:
        """The folder, or :class:`WeightsUnavailable` naming the layout expected there and where to fetch it."""
        missing = self.missing()
        if missing:
            fetch = (f" A connected machine can download it with `huggingface-cli download {self.card.model_id} "
                     f"--local-dir {self.path}` ({self.source_url()}).") if self.card.model_id else ""
            raise WeightsUnavailable(
                f"{self.expert}: no model in {self.path} (missing {', '.join(missing)}). Put a transformers model "
                f"folder there with {'; '.join(self.layout)}.{fetch}",
                expert=self.expert, expected_path=str(self.path), expected_files=self.layout, missing=missing,
                url=self.source_url())
        return self.path

    def weights_sha256(self) -> str:
        weights = self.weight_file()
        assert weights is not None  # require() ran first
        return sha256_file(weights)

    def provenance(self, device: str, *, model_id: str | None = None) -> Provenance:
        import torch
        import transformers

        untrained = self.card.untrained_test_only  # random test weights are no published checkpoint: no hash
        return Provenance(expert=self.expert, model_id=model_id or self.card.model_id or self.path.name,
                          weights_sha256=None if untrained else self.weights_sha256(), device=device,
                          untrained=untrained,
                          library_versions={"transformers": transformers.__version__, "torch": torch.__version__})

    def load(self, model_class: str, processor_class: str = "AutoProcessor", *,
             device: str) -> tuple[Any, Any]:
        """(model, processor) from the folder: ``model_class``/``processor_class`` are transformers names."""
        self.require()
        try:
            import torch
            import transformers
        except ImportError as exc:
            raise MissingDependency(f"{self.expert} needs torch and transformers: pip install 'medagent[experts]'",
                                    hint="pip install 'medagent[experts]'") from exc
        options: dict[str, Any] = {"trust_remote_code": False, "local_files_only": True}
        try:
            processor = getattr(transformers, processor_class).from_pretrained(self.path, **options)
            model = getattr(transformers, model_class).from_pretrained(
                self.path, dtype=torch.bfloat16 if device.startswith("cuda") else torch.float32, **options)
        except (ValueError, OSError, KeyError) as exc:  # a wrong architecture, remote code only, broken files
            raise ConfigurationError(
                f"{self.expert}: the folder {self.path} does not hold a {model_class} that transformers can load "
                f"without running the checkpoint's own code ({type(exc).__name__})", expert=self.expert) from exc
        return model.to(device).eval(), processor


def model_bytes(model: Any) -> int:
    return int(sum(p.numel() * p.element_size() for p in model.parameters()))
