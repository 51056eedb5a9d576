"""Study datasets: a folder of images, or a CSV/Parquet manifest, turned into a list of :class:`Case`.

Errors name the manifest file, the row and the column, never a cell's value (it may be patient
data) nor an image path. Case ids are stable: the manifest's id column, or a hash of the image
path relative to the dataset root, so a resumed run finds the same cases.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from medagent.imaging.record import Modality
from medagent.simulators.cases import DialogueCase
from medagent.studies.source import StudyConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".nii", ".nii.gz")
MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq")
BUILTIN_CASES = "builtin"
_POSITIVE = {"1", "1.0", "true", "yes", "positive"}
_NEGATIVE = {"0", "0.0", "false", "no", "negative"}


class ColumnMapping(BaseModel):
    """Which manifest columns hold what. ``path`` may list several images separated by ``path_separator``."""

    model_config = ConfigDict(extra="forbid")

    path: str = "path"
    path_separator: str = Field(default=";", min_length=1)
    case_id: str | None = Field(default=None, description="stable case id column; default: hash of the path")
    labels: list[str] = Field(default_factory=list, description="0/1 columns, one per finding")
    label: str | None = Field(default=None, description="one categorical label column instead of 0/1 columns")
    patient_id: str | None = None
    study_date: str | None = None
    subgroups: list[str] = Field(default_factory=list, description="e.g. age_band, sex: for per-subgroup tables")


class DatasetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["folder", "manifest", "cases"]
    path: str = Field(min_length=1, description="relative to the study file's folder; cases: also 'builtin'")
    format: Literal["auto", "agentclinic", "3mdbench", "medagent"] = Field(
        default="auto", description="cases only: the case file's layout")
    columns: ColumnMapping = Field(default_factory=ColumnMapping, description="manifest only")
    recursive: bool = Field(default=True, description="folder only: also look in subfolders")
    modality: Modality | None = Field(default=None, description="declared modality for PNG/JPEG/NIfTI images")


class Case(BaseModel):
    model_config = ConfigDict(frozen=True)

    case_id: str
    images: list[Path] = Field(default_factory=list, description="absolute; a DICOM series folder is one image")
    labels: dict[str, int] = Field(default_factory=dict, description="finding -> 0/1")
    label: str | None = None
    patient_id: str | None = None
    study_date: str | None = None
    subgroups: dict[str, str] = Field(default_factory=dict)
    dialogue: DialogueCase | None = Field(default=None, description="cases datasets: the simulated consultation")


def _path_hash(relative: str) -> str:
    return hashlib.sha256(relative.encode("utf-8")).hexdigest()[:16]


def _is_image(path: Path) -> bool:
    return path.name.lower().endswith(IMAGE_SUFFIXES)


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with path.open("rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _folder_cases(root: Path, recursive: bool) -> list[Case]:
    """Each image file is a case; a subfolder holding DICOM files is one series (one case)."""
    images: list[Path] = []
    pending = [root]
    while pending:
        folder = pending.pop()
        children = sorted(folder.iterdir())
        if folder != root and any(child.is_file() and _is_dicom(child) for child in children):
            images.append(folder)
            continue
        images.extend(child for child in children if child.is_file() and _is_image(child))
        if recursive:
            pending.extend(child for child in children if child.is_dir() and not child.name.startswith("."))
    cases = []
    for image in sorted(images):
        relative = image.relative_to(root).as_posix()
        cases.append(Case(case_id=_path_hash(relative), images=[image.resolve()]))
    return cases


def _read_manifest(path: Path) -> tuple[list[str], list[dict[str, Any]], int]:
    """Columns, rows and the file line of the first row (2 for CSV with a header; 1 = row index base for Parquet)."""
    if path.name.lower().endswith(".csv"):
        import csv

        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            return list(reader.fieldnames or []), rows, 2
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return list(table.column_names), table.to_pylist(), 1


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _binary(value: Any) -> int | None:
    text = _text(value)
    if text is None:
        return None
    lowered = text.lower()
    return 1 if lowered in _POSITIVE else 0 if lowered in _NEGATIVE else None


def _manifest_cases(manifest: Path, columns: ColumnMapping) -> list[Case]:
    name = manifest.name
    try:
        header, rows, first_line = _read_manifest(manifest)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise StudyConfigError(f"{name}: cannot read the manifest ({type(exc).__name__})", file=name) from exc
    wanted = [columns.path, columns.case_id, *columns.labels, columns.label, columns.patient_id,
              columns.study_date, *columns.subgroups]
    missing = [column for column in wanted if column is not None and column not in header]
    if missing:
        raise StudyConfigError(f"{name}: column '{missing[0]}' is missing (the manifest has: {', '.join(header)})",
                               file=name, line=1, field=missing[0])
    base = manifest.parent
    cases: list[Case] = []
    seen: dict[str, int] = {}
    for index, row in enumerate(rows):
        line = index + first_line
        row_label = f"row {index + 1}" + (f" (line {line})" if first_line == 2 else "")

        def fail(column: str, problem: str, *, _row_label: str = row_label, _line: int = line) -> StudyConfigError:
            return StudyConfigError(f"{name}: {_row_label}: column '{column}': {problem}", file=name, line=_line,
                                    field=column)

        raw_paths = _text(row[columns.path])
        if raw_paths is None:
            raise fail(columns.path, "empty")
        images = []
        for part in raw_paths.split(columns.path_separator):
            image = (base / part.strip()).resolve()
            if not image.exists():
                raise fail(columns.path, "file not found (paths are relative to the manifest)")
            images.append(image)
        labels = {}
        for column in columns.labels:
            if _text(row[column]) is None:
                continue  # an empty cell: the label is unknown for this case
            value = _binary(row[column])
            if value is None:
                raise fail(column, "expected 0 or 1, or an empty cell when unknown")
            labels[column] = value
        case_id = _text(row[columns.case_id]) if columns.case_id else _path_hash(raw_paths)
        if case_id is None:
            raise fail(str(columns.case_id), "empty case id")
        if case_id in seen:
            raise fail(str(columns.case_id or columns.path), f"duplicate case (same as row {seen[case_id] + 1})")
        seen[case_id] = index
        cases.append(Case(
            case_id=case_id, images=images, labels=labels,
            label=_text(row[columns.label]) if columns.label else None,
            patient_id=_text(row[columns.patient_id]) if columns.patient_id else None,
            study_date=_text(row[columns.study_date]) if columns.study_date else None,
            subgroups={column: _text(row[column]) or "unknown" for column in columns.subgroups},
        ))
    return cases


def load_dataset(spec: DatasetSpec, base_dir: Path) -> list[Case]:
    """The cases of ``spec``; ``base_dir`` is the study file's folder (relative paths start there)."""
    if spec.type == "cases" and spec.path == BUILTIN_CASES:
        from medagent.simulators.builtin import builtin_cases

        return [_study_case(case) for case in builtin_cases()]
    root = (base_dir / spec.path).resolve()
    if not root.exists():
        raise StudyConfigError(f"dataset.path: the {spec.type} does not exist (relative paths start at the study "
                               "file's folder)", field="dataset.path")
    if spec.type == "cases":
        return _dialogue_cases(root, spec)
    if spec.type == "folder":
        if not root.is_dir():
            raise StudyConfigError("dataset.path: a folder dataset must name a folder", field="dataset.path")
        cases = _folder_cases(root, spec.recursive)
        if not cases:
            raise StudyConfigError(f"dataset.path: the folder holds no images ({', '.join(IMAGE_SUFFIXES)})",
                                   field="dataset.path")
        return cases
    if not root.name.lower().endswith(MANIFEST_SUFFIXES):
        raise StudyConfigError(f"dataset.path: a manifest must be {', '.join(MANIFEST_SUFFIXES)}",
                               field="dataset.path")
    return _manifest_cases(root, spec.columns)


def _study_case(case: DialogueCase) -> Case:
    return Case(case_id=case.case_id, images=list(case.images), label=case.diagnosis, subgroups=dict(case.subgroups),
                dialogue=case)


def _dialogue_cases(root: Path, spec: DatasetSpec) -> list[Case]:
    from medagent.config import Settings
    from medagent.simulators.loaders import load_cases

    # Parquet exports carry image bytes: each is written once, content-addressed, under medagent's home
    cases = load_cases(root, spec.format, image_cache=Settings().home / "case-images")
    if not cases:
        raise StudyConfigError("dataset.path: the case file holds no cases", field="dataset.path")
    return [_study_case(case) for case in cases]
