"""Remote vs in-process expert calls: the CXR classifier end to end at batch 16 (16 concurrent tool calls).

In process: the built-in ``classify_chest_xray`` tool through the registry (artifact read, preprocessing,
micro-batched DenseNet-121, typed result). Remote: the same expert served by ``medagent expert serve`` in a
subprocess on 127.0.0.1, called through a ``family: remote`` card (pixels read and encoded, one batch request,
the service's micro-batcher, the result checked against the service's schema). Both use the real TorchXRayVision
architecture with untrained test-only weights (same compute as trained ones). Rounds alternate A/B in one run;
the figure is the median over rounds of remote / the in-process round just before it (and, beside it, the ratio of
the best rounds), in wall time and in the CPU time both processes spent (steadier where other work shares the
cores). Goal: remote <= 1.2x in process.

    .venv/bin/python benchmarks/bench_remote_expert.py [--rounds 7] [--calls 16] [--device cpu] [--threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from medagent.config import Settings
from medagent.families.registry import family_tools
from medagent.tools.builtin import Toolbox
from medagent.tools.registry import ToolRegistry

SHARED = Path(os.environ.get("MEDAGENT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
IMAGE = SHARED / "torchxrayvision-nih" / "00000001_000.png"
SECRET = "medagent-benchmark-secret-0123456789abcdef"
GOAL = 1.2


def _crops(folder: Path, count: int) -> list[Path]:
    """Distinct real radiographs (shifted crops of one NIH image): no call can reuse another's work."""
    pixels = np.asarray(Image.open(IMAGE).convert("L"))
    paths = []
    for index in range(count):
        path = folder / f"cxr-{index:02d}.png"
        Image.fromarray(np.ascontiguousarray(pixels[index * 4: 896 + index * 4, index * 2: 896 + index * 2])).save(path)
        paths.append(path)
    return paths


def _start_service(home: Path, device: str | None, threads: int) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = {**os.environ, "MEDAGENT_HOME": str(home / "service"), "MEDAGENT_DEID_SECRET": SECRET,
                   "MEDAGENT_ALLOW_UNTRAINED_TEST_ONLY": "1", "MEDAGENT_XRV_CACHE_DIR": str(home / "xrv")}
    if device:
        environment["MEDAGENT_DEVICE"] = device
    if threads:
        environment["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op threads, read when it is imported
    command = [sys.executable, "-m", "medagent.cli", "expert", "serve", "classify_chest_xray", "--port", str(port)]
    process = subprocess.Popen(command, env=environment, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/v1/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("the expert service did not start")


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) process ``pid`` has used: /proc, Linux."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _round(registry: ToolRegistry, name: str, toolbox: Toolbox, ids: list[str],
                 service_pid: int) -> tuple[float, float]:
    """Wall seconds of 16 concurrent calls, and the CPU seconds both processes spent on them."""
    context = toolbox.context(ids)
    cpu = time.process_time() + _cpu_s(service_pid)
    started = time.perf_counter()
    results = await asyncio.gather(*(registry.call(name, {"image_id": image_id}, context) for image_id in ids))
    elapsed = time.perf_counter() - started
    assert all(result.provenance.untrained for result in results)
    return elapsed, time.process_time() + _cpu_s(service_pid) - cpu


def _summary(times: dict[str, list[float]], local: str, remote: str) -> dict[str, Any]:
    # each remote round against the in-process round just before it: load that drifts over the run cancels
    paired = statistics.median(far / near for near, far in zip(times[local], times[remote], strict=True))
    return {"in_process": {"median": round(statistics.median(times[local]), 3), "min": round(min(times[local]), 3),
                           "rounds": [round(t, 3) for t in times[local]]},
            "remote": {"median": round(statistics.median(times[remote]), 3), "min": round(min(times[remote]), 3),
                       "rounds": [round(t, 3) for t in times[remote]]},
            "ratio": round(paired, 3), "ratio_of_best_rounds": round(min(times[remote]) / min(times[local]), 3)}


async def main(rounds: int, calls: int, device: str | None, threads: int) -> dict[str, Any]:
    if threads:
        import torch

        torch.set_num_threads(threads)
    home = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    os.environ["MEDAGENT_DEID_SECRET"] = SECRET
    settings = Settings(home=home / "client", xrv_cache_dir=home / "xrv", allow_untrained_test_only=True,
                        device=device, plugins=False)
    toolbox = Toolbox(settings, plugins=False)
    ids = [toolbox.attach(path, modality="DX").id for path in _crops(home, calls)]
    process, url = _start_service(home, device, threads)
    try:
        card = {"family": "remote", "name": "remote", "url": url, "tools": ["classify_chest_xray"],
                "max_concurrency": 64, "max_batch_size": calls}
        [remote] = family_tools(settings, card=card)
        registry = toolbox.registry
        registry.register(remote)
        local_name, remote_name = "classify_chest_xray", remote.name
        for name in (local_name, remote_name):  # load the model on both sides, warm every path
            await _round(registry, name, toolbox, ids, process.pid)
        wall: dict[str, list[float]] = {local_name: [], remote_name: []}
        cpu: dict[str, list[float]] = {local_name: [], remote_name: []}
        for _ in range(rounds):
            for name in (local_name, remote_name):
                elapsed, spent = await _round(registry, name, toolbox, ids, process.pid)
                wall[name].append(elapsed)
                cpu[name].append(spent)
        async with httpx.AsyncClient() as client:
            versions = (await client.get(f"{url}/v1/health")).json()["library_versions"]
    finally:
        process.terminate()
        process.wait(timeout=30)
        toolbox.close()
    report = {"calls_per_round": calls, "rounds": rounds, "device": device or "auto",
              "torch_threads": threads or "default",
              "service_torch": versions.get("torch"), "goal": f"<= {GOAL}x",
              "wall_s": _summary(wall, local_name, remote_name), "cpu_s": _summary(cpu, local_name, remote_name)}
    report["meets_goal"] = report["wall_s"]["ratio"] <= GOAL
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=16)
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads in each process (0: torch's default); one keeps two processes "
                             "from oversubscribing the cores another one would have had alone")
    arguments = parser.parse_args()
    report = asyncio.run(main(arguments.rounds, arguments.calls, arguments.device, arguments.threads))
    print(json.dumps(report, indent=2))
    for clock in ("wall_s", "cpu_s"):
        figures = report[clock]
        print(f"{clock[:-2]}: remote / in-process at batch {arguments.calls}: {figures['ratio']}x paired median, "
              f"{figures['ratio_of_best_rounds']}x best rounds (goal <= {GOAL}x)")
