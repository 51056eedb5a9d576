"""Study concurrency efficiency: N cases against a real local OpenAI-compatible server (127.0.0.1) that
answers each request after a fixed latency L and serves at most c requests at once.

The server runs in a process of its own. Ideal wall time is ceil(N / c) * L; efficiency = ideal / measured (goal >= 0.9). The sequential
baseline (one case at a time, ideal N * L) is reported beside it. Each case is an agent-loop question
about a real chest X-ray whose planner answers without tools, so the figure measures the runner:
attaching, planner calls, SQL writes and scheduling. A two-case warm-up run first pays the one-off
imports (openai client, checkpointer, ...), which are not what this measures.

    .venv/bin/python benchmarks/bench_study_concurrency.py [--cases 64] [--latency 1.0] [--capacity 16]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medagent.config import Settings  # noqa: E402
from medagent.store import StudyStore  # noqa: E402
from medagent.studies import parse_study  # noqa: E402
from medagent.studies.config import MAX_CONCURRENCY  # noqa: E402
from medagent.studies.runner import run_study  # noqa: E402

IMAGE = Path(os.environ.get("MEDAGENT_SHARED_DATA", REPO.parent / "shared" / "data")) / "torchxrayvision-nih" / \
    "00000001_000.png"


async def _run(folder: Path, endpoint: str, cases: int, concurrency: int, name: str,
               workers: int = 0) -> tuple[float, float]:
    """``workers``: worker processes (executor: processes); 0: the cases run in this process."""
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["case_id", "path"])
        writer.writerows([[f"case-{index:03d}", str(IMAGE)] for index in range(cases)])
    text = f"""name: {name}
planners:
  planner: {{backend: openai, endpoint: "{endpoint}", model: fake-model, tool_calling: native}}
graph: {{type: agent_loop, question: "Describe the image."}}
dataset: {{type: manifest, path: manifest.csv, modality: DX, columns: {{path: path, case_id: case_id}}}}
concurrency: {{cases: {concurrency}, per_planner_endpoint: {concurrency}}}
""" + (f"executor: {{type: processes, workers: {workers}}}\n" if workers else "")
    config = parse_study(text, str(folder / f"{name}.yaml"))
    settings = Settings(home=folder / "home")
    with StudyStore.open(None, settings.home) as store:
        started = None
        async for event in run_study(config, store=store, settings=settings, run_id=name):
            if event.kind == "started":
                started, cpu_started = time.perf_counter(), _cpu()
        assert started is not None
        elapsed, cpu = time.perf_counter() - started, _cpu() - cpu_started
        statuses = {case.status for case in store.cases(name)}
        assert statuses == {"succeeded"}, statuses
    return elapsed, cpu


def _cpu() -> float:
    """This process's CPU time and that of its children that ended (worker processes, start-up included)."""
    spent = os.times()
    return spent.user + spent.system + spent.children_user + spent.children_system


@contextlib.contextmanager
def _server(latency: float, capacity: int, answer: str | None = None) -> Iterator[str]:
    """The OpenAI-compatible server in a process of its own, as a deployed vLLM server would be; ``answer``: the
    text of every reply."""
    process = subprocess.Popen([sys.executable, "-m", "tests.fake_openai_server", "--latency", str(latency),
                                "--capacity", str(capacity), *(["--text", answer] if answer else [])],
                               cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        yield process.stdout.readline().strip()
    finally:
        process.terminate()
        process.wait(timeout=10)


async def main(cases: int, latency: float, capacity: int, sequential_cases: int, workers: int = 0) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp())
    with _server(latency, capacity) as url:
        await _run(folder, url, 2, 2, "warm-up")  # imports and first loads happen once per process
        # as many cases in flight as a study may have (MAX_CONCURRENCY): enough to keep every server slot busy
        concurrent, concurrent_cpu = await _run(folder, url, cases, min(cases, MAX_CONCURRENCY), "concurrent", workers)
        sequential, _ = await _run(folder, url, sequential_cases, 1, "sequential")
    ideal = math.ceil(cases / capacity) * latency
    return {"cases": cases, "latency_s": latency, "capacity": capacity, "worker_processes": workers,
            "concurrent_wall_s": round(concurrent, 2), "ideal_wall_s": ideal,
            "client_cpu_ms_per_case": round(concurrent_cpu / cases * 1000, 1),
            "efficiency": round(ideal / concurrent, 3),
            "sequential_cases": sequential_cases, "sequential_wall_s": round(sequential, 2),
            "sequential_efficiency": round(sequential_cases * latency / sequential, 3),
            "speedup_per_case": round((sequential / sequential_cases) / (concurrent / cases), 1),
            "goal": "efficiency >= 0.9"}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=64)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--capacity", type=int, default=16)
    parser.add_argument("--sequential-cases", type=int, default=8, help="cases in the one-at-a-time baseline")
    parser.add_argument("--workers", type=int, default=0,
                        help="worker processes for the concurrent run (executor: processes); 0: this process alone")
    arguments = parser.parse_args()
    print(json.dumps(asyncio.run(main(arguments.cases, arguments.latency, arguments.capacity,
                                      arguments.sequential_cases, arguments.workers)), indent=2))
