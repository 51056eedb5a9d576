"""The parts of the service load benchmark: ``medagent serve`` in a process of its own (uvicorn's own SIGTERM
handling, so a restart is a real process restart), the scripted planner with a fixed latency per call, an API
key, and the same turns run through the library (:class:`medagent.api.Agent`) for the baseline.

Every turn asks for ``read_dicom_header`` (a cheap built-in expert) on a real DICOM file from pydicom's test
data, then answers: two planner calls and one tool call per turn.

    python -m benchmarks.service_load HOME PORT LATENCY_S GRACE_S     # the service, as the benchmark starts it
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Self

import httpx

from medagent.agents.dry_run import scripted_planner
from medagent.agents.planner import PlannerConfig
from medagent.agents.scripted import PlannerRequest, ScriptedPlanner, ScriptResult
from medagent.api import Agent, AgentConfig, Session
from medagent.config import Settings
from medagent.logs import configure_logging

REPO: Final = Path(__file__).resolve().parents[1]
TOOL: Final = "read_dicom_header"
MAX_SESSIONS: Final = 1000
MAX_TURNS: Final = 100
MAX_LATENCY_S: Final = 60.0
START_TIMEOUT_S: Final = 120.0


def image_bytes() -> bytes:
    """A real CT slice from pydicom's test data (de-identified on upload)."""
    import pydicom.examples

    return Path(pydicom.examples.get_path("ct")).read_bytes()


def question(session: int, turn: int) -> str:
    """A question the scripted planner answers by calling :data:`TOOL`; unique, so the history can be checked."""
    return f"{TOOL} please (session {session}, turn {turn})"


def timed_planner(latency_s: float) -> ScriptedPlanner:
    """The ``scripted`` planner, answering each call after ``latency_s`` seconds (a served model's latency)."""
    if not 0 <= latency_s <= MAX_LATENCY_S:
        raise ValueError(f"the planner latency must be in [0, {MAX_LATENCY_S}] seconds")
    planner = scripted_planner(PlannerConfig(backend="scripted"))
    script = planner.function

    async def delayed(request: PlannerRequest) -> ScriptResult:
        if latency_s:
            await asyncio.sleep(latency_s)
        result = script(request)
        assert isinstance(result, (str, list)), "the scripted planner answers synchronously"
        return result

    planner.function = delayed
    return planner


def library_settings(home: Path) -> Settings:
    """The library's settings for the benchmark: its own home, no plugins (the built-in experts only)."""
    return Settings(home=home, xrv_cache_dir=home / "xrv", plugins=False)


def create_key(home: Path) -> str:
    """A key of the service's store under ``home``, with a rate that the load does not reach."""
    from medagent.service.app import open_store
    from medagent.service.settings import ServiceSettings

    database, keys, _audit = open_store(ServiceSettings(), library_settings(home))
    try:
        return keys.create("load", rate_per_s=10_000, burst=100_000).token
    finally:
        database.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServedProcess:
    """``medagent serve``'s app in a process of its own on 127.0.0.1: :meth:`start` (again after :meth:`stop`:
    the same home, database and port) and :meth:`stop` (:meth:`terminate`, then :meth:`wait_stopped`)."""

    def __init__(self, home: Path, *, latency_s: float, grace_s: float, port: int | None = None) -> None:
        self.home, self.latency_s, self.grace_s = home, latency_s, grace_s
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        assert self.process is None, "already running"
        environment = {key: value for key, value in os.environ.items() if not key.startswith("MEDAGENT_")}
        self.home.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        with (self.home / f"process-{self.starts}.log").open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.service_load", str(self.home), str(self.port),
                 str(self.latency_s), str(self.grace_s)],
                cwd=REPO, env=environment, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited at start:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("the service did not come up in time")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/v1/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.05)

    def terminate(self) -> None:
        """SIGTERM, as a service manager sends it; returns at once (an event loop may call it)."""
        assert self.process is not None, "not running"
        self.process.send_signal(signal.SIGTERM)

    def wait_stopped(self) -> int:
        """The exit status once the service has shut down (its grace period and then some); blocking."""
        assert self.process is not None, "not running"
        try:
            return self.process.wait(self.grace_s * 2 + 60)
        finally:
            self.process = None

    def stop(self) -> int:
        self.terminate()
        return self.wait_stopped()

    def log(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in sorted(self.home.glob("process-*.log")))

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait(30)
            self.process = None


