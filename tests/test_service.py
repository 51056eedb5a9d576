"""``medagent serve`` on a real uvicorn (127.0.0.1) driven by httpx: the whole flow, auth, one key never reaching
another's sessions, upload limits, rate limits, shutdown and restart, and a schemathesis run over the schema."""

from __future__ import annotations

import io
import json
import logging
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from medagent.logs import configure_logging
from medagent.service.sse import parse
from tests.service_parts import OUTLINE_WEIGHTS, Served, cli, new_key, served_process, stop

pytestmark = pytest.mark.timeout(120)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """ONE service for the module (scripted planner, the test tools, uploads up to 1 MiB; failed logins are not
    limited here: the fuzzing sends many)."""
    with Served(tmp_path_factory.mktemp("service-home"), max_upload_bytes=1024**2, failed_auth_burst=10_000) as running:
        yield running


@pytest.fixture(scope="module")
def key_a(served: Served) -> str:
    return new_key(served.home, "alice", "--rate", "1000", "--burst", "1000")


@pytest.fixture(scope="module")
def key_b(served: Served) -> str:
    return new_key(served.home, "bob", "--rate", "1000", "--burst", "1000")


def _session(client: httpx.Client, image: Path | None = None) -> str:
    created = client.post("/v1/sessions")
    assert created.status_code == 201, created.text
    session_id = str(created.json()["id"])
    if image is not None:
        uploaded = client.post(f"/v1/sessions/{session_id}/images", content=image.read_bytes(),
                               headers={"Content-Type": "application/dicom"})
        assert uploaded.status_code == 201, uploaded.text
    return session_id


