"""The OpenAI facade of ``medagent serve`` driven by the official ``openai`` client, unmodified, on a real uvicorn
(127.0.0.1): models, chat completions with real images as data URLs (streamed and not), the tool trace and
provenance in the ``medagent`` field, the keys, bounds and audit of the rest of the service."""

from __future__ import annotations

import base64
import io
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pydicom
import pytest
from PIL import Image

from medagent.service.openai_inputs import CLOSE, question
from medagent.service.openai_schemas import ChatMessage
from tests.dicom_files import cr_dicom
from tests.openai_parts import ANSWER, FacadeServed, data_url
from tests.service_parts import OUTLINE_WEIGHTS, cli, new_key

pytestmark = pytest.mark.timeout(120)
MIB = 1024**2


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FacadeServed]:
    """ONE service for the module: uploads up to 1 MiB, so chat bodies up to 1.4 MiB (the default bound)."""
    with FacadeServed(tmp_path_factory.mktemp("facade-home"), max_upload_bytes=MIB) as running:
        yield running


@pytest.fixture(scope="module")
def key(served: FacadeServed) -> str:
    return new_key(served.home, "harness", "--rate", "1000", "--burst", "1000")


_CLIENTS: list[openai.OpenAI] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _CLIENTS:
        _CLIENTS.pop().close()


def _client(served: FacadeServed, key: str) -> openai.OpenAI:
    """OpenAI's client, as a harness makes it: the service's URL and one of its keys (closed after the test)."""
    _CLIENTS.append(openai.OpenAI(base_url=f"{served.url}/v1", api_key=key, max_retries=0, timeout=60))
    return _CLIENTS[-1]


def _ask(text: str, url: str, *earlier: dict[str, Any]) -> list[Any]:
    return [*earlier, {"role": "user", "content": [{"type": "text", "text": text},
                                                   {"type": "image_url", "image_url": {"url": url}}]}]


def test_models_list_medagent_and_an_unknown_model_is_a_not_found_error(served: FacadeServed, key: str,
                                                                         nih_images: list[Path]) -> None:
    client = _client(served, key)
    assert [model.id for model in client.models.list()] == ["medagent"]
    assert client.models.retrieve("medagent").owned_by == "medagent"
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-4o")
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="gpt-4o", messages=_ask("Cardiomegaly?", data_url(nih_images[0],
                                                                                               "image/png")))
    assert unknown.value.code == "model_not_found" and unknown.value.type == "invalid_request_error"


def test_a_completion_with_a_png_answers_with_the_tool_trace_and_keeps_the_session_for_this_key_only(
        served: FacadeServed, key: str, nih_images: list[Path]) -> None:
    client = _client(served, key)
    calls_before = len(served.planner.requests)
    reply = client.chat.completions.create(model="medagent", temperature=0.2, max_tokens=200, messages=_ask(
        "Is there cardiomegaly?", data_url(nih_images[0], "image/png"),
        {"role": "system", "content": "You are a careful radiologist."},
        {"role": "user", "content": "Hello, I have a chest film."}, {"role": "assistant", "content": "Send it."}))
    assert reply.object == "chat.completion" and reply.model == "medagent"
    (choice,) = reply.choices
    assert choice.message.role == "assistant" and choice.message.content == ANSWER
    assert choice.finish_reason == "stop"
    info = reply.model_extra["medagent"]
    (call,) = info["tool_calls"]
    assert call["tool"] == "outline_image" and call["ok"] is True and call["error"] is None
    assert call["provenance"] == {"expert": "outline", "model_id": "tests/outline-v1",
                                  "weights_sha256": OUTLINE_WEIGHTS, "untrained": False}
    assert info["planner_model"] == "scripted:facade-test" and info["rejected_approvals"] == []
    assert len(info["image_ids"]) == 1 and info["session_kept"] is True
    # the planner was asked the last message, after the earlier ones as fenced context, system first
    asked = next(str(message.get("content")) for request in served.planner.requests[calls_before:]
                 for message in request.messages if message["role"] == "user")
    assert asked.endswith("\n\nIs there cardiomegaly?") and CLOSE in asked
    assert asked.index("system: You are a careful radiologist.") < asked.index("assistant: Send it.")

    with served.client(key) as native:  # the session is this key's, in the native API
        detail = native.get(f"/v1/sessions/{info['session_id']}")
        assert detail.status_code == 200 and detail.json()["image_ids"] == info["image_ids"]
        overlay = native.get(f"/v1/sessions/{info['session_id']}/artifacts/{call['output']['overlay_id']}")
        assert overlay.status_code == 200 and overlay.headers["content-type"] == "image/png"
    with served.client(new_key(served.home, "other-clinic")) as other:
        assert other.get(f"/v1/sessions/{info['session_id']}").status_code == 404
        assert other.get(f"/v1/sessions/{info['session_id']}/messages").status_code == 404


