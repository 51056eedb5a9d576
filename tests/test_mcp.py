"""`medagent mcp` driven by the official MCP SDK's own client: over stdio (the client starts the command) and over
streamable HTTP (a real server on 127.0.0.1). The tools are listed with the planner's schemas, a real chest X-ray is
uploaded as base64 and the classical experts run on its id; bad calls come back as tool errors; an image id of one
session is out of reach of another; synthetic PHI in a DICOM never comes back, nor reaches the debug log."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from medagent.config import Settings
from medagent.errors import ResourceExhausted
from medagent.experts.quality import QualityReport
from medagent.experts.segmentation import Segmentation
from medagent.mcp_server.scopes import CallGate, SessionScopes
from medagent.tools.builtin import Toolbox
from tests.conftest import REPO_ROOT, TEST_SECRET

MCP = [sys.executable, "-m", "medagent.cli", "mcp", "--max-upload-mb", "1"]
CHECKED_SCHEMAS = ("assess_image_quality", "segment_lung_fields", "compare_studies")
OFFERED = ("--tools", "read_dicom_header", "--tools", "assess_image_quality", "--tools", "segment_lung_fields")
PHI = ("Synthetic^Zebediah", "Zebediah", "PID-98765-SYN", "19420317", "ACC-5551234", "17 Quarry Lane", "Fakeville",
       "zebediah free text note", "Synthetic General Hospital")


def _environment(home: Path) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MEDAGENT_")}
    return {**environment, "MEDAGENT_HOME": str(home), "MEDAGENT_DEID_SECRET": TEST_SECRET.decode(),
            "MEDAGENT_XRV_CACHE_DIR": str(home / "xrv")}


def _stdio(home: Path, errlog: Any = None, *extra: str) -> Client:
    params = StdioServerParameters(command=MCP[0], args=[*MCP[1:], *extra], env=_environment(home), cwd=REPO_ROOT)
    return Client(stdio_client(params, errlog=errlog or sys.stderr))


@contextlib.contextmanager
def _http_server(home: Path, log: Path, *extra: str) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/mcp"
    with log.open("wb") as output:
        process = subprocess.Popen([*MCP, "--transport", "http", "--port", str(port), *extra], cwd=REPO_ROOT,
                                   env=_environment(home), stdout=output, stderr=output, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"the server exited {process.returncode}: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"the server did not come up: {log.read_text()[-2000:]}"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def _upload(client: Client, data: bytes) -> str:
    result = await client.call_tool("upload_image", {"content_base64": _b64(data)})
    assert not result.is_error, result.content
    image_id: str = result.structured_content["image_id"]
    assert image_id.startswith("img-")
    return image_id


def _error(result: CallToolResult) -> dict[str, Any]:
    """A tool error: flagged, its code and message as structured content and text, no traceback."""
    assert result.is_error, result.structured_content
    error: dict[str, Any] = result.structured_content["error"]
    text = result.content[0].text  # type: ignore[union-attr]
    assert text == f"[{error['code']}] {error['message']}"
    assert "Traceback" not in text and "File \"" not in text
    return error


async def _check_listing(client: Client, settings: Settings) -> None:
    """The tools and their input schemas are the planner's; outputs are typed; model cards are resources."""
    listed = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert {"upload_image", *CHECKED_SCHEMAS} <= set(listed)
    toolbox = Toolbox(settings)
    try:
        planner = {entry["function"]["name"]: entry["function"]["parameters"]
                   for entry in toolbox.registry.openai_tools(names=list(CHECKED_SCHEMAS))}
        card = toolbox.registry.get("segment_lung_fields").card_dict()
    finally:
        toolbox.close()
    for name in CHECKED_SCHEMAS:
        assert listed[name].input_schema == planner[name], name
        output = listed[name].output_schema
        assert output is not None and output["type"] == "object"
    assert listed["segment_lung_fields"].input_schema["properties"]["image_id"]["type"] == "string"
    assert set(listed["upload_image"].input_schema["properties"]) == {"content_base64", "modality"}
    assert "medagent://cards/segment_lung_fields" in (listed["segment_lung_fields"].description or "")
    assert (listed["segment_lung_fields"].meta or {})["medagent/model_card"] == card
    read = await client.read_resource("medagent://cards/segment_lung_fields")
    assert json.loads(read.contents[0].text) == card  # type: ignore[union-attr]


