"""The case worker of a study on a Ray cluster, and the de-identified artifacts that travel to and from it.

A :class:`CaseWorker` is a Ray actor (one CPU) holding a :class:`~medagent.studies.runner.StudyRunner` built from
the study on its own node, with its node's settings (``MEDAGENT_*`` of the ``ray start`` environment: home,
weights, de-identification key). Each call runs one case through :meth:`StudyRunner.execute_one`, the per-case path
of a local run, and hands the outcome back: the driver writes it to the store.

Raw images never leave the driver: it attaches (loads and de-identifies) each image of a case itself, as a local
run does, and ships only the stored artifact (its record and the de-identified pixels, :func:`artifact_payload`).
The worker imports them into its own artifact store (:func:`import_artifacts`: sha256 and suffix checked) and the
case uses them by id (``_WorkItem.attached``), reading no image file. Workers still de-identify what they derive
(e.g. DICOM they write), with the same key: the driver checks the workers' key fingerprint. The artifacts the case
refers to (masks, overlays, ...) travel back with the outcome and are stored in the driver's artifact store under
the same ids.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medagent.config import Settings
from medagent.errors import MedagentError, UnknownArtifact
from medagent.imaging.deid_secret import load_or_create_secret
from medagent.store import CaseResult, StudyStore, ToolCallRecord
from medagent.store.engine import medagent_version
from medagent.tools.artifacts import Artifact, ArtifactStore, referenced_ids

if TYPE_CHECKING:
    from medagent.studies.config import StudyConfig
    from medagent.studies.runner import _WorkItem

logger = logging.getLogger(__name__)
MAX_ARTIFACTS = 64  # per case: a case refers to its inputs and a few masks or overlays
MAX_ARTIFACT_BYTES = 1024**3  # per case, all together
_SUFFIX = re.compile(r"(\.[a-z0-9]{1,8}){0,2}")
ArtifactPayload = tuple[str, bytes]  # (the Artifact record as JSON, the stored file's bytes): all that travels


@dataclass
class CaseReply:
    result: CaseResult
    messages: list[dict[str, Any]]
    calls: list[ToolCallRecord]
    node_id: str
    artifacts: list[ArtifactPayload] = field(default_factory=list)


def key_fingerprint(settings: Settings) -> str:
    """A one-way fingerprint of the de-identification key: equal on two machines iff their keys are."""
    secret = load_or_create_secret(settings.home, settings.deid_secret)
    return hashlib.sha256(b"medagent de-identification key check\0" + secret).hexdigest()[:16]


def image_paths(item: _WorkItem) -> list[Path]:
    """Every image a case attaches: its own, its question's, its dialogue's."""
    case = item.case
    found = [*case.images, *(case.question.images if case.question else ()),
             *(case.dialogue.images if case.dialogue else ())]
    return list(dict.fromkeys(found))


def artifact_payload(artifact: Artifact) -> ArtifactPayload:
    """What travels of a stored artifact: its record and its file's bytes (de-identified: the store holds no PHI)."""
    return artifact.model_dump_json(), artifact.path.read_bytes()


def import_artifacts(store: ArtifactStore, artifacts: Iterable[ArtifactPayload]) -> list[str]:
    """Store artifacts the other side of the cluster sent under the ids they have there (content and metadata make
    the id); the ids stored. One whose bytes do not match its sha256, or whose file suffix is odd, is left out."""
    stored = []
    for record, data in artifacts:
        artifact = Artifact.model_validate_json(record)
        suffix = artifact.path.name.removeprefix(artifact.sha256)
        if hashlib.sha256(data).hexdigest() != artifact.sha256 or not _SUFFIX.fullmatch(suffix):
            logger.warning("an artifact %s came damaged and was not stored", artifact.id)
            continue
        copy = store.put_bytes(data, artifact.kind, artifact.media_type, suffix, metadata=artifact.metadata or None,
                               provenance=artifact.provenance)
        if copy.id != artifact.id:
            logger.warning("artifact %s was stored as %s", artifact.id, copy.id)
            continue
        stored.append(copy.id)
    return stored


def collect_artifacts(store: ArtifactStore, reply: CaseReply, known: Iterable[str] = ()) -> list[ArtifactPayload]:
    """The artifacts a case's outcome names, as (record, bytes), bounded in count and size; ``known``: ids the
    driver has already (the images it attached), not sent back."""
    values = [reply.result.result, reply.messages, [[call.arguments, call.output] for call in reply.calls]]
    found: list[ArtifactPayload] = []
    skip = set(known)
    total = 0
    for artifact_id in [found_id for found_id in referenced_ids(values) if found_id not in skip][:MAX_ARTIFACTS]:
        try:
            artifact = store.get(artifact_id)
        except MedagentError:  # an id-shaped string that is no artifact here
            continue
        if total + artifact.size_bytes > MAX_ARTIFACT_BYTES:
            logger.warning("a case's artifacts exceed %d bytes: the rest stay on the worker", MAX_ARTIFACT_BYTES)
            break
        found.append(artifact_payload(artifact))
        total += artifact.size_bytes
    return found


class CaseWorker:
    """The body of a case worker actor (``ray.remote(CaseWorker)`` on the driver; Ray stays out of this module's
    imports so the class is importable without it)."""

    def __init__(self, config: StudyConfig, store_url: str, board: Any, holder: str) -> None:
        import ray

        from medagent.studies.cluster_limits import install_cluster_limits
        from medagent.studies.runner import StudyRunner

        self.settings = Settings()
        self.store = StudyStore.open(store_url, self.settings.home)  # kept memory reads earlier answers back
        try:
            self.runner = StudyRunner(config, self.store, self.settings)
            install_cluster_limits(self.runner, board, holder)
        except BaseException:
            self.store.close()
            raise
        self.node_id: str = ray.get_runtime_context().get_node_id()

    def ready(self) -> dict[str, str]:
        """What the driver checks before sending cases: the node, medagent's version, the key fingerprint."""
        return {"node_id": self.node_id, "version": medagent_version(), "key": key_fingerprint(self.settings)}

    async def run(self, run_id: str, item: _WorkItem, images: dict[str, Any]) -> CaseReply:
        """One case; ``images``: image id -> object ref of its de-identified artifact (``item.attached`` names the
        ids by path). They are stored here first; the case then reads them by id, never a file."""
        try:
            payloads = [await ref for ref in images.values()]
            stored = await asyncio.to_thread(import_artifacts, self.runner.toolbox.store, payloads)
            missing = set(item.attached.values()) - set(stored)
            if missing:
                raise UnknownArtifact(f"{len(missing)} of the case's images arrived damaged or not at all")
        except (OSError, MedagentError) as exc:
            logger.warning("a case's images could not be stored on the worker: %s", type(exc).__name__)
            return CaseReply(self.runner.failed_result(item, exc), [], [], self.node_id)
        result, messages, calls = await self.runner.execute_one(run_id, item)
        reply = CaseReply(result, messages, calls, self.node_id)
        reply.artifacts = await asyncio.to_thread(collect_artifacts, self.runner.toolbox.store, reply,
                                                  item.attached.values())
        return reply

    async def close(self) -> None:
        await self.runner.aclose()
        self.runner.toolbox.close()
        self.store.close()
