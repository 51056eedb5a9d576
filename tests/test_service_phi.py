"""No PHI leaves de-identification, end to end through ``medagent serve``.

pydicom's CT_small is given a synthetic patient (name, ids, birth date, accession number, addresses, free-text
comments, a private tag and an OriginalAttributesSequence item with the name again). It goes through the service
on a real uvicorn with medagent's debug logging written to a file: uploaded raw, and stored in a real Orthanc and
pulled by UID; asked about with Server-Sent Events and as JSON (the header reader, the quality expert and a mask
tool run); its artifacts downloaded; its DICOM SEG and SR pushed back and read from Orthanc. None of the synthetic
strings, nor their variants, may appear in a log line, a response, an event, an audit record, an artifact, any file
under MEDAGENT_HOME (SQLite files included), the temporary folder, a planner request or any element of the SEG and
SR. The same search finds every string in the original file, so it cannot pass by looking in the wrong way.
"""

from __future__ import annotations

import io
import json
import logging
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from medagent.logs import configure_logging
from medagent.service.sse import parse
from tests.conftest import TEST_SECRET
from tests.pacs_service_parts import (
    ServedPacs,
    naming_planner,
    orthanc_or_skip,
    part10,
    series_of,
    store_in_orthanc,
    wado,
)
from tests.service_parts import new_key

pytestmark = pytest.mark.timeout(120)
SECRETS = ["Zebulon^Quixotic", "Zebulon", "Quixotic", "MRN-7731-XQ", "7731-XQ", "OPID-4402-ZV", "19450317",
           "1945-03-17", "17/03/1945", "03/17/1945", "ACC-55-ZZQ", "742 Evergreen Terrace", "Evergreen",
           "Larkspur Plaza", "Wexford^Ottoline", "Ottoline"]
TOOLS_QUESTION = "Run read_dicom_header, assess_image_quality and outline_structures, please."
ARTIFACT_KEYS = ("image_id", "mask_id", "overlay_id", "overlay_ids", "heatmap_id")


def phi_dataset() -> Dataset:
    dataset = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    dataset.PatientName, dataset.PatientID, dataset.OtherPatientIDs = "Zebulon^Quixotic", "MRN-7731-XQ", "OPID-4402-ZV"
    dataset.PatientBirthDate, dataset.AccessionNumber = "19450317", "ACC-55-ZZQ"
    dataset.PatientAddress = "742 Evergreen Terrace, Springfield"
    dataset.InstitutionAddress = "1 Larkspur Plaza, Fennimore"
    dataset.ReferringPhysicianName = "Wexford^Ottoline"
    dataset.StudyDescription = "CT chest for Zebulon Quixotic MRN-7731-XQ"
    dataset.ImageComments = "Zebulon lives at 742 Evergreen Terrace; born 17/03/1945"
    dataset.AdditionalPatientHistory = "born 1945-03-17 (03/17/1945), accession ACC-55-ZZQ, 7731-XQ"
    dataset.PatientComments = "Quixotic family history noted by Ottoline"
    modified = Dataset()
    modified.PatientName, modified.PatientID = "Zebulon^Quixotic", "MRN-7731-XQ"
    original = Dataset()
    original.ModifiedAttributesSequence = [modified]
    original.AttributeModificationDateTime, original.ModifyingSystem = "20240101120000", "RIS"
    original.SourceOfPreviousValues, original.ReasonForTheAttributeModification = "Evergreen RIS", "CORRECT"
    dataset.OriginalAttributesSequence = [original]
    dataset.private_block(0x0009, "MEDAGENT PHI TEST", create=True).add_new(0x01, "LO", "Zebulon Quixotic private")
    return dataset


def found_in(data: str | bytes) -> list[str]:
    """The secrets in ``data``, compared without case."""
    text = (data.encode() if isinstance(data, str) else data).lower()
    return [secret for secret in SECRETS if secret.lower().encode() in text]


def element_texts(dataset: Dataset) -> Iterator[str]:
    """Every element's value as text, sequences walked, file meta included."""
    for element in [*dataset.file_meta.iterall(), *dataset.iterall()] if hasattr(dataset, "file_meta") \
            else dataset.iterall():
        if element.VR == "SQ":
            continue
        value = element.value
        yield value.decode("latin-1") if isinstance(value, bytes) else str(value)


