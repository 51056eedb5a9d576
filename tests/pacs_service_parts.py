"""A real ``medagent serve`` app on uvicorn (127.0.0.1) wired to a real Orthanc, for the service's DICOMweb and PHI
tests: the served app with a planner object the test keeps (its requests recorded), a planner script that calls
the tools a question names, a test tool that writes a mask NPZ (so a DICOM SEG can be built on any image), and
Orthanc helpers (store through its REST API, list and retrieve through its DICOMweb)."""

from __future__ import annotations

import asyncio
import io
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, Self

import httpx
import numpy as np
import pydicom
import pytest
import uvicorn
from pydantic import BaseModel

from medagent.agents.planner import PlannerConfig
from medagent.agents.scripted import PlannerRequest, ScriptedPlanner, ScriptResult, tool_call
from medagent.cards import ModelCard
from medagent.config import Settings
from medagent.dicomweb import DicomwebClient
from medagent.runtime.results import ExpertResult, Provenance
from medagent.service.app import create_app
from medagent.service.settings import ServiceSettings
from medagent.tools.artifacts import ArtifactKind
from medagent.tools.spec import Tool, ToolContext
from tests import orthanc_server
from tests.service_parts import ImageArgs, library_settings


class Structure(BaseModel):
    label: str
    present: bool
    area_mm2: float | None


class Outlined(ExpertResult):
    mask_id: str
    structures: list[Structure]


async def _outline_structures(arguments: ImageArgs, context: ToolContext) -> Outlined:
    """The brighter half of the image's pixels as the structure 'Body' (a boolean mask on the image's grid)."""
    record = context.load_image(arguments.image_id)
    plane = record.pixels.reshape(record.pixels.shape[-2:]).astype(np.float32)
    mask = plane > float(np.median(plane))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, Body=mask)
    stored = context.artifacts.put_bytes(buffer.getvalue(), ArtifactKind.MASK, "application/x-npz", ".npz",
                                         metadata={"source": arguments.image_id, "labels": ["Body"]})
    spacing = record.spacing_mm
    area = float(mask.sum() * spacing[-1] * spacing[-2]) if spacing else None
    return Outlined(mask_id=stored.id, structures=[Structure(label="Body", present=bool(mask.any()), area_mm2=area)],
                    provenance=Provenance(expert="outline_structures", model_id="tests/outline-structures-v1"))


OUTLINE_STRUCTURES: Tool[Any, Any] = Tool(
    name="outline_structures", card=ModelCard(summary="Outlines the brighter half of an image as a mask (test tool)."),
    input_model=ImageArgs, output_model=Outlined, run=_outline_structures)


def _offered_images(request: PlannerRequest, tool: str) -> list[str]:
    for offered in request.tools:
        if offered["function"]["name"] == tool:
            image_id = offered["function"]["parameters"]["properties"].get("image_id") or {}
            return list(image_id.get("enum", []))
    return []


def naming_planner() -> ScriptedPlanner:
    """A scripted planner: for each question, calls every offered tool the question names (in the question's order)
    on every image offered to it, one call a turn, then answers with the results."""
    def script(request: PlannerRequest) -> ScriptResult:
        asked = max(i for i, message in enumerate(request.messages) if message["role"] == "user")
        question, since = str(request.messages[asked]["content"]), request.messages[asked + 1:]
        named = sorted((name for name in request.tool_names if name in question), key=question.index)
        plan = [(name, image) for name in named for image in _offered_images(request, name)]
        done = sum(1 for message in since if message["role"] == "tool")
        if done < len(plan):
            name, image = plan[done]
            return [tool_call(name, {"image_id": image}, call_id=f"call_{asked}_{done}")]
        results = [str(message["content"]) for message in since if message["role"] == "tool"]
        return " ".join(["Findings from the expert tools:", *results]) if results else "No tool was called."

    return ScriptedPlanner(script, model="scripted:naming", config=PlannerConfig(backend="scripted"))


class ServedPacs:
    """``with ServedPacs(home, planner, servers) as served:`` the service, with these DICOMweb servers by name."""

    def __init__(self, home: Any, planner: ScriptedPlanner, servers: dict[str, str],
                 library: Settings | None = None, **overrides: Any) -> None:
        settings = ServiceSettings(planner=PlannerConfig(backend="scripted"), shutdown_grace_s=5,
                                   dicomweb_servers=servers, **overrides)
        self.home = home
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        app = create_app(settings, library_settings=library or library_settings(home),
                         tools=[OUTLINE_STRUCTURES], planner=planner)
        self.server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False,
                                                    timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the service did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        self.socket.close()
        assert not self.thread.is_alive(), "the service did not stop"

    def client(self, token: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def orthanc_or_skip() -> Iterator[str]:
    reason = orthanc_server.missing()
    if reason is not None:
        pytest.skip(reason)
    with orthanc_server.orthanc_server() as url:
        yield url


def part10(dataset: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def store_in_orthanc(dicomweb_url: str, data: bytes) -> None:
    """Through Orthanc's own REST API (the client's STOW-RS is what pushes test)."""
    answer = httpx.post(f"{dicomweb_url.removesuffix('/dicom-web')}/instances", content=data, timeout=30)
    assert answer.status_code == 200, answer.text


def series_of(dicomweb_url: str, study: str, modality: str) -> list[str]:
    answer = httpx.get(f"{dicomweb_url}/studies/{study}/series", params={"Modality": modality},
                       headers={"Accept": "application/dicom+json"}, timeout=30)
    return [] if answer.status_code == 204 else [item["0020000E"]["Value"][0] for item in answer.json()]


def wado(dicomweb_url: str, study: str, series: str) -> list[bytes]:
    """A series' instances (Part 10 bytes) as the server returns them over WADO-RS."""
    async def fetch() -> list[bytes]:
        async with DicomwebClient(dicomweb_url) as client:
            return [data async for data in client.retrieve_series(
                study, series, max_instances=10, max_instance_bytes=1 << 26, max_total_bytes=1 << 27)]
    return asyncio.run(fetch())
