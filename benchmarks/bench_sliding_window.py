"""3D sliding-window throughput: the volume segmenter end to end vs bare MONAI ``sliding_window_inference``.

End to end is one ``await VolumeSegmenter(...)`` call: the worker thread, the bundle's preprocessing
(reorientation to RAS, optional resampling, NormalizeIntensityd), sliding-window inference, the way
back to the input grid, per-label statistics, the NIfTI mask (gzip) and the overlay PNGs. Bare is
``sliding_window_inference`` on the same loaded network over an input tensor of the same grid. Both
report input voxels/s and windows/s; A and B alternate, after one warm-up each.

Input: the first volume of nibabel's real MR test file example4d.nii.gz (128 x 96 x 24, LAS).
The bundle is written to a temporary folder in the standard layout (configs/metadata.json,
configs/inference.json, models/model.pt); its network_def is the spleen_ct_segmentation UNet
(channels 16..256, strides 2, two residual units) and model.pt a real, randomly initialised
state_dict: the compute does not depend on the weight values.

    .venv/bin/python benchmarks/bench_sliding_window.py [--roi 64 64 16] [--overlap 0.25]
        [--sw-batch-size 2] [--device cpu] [--repeats 3] [--pixdim 2 2 2]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.resources
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from medagent.experts.volume_segmentation import VolumeRequest, VolumeSegmenter
from medagent.imaging import Deidentifier, ImageLoader
from medagent.runtime.cache import ModelCache

NETWORK = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [16, 32, 64, 128, 256],
           "strides": [2, 2, 2, 2], "num_res_units": 2, "norm": "batch"}


def write_bundle(root: Path, arguments: argparse.Namespace) -> Path:
    import torch
    from monai.networks.nets import UNet

    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    transforms: list[dict[str, Any]] = [{"_target_": "LoadImaged", "keys": "image"},
                                        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"}]
    if arguments.pixdim:
        transforms.append({"_target_": "Spacingd", "keys": "image", "pixdim": arguments.pixdim, "mode": "bilinear"})
    transforms.append({"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True})
    metadata = {"name": "benchmark UNet", "version": "0.0.1", "network_data_format": {
        "inputs": {"image": {"modality": "MR"}},
        "outputs": {"pred": {"channel_def": {"0": "background", "1": "structure"}}}}}
    inference = {"network_def": {"_target_": "UNet", **NETWORK},
                 "preprocessing": {"_target_": "Compose", "transforms": transforms},
                 "inferer": {"_target_": "SlidingWindowInferer", "roi_size": arguments.roi,
                             "sw_batch_size": arguments.sw_batch_size, "overlap": arguments.overlap}}
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata))
    (root / "configs" / "inference.json").write_text(json.dumps(inference))
    torch.manual_seed(0)
    torch.save(UNet(**NETWORK).state_dict(), root / "models" / "model.pt")  # type: ignore[arg-type]
    return root


def example_volume(folder: Path) -> Path:
    import nibabel as nib

    source = nib.load(Path(str(importlib.resources.files("nibabel"))) / "tests" / "data" / "example4d.nii.gz")
    first = np.asarray(source.dataobj[..., 0])
    path = folder / "example3d.nii.gz"
    nib.save(nib.Nifti1Image(first, source.affine, source.header), path)
    return path


def bare_runner(segmenter: VolumeSegmenter, shape: tuple[int, ...], device: str) -> Any:
    import torch
    from monai.inferers import sliding_window_inference

    loaded = segmenter.loaded()
    window = loaded.model["window"]
    network = loaded.model["network"]
    inputs = torch.randn(1, 1, *shape, generator=torch.Generator().manual_seed(0)).to(device)
    counter = {"windows": 0}

    def predictor(batch: Any) -> Any:
        counter["windows"] += int(batch.shape[0])
        return network(batch)

    def run() -> int:
        counter["windows"] = 0
        with torch.inference_mode():
            logits = sliding_window_inference(inputs, window.roi_size, window.sw_batch_size, predictor,
                                              overlap=window.overlap, mode=window.mode)
            torch.argmax(logits[0], dim=0).cpu()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return counter["windows"]
    return run


async def main(arguments: argparse.Namespace) -> dict[str, Any]:
    import torch

    folder = Path(tempfile.mkdtemp())
    bundle = write_bundle(folder / "benchmark_bundle", arguments)
    record = ImageLoader(Deidentifier(b"benchmark-secret-0123456789")).load(example_volume(folder), modality="MR")
    segmenter = VolumeSegmenter(bundle, device=arguments.device, cache=ModelCache(2 * 1024**3))
    request = VolumeRequest(image=record)
    warm = await segmenter(request)  # loads the bundle
    bare = bare_runner(segmenter, tuple(warm.network_grid), segmenter.device)
    bare()
    expert_s, bare_s, bare_windows = [], [], 0
    for _ in range(arguments.repeats):
        started = time.perf_counter()
        result = await segmenter(request)
        expert_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        bare_windows = bare()
        bare_s.append(time.perf_counter() - started)
    segmenter.close()
    voxels = int(np.prod(record.pixels.shape))

    def figures(seconds: list[float], windows: int) -> dict[str, float]:
        median = statistics.median(seconds)
        return {"median_s": round(median, 3), "voxels_per_s": round(voxels / median),
                "windows_per_s": round(windows / median, 2), "windows": windows}
    report = {
        "device": segmenter.device, "torch_threads": torch.get_num_threads(), "input_shape": list(record.pixels.shape),
        "network_grid": result.network_grid, "roi": list(result.roi_size), "overlap": result.overlap,
        "sw_batch_size": result.sw_batch_size, "network": f"UNet channels {NETWORK['channels']}",
        "repeats": arguments.repeats, "expert_end_to_end": figures(expert_s, result.windows),
        "bare_sliding_window": figures(bare_s, bare_windows),
    }
    report["end_to_end_over_bare"] = round(statistics.median(expert_s) / statistics.median(bare_s), 2)
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--roi", type=int, nargs=3, default=[64, 64, 16], help="window size (multiples of 16)")
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--sw-batch-size", type=int, default=2)
    parser.add_argument("--pixdim", type=float, nargs=3, default=None, help="add a Spacingd step (mm)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=2))
