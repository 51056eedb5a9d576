"""What every case-file loader shares: the located error type and file opening."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from medagent.errors import ConfigurationError
from medagent.studies.source import StudyConfigError


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

