"""The study/workflow schema of root ``workflows/*.yaml`` files (loading: :mod:`medagent.studies.loading`).

Every model forbids unknown keys so typos are caught. Names that refer to other things (tools,
steps, ``_target_`` paths) are checked after validation by ``loading.reference_problems``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from medagent.agents.planner import BACKENDS, PlannerConfig, Role
from medagent.names import name_problem
from medagent.questions.corruptions import Corruption
from medagent.studies.components import TargetPolicy, TargetRef
from medagent.studies.datasets import Case, DatasetSpec, iter_dataset
from medagent.studies.dialogue_graph import DialogueGraph
from medagent.studies.pipeline import AgentLoopGraph, PipelineGraph, Probability, StepId
from medagent.studies.vqa_graph import MAX_INSTRUCTION_CHARS, VqaGraph
from medagent.yaml_located import LocatedDocument, Problem, StudyConfigError

if TYPE_CHECKING:
    from medagent.config import Settings

# The tools medagent.tools.builtin.build_registry registers (kept here so validating a file builds no experts).
BUILTIN_TOOL_NAMES: tuple[str, ...] = (
    "assess_image_quality", "read_dicom_header", "classify_chest_xray", "locate_lungs", "segment_chest_anatomy",
    "segment_lung_fields", "ground_phrase", "compare_studies", "segment_volume", "search_reports",
    "find_similar_images",
)
Graph = Annotated[AgentLoopGraph | PipelineGraph | DialogueGraph | VqaGraph, Field(discriminator="type")]
# Upper bounds on numbers that size work or memory: far above any real study, far below a typo or an attack.
MAX_REPEATS = 1000
MAX_CONCURRENCY = 256
MAX_BOOTSTRAP = 100_000  # the resample matrix is bootstrap x cases integers




class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class PlannerSpec(PlannerConfig):
    """One role's planner: :class:`PlannerConfig` plus the backend that serves it."""

    model_config = ConfigDict(extra="forbid")

    backend: str | TargetRef = Field(  # type: ignore[assignment]  # a study may also name a factory
        default="auto", description=f"auto (openai with an endpoint, else embedded), {', '.join(BACKENDS)}, or "
                                    "{_target_: pkg.make_planner, kwargs: {...}}: make_planner(config=..., **kwargs)")

    def resolved_backend(self) -> str | TargetRef:
        """The backend short name (``auto`` decided by :func:`medagent.agents.factory.resolve_backend`), or
        the ``_target_`` factory."""
        from medagent.agents.factory import resolve_backend

        return self.backend if isinstance(self.backend, TargetRef) else resolve_backend(self.planner_config())

    def planner_config(self) -> PlannerConfig:
        # Only the fields the study set: defaults must stay "unset" so that backend-specific defaults
        # (embedded_planner_config's structured tool calling) still apply.
        return PlannerConfig.model_validate(self.model_dump(exclude={"backend"} if isinstance(
            self.backend, TargetRef) else None, exclude_unset=True))


Planners = dict[Role, PlannerSpec]


def _default_planners() -> Planners:
    return {"planner": PlannerSpec()}


class Arm(_Strict):
    """One configuration compared in a study; roles it does not name use the study's top-level planners.
    ``experts``, ``prompt`` and ``corruption`` compare expert sets, prompts and image perturbations (vqa graphs)."""

    name: StepId
    description: str = ""
    planners: Planners = Field(default_factory=dict)
    experts: list[str] | None = Field(
        default=None, max_length=256, description="vqa: the tools this arm offers or runs ('none' or []: none); "
                                                  "default: the study's experts")
    prompt: str | None = Field(default=None, min_length=1, max_length=MAX_INSTRUCTION_CHARS,
                               description="vqa: the planner's instructions, replacing graph.instructions")
    corruption: Corruption | None = Field(default=None, description="vqa: applied to every image before the "
                                                                    "planner and the experts see it")

    @field_validator("experts", mode="before")
    @classmethod
    def _none_means_no_experts(cls, value: object) -> object:
        return [] if value == "none" else value


