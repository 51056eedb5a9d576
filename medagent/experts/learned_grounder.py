"""A slot for a learned phrase-grounding model (MAIRA-2-style VLMs) loaded from a local transformers folder.

Only architectures that transformers implements natively are loaded: ``trust_remote_code`` is always
False, so no code shipped with a checkpoint ever runs. Output boxes are parsed from the generated text
by :func:`parse_box_output`, which reads the box formats grounding VLMs commonly emit.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from medagent.cards import ModelCard
from medagent.errors import ConfigurationError, MissingDependency, WeightsUnavailable
from medagent.experts.grounding import GroundedRegion, Grounding, GroundingRequest
from medagent.imaging.record import Modality
from medagent.runtime.expert import Expert, LoadedModel, WeightsStatus
from medagent.runtime.results import BoundingBox, Provenance
from medagent.runtime.weights import sha256_file

CoordinateFrame = Literal["full_image", "center_square_crop"]
EXPECTED_FILES = ["config.json", "model.safetensors (or model.safetensors.index.json with its shards)",
                  "the processor files (preprocessor_config.json, tokenizer files)"]
# MAIRA-2's own phrase-grounding instruction (its processor builds the same text)
DEFAULT_PROMPT = ("Repeat the following finding as a grounded phrase with bounding boxes indicating all locations "
                  "where it can be seen in the given chest X-ray image. Finding: {phrase}")


class ParsedBox(BaseModel):
    """A box from model text, normalised to [0, 1] of the model's coordinate frame."""

    phrase: str | None = None
    x0: float = Field(ge=0.0, le=1.0)
    y0: float = Field(ge=0.0, le=1.0)
    x1: float = Field(ge=0.0, le=1.0)
    y1: float = Field(ge=0.0, le=1.0)


_BOX = re.compile(r"(?:<box>|<\|box_start\|>)(.*?)(?:</box>|<\|box_end\|>)", re.DOTALL)
_BINNED = re.compile(r"<x(\d+)><y(\d+)><x(\d+)><y(\d+)>")  # MAIRA-2: coordinate bins
_LOC = re.compile(r"<loc(\d{4})><loc(\d{4})><loc(\d{4})><loc(\d{4})>([^<;]*)")  # PaliGemma: y0 x0 y1 x1 of 1024
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_PHRASE = re.compile(r"<obj>(.*?)(?=<box>|</obj>)|<ref>(.*?)</ref>|<\|object_ref_start\|>(.*?)<\|object_ref_end\|>",
                     re.DOTALL)


def _box(phrase: str | None, x0: float, y0: float, x1: float, y1: float) -> ParsedBox | None:
    x0, y0, x1, y1 = (min(1.0, max(0.0, value)) for value in (x0, y0, x1, y1))
    if x1 <= x0 or y1 <= y0:
        return None  # degenerate or reversed: not a box
    return ParsedBox(phrase=phrase or None, x0=x0, y0=y0, x1=x1, y1=y1)


