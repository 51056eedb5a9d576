"""Owner-only from creation, not only in the end: under a umask of 0 and with ``chmod`` disabled, everything
medagent writes under its home (the study store and its WAL, the de-identification secret, artifacts, checkpoints,
reports and their plots, exports, text and image indexes, cached case images, the planner call log, the embedded
server's log folder and log) is still 0600 in 0700 folders, and no file or folder is open to others at the instant
it is created (see tests/private_creation.py)."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from medagent.imaging import ImageLoader
from medagent.retrieval.documents import Document, EmbedderInfo
from medagent.runtime.results import Provenance
from tests.conftest import NIH_CARDIOMEGALY
from tests.private_creation import modes_open_to_others, watch_creation
from tests.study_files import SCRIPTED, write_manifest


class HashingTextEmbedder:
    """A weightless text embedder (token hashes): the index writer is what is under test, not the vectors."""

    name = "hashing-test"
    dimension = 16

    def info(self) -> EmbedderInfo:
        return EmbedderInfo(name=self.name, kind="text", dimension=self.dimension, model_id="hashing-test")

    def provenance(self) -> Provenance:
        return Provenance(expert="text_retriever", model_id="hashing-test")

    def ready(self) -> bool:
        return True

    def embed(self, texts: list[str]) -> np.ndarray:
        vectors = np.zeros((len(texts), self.dimension), np.float32)
        for row, text in enumerate(texts):
            for token in text.split():
                vectors[row, hashlib.sha256(token.encode()).digest()[0] % self.dimension] += 1.0
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-6)


def _parquet_with_a_dicom(folder: Path, ct_path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = {"general_complaint": "A rash", "complaints": "Itchy.", "diagnosis": "hives",
           "image": {"bytes": ct_path.read_bytes(), "path": "scan.dcm"}}
    path = folder / "test-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist([row]), path)
    return path


def _cli(args: list[str]) -> str:
    from medagent.cli.main import app

    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output[-2000:]
    return result.output


def test_everything_medagent_writes_is_owner_only_from_its_creation(
        tmp_path: Path, nih_images: list[Path], pydicom_ct: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medagent.imaging import Deidentifier, load_or_create_secret
    from medagent.reports import export
    from medagent.retrieval.build import build_image_index, build_text_index
    from medagent.retrieval.corpus import ImageEntry
    from medagent.retrieval.image_embedders import ClassicalImageEmbedder
    from medagent.simulators.loaders import load_3mdbench
    from medagent.tools.artifacts import ArtifactStore
    from medagent.workflows.checkpoint import open_checkpointer

    home = tmp_path / "home"
    monkeypatch.setenv("MEDAGENT_HOME", str(home))
    monkeypatch.setenv("MEDAGENT_XRV_CACHE_DIR", str(tmp_path / "xrv"))
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.delenv("MEDAGENT_DEID_SECRET", raising=False)  # the production path: the secret file is created
    write_manifest(tmp_path, [("a", nih_images[0], 1, "M"), ("b", nih_images[1], 0, "F")])
    study = tmp_path / "study.yaml"
    study.write_text(f"""name: modes
planners:
  planner:
    backend: {SCRIPTED % ("assess_image_quality", "")}
graph:
  type: agent_loop
  question: Is the image usable?
dataset:
  type: manifest
  path: manifest.csv
  modality: DX
  columns: {{path: path, case_id: case_id, subgroups: [sex]}}