def _stream(client: httpx.Client, path: str, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    with client.stream("POST", path, json=body) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        return parse(response.read().decode())


def test_the_whole_flow_key_session_upload_question_events_artifact_approval(
        served: Served, pydicom_ct: Path, pydicom_mr: Path) -> None:
    key = new_key(served.home, "flow")
    assert key.startswith("mak_")
    with served.client(key) as client:
        session_id = _session(client)
        uploaded = client.post(f"/v1/sessions/{session_id}/images", content=pydicom_ct.read_bytes(),
                               headers={"Content-Type": "application/dicom"})
        assert uploaded.status_code == 201, uploaded.text
        image = uploaded.json()
        assert image["deidentified"] is True and image["summary"]["modality"] == "CT"
        multipart = client.post(f"/v1/sessions/{session_id}/images",
                                files={"file": ("mr.dcm", pydicom_mr.read_bytes(), "application/dicom")})
        assert multipart.status_code == 201 and multipart.json()["summary"]["modality"] == "MR"

        events = _stream(client, f"/v1/sessions/{session_id}/messages/stream", {"question": "outline_image please"})
        kinds = [kind for kind, _ in events]
        assert kinds[0] == "tool_started" and kinds[1] == "tool_finished" and kinds[-1] == "answer"
        assert set(kinds[2:-1]) <= {"token"} and len(kinds) > 3  # the answer streamed as tokens, then the answer
        finished = events[1][1]
        assert finished["tool"] == "outline_image" and finished["ok"] is True
        assert finished["arguments"] == {"image_id": image["image_id"]}  # the first image attached
        overlay_id = finished["output"]["overlay_id"]
        assert events[-1][1]["tool_calls"][0]["output"]["overlay_id"] == overlay_id

        overlay = client.get(f"/v1/sessions/{session_id}/artifacts/{overlay_id}")
        assert overlay.status_code == 200 and overlay.headers["content-type"] == "image/png"
        assert overlay.content.startswith(PNG_MAGIC) and overlay.headers["x-medagent-artifact-kind"] == "overlay"
        assert client.get(f"/v1/sessions/{session_id}/artifacts/{image['image_id']}").status_code == 200

        paused = client.post(f"/v1/sessions/{session_id}/messages", json={"question": "send_report now"})
        assert paused.status_code == 200, paused.text
        assert paused.json()["text"] is None and paused.json()["pending_approval"]["tool"] == "send_report"
        decided = client.post(f"/v1/sessions/{session_id}/approval", json={"approved": True})
        assert decided.status_code == 200, decided.text
        (call,) = decided.json()["tool_calls"]
        assert call["tool"] == "send_report" and call["ok"] is True and decided.json()["text"]
        again = client.post(f"/v1/sessions/{session_id}/approval", json={"approved": False})
        assert again.status_code == 409 and again.json()["error"]["code"] == "no_approval_pending"

        rejected_events = _stream(client, f"/v1/sessions/{session_id}/messages/stream", {"question": "send_report"})
        assert rejected_events[-1][0] == "approval_requested"
        rest = _stream(client, f"/v1/sessions/{session_id}/approval/stream", {"approved": False})
        assert [kind for kind, _ in rest][:2] == ["tool_started", "tool_finished"] and rest[-1][0] == "answer"
        assert rest[1][1]["error"]["code"] == "approval_rejected"

        detail = client.get(f"/v1/sessions/{session_id}").json()
        assert detail["image_ids"] == [image["image_id"], multipart.json()["image_id"]] and not detail["unfinished"]
        history = client.get(f"/v1/sessions/{session_id}/messages").json()
        assert history["total"] == detail["messages"] and history["messages"][0]["role"] in ("system", "user")
        assert session_id in [item["id"] for item in client.get("/v1/sessions").json()["sessions"]]
        experts = {item["name"]: item for item in client.get("/v1/experts").json()["experts"]}
        assert experts["send_report"]["requires_approval"] and "outline_image" in experts

        assert client.delete(f"/v1/sessions/{session_id}").status_code == 204
        assert client.get(f"/v1/sessions/{session_id}").status_code == 404
        with sqlite3.connect(served.home / "sessions.sqlite") as checkpoints:  # the conversation itself is gone
            assert not checkpoints.execute("SELECT count(*) FROM checkpoints WHERE thread_id = ?",
                                           (session_id,)).fetchone()[0]
        assert session_id not in [item["id"] for item in client.get("/v1/sessions").json()["sessions"]]

    code, output = cli(served.home, "audit", "tail", "-n", "200")
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    turn = next(r for r in records if r["kind"] == "turn" and r["session_id"] == session_id
                and any(t["tool"] == "outline_image" for t in r["tools"]))
    assert {"role": "expert", "id": "tests/outline-v1", "weights_sha256": OUTLINE_WEIGHTS} in turn["models"]
    assert any(m["role"] == "planner" for m in turn["models"]) and turn["outcome"] == "answer"
    upload = next(r for r in records if r["endpoint"] == "POST /v1/sessions/{session_id}/images")
    assert len(upload["inputs"]["image_sha256"]) == 64
    assert "outline_image please" not in output  # the question is recorded as its hash only
    code, output = cli(served.home, "audit", "verify")
    assert code == 0, output


def test_a_missing_malformed_wrong_or_revoked_key_is_401_and_health_needs_none(served: Served, key_a: str) -> None:
    with httpx.Client(base_url=served.url, timeout=30) as anonymous:
        assert anonymous.get("/v1/health").status_code == 200
        assert anonymous.get("/v1/ready").json()["ready"] is True
        for headers in ({}, {"Authorization": "Basic YWxpY2U6eA=="}, {"Authorization": "Bearer nonsense"},
                        {"Authorization": f"Bearer {key_a[:-4]}AAAA"}, {"Authorization": f"Bearer {key_a}x" * 40}):
            for path in ("/v1/sessions", "/v1/experts", "/v1/openapi.json"):
                refused = anonymous.get(path, headers=headers)
                assert refused.status_code == 401, (path, refused.text)
                assert refused.headers["www-authenticate"] == "Bearer"
                assert refused.json()["error"]["code"] == "unauthorized"
    doomed = new_key(served.home, "doomed")
    with served.client(doomed) as client:
        assert client.get("/v1/sessions").status_code == 200
        key_id = doomed.split("_")[1]
        code, output = cli(served.home, "keys", "revoke", key_id)
        assert code == 0, output
        assert client.get("/v1/sessions").status_code == 401  # at once, though the key verified a moment ago
    code, output = cli(served.home, "keys", "list", "--json")
    listed = {item["key_id"]: item for item in json.loads(output.strip().splitlines()[-1])}
    assert listed[key_id]["revoked_at"] and "secret" not in output and doomed not in output


def test_log_lines_are_json_with_request_and_session_ids_and_never_the_question(served: Served, key_a: str,
                                                                                pydicom_ct: Path) -> None:
    stream, logger = io.StringIO(), logging.getLogger("medagent")
    before = (logger.level, logger.propagate)
    handler = configure_logging("DEBUG", stream)
    try:
        with served.client(key_a) as client:
            session_id = _session(client, pydicom_ct)
            asked = client.post(f"/v1/sessions/{session_id}/messages", json={"question": "outline_image Q-7f3a-PRIVATE"})
            assert asked.status_code == 200
            assert client.get(f"/v1/sessions/{'0' * 32}").status_code == 404
        deadline = time.monotonic() + 5  # a request's line is written once its response has gone out
        while stream.getvalue().count('"logger":"medagent.service.http"') < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before[0])
        logger.propagate = before[1]
    text = stream.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    requests = [line for line in lines if line["logger"] == "medagent.service.http"]
    assert len(requests) >= 4 and all(line["request_id"] for line in requests)
    by_route = {line["fields"]["route"]: line for line in requests}
    assert by_route["ask"]["session_id"] == session_id and by_route["ask"]["fields"]["status"] == 200
    assert by_route["ask"]["request_id"] == asked.headers["x-request-id"]
    assert by_route["get_session"]["fields"]["status"] == 404 and by_route["get_session"]["session_id"] == "0" * 32
    assert "Q-7f3a-PRIVATE" not in text and "outline_image Q" not in text


