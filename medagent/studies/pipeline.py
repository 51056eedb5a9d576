"""Graphs a study can run: the agent loop, or a fixed pipeline of tool steps with explicit conditions.

The condition language is data, not code: each condition is one pydantic model with exactly one
key (``step_succeeded``, ``output_equals``, ``finding_probability_at_least``, ``all_of``, ``any_of``,
``not``), evaluated by :meth:`Condition.evaluate` over the outputs of earlier steps and the label
probabilities their tools declare (:class:`~medagent.tools.invoke.LabelProbabilities`): no condition
reads one tool's output fields. Argument
templates accept only the placeholders ``{image}``, ``{case_id}`` and (inside ``for_each``) ``{finding}``.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from medagent.workflows.agent_loop import LoopSettings

StepId = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Scalar = bool | int | float | str | None
# step id -> that step's output as JSON data (None when it failed or was skipped); a for_each
# step's entry maps each finding to its output
StepOutputs = Mapping[str, Any]
# step id -> the label probabilities its output declares (only steps whose tool declares them)
StepLabels = Mapping[str, Mapping[str, float]]
PLACEHOLDERS = ("image", "case_id", "finding")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def probability_of(labels: Mapping[str, float] | None, finding: str) -> float | None:
    """``finding``'s probability among a step's declared label probabilities (compared case-insensitively)."""
    wanted = finding.lower()
    for label, probability in (labels or {}).items():
        if label.lower() == wanted:
            return float(probability)
    return None


class OutputEquals(_Strict):
    """True when an earlier step's output field (a dotted path, e.g. ``usable``) equals ``equals``."""

    step: StepId
    field: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
    equals: Scalar

    def evaluate(self, outputs: StepOutputs) -> bool:
        value: Any = outputs.get(self.step)
        for name in self.field.split("."):
            if not isinstance(value, Mapping) or name not in value:
                return False
            value = value[name]
        return bool(value == self.equals)


class FindingAtLeast(_Strict):
    """A named finding's probability, as the step's tool declares it, is at least ``threshold``."""

    step: StepId
    finding: str = Field(min_length=1)
    threshold: Probability


class Condition(_Strict):
    """Exactly one key. A bare number for ``finding_probability_at_least`` means the current ``for_each`` finding."""

    step_succeeded: StepId | None = None
    output_equals: OutputEquals | None = None
    finding_probability_at_least: Probability | FindingAtLeast | None = None
    all_of: list[Condition] | None = Field(default=None, min_length=1)
    any_of: list[Condition] | None = Field(default=None, min_length=1)
    not_: Condition | None = Field(default=None, alias="not")

    @model_validator(mode="after")
    def _exactly_one(self) -> Condition:
        given = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(given) != 1:
            keys = ", ".join(f.alias or name for name, f in type(self).model_fields.items())
            raise ValueError(f"a condition needs exactly one of: {keys} (got {len(given)})")
        return self

    def evaluate(self, outputs: StepOutputs, labels: StepLabels | None = None, *, finding: str | None = None,
                 source_step: str | None = None) -> bool:
        """``labels``: the steps' declared label probabilities; ``finding``/``source_step``: the current for_each
        item and the step it came from."""
        labels = labels or {}
        if self.step_succeeded is not None:
            return outputs.get(self.step_succeeded) is not None
        if self.output_equals is not None:
            return self.output_equals.evaluate(outputs)
        if isinstance(self.finding_probability_at_least, FindingAtLeast):
            rule = self.finding_probability_at_least
            probability = probability_of(labels.get(rule.step), rule.finding)
            return probability is not None and probability >= rule.threshold
        if self.finding_probability_at_least is not None:
            if finding is None or source_step is None:
                raise ValueError("a bare finding_probability_at_least needs the current for_each finding")
            probability = probability_of(labels.get(source_step), finding)
            return probability is not None and probability >= self.finding_probability_at_least
        if self.all_of is not None:
            return all(c.evaluate(outputs, labels, finding=finding, source_step=source_step) for c in self.all_of)
        if self.any_of is not None:
            return any(c.evaluate(outputs, labels, finding=finding, source_step=source_step) for c in self.any_of)
        assert self.not_ is not None
        return not self.not_.evaluate(outputs, labels, finding=finding, source_step=source_step)

    def referenced_steps(self) -> list[str]:
        steps = [self.step_succeeded] if self.step_succeeded else []
        if self.output_equals:
            steps.append(self.output_equals.step)
        if isinstance(self.finding_probability_at_least, FindingAtLeast):
            steps.append(self.finding_probability_at_least.step)
        for child in [*(self.all_of or []), *(self.any_of or []), *([self.not_] if self.not_ else [])]:
            steps.extend(child.referenced_steps())
        return steps

    def uses_current_finding(self) -> bool:
        if isinstance(self.finding_probability_at_least, float):
            return True
        children = [*(self.all_of or []), *(self.any_of or []), *([self.not_] if self.not_ else [])]
        return any(child.uses_current_finding() for child in children)


