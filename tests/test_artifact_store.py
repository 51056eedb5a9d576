"""The content-addressed artifact store: ids, dedup, round trips, id checks, concurrent writers."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from medagent.errors import UnknownArtifact
from medagent.imaging import ImageLoader, ImageRecord, Modality
from medagent.tools import ArtifactKind, ArtifactStore


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "store")


def object_files(store: ArtifactStore) -> list[Path]:
    return [p for p in (store.root / "objects").rglob("*") if p.is_file()]


@pytest.mark.parametrize(
    ("kind", "prefix"),
    [
        (ArtifactKind.IMAGE, "img-"),
        (ArtifactKind.MASK, "mask-"),
        (ArtifactKind.OVERLAY, "ovl-"),
        (ArtifactKind.HEATMAP, "heat-"),
        (ArtifactKind.REPORT, "rep-"),
    ],
)
def test_ids_carry_the_kind_prefix(store: ArtifactStore, kind: ArtifactKind, prefix: str) -> None:
    artifact = store.put_bytes(b"payload", kind, "application/octet-stream", ".bin")
    assert artifact.id == prefix + hashlib.sha256(b"payload").hexdigest()[:12]
    assert artifact.kind is kind


def test_same_content_gives_the_same_id_and_one_object(store: ArtifactStore) -> None:
    first = store.put_bytes(b"findings: none", ArtifactKind.REPORT, "text/plain", ".txt")
    second = store.put_bytes(b"findings: none", ArtifactKind.REPORT, "text/plain", ".txt")
    other = store.put_bytes(b"findings: some", ArtifactKind.REPORT, "text/plain", ".txt")
    assert first.id == second.id != other.id
    assert first.path == second.path
    assert len(object_files(store)) == 2
    assert sorted(a.id for a in store.list()) == sorted({first.id, other.id})


def test_get_and_read_bytes_round_trip(store: ArtifactStore) -> None:
    data = bytes(range(256)) * 4
    artifact = store.put_bytes(
        data, ArtifactKind.MASK, "application/octet-stream", ".bin",
        metadata={"label": "lung"}, provenance={"expert": "fake"},
    )
    fetched = store.get(artifact.id)
    assert fetched == artifact
    assert fetched.size_bytes == len(data)
    assert fetched.sha256 == hashlib.sha256(data).hexdigest()
    assert store.read_bytes(artifact.id) == data
    # A fresh store over the same root sees the same artifact.
    assert ArtifactStore(store.root).get(artifact.id) == artifact


def _assert_same_record(loaded: ImageRecord, original: ImageRecord) -> None:
    assert loaded.pixels.dtype == original.pixels.dtype
    np.testing.assert_array_equal(loaded.pixels, original.pixels)
    assert loaded.modality is original.modality
    assert loaded.spacing_mm == original.spacing_mm
    assert loaded.window == original.window
    assert loaded.metadata == original.metadata
    assert loaded.deid == original.deid
    assert loaded.source_sha256 == original.source_sha256


def test_image_round_trip_nih_png(store: ArtifactStore, loader: ImageLoader, nih_images: list[Path]) -> None:
    original = loader.load(nih_images[0], modality="DX")
    artifact = store.put_image(original)
    assert artifact.id.startswith("img-") and artifact.media_type == "application/x-npy"
    loaded = store.load_image(artifact.id)
    _assert_same_record(loaded, original)
    assert loaded.modality is Modality.DX and loaded.modality_declared_by_user


def test_image_round_trip_dicom_ct(store: ArtifactStore, loader: ImageLoader, pydicom_ct: Path) -> None:
    original = loader.load(pydicom_ct)
    artifact = store.put_image(original)
    loaded = store.load_image(artifact.id)
    _assert_same_record(loaded, original)
    assert loaded.modality is Modality.CT
    assert loaded.spacing_mm is not None and isinstance(loaded.spacing_mm, tuple)
    assert artifact.provenance["deidentified"] is True


@pytest.mark.parametrize("artifact_id", ["../etc/passwd", "", ".hidden", "..", "a/b", "a\\b", "a\x00b", "img-000000000000"])
def test_invalid_or_unknown_ids_are_unknown_artifacts(store: ArtifactStore, artifact_id: str) -> None:
    store.put_bytes(b"x", ArtifactKind.REPORT, "text/plain", ".txt")
    for read in (store.get, store.read_bytes, store.load_image):
        with pytest.raises(UnknownArtifact) as caught:
            read(artifact_id)
        assert caught.value.family == "tool_failure"


def test_load_image_refuses_other_kinds(store: ArtifactStore) -> None:
    report = store.put_bytes(b"not pixels", ArtifactKind.REPORT, "text/plain", ".txt")
    with pytest.raises(UnknownArtifact, match="not an image"):
        store.load_image(report.id)


def test_concurrent_writers_of_overlapping_content(store: ArtifactStore) -> None:
    threads, writes, distinct = 8, 20, 25

    def payload(n: int) -> bytes:
        return f"payload-{n % distinct}".encode() * 100

    def writer(thread: int) -> list[tuple[str, bytes]]:
        written = []
        for i in range(writes):
            data = payload(thread * writes + i)
            written.append((store.put_bytes(data, ArtifactKind.REPORT, "text/plain", ".txt").id, data))
        return written

    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = [pair for batch in pool.map(writer, range(threads)) for pair in batch]

    assert len(results) == threads * writes
    for artifact_id, data in results:
        artifact = store.get(artifact_id)
        assert store.read_bytes(artifact_id) == data
        assert artifact.sha256 == hashlib.sha256(data).hexdigest()
    assert len({artifact_id for artifact_id, _ in results}) == distinct
    assert len(object_files(store)) == distinct
    assert list(store.root.rglob(".tmp-*")) == []


def test_reference_never_exposes_the_path(store: ArtifactStore) -> None:
    artifact = store.put_png(b"\x89PNG fake", ArtifactKind.OVERLAY)
    reference = artifact.reference()
    assert reference == {"id": artifact.id, "kind": "overlay", "media_type": "image/png"}
    assert not any(str(store.root) in value for value in reference.values())
