"""The case worker of a study on a Ray cluster, and the images and artifacts that travel to and from it.

A :class:`CaseWorker` is a Ray actor (one CPU) holding a :class:`~medagent.studies.runner.StudyRunner` built from
the study on its own node, with its node's settings (``MEDAGENT_*`` of the ``ray start`` environment: home,
weights, de-identification key). Each call runs one case through :meth:`StudyRunner.execute_one`, the per-case path
of a local run, and hands the outcome back: the driver writes it to the store.

No shared filesystem is assumed. The driver reads a case's image files and puts their bytes in Ray's object store;
the worker writes them into an owner-only temporary folder for the time of the case, under their own file names,
and attaches them there (so de-identification happens where it does in a local run, with the same key: the
driver checks the workers' key fingerprint). The artifacts the case refers to (its de-identified inputs, masks,
overlays) travel back with the outcome and are stored in the driver's artifact store under the same ids.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from medagent.config import Settings
from medagent.errors import MedagentError
from medagent.files import private_dir
from medagent.imaging.deid_secret import load_or_create_secret
from medagent.store import CaseResult, StudyStore, ToolCallRecord
from medagent.store.engine import medagent_version
from medagent.tools.artifacts import ArtifactStore, referenced_ids

if TYPE_CHECKING:
    from medagent.studies.config import StudyConfig
    from medagent.studies.runner import _WorkItem

logger = logging.getLogger(__name__)
MAX_ARTIFACTS = 64  # per case: a case refers to its inputs and a few masks or overlays
MAX_ARTIFACT_BYTES = 1024**3  # per case, all together
MAX_SERIES_FILES = 10_000  # files of one DICOM series folder
ImageBytes = bytes | dict[str, bytes]  # a file, or a folder (a DICOM series): relative POSIX name -> bytes


@dataclass
class CaseReply:
    result: CaseResult
    messages: list[dict[str, Any]]
    calls: list[ToolCallRecord]
    node_id: str
    artifacts: list[tuple[str, bytes]] = field(default_factory=list)  # (Artifact JSON, its bytes)


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


def read_image(path: Path, max_bytes: int) -> ImageBytes | None:
    """The bytes the driver ships for ``path``; None when it cannot (missing, too large: the worker's own attach
    then fails as a local one would)."""
    try:
        if path.is_file():
            return path.read_bytes() if path.stat().st_size <= max_bytes else None
        if not path.is_dir():
            return None
        files = sorted(child for child in path.rglob("*") if child.is_file())
        if len(files) > MAX_SERIES_FILES or sum(child.stat().st_size for child in files) > max_bytes:
            return None
        return {child.relative_to(path).as_posix(): child.read_bytes() for child in files}
    except OSError:
        return None


def _write_new(target: Path, data: bytes) -> None:
    private_dir(target.parent)
    handle = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(handle, "wb") as stream:
        stream.write(data)


def materialize(original: Path, content: ImageBytes, folder: Path) -> Path:
    """Write shipped image bytes under ``folder`` with the original's name (its suffix says its format)."""
    target = folder / hashlib.sha256(str(original).encode()).hexdigest()[:16] / original.name
    if isinstance(content, bytes):
        _write_new(target, content)
        return target
    for relative, data in content.items():
        parts = PurePosixPath(relative).parts
        if not parts or relative.startswith("/") or any(part in ("", ".", "..") for part in parts):
            raise ValueError("a shipped series file name leaves its folder")
        _write_new(target.joinpath(*parts), data)
    return target


def relocated(item: _WorkItem, moved: dict[Path, Path]) -> _WorkItem:
    """``item`` with its image paths replaced by the local copies."""
    def paths(found: list[Path]) -> list[Path]:
        return [moved.get(path, path) for path in found]

    case = item.case
    update: dict[str, Any] = {"images": paths(case.images)}
    if case.question is not None:
        update["question"] = case.question.model_copy(update={"images": paths(case.question.images)})
    if case.dialogue is not None:
        update["dialogue"] = case.dialogue.model_copy(update={"images": paths(case.dialogue.images)})
    return item.model_copy(update={"case": case.model_copy(update=update)})


def collect_artifacts(store: ArtifactStore, reply: CaseReply) -> list[tuple[str, bytes]]:
    """The artifacts a case's outcome names, as (record, bytes), bounded in count and size."""
    values = [reply.result.result, reply.messages, [[call.arguments, call.output] for call in reply.calls]]
    found: list[tuple[str, bytes]] = []
    total = 0
    for artifact_id in referenced_ids(values)[:MAX_ARTIFACTS]:
        try:
            artifact = store.get(artifact_id)
        except MedagentError:  # an id-shaped string that is no artifact here
            continue
        if total + artifact.size_bytes > MAX_ARTIFACT_BYTES:
            logger.warning("a case's artifacts exceed %d bytes: the rest stay on the worker", MAX_ARTIFACT_BYTES)
            break
        found.append((artifact.model_dump_json(), artifact.path.read_bytes()))
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
        """One case; ``images``: original path -> object ref of its bytes."""
        with tempfile.TemporaryDirectory(prefix="medagent-case-") as folder:  # 0700, removed with the copies
            try:
                moved = {}
                for original, ref in images.items():
                    content = await ref
                    moved[Path(original)] = await asyncio.to_thread(materialize, Path(original), content,
                                                                    Path(folder))
                local = relocated(item, moved)
            except (OSError, ValueError) as exc:
                logger.warning("a case's images could not be written on the worker: %s", type(exc).__name__)
                return CaseReply(self.runner.failed_result(item, exc), [], [], self.node_id)
            result, messages, calls = await self.runner.execute_one(run_id, local)
        reply = CaseReply(result, messages, calls, self.node_id)
        reply.artifacts = await asyncio.to_thread(collect_artifacts, self.runner.toolbox.store, reply)
        return reply

    async def close(self) -> None:
        await self.runner.aclose()
        self.runner.toolbox.close()
        self.store.close()
