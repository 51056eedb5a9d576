"""Family cards: the small YAML/JSON file that turns a local folder of weights into an expert.

    family: zero_shot              # which generic adapter
    name: medsiglip                # tool names derive from it (medsiglip_classify, ...)
    folder: ./medsiglip-448        # the transformers folder, relative to the card file
    model_id: google/medsiglip-448 # where a connected machine downloads the folder from
    architecture: siglip
    trained_on: "CXR, dermatology, ophthalmology, pathology and CT slices (the model's own card)"
    modalities: [DX, CR]
    labels: [pneumonia, pleural effusion, no finding]

Cards are hostile input like any configuration: bounded in size, no unknown keys, names that cannot pick a path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, TypeAdapter, ValidationError, field_validator

from medagent.cards import ModelCard
from medagent.errors import ConfigurationError
from medagent.imaging.record import Modality
from medagent.yaml_io import YamlLimits, load_yaml

CARD_LIMITS = YamlLimits(max_bytes=256 * 1024, max_nodes=20_000, max_depth=16)
_NAME = r"^[A-Za-z][A-Za-z0-9_]{0,39}$"  # a prefix of tool names: leaves room for the family's suffix
_Text = Annotated[str, Field(min_length=1, max_length=2000)]
_Label = Annotated[str, Field(min_length=1, max_length=200)]


class FamilyCardError(ConfigurationError):
    """A family card is unreadable or invalid; ``file`` and ``field`` locate it (the value is never quoted)."""

    code = "family_card"


class CardBase(BaseModel):
    """What every family card says. ``folder`` is resolved against the card file's own folder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME, description="instance name; tool names derive from it")
    summary: _Text | None = None
    model_id: str | None = Field(default=None, max_length=200,
                                 description="public model id (Hugging Face) to fetch the folder from")
    trained_on: _Text | None = Field(default=None, description="what the checkpoint was trained on, from its card")
    modalities: list[Modality] | None = Field(default=None, max_length=16)
    body_parts: list[Annotated[str, Field(max_length=64)]] | None = Field(default=None, max_length=32)
    performance: _Text | None = None
    limitations: list[_Text] = Field(default_factory=list, max_length=32)
    references: list[Annotated[str, Field(max_length=500)]] = Field(default_factory=list, max_length=32)
    untrained_test_only: bool = Field(
        default=False, description="TEST ONLY: the folder holds random weights; refused unless "
                                   "MEDAGENT_ALLOW_UNTRAINED_TEST_ONLY is set, and every result says untrained")
    timeout_s: float = Field(default=120.0, gt=0, le=3600)
    max_concurrency: int = Field(default=4, ge=1, le=256)
    max_batch_size: int | None = Field(default=None, ge=1, le=1024, description="default: the settings' value")

    def model_card(self, default_summary: str, *, dimensionality: tuple[int, ...] = (2,),
                   valid_arguments: dict[str, list[str]] | None = None) -> ModelCard:
        trained = f" Trained on: {self.trained_on}." if self.trained_on else ""
        source = f" Model: {self.model_id}." if self.model_id else ""
        return ModelCard(summary=f"{self.summary or default_summary}{source}{trained}", modalities=self.modalities,
                         body_parts=self.body_parts, dimensionality=list(dimensionality),
                         valid_arguments=valid_arguments or {}, performance=self.performance,
                         limitations=list(self.limitations), references=list(self.references))


class FolderCard(CardBase):
    """A family whose weights are a local transformers (or open_clip) folder."""

    folder: Path = Field(description="the weights folder; relative paths are relative to the card file")


class ZeroShotCard(FolderCard):
    family: Literal["zero_shot"]
    architecture: Literal["siglip", "clip", "open_clip"]
    labels: list[_Label] = Field(min_length=1, max_length=512)
    templates: list[Annotated[str, Field(min_length=1, max_length=300)]] = Field(
        default_factory=lambda: ["a medical image showing {label}"], min_length=1, max_length=64,
        description="prompts per label; {label} is replaced; the label's text embedding is their mean")
    linear_head: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,100}\.safetensors$",
                                    description="file in the folder: weight [labels, dim] and bias [labels] over "
                                                "the normalised image embedding (a trained probe)")
    multi_label: bool | None = Field(default=None, description="independent sigmoids per label (SigLIP's "
                                                                 "training); default: true for siglip, else softmax")