def test_keys_are_stored_as_scrypt_hashes_never_raw(served: Served, key_a: str) -> None:
    database = served.home / "service.sqlite"
    assert database.stat().st_mode & 0o777 == 0o600
    raw = b"".join(path.read_bytes() for path in served.home.glob("service.sqlite*"))
    secret = key_a.split("_", 2)[2]
    assert key_a.encode() not in raw and secret.encode() not in raw
    with sqlite3.connect(database) as connection:
        (stored,) = connection.execute("SELECT secret_hash FROM service_api_keys WHERE key_id = ?",
                                       (key_a.split("_")[1],)).fetchone()
    assert stored.startswith("scrypt$16384$8$1$") and secret not in stored


def test_every_route_that_takes_a_session_id_is_404_for_another_key(served: Served, key_a: str, key_b: str,
                                                                    pydicom_ct: Path) -> None:
    with served.client(key_a) as alice, served.client(key_b) as bob:
        theirs = _session(alice, pydicom_ct)
        answer = alice.post(f"/v1/sessions/{theirs}/messages", json={"question": "outline_image"}).json()
        overlay_id = answer["tool_calls"][0]["output"]["overlay_id"]
        paused = alice.post(f"/v1/sessions/{theirs}/messages", json={"question": "send_report"}).json()
        assert paused["pending_approval"] is not None
        schema = alice.get("/v1/openapi.json").json()
        bodies: dict[str, dict[str, Any]] = {
            "/messages": {"json": {"question": "outline_image"}}, "/messages/stream": {"json": {"question": "x"}},
            "/approval": {"json": {"approved": True}}, "/approval/stream": {"json": {"approved": True}},
            "/images": {"content": pydicom_ct.read_bytes(), "headers": {"Content-Type": "application/dicom"}},
            "/dicomweb/pull": {"json": {"server": "pacs", "study_uid": "1.2.3"}}, "/dicomweb/push": {"json": {"server": "pacs"}}}
        tried = []
        mine = _session(bob, pydicom_ct)
        for template, operations in schema["paths"].items():
            if "{session_id}" not in template:
                continue
            for method in operations:
                for session_id, artifact in ((theirs, overlay_id), ("0" * 32, overlay_id), (mine, overlay_id)):
                    if session_id == mine and "{artifact_id}" not in template:
                        continue  # bob's own session: only another's artifact through it is tried
                    path = template.format(session_id=session_id, artifact_id=artifact)
                    suffix = template.split("{session_id}", 1)[1]
                    response = bob.request(method.upper(), path, **bodies.get(suffix, {}))
                    assert response.status_code == 404, (method, template, response.text)
                    assert response.json()["error"]["code"] in ("session_not_found", "unknown_artifact")
                    tried.append((method, template))
        assert len(set(tried)) >= 10  # every id-bearing route of the schema (ten today)
        assert theirs not in [item["id"] for item in bob.get("/v1/sessions").json()["sessions"]]
        # alice's session is untouched: still there, still waiting for her decision
        assert alice.post(f"/v1/sessions/{theirs}/approval", json={"approved": True}).json()["tool_calls"][0]["ok"]


