"""Reading corpora to index: text from a folder or JSONL, images from a folder or a CSV manifest."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError, field_validator

from medagent.errors import ConfigurationError
from medagent.retrieval.documents import Document

TEXT_SUFFIXES = (".txt", ".md")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".nii", ".nii.gz")
LABEL_SEPARATOR = "|"  # as in the NIH ChestX-ray14 "Finding Labels" column: "Cardiomegaly|Effusion"


def split_labels(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    parts = value if isinstance(value, list) else str(value).split(LABEL_SEPARATOR)
    return [part.strip() for part in parts if part and part.strip()]


class TextLine(BaseModel):
    """One line of a text JSONL corpus."""

    id: str = Field(min_length=1)
    text: str = Field(min_length=1)
    source: str | None = None
    license: str | None = None
    labels: list[str] = Field(default_factory=list)
    record: str | None = None

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, value: object) -> list[str]:
        return split_labels(value)  # type: ignore[arg-type]


def _utf8_text(file: Path, name: str) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigurationError(f"{name} in the text corpus is not UTF-8 text", reason="bad_corpus") from None


def read_text_corpus(path: Path, *, source: str | None = None, license: str = "unspecified") -> list[Document]:
    """Documents from a folder of .txt/.md files (id = relative path without suffix) or a JSONL file.

    ``source``/``license`` fill in what a file or line does not say; for a folder the default
    source is the file's path relative to the folder.
    """
    path = Path(path)
    documents: list[Document] = []
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES):
            text = _utf8_text(file, file.relative_to(path).as_posix()).strip()
            if not text:
                continue
            relative = file.relative_to(path).as_posix()
            documents.append(Document(doc_id=relative.rsplit(".", 1)[0], kind="text", source=source or relative,
                                      license=license, text=text,
                                      source_sha256=hashlib.sha256(text.encode()).hexdigest()))
    elif path.is_file() and path.suffix.lower() in (".jsonl", ".ndjson"):
        for number, line in enumerate(_utf8_text(path, path.name).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = TextLine.model_validate(json.loads(line))
            except RecursionError:
                raise ConfigurationError(f"line {number} of the JSONL corpus is nested too deeply",
                                         line=number) from None
            except (ValueError, ValidationError) as exc:
                raise ConfigurationError(f"line {number} of the JSONL corpus is not a valid document: "
                                         f"{str(exc).splitlines()[0]}", line=number) from None
            documents.append(Document(doc_id=item.id, kind="text", source=item.source or source or path.name,
                                      license=item.license or license, text=item.text, labels=item.labels,
                                      record_key=item.record,
                                      source_sha256=hashlib.sha256(item.text.encode()).hexdigest()))
    else:
        raise ConfigurationError("a text corpus is a folder of .txt/.md files or a .jsonl file", reason="bad_corpus")
    if not documents:
        raise ConfigurationError("the text corpus holds no documents", reason="empty_corpus")
    return documents


class ImageEntry(BaseModel):
    """One image to index. ``path`` is read, never stored in the index."""

    path: Path
    doc_id: str | None = None
    report: str | None = None
    labels: list[str] = Field(default_factory=list)
    record: str | None = None
    source: str | None = None
    license: str | None = None
    modality: str | None = None


def _has_image_suffix(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(suffix) for suffix in IMAGE_SUFFIXES)


def read_image_manifest(path: Path) -> list[ImageEntry]:
    """Entries from a folder of images, or from a CSV with a ``path`` column (relative to the CSV's folder)
    and optional ``report``, ``labels`` ("A|B"), ``record``, ``id``, ``source``, ``license``, ``modality``."""
    path = Path(path)
    if path.is_dir():
        entries = [ImageEntry(path=p) for p in sorted(path.rglob("*")) if p.is_file() and _has_image_suffix(p)]
    elif path.is_file() and path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as stream:
            reader = csv.DictReader(stream)
            if "path" not in (reader.fieldnames or []):
                raise ConfigurationError("the image CSV needs a 'path' column", reason="bad_manifest")
            entries = []
            for row in reader:
                cells = {key: (value.strip() or None) if isinstance(value, str) else None for key, value in row.items()}
                if not cells.get("path"):
                    continue
                file = Path(str(cells["path"]))
                entries.append(ImageEntry(path=file if file.is_absolute() else path.parent / file,
                                          doc_id=cells.get("id"), report=cells.get("report"),
                                          labels=split_labels(cells.get("labels")),
                                          record=cells.get("record"), source=cells.get("source"),
                                          license=cells.get("license"), modality=cells.get("modality")))
    else:
        raise ConfigurationError("an image corpus is a folder of images or a .csv manifest", reason="bad_corpus")
    if not entries:
        raise ConfigurationError("the image corpus holds no images", reason="empty_corpus")
    return entries
