"""Case files into :class:`DialogueCase`: AgentClinic OSCE JSONL, the 3MDBench layout and medagent's own YAML/JSON.

Errors name the file, the line (or row) and the field path, never a value from the case: case
texts are clinical vignettes and image paths may be a user's. Case ids are stable across loads
(an id column, else the file stem and the 1-based line or row number), so a resumed study finds
its cases again.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError

from medagent.dialogue.cases import CASE_SOURCES, CaseFormat, DialogueCase
from medagent.simulators.agentclinic import demographic_subgroups, load_agentclinic
from medagent.simulators.case_files import CaseFileError, bounded_lines, open_case_file
from medagent.simulators.threemdbench import load_3mdbench
from medagent.yaml_io import CASE_FILE_LIMITS
from medagent.yaml_located import LocatedDocument, Problem, StudyConfigError, problems_from_validation

if TYPE_CHECKING:
    from medagent.imaging.deid import Deidentifier

LABEL_SET_SUFFIXES = (".yaml", ".yml", ".json")
_RESOURCE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")


# -- medagent's own format -------------------------------------------------------------------


class _CaseFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label_set: str | None = None
    cases: list[DialogueCase]


def resolve_image_reference(reference: str, base: Path) -> Path:
    """``pydicom:<name>`` / ``nibabel:<name>`` (test files shipped with those packages) or a path relative to
    ``base``. Raises ValueError with a message that does not repeat the reference."""
    scheme, _, name = reference.partition(":")
    if scheme in ("pydicom", "nibabel") and name:
        # a bare file name without glob characters: pydicom looks names up with a glob pattern
        if not _RESOURCE_NAME.fullmatch(name):
            raise ValueError(f"a {scheme} resource is a bare file name")
        if scheme == "pydicom":
            from pydicom.data import get_testdata_file

            found = get_testdata_file(name, download=False)
            resource = Path(found) if isinstance(found, str) else None
        else:
            import importlib.resources

            resource = Path(str(importlib.resources.files("nibabel.tests.data") / name))
        if resource is None or not resource.is_file():
            raise ValueError(f"not a {scheme} test data file")
        return resource
    try:
        image = (base / reference).resolve()
        exists = image.is_file()
    except OSError:  # a name longer than the file system allows, a loop of links
        exists = False
    if not exists:
        raise ValueError("image file not found (relative paths start at the case file's folder)")
    return image


def _label_set_reference(value: Any, base: Path) -> Any:
    """A label set named by a file is recorded as that file's absolute path, so it resolves from anywhere."""
    if isinstance(value, str) and value.lower().endswith(LABEL_SET_SUFFIXES):
        return str((base / value).resolve())
    return value


def load_medagent_cases(path: Path) -> list[DialogueCase]:
    """medagent's case file: YAML or JSON ``{label_set: name or file, cases: [DialogueCase fields]}``."""
    try:
        document = LocatedDocument.read(path, CASE_FILE_LIMITS)
    except StudyConfigError as exc:
        raise CaseFileError.from_study_error(exc) from None
    data, base = document.data, path.parent
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise CaseFileError.at(path, "cases", "the file must be a mapping with a 'cases' list", line=1)
    problems: list[Problem] = []
    default_label_set = _label_set_reference(data.get("label_set"), base)
    prepared: list[Any] = []
    for index, item in enumerate(data["cases"]):
        if not isinstance(item, dict):
            prepared.append(item)
            continue
        item = {**item, "label_set": _label_set_reference(item.get("label_set", default_label_set), base)}
        if isinstance(item.get("images"), list):
            images = []
            for position, reference in enumerate(item["images"]):
                try:
                    images.append(resolve_image_reference(reference, base) if isinstance(reference, str)
                                  else reference)
                except ValueError as exc:
                    problems.append(Problem(("cases", index, "images", position), str(exc)))
            item["images"] = images
        prepared.append(item)
    if problems:
        raise CaseFileError.from_study_error(document.error(problems))
    try:
        parsed = _CaseFile.model_validate({**data, "label_set": default_label_set, "cases": prepared})
    except ValidationError as exc:
        raise CaseFileError.from_study_error(document.error(problems_from_validation(exc))) from None
    first: dict[str, int] = {}
    for index, case in enumerate(parsed.cases):
        if case.case_id in first:
            problems.append(Problem(("cases", index, "case_id"),
                                    f"duplicate case id (first in cases[{first[case.case_id]}])"))
        first.setdefault(case.case_id, index)
    if problems:
        raise CaseFileError.from_study_error(document.error(problems))
    return parsed.cases


# -- format detection ------------------------------------------------------------------------


def _detect(path: Path) -> CaseFormat:
    suffix = path.suffix.lower()
    if path.is_dir() or suffix in (".parquet", ".pq", ".csv"):
        return "3mdbench"
    if suffix in (".yaml", ".yml", ".json"):
        return "medagent"
    if suffix == ".jsonl":
        with open_case_file(path) as stream:
            first = next((raw for _, raw in bounded_lines(stream, path)), "")
        if "OSCE_Examination" in first:
            return "agentclinic"
        if "general_complaint" in first:
            return "3mdbench"
    raise CaseFileError(f"{path.name}: cannot tell the case format; name it ({', '.join(CASE_SOURCES)})",
                        file=path.name)


def load_cases(path: Path, format: CaseFormat = "auto", *, image_cache: Path | None = None,
               max_cases: int | None = None, deidentifier: Deidentifier | None = None) -> list[DialogueCase]:
    """Cases from any supported file; ``format='auto'`` decides by suffix, then by the first record's keys.
    ``max_cases`` stops a 3MDBench export before it writes the images of cases past the cap; ``deidentifier``
    de-identifies its embedded images (default: the installation's key)."""
    if not path.exists():
        raise CaseFileError(f"{path.name}: the case file does not exist", file=path.name)
    kind = _detect(path) if format == "auto" else format
    if kind == "agentclinic":
        return load_agentclinic(path)
    if kind == "3mdbench":
        return load_3mdbench(path, image_cache=image_cache, deidentifier=deidentifier, max_cases=max_cases)
    return load_medagent_cases(path)


__all__ = ["LABEL_SET_SUFFIXES", "CaseFileError", "CaseFormat", "demographic_subgroups", "load_3mdbench",
           "load_agentclinic", "load_cases", "load_medagent_cases", "resolve_image_reference"]
