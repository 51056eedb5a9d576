"""Study datasets: a folder of images, or a CSV/Parquet manifest, turned into :class:`Case` objects.

Cases are produced lazily (:func:`iter_dataset` reads a manifest row by row), and a dataset with more
than ``max_cases`` cases is refused with a located error, so a million-row manifest neither fills
memory before the first case nor runs unnoticed.

Errors name the manifest file, the row and the column, never a cell's value (it may be patient
data) nor an image path. Case ids are stable: the manifest's id column, or a hash of the image
path relative to the dataset root, so a resumed run finds the same cases.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from medagent.dialogue.cases import CaseFormat, DialogueCase
from medagent.imaging.record import Modality
from medagent.questions.model import Layout, Question
from medagent.simulators.case_files import too_many_cases
from medagent.yaml_located import StudyConfigError

if TYPE_CHECKING:
    from medagent.config import Settings
    from medagent.questions.loading import QuestionSet

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".nii", ".nii.gz")
MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq")
BUILTIN_CASES = "builtin"
DEFAULT_MAX_CASES = 100_000


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

    type: Literal["folder", "manifest", "cases", "questions"]
    path: str = Field(min_length=1, description="relative to the study file's folder; cases: also 'builtin'")
    layout: Literal["auto"] | Layout = Field(
        default="auto", description="questions only: the benchmark's file layout (auto: detected)")
    images: str | None = Field(default=None, description="questions only: the image folder (relative to the study "
                                                         "file's folder); default: the question file's folder")
    skip_malformed: bool = Field(default=False, description="questions only: skip malformed rows (the report "
                                                            "counts them) instead of refusing the dataset")
    format: CaseFormat = Field(
        default="auto", description="cases only: the case file's layout")
    columns: ColumnMapping = Field(default_factory=ColumnMapping, description="manifest only")
    recursive: bool = Field(default=True, description="folder only: also look in subfolders")
    modality: Modality | None = Field(default=None, description="declared modality for PNG/JPEG/NIfTI images")
    max_cases: int = Field(default=DEFAULT_MAX_CASES, ge=1, le=10_000_000,
                           description="refuse a dataset with more cases (manifest rows, images) than this")


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
    question: Question | None = Field(default=None, description="questions datasets: the benchmark question")


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


def _folder_cases(root: Path, recursive: bool, max_cases: int) -> list[Case]:
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
        if len(images) > max_cases:  # the sorted listing is needed for stable order: cap it while walking
            raise too_many_cases(max_cases)
        if recursive:
            pending.extend(child for child in children if child.is_dir() and not child.name.startswith("."))
    cases = []
    for image in sorted(images):
        relative = image.relative_to(root).as_posix()
        cases.append(Case(case_id=_path_hash(relative), images=[image.resolve()]))
    return cases


def load_dataset(spec: DatasetSpec, base_dir: Path, settings: Settings | None = None) -> list[Case]:
    """The cases of ``spec``; ``base_dir`` is the study file's folder (relative paths start there). ``settings``
    (default: from the environment) give the home and key that embedded case images are written with."""
    return list(iter_dataset(spec, base_dir, settings))


def iter_dataset(spec: DatasetSpec, base_dir: Path, settings: Settings | None = None) -> Iterator[Case]:
    """The cases of ``spec`` one by one: a manifest is read row by row, at most ``spec.max_cases`` of them."""
    if spec.type == "questions":
        yield from (question_case(question) for question in load_question_set(spec, base_dir, settings).questions)
        return
    if spec.type == "manifest":
        root = _existing_root(spec, base_dir)
        if root.name.lower().endswith(MANIFEST_SUFFIXES):
            from medagent.studies.manifests import manifest_cases

            yield from manifest_cases(root, spec.columns, spec.max_cases)
            return
    cases = _eager_dataset(spec, base_dir, settings)
    if len(cases) > spec.max_cases:
        raise too_many_cases(spec.max_cases)
    yield from cases


def _existing_root(spec: DatasetSpec, base_dir: Path) -> Path:
    try:
        root = (base_dir / spec.path).resolve()
        found = root.exists()
    except (OSError, ValueError):  # a NUL byte, a name or path longer than the file system allows
        found = False
    if not found:
        raise StudyConfigError(f"dataset.path: the {spec.type} does not exist (relative paths start at the study "
                               "file's folder)", field="dataset.path")
    return root


def _eager_dataset(spec: DatasetSpec, base_dir: Path, settings: Settings | None) -> list[Case]:
    if spec.type == "cases" and spec.path == BUILTIN_CASES:
        from medagent.simulators.builtin import builtin_cases

        return [_study_case(case) for case in builtin_cases()]
    root = _existing_root(spec, base_dir)
    if spec.type == "cases":
        return _dialogue_cases(root, spec, settings)
    if spec.type == "folder":
        if not root.is_dir():
            raise StudyConfigError("dataset.path: a folder dataset must name a folder", field="dataset.path")
        cases = _folder_cases(root, spec.recursive, spec.max_cases)
        if not cases:
            raise StudyConfigError(f"dataset.path: the folder holds no images ({', '.join(IMAGE_SUFFIXES)})",
                                   field="dataset.path")
        return cases
    if not root.name.lower().endswith(MANIFEST_SUFFIXES):
        raise StudyConfigError(f"dataset.path: a manifest must be {', '.join(MANIFEST_SUFFIXES)}",
                               field="dataset.path")
    from medagent.studies.manifests import manifest_cases

    return list(manifest_cases(root, spec.columns, spec.max_cases))


def load_question_set(spec: DatasetSpec, base_dir: Path, settings: Settings | None = None) -> QuestionSet:
    """The questions of a ``questions`` dataset and the malformed rows skipped (``skip_malformed``); embedded
    images are cached de-identified under medagent's home, with the installation's key."""
    from medagent.config import Settings
    from medagent.imaging.deid import Deidentifier
    from medagent.imaging.deid_secret import load_or_create_secret
    from medagent.questions.loading import load_questions

    settings = settings or Settings()
    root = _existing_root(spec, base_dir)
    images = None
    if spec.images is not None:
        images = (base_dir / spec.images).resolve()
        if not images.is_dir():
            raise StudyConfigError("dataset.images: not a folder (relative paths start at the study file's folder)",
                                   field="dataset.images")
    deidentifier = Deidentifier(load_or_create_secret(settings.home, settings.deid_secret))
    found = load_questions(root, spec.layout, images=images, image_cache=settings.home / "question-images",
                           deidentifier=deidentifier, skip_malformed=spec.skip_malformed,
                           max_questions=spec.max_cases)
    if not found.questions:
        raise StudyConfigError("dataset.path: the dataset holds no questions", field="dataset.path")
    return found


def question_groups(question: Question) -> dict[str, str]:
    """What reports break a question's results down by."""
    return {"kind": question.kind, **{name: value for name in ("question_type", "modality", "body_part", "category",
                                                               "language", "source")
                                      if (value := getattr(question, name)) is not None}}


def question_case(question: Question) -> Case:
    """A question as a study case, its groups as subgroups."""
    return Case(case_id=question.question_id, images=list(question.images), label=question.answer,
                subgroups=question_groups(question), question=question)


def _study_case(case: DialogueCase) -> Case:
    return Case(case_id=case.case_id, images=list(case.images), label=case.diagnosis, subgroups=dict(case.subgroups),
                dialogue=case)


def _dialogue_cases(root: Path, spec: DatasetSpec, settings: Settings | None) -> list[Case]:
    from medagent.config import Settings
    from medagent.imaging.deid import Deidentifier
    from medagent.imaging.deid_secret import load_or_create_secret
    from medagent.simulators.loaders import load_cases

    settings = settings or Settings()
    # Parquet exports carry image bytes: each is written once, content-addressed, under medagent's home, with
    # the installation's key
    deidentifier = Deidentifier(load_or_create_secret(settings.home, settings.deid_secret))
    cases = load_cases(root, spec.format, image_cache=settings.home / "case-images", max_cases=spec.max_cases,
                       deidentifier=deidentifier)
    if not cases:
        raise StudyConfigError("dataset.path: the case file holds no cases", field="dataset.path")
    return [_study_case(case) for case in cases]
