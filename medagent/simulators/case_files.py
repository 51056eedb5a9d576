"""What every case-file loader shares: the located error type, file opening and bounded line reading."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from medagent.errors import ConfigurationError
from medagent.yaml_located import StudyConfigError


class CaseFileError(ConfigurationError):
    """A case file is unreadable or invalid. ``file``, ``line`` (or ``row``) and ``field`` locate the problem."""

    code = "case_file_error"

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None, row: int | None = None,
                 field: str | None = None) -> None:
        super().__init__(message, file=file, line=line, row=row, field=field)
        self.file, self.line, self.row, self.field = file, line, row, field

    @classmethod
    def at(cls, path: Path, field: str, problem: str, *, line: int | None = None, row: int | None = None
           ) -> CaseFileError:
        where = path.name + (f":{line}" if line else "") + (f": row {row}" if row else "")
        return cls(f"{where}: {field}: {problem}", file=path.name, line=line, row=row, field=field)

    @classmethod
    def from_study_error(cls, error: StudyConfigError) -> CaseFileError:
        return cls(error.message, file=error.file, line=error.line, field=error.field)


def open_case_file(path: Path) -> TextIO:
    try:
        return path.open(encoding="utf-8")
    except OSError as exc:
        raise CaseFileError(f"{path.name}: cannot read the case file ({exc.strerror})", file=path.name) from None



MAX_LINE_CHARS = 1024 * 1024  # one case of a JSONL file is a few kilobytes
MAX_CASES = 100_000


def too_many_cases(max_cases: int) -> StudyConfigError:
    """A dataset (or one case file) holds more cases than the study's ``dataset.max_cases`` allows."""
    return StudyConfigError(f"dataset: more than {max_cases} cases (raise dataset.max_cases to allow more)",
                            field="dataset.max_cases")


def bounded_lines(stream: TextIO, path: Path, *, max_chars: int = MAX_LINE_CHARS,
                  max_lines: int = MAX_CASES, keep_blank: bool = False) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of each non-blank line (every line with ``keep_blank``, e.g. for CSV,
    whose quoted fields may hold blank lines); a line longer than ``max_chars``, more than ``max_lines``
    non-blank lines, or bytes that are not UTF-8 are refused with a located error."""
    number, records = 0, 0
    while True:
        try:
            raw = stream.readline(max_chars + 1)  # never reads more than the cap into memory
        except UnicodeDecodeError:
            raise CaseFileError.at(path, "(line)", "not UTF-8 text", line=number + 1) from None
        if not raw:
            return
        number += 1
        if len(raw) > max_chars:
            raise CaseFileError.at(path, "(line)", f"longer than {max_chars} characters", line=number)
        if not raw.strip():
            if keep_blank:
                yield number, raw
            continue
        records += 1
        if records > max_lines:
            raise CaseFileError.at(path, "(line)", f"more than {max_lines} cases in one file", line=number)
        yield number, raw