class ExpertRef(TargetRef):
    """A tool factory by import path, and the tool names it provides (so steps can be checked before import)."""

    tools: list[str] = Field(min_length=1)


class ConcurrencySpec(_Strict):
    cases: int = Field(default=4, ge=1, le=MAX_CONCURRENCY, description="cases in flight at once (at most 256)")
    per_planner_endpoint: int = Field(
        default=16, ge=1, le=MAX_CONCURRENCY,
        description="requests in flight to one planner endpoint, across roles and arms (at most 256)")
    per_expert: int | dict[str, Annotated[int, Field(ge=1, le=MAX_CONCURRENCY)]] | None = Field(
        default=None, description="calls in flight per tool: one number, or per tool name (at most 256); "
                                  "unset: each tool's own policy (e.g. one volume segmentation at a time)")

    @field_validator("per_expert")
    @classmethod
    def _positive(cls, value: int | dict[str, int] | None) -> int | dict[str, int] | None:
        if isinstance(value, int) and not 1 <= value <= MAX_CONCURRENCY:
            raise ValueError(f"must be between 1 and {MAX_CONCURRENCY}")
        return value

    def expert_limits(self, tools: Iterable[str]) -> dict[str, int]:
        """Tool name -> the study's limit, for the tools it sets one for."""
        if self.per_expert is None:
            return {}
        if isinstance(self.per_expert, int):
            return {tool: self.per_expert for tool in tools}
        return {tool: limit for tool, limit in self.per_expert.items() if tool in set(tools)}


class StoreSpec(_Strict):
    url: str | None = Field(default=None, description="sqlite:///file or postgresql://...; None: the SQLite default")

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("sqlite:", "postgresql:", "postgresql+", "postgres:")):
            raise ValueError("must be a sqlite:/// or postgresql:// URL")
        return value


# auto, HOST:PORT of a Ray head node, or ray://HOST:PORT (Ray Client); host names, IPv4 and bracketed IPv6
_RAY_ADDRESS = re.compile(r"auto|(ray://)?([A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[[0-9A-Fa-f:.]{2,45}\]):[0-9]{1,5}")


class ExecutorSpec(_Strict):
    """Where cases run: in this process (``local``), in worker processes of this machine (``processes``), or as
    calls to case workers on a Ray cluster (``ray``; docs/scale-out.md). ``executor: ray`` is short for
    ``{type: ray}``. Not part of the configuration hash: a run started on a cluster may be resumed in one process,
    and the other way round."""

    type: Literal["local", "processes", "ray"] = "local"
    address: str | None = Field(default=None, max_length=300, description=(
        "ray: auto (the cluster this machine belongs to), HOST:PORT of the head node, or ray://HOST:PORT "
        "(Ray Client); default auto"))
    workers: int | None = Field(default=None, ge=1, le=MAX_CONCURRENCY, description=(
        "ray: case workers (one CPU each, spread over the nodes); default one per CPU of the cluster. processes: "
        "worker processes on this machine; default one per CPU"))

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: object) -> object:
        return {"type": value} if isinstance(value, str) else value

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None and not _RAY_ADDRESS.fullmatch(value):
            raise ValueError("must be auto, HOST:PORT or ray://HOST:PORT")
        return value

    @model_validator(mode="after")
    def _settings_of_the_type(self) -> ExecutorSpec:
        if self.type != "ray" and self.address is not None:
            raise ValueError("address is a setting of executor type ray")
        if self.type == "local" and self.workers is not None:
            raise ValueError("workers is a setting of executor types processes and ray")
        return self


