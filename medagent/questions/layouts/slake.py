"""SLAKE (Liu et al. 2021): bilingual (English/Chinese) radiology questions with semantic labels.

A split is one JSON file (``train.json``, ``validate.json``, ``test.json``): a list of records with ``qid``,
``img_id``, ``img_name`` (relative to the release's ``imgs/`` folder, like ``xmlab102/source.jpg``), ``question``,
``answer``, ``q_lang`` (en/zh), ``answer_type`` (OPEN/CLOSED), ``content_type`` (Organ, Abnormality, ...),
``modality`` and ``location``. ``img_name`` is looked up under ``imgs/`` when the image folder (by default the
JSON file's folder) has one, else in the image folder itself.

Mapped onto a question: ``question_type`` closed/open, ``category`` the content type, ``body_part`` the
location, ``language`` q_lang; questions about one image share ``case_id`` (its img_id).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medagent.questions.layouts.base import QuestionFileError, QuestionReader, bad, read_json_file, text_field
from medagent.questions.loading import peek_columns
from medagent.questions.model import MAX_ANSWER_CHARS, MAX_QUESTION_CHARS, Question
from medagent.simulators.case_files import MAX_CASES

RECORD_KEYS = frozenset({"img_name", "question", "answer", "q_lang"})
IMAGE_SUBFOLDER = "imgs"


def detect(source: Path) -> bool:
    return source.suffix.lower() == ".json" and RECORD_KEYS <= peek_columns(source)


def _question(record: dict[str, Any], reader: QuestionReader, prefix: str) -> Question:
    name = text_field(record, "img_name", max_chars=1024)
    image = reader.image_file(f"{prefix}{name}", "img_name")
    answer_type = (text_field(record, "answer_type", required=False, max_chars=32) or "").lower()
    if answer_type not in ("", "closed", "open"):
        raise bad("answer_type", "must be OPEN or CLOSED")
    image_id = text_field(record, "img_id", required=False, max_chars=200)
    return Question(
        question_id=text_field(record, "qid", max_chars=200) or "", images=[image],
        question=text_field(record, "question", max_chars=MAX_QUESTION_CHARS) or "",
        answer=text_field(record, "answer", max_chars=MAX_ANSWER_CHARS) or "",
        question_type=answer_type or None,
        category=text_field(record, "content_type", required=False, max_chars=200),
        modality=text_field(record, "modality", required=False, max_chars=100),
        body_part=text_field(record, "location", required=False, max_chars=100),
        language=text_field(record, "q_lang", required=False, max_chars=16),
        case_id=image_id or Path(name or "").parent.name[:200] or None)


def load(source: Path, reader: QuestionReader) -> Iterator[Question]:
    """The questions of one SLAKE split file."""
    if source.suffix.lower() != ".json" or not source.is_file():
        raise QuestionFileError(f"{source.name}: a SLAKE split is a JSON file (train.json, validate.json, "
                                "test.json)", file=source.name)
    records = read_json_file(source)
    if not isinstance(records, list):
        raise QuestionFileError.at(source, "(file)", "must be a JSON list of question records")
    if len(records) > MAX_CASES:
        raise QuestionFileError.at(source, "(file)", f"more than {MAX_CASES} questions in one file")
    prefix = f"{IMAGE_SUBFOLDER}/" if (reader.images_root / IMAGE_SUBFOLDER).is_dir() else ""
    for row, record in enumerate(records, start=1):
        question = None
        with reader.row(source, row=row):
            if not isinstance(record, dict):
                raise bad("(row)", "must be a JSON object")
            question = _question(record, reader, prefix)
        if question is not None:
            yield question
