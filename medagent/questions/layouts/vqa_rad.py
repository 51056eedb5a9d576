"""VQA-RAD (Lau et al. 2018): radiology images with open and closed (mostly yes/no) questions.

Two published forms are read:

- the Hugging Face hub export (``flaviagiammarino/vqa-rad``): one Parquet file per split, columns ``image``
  (``{"bytes": ..., "path": ...}``, the image embedded), ``question`` and ``answer``. There are no ids or
  question types: a question's id is its file's stem and row, its type ``closed`` when the gold answer is yes or
  no, ``open`` otherwise.
- the original release (``VQA_RAD Dataset Public.json``, also split as ``trainset.json``/``testset.json``): a JSON
  list of records with ``qid``, ``image_name``, ``question``, ``answer``, ``answer_type`` (CLOSED/OPEN),
  ``question_type`` (PRES, ABN, MODALITY, ...), ``image_organ`` and ``phrase_type``; ``image_name`` is relative to
  ``VQA_RAD Image Folder`` (or ``images``) in the image folder, else to the image folder itself.

Either way ``question_type`` is closed/open and ``category`` VQA-RAD's own question type; questions about one
image share a ``case_id``; ``source`` is the split the original release puts the question in (train/test).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medagent.questions.layouts.base import QuestionFileError, QuestionReader, bad, read_json_file, text_field
from medagent.questions.loading import peek_columns
from medagent.questions.model import MAX_ANSWER_CHARS, MAX_QUESTION_CHARS, Question
from medagent.simulators.case_files import MAX_CASES
from medagent.simulators.threemdbench import table_rows

PUBLIC_JSON_NAME = "VQA_RAD Dataset Public.json"
PARQUET_COLUMNS = frozenset({"image", "question", "answer"})
JSON_KEYS = frozenset({"qid", "image_name", "question", "answer", "answer_type"})
IMAGE_SUBFOLDERS = ("VQA_RAD Image Folder", "images")


def detect(source: Path) -> bool:
    suffix = source.suffix.lower()
    if suffix in (".parquet", ".pq"):
        columns = peek_columns(source)
        return PARQUET_COLUMNS <= columns and "id" not in columns
    return suffix == ".json" and (source.name == PUBLIC_JSON_NAME or JSON_KEYS <= peek_columns(source))


def _closed_or_open(answer: str) -> str:
    return "closed" if answer.strip().lower() in ("yes", "no") else "open"


def _parquet_question(record: dict[str, Any], stem: str, row: int, reader: QuestionReader) -> Question:
    value = record.get("image")
    data = value.get("bytes") if isinstance(value, dict) else value
    if data is None and isinstance(value, dict) and value.get("path"):
        image = reader.image_file(value.get("path"))
    elif data is None:
        raise bad("image", "required field is missing")
    else:
        image = reader.image_bytes(data)
    answer = text_field(record, "answer", max_chars=MAX_ANSWER_CHARS) or ""
    return Question(question_id=f"{stem[:120]}-{row:05d}", images=[image], language="en",
                    question=text_field(record, "question", max_chars=MAX_QUESTION_CHARS) or "", answer=answer,
                    question_type=_closed_or_open(answer), case_id=image.stem[:200])


def _image_reference(reader: QuestionReader, name: str | None) -> str | None:
    folder = next((sub for sub in IMAGE_SUBFOLDERS if (reader.images_root / sub).is_dir()), None)
    return f"{folder}/{name}" if folder and name else name


def _json_question(record: dict[str, Any], reader: QuestionReader) -> Question:
    name = text_field(record, "image_name", max_chars=1024)
    image = reader.image_file(_image_reference(reader, name), "image_name")
    answer = text_field(record, "answer", max_chars=MAX_ANSWER_CHARS) or ""
    answer_type = (text_field(record, "answer_type", required=False, max_chars=32) or "").lower()
    if answer_type not in ("", "closed", "open"):
        raise bad("answer_type", "must be CLOSED or OPEN")
    phrase = (text_field(record, "phrase_type", required=False, max_chars=64) or "").lower()
    return Question(
        question_id=text_field(record, "qid", max_chars=200) or "", images=[image], answer=answer, language="en",
        question=text_field(record, "question", max_chars=MAX_QUESTION_CHARS) or "",
        question_type=answer_type or _closed_or_open(answer),
        category=text_field(record, "question_type", required=False, max_chars=200),
        body_part=text_field(record, "image_organ", required=False, max_chars=100),
        case_id=Path(name or "").stem[:200] or None,
        source=("test" if phrase.startswith("test") else "train") if phrase else None)


def _json_questions(source: Path, reader: QuestionReader) -> Iterator[Question]:
    records = read_json_file(source)
    if not isinstance(records, list):
        raise QuestionFileError.at(source, "(file)", "must be a JSON list of question records")
    if len(records) > MAX_CASES:
        raise QuestionFileError.at(source, "(file)", f"more than {MAX_CASES} questions in one file")
    for row, record in enumerate(records, start=1):
        question = None
        with reader.row(source, row=row):
            if not isinstance(record, dict):
                raise bad("(row)", "must be a JSON object")
            question = _json_question(record, reader)
        if question is not None:
            yield question


def load(source: Path, reader: QuestionReader) -> Iterator[Question]:
    """The questions of one VQA-RAD file: a hub Parquet split or the original JSON release."""
    suffix = source.suffix.lower()
    if suffix == ".json" and source.is_file():
        yield from _json_questions(source, reader)
        return
    if suffix not in (".parquet", ".pq") or not source.is_file():
        raise QuestionFileError(f"{source.name}: VQA-RAD is a Parquet split file or the original JSON file",
                                file=source.name)
    for record, line, row in table_rows(source):
        question = reader.build(source, _parquet_question, record, source.stem, row, reader, row=row, line=line)
        if question is not None:
            yield question
