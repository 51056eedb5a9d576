"""A model server medagent starts dies with medagent, whatever signal ends it, and logs only under its home."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import TEST_SECRET


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped no longer runs)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return fields[0] != "Z"


def _pids_with(*words: str) -> list[int]:
    """Processes whose command line holds every word (guards left out: they name their server's command)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = entry.joinpath("cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if all(word in command for word in words) and "server_guard" not in command:
            pids.append(int(entry.name))
    return pids


def _children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def _wait(condition: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def _end(process: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    process.kill()
    process.wait()
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            stream.close()


def _tmp_logs() -> set[str]:
    return {name for name in os.listdir(tempfile.gettempdir()) if "llama" in name and name.endswith(".log")}


# a stand-in server: listens on the port it is given and never exits by itself
FAKE_SERVER = "import socket, sys, time; s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(); " \
              "time.sleep(3600)"

PARENT = textwrap.dedent("""\
    import asyncio, sys, time
    from pathlib import Path
    from medagent.agents import embedded

    class Fake(embedded.EmbeddedLlamaServer):
        def command(self):
            return [sys.executable, "-c", {fake!r}, str(self.port)]

    async def ready(self):
        import socket
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                await asyncio.sleep(0.1)

    Fake._wait_ready = ready
    server = Fake(log_dir=Path(sys.argv[1]))
    asyncio.run(server.start())
    print(server.port, flush=True)
    if sys.argv[2] == "stop":
        server.stop()
        print("stopped", flush=True)
    time.sleep(3600)
""")


def _start_parent(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[str], int]:
    script = tmp_path / "parent.py"
    script.write_text(PARENT.format(fake=FAKE_SERVER))
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path / "home" / "logs"), mode],
                              stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    port = int(parent.stdout.readline())
    return parent, port


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_the_guarded_server_dies_with_its_parent_whatever_the_signal(tmp_path: Path, signum: int) -> None:
    parent, port = _start_parent(tmp_path, "keep")
    try:
        assert _answers(port)
        [server] = _pids_with("socket", str(port))
        logs = tmp_path / "home" / "logs"
        assert stat.S_IMODE(logs.stat().st_mode) == 0o700
        [log] = list(logs.iterdir())
        assert stat.S_IMODE(log.stat().st_mode) == 0o600
        parent.send_signal(signum)
        parent.wait(timeout=30)  # SIGINT/SIGTERM stop the server gracefully first: seconds on a loaded machine
        assert _wait(lambda: not _answers(port) and not _alive(server), 5), "the server outlived its parent"
        assert _wait(lambda: not list(logs.iterdir()), 5)  # stopped by its guard: the log went with it
    finally:
        _end(parent)


def test_stop_stops_the_server_and_its_guard(tmp_path: Path) -> None:
    parent, port = _start_parent(tmp_path, "stop")
    try:
        assert parent.stdout is not None and parent.stdout.readline().strip() == "stopped"
        assert not _answers(port) and not _pids_with("socket", str(port))
        assert not any("server_guard" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
                       for pid in _children(parent.pid))
        assert list((tmp_path / "home" / "logs").iterdir()) == []
    finally:
        _end(parent)


def test_the_guard_kills_the_server_when_the_guard_itself_is_killed(tmp_path: Path) -> None:
    port_probe = socket.socket()
    port_probe.bind(("127.0.0.1", 0))
    port = port_probe.getsockname()[1]
    port_probe.close()
    guard = subprocess.Popen([sys.executable, "-m", "medagent.agents.server_guard", "--", sys.executable, "-c",
                              FAKE_SERVER, str(port)], stdin=subprocess.PIPE)
    try:
        assert _wait(lambda: _answers(port), 20)
        [server] = _pids_with("socket", str(port), "-c")
        guard.kill()  # PR_SET_PDEATHSIG: the kernel kills the server with its guard
        guard.wait()
        assert _wait(lambda: not _alive(server), 5)
    finally:
        _end(guard)


@pytest.mark.llama
def test_sigkill_of_medagent_stops_the_real_embedded_server(tmp_path: Path) -> None:
    """The real llama.cpp server started by the library's Agent; medagent is then killed with SIGKILL."""
    home = tmp_path / "home"
    script = tmp_path / "agent.py"
    script.write_text(textwrap.dedent("""\
        import asyncio
        from medagent.api import Agent, AgentConfig

        async def main():
            async with Agent(AgentConfig()) as agent:
                await agent.planner.served_model()  # waits until the embedded server answers
                print(agent.root.planners.embedded_servers()[0].port, flush=True)
                await asyncio.sleep(3600)

        asyncio.run(main())
    """))
    before = _tmp_logs()
    environment = {**os.environ, "MEDAGENT_HOME": str(home), "MEDAGENT_DEID_SECRET": TEST_SECRET.decode()}
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=environment)
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        import httpx

        assert httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).status_code == 200
        [server] = _pids_with("llama_cpp.server", f"--port {port}", "--model")
        logs = home / "logs"
        modes = {log.name: stat.S_IMODE(log.stat().st_mode) for log in logs.iterdir()} if logs.is_dir() else {}
        new_in_tmp = _tmp_logs() - before
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        try:
            assert _wait(lambda: not _answers(port), 5), "the embedded server still answers after medagent was killed"
            assert _wait(lambda: not _alive(server), 10), "the embedded server process outlived medagent"
        finally:
            if _alive(server):  # do not leave an orphan behind when the assertion fails
                os.kill(server, signal.SIGKILL)
        assert new_in_tmp == set()  # no server log in /tmp ...
        assert stat.S_IMODE(logs.stat().st_mode) == 0o700 and list(modes.values()) == [0o600]  # ... but here
    finally:
        _end(process)


@pytest.mark.asyncio
async def test_a_studys_embedded_planner_logs_under_the_studys_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   nih_images: list[Path]) -> None:
    """The study's own settings, not the environment's home, say where its embedded server logs."""
    from medagent.agents.embedded import EmbeddedLlamaServer
    from medagent.agents.planner import PlannerConfig
    from medagent.config import Settings
    from medagent.store import StudyStore
    from medagent.studies import load_study
    from medagent.studies.runner import StudyRunner
    from tests.study_files import agent_loop, write_manifest, write_study

    log_dirs: list[Path | None] = []

    async def started(self: EmbeddedLlamaServer) -> str:
        log_dirs.append(self.log_dir)
        return "http://127.0.0.1:9/v1"

    monkeypatch.setattr(EmbeddedLlamaServer, "start", started)
    monkeypatch.setenv("MEDAGENT_HOME", str(tmp_path / "environment-home"))
    settings = Settings(home=tmp_path / "study-home", xrv_cache_dir=tmp_path / "xrv")
    write_manifest(tmp_path, [("a", nih_images[0], 1, "M")])
    with StudyStore.open(None, settings.home) as store:
        runner = StudyRunner(load_study(write_study(tmp_path, agent_loop("q"))), store, settings)
        await runner.planners.planner(PlannerConfig())
        await runner.aclose()
        runner.toolbox.close()
    assert log_dirs == [settings.home / "logs"]
