"""Shared fixtures: real inputs from ../shared/data and the installed pydicom/nibabel packages."""

from __future__ import annotations

import asyncio
import importlib.resources
import logging
import os
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from medagent.config import Settings
from medagent.imaging import Deidentifier, ImageLoader
from tests.ci_skips import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401  (CI: skip = fail)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEDAGENT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
NIH_DIR = SHARED_DATA / "torchxrayvision-nih"
NIH_CARDIOMEGALY = NIH_DIR / "00000001_000.png"
NIH_NO_FINDING = NIH_DIR / "00027426_000.png"
TEST_SECRET = b"medagent-test-secret-0123456789abcdef"


@pytest.fixture(scope="session")
def nih_images() -> list[Path]:
    missing = [p for p in (NIH_CARDIOMEGALY, NIH_NO_FINDING) if not p.is_file()]
    if missing:
        pytest.fail(f"shared test data missing: {missing} (expected ../shared/data beside the repository)")
    return [NIH_CARDIOMEGALY, NIH_NO_FINDING]


@pytest.fixture(scope="session")
def pydicom_ct() -> Path:
    import pydicom.examples

    return Path(pydicom.examples.get_path("ct"))


@pytest.fixture(scope="session")
def pydicom_mr() -> Path:
    import pydicom.examples

    return Path(pydicom.examples.get_path("mr"))


@pytest.fixture(scope="session")
def nibabel_data() -> Path:
    return Path(str(importlib.resources.files("nibabel") / "tests" / "data"))


@pytest.fixture
def loader() -> ImageLoader:
    return ImageLoader(Deidentifier(TEST_SECRET))


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings isolated in a temporary home; no weights anywhere unless a test places them."""
    monkeypatch.setenv("MEDAGENT_DEID_SECRET", TEST_SECRET.decode())
    return Settings(home=tmp_path / "home", xrv_cache_dir=tmp_path / "xrv-cache")


class _SlowCallbackCatcher(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "Executing" in record.getMessage() and "took" in record.getMessage():
            self.messages.append(record.getMessage())


@pytest_asyncio.fixture
async def no_blocking() -> AsyncIterator[None]:
    """Fail the test if any callback blocks the event loop for more than 0.25 s."""
    loop = asyncio.get_running_loop()
    catcher = _SlowCallbackCatcher()
    logger = logging.getLogger("asyncio")
    logger.addHandler(catcher)
    previous_debug, previous_threshold = loop.get_debug(), loop.slow_callback_duration
    loop.set_debug(True)
    loop.slow_callback_duration = 0.25
    try:
        yield
    finally:
        loop.set_debug(previous_debug)
        loop.slow_callback_duration = previous_threshold
        logger.removeHandler(catcher)
    if catcher.messages:
        pytest.fail("the event loop was blocked: " + "; ".join(catcher.messages[:3]))


@pytest.fixture
def fresh_cache() -> Iterator[None]:
    from medagent.runtime import cache

    yield
    for shared in cache._shared.values():
        shared.clear()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """One throwaway PostgreSQL server on 127.0.0.1 for the whole session (tests make their own databases)."""
    from tests import postgres_server

    if not postgres_server.available():
        pytest.skip("PostgreSQL server binaries are not installed")
    with postgres_server.postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    """None (the default SQLite file under the home) or a fresh PostgreSQL database per test."""
    if request.param == "sqlite":
        return None
    import uuid

    import psycopg

    server: str = request.getfixturevalue("postgres_url")
    name = f"store_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return server.rsplit("/", 1)[0] + "/" + name


# Pinned older than .venv's on purpose: the remote-expert tests serve from this environment across the difference.
CORE_VENV_PINS = ("numpy==2.3.5", "pydantic==2.13.5")


@pytest.fixture(scope="session")
def core_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ONE fresh venv for the session: `pip install medagent[serve] example-plugin` with the core dependencies only
    (no torch) and :data:`CORE_VENV_PINS`, from copies of the sources (pip builds in the source folder, which must
    never be the repository). pip's cache is reused; the package index must be reachable."""
    import shutil
    import subprocess
    import sys
    import time

    root = tmp_path_factory.mktemp("core-venv")
    leftovers = shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "*.pyc")
    source = root / "medagent-src"
    shutil.copytree(REPO_ROOT / "medagent", source / "medagent", ignore=leftovers)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, source / name)
    plugin = root / "plugin-src"
    shutil.copytree(REPO_ROOT / "examples" / "medagent-example-plugin", plugin, ignore=leftovers)
    venv = root / "venv"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("PYTHONPATH", "VIRTUAL_ENV") and not key.startswith("MEDAGENT_")}
    # --no-compile: byte-compiling every installed package is half of the install's time; the few modules the
    # tests import compile on first import (and are cached there)
    install = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
               "--no-compile", f"{source}[serve]", str(plugin), *CORE_VENV_PINS]
    result = subprocess.run(install, check=False, capture_output=True, text=True, env=environment, timeout=900,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"pip install exited {result.returncode}: {result.stderr[-3000:]}"
    sys.stderr.write(f"\ncore venv created and installed in {time.perf_counter() - started:.0f} s\n")
    return venv


@pytest.fixture(scope="session")
def vllm_url() -> Iterator[str]:
    """One real vLLM CPU server for the whole session: each start compiles for minutes on 2 cores."""
    from tests.vllm_server import vllm_server

    if os.environ.get("MEDAGENT_SKIP_VLLM") == "1":
        pytest.skip("switched off explicitly: MEDAGENT_SKIP_VLLM=1 turns the vLLM integration tests off")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with vllm_server(port) as url:
        yield url