def test_a_streamed_completion_with_a_dicom_streams_tokens_then_the_trace_and_no_phi(
        served: FacadeServed, key: str, nih_images: list[Path], tmp_path: Path) -> None:
    dicom = cr_dicom(nih_images[0], tmp_path / "chest.dcm")
    dataset = pydicom.dcmread(dicom)
    dataset.PatientName, dataset.PatientID = "Quarrington^Ysolde", "MRN-77310"
    dataset.save_as(dicom)
    calls_before = len(served.planner.requests)
    stream = _client(served, key).chat.completions.create(
        model="medagent", stream=True, stream_options={"include_usage": True},
        messages=_ask("Is there cardiomegaly?", data_url(dicom, "application/dicom")))
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == ANSWER
    contents = [chunk for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]
    assert len(contents) > 3  # token by token, as the planner streamed them
    final = next(chunk for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason)
    assert final.choices[0].finish_reason == "stop"
    info = final.model_extra["medagent"]
    assert [call["tool"] for call in info["tool_calls"]] == ["outline_image"]
    assert info["tool_calls"][0]["provenance"]["model_id"] == "tests/outline-v1"
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    planner_saw = json.dumps([request.messages for request in served.planner.requests[calls_before:]], default=str)
    everything = planner_saw + json.dumps([chunk.model_dump() for chunk in chunks])
    assert "Quarrington" not in everything and "MRN-77310" not in everything
    with served.client(key) as native:  # the stored image is the de-identified one
        image = native.get(f"/v1/sessions/{info['session_id']}/artifacts/{info['image_ids'][0]}")
    assert image.status_code == 200 and len(image.content) > 100_000
    assert b"Quarrington" not in image.content and b"MRN-77310" not in image.content


def test_a_tool_that_needs_approval_is_rejected_and_the_reply_says_so(served: FacadeServed, key: str,
                                                                      nih_images: list[Path]) -> None:
    reply = _client(served, key).chat.completions.create(
        model="medagent", messages=_ask("send_report to the ward", data_url(nih_images[1], "image/png")),
        extra_body={"medagent": {"keep_session": False}})
    assert reply.choices[0].message.content == ANSWER
    info = reply.model_extra["medagent"]
    assert info["rejected_approvals"] == ["send_report"] and info["session_kept"] is False
    (call,) = info["tool_calls"]
    assert call["tool"] == "send_report" and call["ok"] is False and call["error"]["code"] == "approval_rejected"
    with served.client(key) as native:  # keep_session false: gone once answered
        assert native.get(f"/v1/sessions/{info['session_id']}").status_code == 404


