"""The built-in demo cases and label set, and label sets by name.

The built-in set is a handful of synthetic imaging vignettes (``data/builtin_cases.yaml``) whose
images are pydicom's and nibabel's example scans, so a dialogue study runs on a fresh machine.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import yaml
from pydantic import ValidationError

from medagent.dialogue.cases import DialogueCase
from medagent.dialogue.labels import Label, LabelSet, canonical_text
from medagent.errors import ConfigurationError
from medagent.simulators.loaders import LABEL_SET_SUFFIXES, CaseFileError, load_medagent_cases

BUILTIN_LABEL_SET = "medagent-builtin"
THREE_MDBENCH_LABEL_SET = "3mdbench-34"
THREE_MDBENCH_FILE = "diagnoses_34.json"
_DATA = Path(__file__).resolve().parent / "data"


class UnknownLabelSet(ConfigurationError):
    """A label set name that is neither built in nor a label-set file that can be found."""

    code = "unknown_label_set"


@cache
def _builtin_cases() -> tuple[DialogueCase, ...]:
    return tuple(load_medagent_cases(_DATA / "builtin_cases.yaml"))


def builtin_cases() -> list[DialogueCase]:
    """The built-in demo cases (ids ``builtin-*``), label set ``medagent-builtin``."""
    return list(_builtin_cases())


@cache
def builtin_label_set() -> LabelSet:
    return LabelSet.from_file(_DATA / "builtin_labels.yaml")


def _label_set_file(path: Path) -> LabelSet:
    try:
        return LabelSet.from_file(path)
    except OSError as exc:
        raise CaseFileError(f"{path.name}: cannot read the label set file ({exc.strerror})", file=path.name) from None
    except (ValueError, yaml.YAMLError) as exc:  # JSONDecodeError and ValidationError are ValueErrors
        field = "(file)"
        if isinstance(exc, ValidationError) and exc.errors():
            field = ".".join(str(part) for part in exc.errors()[0]["loc"]) or "(top level)"
        elif isinstance(exc, json.JSONDecodeError):
            field = f"line {exc.lineno}"
        raise CaseFileError(f"{path.name}: {field}: not a valid label set (expected name, labels: [{{name, "
                            "synonyms}}], or the 3MDBench diagnoses_34.json layout)", file=path.name,
                            field=field) from None


def label_set_named(name: str, search_dirs: Sequence[Path] = ()) -> LabelSet:
    """``medagent-builtin``; ``3mdbench-34`` (``diagnoses_34.json`` found in ``search_dirs`` or their ``3mdbench``
    subfolders); or a YAML/JSON label-set file, absolute or relative to one of ``search_dirs``."""
    if name == BUILTIN_LABEL_SET:
        return builtin_label_set()
    if name == THREE_MDBENCH_LABEL_SET:
        for folder in search_dirs:
            for candidate in (folder / THREE_MDBENCH_FILE, folder / "3mdbench" / THREE_MDBENCH_FILE):
                if candidate.is_file():
                    return _label_set_file(candidate).model_copy(update={"name": THREE_MDBENCH_LABEL_SET})
        raise UnknownLabelSet(
            f"label set '{THREE_MDBENCH_LABEL_SET}' needs {THREE_MDBENCH_FILE} (the 3MDBench diagnoses list, "
            f"{{\"diagnoses\": [...]}}): put it beside the study file or in a '3mdbench' folder there, "
            "or name the file's path as the label set")
    if name.lower().endswith(LABEL_SET_SUFFIXES):
        given = Path(name)
        candidates = [given] if given.is_absolute() else [folder / given for folder in search_dirs] or [given]
        for candidate in candidates:
            if candidate.is_file():
                return _label_set_file(candidate)
        raise UnknownLabelSet(f"label set file '{given.name}' not found (relative paths start at the study "
                              "file's folder)")
    raise UnknownLabelSet(f"unknown label set '{name}': use '{BUILTIN_LABEL_SET}', '{THREE_MDBENCH_LABEL_SET}' "
                          "or the path of a YAML/JSON label-set file")


def open_label_set(cases: Sequence[DialogueCase], name: str = "open") -> LabelSet:
    """An open label set from the cases' own diagnoses (AgentClinic): one label per distinct diagnosis (first
    spelling wins), each with the synonyms its cases give. A synonym that already names another label is
    dropped, so two cases cannot make one string mean two diagnoses."""
    owner: dict[str, str] = {}
    synonyms: dict[str, list[str]] = {}
    for case in cases:
        key = canonical_text(case.diagnosis)
        if key and key not in owner:
            owner[key] = case.diagnosis
            synonyms[case.diagnosis] = []
    for case in cases:
        label = owner.get(canonical_text(case.diagnosis))
        for synonym in case.synonyms:
            key = canonical_text(synonym)
            if label is not None and key and key not in owner:
                owner[key] = label
                synonyms[label].append(synonym)
    if not synonyms:
        raise ConfigurationError("an open label set needs at least one case")
    return LabelSet(name=name, closed=False, labels=[Label(name=n, synonyms=s) for n, s in synonyms.items()])
