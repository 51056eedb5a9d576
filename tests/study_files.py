"""Files a study test needs: a CSV manifest, a study YAML, distinct radiographs cut from one real image."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

# backend of a scripted planner in study YAML: ``SCRIPTED % ("tool_a, tool_b", ", latency_s: 0.05")``
SCRIPTED = "{_target_: medagent.agents.scripted.tool_sequence_planner, kwargs: {tools: [%s]%s}}"

PIPELINE = """  type: pipeline
  steps:
    - id: quality
      tool: assess_image_quality
    - id: classify
      tool: classify_chest_xray"""

ManifestRow = tuple[str, Path, int | str, str]
"""case id, image path, Cardiomegaly label (1, 0 or "" when unknown), sex."""


def agent_loop(question: str) -> str:
    """The ``graph:`` body of an agent-loop study asking ``question``."""
    return f"  type: agent_loop\n  question: {question}"


def write_manifest(folder: Path, rows: Sequence[ManifestRow], name: str = "manifest.csv") -> Path:
    path = folder / name
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["case_id", "path", "Cardiomegaly", "sex"])
        for case_id, image, label, sex in rows:
            writer.writerow([case_id, str(image), label, sex])
    return path


def write_study(folder: Path, graph: str, *, planner: str = "", repeats: int = 1, concurrency: int = 4,
                modality: str = "DX", name: str = "test-study", file_name: str = "study.yaml",
                manifest: str = "manifest.csv", extra: str = "") -> Path:
    """A study over the manifest ``manifest`` (beside the YAML), labels Cardiomegaly, subgroup sex;
    ``extra``: more top-level YAML (e.g. a ``metrics:`` section)."""
    planners = f"planners:\n  planner:\n    backend: {planner}\n" if planner else ""
    text = f"""name: {name}
{planners}graph:
{graph}
dataset:
  type: manifest
  path: {manifest}
  modality: {modality}
  columns: {{path: path, case_id: case_id, labels: [Cardiomegaly], subgroups: [sex]}}
repeats: {repeats}
seeds: 7
concurrency: {{cases: {concurrency}}}
{extra}"""
    path = folder / file_name
    path.write_text(text)
    return path


def variants(source: Path, folder: Path, count: int, prefix: str = "cxr") -> list[Path]:
    """Distinct real radiographs: shifted crops of one image, so every case has its own image id."""
    pixels = np.asarray(Image.open(source).convert("L"))
    paths = []
    for index in range(count):
        crop = pixels[index * 4: 896 + index * 4, index * 2: 896 + index * 2]
        path = folder / f"{prefix}-{index:02d}.png"
        Image.fromarray(np.ascontiguousarray(crop)).save(path)
        paths.append(path)
    return paths


def recorded_cases(home: Path, run_id: str, store_url: str | None = None) -> int:
    """Terminal records of ``run_id`` in the store (the SQLite file under ``home`` unless ``store_url``;
    0 while a child creates it)."""
    from medagent.store import StudyStore

    if store_url is None and not (home / "studies.sqlite").exists():
        return 0
    try:
        with StudyStore.open(store_url, home) as store:
            return len(store.recorded_keys(run_id)) if store.get_run(run_id) else 0
    except Exception:  # the database is being created by the child process
        return 0
