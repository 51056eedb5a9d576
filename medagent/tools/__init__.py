"""The typed tool interface: specs with model cards and policies, the registry, artifacts."""

from medagent.tools.artifacts import Artifact, ArtifactKind, ArtifactStore
from medagent.tools.plugin import ImageInput, UnavailableTool, expert_tool, tool, tools_from
from medagent.tools.registry import ToolRegistry, describe_validation_error
from medagent.tools.spec import ImageId, ModelCard, Tool, ToolContext, ToolPolicy

__all__ = [
    "Artifact",
    "ArtifactKind",
    "ArtifactStore",
    "ImageId",
    "ImageInput",
    "ModelCard",
    "Tool",
    "ToolContext",
    "ToolPolicy",
    "ToolRegistry",
    "UnavailableTool",
    "describe_validation_error",
    "expert_tool",
    "tool",
    "tools_from",
]
