"""The typed tool interface: specs with model cards and policies, the registry, artifacts."""

from medagent.tools.artifacts import Artifact, ArtifactKind, ArtifactStore
from medagent.tools.registry import ToolRegistry, describe_validation_error
from medagent.tools.spec import ImageId, ModelCard, Tool, ToolContext, ToolPolicy

__all__ = [
    "Artifact",
    "ArtifactKind",
    "ArtifactStore",
    "ImageId",
    "ModelCard",
    "Tool",
    "ToolContext",
    "ToolPolicy",
    "ToolRegistry",
    "describe_validation_error",
]
