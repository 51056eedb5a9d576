"""MediConfusion (Sepehri et al., "Can you trust your AI radiologist?"): pairs of ROCO radiology images that share
one question and its two options but differ in the correct one.

Layout (GitHub ``AIF4S/MediConfusion`` ``data/``, Hugging Face ``shahab7899/MediConfusion``): ``dataset.json`` (an
object of sample id -> record; a list of records with an ``id`` is read too) or ``dataset.csv`` (the same columns,
with ``id``); pass the file or its folder. A record has ``question``, ``option_A``, ``option_B``, ``im_1_correct``
and ``im_2_correct`` (the right letter for each image), ``category_1`` / ``category_2`` (each image's body-region
categories: a list, or its text ``['Cerebral', 'Vascular']`` in the CSV), and the images either as local ids
``im_1_local`` / ``im_2_local`` (``scripts/download.py`` saves ``images/<id>.jpg``) or as ROCO paths ``im_1`` / ``im_2``
(``train/radiology/images/ROCO_28778.jpg``, relative to the ROCO ``data`` folder: pass it as the image folder).
Captions and the ``AI_*`` rewrites are not read.

The benchmark asks the question of each image on its own, so a sample becomes two questions, each with its own image
and gold letter, sharing ``pair_id`` (the sample id) with ``pair_role`` ``image_1`` / ``image_2``: set accuracy counts
a sample only when both are right; confusion is both answered with the same letter. The two images come from
different patients, so they never share a ``case_id``. A sample whose either half is malformed is refused whole.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from medagent.questions.layouts.base import QuestionFileError, QuestionReader, bad, read_json_file, text_field
from medagent.questions.loading import peek_columns
from medagent.questions.model import MAX_ANSWER_CHARS, MAX_QUESTION_CHARS, Question
from medagent.simulators.threemdbench import table_rows

QUESTION_FILES = ("dataset.json", "dataset.csv")
REQUIRED_KEYS = frozenset({"question", "option_A", "option_B", "im_1_correct", "im_2_correct"})
OPTION_LETTERS = ("A", "B")
_HEAD_BYTES = 64 * 1024
_LOCAL_ID = re.compile(r"\d{1,12}")
_QUOTED = re.compile(r"'([^']*)'|\"([^\"]*)\"")  # the items of a Python list written as text


def _question_file(source: Path) -> Path | None:
    if source.is_dir():
        return next((source / name for name in QUESTION_FILES if (source / name).is_file()), None)
    return source if source.suffix.lower() in (".json", ".csv") else None


def detect(source: Path) -> bool:
    path = _question_file(source)
    if path is None:
        return False
    if path.suffix.lower() == ".csv":
        return REQUIRED_KEYS | {"id"} <= peek_columns(path)
    try:  # an object keyed by sample id: the first record's keys appear within the first kilobytes
        with path.open("rb") as stream:
            head = stream.read(_HEAD_BYTES).decode("utf-8", errors="ignore")
    except OSError:
        return False
    return all(f'"{key}"' in head for key in REQUIRED_KEYS)


def _gold_letter(record: dict[str, Any], key: str) -> str:
    letter = (text_field(record, key, max_chars=8) or "").strip("().").strip().upper()
    if letter not in OPTION_LETTERS:
        raise bad(key, "must be the letter of one of the options (A or B)")
    return letter


def _categories(record: dict[str, Any], key: str) -> str | None:
    value = record.get(key)
    if isinstance(value, str):
        if len(value) > 1000:
            raise bad(key, "longer than 1000 characters")
        quoted = [first or second for first, second in _QUOTED.findall(value)]
        value = quoted if quoted else [value]
    if value is None or value == []:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise bad(key, "must be a list of category names")
    joined = ", ".join(item.strip() for item in value if item.strip())
    if len(joined) > 200:
        raise bad(key, "longer than 200 characters")
    return joined or None


def _exists(reader: QuestionReader, reference: str) -> bool:
    try:
        return (reader.images_root / reference).is_file()
    except (OSError, ValueError):  # a NUL byte, a name too long for the file system
        return False


def _image(record: dict[str, Any], number: int, reader: QuestionReader) -> Path:
    """The image of half ``number``: its downloaded local copy when there is one, else its ROCO path."""
    local_key, roco_key = f"im_{number}_local", f"im_{number}"
    candidates: list[tuple[str, str]] = []
    local = record.get(local_key)
    if local is not None and local != "":
        if isinstance(local, bool) or not isinstance(local, int | str) or not _LOCAL_ID.fullmatch(str(local).strip()):
            raise bad(local_key, "must be the image's local number")
        candidates += [(f"images/{str(local).strip()}.jpg", local_key), (f"{str(local).strip()}.jpg", local_key)]
    roco = record.get(roco_key)
    if isinstance(roco, str) and roco.strip():
        candidates.append((roco.strip(), roco_key))
    if not candidates:
        raise bad(roco_key, "an image path is required")
    reference, key = next((found for found in candidates if _exists(reader, found[0])), candidates[-1])
    return reader.image_file(reference, key)  # confined to the image folder; a located error when it is missing


def _pair(sample_id: str, record: dict[str, Any], reader: QuestionReader) -> list[Question]:
    text = text_field(record, "question", max_chars=MAX_QUESTION_CHARS) or ""
    options = {letter: text_field(record, f"option_{letter}", max_chars=MAX_ANSWER_CHARS) or ""
               for letter in OPTION_LETTERS}
    return [Question(question_id=f"{sample_id}:image_{number}", images=[_image(record, number, reader)],
                     question=text, options=options, answer=_gold_letter(record, f"im_{number}_correct"),
                     category=_categories(record, f"category_{number}"), pair_id=sample_id,
                     pair_role=f"image_{number}", source="MediConfusion")
            for number in (1, 2)]


def _json_samples(path: Path) -> Iterable[tuple[Any, Any, int]]:
    """(sample id or None, record, row) of ``dataset.json``."""
    data = read_json_file(path)
    if isinstance(data, dict):
        return ((key, record, row) for row, (key, record) in enumerate(data.items(), start=1))
    if isinstance(data, list):
        return ((None, record, row) for row, record in enumerate(data, start=1))
    raise QuestionFileError.at(path, "(file)", "must be a JSON object of sample id -> record")


def _sample_id(key: Any, record: Any) -> str:
    if not isinstance(record, dict):
        raise bad("(row)", "must be a JSON object")
    return text_field(record if key is None else {"id": key}, "id", max_chars=150) or ""


def load(source: Path, reader: QuestionReader) -> Iterator[Question]:
    """Two questions per sample of a MediConfusion ``dataset.json`` / ``dataset.csv`` (or the folder holding it)."""
    path = _question_file(source)
    if path is None:
        raise QuestionFileError(f"{source.name}: a MediConfusion question file is dataset.json or dataset.csv",
                                file=source.name)
    csv_file = path.suffix.lower() == ".csv"
    samples = ((None, record, row, line) for record, line, row in table_rows(path)) if csv_file else (
        (key, record, row, None) for key, record, row in _json_samples(path))
    for key, record, row, line in samples:
        pair: list[Question] = []
        with reader.row(path, row=row, line=line):
            pair = _pair(_sample_id(key, record), record, reader)
        yield from pair
