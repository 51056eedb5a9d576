"""Voxel-grid work for 3D segmentation: bundle preprocessing, sliding-window inference and the way back.

Everything that changes the grid (reorientation, resampling) records its inverse, and the predicted
label map is taken back through those inverses in reverse order, so it lands on the input voxel grid.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medagent.experts.monai_bundle import PreprocessPlan, SlidingWindowConfig
from medagent.imaging.record import ImageRecord

_COLOURS_BGR = [(75, 25, 230), (75, 180, 60), (25, 225, 255), (200, 130, 0), (48, 130, 245), (180, 30, 145),
                (240, 240, 70), (230, 50, 240), (60, 245, 210), (212, 190, 250), (128, 128, 0), (255, 190, 220)]
_OVERLAY_MIN_SIDE = 256  # small volumes are upscaled so outlines and text stay legible
_ACCELERATOR_STITCH_BYTES = 8 * 1024**3


@dataclass
class VolumeGrid:
    """The input's voxel grid: affine (voxel -> RAS mm), spacing per voxel axis, and the axial axis."""

    affine: np.ndarray
    spacing: tuple[float, float, float] | None
    voxel_volume_mm3: float | None
    slice_axis: int
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_record(cls, record: ImageRecord) -> VolumeGrid:
        import nibabel as nib

        notes: list[str] = []
        spacing = None
        if record.spacing_mm is not None and len(record.spacing_mm) == 3 and min(record.spacing_mm) > 0:
            spacing = (float(record.spacing_mm[0]), float(record.spacing_mm[1]), float(record.spacing_mm[2]))
        if record.affine is not None:
            affine = np.asarray(record.affine, dtype=np.float64)
            if spacing is None:
                sizes = nib.affines.voxel_sizes(affine)
                spacing = (float(sizes[0]), float(sizes[1]), float(sizes[2])) if min(sizes) > 0 else None
        elif spacing is not None:
            affine = np.diag([*spacing, 1.0])
            notes.append("the image has no orientation: its voxel axes were taken as R, A, S")
        else:
            affine = np.eye(4)
            notes.append("voxel spacing unknown: volumes in ml are not given and no resampling was done")
        if record.affine is None and record.source_format == "dicom":
            slice_axis = 0  # (frames, rows, cols)
        else:
            directions = np.abs(affine[:3, :3]) / np.maximum(np.linalg.norm(affine[:3, :3], axis=0), 1e-12)
            slice_axis = int(np.argmax(directions[2]))
        volume = float(np.prod(spacing)) if spacing else None
        return cls(affine=affine, spacing=spacing, voxel_volume_mm3=volume, slice_axis=slice_axis, notes=notes)


@dataclass
class SlidingWindowRun:
    label_map: np.ndarray  # on the input grid; value = output channel (1 for a single sigmoid channel)
    windows: int
    network_shape: tuple[int, ...]
    channels: int
    applied: list[str]
    notes: list[str]

    def value_labels(self, channel_def: dict[int, str]) -> dict[int, str]:
        foreground = {c: name for c, name in channel_def.items() if name.lower() != "background"}
        if self.channels == 1:
            return {1: next(iter(foreground.values()))} if foreground else {}
        return foreground


def _resize(array: Any, shape: tuple[int, ...], mode: str) -> Any:
    from torch.nn import functional

    options = {"align_corners": False} if mode == "trilinear" else {}
    return functional.interpolate(array[None, None], size=shape, mode=mode, **options)[0, 0]