async def _check_experts(client: Client, image_id: str) -> Segmentation:
    quality = await client.call_tool("assess_image_quality", {"image_id": image_id})
    assert not quality.is_error, quality.content
    report = QualityReport.model_validate(quality.structured_content)
    assert report.usable and report.measures is not None and report.provenance.model_id == "medagent/quality-v1"
    assert json.loads(quality.content[0].text) == quality.structured_content  # type: ignore[union-attr]
    lungs = await client.call_tool("segment_lung_fields", {"image_id": image_id})
    assert not lungs.is_error, lungs.content
    segmentation = Segmentation.model_validate(lungs.structured_content)
    assert {s.label for s in segmentation.structures if s.present} == {"Right Lung", "Left Lung"}
    assert segmentation.mask_id and segmentation.overlay_id and (segmentation.image_height, segmentation.image_width)
    overlays = [block for block in lungs.content if block.type == "image"]
    assert len(overlays) == 1 and base64.b64decode(overlays[0].data).startswith(b"\x89PNG")
    mask = await client.read_resource(f"medagent://artifacts/{segmentation.mask_id}")
    with np.load(io.BytesIO(base64.b64decode(mask.contents[0].blob))) as masks:  # type: ignore[union-attr]
        assert set(masks.files) == {"Right Lung", "Left Lung"}
        assert masks["Left Lung"].shape == (segmentation.image_height, segmentation.image_width)
    return segmentation


async def _check_refusals(client: Client, image_id: str) -> None:
    """Paths, unknown ids, wrong types, unknown arguments and oversized or broken uploads: tool errors, not crashes."""
    for path in ("/etc/passwd", "../../shared/data/torchxrayvision-nih/00000001_000.png", "file:///etc/hosts"):
        error = _error(await client.call_tool("assess_image_quality", {"image_id": path}))
        assert error["code"] == "invalid_arguments" and "path" in error["message"]
    assert _error(await client.call_tool("segment_lung_fields", {"image_id": "img-0123456789ab"}))["code"] \
        == "unknown_artifact"
    for arguments in ({"image_id": 12}, {"image_id": image_id, "structures": "Right Lung"}, {},
                      {"image_id": image_id, "path": "/etc/passwd"}):
        assert _error(await client.call_tool("segment_lung_fields", arguments))["code"] == "invalid_arguments"
    oversized = _error(await client.call_tool("upload_image", {"content_base64": _b64(os.urandom(1_300_000))}))
    assert oversized["code"] == "file_too_large" and oversized["details"]["limit"] == 1024**2
    assert _error(await client.call_tool("upload_image", {"content_base64": "not base64!"}))["code"] \
        == "invalid_arguments"
    assert _error(await client.call_tool("upload_image", {"path": "/etc/passwd"}))["code"] == "invalid_arguments"
    assert _error(await client.call_tool("upload_image", {"content_base64": _b64(b"just some text")}))["code"] \
        == "unsupported_format"
    assert _error(await client.call_tool("no_such_tool", {}))["code"] == "unknown_tool"
    assert not (await client.call_tool("assess_image_quality", {"image_id": image_id})).is_error  # still serving


async def _check_unreachable(client: Client, image_id: str, artifact_id: str) -> None:
    error = _error(await client.call_tool("assess_image_quality", {"image_id": image_id}))
    assert error["code"] == "unknown_artifact"
    with pytest.raises(MCPError, match="no such artifact"):
        await client.read_resource(f"medagent://artifacts/{artifact_id}")


@pytest.mark.asyncio
async def test_over_stdio(settings: Settings, nih_images: list[Path]) -> None:
    home = settings.home
    async with _stdio(home) as client:
        await _check_listing(client, settings)
        image_id = await _upload(client, nih_images[0].read_bytes())
        segmentation = await _check_experts(client, image_id)
        await _check_refusals(client, image_id)
    async with _stdio(home) as other:  # another client: its own server process, the same artifact store
        assert segmentation.overlay_id is not None
        await _check_unreachable(other, image_id, segmentation.overlay_id)


