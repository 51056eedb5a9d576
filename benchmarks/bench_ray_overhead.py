"""Ray overhead: the same study of N cases (distinct real chest X-rays) in one process vs on a local Ray cluster of
two nodes on this machine (a head and a second node, one CPU each, as tests/test_ray_studies.py starts them),
against a capacity-limited OpenAI-compatible planner server in a process of its own (latency L, at most c requests
at once) and a real PostgreSQL store (required by a cluster of several nodes; the in-process run uses it too).

Reported per path: wall time from the run's start to its last case (the Ray path's worker start-up is reported
apart), the driver's CPU per case, the CPU of the whole cluster per case (every process of both nodes: workers,
raylets, GCS), the case latency the runner records (p50/p95), and the overhead ratio ray wall / in-process wall.
The per-case figures feed benchmarks/simulate_scale_out.py. A two-case warm-up run pays the driver's one-off
imports; the Ray workers pay theirs inside the measured run, as every run on a cluster does.

    .venv/bin/python benchmarks/bench_ray_overhead.py [--cases 64] [--latency 1.0] [--capacity 16]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_study_concurrency import IMAGE, _server
from medagent.config import Settings
from medagent.store import StudyStore
from medagent.studies import parse_study
from medagent.studies.runner import run_study
from tests import postgres_server
from tests.study_files import variants, write_manifest
from tests.test_ray_studies import LocalCluster, _alive_nodes, _free_port, _listening, _stop


@contextlib.contextmanager
def local_cluster(base: Path) -> Iterator[LocalCluster]:
    """tests/test_ray_studies.py's cluster as a context manager: two nodes of one CPU on 127.0.0.1, each with its
    own home, without Ray's token authentication, stopped by process group (never ``ray stop``, which would stop
    every Ray of the machine)."""
    ray = str(Path(sys.executable).parent / "ray")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats", "--block",
              "--temp-dir", str(base / "ray")]
    os.environ["RAY_AUTH_MODE"] = "disabled"  # this driver's, and the nodes' through their environment

    def environment(home: Path) -> dict[str, str]:
        return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "MEDAGENT_HOME": str(home)}

    def ports() -> list[str]:
        return ["--dashboard-agent-listen-port", str(_free_port()), "--metrics-export-port", str(_free_port())]

    started: list[subprocess.Popen[bytes]] = []
    try:
        started.append(subprocess.Popen(
            [ray, "start", "--head", "--port", str(port), "--include-dashboard=false", "--ray-client-server-port",
             str(_free_port()), *ports(), *common], env=environment(base / "node-1"), start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 120
        while not _listening(port):
            if time.monotonic() > deadline or started[0].poll() is not None:
                raise RuntimeError("the head node did not start")
            time.sleep(0.2)
        started.append(subprocess.Popen(
            [ray, "start", "--address", address, *ports(), *common], env=environment(base / "node-2"),
            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        while _alive_nodes(ray, address) < 2:
            if time.monotonic() > deadline or started[1].poll() is not None:
                raise RuntimeError("the second node did not start")
            time.sleep(1)
        yield LocalCluster(address, started[0], started[1], [base / "node-1", base / "node-2"])
    finally:
        for process in reversed(started):
            _stop(process)


def _cluster_cpu_s(cluster: LocalCluster | None) -> dict[int, tuple[float, bool]]:
    """User + system CPU of every live process of both nodes, by process id, and whether it is a Ray worker
    process (its title ``ray::...``: the case workers) rather than one of Ray's own (raylet, GCS, agents)."""
    import psutil  # type: ignore[import-untyped]  # a dependency of ray[default], which ships no stubs

    used: dict[int, tuple[float, bool]] = {}
    for root in (cluster.head.pid, cluster.second.pid) if cluster else ():
        with contextlib.suppress(psutil.NoSuchProcess):
            parent = psutil.Process(root)
            for process in [parent, *parent.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    times = process.cpu_times()
                    title = process.cmdline()[:1] or [""]
                    used[process.pid] = (times.user + times.system, title[0].startswith("ray::"))
    return used


def _study(folder: Path, endpoint: str, cases: int, concurrency: int, name: str, address: str | None) -> str:
    executor = f"executor: {{type: ray, address: '{address}'}}\n" if address else ""
    return f"""name: {name}
planners:
  planner: {{backend: openai, endpoint: "{endpoint}", model: fake-model, tool_calling: native}}
graph: {{type: agent_loop, question: "Describe the image."}}
dataset: {{type: manifest, path: manifest-{cases}.csv, modality: DX, columns: {{path: path, case_id: case_id}}}}
concurrency: {{cases: {concurrency}, per_planner_endpoint: {concurrency}}}
{executor}"""


async def _run(folder: Path, store_url: str, text: str, name: str, cluster: LocalCluster | None) -> dict[str, Any]:
    config = parse_study(text, str(folder / f"{name}.yaml"))
    settings = Settings(home=folder / "driver-home")
    called = time.perf_counter()
    with StudyStore.open(store_url, settings.home) as store:
        started = cpu_started = 0.0
        cluster_started: dict[int, tuple[float, bool]] = {}
        cluster_ended: dict[int, tuple[float, bool]] = {}
        nodes = set()
        async for event in run_study(config, store=store, settings=settings, run_id=name):
            if event.kind == "started":
                started, cpu_started = time.perf_counter(), time.process_time()
                cluster_started = _cluster_cpu_s(cluster)
            elif event.kind == "case":
                nodes.add(event.node_id)
                if event.done == event.total:  # the last case: read before the run stops its workers
                    cluster_ended = _cluster_cpu_s(cluster)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        spent = {pid: (end - cluster_started.get(pid, (0.0, worker))[0], worker)
                 for pid, (end, worker) in cluster_ended.items()}
        cluster_cpu = sum(used for used, _ in spent.values())
        worker_cpu = sum(used for used, worker in spent.values() if worker)
        records = store.cases(name)
    statuses = {case.status for case in records}
    if statuses != {"succeeded"}:
        raise RuntimeError(f"run {name} ended with statuses {statuses}")
    latencies = sorted(case.latency_s or 0.0 for case in records)
    count = len(records)
    return {"wall_s": round(wall, 2), "startup_s": round(started - called, 2),
            "driver_cpu_ms_per_case": round(cpu / count * 1000, 1),
            "cluster_cpu_ms_per_case": round(cluster_cpu / count * 1000, 1) if cluster else None,
            "worker_cpu_ms_per_case": round(worker_cpu / count * 1000, 1) if cluster else None,
            "case_latency_p50_s": round(statistics.median(latencies), 3),
            "case_latency_p95_s": round(latencies[min(count - 1, math.ceil(0.95 * count) - 1)], 3),
            "nodes": len(nodes - {None})}


async def main(cases: int, latency: float, capacity: int, concurrency: int) -> dict[str, Any]:
    import psycopg

    os.environ.setdefault("MEDAGENT_DEID_SECRET", secrets.token_hex(32))  # the nodes inherit it: one key
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    # short: Ray's socket paths under it must stay within the 107 characters of a Unix socket name
    folder = Path(tempfile.mkdtemp(prefix="mbench-", dir="/tmp"))
    try:
        images = variants(IMAGE, folder, min(cases, 64))  # more cases than that: the images again, in turn
        write_manifest(folder, [(f"case-{i:03d}", images[i % len(images)], "", "") for i in range(cases)],
                       f"manifest-{cases}.csv")
        write_manifest(folder, [(f"case-{i:03d}", path, "", "") for i, path in enumerate(images[:2])], "manifest-2.csv")
        with _server(latency, capacity) as url, postgres_server.postgres_server() as server_url:
            with psycopg.connect(server_url, autocommit=True) as connection:
                connection.execute("CREATE DATABASE bench")
            store_url = server_url.rsplit("/", 1)[0] + "/bench"
            await _run(folder, store_url, _study(folder, url, 2, 2, "warm-up", None), "warm-up", None)
            local = await _run(folder, store_url, _study(folder, url, cases, concurrency, "in-process", None),
                               "in-process", None)
            with local_cluster(folder) as cluster:
                on_ray = await _run(folder, store_url, _study(folder, url, cases, concurrency, "on-ray",
                                                              cluster.address), "on-ray", cluster)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    ideal = math.ceil(cases / min(capacity, concurrency)) * latency
    return {"cases": cases, "latency_s": latency, "capacity": capacity, "cases_in_flight": concurrency,
            "planner_calls_per_case": 1, "ideal_wall_s": ideal, "in_process": local, "ray_2_nodes": on_ray,
            "overhead_ratio": round(on_ray["wall_s"] / local["wall_s"], 3),
            # CPU a case costs more on Ray: driver + case workers, and with Ray's own processes (raylets, GCS, agents;
            # partly a fixed cost per second of the cluster, not per case)
            "ray_cpu_overhead_ms_per_case": round(on_ray["driver_cpu_ms_per_case"] + on_ray["worker_cpu_ms_per_case"]
                                                  - local["driver_cpu_ms_per_case"], 1),
            "ray_cpu_overhead_with_daemons_ms_per_case": round(
                on_ray["driver_cpu_ms_per_case"] + on_ray["cluster_cpu_ms_per_case"] - local["driver_cpu_ms_per_case"],
                1),
            "ray_latency_overhead_ms_p50": round(
                (on_ray["case_latency_p50_s"] - local["case_latency_p50_s"]) * 1000, 1)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=64)
    parser.add_argument("--latency", type=float, default=1.0, help="planner server latency per request (s)")
    parser.add_argument("--capacity", type=int, default=16, help="requests the planner server serves at once")
    parser.add_argument("--concurrency", type=int, default=16, help="cases in flight (across the cluster)")
    arguments = parser.parse_args()
    print(json.dumps(asyncio.run(main(arguments.cases, arguments.latency, arguments.capacity,
                                      arguments.concurrency)), indent=2))
