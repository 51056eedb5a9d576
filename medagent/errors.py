"""One error taxonomy for every room of medagent.

Four families, each with a stable ``code`` that callers (planner loop, CLI, HTTP
service, study runner) can switch on without parsing messages:

* :class:`ModelRetry` - the planner sent something invalid; tell it what to fix
  and let it try again.
* :class:`ToolFailure` - the tool ran (or refused to) for a reason the planner can
  adapt to: a failed modality precondition, an unusable input image.
* :class:`ConfigurationError` - a developer or configuration mistake; retrying
  will not help, a human must change something.
* :class:`InfrastructureError` - the machinery failed: weights missing, out of
  memory, timeout, a dead server.

Messages never carry patient data: they name artifact ids, tag keywords and
limits, never file contents, DICOM values or user paths.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

ErrorFamily = Literal["retry", "tool_failure", "configuration", "infrastructure"]


class MedagentError(Exception):
    """Base of every error medagent raises on purpose."""

    family: ClassVar[ErrorFamily]
    code: ClassVar[str] = "medagent_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe view for tool results, logs and CLI ``--json`` output."""
        return {"family": self.family, "code": self.code, "message": self.message, **self.details}


# -- family 1: ask the model to retry ------------------------------------------------


class ModelRetry(MedagentError):
    """The planner's call was invalid; the message says how to correct it."""

    family = "retry"
    code = "retry"


class InvalidToolArguments(ModelRetry):
    code = "invalid_arguments"


class UnknownTool(ModelRetry):
    code = "unknown_tool"


class ToolNotOffered(ModelRetry):
    """A call to a tool that was not offered in that turn (not among the study's experts, or no image suits it)."""

    code = "tool_not_offered"


class TooManyToolCalls(ModelRetry):
    """A call past the per-turn or per-question cap on tool calls; it did not run."""

    code = "too_many_tool_calls"


class ArgumentsTooLarge(InvalidToolArguments):
    code = "arguments_too_large"


# -- family 2: a failure the model can adapt to ------------------------------------


class ToolFailure(MedagentError):
    family = "tool_failure"
    code = "tool_failure"


class PreconditionFailed(ToolFailure):
    """The input does not suit this expert (wrong modality, dimensionality, body part)."""

    code = "precondition_failed"


class UnknownArtifact(ToolFailure):
    code = "unknown_artifact"


class ApprovalRejected(ToolFailure):
    code = "approval_rejected"


class ImageInputError(ToolFailure):
    """An input image was refused before or while decoding. Raised fast, without large allocations."""

    code = "image_input"


class UnsupportedFormat(ImageInputError):
    code = "unsupported_format"


class FileTooLarge(ImageInputError):
    code = "file_too_large"


class ImageTooLarge(ImageInputError):
    """Pixel count beyond the cap (decompression bombs, huge NIfTI dimensions)."""

    code = "image_too_large"


class TruncatedFile(ImageInputError):
    code = "truncated_file"


class CorruptFile(ImageInputError):
    code = "corrupt_file"


class PathOutsideWorkspace(ImageInputError):
    code = "path_outside_workspace"


class InputNotFound(ImageInputError):
    code = "input_not_found"


# -- family 3: a developer or configuration mistake ---------------------------------


class ConfigurationError(MedagentError):
    family = "configuration"
    code = "configuration"


class ApprovalRequired(ConfigurationError):
    """A tool that needs human approval was called without it (the graph must interrupt first)."""

    code = "approval_required"


class DuplicateTool(ConfigurationError):
    code = "duplicate_tool"


class MissingDependency(ConfigurationError):
    code = "missing_dependency"


class SessionNotFound(ConfigurationError):
    """No session with this id belongs to this owner (whether it exists for another owner is not said)."""

    code = "session_not_found"


class PlannerRejected(ConfigurationError):
    """The planner server refused the request (HTTP 4xx other than 408/429): fix the request, do not retry."""

    code = "planner_rejected"


class ModelNotServed(ConfigurationError):
    """The configured model id is not among those the server reports; medagent never substitutes one."""

    code = "model_not_served"


class ReplicaModelMismatch(ConfigurationError):
    """Replicas of one planner role (``endpoints``) serve different models; named by index, never by URL."""

    code = "replica_model_mismatch"


