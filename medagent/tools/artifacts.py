"""Content-addressed artifact store: inputs, masks, overlays and reports, with ids and provenance.

Layout under ``root``::

    objects/<sha256[:2]>/<sha256><suffix>   the bytes, written once, never changed
    index/<artifact id>.json                 the Artifact record

Writers put bytes into a private temporary file in the target folder and
``os.replace`` it into place, so concurrent writers of the same content race
harmlessly and readers never see a partial file. Input images are stored as
de-identified pixel arrays (``.npy``) plus their record: no PHI reaches the store.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import re
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from medagent.errors import UnknownArtifact
from medagent.files import private_dir, write_private
from medagent.imaging.record import DeidReport, ImageRecord, Modality, SafeMetadata


class ArtifactKind(StrEnum):
    IMAGE = "image"
    MASK = "mask"
    OVERLAY = "overlay"
    HEATMAP = "heatmap"
    REPORT = "report"


_ID_PREFIX = {
    ArtifactKind.IMAGE: "img",
    ArtifactKind.MASK: "mask",
    ArtifactKind.OVERLAY: "ovl",
    ArtifactKind.HEATMAP: "heat",
    ArtifactKind.REPORT: "rep",
}


class Artifact(BaseModel):
    id: str
    kind: ArtifactKind
    media_type: str
    sha256: str
    size_bytes: int
    path: Path
    created_at: dt.datetime
    metadata: dict[str, Any] = Field(default_factory=dict)
    provenance: dict[str, Any] = Field(default_factory=dict)

    def reference(self) -> dict[str, str]:
        """What a planner may see: never the path."""
        return {"id": self.id, "kind": self.kind.value, "media_type": self.media_type}


_VALID_ID = re.compile(r"[a-z]{2,8}-[0-9a-f]{6,64}")


def referenced_ids(value: Any) -> list[str]:
    """Every string in a JSON value (a tool's output) shaped like an artifact id, in order, once each."""
    found: dict[str, None] = {}
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if _VALID_ID.fullmatch(item):
                found[item] = None
        elif isinstance(item, dict):
            pending.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            pending.extend(reversed(item))
    return list(found)


def _identity(sha256: str, metadata: dict[str, Any] | None) -> str:
    if not metadata:
        return sha256
    canonical = json.dumps(metadata, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(f"{sha256}\0{canonical}".encode()).hexdigest()


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        private_dir(self.root / "objects")
        private_dir(self.root / "index")
        # parsed index records, valid while the file's (mtime, size) is unchanged (another writer may replace it)
        self._cache: dict[str, tuple[tuple[int, int], Artifact]] = {}

    def _index_path(self, artifact_id: str) -> Path:
        if not isinstance(artifact_id, str) or not _VALID_ID.fullmatch(artifact_id):
            raise UnknownArtifact("not a valid artifact id (expected e.g. img-3fa2c9d1e0b4)")
        return self.root / "index" / f"{artifact_id}.json"

    def put_bytes(
        self,
        data: bytes,
        kind: ArtifactKind,
        media_type: str,
        suffix: str,
        *,
        metadata: dict[str, Any] | None = None,
        provenance: dict[str, Any] | None = None,
    ) -> Artifact:
        """Store ``data``; the id covers the bytes and ``metadata`` (when given), so one id never stands for
        two different records: the same pixels with another header are another artifact."""
        sha256 = hashlib.sha256(data).hexdigest()
        object_path = self.root / "objects" / sha256[:2] / f"{sha256}{suffix}"
        if not object_path.exists():
            write_private(object_path, data)
        artifact = Artifact(
            id=f"{_ID_PREFIX[kind]}-{_identity(sha256, metadata)[:12]}",
            kind=kind,
            media_type=media_type,
            sha256=sha256,
            size_bytes=len(data),
            path=object_path,
            created_at=dt.datetime.now(dt.UTC),
            metadata=metadata or {},
            provenance=provenance or {},
        )
        write_private(self._index_path(artifact.id), artifact.model_dump_json(indent=1).encode())
        return artifact

    def put_image(self, record: ImageRecord) -> Artifact:
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(record.pixels), allow_pickle=False)
        description = record.model_dump(mode="json", exclude={"pixels"})
        return self.put_bytes(
            buffer.getvalue(),
            ArtifactKind.IMAGE,
            "application/x-npy",
            ".npy",
            metadata={"record": description, "summary": record.summary()},
            provenance={"source_sha256": record.source_sha256, "deidentified": record.deid is not None},
        )

    def put_png(self, png: bytes, kind: ArtifactKind, *, metadata: dict[str, Any] | None = None,
                provenance: dict[str, Any] | None = None) -> Artifact:
        if provenance and provenance.get("untrained"):  # every overlay of random test-only weights says so
            from medagent.imaging.overlay import watermark_untrained

            png = watermark_untrained(png)
        return self.put_bytes(png, kind, "image/png", ".png", metadata=metadata, provenance=provenance)

    def get(self, artifact_id: str) -> Artifact:
        index_path = self._index_path(artifact_id)
        try:
            stat = index_path.stat()
            cached = self._cache.get(artifact_id)
            if cached is not None and cached[0] == (stat.st_mtime_ns, stat.st_size):
                return cached[1]
            artifact = Artifact.model_validate_json(index_path.read_bytes())
        except FileNotFoundError:
            raise UnknownArtifact(f"no artifact with id {artifact_id!r}") from None
        self._cache[artifact_id] = ((stat.st_mtime_ns, stat.st_size), artifact)
        return artifact

    def read_bytes(self, artifact_id: str) -> bytes:
        return self.get(artifact_id).path.read_bytes()

    def load_image(self, artifact_id: str) -> ImageRecord:
        artifact = self.get(artifact_id)
        if artifact.kind is not ArtifactKind.IMAGE:
            raise UnknownArtifact(f"artifact {artifact_id!r} is a {artifact.kind.value}, not an image")
        pixels = np.load(artifact.path, allow_pickle=False)
        fields = dict(artifact.metadata["record"])
        fields["metadata"] = SafeMetadata.model_validate(fields["metadata"])
        fields["deid"] = DeidReport.model_validate(fields["deid"]) if fields.get("deid") else None
        fields["modality"] = Modality(fields["modality"])
        for key in ("spacing_mm", "window"):
            if fields.get(key) is not None:
                fields[key] = tuple(fields[key])
        return ImageRecord(pixels=pixels, **fields)

    def delete(self, artifact_id: str, *, keep_object: bool = False) -> None:
        """Forget ``artifact_id``; its bytes too unless ``keep_object`` (another record may share them: the caller
        knows). Deleting what is not there is a no-op."""
        index_path = self._index_path(artifact_id)
        try:
            artifact = self.get(artifact_id)
        except UnknownArtifact:
            return
        self._cache.pop(artifact_id, None)
        index_path.unlink(missing_ok=True)
        objects = self.root / "objects" / artifact.sha256[:2]
        if not keep_object and artifact.path.parent == objects and artifact.path.name.startswith(artifact.sha256):
            artifact.path.unlink(missing_ok=True)  # only ever a file of this store's own layout

    def list(self, kind: ArtifactKind | None = None) -> list[Artifact]:
        found = []
        for path in sorted((self.root / "index").glob("*.json")):
            artifact = Artifact.model_validate_json(path.read_bytes())
            if kind is None or artifact.kind is kind:
                found.append(artifact)
        return found
