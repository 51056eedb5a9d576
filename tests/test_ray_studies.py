"""Studies on a real local Ray cluster (``executor: ray``): a head node and a second node started by the tests
(1 CPU each, each with its own medagent home, as two machines would be), a capacity-limited fake planner server
and a real PostgreSQL store. The cluster is stopped by process group whatever happens (``ray stop`` would stop
every Ray process of the machine, not only this cluster's). It listens on 127.0.0.1 for the tests' lifetime only,
without Ray's token authentication: whether Ray turns it on depends on a token file another Ray user of the
machine may have left in ~/.ray, and the tests must not depend on that."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from medagent.config import Settings
from medagent.errors import MedagentError
from medagent.store import StudyStore
from medagent.studies import load_study
from medagent.studies.runner import run_study
from tests.cluster_tool_parts import peak_overlap
from tests.conftest import TEST_SECRET
from tests.fake_openai_server import Behaviour, FakeOpenAIServer
from tests.phi_images import PHI, carries_phi, corrupt_png, phi_dicom, phi_png
from tests.study_files import SCRIPTED, agent_loop, recorded_cases, variants, write_manifest, write_study

pytest.importorskip("ray", reason="ray is not installed (the 'ray' extra)")
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(300)]

CASES = 64
PER_ENDPOINT = 3
REPO = Path(__file__).resolve().parents[1]


@dataclass
class LocalCluster:
    address: str
    head: subprocess.Popen[bytes]
    second: subprocess.Popen[bytes]
    homes: list[Path]

    def kill_second_node(self) -> None:
        """The second node's raylet, object store and agents at once (its workers exit with their raylet)."""
        os.killpg(self.second.pid, signal.SIGKILL)
        self.second.wait(timeout=30)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _alive_nodes(ray: str, address: str) -> int:
    done = subprocess.run([ray, "status", "--address", address], capture_output=True, text=True, timeout=60,
                          check=False)
    active = done.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
    return sum(1 for line in active.splitlines() if "node_" in line) if done.returncode == 0 else 0


WARM_UP = """
import sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)
@ray.remote(num_cpus=1)
class Probe:
    def node(self):
        return ray.get_runtime_context().get_node_id()
probes = [Probe.options(scheduling_strategy="SPREAD").remote() for _ in range(2)]
print(len(set(ray.get([probe.node.remote() for probe in probes], timeout=120))))
"""


def _workers_start_on_both_nodes(address: str, environment: dict[str, str]) -> None:
    """A node is listed alive before it can start worker processes: the fixture waits until both can (a driver
    of its own, gone before the tests' drivers connect)."""
    done = subprocess.run([sys.executable, "-c", WARM_UP, address], capture_output=True, text=True, timeout=180,
                          check=False, env=environment)
    assert done.returncode == 0 and done.stdout.strip() == "2", done.stderr[-2000:]