def _create_key(home: Path, name: str) -> str:
    """A key of the service's store, as `medagent keys create` makes it."""
    result = subprocess.run([sys.executable, "-m", "medagent.cli", "keys", "create", name, "--json"], cwd=REPO_ROOT,
                            env=_environment(home), capture_output=True, text=True, timeout=60, check=True)
    key: str = json.loads(result.stdout)["key"]
    return key


@contextlib.asynccontextmanager
async def _keyed(url: str, key: str, **options: Any) -> AsyncIterator[Client]:
    """The SDK's client with the key on every request (an HTTP client the SDK is given, it leaves open: closed here)."""
    async with create_mcp_http_client(headers={"Authorization": f"Bearer {key}"}) as http, \
            Client(streamable_http_client(url, http_client=http), **options) as client:
        yield client


def _check_keys_refused(url: str, key: str, home: Path) -> None:
    """Without a valid key nothing reaches the SDK: no header, a made-up key, a revoked key, another scheme."""
    revoked = _create_key(home, "revoked")
    subprocess.run([sys.executable, "-m", "medagent.cli", "keys", "revoke", revoked.split("_")[1]],
                   cwd=REPO_ROOT, env=_environment(home), capture_output=True, timeout=60, check=True)
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": HANDSHAKE_PROTOCOL_VERSIONS[-1], "capabilities": {},
        "clientInfo": {"name": "probe", "version": "0"}}}
    accept = {"Accept": "application/json, text/event-stream"}
    for headers in ({}, {"Authorization": "Bearer mak_0000_guess"}, {"Authorization": f"Bearer {revoked}"},
                    {"Authorization": f"Basic {key}"}):
        answer = httpx.post(url, json=initialize, headers={**headers, **accept}, timeout=30)
        assert answer.status_code == 401 and answer.headers["www-authenticate"].startswith("Bearer")
        assert key not in answer.text and "mcp-session-id" not in answer.headers
    keyed = httpx.post(url, json=initialize, headers={"Authorization": f"Bearer {key}", **accept}, timeout=30)
    assert keyed.status_code == 200  # the same request, keyed


@pytest.mark.asyncio
async def test_over_http_with_separate_sessions(tmp_path: Path, settings: Settings, nih_images: list[Path]) -> None:
    key = _create_key(settings.home, "ide")
    with _http_server(settings.home, tmp_path / "server.log") as url:
        async with _keyed(url, key) as first, _keyed(url, key) as second:
            assert first.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS  # a version with sessions
            await _check_listing(first, settings)
            image_id = await _upload(first, nih_images[0].read_bytes())
            segmentation = await _check_experts(first, image_id)
            assert segmentation.mask_id is not None
            await _check_unreachable(second, image_id, segmentation.mask_id)
            await _check_refusals(first, image_id)
            assert await _upload(second, nih_images[0].read_bytes()) == image_id  # its own upload: now its own too
            assert not (await second.call_tool("assess_image_quality", {"image_id": image_id})).is_error
        async with _keyed(url, key, mode="2026-07-28") as sessionless:  # no sessions to keep images in: refused, said why
            with pytest.raises(MCPError, match="per MCP session") as refused:
                await sessionless.list_tools()
            assert refused.value.error.code == -32022
        await asyncio.to_thread(_check_keys_refused, url, key, settings.home)


@pytest.mark.asyncio
async def test_http_without_keys_on_loopback(tmp_path: Path, settings: Settings, nih_images: list[Path]) -> None:
    with _http_server(settings.home, tmp_path / "server.log", "--no-auth") as url:
        async with Client(url) as client:
            assert not (await client.call_tool("upload_image", {"content_base64": _b64(
                nih_images[0].read_bytes())})).is_error