class _Raw(logging.Handler):
    """Every record with its arguments merged (stricter than medagent's formatter, which never merges them)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.getMessage()} {getattr(record, 'fields', '')}")


@pytest.fixture
def logged(tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    """medagent's JSON-line logs at DEBUG in a file (as ``medagent serve --log-level debug`` writes them), and every
    record of every logger at DEBUG raw."""
    names = ["", "medagent", "uvicorn", "uvicorn.error", "httpx", "httpcore"]
    saved = {name: (logging.getLogger(name).level, logging.getLogger(name).propagate,
                    list(logging.getLogger(name).handlers)) for name in names}
    path = tmp_path / "service.log"
    raw = _Raw()
    with path.open("w", encoding="utf-8") as stream:
        configure_logging("DEBUG", stream=stream)
        configure_logging("DEBUG", stream=stream, logger="uvicorn.error")
        for name in names:
            logging.getLogger(name).addHandler(raw)
            logging.getLogger(name).setLevel(logging.DEBUG)
        try:
            yield path, raw.lines
        finally:
            for name, (level, propagate, handlers) in saved.items():
                logger = logging.getLogger(name)
                logger.setLevel(level)
                logger.propagate = propagate
                logger.handlers[:] = handlers


class Seen:
    """Everything the service sent back, by where it was seen."""

    def __init__(self) -> None:
        self.items: list[tuple[str, bytes]] = []

    def response(self, response: httpx.Response, what: str) -> httpx.Response:
        headers = json.dumps([list(pair) for pair in response.headers.items()])
        self.items.append((f"response {what}", response.content + headers.encode()))
        return response

    def artifacts(self, client: httpx.Client, session_id: str, data: Any) -> int:
        ids: set[str] = set()

        def walk(value: Any, key: str = "") -> None:
            if isinstance(value, dict):
                for inner_key, inner in value.items():
                    walk(inner, inner_key)
            elif isinstance(value, list):
                for inner in value:
                    walk(inner, key)
            elif isinstance(value, str) and key in ARTIFACT_KEYS:
                ids.add(value)

        walk(data)
        for artifact_id in sorted(ids):
            got = self.response(client.get(f"/v1/sessions/{session_id}/artifacts/{artifact_id}"), "artifact")
            assert got.status_code == 200, got.text
        return len(ids)


def _ask(client: httpx.Client, seen: Seen, session_id: str, question: str) -> dict[str, Any]:
    answer = seen.response(client.post(f"/v1/sessions/{session_id}/messages", json={"question": question}), "answer")
    assert answer.status_code == 200, answer.text
    data: dict[str, Any] = answer.json()
    assert [call["ok"] for call in data["tool_calls"]] == [True] * 3, data["tool_calls"]
    return data


@pytest.fixture(scope="module")
def orthanc() -> Iterator[str]:
    yield from orthanc_or_skip()


def test_no_phi_string_reaches_logs_responses_events_audit_artifacts_files_planner_or_pushed_objects(
        orthanc: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, logged: tuple[Path, list[str]]) -> None:
    home, scratch = tmp_path / "home", tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("MEDAGENT_HOME", str(home))
    monkeypatch.setenv("MEDAGENT_DEID_SECRET", TEST_SECRET.decode())
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where uploads and pulls may write for a moment
    dataset = phi_dataset()
    original = part10(dataset)
    assert found_in(original) == SECRETS, "the search does not find the secrets where they are"
    nested_only = Dataset()
    nested_only.OriginalAttributesSequence = dataset.OriginalAttributesSequence
    assert "Zebulon^Quixotic" in found_in("\n".join(element_texts(nested_only))), "the walk misses nested items"
    store_in_orthanc(orthanc, original)
    planner, seen, events = naming_planner(), Seen(), []

    with ServedPacs(home, planner, {"pacs": orthanc}) as served:
        key = new_key(home, "phi", "--rate", "1000", "--burst", "1000")
        with served.client(key) as client:
            uploaded_session = seen.response(client.post("/v1/sessions"), "session").json()["id"]
            uploaded = seen.response(client.post(f"/v1/sessions/{uploaded_session}/images", content=original,
                                                 headers={"Content-Type": "application/dicom"}), "upload")
            assert uploaded.status_code == 201 and uploaded.json()["deidentified"] is True, uploaded.text
            with client.stream("POST", f"/v1/sessions/{uploaded_session}/messages/stream",
                               json={"question": TOOLS_QUESTION}) as streamed:
                assert streamed.status_code == 200
                raw_stream = streamed.read()
            seen.items.append(("the event stream", raw_stream))
            events = parse(raw_stream.decode())
            assert events[-1][0] == "answer" and len(events[-1][1]["tool_calls"]) == 3, events[-1]
            streamed_answer = events[-1][1]
            answered = _ask(client, seen, uploaded_session, TOOLS_QUESTION)
            downloaded = seen.artifacts(client, uploaded_session, [uploaded.json(), streamed_answer, answered])
            seen.response(client.get(f"/v1/sessions/{uploaded_session}/messages"), "history")
            seen.response(client.get(f"/v1/sessions/{uploaded_session}"), "session detail")

            pulled_session = seen.response(client.post("/v1/sessions"), "session").json()["id"]
            pulled = seen.response(client.post(f"/v1/sessions/{pulled_session}/dicomweb/pull", json={
                "server": "pacs", "study_uid": dataset.StudyInstanceUID}), "pull")
            assert pulled.status_code == 201 and pulled.json()["images"][0]["deidentified"] is True, pulled.text
            pulled_answer = _ask(client, seen, pulled_session, TOOLS_QUESTION)
            downloaded += seen.artifacts(client, pulled_session, [pulled.json(), pulled_answer])
            pushed = seen.response(client.post(f"/v1/sessions/{pulled_session}/dicomweb/push",
                                               json={"server": "pacs"}), "push")
            assert pushed.status_code == 200 and len(pushed.json()["segmentations"]) == 1, pushed.text
            assert len(pushed.json()["reports"]) == 1

    study = dataset.StudyInstanceUID
    (seg_series,), (sr_series,) = series_of(orthanc, study, "SEG"), series_of(orthanc, study, "SR")
    derived = [pydicom.dcmread(io.BytesIO(data)) for series in (seg_series, sr_series)
               for data in wado(orthanc, study, series)]
    assert [item.Modality for item in derived] == ["SEG", "SR"]
    assert derived[0].ReferencedSeriesSequence[0].SeriesInstanceUID == dataset.SeriesInstanceUID
    assert all(item.PatientIdentityRemoved == "YES" and str(item.PatientID).startswith("ANON-") for item in derived)
    assert downloaded >= 4, "the images and masks of both sessions were not all downloaded"

    log_path, raw_lines = logged
    log_text = log_path.read_text(encoding="utf-8")
    assert '"logger":"medagent.service.http"' in log_text, "the service's requests were not logged to the file"
    assert any("HTTP Request" in line for line in raw_lines), "the service's own PACS requests were not logged"
    tool_results = [str(message["content"]) for request in planner.requests for message in request.messages
                    if message["role"] == "tool"]
    assert any("DICOM header: CT image" in result for result in tool_results), "the header never reached the planner"
    with sqlite3.connect(home / "service.sqlite") as database:
        audit = database.execute("SELECT * FROM service_audit").fetchall()
    assert len(audit) >= 10

    places: list[tuple[str, bytes]] = [
        *seen.items, ("the log file", log_text.encode()), ("a raw log record", "\n".join(raw_lines).encode()),
        *((f"event {kind}", json.dumps(data).encode()) for kind, data in events),
        ("the audit table", json.dumps(audit).encode()),
        *((f"planner request {request.call_index}", json.dumps(
            {"messages": request.messages, "tools": request.tools, "schema": request.response_schema},
            default=str).encode()) for request in planner.requests),
        *((f"the file {path.relative_to(tmp_path)}", path.read_bytes())
          for folder in (home, scratch) for path in sorted(folder.rglob("*")) if path.is_file()),
        *((f"the pushed {item.Modality}", part10(item)) for item in derived),
        *((f"an element of the pushed {item.Modality}", "\n".join(element_texts(item)).encode()) for item in derived),
    ]
    assert sum(1 for where, _ in places if where.startswith("the file home")) >= 5
    assert not list(scratch.iterdir()), "an upload or a pull left a temporary file behind"
    leaks = {where: found_in(data) for where, data in places if found_in(data)}
    assert not leaks, leaks