def test_a_wrong_or_missing_key_is_an_authentication_error(served: FacadeServed, nih_images: list[Path]) -> None:
    for wrong in ("mak_" + "0" * 40, "not-a-key"):
        with pytest.raises(openai.AuthenticationError) as refused:
            _client(served, wrong).chat.completions.create(model="medagent", messages=_ask(
                "Cardiomegaly?", data_url(nih_images[0], "image/png")))
        assert refused.value.code == "unauthorized" and refused.value.type == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        _client(served, "mak_" + "1" * 40).models.list()
    response = httpx.get(f"{served.url}/v1/models", timeout=30)
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_an_http_image_url_is_a_400_and_is_never_fetched(served: FacadeServed, key: str) -> None:
    with socket.socket() as listener:  # a server the URL names: nothing may connect to it
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        listener.setblocking(False)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/chest.png"
        with served.client(key) as native:
            before = len(native.get("/v1/sessions").json()["sessions"])
        for image in (url, url.replace("http:", "https:"), "file:///etc/passwd", "ftp://127.0.0.1/x.png"):
            with pytest.raises(openai.BadRequestError) as refused:
                _client(served, key).chat.completions.create(model="medagent", messages=_ask("Cardiomegaly?", image))
            assert refused.value.code == "image_url_not_supported"
        with pytest.raises(BlockingIOError):
            listener.accept()
    with served.client(key) as native:  # refused before any session was made
        assert len(native.get("/v1/sessions").json()["sessions"]) == before


