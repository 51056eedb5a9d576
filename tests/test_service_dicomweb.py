"""DICOMweb from ``medagent serve``: a study stored in a real Orthanc is pulled into a session through the API by the
server's configured name, analysed (the real lung-field segmenter), and its DICOM SEG and SR pushed back; what
Orthanc then serves references the source series. Another key's session, an unknown server name, a URL in place of
a name, unknown UIDs and an unreachable server are typed refusals."""

from __future__ import annotations

import io
import json
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from medagent.cli.service import _with_dicomweb
from medagent.service.audit import sha256_hex
from medagent.service.settings import ServiceSettings
from tests.conftest import NIH_CARDIOMEGALY
from tests.dicom_files import cr_dicom
from tests.pacs_service_parts import (
    ServedPacs,
    naming_planner,
    orthanc_or_skip,
    part10,
    series_of,
    store_in_orthanc,
    wado,
)
from tests.service_parts import cli, new_key

pytestmark = pytest.mark.timeout(120)
PHI = {"PatientName": "Qorvath^Ilsabet", "PatientID": "MRN-20931-KQ", "AccessionNumber": "ACC-88-QWZ",
       "PatientBirthDate": "19520811", "PatientAddress": "3 Thistlebrook Close"}


@pytest.fixture(scope="module")
def orthanc() -> Iterator[str]:
    yield from orthanc_or_skip()


@pytest.fixture(scope="module")
def dx(orthanc: str, tmp_path_factory: pytest.TempPathFactory) -> pydicom.Dataset:
    """A DX chest radiograph (a real NIH image's pixels) with synthetic PHI, stored in Orthanc."""
    dataset = pydicom.dcmread(cr_dicom(NIH_CARDIOMEGALY, tmp_path_factory.mktemp("dx") / "dx.dcm"))
    dataset.Modality = "DX"
    dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    for keyword, value in PHI.items():
        setattr(dataset, keyword, value)
    store_in_orthanc(orthanc, part10(dataset))
    return dataset


@pytest.fixture(scope="module")
def served(orthanc: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedPacs]:
    with socket.socket() as closed:  # a port nothing listens on: the "down" server
        closed.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{closed.getsockname()[1]}/dicom-web"
    with ServedPacs(tmp_path_factory.mktemp("home"), naming_planner(), {"pacs": orthanc, "down": down}) as running:
        yield running


@pytest.fixture(scope="module")
def keys(served: ServedPacs) -> tuple[str, str]:
    return (new_key(served.home, "alice", "--rate", "1000", "--burst", "1000"),
            new_key(served.home, "bob", "--rate", "1000", "--burst", "1000"))


def _error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code, error
    return error


def test_a_study_pulled_through_the_api_is_analysed_and_its_seg_and_sr_reference_the_source_series(
        served: ServedPacs, keys: tuple[str, str], dx: pydicom.Dataset, orthanc: str) -> None:
    import highdicom as hd

    with served.client(keys[0]) as client:
        session_id = client.post("/v1/sessions").json()["id"]
        pulled = client.post(f"/v1/sessions/{session_id}/dicomweb/pull",
                             json={"server": "pacs", "study_uid": dx.StudyInstanceUID})
        assert pulled.status_code == 201, pulled.text
        (image,) = pulled.json()["images"]
        assert image["deidentified"] is True and image["summary"]["modality"] == "DX"
        assert pulled.json()["skipped_instances"] == 0
        assert client.get(f"/v1/sessions/{session_id}").json()["image_ids"] == [image["image_id"]]

        answer = client.post(f"/v1/sessions/{session_id}/messages", json={"question": "segment_lung_fields please"})
        assert answer.status_code == 200, answer.text
        (call,) = answer.json()["tool_calls"]
        assert call["tool"] == "segment_lung_fields" and call["ok"] is True
        assert call["arguments"] == {"image_id": image["image_id"]}

        pushed = client.post(f"/v1/sessions/{session_id}/dicomweb/push", json={"server": "pacs"})
        assert pushed.status_code == 200, pushed.text
        (seg_out,), (sr_out,) = pushed.json()["segmentations"], pushed.json()["reports"]
        for text in (pulled.text, answer.text, pushed.text):
            assert not any(value in text for value in PHI.values())
            assert dx.StudyInstanceUID not in text and dx.SOPInstanceUID not in text

    (seg_series,), (sr_series,) = (series_of(orthanc, dx.StudyInstanceUID, modality) for modality in ("SEG", "SR"))
    assert (seg_series, sr_series) == (seg_out["series_instance_uid"], sr_out["series_instance_uid"])
    (seg_bytes,), (sr_bytes,) = wado(orthanc, dx.StudyInstanceUID, seg_series), wado(orthanc, dx.StudyInstanceUID,
                                                                                       sr_series)
    seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(seg_bytes)))
    assert seg.SOPInstanceUID == seg_out["sop_instance_uid"] and seg.StudyInstanceUID == dx.StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == dx.SeriesInstanceUID
    assert seg.get_source_image_uids() == [(dx.StudyInstanceUID, dx.SeriesInstanceUID, dx.SOPInstanceUID)]
    assert {segment.SegmentLabel for segment in seg.SegmentSequence} == {"Right Lung", "Left Lung"}
    assert seg.get_pixels_by_source_instance([dx.SOPInstanceUID], combine_segments=False).any()
    sr = hd.sr.srread(io.BytesIO(sr_bytes))
    assert sr.SOPInstanceUID == sr_out["sop_instance_uid"]
    evidence = {item.ReferencedSOPInstanceUID for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for item in series.ReferencedSOPSequence}
    assert evidence == {dx.SOPInstanceUID, seg.SOPInstanceUID}
    for derived in (seg_bytes, sr_bytes):
        assert not any(value.encode() in derived for value in PHI.values())

    with sqlite3.connect(served.home / "service.sqlite") as database:
        rows = database.execute("SELECT endpoint, status, inputs FROM service_audit WHERE session_id = ?",
                                (session_id,)).fetchall()
        everything = json.dumps(database.execute("SELECT * FROM service_audit").fetchall())
    audited = {(endpoint, status): json.loads(inputs) for endpoint, status, inputs in rows}
    assert audited[("POST /v1/sessions/{session_id}/dicomweb/pull", 201)] == {
        "server": "pacs", "study_uid_sha256": sha256_hex(dx.StudyInstanceUID)}
    assert audited[("POST /v1/sessions/{session_id}/dicomweb/push", 200)] == {"server": "pacs"}
    assert dx.StudyInstanceUID not in everything and not any(value in everything for value in PHI.values())


