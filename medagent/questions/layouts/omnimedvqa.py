"""OmniMedVQA (Hu et al., "OmniMedVQA: A New Large-Scale Comprehensive Evaluation Benchmark for Medical LVLM"):
multiple-choice questions from 42 open-access medical image datasets, one JSON file per source dataset.

Layout (Hugging Face ``foreverbeliever/OmniMedVQA``, ``OmniMedVQA.zip``): ``QA_information/Open-access/<dataset>.json``
(a list of records) beside ``Images/<dataset>/...``; pass one JSON file, the ``Open-access`` folder or the top folder
(every JSON file of the folder is read, in name order). A record has ``question_id``, ``question``, ``option_A`` to
``option_D`` (two to four of them), ``gt_answer`` (the gold answer's text, not its letter), ``image_path`` (relative
to the top folder: ``Images/ACRIMA/...``), ``modality_type`` (one file says ``modality``), ``question_type``
(Disease Diagnosis, Anatomy Identification, ...) and ``dataset``.

The gold text is mapped to its option's letter: exactly, else ignoring case, spacing and a final full stop; a gold
text that matches no option, or more than one, is a located error. ``source`` is the sub-dataset (``dataset``, else
the file's name). Image paths resolve in the top folder when the image folder is the default one, else in the
image folder given.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medagent.questions.layouts.base import QuestionFileError, QuestionReader, bad, read_json_file, text_field
from medagent.questions.loading import peek_columns
from medagent.questions.model import LETTERS, MAX_ANSWER_CHARS, MAX_OPTIONS, MAX_QUESTION_CHARS, Question

QA_FOLDER = Path("QA_information", "Open-access")
REQUIRED_KEYS = frozenset({"question_id", "question", "gt_answer", "image_path", "option_A"})
MAX_FILES = 1000  # the open-access part has 42


def _question_files(source: Path) -> list[Path]:
    if not source.is_dir():
        return [source] if source.suffix.lower() == ".json" else []
    folder = source / QA_FOLDER if (source / QA_FOLDER).is_dir() else source
    files: list[Path] = []
    for path in sorted(folder.glob("*.json")):
        if not path.is_file():
            continue
        if len(files) >= MAX_FILES:
            raise QuestionFileError(f"{source.name}: more than {MAX_FILES} question files", file=source.name)
        files.append(path)
    return files


def detect(source: Path) -> bool:
    try:
        files = _question_files(source)
    except (OSError, QuestionFileError):
        return False
    return bool(files) and REQUIRED_KEYS <= peek_columns(files[0])


def _top_folder(path: Path) -> Path:
    """The folder that ``image_path`` is relative to: above ``QA_information/<access>/``."""
    return path.parent.parent.parent if path.parent.parent.name == QA_FOLDER.parts[0] else path.parent


def _image_reader(source: Path, top: Path, reader: QuestionReader) -> QuestionReader:
    """A reader for the images, confined to the dataset's top folder when the study left the image folder at its
    default (the question file's folder), else to the folder the study named."""
    default = source if source.is_dir() else source.parent
    try:
        if reader.images_root.resolve() != default.resolve():
            return reader
    except OSError:
        return reader
    return QuestionReader(images_root=top, write_image=reader.write_image, limits=reader.limits)


def _options(record: dict[str, Any]) -> dict[str, str]:
    options: dict[str, str] = {}
    for letter in LETTERS[:MAX_OPTIONS]:
        text = text_field(record, f"option_{letter}", required=False, max_chars=MAX_ANSWER_CHARS)
        if text is None:
            continue
        if letter != LETTERS[len(options)]:
            raise bad(f"option_{LETTERS[len(options)]}", "options must be lettered A, B, C, ... without gaps")
        options[letter] = text
    if len(options) < 2:
        raise bad(f"option_{LETTERS[len(options)]}", "at least two options are required")
    return options


def _normal(text: str) -> str:
    return " ".join(text.casefold().split()).rstrip(".").strip()


def _gold_letter(record: dict[str, Any], options: dict[str, str]) -> str:
    gold = text_field(record, "gt_answer", max_chars=MAX_ANSWER_CHARS) or ""
    matches = [letter for letter, text in options.items() if text == gold] or [
        letter for letter, text in options.items() if _normal(text) == _normal(gold)]
    if not matches:
        raise bad("gt_answer", "the gold answer matches none of the options")
    if len(matches) > 1:
        raise bad("gt_answer", "the gold answer matches more than one option")
    return matches[0]


def _question(record: Any, path: Path, images: QuestionReader) -> Question:
    if not isinstance(record, dict):
        raise bad("(row)", "must be a JSON object")
    options = _options(record)
    modality_key = "modality_type" if record.get("modality_type") is not None else "modality"
    return Question(question_id=text_field(record, "question_id", max_chars=200) or "",
                    images=[images.image_file(record.get("image_path"), "image_path")],
                    question=text_field(record, "question", max_chars=MAX_QUESTION_CHARS) or "", options=options,
                    answer=_gold_letter(record, options),
                    question_type=text_field(record, "question_type", required=False, max_chars=200),
                    modality=text_field(record, modality_key, required=False, max_chars=100),
                    source=text_field(record, "dataset", required=False, max_chars=200) or path.stem[:200])


def load(source: Path, reader: QuestionReader) -> Iterator[Question]:
    """The questions of one OmniMedVQA JSON file, or of every JSON file of the folder ``source``."""
    files = _question_files(source)
    if not files:
        raise QuestionFileError(f"{source.name}: no OmniMedVQA question file (QA_information/Open-access/*.json)",
                                file=source.name)
    for path in files:
        records = read_json_file(path)
        if not isinstance(records, list):
            raise QuestionFileError.at(path, "(file)", "must be a JSON list of question records")
        images = _image_reader(source, _top_folder(path), reader)
        for row, record in enumerate(records, start=1):
            question = reader.build(path, _question, record, path, images, row=row)
            if question is not None:
                yield question
