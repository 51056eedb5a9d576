"""Loading study files: YAML -> validated :class:`StudyConfig`, with every error located at file:line: field.

    config = load_study("workflows/cxr-triage.yaml")   # StudyConfigError: "cxr-triage.yaml:14: graph.steps[2]..."
    cases = config.cases()                              # the dataset, paths relative to the YAML file
    digest = config_hash(config)                        # a resume under a changed configuration is refused
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ValidationError

from medagent.agents.planner import BACKENDS, Role
from medagent.errors import ConfigurationError
from medagent.studies.components import (
    DEFAULT_ALLOWED_PREFIXES,
    TargetPolicy,
    TargetRef,
    resolve_target,
    target_problem,
)
from medagent.studies.config import BUILTIN_TOOL_NAMES, ExpertRef, PlannerSpec, StudyConfig
from medagent.studies.datasets import BUILTIN_CASES
from medagent.studies.dialogue_graph import ROLE_ARGUMENTS, DialogueGraph
from medagent.studies.pipeline import PipelineGraph
from medagent.studies.vqa_graph import VqaGraph
from medagent.yaml_located import Loc, LocatedDocument, Problem, StudyConfigError, problems_from_validation


def _unwrap(annotation: Any) -> Any:
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _allowed_keys(root: type[BaseModel], loc: Loc) -> list[str] | None:
    """The keys a mapping at pydantic ``loc`` accepts (union tags in ``loc`` pick the member)."""
    current: Any = root
    for part in loc:
        current = _unwrap(current)
        if typing.get_origin(current) in (typing.Union, types.UnionType):
            members = [_unwrap(m) for m in typing.get_args(current)]
            chosen = [m for m in members if getattr(m, "__name__", None) == part
                      or (isinstance(m, type) and issubclass(m, BaseModel) and "type" in m.model_fields
                          and part in typing.get_args(m.model_fields["type"].annotation))]
            if not chosen:
                return None
            current = chosen[0]
            continue
        if typing.get_origin(current) in (list, dict):
            current = typing.get_args(current)[-1]
            continue
        if isinstance(current, type) and issubclass(current, BaseModel):
            fields = {f.alias or name: f for name, f in current.model_fields.items()}
            if part not in fields:
                return None
            current = fields[part].annotation
            continue
        return None
    current = _unwrap(current)
    if typing.get_origin(current) in (typing.Union, types.UnionType):
        models = [m for m in typing.get_args(current) if isinstance(m, type) and issubclass(m, BaseModel)]
        current = models[0] if len(models) == 1 else None
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or name for name, f in current.model_fields.items()]
    return None


def _known(names: Iterable[str]) -> str:
    return ", ".join(sorted(names))


def _target_problems(ref: TargetRef, loc: Loc, prefixes: Sequence[str], allow_any: bool,
                     extra_kwargs: Sequence[str] | None = None) -> list[Problem]:
    """Resolve ``ref`` now, as the run would: it must import, be a class or function defined in an allowed
    module (not merely re-exported by one), and accept its ``kwargs``: exactly, with ``extra_kwargs`` (what
    the runner adds) when the call is known; otherwise no unknown keyword. A file trusted with ``allow_any``
    is not imported while it is validated."""
    problem = target_problem(ref.target, allowed_prefixes=prefixes, allow_any=allow_any)
    if problem is None and not allow_any:
        try:
            target = resolve_target(ref.target, allowed_prefixes=prefixes, allow_any=allow_any)
        except ConfigurationError as exc:
            problem = exc.message
        else:
            try:
                signature = inspect.signature(target)
                if extra_kwargs is None:
                    signature.bind_partial(**ref.kwargs)
                else:
                    signature.bind(**ref.kwargs, **dict.fromkeys(extra_kwargs))
            except TypeError as exc:
                return [Problem((*loc, "kwargs"), f"'{ref.target}' does not accept these kwargs: {exc}")]
            except ValueError:  # no signature to check (a builtin): resolution already vetted it
                pass
    return [Problem((*loc, "_target_"), problem)] if problem else []


def _planner_problems(planners: Mapping[Role, PlannerSpec], loc: Loc, prefixes: Sequence[str],
                      allow_any: bool) -> list[Problem]:
    problems = []
    for role, spec in planners.items():
        if isinstance(spec.backend, TargetRef):
            problems += _target_problems(spec.backend, (*loc, role, "backend"), prefixes, allow_any,
                                         extra_kwargs=("config",))
        elif spec.backend != "auto" and spec.backend not in BACKENDS:
            problems.append(Problem((*loc, role, "backend"), f"unknown planner backend '{spec.backend}' "
                                    f"(known: auto, {_known(BACKENDS)})"))
        else:
            from medagent.agents.factory import backend_problem

            conflict = backend_problem(spec.planner_config())
            if conflict is not None:
                problems.append(Problem((*loc, role, "backend"), conflict))
        if "role" in spec.model_fields_set and spec.role != role:  # unset: the key names the role
            problems.append(Problem((*loc, role, "role"), f"role '{spec.role}' differs from its key '{role}'"))
    return problems


def _pipeline_problems(graph: PipelineGraph, known: set[str], offered: set[str]) -> list[Problem]:
    problems: list[Problem] = []
    earlier: dict[str, str] = {}  # step id -> tool
    for index, step in enumerate(graph.steps):
        loc: Loc = ("graph", "steps", index)
        if step.id in earlier:
            problems.append(Problem((*loc, "id"), f"step id '{step.id}' is used twice"))
        if step.tool not in known:
            problems.append(Problem((*loc, "tool"), f"unknown tool '{step.tool}' (known: {_known(known)})"))
        elif step.tool not in offered:
            problems.append(Problem((*loc, "tool"), f"tool '{step.tool}' is not among this study's experts"))
        source = step.for_each.from_step if step.for_each else None
        if step.for_each and source is None and not earlier:
            # which earlier step's tool declares label probabilities is checked when the tools are built
            problems.append(Problem((*loc, "for_each"), "no earlier step to take findings from; name from_step"))
        elif source is not None and source not in earlier:
            problems.append(Problem((*loc, "for_each", "from_step"), f"'{source}' is not an earlier step"))
        for key, condition, allowed in (("when", step.when, set(earlier)), ("gate", step.gate, {*earlier, step.id})):
            if condition is None:
                continue
            for name in condition.referenced_steps():
                if name not in allowed:
                    problems.append(Problem((*loc, key), f"refers to step '{name}', which does not run before it"))
            if condition.uses_current_finding() and (step.for_each is None or key == "gate"):
                problems.append(Problem((*loc, key), "a bare finding_probability_at_least needs for_each "
                                        "(or name step, finding and threshold)"))
        earlier[step.id] = step.tool
    for index, name in enumerate(graph.summary.include or []):
        if name not in earlier:
            problems.append(Problem(("graph", "summary", "include", index), f"unknown step '{name}'"))
    return problems


def reference_problems(config: StudyConfig, *, known_tools: Iterable[str] = BUILTIN_TOOL_NAMES,
                       allowed_prefixes: Sequence[str] = DEFAULT_ALLOWED_PREFIXES,
                       allow_any_target: bool = False) -> list[Problem]:
    """Checks across fields: names of tools, steps, backends, arms, subgroups; ``_target_`` allow-list."""
    problems: list[Problem] = []
    known = set(known_tools)
    for index, ref in enumerate(config.experts):
        if isinstance(ref, ExpertRef):
            problems += _target_problems(ref, ("experts", index), allowed_prefixes, allow_any_target)
            known.update(ref.tools)
        elif ref not in known:
            problems.append(Problem(("experts", index), f"unknown tool '{ref}' (known: {_known(known)})"))
    offered = set(config.tool_names(known))
    problems += _planner_problems(config.planners, ("planners",), allowed_prefixes, allow_any_target)
    arm_names: set[str] = set()
    for index, arm in enumerate(config.arms):
        if arm.name in arm_names:
            problems.append(Problem(("arms", index, "name"), f"arm name '{arm.name}' is used twice"))
        arm_names.add(arm.name)
        problems += _planner_problems(arm.planners, ("arms", index, "planners"), allowed_prefixes, allow_any_target)
    if isinstance(config.seeds, list) and len(config.seeds) != config.repeats:
        problems.append(Problem(("seeds",), f"{len(config.seeds)} seeds for {config.repeats} repeats"))
    if isinstance(config.concurrency.per_expert, dict):
        for name in config.concurrency.per_expert:
            if name not in offered:
                problems.append(Problem(("concurrency", "per_expert", name), f"'{name}' is not one of the experts"))
    if config.metrics is not None:
        if isinstance(config.metrics.thresholds, dict) and config.metrics.findings:
            for name in config.metrics.thresholds:
                if name not in config.metrics.findings:
                    problems.append(Problem(("metrics", "thresholds", name), f"'{name}' is not in metrics.findings"))
        columns = config.dataset.columns.subgroups if config.dataset else []
        for index, name in enumerate(config.metrics.subgroups):
            if name not in columns:
                problems.append(Problem(("metrics", "subgroups", index),
                                        f"'{name}' is not a dataset subgroup column (dataset.columns.subgroups)"))
    if isinstance(config.graph, PipelineGraph):
        problems += _pipeline_problems(config.graph, known, offered)
    problems += _dialogue_problems(config, offered)
    problems += _vqa_problems(config, offered)
    if isinstance(config.graph, DialogueGraph):  # role implementations must accept what their role is given
        for role, implementation in config.graph.roles.items():
            problems += _target_problems(implementation, ("graph", "roles", role), allowed_prefixes,
                                         allow_any_target, extra_kwargs=ROLE_ARGUMENTS[role])
    return problems


def _dialogue_problems(config: StudyConfig, offered: set[str]) -> list[Problem]:
    """A dialogue graph runs over a cases dataset, and only a dialogue graph can."""
    dialogue = isinstance(config.graph, DialogueGraph)
    problems = []
    if config.dataset is not None and dialogue != (config.dataset.type == "cases"):
        problems.append(Problem(("dataset", "type"), "a dialogue graph needs a 'cases' dataset" if dialogue else
                                f"a 'cases' dataset needs graph type 'dialogue' (not '{config.graph.type}')"))
    if isinstance(config.graph, DialogueGraph) and config.graph.strategy == "dialogue_with_experts" \
            and config.graph.expert not in offered:
        problems.append(Problem(("graph", "expert"), f"'{config.graph.expert}' is not one of the experts"))
    return problems


def _vqa_problems(config: StudyConfig, offered: set[str]) -> list[Problem]:
    """A vqa graph runs over a questions dataset (and only it can); arms' experts and steps name offered tools;
    arm settings that only a vqa graph acts on are refused elsewhere."""
    vqa = isinstance(config.graph, VqaGraph)
    problems = []
    if config.dataset is not None and vqa != (config.dataset.type == "questions"):
        problems.append(Problem(("dataset", "type"), "a vqa graph needs a 'questions' dataset" if vqa else
                                f"a 'questions' dataset needs graph type 'vqa' (not '{config.graph.type}')"))
    for index, arm in enumerate(config.arms):
        for key in ("experts", "prompt", "corruption"):
            if getattr(arm, key) is not None and not vqa:
                problems.append(Problem(("arms", index, key), f"only a vqa graph compares arms by {key}"))
        for position, name in enumerate(arm.experts or []):
            if name not in offered:
                problems.append(Problem(("arms", index, "experts", position), f"'{name}' is not one of the "
                                        f"study's experts ({_known(offered)})"))
    if isinstance(config.graph, VqaGraph):
        for index, step in enumerate(config.graph.steps):
            if step.tool not in offered:
                problems.append(Problem(("graph", "steps", index, "tool"), f"'{step.tool}' is not one of the "
                                        "experts"))
        if config.graph.steps and config.graph.mode != "expert_then_answer":
            problems.append(Problem(("graph", "steps"), "only mode expert_then_answer runs fixed expert steps"))
        if config.graph.judge and "assessor" not in config.planners and not any(
                "assessor" in arm.planners for arm in config.arms):
            problems.append(Problem(("graph", "judge"), "a judge needs planners.assessor (a model of its own, so no "
                                    "planner judges its own answers)"))
        if config.graph.mode == "expert_then_answer" and not config.graph.steps:
            problems.append(Problem(("graph", "steps"), "mode expert_then_answer needs at least one step"))
    return problems


def validate_study(document: LocatedDocument, *, known_tools: Iterable[str] = BUILTIN_TOOL_NAMES,
                   allowed_prefixes: Sequence[str] = DEFAULT_ALLOWED_PREFIXES, allow_any_target: bool = False,
                   check_paths: bool = False) -> StudyConfig:
    """Validate a parsed document; raise one StudyConfigError listing every problem, first one located."""
    if not isinstance(document.data, dict):
        raise document.error([Problem((), "the file must be a mapping with keys such as name and graph")])
    try:
        config = StudyConfig.model_validate(document.data)
    except ValidationError as exc:
        raise document.error(problems_from_validation(exc, lambda loc: _allowed_keys(StudyConfig, loc))) from None
    problems = reference_problems(config, known_tools=known_tools, allowed_prefixes=allowed_prefixes,
                                  allow_any_target=allow_any_target)
    dataset = config.dataset
    builtin = dataset is not None and dataset.type == "cases" and dataset.path == BUILTIN_CASES
    if check_paths and dataset is not None and not builtin and not (document.file.parent / dataset.path).exists():
        problems.append(Problem(("dataset", "path"), "does not exist (relative paths start at this file's folder)"))
    if problems:
        raise document.error(problems)
    config._source = document
    config._targets = TargetPolicy(tuple(allowed_prefixes), allow_any_target)
    return config


def load_study(path: str | os.PathLike[str], **options: Any) -> StudyConfig:
    """Read and validate a study file. ``options``: those of :func:`validate_study`."""
    return validate_study(LocatedDocument.read(Path(path)), **options)


def parse_study(text: str, file_name: str = "study.yaml", **options: Any) -> StudyConfig:
    """Validate YAML text (e.g. posted to a backend); relative dataset paths start at the working directory."""
    return validate_study(LocatedDocument.parse(text, Path.cwd() / file_name), **options)


def config_hash(config: StudyConfig) -> str:
    """sha256 of the validated config as canonical JSON (sorted keys, defaults filled in).

    Descriptions, concurrency, the store URL, the executor, API keys and dataset.max_cases are left out: they do
    not change results.
    """
    # dataset.max_cases only refuses oversized datasets: it never changes the results of a run that completes
    data = config.model_dump(mode="json", by_alias=True,
                             exclude={"description": True, "concurrency": True, "store": True, "executor": True,
                                      "dataset": {"max_cases"}})
    for planners in [data["planners"], *(arm["planners"] for arm in data["arms"])]:
        for spec in planners.values():
            spec.pop("api_key", None)
    for arm in data["arms"]:
        arm.pop("description", None)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def with_dataset(config: StudyConfig, path: Path) -> StudyConfig:
    """``config`` reading its cases from ``path`` (e.g. ``medagent run --dataset``); the dataset's type,
    columns and format stay as the study file declares them, except that a folder of images may stand in
    for an image study's manifest (cases without labels) or give a workflow without a dataset (chat.yaml)
    its images. The config hash changes with the path."""
    if not path.exists():
        raise StudyConfigError("--dataset: the path does not exist", field="dataset.path")
    images_folder = path.is_dir() and not isinstance(config.graph, DialogueGraph)
    if config.dataset is None and not images_folder:
        raise StudyConfigError("this workflow has no dataset to replace (give it a folder of images)", field="dataset")
    if images_folder and (config.dataset is None or config.dataset.type == "manifest"):
        from medagent.studies.datasets import DatasetSpec

        kept = config.dataset.model_dump(include={"modality", "max_cases"}) if config.dataset is not None else {}
        dataset = DatasetSpec(type="folder", path=str(path.resolve()), **kept)
    else:
        assert config.dataset is not None
        dataset = config.dataset.model_copy(update={"path": str(path.resolve())})
    return config.model_copy(update={"dataset": dataset})
