"""The 3MDBench layout into :class:`DialogueCase`: a Parquet export (images as bytes, written once,
de-identified and owner-only, to a cache) or a folder with a cases table and image files."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

from pydantic import ValidationError

from medagent.dialogue.cases import TEMPERAMENTS, DialogueCase, PatientFacts, Temperament
from medagent.errors import ConfigurationError, MissingDependency
from medagent.imaging.deid import Deidentifier, load_or_create_secret
from medagent.simulators.case_files import MAX_CASES, CaseFileError, bounded_lines, open_case_file, too_many_cases
from medagent.simulators.case_images import EmbeddedImageError, located, write_case_image
from medagent.yaml_located import format_field

_FOLDER_TABLES = ("cases.jsonl", "cases.csv", "metadata.jsonl")


# -- 3MDBench --------------------------------------------------------------------------------


def _parquet_rows(path: Path) -> Iterator[tuple[dict[str, Any], int | None, int]]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise MissingDependency("reading Parquet case files needs pyarrow: pip install 'medagent[reports]'") from exc
    row = 0
    try:
        parquet = pq.ParquetFile(path)
        with parquet:  # a few rows at a time: each may embed an image
            for batch in parquet.iter_batches(batch_size=16):
                for record in batch.to_pylist():
                    row += 1
                    if row > MAX_CASES:
                        raise CaseFileError.at(path, "(row)", f"more than {MAX_CASES} cases in one file", row=row)
                    yield record, None, row
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise CaseFileError(f"{path.name}: not a readable Parquet file ({type(exc).__name__})",
                            file=path.name) from None


def table_rows(path: Path) -> Iterator[tuple[dict[str, Any], int | None, int]]:
    """(record, line, 1-based row) of a JSONL, CSV or Parquet table, read a line (or a few rows) at a time
    under the case-file bounds (:func:`bounded_lines`)."""
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        yield from _parquet_rows(path)
    elif suffix == ".csv":
        with open_case_file(path) as stream:
            reader = csv.DictReader(raw for _, raw in bounded_lines(stream, path, keep_blank=True))
            try:
                for row, record in enumerate(reader, start=1):
                    yield record, reader.line_num, row
            except csv.Error as exc:  # an over-long field, a NUL byte
                raise CaseFileError.at(path, "(line)", f"not valid CSV ({exc})", line=reader.line_num) from None
    else:
        with open_case_file(path) as stream:
            for row, (line, raw) in enumerate(bounded_lines(stream, path), start=1):
                try:
                    record = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise CaseFileError.at(path, "(line)", f"not valid JSON: {exc.msg}", line=line) from None
                except RecursionError:  # nesting deeper than the interpreter allows: no case is built that deep
                    raise CaseFileError.at(path, "(line)", "nested too deeply", line=line) from None
                except ValueError:  # a number past Python's digit limit for int conversion
                    raise CaseFileError.at(path, "(line)", "not valid JSON: a number too long", line=line) from None
                if not isinstance(record, dict):
                    raise CaseFileError.at(path, "(line)", "must be a JSON object", line=line)
                yield record, line, row


def image_writer(cache: Path, deidentifier: Deidentifier | None) -> Callable[[bytes], Path]:
    """Embedded bytes -> a de-identified, owner-only file in ``cache`` (see :mod:`case_images`). Without a
    de-identifier the key is the installation's: ``Settings.deid_secret``, else ``deid.secret`` in the cache's
    parent folder (medagent's home)."""
    chosen: list[Deidentifier] = [deidentifier] if deidentifier else []

    def write(data: bytes) -> Path:
        if not chosen:
            from medagent.config import Settings

            chosen.append(Deidentifier(load_or_create_secret(cache.parent, Settings().deid_secret)))
        return write_case_image(data, cache, chosen[0])

    return write


def _3mdbench_image(value: Any, base: Path, write: Callable[[bytes], Path] | None, where: dict[str, Any]) -> Path:
    if isinstance(value, dict) and value.get("bytes"):
        if write is None:
            raise ConfigurationError("3MDBench Parquet files embed their images: pass image_cache, a folder to "
                                     "write them to")
        data = value["bytes"]
        if not isinstance(data, bytes | bytearray):  # bytes(n) of a number from a JSON table would allocate n bytes
            raise CaseFileError.at(field="image", problem="embedded image bytes must be binary data", **where)
        try:
            return write(bytes(data))
        except EmbeddedImageError as error:
            raise located(error, **where) from None
    name = value.get("path") if isinstance(value, dict) else value
    if not isinstance(name, str) or not name.strip():
        raise CaseFileError.at(field="image", problem="required field is missing", **where)
    try:
        image = (base / name).resolve()
        found = image.is_file()
    except (OSError, ValueError):  # a name longer than the file system allows, a NUL byte, a loop of links
        found = False
    if not found:
        raise CaseFileError.at(field="image", problem="image file not found (relative to the case file's folder)",
                               **where)
    return image


def _3mdbench_case(record: dict[str, Any], table: Path, stem: str, line: int | None, row: int,
                   write: Callable[[bytes], Path] | None) -> DialogueCase:
    where: dict[str, Any] = {"path": table, "line": line, "row": None if line else row}
    texts: dict[str, str] = {}
    for key in ("general_complaint", "complaints", "diagnosis"):
        value = record.get(key)
        if not isinstance(value, str) or (key != "complaints" and not value.strip()):
            raise CaseFileError.at(field=key, problem="must be a non-empty string", **where)
        texts[key] = value.strip()
    personality = record.get("personality")
    temperament = personality.strip().lower() if isinstance(personality, str) and personality.strip() else None
    if personality is not None and temperament not in (None, *TEMPERAMENTS):
        raise CaseFileError.at(field="personality", problem=f"must be one of {', '.join(TEMPERAMENTS)}", **where)
    image = _3mdbench_image(record.get("image", record.get("file_name")), table.parent, write, where)
    case_id = record.get("id")
    try:
        return DialogueCase(
            case_id=str(case_id) if case_id not in (None, "") else f"{stem}-{row:04d}", source="3mdbench",
            patient=PatientFacts(primary_symptom=texts["general_complaint"], opening=texts["general_complaint"],
                                 history=texts["complaints"]),
            images=[image], diagnosis=texts["diagnosis"], label_set="3mdbench-34",
            temperament=cast(Temperament | None, temperament))
    except ValidationError as exc:
        raise CaseFileError.at(field=format_field(exc.errors()[0]["loc"]), problem="invalid value", **where) from None


def load_3mdbench(path: Path, *, image_cache: Path | None = None, deidentifier: Deidentifier | None = None,
                  max_cases: int | None = None) -> list[DialogueCase]:
    """3MDBench cases from a Parquet export (a file, or a folder of shards), or from a folder holding
    ``cases.jsonl``, ``cases.csv`` or ``metadata.jsonl`` whose ``image`` (or ``file_name``) is relative to it.

    Embedded images are written de-identified (DICOM) or re-encoded without metadata (PNG, JPEG) to
    ``image_cache``, owner-only, once per original. More than ``max_cases`` cases is refused
    (``dataset.max_cases``) before the next case's image is written."""
    write = image_writer(image_cache, deidentifier) if image_cache is not None else None
    if path.is_dir():
        table = next((path / name for name in _FOLDER_TABLES if (path / name).is_file()), None)
        tables = [table] if table else sorted(p for p in path.iterdir() if p.suffix.lower() in (".parquet", ".pq"))
        if not tables:
            raise CaseFileError(f"{path.name}: no {', '.join(_FOLDER_TABLES)} or Parquet file in the case folder",
                                file=path.name)
        stems = {t: path.name if t == table else t.stem for t in tables}
    else:
        tables, stems = [path], {path: path.stem}
    cases: list[DialogueCase] = []
    seen: set[str] = set()
    for table in tables:
        for record, line, row in table_rows(table):
            if max_cases is not None and len(cases) >= max_cases:
                raise too_many_cases(max_cases)
            case = _3mdbench_case(record, table, stems[table], line, row, write)
            if case.case_id in seen:
                raise CaseFileError.at(table, "id", "duplicate case id", line=line, row=None if line else row)
            seen.add(case.case_id)
            cases.append(case)
    return cases