def _stop(process: subprocess.Popen[bytes]) -> None:
    """The node's whole process group: a moment to stop cleanly, then killed."""
    for sent, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(process.pid, sent)
        except ProcessLookupError:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=wait_s)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[LocalCluster]:
    ray = str(Path(sys.executable).parent / "ray")
    # short: Ray's socket paths under it must stay within the 107 characters of a Unix socket name
    base = Path(tempfile.mkdtemp(prefix="mray-", dir="/tmp"))
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats", "--block",
              "--temp-dir", str(base / "ray")]
    homes = [base / "node-1", base / "node-2"]
    previous_mode = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # the driver in this process, the CLI's and `ray status` too

    def environment(home: Path) -> dict[str, str]:
        # the repository on the workers' path: a study's tool factory may live under tests/ (a user's own package)
        path = os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))
        return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "MEDAGENT_HOME": str(home),
                "MEDAGENT_DEID_SECRET": TEST_SECRET.decode(), "PYTHONPATH": path}

    def ports() -> list[str]:  # free ones: another Ray of the machine may hold the fixed defaults
        return ["--dashboard-agent-listen-port", str(_free_port()), "--metrics-export-port", str(_free_port())]

    started: list[subprocess.Popen[bytes]] = []
    try:
        started.append(subprocess.Popen(
            [ray, "start", "--head", "--port", str(port), "--include-dashboard=false", "--ray-client-server-port",
             str(_free_port()), *ports(), *common],
            env=environment(homes[0]), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 120
        while not _listening(port):  # the head's GCS: enough for the second node to join
            assert time.monotonic() < deadline and started[0].poll() is None, "the head node did not start"
            time.sleep(0.2)
        started.append(subprocess.Popen(
            [ray, "start", "--address", address, *ports(), *common], env=environment(homes[1]), start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        while _alive_nodes(ray, address) < 2:
            assert time.monotonic() < deadline and started[1].poll() is None, "the second node did not start"
            time.sleep(1)
        _workers_start_on_both_nodes(address, environment(homes[0]))
        yield LocalCluster(address, started[0], started[1], homes)
    finally:
        for process in reversed(started):
            _stop(process)
        shutil.rmtree(base, ignore_errors=True)
        if previous_mode is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = previous_mode


@pytest.fixture
def pg_store(postgres_url: str) -> str:
    import psycopg

    name = f"ray_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return postgres_url.rsplit("/", 1)[0] + "/" + name


def _study(folder: Path, image: Path, server_url: str | None, address: str | None) -> Path:
    """64 cases of distinct images; the planner: the fake server at ``server_url``, else the scripted one calling
    assess_image_quality; ``address``: executor ray there (None: a local study)."""
    images = variants(image, folder, CASES)
    write_manifest(folder, [(f"case-{i:02d}", path, i % 2, "MF"[i % 2]) for i, path in enumerate(images)])
    planner = "" if server_url else SCRIPTED % ("assess_image_quality", ", latency_s: 0.3")
    study = write_study(folder, "  type: agent_loop\n  question: Describe the image.", concurrency=8, planner=planner)
    executor = f"\nexecutor: {{type: ray, address: '{address}'}}" if address else ""
    text = study.read_text().replace(
        "concurrency: {cases: 8}", f"concurrency: {{cases: 8, per_planner_endpoint: {PER_ENDPOINT}}}{executor}")
    if server_url:
        text = text.replace("graph:", f"planners:\n  planner: {{endpoint: '{server_url}', model: fake-model, "
                                      "tool_calling: native}\ngraph:", 1)
    study.write_text(text)
    return study


def _sql_counts(store_url: str, run_id: str) -> tuple[int, int, Counter[int], set[str]]:
    """Rows, distinct keys, rows by attempts and statuses of a run, counted in SQL."""
    import psycopg

    with psycopg.connect(store_url) as connection:
        rows, keys = connection.execute(
            "SELECT count(*), count(DISTINCT (case_id, repeat)) FROM study_cases WHERE run_id = %s",
            (run_id,)).fetchone() or (0, 0)
        attempts = Counter({count: n for count, n in connection.execute(
            "SELECT attempts, count(*) FROM study_cases WHERE run_id = %s GROUP BY attempts", (run_id,))})
        statuses = {status for (status,) in connection.execute(
            "SELECT DISTINCT status FROM study_cases WHERE run_id = %s", (run_id,))}
    return rows, keys, attempts, statuses


@pytest.fixture
def driver_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("MEDAGENT_DEID_SECRET", TEST_SECRET.decode())
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    return Settings(home=tmp_path / "driver-home")


def _drive(study: Path, store_url: str, home: Path, run_id: str, *extra: str) -> list[dict[str, Any]]:
    """Run ``study`` with tests/ray_driver.py in a process of its own; its progress events."""
    driven = subprocess.run([sys.executable, "-m", "tests.ray_driver", str(study), store_url, str(home), run_id,
                             *extra], capture_output=True, text=True, timeout=240, check=False, cwd=REPO,
                            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert driven.returncode == 0, driven.stderr[-3000:]
    return [json.loads(line) for line in driven.stdout.splitlines() if line.startswith("{")]


def test_a_study_runs_on_both_nodes_within_the_cluster_wide_endpoint_limit(
        tmp_path: Path, ray_cluster: LocalCluster, pg_store: str, driver_settings: Settings,
        nih_images: list[Path]) -> None:
    """The driver is a process of its own, as `medagent run` or a backend's worker would be; its events are read
    from its output."""
    with FakeOpenAIServer([Behaviour("slow", text="No tool was needed.", delay_s=0.2)], capacity=4) as server:
        study = _study(tmp_path, nih_images[0], server.url, ray_cluster.address)
        events = _drive(study, pg_store, driver_settings.home, "on-ray")
        peak, requests = server.peak_in_flight, len(server.chat_requests())
    assert events[0]["kind"] == "started" and events[-1]["kind"] == "finished" and events[-1]["done"] == CASES
    done = [event for event in events if event["kind"] == "case"]
    by_node = Counter(event["node_id"] for event in done)
    assert len(by_node) == 2 and min(by_node.values()) > 0, by_node  # both nodes ran cases
    assert {event["attempts"] for event in done} == {1}
    rows, keys, attempts, statuses = _sql_counts(pg_store, "on-ray")
    assert (rows, keys, attempts, statuses) == (CASES, CASES, Counter({1: CASES}), {"succeeded"})
    # 8 cases in flight on 2 workers, each worker allowed 3 requests: across the cluster never more than 3
    assert peak == PER_ENDPOINT
    assert requests == CASES


@pytest.mark.asyncio
async def test_an_sqlite_store_is_refused_on_a_cluster_of_several_nodes(
        tmp_path: Path, ray_cluster: LocalCluster, driver_settings: Settings, nih_images: list[Path]) -> None:
    from medagent.studies.ray_executor import StoreNotShared

    config = load_study(_study(tmp_path, nih_images[0], None, ray_cluster.address))
    with StudyStore.open(None, driver_settings.home) as store:
        with pytest.raises(StoreNotShared, match="SQLite file.*2 nodes.*PostgreSQL"):
            async for _ in run_study(config, store=store, settings=driver_settings, run_id="refused"):
                pass
        assert store.get_run("refused") is None  # refused before the run existed


def test_raw_images_never_leave_the_driver(
        tmp_path: Path, ray_cluster: LocalCluster, pg_store: str, driver_settings: Settings,
        nih_images: list[Path]) -> None:
    """Real DICOM and PNG files carrying PHI in their headers and text chunks: the driver de-identifies them, only
    artifacts without PHI enter the object store, the cases run on the workers with a local run's image ids; a
    corrupt image fails on the driver, as locally, without a worker."""
    from medagent.tools.builtin import Toolbox

    images = [phi_dicom(tmp_path), phi_dicom(tmp_path, "ct-phi-2.dcm", shift=7), phi_png(nih_images[0], tmp_path)]
    broken = corrupt_png(tmp_path)
    assert all(carries_phi(image.read_bytes()) for image in images)  # the check below can fail
    assert set(carries_phi(images[0].read_bytes())) == set(PHI)
    write_manifest(tmp_path, [("ct-1", images[0], 1, "F"), ("ct-2", images[1], 0, "M"), ("png", images[2], 1, "F"),
                              ("broken", broken, 0, "M")])
    study = write_study(tmp_path, agent_loop("Describe the image."),
                        planner=SCRIPTED % ("assess_image_quality, read_dicom_header", ""))
    study.write_text(study.read_text() + f"executor: {{type: ray, address: '{ray_cluster.address}'}}\n")
    toolbox = Toolbox(driver_settings.model_copy(update={"home": tmp_path / "local-home"}))
    try:
        local = {image.name: toolbox.attach(image, "DX").id for image in images}
        with pytest.raises(MedagentError) as refused:
            toolbox.attach(broken, "DX")
    finally:
        toolbox.close()
    recorded = tmp_path / "puts"
    recorded.mkdir()
    events = _drive(study, pg_store, driver_settings.home, "deid", "--record-puts", str(recorded))
    puts = [path.read_bytes() for path in sorted(recorded.iterdir())]
    with StudyStore.open(pg_store, driver_settings.home) as store:
        stored = {case.case_id: case for case in store.cases("deid")}
        calls = {key: store.tool_calls("deid", key, 0) for key in stored}
    assert events[-1]["kind"] == "finished" and events[-1]["done"] == 4 and events[-1]["failed"] == 1
    ran_on = {event["case_id"]: event["node_id"] for event in events if event["kind"] == "case"}
    assert ran_on["broken"] is None and all(ran_on[key] for key in ("ct-1", "ct-2", "png"))  # no worker for it
    error = stored["broken"].error
    assert stored["broken"].status == "failed" and error is not None and error.code == refused.value.code
    assert {stored[key].status for key in ("ct-1", "ct-2", "png")} == {"succeeded"}
    for key, image in (("ct-1", images[0]), ("ct-2", images[1]), ("png", images[2])):
        assert {call.arguments["image_id"] for call in calls[key]} == {local[image.name]}
    assert [call.tool for call in calls["ct-1"]] == ["assess_image_quality", "read_dicom_header"]
    # what entered the object store: the three de-identified artifacts (their ids the local ones), no PHI in them
    assert sorted(json.loads(pickle.loads(put)[0])["id"] for put in puts) == sorted(local.values())
    assert all(carries_phi(put) == [] for put in puts)
    assert carries_phi(pickle.dumps([[call.output for call in found] for found in calls.values()])) == []


TIMED_CASES = 8  # the tests below need both nodes: they come before the one that kills the second
TIMED_STEP = """  type: pipeline
  steps:
    - id: probe
      tool: timed_probe"""


@pytest.mark.parametrize("per_expert", [1, 2])
def test_a_tools_limit_holds_across_the_cluster_not_per_worker(
        per_expert: int, tmp_path: Path, ray_cluster: LocalCluster, pg_store: str, driver_settings: Settings,
        nih_images: list[Path]) -> None:
    """A pipeline whose one step calls a study's own tool (tests.cluster_tool_parts, imported on each worker)
    that sleeps and reports when it ran: 8 cases in flight on both nodes' workers, each worker allowed
    ``per_expert`` calls at once, never more than ``per_expert`` calls at once across the cluster. Counted from
    the stored calls' wall-clock intervals; the limit of 2 shows the count sees calls on two nodes overlap."""
    images = variants(nih_images[0], tmp_path, TIMED_CASES)
    write_manifest(tmp_path, [(f"case-{i}", path, i % 2, "MF"[i % 2]) for i, path in enumerate(images)])
    study = write_study(tmp_path, TIMED_STEP, concurrency=8, extra=(
        "experts: [{_target_: tests.cluster_tool_parts.timed_tools, kwargs: {sleep_s: [0.3, 0.6]}, tools: [timed_probe]}]\n"
        f"executor: {{type: ray, address: '{ray_cluster.address}'}}\n"))
    study.write_text(study.read_text().replace(
        "concurrency: {cases: 8}", f"concurrency: {{cases: 8, per_expert: {{timed_probe: {per_expert}}}}}"))
    events = _drive(study, pg_store, driver_settings.home, "timed")
    with StudyStore.open(pg_store, driver_settings.home) as store:
        calls = store.tool_calls("timed")
    assert events[-1]["kind"] == "finished" and events[-1]["done"] == TIMED_CASES and events[-1]["failed"] == 0
    by_node = Counter(event["node_id"] for event in events if event["kind"] == "case")
    assert len(by_node) == 2 and None not in by_node, by_node  # both nodes ran cases
    assert [call.tool for call in calls] == ["timed_probe"] * TIMED_CASES and all(call.ok for call in calls)
    ran = [(call.output["started"], call.output["ended"], call.output["pid"]) for call in calls]
    assert len({pid for _, _, pid in ran}) == 2  # the calls ran in both workers' processes
    assert peak_overlap((start, end) for start, end, _ in ran) == per_expert
    across = [(a, b) for a in ran for b in ran if a[2] < b[2] and a[0] < b[1] and b[0] < a[1]]
    if per_expert == 1:  # within a worker its own limit holds; across workers only the cluster's board does
        assert across == []
    else:  # two workers' calls did run at once: the count above would see a cross-node overlap
        assert across


def test_killing_a_node_mid_run_loses_no_case_and_runs_none_twice(
        tmp_path: Path, ray_cluster: LocalCluster, pg_store: str, nih_images: list[Path]) -> None:
    """Through the CLI (``medagent run --ray`` runs a local study on the cluster), with an expert called per case:
    the artifacts its calls name come back to the driver."""
    study = _study(tmp_path, nih_images[0], None, None)
    home = tmp_path / "driver-home"
    environment = {**os.environ, "MEDAGENT_HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0",
                   "MEDAGENT_DEID_SECRET": TEST_SECRET.decode()}
    command = [sys.executable, "-m", "medagent.cli", "run", str(study), "--ray", ray_cluster.address,
               "--store", pg_store, "--run-id", "killed"]
    process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while recorded_cases(home, "killed", pg_store) < CASES // 4:
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the run did not get going"
            time.sleep(0.1)
        ray_cluster.kill_second_node()
        killed_at = recorded_cases(home, "killed", pg_store)
        out, err = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err[-3000:]
    assert killed_at < CASES, "the node should die mid-run"
    rows, keys, attempts, statuses = _sql_counts(pg_store, "killed")
    assert rows == keys == CASES and statuses == {"succeeded"}  # nothing lost, nothing twice
    assert attempts[2] > 0 and set(attempts) <= {1, 2}, attempts  # the cases the dead node had: rerun once
    assert f"{CASES}/{CASES} cases" in out.decode()
    # each case's expert call names its de-identified input: stored on the driver (the nodes have homes of their own)
    with StudyStore.open(pg_store, home) as store:
        inputs = {call.arguments["image_id"] for call in store.tool_calls("killed")}
    assert len(inputs) == CASES
    assert all((home / "artifacts" / "index" / f"{image_id}.json").is_file() for image_id in inputs)
