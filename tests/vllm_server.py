"""The real vLLM CPU server serving SmolLM2-135M-Instruct, started for the integration tests."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from medagent.agents.vllm_recipes import serve_command

ROOT = Path(__file__).resolve().parents[1]
SERVED_NAME = "smollm2"
STARTUP_TIMEOUT_S = 900  # ~70 s without compilation on 2 cores; generous for a loaded CI machine
# pytest-timeout counts a module fixture's set-up in the first test that uses it: that test (and every test
# of the module) gets this limit, so a slow first start fails with the server log, not a bare timeout.
TEST_TIMEOUT_S = STARTUP_TIMEOUT_S + 300


def _environment() -> dict[str, str]:
    """Build (or find) the separate vLLM environment via scripts/vllm-env."""
    result = subprocess.run([str(ROOT / "scripts" / "vllm-env")], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"scripts/vllm-env failed:\n{result.stderr[-3000:]}")
    return dict(line.split("=", 1) for line in result.stdout.strip().splitlines() if "=" in line)


@contextmanager
def vllm_server(port: int) -> Iterator[str]:
    paths = _environment()
    # -O0: no torch.compile. On 2 CPU cores compiling takes ~130 s of the ~210 s start, and this 135M model
    # answers as fast without it (128 tokens in 0.6 s either way, measured); the server is the same otherwise.
    command = serve_command(paths["MEDAGENT_VLLM_MODEL"], served_name=SERVED_NAME, port=port,
                            python=paths["MEDAGENT_VLLM_PYTHON"]) + ["-O0"]
    log = Path(tempfile.mkstemp(prefix="medagent-vllm-", suffix=".log")[1])
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "2", "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=environment,
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"vLLM exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"vLLM not ready within {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
            time.sleep(2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait(timeout=30)
        log.unlink(missing_ok=True)
