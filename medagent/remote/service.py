"""The expert service: tools hosted in their own process (and virtual environment), answered over HTTP.

:class:`ExpertService` holds the prediction logic and knows no web framework; :func:`create_app` is the thin
FastAPI wiring (:mod:`medagent.remote.app`). A later scale-out hosts the same app under Ray Serve without rewriting it, the service built once
per replica by Ray's app builder::

    from ray import serve
    from medagent.remote.app import create_app
    Experts = serve.deployment(serve.ingress(lambda: create_app(ExpertService.from_sources(sources, Settings())))())
    serve.run(Experts.bind())

A batch request fans out into concurrent calls of the one invocation path (the tool's registry: validation,
modality check, policy), so the expert runtime's micro-batcher runs them as one model batch.
"""

from __future__ import annotations

import asyncio
import base64
import json
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from medagent import __version__
from medagent.config import Settings
from medagent.errors import (
    ConfigurationError,
    ExpertCrashed,
    MedagentError,
    RemoteProtocolMismatch,
    UnknownArtifact,
)
from medagent.imaging.limits import ImageLimits
from medagent.imaging.record import ImageRecord
from medagent.remote.payload import decode
from medagent.remote.protocol import (
    MAX_ARTIFACT_BYTES,
    MAX_ARTIFACT_METADATA_BYTES,
    MAX_ARTIFACTS_PER_ITEM,
    MAX_ITEMS,
    MAX_MESSAGE,
    MAX_REQUEST_BYTES,
    PROTOCOL_VERSION,
    ArtifactPayload,
    BatchRequest,
    BatchResponse,
    CallItem,
    Health,
    ItemResult,
    Readiness,
    ServiceDescription,
    ToolDescription,
    WireError,
    library_versions,
)
from medagent.tools.artifacts import ArtifactKind, ArtifactStore, referenced_ids
from medagent.tools.registry import ToolRegistry
from medagent.tools.spec import Tool, ToolContext

MAX_INFLIGHT_REQUESTS = 8  # batch requests read and answered at once: bounds the memory hostile clients can take
DEFAULT_ARTIFACT_TTL_S = 900.0  # how long what a call wrote waits for its client to fetch it
MAX_KEPT_ARTIFACTS = 4096  # written and not yet expired; the oldest go first past this


@dataclass
class PayloadContext(ToolContext):
    """A call's context on the service: the images that came with it, nothing else."""

    records: dict[str, ImageRecord] = field(default_factory=dict)

    def load_image(self, image_id: str) -> ImageRecord:
        if image_id not in self.records:
            raise UnknownArtifact(f"image {image_id!r} was not sent with this call")
        return self.records[image_id]


def wire_error(error: BaseException) -> WireError:
    """A typed error for the wire; anything untyped is a crash named by its type only (its text may quote input)."""
    typed = error if isinstance(error, MedagentError) else ExpertCrashed(f"the tool failed ({type(error).__name__})")
    text = "".join(ch if ch.isprintable() else " " for ch in typed.message)
    return WireError(code=typed.code, family=typed.family, message=text[:MAX_MESSAGE])


def _class_path(model: type[Any]) -> str | None:
    qualname = getattr(model, "__qualname__", "")
    return None if "<" in qualname else f"{model.__module__}:{qualname}"