class MetricsSpec(_Strict):
    findings: list[str] = Field(default_factory=list, description="label names scored; default: every label")
    thresholds: Probability | dict[str, Probability] = Field(default=0.5, description="one, or per finding")
    bootstrap: int = Field(default=1000, ge=0, le=MAX_BOOTSTRAP,
                           description="bootstrap resamples for 95% CIs (0: none; at most 100000)")
    confidence: float = Field(default=0.95, gt=0, lt=1)
    subgroups: list[str] = Field(default_factory=list, description="dataset subgroup columns to break down by")

    def threshold_for(self, finding: str) -> float:
        return self.thresholds if isinstance(self.thresholds, float) else self.thresholds.get(finding, 0.5)


class StudyConfig(_Strict):
    name: str = Field(min_length=1, max_length=100, description="also names its runs: safe characters only")
    description: str = ""
    planners: Planners = Field(default_factory=lambda: _default_planners())
    arms: list[Arm] = Field(default_factory=list, description="configurations compared; none: one arm 'default'")
    experts: list[str | ExpertRef] = Field(default_factory=list, description="tools offered/used; empty: all")
    graph: Graph
    dataset: DatasetSpec | None = None
    repeats: int = Field(default=1, ge=1, le=MAX_REPEATS, description="runs of every case (at most 1000)")
    seeds: int | Annotated[list[int], Field(max_length=MAX_REPEATS)] = Field(
        default=0, description="a base seed (repeat r gets base + r) or one per repeat")
    concurrency: ConcurrencySpec = Field(default_factory=ConcurrencySpec)
    store: StoreSpec = Field(default_factory=StoreSpec)
    executor: ExecutorSpec = Field(default_factory=ExecutorSpec)
    metrics: MetricsSpec | None = None

    _source: LocatedDocument | None = PrivateAttr(default=None)
    _targets: TargetPolicy = PrivateAttr(default_factory=TargetPolicy)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        problem = name_problem(value)  # the name starts every run id, a key and a folder name
        if problem is not None:
            raise ValueError(problem)
        return value

    @property
    def source_file(self) -> Path | None:
        return self._source.file if self._source else None

    @property
    def base_dir(self) -> Path:
        """Where the dataset's relative paths start: the YAML file's folder (the working directory otherwise)."""
        return self._source.file.parent if self._source else Path.cwd()

    @property
    def targets(self) -> TargetPolicy:
        """The ``_target_`` policy this study was validated under (a run resolves its targets with it)."""
        return self._targets

    def seed_for(self, repeat: int) -> int:
        return self.seeds[repeat] if isinstance(self.seeds, list) else self.seeds + repeat

    def arm_planners(self) -> dict[str, Planners]:
        """Arm name -> role -> planner, with the top-level planners filling roles an arm leaves out."""
        if not self.arms:
            return {"default": dict(self.planners)}
        return {arm.name: {**self.planners, **arm.planners} for arm in self.arms}

    def tool_names(self, known_tools: Iterable[str] = BUILTIN_TOOL_NAMES) -> list[str]:
        """The tools this study offers (agent loop) or may call (pipeline)."""
        if not self.experts:
            return list(known_tools)
        return [name for ref in self.experts for name in ([ref] if isinstance(ref, str) else ref.tools)]

    def cases(self, settings: Settings | None = None) -> list[Case]:
        """The dataset's cases; errors in the YAML's dataset section are located at its line."""
        return list(self.iter_cases(settings))

    def iter_cases(self, settings: Settings | None = None) -> Iterator[Case]:
        """The dataset's cases one by one (a manifest is read row by row), errors located as in :meth:`cases`."""
        if self.dataset is None:
            raise StudyConfigError("this workflow has no dataset", field="dataset")
        try:
            yield from iter_dataset(self.dataset, self.base_dir, settings)
        except StudyConfigError as exc:
            if exc.file is not None or self._source is None or not (exc.field or "").startswith("dataset"):
                raise
            loc = tuple(exc.field.split(".")) if exc.field else ("dataset",)
            raise self._source.error([Problem(loc, exc.message.split(": ", 1)[-1])]) from exc