def _noise_png(side: int) -> bytes:
    """A real PNG whose noise does not compress: about side² bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(7).integers(0, 256, (side, side), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_chat_bodies_have_their_own_bound_and_each_image_the_upload_bound(served: FacadeServed, key: str) -> None:
    client = _client(served, key)
    fits = _noise_png(920)  # ~0.81 MiB: its base64 body is over max_body_bytes (1 MiB), under the chat bound
    body = base64.b64encode(fits).decode()
    assert MIB < len(body) < 1.4 * MIB
    reply = client.chat.completions.create(model="medagent", messages=_ask("Cardiomegaly?",
                                                                          f"data:image/png;base64,{body}"))
    assert reply.choices[0].message.content == ANSWER
    for side, reason in ((1100, "the body is over the chat bound"), (1030, "the image is over the upload bound")):
        image = base64.b64encode(_noise_png(side)).decode()
        with pytest.raises(openai.APIStatusError) as refused:
            client.chat.completions.create(model="medagent", messages=_ask("Cardiomegaly?",
                                                                           f"data:image/png;base64,{image}"))
        assert refused.value.status_code == 413, reason
        assert refused.value.code == "payload_too_large", reason
        assert refused.value.type == "invalid_request_error", reason


def test_requests_the_facade_cannot_answer_are_typed_400s(served: FacadeServed, key: str,
                                                          nih_images: list[Path]) -> None:
    client = _client(served, key)
    url = data_url(nih_images[0], "image/png")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"messages": [*_ask("Cardiomegaly?", url), {"role": "assistant", "content": "Yes."}]}, "invalid_request"),
        ({"messages": _ask("Cardiomegaly?", url), "n": 2}, "invalid_request"),
        ({"messages": _ask("Cardiomegaly?", url), "tools": [{"type": "function", "function": {"name": "x"}}]},
         "invalid_request"),
        ({"messages": []}, "invalid_request"),
        ({"messages": _ask("Cardiomegaly?", "data:image/png;base64,%%%")}, "invalid_request"),
        ({"messages": _ask("x" * 8001, url)}, "context_length_exceeded"),
    ]
    for arguments, code in cases:
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model="medagent", **arguments)
        assert refused.value.code == code, arguments.keys()
    with pytest.raises(openai.APIStatusError) as unsupported:
        client.chat.completions.create(model="medagent", messages=_ask("Cardiomegaly?", "data:text/html;base64,PGI+"))
    assert unsupported.value.status_code == 415


def test_a_key_past_its_rate_gets_a_rate_limit_error(served: FacadeServed) -> None:
    client = _client(served, new_key(served.home, "slow-harness", "--rate", "0.1", "--burst", "1"))
    client.models.list()
    with pytest.raises(openai.RateLimitError) as limited:
        client.models.list()
    assert limited.value.code == "rate_limited" and int(limited.value.response.headers["retry-after"]) >= 1


def test_the_bounded_question_keeps_the_system_message_and_the_latest_turns() -> None:
    messages = [ChatMessage(role="system", content="Answer as a radiologist."),
                *[ChatMessage(role="user" if n % 2 else "assistant", content=f"turn {n} " + "." * 300)
                  for n in range(40)], ChatMessage(role="user", content="And now?")]
    asked = question(messages, 2000)
    assert len(asked) <= 2000 and asked.endswith("\n\nAnd now?")
    assert "system: Answer as a radiologist." in asked and "turn 39" in asked and "turn 0 " not in asked
    assert "earlier messages left out]" in asked
    assert question(messages[-1:], 2000) == "And now?"


def test_facade_calls_are_audited_like_every_route(served: FacadeServed, key: str, nih_images: list[Path]) -> None:
    reply = _client(served, key).chat.completions.create(model="medagent", messages=_ask(
        "Audited question about the heart?", data_url(nih_images[0], "image/png")))
    session_id = reply.model_extra["medagent"]["session_id"]
    with pytest.raises(openai.AuthenticationError):
        _client(served, "mak_" + "2" * 40).chat.completions.create(model="medagent", messages=_ask("x", "y"))
    code, output = cli(served.home, "audit", "tail", "-n", "400")
    assert code == 0, output
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    chats = [r for r in records if r["endpoint"] == "POST /v1/chat/completions"]
    request = next(r for r in chats if r["kind"] == "request" and r["request_id"] == next(
        t["request_id"] for t in chats if t["kind"] == "turn" and t["session_id"] == session_id))
    assert request["status"] == 200 and len(request["inputs"]["question_sha256"]) == 64
    assert len(request["inputs"]["image_1_sha256"]) == 64
    turn = next(r for r in chats if r["kind"] == "turn" and r["session_id"] == session_id)
    assert turn["outcome"] == "answer" and [tool["tool"] for tool in turn["tools"]] == ["outline_image"]
    assert {"role": "expert", "id": "tests/outline-v1", "weights_sha256": OUTLINE_WEIGHTS} in turn["models"]
    assert any(r["status"] == 401 and r["key_id"] is None for r in chats)
    assert any(r["endpoint"] == "GET /v1/models" for r in records)
    assert "Audited question" not in output
    code, output = cli(served.home, "audit", "verify")
    assert code == 0, output


def test_the_chat_body_bound_and_session_keeping_are_the_services_settings(tmp_path: Path,
                                                                           nih_images: list[Path]) -> None:
    """``max_chat_body_bytes`` replaces the derived bound; ``chat_keep_sessions=false`` deletes each session once
    answered unless the request asks to keep it."""
    image = data_url(nih_images[0], "image/png")
    with FacadeServed(tmp_path / "home", max_chat_body_bytes=len(image) + 4096, chat_keep_sessions=False) as served:
        key = new_key(served.home, "settings")
        client = _client(served, key)
        dropped = client.chat.completions.create(model="medagent", messages=_ask("Cardiomegaly?", image))
        kept = client.chat.completions.create(model="medagent", messages=_ask("Cardiomegaly?", image),
                                              extra_body={"medagent": {"keep_session": True}})
        assert dropped.model_extra["medagent"]["session_kept"] is False
        assert kept.model_extra["medagent"]["session_kept"] is True
        with served.client(key) as native:
            assert native.get(f"/v1/sessions/{dropped.model_extra['medagent']['session_id']}").status_code == 404
            assert native.get(f"/v1/sessions/{kept.model_extra['medagent']['session_id']}").status_code == 200
        with pytest.raises(openai.APIStatusError) as refused:  # two such images: over the configured bound
            client.chat.completions.create(model="medagent", messages=_ask(
                "Cardiomegaly?", image, {"role": "user", "content": [{"type": "image_url", "image_url": {
                    "url": data_url(nih_images[1], "image/png")}}]}))
        assert refused.value.status_code == 413 and refused.value.code == "payload_too_large"