def test_uploads_over_the_limit_or_not_images_are_refused_typed(served: Served, key_a: str, pydicom_ct: Path) -> None:
    with served.client(key_a) as client:
        session_id = _session(client)
        path = f"/v1/sessions/{session_id}/images"
        big = b"\0" * (1024**2 + 1)
        declared = client.post(path, content=big, headers={"Content-Type": "application/dicom"})
        assert declared.status_code == 413 and declared.json()["error"]["code"] in ("payload_too_large", "file_too_large")

        def chunks() -> Iterator[bytes]:  # no Content-Length: the bound is enforced while it streams
            for _ in range(40):
                yield b"\0" * 65536

        streamed = client.post(path, content=chunks(), headers={"Content-Type": "application/dicom"})
        assert streamed.status_code == 413, streamed.text
        multipart = client.post(path, files={"file": ("big.dcm", big, "application/dicom")})
        assert multipart.status_code == 413
        wrong_type = client.post(path, content=b"hello", headers={"Content-Type": "text/plain"})
        assert wrong_type.status_code == 415 and wrong_type.json()["error"]["code"] == "unsupported_media_type"
        not_an_image = client.post(path, content=b"just some text, not a PNG", headers={"Content-Type": "image/png"})
        assert not_an_image.status_code == 415 and not_an_image.json()["error"]["code"] == "unsupported_format"
        truncated = client.post(path, content=pydicom_ct.read_bytes()[:2000], headers={"Content-Type": "application/dicom"})
        assert truncated.status_code in (415, 422) and truncated.json()["error"]["family"] == "tool_failure"
        assert client.post(path, content=b"", headers={"Content-Type": "image/png"}).status_code == 422
        no_file = client.post(path, files={"other": ("x", b"1", "text/plain")})
        assert no_file.status_code == 422
        too_long = client.post(f"/v1/sessions/{session_id}/messages", json={"question": "x" * 9000})
        assert too_long.status_code == 422 and "x" * 100 not in too_long.text
        huge_json = client.post(f"/v1/sessions/{session_id}/messages", content=b"{" + b" " * (2 * 1024**2) + b"}",
                                headers={"Content-Type": "application/json"})
        assert huge_json.status_code == 413
        assert client.get(f"/v1/sessions/{session_id}").json()["image_ids"] == []


def test_a_key_past_its_rate_gets_429_with_retry_after_and_failed_logins_are_limited(tmp_path: Path) -> None:
    with Served(tmp_path / "home", failed_auth_burst=3, failed_auth_per_s=0.1) as served:
        slow, other = new_key(served.home, "slow", "--rate", "0.2", "--burst", "3"), new_key(served.home, "other")
        with served.client(slow) as client, served.client(other) as fine:
            statuses = [client.get("/v1/sessions").status_code for _ in range(4)]
            assert statuses == [200, 200, 200, 429]
            limited = client.get("/v1/sessions")
            assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
            assert limited.json()["error"]["code"] == "rate_limited"
            assert fine.get("/v1/sessions").status_code == 200  # buckets are per key
        with served.client("mak_000000000000_" + "A" * 43) as guesser:
            assert [guesser.get("/v1/sessions").status_code for _ in range(4)] == [401, 401, 401, 429]


def _until_tool_started(client: httpx.Client, path: str, body: dict[str, Any],
                        started: threading.Event) -> list[tuple[str, dict[str, Any]]]:
    """The events of a streamed turn; ``started`` is set once a tool has started (the turn is mid-step)."""
    text = ""
    try:
        with client.stream("POST", path, json=body) as response:
            for chunk in response.iter_text():
                text += chunk
                if "event: tool_started" in text:
                    started.set()
    except httpx.HTTPError:
        pass  # the service went away under this stream
    finally:
        started.set()
    return parse(text)


def _stream_in_thread(client: httpx.Client, path: str, body: dict[str, Any]
                      ) -> tuple[threading.Thread, threading.Event, list[tuple[str, dict[str, Any]]]]:
    started, events = threading.Event(), []
    reader = threading.Thread(target=lambda: events.extend(_until_tool_started(client, path, body, started)))
    reader.start()
    assert started.wait(60)
    return reader, started, events