""")
    table = _parquet_with_a_dicom(tmp_path, pydicom_ct)
    monkeypatch.chdir(tmp_path)

    with watch_creation(home) as creation:
        secret = load_or_create_secret(home)
        _cli(["run", str(study), "--run-id", "modes"])
        _cli(["report", "modes", "--format", "html"])
        _cli(["export", "modes", "--out", str(home / "exports" / "modes.csv")])
        export(pd.DataFrame({"a": [1]}), home / "exports" / "frame.parquet", "parquet")
        loader = ImageLoader(Deidentifier(secret))
        ArtifactStore(home / "artifacts").put_image(loader.load(NIH_CARDIOMEGALY))
        documents = [Document(doc_id=f"t{i}", kind="text", source="s", license="l", text=f"heart size {i}")
                     for i in range(3)]
        build_text_index(documents, HashingTextEmbedder(), home / "indexes" / "texts")
        build_image_index([ImageEntry(path=path) for path in nih_images[:2]], loader, ClassicalImageEmbedder(),
                          home / "indexes" / "images", source="s", license="l", modality="DX")
        load_3mdbench(table, image_cache=home / "case-images")

        async def checkpoint() -> None:
            async with open_checkpointer(f"sqlite:///{home / 'checkpoints' / 'chat.sqlite'}") as saver:
                assert saver is not None

        asyncio.run(checkpoint())

    names = {path.name for path in home.iterdir()}
    assert {"deid.secret", "studies.sqlite", "artifacts", "reports", "exports", "indexes", "case-images",
            "checkpoints"} <= names, names
    assert (home / "reports" / "modes" / "report.html").is_file()
    assert any(path.suffix == ".png" for path in (home / "reports" / "modes").rglob("*")), "no plot was written"
    assert creation.loose == [], f"open to others when created: {creation.loose}"
    assert modes_open_to_others(home) == [], f"chmod attempted on {creation.chmods}"


def test_the_watch_catches_a_file_made_open_then_narrowed_or_removed(tmp_path: Path) -> None:
    """The net above can fail: a create-then-chmod file stays open, a brief scratch file is seen."""
    import os

    root = tmp_path / "root"
    with watch_creation(root) as creation:
        root.mkdir()
        (root / "later-chmod").write_bytes(b"x")
        os.chmod(root / "later-chmod", 0o600)
        with open(root / "scratch", "w") as stream:
            stream.write("x")
        os.unlink(root / "scratch")
        os.close(os.open(root / "raw", os.O_WRONLY | os.O_CREAT, 0o644))
        os.close(os.open(root / "private", os.O_WRONLY | os.O_CREAT, 0o600))
    assert sorted(creation.loose) == [(".", "777"), ("later-chmod", "666"), ("raw", "644"), ("scratch", "666")]
    assert creation.chmods == ["later-chmod"]
    assert sorted(modes_open_to_others(root)) == [(".", "777"), ("later-chmod", "666"), ("raw", "644")]
    outside = tmp_path / "outside"
    with watch_creation(root) as creation:
        outside.write_bytes(b"x")  # not under the watched root: not its business
    assert creation.loose == []


# -- logs: the scripted planner's call log, the embedded server's log folder and log ---------------------


def test_the_planner_call_log_is_owner_only_even_when_made_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medagent.agents.scripted import tool_sequence_planner

    home = tmp_path / "home"
    monkeypatch.setenv("MEDAGENT_HOME", str(home))
    log = home / "logs" / "calls.log"
    with watch_creation(home) as creation:
        planner = tool_sequence_planner([], call_log=log.name)
        asyncio.run(planner.complete([{"role": "user", "content": "q"}]))
        assert log.read_text() == "-\n"
        log.unlink()  # rotated away between two calls: the next call makes it again
        asyncio.run(planner.complete([{"role": "user", "content": "q"}]))
    assert log.read_text() == "-\n"
    assert creation.loose == [], f"open to others when created: {creation.loose}"
    assert modes_open_to_others(home) == [], f"chmod attempted on {creation.chmods}"


_FAKE_SERVER = """import http.server, sys
class Models(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"data": []}')
    def log_message(self, *args):
        print("request", flush=True)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Models).serve_forever()
"""


def test_the_embedded_servers_log_folder_and_log_are_owner_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The log folder (default MEDAGENT_HOME/logs) and the server's log, from their creation; a folder that
    exists open to others is narrowed. A tiny HTTP server stands in for llama.cpp under the real guard."""
    import stat
    import sys

    from medagent.agents.embedded import EmbeddedLlamaServer, _log_dir

    class StandIn(EmbeddedLlamaServer):
        def command(self) -> list[str]:
            return [sys.executable, "-c", _FAKE_SERVER, str(self.port)]

    home = tmp_path / "home"
    monkeypatch.setenv("MEDAGENT_HOME", str(home))
    server = StandIn(startup_timeout_s=60)
    with watch_creation(home) as creation:
        assert _log_dir(None) == home / "logs"
        try:
            asyncio.run(server.start())
            assert server.log_path is not None and server.log_path.parent == home / "logs"
            assert modes_open_to_others(home) == [], f"chmod attempted on {creation.chmods}"
        finally:
            server.stop()
    assert creation.loose == [], f"open to others when created: {creation.loose}"
    assert server.log_path is not None and not server.log_path.exists()  # removed after a normal stop

    shared = tmp_path / "shared-logs"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    assert _log_dir(shared) == shared and stat.S_IMODE(shared.stat().st_mode) == 0o700
