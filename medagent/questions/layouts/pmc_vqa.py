"""PMC-VQA (Zhang et al. 2023): multiple-choice questions about figures from PubMed Central articles.

A split is a CSV file (``train.csv``, ``test.csv``, ``test_clean.csv``, ...) with columns ``Figure_path`` (the
figure's file name), ``Question``, ``Answer`` (the gold option's text), ``Choice A`` .. ``Choice D`` (cells like
``A:text`` or `` B:text``, the letter prefix dropped) and ``Answer_label`` (the gold letter; when it is empty, the
choice whose text is the ``Answer``). An ``index`` column, where present, is the question's id, else the file's
stem and row. Figures are looked up under ``figures/`` or ``images/`` when the image folder (by default the CSV
file's folder) has one, else in the image folder itself. Questions about one figure share a ``case_id``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medagent.questions.layouts.base import QuestionFileError, QuestionReader, bad, text_field
from medagent.questions.layouts.manifest import clean_keys, lettered_options
from medagent.questions.loading import peek_columns
from medagent.questions.model import LETTERS, MAX_ANSWER_CHARS, MAX_QUESTION_CHARS, Question
from medagent.simulators.threemdbench import table_rows

REQUIRED_COLUMNS = frozenset({"Figure_path", "Question", "Choice A", "Choice B"})
IMAGE_SUBFOLDERS = ("figures", "images")
_LABELLED = re.compile(r"\s*([A-Za-z])\s*[:.)]\s*(.*)", re.DOTALL)


def detect(source: Path) -> bool:
    return source.suffix.lower() == ".csv" and REQUIRED_COLUMNS <= peek_columns(source)


def _choices(record: dict[str, Any]) -> dict[str, str]:
    options: dict[str, str] = {}
    for letter in LETTERS:
        column = f"Choice {letter}"
        if column not in record:
            break
        cell = text_field(record, column, required=False, max_chars=MAX_ANSWER_CHARS + 8)
        if cell is None:
            continue
        labelled = _LABELLED.fullmatch(cell)
        if labelled and labelled.group(1).upper() != letter:
            raise bad(column, "is labelled with another option's letter")
        text = labelled.group(2).strip() if labelled else cell
        if not text or len(text) > MAX_ANSWER_CHARS:
            raise bad(column, f"a choice needs text of at most {MAX_ANSWER_CHARS} characters")
        options[letter] = text
    return lettered_options(options, "Choice A")


def _gold_letter(record: dict[str, Any], options: dict[str, str]) -> str:
    label = text_field(record, "Answer_label", required=False, max_chars=8)
    if label is None:
        answer = (text_field(record, "Answer", required=False, max_chars=MAX_ANSWER_CHARS) or "").casefold()
        label = next((letter for letter, text in options.items() if answer and text.casefold() == answer), None)
        if label is None:
            raise bad("Answer_label", "required field is missing (and the Answer matches no choice)")
    label = label.strip().rstrip(":.)").upper()
    if label not in options:
        raise bad("Answer_label", "must be the letter of one of the choices")
    return label


def _question(record: dict[str, Any], stem: str, row: int, reader: QuestionReader, prefix: str) -> Question:
    figure = text_field(record, "Figure_path", max_chars=1024)
    image = reader.image_file(f"{prefix}{figure}", "Figure_path")
    options = _choices(record)
    if not options:
        raise bad("Choice A", "required field is missing")
    index = text_field(record, "index", required=False, max_chars=200)
    return Question(question_id=index or f"{stem[:120]}-{row:06d}", images=[image],
                    question=text_field(record, "Question", max_chars=MAX_QUESTION_CHARS) or "",
                    options=options, answer=_gold_letter(record, options), question_type="multiple_choice",
                    language="en", case_id=image.stem[:200])


def load(source: Path, reader: QuestionReader) -> Iterator[Question]:
    """The questions of one PMC-VQA split file."""
    if source.suffix.lower() != ".csv" or not source.is_file():
        raise QuestionFileError(f"{source.name}: a PMC-VQA split is a CSV file", file=source.name)
    folder = next((sub for sub in IMAGE_SUBFOLDERS if (reader.images_root / sub).is_dir()), None)
    prefix = f"{folder}/" if folder else ""
    for record, line, row in table_rows(source):
        question = reader.build(source, _question, clean_keys(record), source.stem, row, reader, prefix,
                                 row=row, line=line)
        if question is not None:
            yield question
