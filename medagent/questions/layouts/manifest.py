"""medagent's own question manifest: a CSV or JSONL file (``.csv``, ``.jsonl``), one question per row.

Columns (JSONL: keys of each line's object):

- ``id`` (required): the question's id, unique within the dataset.
- ``image`` (required): one image path, or several separated by ``;`` (JSONL: also a list of paths), relative
  to the image folder (by default the manifest's folder). A path leading outside that folder is refused.
- ``question`` (required): the question text.
- ``options``: a JSON object ``{"A": "...", "B": "..."}`` (JSONL: an object, or a list lettered A, B, ... in
  order); or instead separate columns ``option_a`` .. ``option_z`` or ``A`` .. ``Z``, an empty cell meaning no
  such option. Options are lettered A, B, C, ... without gaps; no options at all makes an open question.
- ``answer`` (required): the gold option's letter (any case) when there are options, else the gold text.
- ``question_type`` (e.g. closed/open, abnormality), ``modality``, ``body_part``, ``category``, ``language``,
  ``source`` (the sub-dataset): what reports break results down by; all optional.
- ``case_id``: questions about one case share it (a study may keep memory across them).
- ``pair_id``, ``pair_role``: questions scored together (e.g. an adversarial pair) and each one's role.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medagent.questions.layouts.base import QuestionFileError, QuestionReader, bad, text_field
from medagent.questions.loading import peek_columns
from medagent.questions.model import (
    LETTERS,
    MAX_ANSWER_CHARS,
    MAX_IMAGES_PER_QUESTION,
    MAX_OPTIONS,
    MAX_QUESTION_CHARS,
    Question,
)
from medagent.simulators.threemdbench import table_rows

SUFFIXES = (".csv", ".jsonl")
REQUIRED_COLUMNS = frozenset({"id", "image", "question", "answer"})
_OPTIONAL_TEXT = {"question_type": 200, "modality": 100, "body_part": 100, "category": 200, "language": 16,
                  "source": 200, "case_id": 200, "pair_id": 200, "pair_role": 64}


def detect(source: Path) -> bool:
    return source.suffix.lower() in SUFFIXES and REQUIRED_COLUMNS <= peek_columns(source)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (
        isinstance(value, str) and not value.strip())


def _option_text(letter: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise bad("options", f"option {letter} must be text")
    text = str(value).strip()
    if not text or len(text) > MAX_ANSWER_CHARS:
        raise bad("options", f"option {letter} needs text of at most {MAX_ANSWER_CHARS} characters")
    return text


def _options_cell(raw: Any) -> dict[str, str]:
    if isinstance(raw, str):
        if len(raw) > MAX_OPTIONS * (MAX_ANSWER_CHARS + 16):
            raise bad("options", "too long")
        try:
            raw = json.loads(raw)
        except (ValueError, RecursionError):
            raise bad("options", 'not a JSON object of letter to text ({"A": "...", ...})') from None
    if isinstance(raw, list):
        if len(raw) > MAX_OPTIONS:
            raise bad("options", f"more than {MAX_OPTIONS} options")
        raw = dict(zip(LETTERS, raw, strict=False))
    if not isinstance(raw, dict):
        raise bad("options", 'must be a JSON object of letter to text ({"A": "...", ...})')
    if len(raw) > MAX_OPTIONS:
        raise bad("options", f"more than {MAX_OPTIONS} options")
    options: dict[str, str] = {}
    for key, value in raw.items():
        letter = key.strip().upper() if isinstance(key, str) else ""
        if len(letter) != 1 or letter not in LETTERS:
            raise bad("options", "keys must be option letters A to Z")
        options[letter] = _option_text(letter, value)
    return dict(sorted(options.items()))


def _option_columns(record: dict[str, Any]) -> dict[str, str]:
    by_name = {key.strip().lower(): key for key in record if isinstance(key, str)}
    options: dict[str, str] = {}
    for letter in LETTERS:
        key = by_name.get(f"option_{letter.lower()}") or (letter if letter in record else None)
        if key is not None and not _missing(record[key]):
            options[letter] = _option_text(letter, record[key])
    return options


def clean_keys(record: dict[Any, Any]) -> dict[Any, Any]:
    """A record with its column names stripped (spreadsheets add spaces and a byte-order mark to headers)."""
    return {key.lstrip("\ufeff").strip() if isinstance(key, str) else key: value for key, value in record.items()}


def lettered_options(options: dict[str, str], field: str) -> dict[str, str]:
    """``options`` if lettered A, B, C, ... without gaps; a located problem at ``field`` otherwise."""
    if list(options) != list(LETTERS[: len(options)]):
        raise bad(field, "options must be lettered A, B, C, ... without gaps")
    return options


def _images(record: dict[str, Any], reader: QuestionReader) -> list[Path]:
    value = record.get("image")
    references = value if isinstance(value, list) else value.split(";") if isinstance(value, str) else []
    references = [ref for ref in references if not _missing(ref)]
    if not references:
        raise bad("image", "at least one image path is required")
    if len(references) > MAX_IMAGES_PER_QUESTION:
        raise bad("image", f"more than {MAX_IMAGES_PER_QUESTION} images")
    return [reader.image_file(reference) for reference in references]


def _question(record: dict[str, Any], reader: QuestionReader) -> Question:
    question_id = text_field(record, "id", max_chars=200)
    question = text_field(record, "question", max_chars=MAX_QUESTION_CHARS)
    answer = text_field(record, "answer", max_chars=MAX_ANSWER_CHARS)
    raw_options = record.get("options")
    options = lettered_options(_option_columns(record) if _missing(raw_options) else _options_cell(raw_options),
                               "options")
    if options:
        answer = (answer or "").upper()
        if answer not in options:
            raise bad("answer", "must be the letter of one of the options")
    extra = {name: text_field(record, name, required=False, max_chars=limit) for name, limit in _OPTIONAL_TEXT.items()}
    return Question(question_id=question_id or "", images=_images(record, reader), question=question or "",
                    options=options, answer=answer or "", **extra)


def load(source: Path, reader: QuestionReader) -> Iterator[Question]:
    """The questions of a manifest file (see the module's documentation for its columns)."""
    if source.is_dir() or source.suffix.lower() not in SUFFIXES:
        raise QuestionFileError(f"{source.name}: a question manifest is a {' or '.join(SUFFIXES)} file",
                                file=source.name)
    for record, line, row in table_rows(source):
        question = reader.build(source, _question, clean_keys(record), reader, row=row, line=line)
        if question is not None:
            yield question
