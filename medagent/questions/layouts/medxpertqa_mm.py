"""MedXpertQA MM (Zuo et al., "MedXpertQA: Benchmarking Expert-Level Medical Reasoning and Understanding"): five-choice
board-exam questions with one or more images each.

Layout (Hugging Face ``TsinghuaC3I/MedXpertQA``): ``MM/test.jsonl`` (and ``MM/dev.jsonl``), the images unzipped from
``images.zip`` into ``images/`` at the dataset's top; pass the JSONL file, the ``MM`` folder or the top folder. Each
line has ``id`` (``MM-0``), ``question`` (which repeats the options after ``Answer Choices:``), ``options`` (an object
``{"A": ..., "E": ...}``), ``label`` (the gold letter), ``images`` (file names under ``images/``), ``medical_task``
(Diagnosis, Treatment, Basic Science), ``body_system`` (Skeletal, Cardiovascular, ...) and ``question_type``
(Reasoning or Understanding). The evaluation repository's converted files (``eval/data/medxpertqa/input``: options
as ``[{"letter", "content"}]``, ``label`` as a one-letter list, images as ``{"image_path"}``) are read too.

``question`` keeps the text before ``Answer Choices:`` (the options are asked from ``options``); ``category`` is the
medical task and ``body_part`` the body system. Image names resolve under ``images/`` (or directly) in the dataset's
top folder when the image folder is the default one, else in the image folder given.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medagent.questions.layouts.base import QuestionFileError, QuestionReader, bad, text_field
from medagent.questions.loading import peek_columns
from medagent.questions.model import LETTERS, MAX_ANSWER_CHARS, MAX_IMAGES_PER_QUESTION, MAX_OPTIONS, Question
from medagent.simulators.threemdbench import table_rows

QUESTION_FILES = ("test.jsonl", "MM/test.jsonl")
REQUIRED_KEYS = frozenset({"id", "question", "options", "label", "images"})
IMAGE_FOLDER = "images"
_CHOICES_MARKER = "Answer Choices:"


def _question_file(source: Path) -> Path | None:
    if source.is_dir():
        return next((source / name for name in QUESTION_FILES if (source / name).is_file()), None)
    return source if source.suffix.lower() == ".jsonl" else None


def detect(source: Path) -> bool:
    path = _question_file(source)
    return path is not None and REQUIRED_KEYS <= peek_columns(path)


def _image_reader(source: Path, path: Path, reader: QuestionReader) -> QuestionReader:
    """A reader for the images: confined to the dataset's top folder (the one holding ``images/``, the question
    file's folder or the one above it) when the study left the image folder at its default, else to the folder
    the study named."""
    default = source if source.is_dir() else source.parent
    try:
        if reader.images_root.resolve() != default.resolve():
            return reader
        top = next((folder for folder in (path.parent, path.parent.parent) if (folder / IMAGE_FOLDER).is_dir()), None)
    except OSError:
        return reader
    return reader if top is None else QuestionReader(images_root=top, write_image=reader.write_image,
                                                     limits=reader.limits)


def _options(record: dict[str, Any]) -> dict[str, str]:
    raw = record.get("options")
    if isinstance(raw, list) and len(raw) <= MAX_OPTIONS and all(isinstance(item, dict) for item in raw):
        raw = {item.get("letter"): item.get("content") for item in raw}  # [{"letter": "A", "content": "..."}]
    if not isinstance(raw, dict) or not 2 <= len(raw) <= MAX_OPTIONS:
        raise bad("options", f"must be an object of 2 to {MAX_OPTIONS} option letters to text")
    options: dict[str, str] = {}
    for key, value in raw.items():
        letter = key.strip().upper() if isinstance(key, str) else ""
        if letter not in LETTERS or len(letter) != 1 or isinstance(value, bool) or not isinstance(value, str | int):
            raise bad("options", "must map option letters A to Z to text")
        text = str(value).strip()
        if not text or len(text) > MAX_ANSWER_CHARS:
            raise bad("options", f"every option needs text of at most {MAX_ANSWER_CHARS} characters")
        options[letter] = text
    options = dict(sorted(options.items()))
    if list(options) != list(LETTERS[: len(options)]):
        raise bad("options", "options must be lettered A, B, C, ... without gaps")
    return options


def _gold_letter(record: dict[str, Any], options: dict[str, str]) -> str:
    label = record.get("label")
    if isinstance(label, list):
        if len(label) != 1:
            raise bad("label", "exactly one gold letter is supported")
        label = label[0]
    letter = (text_field({"label": label}, "label", max_chars=8) or "").strip("().").strip().upper()
    if letter not in options:
        raise bad("label", "the gold letter is not one of the question's options")
    return letter


def _image_names(record: dict[str, Any]) -> list[str]:
    value = record.get("images")
    if not isinstance(value, list) or not value:
        raise bad("images", "at least one image file name is required")
    if len(value) > MAX_IMAGES_PER_QUESTION:
        raise bad("images", f"more than {MAX_IMAGES_PER_QUESTION} images")
    names: list[str] = []
    for item in value:
        name = item.get("image_path") if isinstance(item, dict) else item  # the converted files' {"image_path"}
        if not isinstance(name, str) or not name.strip():
            raise bad("images", "every image needs a file name")
        names.append(name.strip())
    return names


def _image(name: str, images: QuestionReader) -> Path:
    candidates = [name] if name.startswith(f"{IMAGE_FOLDER}/") else [f"{IMAGE_FOLDER}/{name}", name]
    for reference in candidates:
        try:
            found = (images.images_root / reference).is_file()
        except (OSError, ValueError):  # a NUL byte, a name too long for the file system
            found = False
        if found:
            return images.image_file(reference, "images")
    return images.image_file(candidates[0], "images")  # refused: outside the folder, or not found


def _question(record: dict[str, Any], images: QuestionReader) -> Question:
    question_id = text_field(record, "id", max_chars=200) or ""
    text = text_field(record, "question", max_chars=32_768) or ""
    stem = text.split(_CHOICES_MARKER, 1)[0].strip() or text
    options = _options(record)
    return Question(question_id=question_id, images=[_image(name, images) for name in _image_names(record)],
                    question=stem, options=options, answer=_gold_letter(record, options),
                    question_type=text_field(record, "question_type", required=False, max_chars=200),
                    body_part=text_field(record, "body_system", required=False, max_chars=100),
                    category=text_field(record, "medical_task", required=False, max_chars=200),
                    source="MedXpertQA MM")


def load(source: Path, reader: QuestionReader) -> Iterator[Question]:
    """The questions of a MedXpertQA MM JSONL file (or of ``test.jsonl`` in the folder ``source``)."""
    path = _question_file(source)
    if path is None:
        raise QuestionFileError(f"{source.name}: MedXpertQA MM questions are a .jsonl file (MM/test.jsonl)",
                                file=source.name)
    images = _image_reader(source, path, reader)
    for record, line, row in table_rows(path):
        question = reader.build(path, _question, record, images, row=row, line=line)
        if question is not None:
            yield question