def test_http_without_keys_is_refused_off_loopback(settings: Settings) -> None:
    refused = subprocess.run([*MCP, "--transport", "http", "--host", "0.0.0.0", "--no-auth"], cwd=REPO_ROOT,
                             env=_environment(settings.home), capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 2 and "--no-auth" in refused.stderr


@pytest.mark.asyncio
async def test_phi_never_comes_back(tmp_path: Path, pydicom_ct: Path) -> None:
    dataset = pydicom.dcmread(pydicom_ct)
    uids = [str(dataset.StudyInstanceUID), str(dataset.SeriesInstanceUID), str(dataset.SOPInstanceUID)]
    dataset.PatientName, dataset.PatientID, dataset.PatientBirthDate = PHI[0], PHI[2], PHI[3]
    dataset.AccessionNumber, dataset.PatientAddress, dataset.ImageComments = PHI[4], f"{PHI[5]}, {PHI[6]}", PHI[7]
    dataset.InstitutionName = PHI[8]
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    log = tmp_path / "server.log"
    answers: list[str] = []
    with log.open("w") as errlog:
        async with _stdio(tmp_path / "home", errlog, "--log-level", "DEBUG", *OFFERED) as client:
            assert {tool.name for tool in (await client.list_tools()).tools} == {"upload_image", *OFFERED[1::2]}
            upload = await client.call_tool("upload_image", {"content_base64": _b64(buffer.getvalue())})
            assert not upload.is_error, upload.content
            image_id = upload.structured_content["image_id"]
            answers.append(upload.model_dump_json(by_alias=True))
            for name in ("read_dicom_header", "assess_image_quality", "segment_lung_fields"):
                answers.append((await client.call_tool(name, {"image_id": image_id})).model_dump_json(by_alias=True))
    assert json.loads(answers[1])["structuredContent"]["metadata"]["modality"] == "CT"  # the header was read
    assert "precondition_failed" in answers[3]  # a CT is no chest radiograph: a typed error
    everything = "\n".join(answers) + log.read_text()
    for secret in (*PHI, *uids):
        assert secret not in everything, f"{secret!r} came back"


@pytest.mark.asyncio
async def test_calls_are_bounded() -> None:
    """Calls beyond the running and waiting bounds are refused at once, not queued; slots free up again."""
    gate = CallGate(running=1, waiting=1)
    started, release = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        async with gate.slot():
            started.set()
            await release.wait()

    holders = [asyncio.create_task(hold()), asyncio.create_task(hold())]  # one running, one waiting
    await started.wait()
    await asyncio.sleep(0)
    with pytest.raises(ResourceExhausted):
        async with gate.slot():
            pass
    release.set()
    await asyncio.gather(*holders)
    async with gate.slot():
        pass


def test_session_reach_is_bounded() -> None:
    scopes = SessionScopes(max_sessions=2, max_images=2, max_artifacts=2, idle_s=3600)
    scopes.add_image("a", "img-000001")
    scopes.add_image("a", "img-000002")
    with pytest.raises(ResourceExhausted):
        scopes.add_image("a", "img-000003")
    scopes.add_artifacts("a", ["ovl-000001", "mask-000001", "ovl-000002"])  # the oldest result is dropped
    assert not scopes.reaches("a", "ovl-000001") and scopes.reaches("a", "ovl-000002")
    assert not scopes.reaches("b", "img-000001")
    scopes.images("c")  # a third session: the least recently used one ("a") is forgotten
    assert scopes.images("a") == []
    idle = SessionScopes(max_sessions=2, max_images=2, max_artifacts=2, idle_s=0)
    idle.add_image("a", "img-000001")
    time.sleep(0.01)
    assert idle.images("b") == [] and idle.images("a") == []


def test_a_tool_that_is_not_here_is_a_typed_error(tmp_path: Path) -> None:
    result = subprocess.run([*MCP, "--tools", "no_such_tool"], check=False, capture_output=True, text=True,
                            timeout=60, env=_environment(tmp_path / "home"), stdin=subprocess.DEVNULL, cwd=REPO_ROOT)
    assert result.returncode == 2 and "[unknown_tool]" in result.stderr and "segment_lung_fields" in result.stderr
    assert "Traceback" not in result.stderr
