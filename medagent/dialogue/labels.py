"""Label sets: the diagnoses a doctor may answer with, their synonyms, and normalisation of free text.

A closed label set (3MDBench's 34 diagnoses) constrains the doctor's final answer; an open one
(AgentClinic, where each case names its own diagnosis) is built from the cases themselves.
Normalisation is deterministic: case-folding, punctuation and whitespace collapsed, then an exact
match on a label or synonym, then the longest label or synonym contained in the text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from medagent.yaml_io import YamlFileError, YamlLimits, load_yaml_string, read_yaml_text

NONE_LABEL = "none"
LABEL_SET_LIMITS = YamlLimits(max_bytes=1024 * 1024, max_nodes=100_000, max_depth=16)
_NON_WORD = re.compile(r"[^a-z0-9]+")


def canonical_text(text: str) -> str:
    """Lower case, punctuation to spaces, single spaces: the form labels are compared in."""
    return _NON_WORD.sub(" ", text.lower()).strip()


class Label(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    synonyms: list[str] = Field(default_factory=list)


class LabelSet(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    labels: list[Label] = Field(min_length=1)
    closed: bool = Field(default=True, description="the doctor must answer with one of these labels or 'none'")

    @model_validator(mode="after")
    def _unique(self) -> LabelSet:
        seen: dict[str, str] = {}
        for label in self.labels:
            for form in (label.name, *label.synonyms):
                key = canonical_text(form)
                if not key:
                    raise ValueError(f"label {label.name!r} has an empty name or synonym")
                if key in seen and seen[key] != label.name:
                    raise ValueError(f"{form!r} names both {seen[key]!r} and {label.name!r}")
                seen[key] = label.name
        return self

    @property
    def names(self) -> list[str]:
        return [label.name for label in self.labels]

    def _forms(self) -> list[tuple[str, str]]:
        """(canonical form, label name), longest form first so 'allergic contact dermatitis' beats 'dermatitis'."""
        forms = [(canonical_text(form), label.name) for label in self.labels for form in (label.name, *label.synonyms)]
        return sorted(forms, key=lambda item: len(item[0]), reverse=True)

    def normalise(self, text: str | None) -> str | None:
        """The label ``text`` names, ``'none'`` for an explicit none, or None when it names no label."""
        if text is None:
            return None
        key = canonical_text(text)
        if not key:
            return None
        if key == NONE_LABEL:
            return NONE_LABEL
        forms = self._forms()
        for form, name in forms:
            if key == form:
                return name
        padded = f" {key} "
        for form, name in forms:
            if f" {form} " in padded:
                return name
        return None

    def with_labels(self, extra: Iterable[Label]) -> LabelSet:
        """This set plus labels it does not have yet (by name)."""
        known = {canonical_text(name) for name in self.names}
        added = [label for label in extra if canonical_text(label.name) not in known]
        return self.model_copy(update={"labels": [*self.labels, *added]})

    @classmethod
    def from_file(cls, path: Path) -> LabelSet:
        """A label set file: YAML or JSON ``{name, labels: [{name, synonyms}], closed}``, or the 3MDBench
        ``diagnoses_34.json`` layout (``{"diagnoses": [...]}``)."""
        text = read_yaml_text(path, LABEL_SET_LIMITS)  # size-capped before it is read
        if path.suffix.lower() in (".yaml", ".yml"):
            data = load_yaml_string(text, path.name, LABEL_SET_LIMITS)
        else:
            try:
                data = json.loads(text)
            except RecursionError:  # nesting deeper than the interpreter allows: not a label set
                raise YamlFileError(f"{path.name}: JSON nested too deeply", file=path.name) from None
        if isinstance(data, dict) and "diagnoses" in data and "labels" not in data:
            diagnoses = data["diagnoses"]
            labels = [{"name": name} for name in diagnoses] if isinstance(diagnoses, list) else diagnoses
            return cls.model_validate({"name": data.get("name", path.stem), "labels": labels})
        return cls.model_validate(data)