class SecretInvalid(ConfigurationError):
    """A configured secret (``MEDAGENT_DEID_SECRET``, ``deid.secret``) is too short or not text; never echoed."""

    code = "secret_invalid"


class InsecurePermissions(ConfigurationError):
    """A secret or private file is readable by group or others; the message says to ``chmod 600`` it."""

    code = "insecure_permissions"


class InvalidName(ConfigurationError):
    """A run id, study name or session id outside the safe charset (see medagent.names)."""

    code = "invalid_name"


class PathOutsideHome(ConfigurationError):
    """An output path that would resolve outside the folder it belongs in."""

    code = "path_outside_home"


class BackendConflict(ConfigurationError):
    """A planner backend that does not fit its configuration (``openai`` without an endpoint, ``embedded``
    with one)."""

    code = "backend_conflict"


class ComponentContract(ConfigurationError):
    """A plugged-in component (a ``_target_`` planner factory, role or tool factory) returned something
    that does not meet its documented contract."""

    code = "component_contract"


class ExpertToolsMismatch(ComponentContract):
    """A study's ``experts:`` entry declares tool names its factory did not return (or returned others)."""

    code = "expert_tools_mismatch"


class LinearHeadMismatch(ConfigurationError):
    """A card's linear-probe file does not fit its model and labels (tensor names or shapes)."""

    code = "linear_head_mismatch"


# -- family 4: infrastructure --------------------------------------------------------


class InfrastructureError(MedagentError):
    family = "infrastructure"
    code = "infrastructure"


class WeightsUnavailable(InfrastructureError):
    """Model weights are not on disk. The message names the file, the folder and the source URL."""

    code = "weights_unavailable"


class ChecksumMismatch(InfrastructureError):
    code = "checksum_mismatch"


class ExpertOutOfMemory(InfrastructureError):
    code = "out_of_memory"


class ToolTimeout(InfrastructureError):
    code = "timeout"


class ExpertCrashed(InfrastructureError):
    code = "expert_crashed"


class PlannerUnavailable(InfrastructureError):
    """The planner server could not be reached (after retries)."""

    code = "planner_unavailable"


class PlannerTimeout(InfrastructureError):
    code = "planner_timeout"


class PlannerRateLimited(InfrastructureError):
    code = "planner_rate_limited"


class PlannerServerError(InfrastructureError):
    code = "planner_server_error"


class PlannerProtocolError(InfrastructureError):
    """The server answered with something that is not a valid chat completion (bad JSON, cut stream)."""

    code = "planner_protocol_error"


class PlannerAnswerTooLarge(PlannerProtocolError):
    """The planner's streamed answer (text and tool calls) went past the size cap; reading stopped there."""

    code = "planner_answer_too_large"


class ResourceExhausted(InfrastructureError):
    """medagent's own work (bootstrap resamples, a manifest's rows) would exceed memory or a size cap."""

    code = "resource_exhausted"


class PlannerMisbehaved(InfrastructureError):
    """The planner kept producing invalid tool calls, or kept calling tools past the step limit."""

    code = "planner_misbehaved"


class SpecialistFailed(InfrastructureError):
    """A specialist model's server (``specialist_vlm`` family) could not be reached, refused the request or sent
    a malformed, cut-off or oversized answer; ``cause`` is the wire-level code."""

    code = "specialist_failed"



class RemoteExpertError(InfrastructureError):
    """An expert service (``medagent expert serve``) failed to answer a call; the subclasses say how."""

    code = "remote_expert"


class RemoteExpertUnavailable(RemoteExpertError):
    """The expert service could not be reached (refused, down) or said it cannot serve now (5xx)."""

    code = "remote_unavailable"


class RemoteExpertTimeout(RemoteExpertError):
    """The expert service did not connect or answer within the card's timeouts."""

    code = "remote_timeout"


class RemoteExpertCrashed(RemoteExpertError):
    """The connection to the expert service dropped while a call was in flight (the server died mid-call)."""

    code = "remote_crashed"


class RemoteProtocolMismatch(RemoteExpertError):
    """The expert service speaks another protocol version than this medagent (upgrade one of the two)."""

    code = "remote_protocol_mismatch"


class RemoteResponseInvalid(RemoteExpertError):
    """The expert service answered with something that is not a valid reply (bad JSON, too large, off-schema)."""

    code = "remote_response_invalid"


__all__ = [name for name, value in globals().items() if isinstance(value, type) and issubclass(value, Exception)]
