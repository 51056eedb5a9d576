"""What a tool declares about itself: card, typed input/output, policy."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from medagent.cards import ModelCard
from medagent.imaging.record import ImageRecord

if TYPE_CHECKING:
    from medagent.tools.artifacts import ArtifactStore

ARTIFACT_ID_MARKER = "x-medagent-artifact-kind"

#: A field holding an artifact id. The registry fills its JSON-schema ``enum`` with the ids
#: attached to the session, so a planner cannot invent one and never sees a path.
ImageId = Annotated[
    str,
    Field(
        description="id of an image attached to this session",
        min_length=1,
        max_length=64,
        json_schema_extra={ARTIFACT_ID_MARKER: "image"},
    ),
]


class ToolPolicy(BaseModel):
    model_config = ConfigDict(frozen=True)

    timeout_s: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=2, ge=0, description="invalid calls the planner may correct before giving up")
    max_concurrency: int = Field(default=4, ge=1)
    requires_approval: bool = False


@dataclass
class ToolContext:
    """What a tool call may reach: the artifact store and the ids this session may use."""

    artifacts: ArtifactStore
    image_ids: list[str] = field(default_factory=list)

    def load_image(self, image_id: str) -> ImageRecord:
        from medagent.errors import UnknownArtifact

        if image_id not in self.image_ids:
            raise UnknownArtifact(f"image {image_id!r} is not attached to this session")
        return self.artifacts.load_image(image_id)


InputT = TypeVar("InputT", bound=BaseModel)
OutputT = TypeVar("OutputT", bound=BaseModel)


@dataclass(frozen=True)
class Tool(Generic[InputT, OutputT]):
    """A callable with a typed contract. ``run`` receives a validated input model."""

    name: str
    card: ModelCard
    input_model: type[InputT]
    output_model: type[OutputT]
    run: Callable[[InputT, ToolContext], Awaitable[OutputT]]
    policy: ToolPolicy = field(default_factory=ToolPolicy)
    ready: Callable[[], bool] = lambda: True  # False while, e.g., its weights are missing
    close: Callable[[], None] = lambda: None  # releases what the tool holds (an expert's threads and models)
    # what planners read instead of the card's own words, when those come from elsewhere (a remote service's card):
    # its builder fences that text as data, which this layer cannot do
    fenced_description: str | None = None

    @property
    def description(self) -> str:
        if self.fenced_description is not None:
            return self.fenced_description
        parts = [self.card.summary]
        if self.card.modalities:
            parts.append("Accepts: " + ", ".join(m.value for m in self.card.modalities) + ".")
        if self.card.limitations:
            parts.append("Limits: " + "; ".join(self.card.limitations) + ".")
        return " ".join(parts)

    def card_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.card.model_dump(mode="json"), "policy": self.policy.model_dump()}
