"""What every question-layout loader shares: located errors, bounded reading, images confined to the dataset.

A layout module's ``load(source, reader)`` yields questions. It builds each one with ``reader.build(...)`` (or
inside ``reader.row(...)``): a
malformed row raises a located :class:`QuestionFileError` (file, row, field; never the cell's value), which the
reader either raises or, when the study skips malformed rows, records and moves past.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from medagent.imaging.limits import ImageLimits
from medagent.questions.model import Question
from medagent.simulators.case_files import CaseFileError
from medagent.simulators.case_images import EmbeddedImageError

MAX_JSON_FILE_BYTES = 256 * 1024**2  # one whole-file JSON (SLAKE, ProbMed, OmniMedVQA): ~1M questions
MAX_FIELD_CHARS = 64 * 1024**2  # one TSV/CSV cell (GMAI-MMBench embeds base64 images in one)


class QuestionFileError(CaseFileError):
    """A question file is unreadable or a row is malformed; ``file``, ``row`` (or ``line``) and ``field`` locate
    it, the message never quotes the cell."""

    code = "question_file_error"


class _RowProblem(Exception):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(problem)
        self.field, self.problem = field, problem


def bad(field: str, problem: str) -> _RowProblem:
    """Raise this inside ``reader.row(...)``: the reader locates it (file and row) and raises or skips it."""
    return _RowProblem(field, problem)


@dataclass
class SkippedRow:
    file: str
    row: int | None
    line: int | None
    field: str
    problem: str


@dataclass
class QuestionReader:
    """The state one load shares across a layout's rows.

    ``images_root``: the folder image references are relative to; a reference that resolves outside it is
    refused. ``write_image``: embedded bytes -> their de-identified, owner-only cache file (content-addressed).
    """

    images_root: Path
    write_image: Callable[[bytes], Path]
    skip_malformed: bool = False
    limits: ImageLimits = field(default_factory=ImageLimits)
    skipped: list[SkippedRow] = field(default_factory=list)

    @contextlib.contextmanager
    def row(self, path: Path, *, row: int | None = None, line: int | None = None) -> Iterator[None]:
        """Build one question inside this block: its problems are located at ``path``/``row``/``line``."""
        try:
            yield
        except _RowProblem as problem:
            self._refuse(path, problem.field, problem.problem, row=row, line=line)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or _cross_field(first["msg"])
            self._refuse(path, where, first["msg"].removeprefix("Value error, "), row=row, line=line)
        except QuestionFileError as exc:
            if not self.skip_malformed or exc.row is None and exc.line is None:
                raise  # a whole-file problem is never skipped
            self.skipped.append(SkippedRow(path.name, exc.row, exc.line, exc.field or "(row)", exc.message))

    def build(self, path: Path, make: Callable[..., Question], *arguments: Any, row: int | None = None,
              line: int | None = None) -> Question | None:
        """``make(*arguments)``, its problems located at ``path``/``row``/``line``; None when the row was skipped."""
        with self.row(path, row=row, line=line):
            return make(*arguments)
        return None  # a malformed row, recorded as skipped

    def _refuse(self, path: Path, field_name: str, problem: str, *, row: int | None, line: int | None) -> None:
        error = QuestionFileError.at(path, field_name, problem, row=row, line=line)
        if not self.skip_malformed:
            raise error from None
        self.skipped.append(SkippedRow(path.name, row, line, field_name, problem))

    def image_file(self, reference: Any, field_name: str = "image") -> Path:
        """An image referenced by a relative path: resolved inside ``images_root`` and existing."""
        if not isinstance(reference, str) or not reference.strip():
            raise bad(field_name, "an image path is required")
        try:
            image = (self.images_root / reference.strip()).resolve()
            inside = image.is_relative_to(self.images_root.resolve())
            found = inside and image.is_file()
        except (OSError, ValueError):  # a NUL byte, a name longer than the file system allows, a loop of links
            inside = found = False
        if not inside:
            raise bad(field_name, "the image path leads outside the dataset's image folder")
        if not found:
            raise bad(field_name, "image file not found (relative to the dataset's image folder)")
        return image

    def image_bytes(self, data: Any, field_name: str = "image") -> Path:
        """Embedded image bytes (raw, or base64 text as in VLMEvalKit TSVs), cached de-identified."""
        if isinstance(data, str):
            if len(data) > MAX_FIELD_CHARS:
                raise bad(field_name, f"an embedded image is over {MAX_FIELD_CHARS} characters")
            try:
                data = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                raise bad(field_name, "embedded image text is not base64") from None
        if not isinstance(data, bytes | bytearray) or not data:
            raise bad(field_name, "embedded image bytes must be binary data")
        try:
            return self.write_image(bytes(data))
        except EmbeddedImageError as error:
            raise bad(field_name, str(error)) from None


def _cross_field(message: str) -> str:
    """The field a check across the question's fields is about (the model states it in its message)."""
    return "answer" if "gold answer" in message else "options" if "option" in message else "(row)"


def read_json_file(path: Path) -> Any:
    """A whole-file JSON document under :data:`MAX_JSON_FILE_BYTES`, with a located error for anything else."""
    try:
        size = path.stat().st_size
        if size > MAX_JSON_FILE_BYTES:
            raise QuestionFileError.at(path, "(file)", f"over {MAX_JSON_FILE_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise QuestionFileError.at(path, "(file)", "not UTF-8 text") from None
    except OSError as exc:
        raise QuestionFileError(f"{path.name}: cannot read the question file ({exc.strerror})",
                                file=path.name) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise QuestionFileError.at(path, "(file)", f"not valid JSON: {exc.msg}", line=exc.lineno) from None
    except (RecursionError, ValueError):
        raise QuestionFileError.at(path, "(file)", "not valid JSON (nested too deeply or a number too long)") from None


def text_field(record: dict[str, Any], key: str, *, required: bool = True, max_chars: int = 16_384) -> str | None:
    """A string cell (numbers are turned into text); a located problem when it is missing or too long."""
    value = record.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip()):
        if required:
            raise bad(key, "required field is missing")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise bad(key, "must be text")
    text = str(value).strip()
    if len(text) > max_chars:
        raise bad(key, f"longer than {max_chars} characters")
    return text


__all__ = ["Question", "QuestionFileError", "QuestionReader", "SkippedRow", "bad", "read_json_file", "text_field"]
