"""Micro-batching benchmark: N concurrent classifier calls, batched vs unbatched, in one run.

Uses the real TorchXRayVision DenseNet-121 architecture. Without weight files it uses the
test-only untrained switch (throughput does not depend on the weights' values).

    .venv/bin/python benchmarks/bench_microbatch.py --calls 32 [--device cuda] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from medagent.experts.cxr_classifier import CxrClassifier
from medagent.imaging.record import ImageRecord, Modality
from medagent.runtime.cache import ModelCache

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "torchxrayvision-nih"


def _images(count: int) -> list[ImageRecord]:
    """Real chest X-rays when ../shared/data is present, else seeded synthetic radiographs."""
    records: list[ImageRecord] = []
    paths = sorted(SHARED.glob("*.png")) if SHARED.is_dir() else []
    if paths:
        from medagent.imaging import Deidentifier, ImageLoader

        loader = ImageLoader(Deidentifier(os.urandom(32)))
        base = [loader.load(p, modality="DX") for p in paths]
        return [base[i % len(base)] for i in range(count)]
    rng = np.random.default_rng(0)
    for _ in range(count):
        pixels = rng.integers(0, 256, size=(512, 512)).astype(np.float32)
        records.append(ImageRecord(pixels=pixels, modality=Modality.DX, source_format="png",
                                   source_sha256="synthetic", window=(127.5, 255.0)))
    return records


async def _run(expert: CxrClassifier, images: list[ImageRecord], batched: bool) -> float:
    started = time.perf_counter()
    if batched:
        await asyncio.gather(*(expert(image) for image in images))
    else:
        await asyncio.gather(*(expert.run_unbatched(image) for image in images))
    return time.perf_counter() - started


async def main(calls: int, device: str | None, repeats: int, max_batch: int) -> dict[str, object]:
    cache_dir = Path(tempfile.mkdtemp())  # no weights here: the untrained switch builds the real architecture
    expert = CxrClassifier(cache_dir=cache_dir, allow_untrained_test_only=True, device=device,
                           cache=ModelCache(8 * 1024**3), max_batch_size=max_batch, max_wait_ms=10)
    images = _images(calls)
    await expert(images[0])  # load and warm up once, outside the timings
    await expert.run_unbatched(images[0])
    batched, unbatched = [], []
    for _ in range(repeats):  # interleaved so drift affects both equally
        unbatched.append(await _run(expert, images, batched=False))
        batched.append(await _run(expert, images, batched=True))
    expert.close()
    best_batched, best_unbatched = min(batched), min(unbatched)
    return {
        "calls": calls,
        "device": expert.device,
        "max_batch_size": max_batch,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "batched_s": round(best_batched, 3),
        "unbatched_s": round(best_unbatched, 3),
        "batched_calls_per_s": round(calls / best_batched, 2),
        "unbatched_calls_per_s": round(calls / best_unbatched, 2),
        "speedup": round(best_unbatched / best_batched, 2),
        "goal": ">= 2.5x throughput",
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=32)
    parser.add_argument("--device", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--json", type=Path, default=None)
    arguments = parser.parse_args()
    result = asyncio.run(main(arguments.calls, arguments.device, arguments.repeats, arguments.max_batch))
    print(json.dumps(result, indent=2))
    if arguments.json:
        arguments.json.write_text(json.dumps(result, indent=2))