class ForEach(_Strict):
    """Repeat the step once per label of an earlier step whose probability is at least ``findings_above``."""

    findings_above: Probability
    from_step: StepId | None = Field(default=None, description="the step whose tool declares label probabilities "
                                     "(a classifier); default: the earliest earlier step whose tool declares them")
    only: list[str] | None = Field(default=None, description="consider only these findings")
    max_items: int | None = Field(default=None, ge=1, description="at most this many, most probable first")

    def findings(self, labels: Mapping[str, float] | None) -> list[str]:
        """The source step's labels to repeat over, most probable first."""
        wanted = {name.lower() for name in self.only} if self.only else None
        chosen = [(float(probability), str(label)) for label, probability in (labels or {}).items()
                  if float(probability) >= self.findings_above and (wanted is None or str(label).lower() in wanted)]
        chosen.sort(key=lambda pair: (-pair[0], pair[1]))
        return [label for _, label in chosen[: self.max_items]]


def template_fields(value: Any) -> set[str]:
    """Placeholders used anywhere in an argument template (raises ValueError on malformed ones)."""
    if isinstance(value, str):
        names = set()
        for _, name, spec, conversion in string.Formatter().parse(value):
            if name is None:
                continue
            if spec or conversion or name not in PLACEHOLDERS:
                raise ValueError(f"'{{{name}}}' is not a placeholder (allowed: "
                                 f"{', '.join('{' + p + '}' for p in PLACEHOLDERS)}; write {{{{ for a brace)")
            names.add(name)
        return names
    if isinstance(value, Mapping):
        return set().union(*(template_fields(item) for item in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(template_fields(item) for item in value)) if value else set()
    return set()


def render_arguments(template: Any, variables: Mapping[str, str]) -> Any:
    """Fill placeholders; only plain substitution (no attribute access, no format specs - checked on load)."""
    if isinstance(template, str):
        return template.format_map({name: variables[name] for name in template_fields(template)})
    if isinstance(template, Mapping):
        return {key: render_arguments(item, variables) for key, item in template.items()}
    if isinstance(template, list):
        return [render_arguments(item, variables) for item in template]
    return template


class PipelineStep(_Strict):
    id: StepId
    tool: str = Field(description="a tool name from the registry")
    arguments: dict[str, Any] = Field(default_factory=lambda: {"image_id": "{image}"})
    when: Condition | None = Field(default=None, description="run the step only when this holds (else skipped)")
    for_each: ForEach | None = None
    gate: Condition | None = Field(default=None, description="checked after the step: when false the case stops "
                                   "here with outcome 'gated' (e.g. an unusable image)")
    optional: bool = Field(default=False, description="a failure is recorded but does not fail the case")

    @field_validator("arguments")
    @classmethod
    def _placeholders(cls, value: dict[str, Any]) -> dict[str, Any]:
        template_fields(value)  # raises on anything but the plain placeholders
        return value

    @model_validator(mode="after")
    def _check_templates(self) -> PipelineStep:
        if "finding" in template_fields(self.arguments) and self.for_each is None:
            raise ValueError("'{finding}' is used in arguments but the step has no for_each")
        return self


class SummarySpec(_Strict):
    include: list[StepId] | None = Field(default=None, description="steps whose results the summary lists; all "
                                         "by default")


class PipelineGraph(_Strict):
    type: Literal["pipeline"]
    steps: list[PipelineStep] = Field(min_length=1)
    summary: SummarySpec = Field(default_factory=SummarySpec)


class LoopSpec(LoopSettings):
    model_config = ConfigDict(extra="forbid")

    @field_validator("allowed_tools")
    @classmethod
    def _experts_name_the_tools(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:  # one list, checked against the known tools when the study loads
            raise ValueError("a study names the tools it offers in its top-level 'experts:' list")
        return value


class AgentLoopGraph(_Strict):
    type: Literal["agent_loop"]
    question: str = Field(min_length=1, description="asked about each case's images; {case_id} not expanded")
    loop: LoopSpec = Field(default_factory=LoopSpec)

