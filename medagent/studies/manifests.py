"""CSV and Parquet manifests read row by row: one :class:`Case` per row, at most ``max_cases`` rows.

Errors name the manifest file, the row and the column, never a cell's value (it may be patient data)
nor an image path. Only the case ids seen so far are kept, so the first case is ready after one row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from medagent.simulators.case_files import MAX_LINE_CHARS
from medagent.studies.datasets import Case, ColumnMapping, _path_hash
from medagent.yaml_located import StudyConfigError

_HEADER_NAMES_SHOWN = 20
_POSITIVE = {"1", "1.0", "true", "yes", "positive"}
_NEGATIVE = {"0", "0.0", "false", "no", "negative"}


class _Unreadable(Exception):
    """The manifest's bytes could not be parsed (csv.Error, pyarrow's errors): reported without the cell."""


_Rows = tuple[list[str], Iterator[dict[Any, Any]], Callable[[], None]]  # header, lazy rows, close


def _capped_lines(handle: TextIO) -> Iterator[str]:
    """The file's lines, each read under the cap: a line without a break is never read whole."""
    while line := handle.readline(MAX_LINE_CHARS + 1):
        if len(line) > MAX_LINE_CHARS:
            raise _Unreadable(f"a line longer than {MAX_LINE_CHARS} characters")
        yield line


def _csv_rows(path: Path) -> _Rows:
    import csv

    handle = path.open(newline="", encoding="utf-8-sig")
    try:
        reader = csv.DictReader(_capped_lines(handle))
        header = list(reader.fieldnames or [])
    except _Unreadable:
        handle.close()
        raise
    except (csv.Error, UnicodeDecodeError, ValueError) as exc:
        handle.close()
        raise _Unreadable(type(exc).__name__) from None

    def rows() -> Iterator[dict[Any, Any]]:
        try:
            yield from reader
        except (csv.Error, UnicodeDecodeError, ValueError) as exc:  # an over-long field, a NUL byte
            raise _Unreadable(type(exc).__name__) from None

    return header, rows(), handle.close


def _parquet_rows(path: Path) -> _Rows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        header = list(parquet.schema_arrow.names)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise _Unreadable(type(exc).__name__) from None

    def rows() -> Iterator[dict[Any, Any]]:
        try:
            for batch in parquet.iter_batches(batch_size=1024):  # one batch of rows in memory at a time
                yield from batch.to_pylist()
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise _Unreadable(type(exc).__name__) from None

    return header, rows(), parquet.close


def _read_manifest(path: Path) -> tuple[list[str], Iterator[dict[Any, Any]], Callable[[], None], int]:
    """Columns, rows (read lazily), how to close the file, and the file line of the first row (2 for CSV with a
    header; 1 = row index base for Parquet)."""
    if path.name.lower().endswith(".csv"):
        return (*_csv_rows(path), 2)
    return (*_parquet_rows(path), 1)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _binary(value: Any) -> int | None:
    text = _text(value)
    if text is None:
        return None
    lowered = text.lower()
    return 1 if lowered in _POSITIVE else 0 if lowered in _NEGATIVE else None


def _header_text(header: list[str]) -> str:
    shown = ", ".join(str(column)[:40] for column in header[:_HEADER_NAMES_SHOWN])
    return shown + (f", ... ({len(header)} columns)" if len(header) > _HEADER_NAMES_SHOWN else "")


def manifest_cases(manifest: Path, columns: ColumnMapping, max_cases: int) -> Iterator[Case]:
    """The manifest's cases, one row at a time: only the case ids seen so far are kept."""
    name = manifest.name
    try:
        header, rows, close, first_line = _read_manifest(manifest)
    except (OSError, _Unreadable) as exc:
        reason = str(exc) if isinstance(exc, _Unreadable) else type(exc).__name__
        raise StudyConfigError(f"{name}: cannot read the manifest ({reason})", file=name) from None
    wanted = [columns.path, columns.case_id, *columns.labels, columns.label, columns.patient_id,
              columns.study_date, *columns.subgroups]
    missing = [column for column in wanted if column is not None and column not in header]
    base = manifest.parent
    seen: dict[str, int] = {}
    index = -1
    try:  # the finally closes the file also when the caller stops early (the generator is closed)
        if missing:
            raise StudyConfigError(f"{name}: column '{missing[0]}' is missing (the manifest has: "
                                   f"{_header_text(header)})", file=name, line=1, field=missing[0])
        for index, row in enumerate(rows):
            if index >= max_cases:
                line = index + first_line
                raise StudyConfigError(f"{name}: row {index + 1}: more than {max_cases} rows (raise dataset.max_cases "
                                       "to allow more)", file=name, line=line, field="dataset.max_cases")
            yield _manifest_case(row, index, index + first_line, first_line, name, base, columns, seen)
    except _Unreadable as exc:
        raise StudyConfigError(f"{name}: cannot read the manifest after row {index + 1} ({exc})", file=name,
                               line=index + 1 + first_line if first_line == 2 else None) from None
    finally:
        close()


def _manifest_case(row: dict[Any, Any], index: int, line: int, first_line: int, name: str, base: Path,
                   columns: ColumnMapping, seen: dict[str, int]) -> Case:
    row_label = f"row {index + 1}" + (f" (line {line})" if first_line == 2 else "")

    def fail(column: str, problem: str) -> StudyConfigError:
        return StudyConfigError(f"{name}: {row_label}: column '{column}': {problem}", file=name, line=line,
                                field=column)

    raw_paths = _text(row[columns.path])
    if raw_paths is None:
        raise fail(columns.path, "empty")
    images = []
    for part in raw_paths.split(columns.path_separator):
        try:
            image = (base / part.strip()).resolve()
            found = image.exists()
        except (OSError, ValueError):  # a NUL byte, a name longer than the file system allows
            found = False
        if not found:
            raise fail(columns.path, "file not found (paths are relative to the manifest)")
        images.append(image)
    labels = {}
    for column in columns.labels:
        if _text(row[column]) is None:
            continue  # an empty cell: the label is unknown for this case
        value = _binary(row[column])
        if value is None:
            raise fail(column, "expected 0 or 1, or an empty cell when unknown")
        labels[column] = value
    case_id = _text(row[columns.case_id]) if columns.case_id else _path_hash(raw_paths)
    if case_id is None:
        raise fail(str(columns.case_id), "empty case id")
    if case_id in seen:
        raise fail(str(columns.case_id or columns.path), f"duplicate case (same as row {seen[case_id] + 1})")
    seen[case_id] = index
    return Case(
        case_id=case_id, images=images, labels=labels,
        label=_text(row[columns.label]) if columns.label else None,
        patient_id=_text(row[columns.patient_id]) if columns.patient_id else None,
        study_date=_text(row[columns.study_date]) if columns.study_date else None,
        subgroups={column: _text(row[column]) or "unknown" for column in columns.subgroups},
    )