class ExpertService:
    """Tools served to other processes: descriptions, readiness, health and batched typed predictions."""

    def __init__(self, tools: list[Tool[Any, Any]], *, work_dir: Path | None = None,
                 limits: ImageLimits | None = None, closers: list[Any] | None = None,
                 artifact_ttl_s: float = DEFAULT_ARTIFACT_TTL_S) -> None:
        if not tools:
            raise ConfigurationError("an expert service needs at least one tool")
        if not artifact_ttl_s > 0:
            raise ConfigurationError("an expert service's artifact lifetime must be positive seconds")
        self.registry = ToolRegistry(tools)  # the one invocation path: validation, policy, concurrency
        self.limits = limits or ImageLimits()
        self._scratch = tempfile.TemporaryDirectory(prefix="medagent-expert-") if work_dir is None else None
        # what tools write (overlays, masks) waits here until its client fetches it, at most artifact_ttl_s
        self.store = ArtifactStore((work_dir or Path(self._scratch.name)) / "artifacts")  # type: ignore[union-attr]
        self.artifact_ttl_s = artifact_ttl_s
        self._written: OrderedDict[str, float] = OrderedDict()  # artifact id -> when it expires (monotonic)
        self.versions = {"medagent": __version__, **library_versions()}
        self._closers = list(closers or [])
        self.inflight = asyncio.Semaphore(MAX_INFLIGHT_REQUESTS)

    @classmethod
    def from_sources(cls, sources: list[str], settings: Settings, *,
                     artifact_ttl_s: float = DEFAULT_ARTIFACT_TTL_S) -> ExpertService:
        from medagent.remote.sources import resolve

        tools, closers = resolve(sources, settings)
        return cls(tools, limits=settings.limits, closers=closers, artifact_ttl_s=artifact_ttl_s)

    def describe(self) -> ServiceDescription:
        tools = []
        for tool in self.registry.tools():
            tools.append(ToolDescription(
                name=tool.name, card=tool.card.model_dump(mode="json"), policy=tool.policy.model_dump(mode="json"),
                input_schema=tool.input_model.model_json_schema(), output_schema=tool.output_model.model_json_schema(mode="serialization"),
                input_class=_class_path(tool.input_model), output_class=_class_path(tool.output_model),
                ready=self._ready(tool)))
        return ServiceDescription(protocol=PROTOCOL_VERSION, medagent=__version__, library_versions=self.versions,
                                  max_items=MAX_ITEMS, max_request_bytes=MAX_REQUEST_BYTES, tools=tools)

    def health(self) -> Health:
        return Health(status="ok", protocol=PROTOCOL_VERSION, medagent=__version__,
                      library_versions=self.versions, tools=len(self.registry.names()))

    def readiness(self) -> Readiness:
        states = {tool.name: self._ready(tool) for tool in self.registry.tools()}
        return Readiness(protocol=PROTOCOL_VERSION, ready=all(states.values()), tools=states)

    @staticmethod
    def _ready(tool: Tool[Any, Any]) -> bool:
        try:
            return bool(tool.ready())
        except Exception:  # noqa: BLE001 - a readiness check that fails means not ready, never a dead service
            return False

    async def predict(self, name: str, request: BatchRequest) -> BatchResponse:
        """Every item of the batch at once (the expert runtime batches them); one result or typed error each."""
        if request.protocol != PROTOCOL_VERSION:
            raise RemoteProtocolMismatch(f"this service speaks protocol {PROTOCOL_VERSION}, the request "
                                         f"{request.protocol}", expected=PROTOCOL_VERSION)
        self.registry.get(name)  # UnknownTool for the whole request
        results = await asyncio.gather(*(self._one(name, item) for item in request.items))
        return BatchResponse(protocol=PROTOCOL_VERSION, items=list(results))

    async def _one(self, name: str, item: CallItem) -> ItemResult:
        try:
            records = await asyncio.to_thread(  # megabytes of pixels: decoded off the event loop
                lambda: {key: decode(payload, self.limits) for key, payload in item.images.items()})
            context = PayloadContext(artifacts=self.store, image_ids=list(records), records=records)
            value = await self.registry.call(name, item.arguments, context)
            output = value.model_dump(mode="json")
            written = self._written_by(output, set(records))
        except Exception as exc:  # noqa: BLE001 - one item's failure is its own typed result, never the batch's
            return ItemResult(ok=False, error=wire_error(exc))
        provenance = output.get("provenance")
        if isinstance(provenance, dict) and isinstance(provenance.get("library_versions"), dict):
            for library, version in self.versions.items():  # what the service ran with, where the expert is silent
                provenance["library_versions"].setdefault(library, version)
        return ItemResult(ok=True, output=output, artifacts=written)

    def _written_by(self, output: Any, inputs: set[str]) -> list[str]:
        """The ids in ``output`` of artifacts in this service's store (what the call wrote), kept to be fetched."""
        found: list[str] = []
        for value in referenced_ids(output):
            if value in inputs:
                continue
            try:
                artifact = self.store.get(value)
            except UnknownArtifact:
                continue  # an id-like string that is no artifact here (a label, an input of the client's)
            if artifact.kind is not ArtifactKind.IMAGE:
                found.append(value)
        if len(found) > MAX_ARTIFACTS_PER_ITEM:
            raise ExpertCrashed(f"the tool wrote {len(found)} artifacts; a call may return at most "
                                f"{MAX_ARTIFACTS_PER_ITEM}")
        expires = time.monotonic() + self.artifact_ttl_s
        for artifact_id in found:
            self._written[artifact_id] = expires
            self._written.move_to_end(artifact_id)
        self._expire()
        return found

    def _expire(self) -> None:
        now, gone = time.monotonic(), []
        while self._written:
            oldest, expires = next(iter(self._written.items()))
            if expires > now and len(self._written) <= MAX_KEPT_ARTIFACTS:
                break
            del self._written[oldest]
            gone.append(oldest)
        if gone:
            kept = {self.store.get(artifact_id).sha256 for artifact_id in self._written}
            for artifact_id in gone:
                shared = self.store.get(artifact_id).sha256 in kept
                self.store.delete(artifact_id, keep_object=shared)

    async def artifact(self, artifact_id: str) -> ArtifactPayload:
        """An artifact a call wrote, while it is kept; :class:`UnknownArtifact` for anything else (input images,
        expired or never written ids alike)."""
        self._expire()
        if artifact_id not in self._written:
            raise UnknownArtifact(f"no artifact with id {artifact_id[:80]!r} is kept on this service (what a call "
                                  f"writes is kept {self.artifact_ttl_s:g} s)")
        artifact = self.store.get(artifact_id)
        if artifact.size_bytes > MAX_ARTIFACT_BYTES:
            raise ExpertCrashed(f"the artifact is {artifact.size_bytes} bytes; at most {MAX_ARTIFACT_BYTES} travel")
        if len(json.dumps([artifact.metadata, artifact.provenance], default=str)) > MAX_ARTIFACT_METADATA_BYTES:
            raise ExpertCrashed(f"the artifact's record is over {MAX_ARTIFACT_METADATA_BYTES} bytes")
        content = await asyncio.to_thread(lambda: base64.b64encode(artifact.path.read_bytes()).decode("ascii"))
        return ArtifactPayload(id=artifact.id, kind=cast(Any, artifact.kind.value), media_type=artifact.media_type,
                               sha256=artifact.sha256, content_b64=content, metadata=artifact.metadata,
                               provenance=artifact.provenance)

    def close(self) -> None:
        for tool in self.registry.tools():
            tool.close()
        for closer in self._closers:
            closer()
        if self._scratch is not None:
            self._scratch.cleanup()

