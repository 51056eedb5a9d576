"""Expert end-to-end time vs pure model compute, for the CXR classifier and the CXR anatomy segmenter.

End to end is what a planner's tool call costs: the registry validates the arguments, the image is read
from the artifact store, preprocessed, run through the expert runtime (worker thread, micro-batcher),
and the typed result (plus, for the segmenter, the mask and overlay artifacts) is built and stored.
Pure compute is the network's forward pass on the already preprocessed tensor. A and B alternate in one
run. Real architectures; without weight files the test-only untrained switch is used, which does not
change the compute. Goal: end to end <= 1.5x pure compute.

    .venv/bin/python benchmarks/bench_expert_overhead.py [--repeats 7] [--device cpu]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medagent.config import Settings
from medagent.tools.builtin import Toolbox

SHARED = Path(os.environ.get("MEDAGENT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
IMAGE = SHARED / "torchxrayvision-nih" / "00000001_000.png"


def _classifier_compute(toolbox: Toolbox, image_id: str) -> Callable[[], Any]:
    import torch

    expert = toolbox.experts.classifier
    loaded = expert.loaded()
    tensor = torch.from_numpy(expert.preprocess(toolbox.store.load_image(image_id), loaded.model["resolution"])[None])
    tensor = tensor.to(loaded.provenance.device).contiguous(memory_format=torch.channels_last)

    def forward() -> Any:
        with torch.inference_mode():
            return loaded.model["model"](tensor).float().cpu()
    return forward


def _segmenter_compute(toolbox: Toolbox, image_id: str) -> Callable[[], Any]:
    import torch

    expert = toolbox.experts.anatomy
    loaded = expert.loaded()
    network_input, _, _ = expert.preprocess(toolbox.store.load_image(image_id))
    tensor = torch.from_numpy(network_input[None]).to(loaded.provenance.device)

    def forward() -> Any:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*nn\.functional\.upsample.* is deprecated")
            return torch.sigmoid(loaded.model["network"](tensor)).float().cpu()
    return forward


CASES = {"classify_chest_xray": _classifier_compute, "segment_chest_anatomy": _segmenter_compute}


async def main(repeats: int, device: str | None) -> dict[str, Any]:
    import torch

    torch.manual_seed(0)
    home = Path(tempfile.mkdtemp())
    settings = Settings(home=home, xrv_cache_dir=home / "xrv", allow_untrained_test_only=True, device=device)
    toolbox = Toolbox(settings)
    image_id = toolbox.attach(IMAGE, modality="DX").id
    context = toolbox.context([image_id])
    report: dict[str, Any] = {"device": device or "auto", "torch_threads": torch.get_num_threads(), "experts": {}}
    for tool_name, compute_for in CASES.items():
        if tool_name not in toolbox.registry:
            report["experts"][tool_name] = "not registered"
            continue
        await toolbox.call(tool_name, {"image_id": image_id}, context)  # load weights, warm up
        compute = compute_for(toolbox, image_id)
        compute()
        end_to_end, pure = [], []
        for _ in range(repeats):
            started = time.perf_counter()
            result = await toolbox.call(tool_name, {"image_id": image_id}, context)
            end_to_end.append(time.perf_counter() - started)
            started = time.perf_counter()
            compute()
            pure.append(time.perf_counter() - started)
        e2e_ms, pure_ms = statistics.median(end_to_end) * 1000, statistics.median(pure) * 1000
        report["experts"][tool_name] = {
            "end_to_end_ms": round(e2e_ms, 1), "pure_compute_ms": round(pure_ms, 1),
            "ratio": round(e2e_ms / pure_ms, 2), "untrained": result.provenance.untrained,  # type: ignore[attr-defined]
        }
    toolbox.close()
    report["goal"] = "ratio <= 1.5"
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default=None)
    arguments = parser.parse_args()
    np.random.seed(0)
    print(json.dumps(asyncio.run(main(arguments.repeats, arguments.device)), indent=2))
