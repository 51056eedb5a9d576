"""Nothing identifying and no secret at rest: embedded case images are de-identified before they reach the disk,
study configs lose their keys and URL passwords, and every file medagent creates is owner-only from the start
(under a umask of 022, which would otherwise leave it world-readable)."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image

from medagent.config import Settings
from medagent.errors import ConfigurationError, InsecurePermissions, SecretInvalid
from medagent.imaging import Deidentifier, ImageLoader, load_or_create_secret
from medagent.redaction import REDACTED, redact, redact_text, redact_url
from medagent.simulators.loaders import load_3mdbench
from tests.conftest import NIH_CARDIOMEGALY, TEST_SECRET
from tests.study_files import SCRIPTED, write_manifest

PHI = [b"Doe^Jane", b"MRN-123456", b"St Example Hospital", b"House^Gregory", b"ACC999"]
API_KEY = "sk-live-0123456789SECRETKEY"
STORE_PASSWORD = "store-pw-8a7c6e"
ENDPOINT_PASSWORD = "endpoint-pw-5f3b"
SECRETS = [API_KEY.encode(), STORE_PASSWORD.encode(), ENDPOINT_PASSWORD.encode()]


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _files_and_folders(root: Path) -> tuple[list[Path], list[Path]]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return files, [root, *(p for p in root.rglob("*") if p.is_dir())]


def assert_owner_only(root: Path) -> None:
    files, folders = _files_and_folders(root)
    assert files, "nothing was written"
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, f"{path.relative_to(root)} is not 0600"
    for path in folders:
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, f"{path.relative_to(root)} is not 0700"


def assert_nothing_contains(root: Path, needles: list[bytes]) -> None:
    for path in _files_and_folders(root)[0]:
        data = path.read_bytes()
        for needle in needles:
            assert needle not in data, f"{needle!r} found in {path.relative_to(root)}"


# -- 3MDBench Parquet exports with embedded images -------------------------------------------------------


def _phi_dicom(ct_path: Path) -> bytes:
    dataset = pydicom.dcmread(ct_path)
    dataset.PatientName, dataset.PatientID, dataset.AccessionNumber = "Doe^Jane", "MRN-123456", "ACC999"
    dataset.InstitutionName, dataset.ReferringPhysicianName = "St Example Hospital", "House^Gregory"
    out = io.BytesIO()
    dataset.save_as(out)
    return out.getvalue()


def _png_with_text_chunk() -> bytes:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Comment", "Doe^Jane MRN-123456")
    out = io.BytesIO()
    with Image.open(NIH_CARDIOMEGALY) as image:
        image.crop((0, 0, 256, 256)).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def _jpeg_with_exif() -> bytes:
    exif = Image.Exif()
    exif[0x010E] = "Doe^Jane MRN-123456"  # ImageDescription
    out = io.BytesIO()
    with Image.open(NIH_CARDIOMEGALY) as image:
        image.crop((0, 0, 256, 256)).convert("L").save(out, format="JPEG", exif=exif)
    return out.getvalue()


def _parquet(folder: Path, images: list[bytes]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"general_complaint": "A rash", "complaints": "Itchy for two days.", "diagnosis": "hives",
             "image": {"bytes": data, "path": "scan.dcm"}} for data in images]
    path = folder / "test-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_embedded_case_images_reach_the_disk_deidentified_and_owner_only(
        tmp_path: Path, pydicom_ct: Path, umask_022: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDAGENT_DEID_SECRET", TEST_SECRET.decode())
    images = [_phi_dicom(pydicom_ct), _png_with_text_chunk(), _jpeg_with_exif()]
    for data in images:
        assert any(value in data for value in PHI[:2])  # the test plants what it then looks for
    table = _parquet(tmp_path, images)
    home = tmp_path / "home"
    cases = load_3mdbench(table, image_cache=home / "case-images")

    assert_nothing_contains(home, PHI)
    assert_owner_only(home)
    dicom, png, jpeg = (case.images[0] for case in cases)
    loader = ImageLoader(Deidentifier(TEST_SECRET))
    record = loader.load(dicom)
    assert record.source_format == "dicom" and record.modality.value == "CT"
    assert np.array_equal(record.pixels, loader.load(pydicom_ct).pixels)  # pixels as they were
    with Image.open(io.BytesIO(images[1])) as original, Image.open(png) as cached_png, \
            Image.open(jpeg) as cached_jpeg:
        assert np.array_equal(np.asarray(cached_png), np.asarray(original))
        assert not cached_png.info.get("Comment") and not cached_jpeg.getexif()
    assert png.suffix == jpeg.suffix == ".png"

    written = {path: path.stat().st_mtime_ns for path in (home / "case-images").iterdir()}
    assert load_3mdbench(table, image_cache=home / "case-images") == cases  # written once, reused
    assert {path: path.stat().st_mtime_ns for path in (home / "case-images").iterdir()} == written


def test_an_embedded_file_that_is_no_image_is_refused_typed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDAGENT_DEID_SECRET", TEST_SECRET.decode())
    broken_png = _png_with_text_chunk()[:200]
    for data in (b"Doe^Jane MRN-123456 plain text", broken_png):
        home = tmp_path / f"home-{len(data)}"
        with pytest.raises(ConfigurationError) as refused:
            load_3mdbench(_parquet(tmp_path, [data]), image_cache=home / "case-images")
        assert refused.value.details["field"] == "image" and "Doe" not in refused.value.message
        assert not (home / "case-images").exists() or not any((home / "case-images").iterdir())


# -- secrets in study configs ------------------------------------------------------------------------------


def test_redact_hides_keys_url_passwords_and_inline_secrets_only() -> None:
    endpoint = f"http://alice:{ENDPOINT_PASSWORD}@127.0.0.1:9/v1?token=abc"
    config: dict[str, Any] = {
        "planners": {"planner": {"api_key": API_KEY, "max_tokens": 512, "model": "m", "apiKey": None,
                                 "endpoint": endpoint}},
        "store": {"url": f"postgresql://medagent:{STORE_PASSWORD}@db.example:5432/medagent"},
        "kwargs": [f"host=db password={STORE_PASSWORD} user=x", {"client_secret": "s3"}]}
    redacted = redact(config)
    assert not any(secret.decode() in str(redacted) for secret in SECRETS) and "abc" not in str(redacted)
    planner = redacted["planners"]["planner"]
    assert planner["api_key"] == REDACTED and planner["max_tokens"] == 512 and planner["apiKey"] is None
    assert planner["endpoint"] == f"http://{REDACTED}@127.0.0.1:9/v1?token={REDACTED}"
    assert redacted["store"]["url"] == f"postgresql://{REDACTED}@db.example:5432/medagent"
    assert redacted["kwargs"] == [f"host=db password={REDACTED} user=x", {"client_secret": REDACTED}]
    assert config["planners"]["planner"]["api_key"] == API_KEY  # a copy: the running study keeps its key



TOKEN = "sk-live-9f8e7d6c5b4a"


@pytest.mark.parametrize(("url", "redacted"), [
    # user info goes whole, with a password or without: a token may be the user name
    (f"https://{TOKEN}@api.example/v1", f"https://{REDACTED}@api.example/v1"),
    (f"https://user:{TOKEN}@api.example/", f"https://{REDACTED}@api.example/"),
    (f"https://:{TOKEN}@api.example/", f"https://{REDACTED}@api.example/"),
    # secret query parameters, any case, ordinary ones beside them untouched (and not re-encoded)
    (f"https://maps.example/x?key={TOKEN}&page=2", f"https://maps.example/x?key={REDACTED}&page=2"),
    (f"https://b.s3.example/o?X-Amz-Date=20240101&X-Amz-Signature={TOKEN}&path=a%2Fb",
     f"https://b.s3.example/o?X-Amz-Date=20240101&X-Amz-Signature={REDACTED}&path=a%2Fb"),
    (f"https://blob.example/c?sv=2022&SIG={TOKEN}", f"https://blob.example/c?sv=2022&SIG={REDACTED}"),
    (f"https://h.example/?token={TOKEN}", f"https://h.example/?token={REDACTED}"),
    (f"https://h.example/?Access_Token={TOKEN}&q=x", f"https://h.example/?Access_Token={REDACTED}&q=x"),
    (f"https://h.example/?api_key={TOKEN}", f"https://h.example/?api_key={REDACTED}"),
    (f"https://h.example/?signature={TOKEN}", f"https://h.example/?signature={REDACTED}"),
    (f"https://h.example/cb#access_token={TOKEN}&state=7", f"https://h.example/cb#access_token={REDACTED}&state=7"),
    # left alone: nothing secret in them
    ("https://h.example/studies?page=2&limit=50", "https://h.example/studies?page=2&limit=50"),
    ("https://h.example/q?max_tokens=512&keyword=lung", "https://h.example/q?max_tokens=512&keyword=lung"),
    ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
])
def test_redact_url_removes_user_info_and_secret_query_parameters(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted
    assert redact_text(f"connecting to {url} now") == f"connecting to {redacted} now"


@pytest.mark.parametrize(("text", "redacted"), [
    (f"Authorization: Bearer {TOKEN}", f"Authorization: Bearer {REDACTED}"),
    (f"authorization=Basic {TOKEN}", f"authorization=Basic {REDACTED}"),
    (f"curl -H 'x' with Bearer {TOKEN} failed", f"curl -H 'x' with Bearer {REDACTED} failed"),
    ("bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln", f"bearer {REDACTED}"),
    # prose about bearer tokens, and ordinary pairs, stay as written
    ("keys are bearer tokens; Bearer authentication is on", "keys are bearer tokens; Bearer authentication is on"),
    ("max_tokens=512 page=2", "max_tokens=512 page=2"),
])
def test_redact_text_removes_bearer_tokens_and_leaves_prose(text: str, redacted: str) -> None:
    assert redact_text(text) == redacted

def _environment(home: Path) -> dict[str, str]:
    return {**os.environ, "MEDAGENT_HOME": str(home), "MEDAGENT_DEID_SECRET": TEST_SECRET.decode(),
            "MEDAGENT_XRV_CACHE_DIR": str(home.parent / "xrv"), "COLUMNS": "250"}


def _medagent(args: list[str], home: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "medagent.cli", *args], capture_output=True, text=True,
                          env=_environment(home), cwd=cwd, timeout=300, stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_a_studys_api_key_and_passwords_reach_no_store_report_export_or_output(
        tmp_path: Path, nih_images: list[Path], umask_022: None) -> None:
    write_manifest(tmp_path, [("a", nih_images[0], 1, "M"), ("b", nih_images[1], 0, "F")])
    study = tmp_path / "keys.yaml"
    study.write_text(f"""name: keys