def test_sigterm_lets_a_running_turn_finish_and_a_restarted_service_resumes_sessions_by_id(
        tmp_path: Path, pydicom_ct: Path) -> None:
    home = tmp_path / "home"
    with served_process(home, grace_s=10, slow_s=1.0) as (process, url):
        key = new_key(home, "restart")
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
            finished_id, pending_id = _session(client, pydicom_ct), _session(client, pydicom_ct)
            reader, _started, events = _stream_in_thread(
                client, f"/v1/sessions/{finished_id}/messages/stream", {"question": "wait_a_while"})
            # the running turn finishes first; uvicorn then ends by the signal it caught (its exit status says so)
            assert stop(process) == -signal.SIGTERM
            reader.join(30)
    assert [kind for kind, _ in events][:2] == ["tool_started", "tool_finished"] and events[-1][0] == "answer"
    with Served(home) as second, second.client(key) as client:
        detail = client.get(f"/v1/sessions/{finished_id}").json()
        assert detail["messages"] >= 4 and not detail["unfinished"]
        texts = [m.get("content") for m in client.get(f"/v1/sessions/{finished_id}/messages").json()["messages"]]
        assert events[-1][1]["text"] in texts
        # an image uploaded before the restart and not yet asked about is still offered
        answer = client.post(f"/v1/sessions/{pending_id}/messages", json={"question": "outline_image"}).json()
        assert answer["tool_calls"][0]["ok"] is True


def test_a_turn_past_the_grace_period_is_stopped_at_its_checkpoint_and_resumed_after_restart(
        tmp_path: Path, pydicom_ct: Path) -> None:
    home = tmp_path / "home"
    with served_process(home, grace_s=1, slow_s=60.0) as (process, url):
        key = new_key(home, "resume")
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
            session_id = _session(client, pydicom_ct)
            reader, _started, events = _stream_in_thread(
                client, f"/v1/sessions/{session_id}/messages/stream", {"question": "wait_a_while"})
            stop(process)
            reader.join(30)
    assert "answer" not in [kind for kind, _ in events]
    with Served(home) as second, second.client(key) as client:
        detail = client.get(f"/v1/sessions/{session_id}")
        assert detail.json()["unfinished"] is True, detail.text
        resumed = client.post(f"/v1/sessions/{session_id}/resume")
        assert resumed.status_code == 200, resumed.text
        assert resumed.json()["tool_calls"][0]["tool"] == "wait_a_while" and resumed.json()["text"]
        assert client.post(f"/v1/sessions/{session_id}/resume").status_code == 409
    _code, output = cli(home, "audit", "tail", "-n", "50")
    assert '"outcome":"stopped"' in output.replace(" ", ""), output


def test_schemathesis_finds_no_server_error_in_the_openapi_schema(served: Served, pydicom_ct: Path) -> None:
    """Every operation, with data that fits the schema and data that does not (bounded examples, derandomized);
    operations on a session get a real one of the fuzzing key, with an image, so their handlers run."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation.modes import GenerationMode

    key = new_key(served.home, "fuzz", "--rate", "10000", "--burst", "100000")
    auth = {"Authorization": f"Bearer {key}"}
    schema = schemathesis.openapi.from_url(f"{served.url}/v1/openapi.json", headers=auth)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 14
    failures: list[tuple[str, str, int, str]] = []
    statuses: set[int] = set()
    with served.client(key) as client:
        for operation in operations:
            for mode in GenerationMode:
                fixed: dict[str, str] = {}
                if "{session_id}" in operation.path:
                    fixed["session_id"] = _session(client)
                    image = client.post(f"/v1/sessions/{fixed['session_id']}/images", content=pydicom_ct.read_bytes(),
                                        headers={"Content-Type": "application/dicom"}).json()
                    if "{artifact_id}" in operation.path and mode.is_positive:
                        fixed["artifact_id"] = image["image_id"]

                @settings(max_examples=8, deadline=None, database=None, derandomize=True,
                          suppress_health_check=list(HealthCheck))
                @given(case=operation.as_strategy(generation_mode=mode, path_parameters=fixed))
                def check(case: Any) -> None:
                    response = case.call(base_url=served.url, headers=auth, timeout=30)
                    statuses.add(response.status_code)
                    if response.status_code >= 500:
                        failures.append((case.method, case.path, response.status_code, response.text[:300]))

                try:
                    check()
                except Unsatisfiable:  # nothing to break in an operation without parameters or body
                    assert not mode.is_positive
    assert not failures, failures
    assert {200, 201, 204, 401, 404, 409, 422} <= statuses  # the handlers ran, not only the refusals
