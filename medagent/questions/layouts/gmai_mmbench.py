"""GMAI-MMBench (Chen et al. 2024) in VLMEvalKit's TSV form (``GMAI-MMBench_VAL.tsv``, ``GMAI_mm_bench_TEST_part_N``).

A tab-separated file with a header: ``index`` (the question's id), ``question``, the options in single-letter
columns ``A`` .. ``E`` (an empty cell is no option), ``answer`` (the gold letter), ``image`` (the image as base64
text; a list of base64 strings as ``["...", "..."]`` for several images; or, VLMEvalKit's shorthand for a repeated
image, a short cell holding the ``index`` of an earlier row whose image it shares) and what results are broken
down by: ``category``, ``modality``, ``l2-category`` / ``clinical vqa task``, ``department``. A ``hint`` column, when
present and filled, goes before the question as VLMEvalKit's prompt puts it. Files that carry paths instead of
images (``image_path``, relative to the image folder) are read too.

Rows are read with the csv module one record at a time: a cell holds at most :data:`MAX_FIELD_CHARS` characters
and a record at most :data:`MAX_ROW_CHARS`, whatever its line breaks. Embedded images are cached de-identified and
owner-only, once per original; questions sharing an image share a ``case_id``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medagent.questions.layouts.base import MAX_FIELD_CHARS, QuestionFileError, QuestionReader, bad, text_field
from medagent.questions.layouts.manifest import lettered_options
from medagent.questions.loading import peek_columns
from medagent.questions.model import LETTERS, MAX_ANSWER_CHARS, MAX_IMAGES_PER_QUESTION, MAX_QUESTION_CHARS, Question
from medagent.simulators.case_files import MAX_CASES

MAX_ROW_CHARS = MAX_FIELD_CHARS + 1024 * 1024  # one embedded image and the row's text
MAX_COLUMNS = 64
REFERENCE_CHARS = 64  # VLMEvalKit: an image cell this short names the row whose image it repeats
REQUIRED_COLUMNS = frozenset({"index", "question", "answer", "A", "B"})
_GROUPS = {"question_type": ("clinical vqa task", "l2-category"), "category": ("category", "department"),
           "modality": ("modality",)}


def detect(source: Path) -> bool:
    columns = peek_columns(source) if source.suffix.lower() == ".tsv" else frozenset()
    return REQUIRED_COLUMNS <= columns and bool({"image", "image_path"} & columns)


def _records(path: Path) -> Iterator[tuple[list[str], int, int]]:
    """(cells, last line, 1-based record) of a TSV file, each record bounded however many lines it spans."""
    if csv.field_size_limit() < MAX_FIELD_CHARS:  # process-wide; the per-record bound below is what caps memory
        csv.field_size_limit(MAX_FIELD_CHARS)
    try:
        stream = path.open(encoding="utf-8", newline="")
    except OSError as exc:
        raise QuestionFileError(f"{path.name}: cannot read the question file ({exc.strerror})",
                                file=path.name) from None
    consumed, line = 0, 0

    def lines() -> Iterator[str]:
        nonlocal consumed, line
        while True:
            try:
                raw = stream.readline(MAX_ROW_CHARS + 1)  # never more than the cap in memory
            except UnicodeDecodeError:
                raise QuestionFileError.at(path, "(line)", "not UTF-8 text", line=line + 1) from None
            if not raw:
                return
            line, consumed = line + 1, consumed + len(raw)
            if consumed > MAX_ROW_CHARS:
                raise QuestionFileError.at(path, "(row)", f"longer than {MAX_ROW_CHARS} characters", line=line)
            yield raw

    with stream:
        rows = csv.reader(lines(), delimiter="\t")
        number = 0
        try:
            for cells in rows:
                consumed = 0
                if not cells:
                    continue
                number += 1
                if number > MAX_CASES + 1:
                    raise QuestionFileError.at(path, "(row)", f"more than {MAX_CASES} questions in one file",
                                               line=line)
                yield cells, line, number - 1
        except csv.Error as exc:  # a cell over the field limit, a NUL byte
            raise QuestionFileError.at(path, "(line)", f"not valid TSV ({exc})", line=line) from None


def _header(cells: list[str], path: Path) -> list[str]:
    header = [name.strip().lstrip("\ufeff") for name in cells]
    if len(header) > MAX_COLUMNS:
        raise QuestionFileError.at(path, "(header)", f"more than {MAX_COLUMNS} columns")
    missing = sorted(REQUIRED_COLUMNS - set(header))
    if missing or not {"image", "image_path"} & set(header):
        raise QuestionFileError.at(path, "(header)", f"missing columns: {', '.join(missing or ['image'])}")
    return header


def _listed(cell: str, field: str) -> list[str]:
    if not cell.endswith("]"):
        raise bad(field, "a list of images must be written [\"...\", \"...\"]")
    parts = [part.strip().strip("'\"").strip() for part in cell[1:-1].split(",")]
    parts = [part for part in parts if part]
    if not parts or len(parts) > MAX_IMAGES_PER_QUESTION:
        raise bad(field, f"a list of 1 to {MAX_IMAGES_PER_QUESTION} images is required")
    return parts


def _images(record: dict[str, Any], reader: QuestionReader, earlier: dict[str, list[Path]]) -> list[Path]:
    field = "image" if "image" in record else "image_path"
    cell = (record.get(field) or "").strip()
    if not cell:
        raise bad(field, "required field is missing")
    if field == "image_path":
        references = _listed(cell, field) if cell.startswith("[") else [cell]
        return [reader.image_file(reference, field) for reference in references]
    if cell.startswith("["):
        return [reader.image_bytes(part, field) for part in _listed(cell, field)]
    if len(cell) <= REFERENCE_CHARS:
        if cell not in earlier:
            raise bad(field, "a short image cell must be the index of an earlier row with an image")
        return earlier[cell]
    return [reader.image_bytes(cell, field)]


def _first_filled(record: dict[str, Any], columns: tuple[str, ...], max_chars: int) -> str | None:
    for column in columns:
        if (value := text_field(record, column, required=False, max_chars=max_chars)) is not None:
            return value
    return None


def _question(record: dict[str, Any], reader: QuestionReader, earlier: dict[str, list[Path]]) -> Question:
    question_id = text_field(record, "index", max_chars=200) or ""
    question = text_field(record, "question", max_chars=MAX_QUESTION_CHARS) or ""
    hint = text_field(record, "hint", required=False, max_chars=MAX_QUESTION_CHARS)
    options = lettered_options({letter: text for letter in LETTERS if letter in record and (
        text := text_field(record, letter, required=False, max_chars=MAX_ANSWER_CHARS))}, "A")
    if not options:
        raise bad("A", "required field is missing")
    answer = (text_field(record, "answer", max_chars=8) or "").upper()
    if answer not in options:
        raise bad("answer", "must be the letter of one of the options")
    images = _images(record, reader, earlier)
    groups = {name: _first_filled(record, columns, 100 if name == "modality" else 200)
              for name, columns in _GROUPS.items()}
    built = Question(question_id=question_id, images=images, options=options, answer=answer,
                     question=f"Hint: {hint}\n{question}" if hint else question, case_id=images[0].stem[:200],
                     **groups)
    earlier[question_id] = images
    return built


def load(source: Path, reader: QuestionReader) -> Iterator[Question]:
    """The questions of one GMAI-MMBench TSV file."""
    if source.suffix.lower() != ".tsv" or not source.is_file():
        raise QuestionFileError(f"{source.name}: GMAI-MMBench is a VLMEvalKit TSV file", file=source.name)
    header: list[str] | None = None
    earlier: dict[str, list[Path]] = {}
    for cells, line, row in _records(source):
        if header is None:
            header = _header(cells, source)
            continue
        question = None
        with reader.row(source, row=row, line=line):
            if len(cells) != len(header):
                raise bad("(row)", f"has {len(cells)} cells; the header has {len(header)}")
            question = _question(dict(zip(header, cells, strict=True)), reader, earlier)
        if question is not None:
            yield question
