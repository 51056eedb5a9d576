"""PACS in and out over DICOMweb, against a real Orthanc with its DICOMweb plugin on 127.0.0.1.

Studies carrying synthetic PHI are stored in Orthanc, pulled by UID into a session, analysed with the scripted
planner, and the DICOM SEG and SR written back are retrieved from Orthanc and read with highdicom. No PHI string,
and none of the PACS's UIDs, may reach the planner, the artifact store or the logs. Failures (an unreachable or
silent server, unknown UIDs, an oversized instance, a malformed answer) are typed and bounded in time.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medagent.agents.planner import PlannerConfig
from medagent.agents.scripted import ScriptedPlanner, tool_sequence_planner
from medagent.api import Agent, AgentConfig
from medagent.config import Settings
from medagent.dicomweb import (
    DicomwebClient,
    DicomwebError,
    DicomwebLimits,
    DicomwebNotFound,
    DicomwebRejected,
    DicomwebResponseInvalid,
    DicomwebServerError,
    DicomwebTimeout,
    DicomwebTooLarge,
    DicomwebUnavailable,
    InvalidDicomwebRequest,
    pull_study,
    push_results,
)
from medagent.dicomweb.export import ImageResults, report_object, segmentation_object
from medagent.dicomweb.multipart import read_parts
from tests import orthanc_server
from tests.conftest import NIH_CARDIOMEGALY, TEST_SECRET
from tests.dicom_files import cr_dicom

PHI = {"PatientName": "Zyxwv^Quintessa", "PatientID": "MRN-5550199", "AccessionNumber": "ACC-7781234",
       "PatientBirthDate": "19470312", "InstitutionAddress": "17 Quarry Lane, Dunmore",
       "PatientAddress": "9 Wexley Row, Harrowgate", "PatientComments": "daughter Philippa phones on Fridays",
       "ImageComments": "call Quintessa at 555-0199", "OtherPatientIDs": "NHS-4411-9090"}
MEDAGENT = [sys.executable, "-m", "medagent.cli"]


def _with_phi(dataset: pydicom.Dataset) -> pydicom.Dataset:
    for keyword, value in PHI.items():
        setattr(dataset, keyword, value)
    return dataset


def _bytes(dataset: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _dx_study(tmp: Path) -> pydicom.Dataset:
    """A DX chest radiograph (a real NIH image's pixels) carrying synthetic PHI."""
    dataset = pydicom.dcmread(cr_dicom(NIH_CARDIOMEGALY, tmp / "dx.dcm"))
    dataset.Modality = "DX"
    dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    return _with_phi(dataset)


def _ct_series(slices: int = 4) -> list[pydicom.Dataset]:
    """A small synthetic CT series with PHI: slice k at z = 2.5 k holds the value 100 k; instance numbers run
    against the positions, so only a position sort stacks it right."""
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    datasets = []
    for k in range(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset("ct", {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.StudyDate, ds.StudyTime, ds.StudyID, ds.ReferringPhysicianName = "CT", "20240105", "101010", \
            "S1", "Dr^Vellacott"
        ds.PatientSex, ds.InstanceNumber, ds.SeriesNumber = "F", slices - k, 3
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, 2.5 * k], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [0.8, 0.8], 2.5
        ds.Rows = ds.Columns = 32
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = np.full((32, 32), 100 * k, dtype=np.int16).tobytes()
        datasets.append(_with_phi(ds))
    return datasets


@pytest.fixture(scope="module")
def orthanc() -> Iterator[str]:
    reason = orthanc_server.missing()
    if reason is not None:
        pytest.skip(reason)
    with orthanc_server.orthanc_server() as url:
        yield url


@pytest.fixture(scope="module")
def studies(orthanc: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Stored through Orthanc's own REST API: the DX study, the CT series, pydicom's CT_small."""
    from pydicom.data import get_testdata_file

    dx, ct = _dx_study(tmp_path_factory.mktemp("dx")), _ct_series()
    ct_small = Path(str(get_testdata_file("CT_small.dcm")))
    root = orthanc.removesuffix("/dicom-web")
    for data in [_bytes(dx), *(_bytes(ds) for ds in ct), ct_small.read_bytes()]:
        assert httpx.post(f"{root}/instances", content=data, timeout=30).status_code == 200
    return {"dx": dx, "ct": ct, "ct_small": pydicom.dcmread(ct_small)}


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("MEDAGENT_DEID_SECRET", TEST_SECRET.decode())
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))  # where pulls put their private folders
    (tmp_path / "tmp").mkdir()
    return Settings(home=tmp_path / "home", plugins=False)


def _agent(settings: Settings, planner: ScriptedPlanner) -> Agent:
    return Agent(AgentConfig(planner=PlannerConfig(backend="scripted"), checkpoint_url="memory://"),
                 settings=settings, planner=planner)


class _Everything(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.getMessage()}")


@pytest.fixture
def all_logs() -> Iterator[list[str]]:
    """Every record of every logger at DEBUG, arguments merged (stricter than medagent's JSON formatter)."""
    handler = _Everything()
    loggers = [logging.getLogger(name) for name in ("", "medagent", "httpx", "httpcore")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    yield handler.lines
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


def _wado(orthanc: str, study: str, series: str) -> list[pydicom.Dataset]:
    """Instances as Orthanc serves them over WADO-RS (the client's own retrieval is what is under test)."""
    async def fetch() -> list[bytes]:
        async with DicomwebClient(orthanc) as client:
            return [data async for data in client.retrieve_series(
                study, series, max_instances=10, max_instance_bytes=1 << 26, max_total_bytes=1 << 27)]
    return [pydicom.dcmread(io.BytesIO(data)) for data in asyncio.run(fetch())]


def _series_of(orthanc: str, study: str, modality: str) -> list[str]:
    answer = httpx.get(f"{orthanc}/studies/{study}/series", params={"Modality": modality},
                       headers={"Accept": "application/dicom+json"}, timeout=30).json()
    return [item["0020000E"]["Value"][0] for item in answer]


def _no_secrets_in(text: str | bytes, secrets: list[str], where: str) -> None:
    data = text.encode() if isinstance(text, str) else text
    for secret in secrets:
        assert secret.encode() not in data, f"{secret!r} in {where}"


def test_a_pulled_study_is_analysed_and_its_seg_and_sr_come_back_valid_without_phi(
        orthanc: str, studies: dict[str, Any], settings: Settings, all_logs: list[str]) -> None:
    import highdicom as hd

    dx = studies["dx"]
    planner = tool_sequence_planner(["segment_lung_fields"], config=PlannerConfig(backend="scripted"))

    async def run() -> Any:
        async with _agent(settings, planner) as agent:
            session = agent.session()
            pull = await pull_study(session, orthanc, dx.StudyInstanceUID)
            assert len(pull.images) == 1 and pull.images[0].modality == "DX"
            assert await session.image_ids() == pull.image_ids
            answer = await session.ask("Outline the lung fields.")
            assert [call["tool"] for call in answer.tool_calls] == ["segment_lung_fields"]
            assert all(call["ok"] for call in answer.tool_calls)
            return await push_results(pull, answer.tool_calls, agent.toolbox.store)

    pushed = asyncio.run(run())
    logged = list(all_logs)  # what medagent's pull, analysis and push logged (not this test's own requests)
    assert len(pushed.segmentations) == 1 and len(pushed.reports) == 1

    (seg_series,), (sr_series,) = (_series_of(orthanc, dx.StudyInstanceUID, m) for m in ("SEG", "SR"))
    (seg_ds,) = _wado(orthanc, dx.StudyInstanceUID, seg_series)
    (sr_ds,) = _wado(orthanc, dx.StudyInstanceUID, sr_series)
    seg = hd.seg.Segmentation.from_dataset(seg_ds)
    assert seg.SOPInstanceUID == pushed.segmentations[0]
    assert seg.get_source_image_uids() == [(dx.StudyInstanceUID, dx.SeriesInstanceUID, dx.SOPInstanceUID)]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == dx.SeriesInstanceUID
    assert {s.SegmentLabel for s in seg.SegmentSequence} == {"Right Lung", "Left Lung"}
    masks = seg.get_pixels_by_source_instance([dx.SOPInstanceUID], combine_segments=False)
    assert masks.shape == (1, dx.Rows, dx.Columns, 2) and masks.any()

    sr = hd.sr.srread(io.BytesIO(_bytes(sr_ds)))
    assert sr.SOPInstanceUID == pushed.reports[0]
    evidence = {item.ReferencedSOPInstanceUID for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for item in series.ReferencedSOPSequence}
    assert evidence == {dx.SOPInstanceUID, seg.SOPInstanceUID}
    groups = sr.content.get_planar_roi_measurement_groups()
    assert {group.tracking_identifier for group in groups} == {"Right Lung", "Left Lung"}
    for group in groups:
        frame = group.referenced_segmentation_frame
        assert frame is not None and frame.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert frame.source_image_for_segmentation.referenced_sop_instance_uid == dx.SOPInstanceUID
        (area,) = group.get_measurements(name=pydicom.sr.codedict.codes.SCT.Area)
        assert area.value > 1000 and area.unit.value == "mm2"

    for derived in (seg_ds, sr_ds):
        assert derived.PatientIdentityRemoved == "YES" and derived.DeidentificationMethod
        assert {item.CodeValue for item in derived.DeidentificationMethodCodeSequence} >= {"113100", "113110"}
        assert str(derived.PatientID).startswith("ANON-") and derived.StudyInstanceUID == dx.StudyInstanceUID
        _no_secrets_in(_bytes(derived), list(PHI.values()), f"the stored {derived.Modality}")

    pacs_uids = [dx.StudyInstanceUID, dx.SeriesInstanceUID, dx.SOPInstanceUID]
    _no_secrets_in(json.dumps([vars(r) for r in planner.requests], default=str), [*PHI.values(), *pacs_uids],
                   "a planner request")
    for path in settings.home.rglob("*"):
        if path.is_file():
            _no_secrets_in(path.read_bytes(), [*PHI.values(), *pacs_uids], f"the artifact store ({path.name})")
    assert any("HTTP Request" in line for line in logged), "no request was logged: the check would prove nothing"
    _no_secrets_in("\n".join(logged), [*PHI.values(), *pacs_uids], "the logs")
    assert not list(Path(str(settings.home.parent / "tmp")).iterdir()), "a pull left files behind"


def test_a_ct_series_becomes_one_volume_and_its_seg_frames_reference_the_right_slices(
        orthanc: str, studies: dict[str, Any], settings: Settings) -> None:
    import highdicom as hd

    ct = studies["ct"]
    study, series = ct[0].StudyInstanceUID, ct[0].SeriesInstanceUID

    async def run() -> Any:
        async with _agent(settings, tool_sequence_planner([])) as agent:
            pull = await pull_study(agent.session(), orthanc, study, series)
            (image,) = pull.images
            record = agent.toolbox.store.load_image(image.image_id)
            mask = record.pixels == 300  # the slice at z = 7.5 only, wherever the volume stacked it
            seg = segmentation_object(ImageResults(source=image, masks={"Liver": mask}, areas_mm2={"Liver": 655.36}))
            assert seg is not None
            report = report_object(ImageResults(source=image, areas_mm2={"Liver": 655.36}), seg)
            async with DicomwebClient(orthanc) as client:
                assert await client.store([_bytes(seg), _bytes(report)]) == [seg.SOPInstanceUID,
                                                                            report.SOPInstanceUID]
            return record

    record = asyncio.run(run())
    assert record.pixels.shape == (4, 32, 32) and record.modality.value == "CT"
    assert [float(record.pixels[k, 0, 0]) for k in range(4)] == [0.0, 100.0, 200.0, 300.0]
    (seg_series,) = _series_of(orthanc, study, "SEG")
    stored = hd.seg.Segmentation.from_dataset(_wado(orthanc, study, seg_series)[0])
    assert stored.ReferencedSeriesSequence[0].SeriesInstanceUID == series
    assert {uid for _, _, uid in stored.get_source_image_uids()} == {ds.SOPInstanceUID for ds in ct}
    top = next(ds for ds in ct if ds.ImagePositionPatient[2] == 7.5)
    (frame,) = stored.PerFrameFunctionalGroupsSequence
    source = frame.DerivationImageSequence[0].SourceImageSequence[0]
    assert source.ReferencedSOPInstanceUID == top.SOPInstanceUID
    assert stored.FrameOfReferenceUID == ct[0].FrameOfReferenceUID
    assert stored.PatientIdentityRemoved == "YES"
    _no_secrets_in(_bytes(stored), list(PHI.values()), "the stored SEG")


def test_medagent_ask_pulls_analyses_and_pushes_from_the_command_line(
        orthanc: str, studies: dict[str, Any], tmp_path: Path) -> None:
    import highdicom as hd

    ct_small = studies["ct_small"]
    environment = {**os.environ, "MEDAGENT_HOME": str(tmp_path / "home"), "MEDAGENT_DEID_SECRET": TEST_SECRET.decode(),
                   "MEDAGENT_PLUGINS": "false", "COLUMNS": "200"}
    command = [*MEDAGENT, "ask", "--dicomweb", orthanc, "--study", ct_small.StudyInstanceUID, "--backend", "scripted",
               "--json", "--push", "Call assess_image_quality: is this image usable?"]
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=120,
                            check=False, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    output = json.loads(result.stdout)
    assert len(output["dicomweb"]["images"]) == 1
    assert [call["tool"] for call in output["tool_calls"]] == ["assess_image_quality"]
    stored = output["dicomweb"]["stored"]
    assert stored["segmentations"] == [] and len(stored["reports"]) == 1
    (sr_series,) = _series_of(orthanc, ct_small.StudyInstanceUID, "SR")
    sr = hd.sr.srread(io.BytesIO(_bytes(_wado(orthanc, ct_small.StudyInstanceUID, sr_series)[0])))
    assert sr.SOPInstanceUID == stored["reports"][0]
    (group,) = sr.content.get_image_measurement_groups()
    (verdict,) = group.get_qualitative_evaluations()
    assert verdict.value.meaning in ("Usable", "Not usable")
    for secret in ("CompressedSamples", ct_small.StudyInstanceUID):
        assert secret not in result.stdout + result.stderr

    missing = subprocess.run([*MEDAGENT, "ask", "--dicomweb", orthanc, "--study", "1.2.3.4.5", "--backend", "scripted",
                              "Anything?"], capture_output=True, text=True, env=environment, timeout=120,
                             check=False, stdin=subprocess.DEVNULL)
    assert missing.returncode == 2 and "dicomweb_not_found" in missing.stderr
    assert "Traceback" not in missing.stderr


class _Hostile(BaseHTTPRequestHandler):
    """A DICOMweb server that misbehaves by path prefix; its error pages quote patient data."""

    def log_message(self, *_: Any) -> None:
        return None

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # http.server's name
        kind = self.path.split("/")[1]
        if self.path.split("?")[0].endswith("/series"):  # QIDO-RS: one CT series
            if kind == "notjson":
                return self._send(200, b"<html>Zyxwv^Quintessa</html>", "text/html")
            if kind == "servererror":
                return self._send(500, b"database error for Zyxwv^Quintessa", "text/plain")
            if kind == "forbidden":
                return self._send(403, b"Zyxwv^Quintessa is not yours", "text/plain")
            series = [{"0020000E": {"vr": "UI", "Value": ["1.2.3.4"]}, "00080060": {"vr": "CS", "Value": ["CT"]}}]
            return self._send(200, json.dumps(series).encode(), "application/dicom+json")
        boundary = "b0undary"
        part = b"--b0undary\r\nContent-Type: application/dicom\r\n\r\n" + b"DICM" * 64
        bodies = {"unclosed": part, "noboundary": b"just bytes, no parts",
                  "wrongtype": b"--b0undary\r\nContent-Type: text/plain\r\n\r\nZyxwv\r\n--b0undary--\r\n"}
        self._send(200, bodies.get(kind, part), f'multipart/related; type="application/dicom"; boundary={boundary}')

    def do_POST(self) -> None:  # STOW-RS
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        kind = self.path.split("/")[1]
        if kind == "servererror":
            return self._send(503, b"Zyxwv^Quintessa", "text/plain")
        answers = {"stowfail": {"00081198": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": ["1.2.3"]}}]}},
                   "stowgarbage": ["not", "dicom", "json"]}
        self._send(200, json.dumps(answers.get(kind, {})).encode(), "application/dicom+json")


@pytest.fixture(scope="module")
def hostile() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _pull_error(settings: Settings, url: str, study: str, series: str | None = None,
                limits: DicomwebLimits | None = None) -> tuple[Exception, float, list[str]]:
    async def run() -> tuple[Exception, float, list[str]]:
        async with _agent(settings, tool_sequence_planner([])) as agent:
            session = agent.session()
            started = time.monotonic()
            with pytest.raises(Exception) as caught:
                await pull_study(session, url, study, series, limits=limits)
            return caught.value, time.monotonic() - started, await session.image_ids()
    return asyncio.run(run())


def test_failures_are_typed_bounded_in_time_and_quote_nothing(
        orthanc: str, studies: dict[str, Any], hostile: str, settings: Settings) -> None:
    quick = DicomwebLimits(connect_timeout_s=1, read_timeout_s=1, request_timeout_s=5)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        refused_url = f"http://127.0.0.1:{closed.getsockname()[1]}/dicom-web"
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        silent_url = f"http://127.0.0.1:{silent.getsockname()[1]}/dicom-web"
        cases: list[tuple[str, str, str | None, DicomwebLimits | None, type[Exception]]] = [
            (refused_url, "1.2.3", None, quick, DicomwebUnavailable),
            (silent_url, "1.2.3", None, quick, DicomwebTimeout),
            (orthanc, "1.2.840.99999.1", None, None, DicomwebNotFound),
            (orthanc, studies["dx"].StudyInstanceUID, "1.2.840.99999.2", None, DicomwebNotFound),
            (orthanc, studies["ct_small"].StudyInstanceUID, None, DicomwebLimits(max_instance_bytes=4096),
             DicomwebTooLarge),
            (orthanc, studies["ct"][0].StudyInstanceUID, None, DicomwebLimits(max_instances=2), DicomwebTooLarge),
            (orthanc, "1.2.3/../../system", None, None, InvalidDicomwebRequest),
            ("file:///etc/passwd", "1.2.3", None, None, InvalidDicomwebRequest),
            (f"{hostile}/unclosed", "1.2.3", None, None, DicomwebResponseInvalid),
            (f"{hostile}/noboundary", "1.2.3", None, None, DicomwebResponseInvalid),
            (f"{hostile}/wrongtype", "1.2.3", None, None, DicomwebResponseInvalid),
            (f"{hostile}/notjson", "1.2.3", None, None, DicomwebResponseInvalid),
            (f"{hostile}/servererror", "1.2.3", None, None, DicomwebServerError),
            (f"{hostile}/forbidden", "1.2.3", None, None, DicomwebRejected),
        ]
        for url, study, series, limits, expected in cases:
            error, elapsed, attached = _pull_error(settings, url, study, series, limits)
            assert type(error) is expected, (url, study, error)
            assert elapsed < 8, (url, elapsed)
            assert attached == [], "a failed pull attached images"
            assert isinstance(error, DicomwebError)
            text = json.dumps(error.to_dict())
            _no_secrets_in(text, ["Zyxwv", "127.0.0.1", study, *PHI.values()], f"the {expected.__name__} message")
    assert not list(Path(str(settings.home.parent / "tmp")).iterdir()), "a failed pull left files behind"

    async def store(url: str) -> Exception:
        async with DicomwebClient(url) as client:
            with pytest.raises(Exception) as caught:
                await client.store([b"DICM" * 16])
            return caught.value

    for kind, expected in (("stowfail", DicomwebRejected), ("servererror", DicomwebServerError),
                           ("stowgarbage", DicomwebResponseInvalid)):
        error = asyncio.run(store(f"{hostile}/{kind}"))
        assert type(error) is expected and isinstance(error, DicomwebError), (kind, error)
        _no_secrets_in(json.dumps(error.to_dict()), ["Zyxwv"], f"the {expected.__name__} message")


@pytest.mark.asyncio
async def test_multipart_parts_survive_any_chunking_and_malformed_bodies_are_refused() -> None:
    payloads = [b"first\r\n--b0undar", b"", b"x" * 300]
    body = b"preamble\r\n" + b"".join(b"--b0undary\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
                                      for p in payloads) + b"--b0undary--\r\nepilogue"

    async def chunks(data: bytes, size: int) -> Any:
        for start in range(0, len(data), size):
            yield data[start:start + size]

    for size in (1, 2, 3, 7, 64, len(body)):
        parts = [part async for part in read_parts(chunks(body, size), "b0undary", max_parts=5, max_part_bytes=400,
                                                   max_total_bytes=4096)]
        assert [part.data for part in parts] == payloads, size
        assert {part.content_type for part in parts} == {"application/dicom"}
    bounds: list[tuple[dict[str, int], type[Exception]]] = [
        ({"max_parts": 2, "max_part_bytes": 400, "max_total_bytes": 4096}, DicomwebTooLarge),
        ({"max_parts": 5, "max_part_bytes": 299, "max_total_bytes": 4096}, DicomwebTooLarge),
        ({"max_parts": 5, "max_part_bytes": 400, "max_total_bytes": 200}, DicomwebTooLarge),
    ]
    for bound, expected in bounds:
        with pytest.raises(expected):
            _ = [part async for part in read_parts(chunks(body, 16), "b0undary", **bound)]
    for broken in (body[: body.index(b"--b0undary--")], b"no delimiter here" * 2000,
                   b"--b0undary\r\n" + b"X-Header: y\r\n" * 3000):
        with pytest.raises(DicomwebResponseInvalid):
            _ = [part async for part in read_parts(chunks(broken, 64), "b0undary", max_parts=5, max_part_bytes=400,
                                                   max_total_bytes=1 << 20)]
