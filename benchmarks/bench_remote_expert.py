"""Remote vs in-process expert calls: the CXR classifier end to end at batch 16 (16 concurrent tool calls).

In process: the built-in ``classify_chest_xray`` tool through the registry (artifact read, preprocessing,
micro-batched DenseNet-121, typed result). Remote: the same expert served by ``medagent expert serve`` in a
subprocess on 127.0.0.1, called through a ``family: remote`` card (pixels read and encoded, one batch request,
the service's micro-batcher, the result checked against the service's schema). Both use the real TorchXRayVision
architecture with untrained test-only weights (same compute as trained ones). Rounds alternate A/B in one run;
the figure is the ratio of median round times. Goal: remote <= 1.2x in process.

    .venv/bin/python benchmarks/bench_remote_expert.py [--rounds 7] [--calls 16] [--device cpu]
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


def _start_service(home: Path, device: str | None) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = {**os.environ, "MEDAGENT_HOME": str(home / "service"), "MEDAGENT_DEID_SECRET": SECRET,
                   "MEDAGENT_ALLOW_UNTRAINED_TEST_ONLY": "1", "MEDAGENT_XRV_CACHE_DIR": str(home / "xrv")}
    if device:
        environment["MEDAGENT_DEVICE"] = device
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


async def _round(registry: ToolRegistry, name: str, toolbox: Toolbox, ids: list[str]) -> float:
    context = toolbox.context(ids)
    started = time.perf_counter()
    results = await asyncio.gather(*(registry.call(name, {"image_id": image_id}, context) for image_id in ids))
    elapsed = time.perf_counter() - started
    assert all(result.provenance.untrained for result in results)
    return elapsed


async def main(rounds: int, calls: int, device: str | None) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    os.environ["MEDAGENT_DEID_SECRET"] = SECRET
    settings = Settings(home=home / "client", xrv_cache_dir=home / "xrv", allow_untrained_test_only=True,
                        device=device, plugins=False)
    toolbox = Toolbox(settings, plugins=False)
    ids = [toolbox.attach(path, modality="DX").id for path in _crops(home, calls)]
    process, url = _start_service(home, device)
    try:
        card = {"family": "remote", "name": "remote", "url": url, "tools": ["classify_chest_xray"],
                "max_concurrency": 64, "max_batch_size": calls}
        [remote] = family_tools(settings, card=card)
        registry = toolbox.registry
        registry.register(remote)
        local_name, remote_name = "classify_chest_xray", remote.name
        for name in (local_name, remote_name):  # load the model on both sides, warm every path
            await _round(registry, name, toolbox, ids)
        times: dict[str, list[float]] = {local_name: [], remote_name: []}
        for _ in range(rounds):
            for name in (local_name, remote_name):
                times[name].append(await _round(registry, name, toolbox, ids))
        async with httpx.AsyncClient() as client:
            versions = (await client.get(f"{url}/v1/health")).json()["library_versions"]
    finally:
        process.terminate()
        process.wait(timeout=30)
        toolbox.close()
    local, far = statistics.median(times[local_name]), statistics.median(times[remote_name])
    return {"calls_per_round": calls, "rounds": rounds, "device": device or "auto",
            "in_process_s": {"median": round(local, 3), "rounds": [round(t, 3) for t in times[local_name]]},
            "remote_s": {"median": round(far, 3), "rounds": [round(t, 3) for t in times[remote_name]]},
            "ratio": round(far / local, 3), "goal": f"<= {GOAL}x", "meets_goal": far / local <= GOAL,
            "service_torch": versions.get("torch")}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=16)
    parser.add_argument("--device", default=None)
    arguments = parser.parse_args()
    report = asyncio.run(main(arguments.rounds, arguments.calls, arguments.device))
    print(json.dumps(report, indent=2))
    print(f"remote / in-process at batch {arguments.calls}: {report['ratio']}x (goal <= {GOAL}x)")
