"""Studies: workflow/study YAML files, their datasets, and the components they name.

Public API::

    from medagent.studies import load_study, config_hash, StudyConfig, StudyConfigError, Case
"""

from medagent.studies.components import TargetPolicy, TargetRef, resolve_target, target_problem
from medagent.studies.config import (
    BUILTIN_TOOL_NAMES,
    Arm,
    ConcurrencySpec,
    ExpertRef,
    MetricsSpec,
    PlannerSpec,
    StoreSpec,
    StudyConfig,
)
from medagent.studies.datasets import Case, ColumnMapping, DatasetSpec, load_dataset
from medagent.studies.dialogue_graph import DialogueGraph
from medagent.studies.loading import (
    config_hash,
    load_study,
    parse_study,
    reference_problems,
    validate_study,
    with_dataset,
)
from medagent.studies.pipeline import (
    AgentLoopGraph,
    Condition,
    FindingAtLeast,
    ForEach,
    OutputEquals,
    PipelineGraph,
    PipelineStep,
    render_arguments,
)
from medagent.yaml_located import StudyConfigError

__all__ = [
    "BUILTIN_TOOL_NAMES", "AgentLoopGraph", "Arm", "Case", "ColumnMapping", "ConcurrencySpec",
    "Condition", "DatasetSpec", "DialogueGraph", "ExpertRef", "FindingAtLeast", "ForEach", "MetricsSpec", "OutputEquals",
    "PipelineGraph", "PipelineStep", "PlannerSpec", "StoreSpec", "StudyConfig", "StudyConfigError", "TargetPolicy",
    "TargetRef", "config_hash", "load_dataset", "load_study", "parse_study", "reference_problems", "render_arguments",
    "resolve_target", "target_problem", "validate_study", "with_dataset",
]