planners:
  planner:
    backend: {SCRIPTED % ("assess_image_quality", "")}
    api_key: {API_KEY}
    endpoint: 'http://alice:{ENDPOINT_PASSWORD}@127.0.0.1:9/v1'
graph:
  type: agent_loop
  question: Is the image usable?
dataset:
  type: manifest
  path: manifest.csv
  modality: DX
  columns: {{path: path, case_id: case_id, subgroups: [sex]}}
store: {{url: 'postgresql://medagent:{STORE_PASSWORD}@db.invalid:5432/medagent'}}
""")
    home = tmp_path / "home"
    store = f"sqlite:///{home / 'studies.sqlite'}"
    outputs = [_medagent(["run", str(study), "--run-id", "keys", "--store", store], home, tmp_path)]
    outputs.append(_medagent(["report", "keys", "--store", store, "--format", "html"], home, tmp_path))
    outputs.append(_medagent(["export", "keys", "--store", store, "--out", str(home / "exports" / "keys.csv")],
                             home, tmp_path))

    from medagent.store import StudyStore

    with StudyStore.open(store, home) as opened:
        run = opened.get_run("keys")
        assert run is not None and run.status == "finished"
        assert run.config["planners"]["planner"]["api_key"] == REDACTED  # stored, redacted: not dropped
        assert run.config["store"]["url"] == f"postgresql://{REDACTED}@db.invalid:5432/medagent"
    for done in outputs:
        assert not any(secret.decode() in done.stdout + done.stderr for secret in SECRETS)
    assert (home / "reports" / "keys" / "report.html").is_file()
    assert_nothing_contains(home, SECRETS)
    assert_owner_only(home)  # the store and its WAL, artifacts, the report and its plots, the export


# -- the de-identification secret, as a real installation creates it (no MEDAGENT_DEID_SECRET) ----------

_READ_SECRET = "import sys; from pathlib import Path; from medagent.imaging import load_or_create_secret; " \
               "print(load_or_create_secret(Path(sys.argv[1])).hex())"


def test_the_secret_is_created_owner_only_once_and_shared_by_processes(
        tmp_path: Path, umask_022: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDAGENT_DEID_SECRET", raising=False)
    home = tmp_path / "new" / "home"
    environment = {k: v for k, v in os.environ.items() if k != "MEDAGENT_DEID_SECRET"}
    processes = [subprocess.Popen([sys.executable, "-c", _READ_SECRET, str(home)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=environment) for _ in range(4)]
    answers = [process.communicate(timeout=120) for process in processes]
    assert all(process.returncode == 0 for process in processes), [err for _, err in answers]
    assert len({out.strip() for out, _ in answers}) == 1  # racing creators all use one key
    secret_file = home / "deid.secret"
    assert load_or_create_secret(home).hex() == answers[0][0].strip() and len(secret_file.read_bytes()) == 32
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == stat.S_IMODE(home.parent.stat().st_mode) == 0o700
    assert [p.name for p in home.iterdir()] == ["deid.secret"]  # no temporary file left behind


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_secret_file_others_may_read_is_refused(tmp_path: Path, mode: int,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDAGENT_DEID_SECRET", raising=False)
    load_or_create_secret(tmp_path)
    os.chmod(tmp_path / "deid.secret", mode)
    with pytest.raises(InsecurePermissions) as refused:
        load_or_create_secret(tmp_path)
    assert "chmod 600" in refused.value.message and str(tmp_path) not in refused.value.message
    assert refused.value.family == "configuration" and refused.value.code == "insecure_permissions"
    os.chmod(tmp_path / "deid.secret", 0o600)
    assert len(load_or_create_secret(tmp_path)) == 32


def test_a_symlinked_or_short_secret_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDAGENT_DEID_SECRET", raising=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(os.urandom(32))
    os.chmod(elsewhere, 0o600)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "deid.secret").symlink_to(elsewhere)
    with pytest.raises(InsecurePermissions):
        load_or_create_secret(tmp_path / "a")
    (tmp_path / "b").mkdir()
    fd = os.open(tmp_path / "b" / "deid.secret", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"short")
    os.close(fd)
    with pytest.raises(SecretInvalid) as short:
        load_or_create_secret(tmp_path / "b")
    assert "16 bytes" in short.value.message and "short" not in short.value.message.split("must")[0]


@pytest.mark.parametrize("value", ["too-short", " padded-secret-0123456789 ", "line-break-0123456789abcdef\n",
                                   "tab\tinside-0123456789abcdef", "\udcff\udcfe" * 10])
def test_a_short_or_malformed_environment_secret_is_a_typed_error(
        tmp_path: Path, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDAGENT_DEID_SECRET", value)
    with pytest.raises(SecretInvalid) as refused:
        load_or_create_secret(tmp_path, Settings().deid_secret)
    assert refused.value.family == "configuration" and value.strip() not in refused.value.message
    assert not (tmp_path / "deid.secret").exists()
    with pytest.raises(SecretInvalid):
        Deidentifier(b"short")


def test_a_short_environment_secret_is_a_clean_cli_error_not_a_traceback(tmp_path: Path) -> None:
    environment = {**os.environ, "MEDAGENT_HOME": str(tmp_path / "home"), "MEDAGENT_DEID_SECRET": "too-short"}
    done = subprocess.run([sys.executable, "-m", "medagent.cli", "inspect", str(NIH_CARDIOMEGALY), "--json"],
                          capture_output=True, text=True, env=environment, timeout=300, stdin=subprocess.DEVNULL,
                          check=False)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "secret_invalid" in done.stderr + done.stdout and "too-short" not in done.stderr + done.stdout


# -- databases, artifacts, exports, indexes, checkpoints: 0600 from the start -----------------------------


def test_stores_artifacts_exports_indexes_and_checkpoints_are_created_owner_only(
        tmp_path: Path, umask_022: None, loader: ImageLoader) -> None:
    import asyncio

    import pandas as pd

    from medagent.reports import export
    from medagent.retrieval import ClassicalImageEmbedder, Document, VectorIndex
    from medagent.store import StudyStore
    from medagent.tools.artifacts import ArtifactStore
    from medagent.workflows.checkpoint import open_checkpointer

    root = tmp_path / "home"
    with StudyStore.open(None, root / "store"):
        pass
    ArtifactStore(root / "artifacts").put_image(loader.load(NIH_CARDIOMEGALY))
    export(pd.DataFrame({"a": [1]}), root / "exports" / "x.csv")
    embedder = ClassicalImageEmbedder()
    documents = [Document(doc_id=f"d{i}", kind="image", source="s", license="l") for i in range(2)]
    VectorIndex.build(root / "indexes" / "images", embedder.info(), documents,
                      np.eye(2, embedder.dimension, dtype=np.float32)).close()

    async def checkpoint() -> None:
        async with open_checkpointer(f"sqlite:///{root / 'checkpoints' / 'chat.sqlite'}") as saver:
            assert saver is not None

    asyncio.run(checkpoint())
    assert {p.name for p in root.iterdir()} == {"store", "artifacts", "exports", "indexes", "checkpoints"}
    assert_owner_only(root)


# -- burned-in annotation: withheld from image-reading planners unless the user opts in ------------------


@pytest.mark.parametrize("opt_in", [False, True])
def test_burned_in_images_reach_image_reading_planners_only_when_the_user_opts_in(
        tmp_path: Path, pydicom_ct: Path, settings: object, opt_in: bool) -> None:
    from medagent.config import Settings
    from medagent.tools.builtin import Toolbox

    assert isinstance(settings, Settings)
    dataset = pydicom.dcmread(pydicom_ct)
    dataset.BurnedInAnnotation = "YES"
    dataset.save_as(tmp_path / "burned.dcm")
    toolbox = Toolbox(settings.model_copy(update={"send_burned_in_images": opt_in}))
    try:
        burned, plain = toolbox.attach(tmp_path / "burned.dcm"), toolbox.attach(NIH_CARDIOMEGALY)
        messages = toolbox.with_image_parts([{"role": "system", "content": "s"}, {"role": "user", "content": "look"}],
                                            [burned.id, plain.id])
        parts = [part for part in messages[1]["content"] if part["type"] == "image_url"]
        expected = [toolbox.image_data_url(i) for i in ([burned.id, plain.id] if opt_in else [plain.id])]
        assert [part["image_url"]["url"] for part in parts] == expected
    finally:
        toolbox.close()


def test_the_burned_in_opt_in_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from medagent.config import Settings

    assert Settings().send_burned_in_images is False
    monkeypatch.setenv("MEDAGENT_SEND_BURNED_IN_IMAGES", "1")
    assert Settings().send_burned_in_images is True