def parse_box_output(text: str, *, coordinate_bins: int = 100) -> list[ParsedBox]:
    """Boxes in generated text, in order. Understood forms (x0, y0 = top left):

    * ``<box>0.12,0.30,0.45,0.80</box>`` - unit coordinates; ``<box>(120,300),(450,800)</box>`` or
      ``<|box_start|>...<|box_end|>`` with values above 1 - per-mille (Qwen-VL);
    * ``<obj>phrase <box><x12><y30><x45><y80></box></obj>`` - MAIRA-2 bins, centre of bin n is (n + 0.5) / bins;
    * ``<loc0123><loc0456><loc0789><loc1000> phrase`` - PaliGemma, y0 x0 y1 x1 over 1024.

    The phrase is the nearest preceding ``<obj>``/``<ref>``/object-ref span. Malformed boxes are skipped.
    """
    phrases = [(match.end(), next(group for group in match.groups() if group is not None).strip())
               for match in _PHRASE.finditer(text)]
    found: list[tuple[int, ParsedBox]] = []
    for match in _BOX.finditer(text):
        phrase = next((p for end, p in reversed(phrases) if end <= match.start()), None)
        content = match.group(1)
        binned = _BINNED.search(content)
        if binned:
            values = [(int(v) + 0.5) / coordinate_bins for v in binned.groups()]
        else:
            values = [float(v) for v in _NUMBER.findall(content)]
            if len(values) != 4 or max(values) > 1000:
                continue
            if max(values) > 1.0:
                values = [v / 1000.0 for v in values]
        box = _box(phrase, *values)
        if box is not None:
            found.append((match.start(), box))
    for match in _LOC.finditer(text):
        y0, x0, y1, x1 = (int(v) / 1024.0 for v in match.groups()[:4])
        box = _box(match.group(5).strip(), x0, y0, x1, y1)
        if box is not None:
            found.append((match.start(), box))
    return [box for _, box in sorted(found, key=lambda item: item[0])]


def to_image_box(box: ParsedBox, width: int, height: int, frame: CoordinateFrame = "full_image",
                 spacing_mm: tuple[float, ...] | None = None) -> BoundingBox:
    """Normalised box -> input pixels. ``center_square_crop``: the model saw the central square (as MAIRA-2)."""
    if frame == "center_square_crop":
        side = min(width, height)
        left, top, span_x, span_y = (width - side) // 2, (height - side) // 2, side, side
    else:
        left, top, span_x, span_y = 0, 0, width, height
    x0, y0 = left + math.floor(box.x0 * span_x), top + math.floor(box.y0 * span_y)
    x1, y1 = min(width, left + math.ceil(box.x1 * span_x)), min(height, top + math.ceil(box.y1 * span_y))
    return BoundingBox.from_pixels(x0, y0, x1, y1, spacing_mm)


