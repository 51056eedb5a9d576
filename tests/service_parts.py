"""A real ``medagent serve`` app on uvicorn (127.0.0.1): in a thread of the test process, or in a process of its own
that SIGTERM stops (``python -m tests.service_parts HOME PORT GRACE_S SLOW_S``); the scripted planner, and tools for
the service tests: one that writes an overlay, one that needs approval, one that can be made slow."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import httpx
import numpy as np
import uvicorn
from PIL import Image
from pydantic import BaseModel, ConfigDict
from typer.testing import CliRunner

from medagent.agents.planner import PlannerConfig
from medagent.cards import ModelCard
from medagent.cli.main import app as cli_app
from medagent.config import Settings
from medagent.runtime.results import ExpertResult, Provenance
from medagent.service.app import create_app
from medagent.service.settings import ServiceSettings
from medagent.tools.artifacts import ArtifactKind
from medagent.tools.spec import ImageId, Tool, ToolContext, ToolPolicy
from tests.conftest import TEST_SECRET

OUTLINE_WEIGHTS = "ab" * 32
SLOW = {"seconds": 0.0}  # the slow tool's delay (set in a service process of its own)


class ImageArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_id: ImageId


class Outlined(ExpertResult):
    overlay_id: str


class Done(ExpertResult):
    done: bool = True


def _provenance(name: str, weights: str | None = None) -> Provenance:
    return Provenance(expert=name, model_id=f"tests/{name}-v1", weights_sha256=weights)


async def _outline(arguments: ImageArgs, context: ToolContext) -> Outlined:
    pixels = context.load_image(arguments.image_id).pixels.astype(np.float32)
    plane = pixels.reshape(pixels.shape[-2:]) if pixels.ndim > 2 else pixels
    scaled = (255 * (plane - plane.min()) / max(float(np.ptp(plane)), 1e-6)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(scaled).save(buffer, format="PNG")
    overlay = context.artifacts.put_png(buffer.getvalue(), ArtifactKind.OVERLAY,
                                        provenance={"expert": "outline", "untrained": False})
    return Outlined(overlay_id=overlay.id, provenance=_provenance("outline", OUTLINE_WEIGHTS))


async def _send(_arguments: ImageArgs, _context: ToolContext) -> Done:
    return Done(provenance=_provenance("send"))


async def _slow(_arguments: ImageArgs, _context: ToolContext) -> Done:
    await asyncio.sleep(SLOW["seconds"])
    return Done(provenance=_provenance("slow"))


TOOLS: list[Tool[Any, Any]] = [
    Tool(name="outline_image", card=ModelCard(summary="Draws the image as an overlay (test tool)."),
         input_model=ImageArgs, output_model=Outlined, run=_outline),
    Tool(name="send_report", card=ModelCard(summary="Sends a report; a human approves first (test tool)."),
         input_model=ImageArgs, output_model=Done, run=_send, policy=ToolPolicy(requires_approval=True)),
    Tool(name="wait_a_while", card=ModelCard(summary="Waits as long as the test says (test tool)."),
         input_model=ImageArgs, output_model=Done, run=_slow, policy=ToolPolicy(timeout_s=60)),
]


def library_settings(home: Path) -> Settings:
    return Settings(home=home, xrv_cache_dir=home / "xrv", deid_secret=TEST_SECRET.decode(), plugins=False)


class Served:
    """``with Served(home, **service_settings) as served:`` a started service; leaving stops it as SIGTERM would."""

    def __init__(self, home: Path, *, grace_s: int = 10, **overrides: Any) -> None:
        settings = ServiceSettings(planner=PlannerConfig(backend="scripted"), shutdown_grace_s=grace_s, **overrides)
        self.home = home
        self.socket = socket.socket()  # bound here and handed to uvicorn: no other process can take the port
        self.socket.bind(("127.0.0.1", 0))
        self.port = int(self.socket.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        app = create_app(settings, library_settings=library_settings(home), tools=TOOLS)
        self.server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False,
                                                    timeout_graceful_shutdown=grace_s))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the service did not start"
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        assert not self.thread.is_alive(), "the service did not stop"

    def __exit__(self, *_exc: object) -> None:
        if self.thread.is_alive():
            self.stop()
        self.socket.close()

    def client(self, token: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


def cli(home: Path, *args: str) -> tuple[int, str]:
    """``medagent ARGS`` with MEDAGENT_HOME=home; its exit code and output."""
    result = CliRunner().invoke(cli_app, list(args), env={"MEDAGENT_HOME": str(home),
                                                          "MEDAGENT_DEID_SECRET": TEST_SECRET.decode()})
    return result.exit_code, result.output


def new_key(home: Path, name: str, *options: str) -> str:
    code, output = cli(home, "keys", "create", name, *options)
    assert code == 0, output
    return output.strip().splitlines()[-1]


@contextlib.contextmanager
def served_process(home: Path, *, grace_s: int, slow_s: float) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """The service in a process of its own (as ``medagent serve`` runs it: uvicorn's own SIGTERM handling);
    yields the process and its URL once it answers; killed on the way out if still running."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MEDAGENT_")}
    home.mkdir(parents=True, exist_ok=True)
    with (home / "process.log").open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "tests.service_parts", str(home), str(port), str(grace_s),
                                    str(slow_s)], cwd=Path(__file__).resolve().parents[1], env=environment,
                                   stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (home / "process.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the service process did not come up"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/v1/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.1)
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(30)


def stop(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM, as a service manager sends it; the exit status once the service has shut down."""
    process.send_signal(signal.SIGTERM)
    return process.wait(60)


def main(home: str, port: int, grace_s: int, slow_s: float) -> None:
    SLOW["seconds"] = slow_s
    settings = ServiceSettings(planner=PlannerConfig(backend="scripted"), shutdown_grace_s=grace_s)
    app = create_app(settings, library_settings=library_settings(Path(home)), tools=TOOLS)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=grace_s)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