def test_pulls_and_pushes_refuse_other_keys_unknown_names_urls_unknown_uids_and_a_down_server(
        served: ServedPacs, keys: tuple[str, str], dx: pydicom.Dataset) -> None:
    with served.client(keys[0]) as alice, served.client(keys[1]) as bob:
        session_id = alice.post("/v1/sessions").json()["id"]
        pull, push = f"/v1/sessions/{session_id}/dicomweb/pull", f"/v1/sessions/{session_id}/dicomweb/push"
        study = {"server": "pacs", "study_uid": dx.StudyInstanceUID}
        _error(bob.post(pull, json=study), 404, "session_not_found")
        _error(bob.post(push, json={"server": "pacs"}), 404, "session_not_found")
        _error(alice.post(push, json={"server": "pacs"}), 409, "dicomweb_nothing_pulled")

        unknown = _error(alice.post(pull, json={**study, "server": "elsewhere"}), 404, "dicomweb_server_unknown")
        assert "elsewhere" not in unknown["message"]
        _error(alice.post(push, json={"server": "elsewhere"}), 404, "dicomweb_server_unknown")
        for server in ("http://127.0.0.1:8042/dicom-web", "127.0.0.1:8042", "../pacs"):  # a URL is no server name
            refused = alice.post(pull, json={**study, "server": server})
            _error(refused, 422, "invalid_request")
            assert server not in refused.text
        _error(alice.post(pull, json={**study, "server": "127.0.0.1"}), 404, "dicomweb_server_unknown")  # a name
        _error(alice.post(pull, json={**study, "url": "http://127.0.0.1:1/"}), 422, "invalid_request")
        for uid in ("1.2.3/../../system", "1.2.x", "1." + "2" * 70):
            refused = alice.post(pull, json={**study, "study_uid": uid})
            _error(refused, 422, "invalid_request")
            assert uid not in refused.text

        _error(alice.post(pull, json={**study, "study_uid": "1.2.840.99999.1"}), 404, "dicomweb_not_found")
        _error(alice.post(pull, json={**study, "series_uid": "1.2.840.99999.2"}), 404, "dicomweb_not_found")
        down = _error(alice.post(pull, json={**study, "server": "down"}), 502, "dicomweb_unavailable")
        assert "127.0.0.1" not in json.dumps(down)
        assert alice.get(f"/v1/sessions/{session_id}").json()["image_ids"] == []  # nothing attached by a refusal

        schema = alice.get("/v1/openapi.json").json()
        assert {"/v1/sessions/{session_id}/dicomweb/pull", "/v1/sessions/{session_id}/dicomweb/push"} <= set(
            schema["paths"])


def test_servers_are_configured_by_name_from_the_environment_and_the_command_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDAGENT_SERVICE_DICOMWEB_SERVERS", '{"archive": "https://127.0.0.1:9/dicom-web"}')
    settings = _with_dicomweb(ServiceSettings(), ["pacs=http://127.0.0.1:8042/dicom-web"])
    assert settings.dicomweb_servers == {"archive": "https://127.0.0.1:9/dicom-web",
                                         "pacs": "http://127.0.0.1:8042/dicom-web"}
    monkeypatch.setenv("MEDAGENT_SERVICE_DICOMWEB_SERVERS", '{"a b": "http://127.0.0.1/"}')
    with pytest.raises(ValueError, match="server name"):
        ServiceSettings()
    monkeypatch.delenv("MEDAGENT_SERVICE_DICOMWEB_SERVERS")
    for bad, says in (("pacs", "NAME=URL"), ("pacs=file:///etc/passwd", "http(s)"), ("pacs=http://h/?q=1", "http(s)"),
                      ("bad/name=http://127.0.0.1/", "server name")):
        code, output = cli(tmp_path, "serve", "--dicomweb", bad)
        assert code == 2 and says in output, (bad, output)