@dataclass
class TurnRecord:
    """One turn as a client saw it."""

    session: int
    turn: int
    question: str
    seconds: float | None = None  # question to answer, for a turn answered in one go
    numbers: list[int] = field(default_factory=list)  # the SSE event ids, as they arrived
    kinds: list[str] = field(default_factory=list)
    answer: str | None = None
    error: str | None = None
    recovered: str | None = None  # a turn a restart cut: "resumed", "finished" (before the stop) or "re-asked"
    # ("cut" while it is being recovered)
    answered_at: float | None = None  # time.monotonic() when its answer arrived

    @property
    def in_order(self) -> bool:
        """Events numbered 1, 2, ... in arrival order, tool first, the answer last."""
        return (self.numbers == list(range(1, len(self.numbers) + 1)) and len(self.kinds) >= 3
                and self.kinds[:2] == ["tool_started", "tool_finished"] and self.kinds[-1] == "answer"
                and set(self.kinds[2:-1]) <= {"token"})


class LibraryLoad:
    """The benchmark's turns through the library itself, round by round (one turn of every session at once):
    ``async with LibraryLoad(home, sessions, latency_s, image) as library: await library.round(0)``. Opening it
    runs one warm-up turn and attaches the image to every session (not timed)."""

    def __init__(self, home: Path, sessions: int, latency_s: float, image: bytes) -> None:
        config = AgentConfig(planner=PlannerConfig(backend="scripted"))
        self.agent = Agent(config, settings=library_settings(home), planner=timed_planner(latency_s))
        self.home, self.count, self.image = home, sessions, image
        self.sessions: list[Session] = []

    async def __aenter__(self) -> Self:
        # JSON-line logs at INFO into a file, as the service writes them: a backend would log the library's too
        self.home.mkdir(parents=True, exist_ok=True)
        self.log = (self.home / "library.log").open("w", encoding="utf-8")
        self.handler = configure_logging("INFO", self.log)
        await self.agent.start()
        warm = self.agent.session(owner="load")
        await warm.attach_bytes(self.image)
        await self._turn(warm, TurnRecord(-1, 0, question(-1, 0)))
        self.sessions = [self.agent.session(owner="load") for _ in range(self.count)]
        await asyncio.gather(*(session.attach_bytes(self.image) for session in self.sessions))
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.agent.aclose()
        logging.getLogger("medagent").removeHandler(self.handler)
        self.log.close()

    async def round(self, turn: int) -> list[TurnRecord]:
        records = [TurnRecord(index, turn, question(index, turn)) for index in range(self.count)]
        await asyncio.gather(*(self._turn(session, record) for session, record in zip(self.sessions, records)))
        return records

    @staticmethod
    async def _turn(session: Session, record: TurnRecord) -> None:
        started = time.perf_counter()
        try:
            async for event in session.events(record.question):
                record.numbers.append(len(record.numbers) + 1)
                record.kinds.append(event.kind)
                if event.kind == "answer":
                    record.answer, record.answered_at = str(event.data.get("text")), time.monotonic()
                elif event.kind == "error":
                    record.error = str(event.data.get("code"))
        except Exception as exc:  # noqa: BLE001 - counted as an error of the run, by type
            record.error = type(exc).__name__
        record.seconds = time.perf_counter() - started
        if record.answer is None and record.error is None:
            record.error = "no_answer"


def serve(home: Path, port: int, latency_s: float, grace_s: float) -> None:
    """The app as ``medagent serve`` runs it (its uvicorn options, JSON-line logs at INFO on stderr), with the
    timed planner."""
    import uvicorn

    from medagent.cli.service import MAX_CONNECTIONS
    from medagent.logs import configure_logging
    from medagent.service.app import create_app
    from medagent.service.settings import ServiceSettings

    settings = ServiceSettings(planner=PlannerConfig(backend="scripted"), shutdown_grace_s=grace_s)
    app = create_app(settings, library_settings=library_settings(home), planner=timed_planner(latency_s))
    configure_logging("INFO")
    configure_logging("INFO", logger="uvicorn.error")
    uvicorn.run(app, host="127.0.0.1", port=port, log_config=None, access_log=False,
                limit_concurrency=MAX_CONNECTIONS, timeout_keep_alive=5,
                timeout_graceful_shutdown=max(1, math.ceil(grace_s)))


if __name__ == "__main__":
    serve(Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]))
