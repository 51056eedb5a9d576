"""A question dataset in any supported layout -> its questions, detected or named.

Each layout lives in ``medagent.questions.layouts.<name>`` (imported only when used) and exposes
``load(source, reader)`` (yields questions, see :mod:`medagent.questions.layouts.base`) and ``detect(source)``,
a cheap check on file names and columns. :func:`load_questions` picks the layout, shares one
:class:`QuestionReader` across the rows (embedded images cached de-identified and owner-only), refuses repeated
question ids and more questions than the study allows, and returns what was loaded with the rows it skipped.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, cast

from medagent.imaging.deid import Deidentifier
from medagent.questions.layouts.base import QuestionFileError, QuestionReader, SkippedRow
from medagent.questions.model import LAYOUTS, Layout, Question
from medagent.simulators.case_files import MAX_LINE_CHARS, CaseFileError
from medagent.simulators.threemdbench import image_writer
from medagent.yaml_located import StudyConfigError

LAYOUT_MODULES: dict[str, str] = {name: f"medagent.questions.layouts.{name}" for name in LAYOUTS}
_HEADER_PEEK_CHARS = 64 * 1024  # a header line or a JSON list's first record; anything longer is not detected


class LayoutModule(Protocol):
    """What every ``medagent.questions.layouts.<name>`` module provides."""

    def load(self, source: Path, reader: QuestionReader) -> Iterator[Question]: ...

    def detect(self, source: Path) -> bool: ...


@dataclass
class QuestionSet:
    """The questions of one dataset, the malformed rows skipped (``skip_malformed``) and the layout read."""

    questions: list[Question]
    skipped: list[SkippedRow] = field(default_factory=list)
    layout: str = ""


# -- cheap looks at a file, for the layouts' detect() -------------------------------------------------------


def _first_line(path: Path, max_chars: int) -> str:
    with path.open(encoding="utf-8-sig", newline="") as stream:
        line = stream.readline(max_chars + 1)
        while line and not line.strip():
            line = stream.readline(max_chars + 1)
    return line if len(line) <= max_chars else ""


def _first_json_record_keys(path: Path) -> frozenset[str]:
    with path.open(encoding="utf-8-sig") as stream:
        head = stream.read(_HEADER_PEEK_CHARS)
    start = head.lstrip()
    if not start.startswith("["):
        return frozenset()
    body = start[1:].lstrip()
    record, _ = json.JSONDecoder().raw_decode(body)
    return frozenset(record) if isinstance(record, dict) else frozenset()


def _parquet_columns(path: Path) -> frozenset[str]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return frozenset()
    try:
        return frozenset(pq.read_schema(path).names)  # the footer only
    except (pa.ArrowException, OSError, ValueError):
        return frozenset()


def peek_columns(path: Path) -> frozenset[str]:
    """The column names of a CSV/TSV header or a Parquet schema, or the keys of the first record of a JSONL file
    or a JSON list; empty when the file is none of these, unreadable, or its first record is too long to peek at.
    Reads only the header, the first line, the first 64 KiB or the Parquet footer."""
    suffix = path.suffix.lower()
    try:
        if not path.is_file():
            return frozenset()
        if suffix in (".csv", ".tsv"):
            line = _first_line(path, _HEADER_PEEK_CHARS)
            header = next(csv.reader([line], delimiter="\t" if suffix == ".tsv" else ","), [])
            return frozenset(name.strip() for name in header if name.strip())
        if suffix == ".jsonl":
            record = json.loads(_first_line(path, MAX_LINE_CHARS) or "null")
            return frozenset(record) if isinstance(record, dict) else frozenset()
        if suffix == ".json":
            return _first_json_record_keys(path)
        if suffix in (".parquet", ".pq"):
            return _parquet_columns(path)
    except (OSError, ValueError, RecursionError, csv.Error):
        return frozenset()
    return frozenset()


# -- the dispatch --------------------------------------------------------------------------------------------


def layout_module(name: str) -> LayoutModule | None:
    """The module of layout ``name``; None when this installation does not have it."""
    module_name = LAYOUT_MODULES[name]
    try:
        return cast(LayoutModule, importlib.import_module(module_name))
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise  # the layout is there but something it imports is not: say so
        return None


def _known_layout(layout: str) -> Layout:
    if layout not in LAYOUTS:
        raise QuestionFileError(f"layout: unknown question layout; one of {', '.join(LAYOUTS)} (or auto)",
                                field="layout")
    return cast(Layout, layout)


def _require_existing(source: Path) -> None:
    if not source.exists():
        raise QuestionFileError(f"{source.name}: no such question file or folder", file=source.name)


def detect_layout(source: Path) -> Layout:
    """The one layout whose ``detect`` recognises ``source``; a typed error listing the layouts when none does
    or several do."""
    _require_existing(source)
    found = [name for name in LAYOUTS if (module := layout_module(name)) is not None and module.detect(source)]
    if len(found) == 1:
        return _known_layout(found[0])
    problem = f"looks like several layouts ({', '.join(found)})" if found else "matches no known question layout"
    raise QuestionFileError(f"{source.name}: {problem}; name the layout, one of {', '.join(LAYOUTS)}",
                            file=source.name, field="layout")


class _LocatingReader(QuestionReader):
    """Remembers the row each question came from, so a repeated id is located where it repeats."""

    where: tuple[Path, int | None, int | None] | None = None

    @contextlib.contextmanager
    def row(self, path: Path, *, row: int | None = None, line: int | None = None) -> Iterator[None]:
        self.where = (path, row, line)
        with super().row(path, row=row, line=line):
            yield

    def refuse_repeated_id(self, source: Path) -> None:
        path, row, line = self.where or (source, None, None)
        problem = "repeats an earlier question's id"
        if row is None and line is None:
            raise QuestionFileError.at(path, "question_id", problem)
        self._refuse(path, "question_id", problem, row=row, line=line)  # raises, or records a skipped row


def too_many_questions(max_questions: int) -> StudyConfigError:
    return StudyConfigError(f"dataset: more than {max_questions} questions (raise dataset.max_cases to allow more)",
                            field="dataset.max_cases")


def load_questions(source: Path, layout: Layout | Literal["auto"] = "auto", *, images: Path | None = None,
                   image_cache: Path, deidentifier: Deidentifier, skip_malformed: bool = False,
                   max_questions: int = 100_000) -> QuestionSet:
    """The questions of ``source`` (a question file, or a folder for layouts that take one).

    ``images``: the folder image references are relative to (default: the source file's folder, or the source
    itself when it is a folder); references leading outside it are refused. Embedded images are written
    de-identified and owner-only to ``image_cache``, once per original. A malformed row raises a located
    :class:`QuestionFileError` (file, row, field; never the cell's value), or with ``skip_malformed`` is counted
    in ``skipped``; a repeated question id counts as a malformed row. More than ``max_questions`` questions is
    refused (``dataset.max_cases``).
    """
    _require_existing(source)
    name = detect_layout(source) if layout == "auto" else _known_layout(layout)
    module = layout_module(name)
    if module is None:
        raise QuestionFileError(f"layout: the {name} layout is not available in this installation", field="layout")
    root = images if images is not None else source if source.is_dir() else source.parent
    if not root.is_dir():
        raise QuestionFileError(f"{source.name}: the image folder is not a folder", file=source.name, field="images")
    reader = _LocatingReader(images_root=root, write_image=image_writer(image_cache, deidentifier),
                             skip_malformed=skip_malformed)
    questions: list[Question] = []
    seen: set[str] = set()
    try:
        for question in module.load(source, reader):
            if question.question_id in seen:
                reader.refuse_repeated_id(source)
                continue
            if len(questions) >= max_questions:
                raise too_many_questions(max_questions)
            seen.add(question.question_id)
            questions.append(question)
    except CaseFileError as exc:  # the shared table readers raise the case-file type: give it the question type
        if isinstance(exc, QuestionFileError):
            raise
        raise QuestionFileError(exc.message, file=exc.file, line=exc.line, row=exc.row, field=exc.field) from None
    return QuestionSet(questions=questions, skipped=reader.skipped, layout=name)


__all__ = ["LAYOUT_MODULES", "LayoutModule", "QuestionFileError", "QuestionSet", "detect_layout", "layout_module",
           "load_questions", "peek_columns", "too_many_questions"]