class PromptableSegmentationCard(FolderCard):
    family: Literal["promptable_segmentation"]
    architecture: Literal["sam"] = "sam"
    mask_threshold: float = Field(default=0.0, ge=-50, le=50, description="on the mask logits")
    box_source: Literal["lungs"] | Path | None = Field(
        default=None, description="boxes for a chained tool: 'lungs' (the lung localizer; tool {name}_segment_lungs) "
                                  "or a detection card file, relative to this card (tool {name}_segment_finding: "
                                  "phrase -> the detector's boxes -> masks); none: {name}_segment only")

    @field_validator("box_source")
    @classmethod
    def _a_card_file(cls, value: Literal["lungs"] | Path | None) -> Literal["lungs"] | Path | None:
        if isinstance(value, Path) and value.suffix not in (".yaml", ".yml", ".json"):
            raise ValueError("box_source is 'lungs' or a detection card file (.yaml, .yml or .json)")
        return value


class DetectionCard(FolderCard):
    family: Literal["detection"]
    architecture: Literal["grounding_dino", "owlv2"]
    box_threshold: float = Field(default=0.25, ge=0, le=1, description="a box is kept when its score is above this")
    text_threshold: float = Field(default=0.25, ge=0, le=1,
                                  description="Grounding DINO: a box is kept only when a word of the phrase scores "
                                              "above this, and is labelled with the words that do")
    max_boxes: int = Field(default=10, ge=1, le=100, description="the highest-scoring boxes kept per phrase")


class ImageTextCard(FolderCard):
    family: Literal["image_text_retrieval"]
    architecture: Literal["siglip", "clip"]
    index: Path | None = Field(default=None, description="the index folder built with this encoder (`medagent "
                                                         "index build --card`); default <home>/indexes/<name>; "
                                                         "relative paths are relative to the card file")


class SpecialistCard(CardBase):
    """A vision(-language) model served over an OpenAI-compatible API, consulted as an expert."""

    family: Literal["specialist_vlm"]
    endpoint: HttpUrl
    model: str = Field(min_length=1, max_length=200, description="the served model id")
    accepts_images: bool = Field(default=False, description="whether the served model reads images")
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Z_][A-Z0-9_]{0,63}$",
                                    description="environment variable holding the API key (never the key itself)")
    max_tokens: int = Field(default=512, ge=1, le=8192, description="per answer; the answer read is capped at "
                                                                   "max(1024, 16 x max_tokens) characters")
    report_prompt: _Text = "Write a radiology report (findings and impression) for this image."
    image_max_side: int = Field(default=512, ge=64, le=2048,
                                description="the display image is downscaled to fit this many pixels a side")


class RemoteCard(CardBase):
    """The tools of an expert service (``medagent expert serve``) on another process or machine.

    Tool names are ``<name>_<the service's tool name>``; ``timeout_s`` bounds each whole call (connecting at most
    5 s), ``max_concurrency`` the calls in flight, ``max_batch_size`` the concurrent calls sent as one request;
    ``modalities`` and ``body_parts``, when given, replace the service's routing for these tools."""

    family: Literal["remote"]
    url: HttpUrl
    tools: list[Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")]] | None = Field(
        default=None, max_length=256, description="only these of the service's tools; default: all")


FamilyCard = Annotated[ZeroShotCard | PromptableSegmentationCard | DetectionCard | ImageTextCard | SpecialistCard
                       | RemoteCard, Field(discriminator="family")]
FAMILIES = ("zero_shot", "promptable_segmentation", "detection", "image_text_retrieval", "specialist_vlm", "remote")
_ADAPTER: TypeAdapter[FamilyCard] = TypeAdapter(FamilyCard)


def parse_card(data: object, *, source: str = "card", base_dir: Path | None = None) -> FamilyCard:
    """A validated card from plain data. Relative folders resolve against ``base_dir``."""
    if isinstance(data, dict) and data.get("family") not in FAMILIES:
        raise FamilyCardError(f"{source}: `family` must be one of {', '.join(FAMILIES)}", file=source,
                              field="family")
    try:
        card = _ADAPTER.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"][1:]) or "card"
        raise FamilyCardError(f"{source}: {field}: {first['msg']} ({exc.error_count()} problem(s))",
                              file=source, field=field) from None
    if isinstance(card, FolderCard) and base_dir is not None and not card.folder.expanduser().is_absolute():
        card = card.model_copy(update={"folder": (base_dir / card.folder).resolve()})
    if isinstance(card, PromptableSegmentationCard) and isinstance(card.box_source, Path) and base_dir is not None \
            and not card.box_source.expanduser().is_absolute():
        card = card.model_copy(update={"box_source": (base_dir / card.box_source).resolve()})
    if isinstance(card, ImageTextCard) and card.index and base_dir is not None \
            and not card.index.expanduser().is_absolute():
        card = card.model_copy(update={"index": (base_dir / card.index).resolve()})
    return card


def load_card(path: Path) -> FamilyCard:
    """A card from a YAML or JSON file (bounded, no aliases)."""
    path = Path(path).expanduser()
    return parse_card(load_yaml(path, CARD_LIMITS), source=path.name, base_dir=path.resolve().parent)