def run_sliding_window(pixels: np.ndarray, grid: VolumeGrid, plan: PreprocessPlan, transforms: dict[str, Any],
                       network: Any, window: SlidingWindowConfig, device: str, out_channels: int = 2
                       ) -> SlidingWindowRun:
    """Apply the bundle's preprocessing in order, infer with MONAI's sliding window, return to the input grid."""
    import torch
    from monai.inferers import sliding_window_inference
    from nibabel import orientations

    volume = torch.tensor(pixels, dtype=torch.float32)  # a copy: some MONAI transforms write in place
    spacing = np.array(grid.spacing) if grid.spacing else None
    current = orientations.io_orientation(grid.affine)
    undo: list[tuple[str, Any]] = []
    applied: list[str] = []
    notes: list[str] = []
    for step in plan.steps:
        if step.kind == "orientation":
            target = orientations.axcodes2ornt(tuple(step.axcodes or "RAS"))
            forward = orientations.ornt_transform(current, target)
            volume = torch.from_numpy(np.ascontiguousarray(orientations.apply_orientation(volume.numpy(), forward)))
            if spacing is not None:
                spacing = spacing[np.argsort(forward[:, 0])]  # output axis j holds input axis argsort(...)[j]
            undo.append(("orient", orientations.ornt_transform(target, current)))
            current = target
            applied.append(f"Orientationd {step.axcodes}")
        elif step.kind == "spacing" and step.pixdim is not None:
            if spacing is None:
                notes.append(f"Spacingd pixdim {list(step.pixdim)} skipped: the input spacing is unknown")
                continue
            target_mm = np.where(np.array(step.pixdim) > 0, np.array(step.pixdim), spacing)
            shape = tuple(max(1, round(n * s / t)) for n, s, t in zip(volume.shape, spacing, target_mm, strict=True))
            if shape != tuple(volume.shape):
                undo.append(("resize", tuple(volume.shape)))
                mode = "nearest" if step.interpolation.startswith("nearest") else "trilinear"
                volume = _resize(volume, shape, mode)
            spacing = target_mm
            applied.append(f"Spacingd pixdim {[round(float(v), 4) for v in target_mm]}")
        elif step.kind == "intensity":
            transform = transforms[step.config_id]
            keys = list(transform.keys)
            output = transform({key: volume[None] for key in keys})[keys[0]]
            volume = (output.as_tensor() if hasattr(output, "as_tensor") else torch.as_tensor(output))[0].float()
            applied.append(step.target)

    windows = 0

    def predictor(batch: Any) -> Any:
        nonlocal windows
        windows += int(batch.shape[0])
        output = network(batch)
        return output[0] if isinstance(output, (list, tuple)) else output  # deep supervision: the full-size head

    stitch_on = device
    if device != "cpu" and volume.numel() * 4 * max(out_channels, 1) > _ACCELERATOR_STITCH_BYTES:
        stitch_on = "cpu"  # many-label bundles on large volumes: accumulate the full-volume logits in host memory
    with torch.inference_mode():
        logits = sliding_window_inference(
            volume[None, None].to(device), roi_size=window.roi_size, sw_batch_size=window.sw_batch_size,
            predictor=predictor, overlap=window.overlap, mode=window.mode, padding_mode=window.padding_mode,
            sw_device=device, device=stitch_on,
        )
        assert isinstance(logits, torch.Tensor)  # the predictor returns one tensor, so the stitched result is one
        channels = int(logits.shape[1])
        labels = logits[0, 0] > 0 if channels == 1 else torch.argmax(logits[0], dim=0)
        label_map = labels.to(torch.int32).cpu()
    network_shape = tuple(int(n) for n in volume.shape)
    for kind, inverse in reversed(undo):
        if kind == "resize":
            label_map = _resize(label_map.float(), inverse, "nearest-exact").round().to(torch.int32)
        else:
            label_map = torch.from_numpy(np.ascontiguousarray(orientations.apply_orientation(label_map.numpy(),
                                                                                              inverse)))
    dtype = np.uint8 if channels <= 256 else np.uint16
    return SlidingWindowRun(label_map=label_map.numpy().astype(dtype), windows=windows, network_shape=network_shape,
                            channels=channels, applied=applied, notes=notes)


def label_statistics(label_map: np.ndarray, slice_axis: int, values: int) -> tuple[np.ndarray, np.ndarray]:
    """Voxel count per value and, per value, the slice along ``slice_axis`` where its area is largest."""
    per_slice = np.stack([np.bincount(plane.ravel(), minlength=values)[:values]
                          for plane in np.moveaxis(label_map, slice_axis, 0)])
    return per_slice.sum(axis=0), per_slice.argmax(axis=0)


def mask_nifti_gz(label_map: np.ndarray, affine: np.ndarray, description: str) -> bytes:
    """The label map as gzip-compressed NIfTI-1 whose sform and qform are ``affine`` itself."""
    import nibabel as nib

    image = nib.Nifti1Image(np.asarray(label_map), affine)
    image.header.set_sform(affine, code=1)
    image.header.set_qform(affine, code=1)
    image.header.set_xyzt_units("mm")
    image.header.set_intent("label")
    image.header["descrip"] = description.encode("ascii", "replace")[:79]
    return gzip.compress(image.to_bytes(), compresslevel=6)


def _display_plane(record: ImageRecord, plane: np.ndarray, low: float, high: float) -> np.ndarray:
    view = np.clip((plane.astype(np.float32) - low) / max(high - low, 1e-6), 0.0, 1.0)
    return np.ascontiguousarray(np.rot90(view)) if record.source_format == "nifti" else view  # as ImageRecord.as_2d


def render_overlays(record: ImageRecord, label_map: np.ndarray, slice_axis: int,
                    shown: list[tuple[str, int, int]], legend: list[tuple[str, int]]) -> list[tuple[str, int, bytes]]:
    """One PNG per (label, value, slice) in ``shown``: every ``legend`` label on that slice, tinted and outlined."""
    import cv2

    if not shown:
        return []
    if record.window is not None:
        low, high = record.window[0] - record.window[1] / 2, record.window[0] + record.window[1] / 2
    else:
        low, high = float(np.min(record.pixels)), float(np.max(record.pixels))
    overlays = []
    for title, _, index in shown:
        grey = _display_plane(record, np.take(record.pixels, index, axis=slice_axis), low, high)
        labels = np.take(label_map, index, axis=slice_axis)
        labels = np.ascontiguousarray(np.rot90(labels)) if record.source_format == "nifti" else labels
        scale = max(1, -(-_OVERLAY_MIN_SIDE // max(grey.shape)))
        size = (grey.shape[1] * scale, grey.shape[0] * scale)
        canvas = cv2.cvtColor(cv2.resize((grey * 255).astype(np.uint8), size, interpolation=cv2.INTER_LINEAR),
                              cv2.COLOR_GRAY2BGR).astype(np.float32)
        outlines = []
        for label, value in legend:
            mask = cv2.resize((labels == value).astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
            colour = _COLOURS_BGR[(value - 1) % len(_COLOURS_BGR)]
            canvas[mask > 0] = 0.6 * canvas[mask > 0] + 0.4 * np.array(colour, dtype=np.float32)
            outlines.append((cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0], colour, label))
        image = np.ascontiguousarray(canvas.clip(0, 255).astype(np.uint8))
        for contours, colour, _ in outlines:
            cv2.drawContours(image, contours, -1, colour, 1)
        cv2.putText(image, f"{title} (slice {index})", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
        ok, png = cv2.imencode(".png", image)
        if ok:
            overlays.append((title, index, png.tobytes()))
    return overlays