class LearnedGrounder(Expert[GroundingRequest, Grounding]):
    name = "learned_grounder"
    batchable = False  # generation lengths differ per phrase
    card = ModelCard(
        summary="A learned phrase-grounding model (e.g. MAIRA-2-style) that returns boxes for a finding.",
        modalities=[Modality.CR, Modality.DX],
        body_parts=["CHEST"],
        dimensionality=[2],
        performance="Depends on the configured model; see its own model card.",
        limitations=["frontal views", "only transformers-native architectures (no remote code is run)"],
        references=["https://arxiv.org/abs/2406.04449"],
    )

    def __init__(self, model_dir: Path, *, coordinate_frame: CoordinateFrame = "center_square_crop",
                 coordinate_bins: int = 100, prompt_template: str = DEFAULT_PROMPT, max_new_tokens: int = 128,
                 model_class: Literal["causal_lm", "image_text_to_text"] = "causal_lm", **runtime: Any) -> None:
        super().__init__(**runtime)
        self.model_dir = Path(model_dir).expanduser()
        self.coordinate_frame: CoordinateFrame = coordinate_frame
        self.coordinate_bins = coordinate_bins
        self.prompt_template = prompt_template
        self.max_new_tokens = max_new_tokens
        self.model_class = model_class

    @property
    def cache_key(self) -> str:
        return f"{self.name}:{self.model_dir}:{self.device}"

    def _weight_file(self) -> Path | None:
        for name in ("model.safetensors", "model.safetensors.index.json"):
            if (self.model_dir / name).is_file():
                return self.model_dir / name
        return None

    def missing_files(self) -> list[str]:
        missing = [] if (self.model_dir / "config.json").is_file() else ["config.json"]
        weights = self._weight_file()
        if weights is None:
            missing.append("model.safetensors (or model.safetensors.index.json with its shards)")
        elif weights.name.endswith(".index.json"):
            shards = sorted(set(json.loads(weights.read_text()).get("weight_map", {}).values()))
            missing += [shard for shard in shards if not (self.model_dir / shard).is_file()]
        return missing

    def weights_status(self) -> WeightsStatus:
        missing = self.missing_files()
        return WeightsStatus(present=not missing, path=str(self.model_dir) if not missing else None,
                             expected_path=str(self.model_dir),
                             message=f"missing: {', '.join(missing)}" if missing else None)

    def ready(self) -> bool:
        return not self.missing_files()

    def load(self, device: str) -> LoadedModel:
        missing = self.missing_files()
        if missing:
            raise WeightsUnavailable(
                f"{self.name}: no grounding model in {self.model_dir} (missing {', '.join(missing)}). Put a "
                f"transformers model folder there with {'; '.join(EXPECTED_FILES)}.",
                expert=self.name, expected_path=str(self.model_dir), expected_files=EXPECTED_FILES, missing=missing)
        try:
            import torch
            import transformers
        except ImportError as exc:
            raise MissingDependency("the learned grounder needs torch and transformers") from exc
        auto_model = (transformers.AutoModelForCausalLM if self.model_class == "causal_lm"
                      else transformers.AutoModelForImageTextToText)
        options = {"trust_remote_code": False, "local_files_only": True}
        try:
            processor = transformers.AutoProcessor.from_pretrained(self.model_dir, **options)
            model = auto_model.from_pretrained(
                self.model_dir, dtype=torch.bfloat16 if device.startswith("cuda") else torch.float32, **options)
        except ValueError as exc:  # e.g. an architecture that exists only as remote code
            raise ConfigurationError(f"{self.name}: the model in {self.model_dir} cannot be loaded without running "
                                     f"its own code, which medagent never does ({exc})") from exc
        # transformers types .to() through a wrapping decorator that mypy reads as taking the model first
        model = model.to(device).eval()  # type: ignore[arg-type]
        weights = self._weight_file()
        assert weights is not None
        provenance = Provenance(
            expert=self.name, model_id=str(getattr(model.config, "_name_or_path", "") or self.model_dir.name),
            weights_sha256=sha256_file(weights), device=device,
            library_versions={"transformers": transformers.__version__, "torch": torch.__version__})
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        return LoadedModel(model={"model": model, "processor": processor}, provenance=provenance, size_bytes=size)

    def predict_batch(self, loaded: LoadedModel, items: list[GroundingRequest]) -> list[Grounding | BaseException]:
        results: list[Grounding | BaseException] = []
        for item in items:
            try:
                results.append(self._ground(loaded, item))
            except Exception as exc:  # noqa: BLE001 - one bad item fails alone, returned in its slot
                results.append(exc)
        return results

    def _generate(self, loaded: LoadedModel, image: Any, prompt: str) -> str:
        import torch

        processor, model = loaded.model["processor"], loaded.model["model"]
        if getattr(processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=prompt, images=[image], return_tensors="pt").to(loaded.provenance.device)
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        # keep special tokens: several models spell their boxes with them
        return str(processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=False))

    def _ground(self, loaded: LoadedModel, item: GroundingRequest) -> Grounding:
        import numpy as np
        from PIL import Image

        record = item.record
        self.card.check_image(record, self.name)
        view = record.as_2d()
        image = Image.fromarray((np.clip(view, 0, 1) * 255).astype(np.uint8)).convert("RGB")
        text = self._generate(loaded, image, self.prompt_template.format(phrase=item.phrase))
        height, width = view.shape
        regions = [GroundedRegion(label=box.phrase or item.phrase, kind="detection",
                                  box=to_image_box(box, width, height, self.coordinate_frame, record.spacing_mm))
                   for box in parse_box_output(text, coordinate_bins=self.coordinate_bins)]
        return Grounding(
            provenance=loaded.provenance, phrase=item.phrase, interpreted_as=f"the finding '{item.phrase}'",
            kind="detection", regions=regions, method=f"learned grounding model {loaded.provenance.model_id}",
            image_width=width, image_height=height,
            note=None if regions else "The model returned no box for this phrase.",
        )
