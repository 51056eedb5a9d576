"""ChestAgentBench (MedRAX, Fallahpour et al.): six-choice questions about Eurorad chest cases, several questions
and several figures per case.

Layout (Hugging Face ``wanglab/chest-agent-bench``, read by MedRAX's ``quickstart.py``): ``metadata.jsonl`` with the
figures unzipped beside it (``figures/<case_id>/figure_1.jpg``); pass the file or its folder. Each line has
``question`` (the stem with the options embedded as lines ``A) ...`` to ``F) ...``), ``answer`` (the gold letter),
``images`` (figure paths relative to the dataset folder), ``case_id``, ``question_id`` / ``full_question_id``,
``categories`` (the competencies tested, e.g. ``detection,localization,characterization,reasoning``), ``type``,
and ``explanation``, ``sections``, ``image_source_urls`` (not read: the explanation gives the answer away).

The options are parsed out of the question text (``A)``, ``A.``, ``A:`` or ``(A)``; one per line, or inline when the
text has no option lines), at most six, lettered A, B, C, ... in order; the question keeps the stem only. ``category``
is the competencies tested, ``question_type`` the ``type``, ``body_part`` chest (the benchmark's chest section).
Questions about one case share its ``case_id``, so a study can keep the case's memory across them, as MedRAX's own
agent runner did (its issue 38: the agent's lead shrank when each question ran fresh).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medagent.questions.layouts.base import QuestionFileError, QuestionReader, bad, text_field
from medagent.questions.loading import peek_columns
from medagent.questions.model import LETTERS, MAX_IMAGES_PER_QUESTION, MAX_QUESTION_CHARS, Question
from medagent.simulators.threemdbench import table_rows

QUESTION_FILE = "metadata.jsonl"
REQUIRED_KEYS = frozenset({"question", "answer", "images", "case_id"})
ID_KEYS = ("full_question_id", "question_id")
MAX_EMBEDDED_OPTIONS = 6  # A to F

_OPTION_LINE = re.compile(r"\s*(?:\((?P<paren>[A-Z])\)|(?P<bare>[A-Z])[).:])\s*(?P<text>.*)")
_GOLD_LETTER = re.compile(r"\(?([A-Za-z])(?:[).:]|\s|$)")


def _question_file(source: Path) -> Path | None:
    if source.is_dir():
        return source / QUESTION_FILE if (source / QUESTION_FILE).is_file() else None
    return source if source.suffix.lower() == ".jsonl" else None


def detect(source: Path) -> bool:
    path = _question_file(source)
    if path is None:
        return False
    keys = peek_columns(path)
    return REQUIRED_KEYS <= keys and any(key in keys for key in ID_KEYS)


def _option_lines(text: str) -> tuple[str, dict[str, str]]:
    """Options written one per line; a line after the options that starts no option continues the last one."""
    stem: list[str] = []
    options: dict[str, str] = {}
    for line in text.splitlines():
        match = _OPTION_LINE.fullmatch(line)
        expected = LETTERS[len(options)] if len(options) < MAX_EMBEDDED_OPTIONS else None
        if expected is not None and match and (match["paren"] or match["bare"]) == expected:
            options[expected] = match["text"].strip()
        elif not options:
            stem.append(line)
        elif line.strip():
            last = LETTERS[len(options) - 1]
            options[last] = f"{options[last]} {line.strip()}".strip()
    return "\n".join(stem).strip(), options


def _inline_options(text: str) -> tuple[str, dict[str, str]]:
    """Options written on one line: ``... A) first B) second ...``, each marker after the one before."""
    markers: list[tuple[str, int, int]] = []
    position = 0
    for letter in LETTERS[:MAX_EMBEDDED_OPTIONS]:
        match = re.compile(rf"(?<!\S)(?:\({letter}\)|{letter}[).:])\s*").search(text, position)
        if match is None:
            break
        markers.append((letter, match.start(), match.end()))
        position = match.end()
    if not markers:
        return text, {}
    ends = [start for _, start, _ in markers[1:]] + [len(text)]
    options = {letter: text[end:stop].strip() for (letter, _, end), stop in zip(markers, ends, strict=True)}
    return text[: markers[0][1]].strip(), options


def split_options(text: str) -> tuple[str, dict[str, str]]:
    """(stem, options) of a question whose options are embedded in its text; a located problem when there are
    not at least two options with text, or no stem before them."""
    stem, options = _option_lines(text)
    if len(options) < 2:
        stem, options = _inline_options(text)
    if len(options) < 2:
        raise bad("question", "the options (A) ..., B) ...) could not be found in the question text")
    if not stem:
        raise bad("question", "no question text before the options")
    if not all(options.values()):
        raise bad("question", "an option has no text")
    return stem, options


def _gold_letter(record: dict[str, Any], options: dict[str, str]) -> str:
    match = _GOLD_LETTER.match(text_field(record, "answer", max_chars=4096) or "")
    if match is None:
        raise bad("answer", "must be an option letter")
    letter = match[1].upper()
    if letter not in options:
        raise bad("answer", "the gold letter is not one of the question's options")
    return letter


def _images(record: dict[str, Any], reader: QuestionReader) -> list[Path]:
    value = record.get("images")
    references = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    if len(references) > MAX_IMAGES_PER_QUESTION:
        raise bad("images", f"more than {MAX_IMAGES_PER_QUESTION} images")
    flat = [ref for item in references for ref in (item if isinstance(item, list) else [item])]  # nested one deep
    if not flat:
        raise bad("images", "at least one image path is required")
    if len(flat) > MAX_IMAGES_PER_QUESTION:
        raise bad("images", f"more than {MAX_IMAGES_PER_QUESTION} images")
    return [reader.image_file(reference, "images") for reference in flat]


def _categories(record: dict[str, Any]) -> str | None:
    value = record.get("categories")
    if isinstance(value, list):
        if not all(isinstance(item, str) for item in value):
            raise bad("categories", "must be text")
        value = ",".join(item.strip() for item in value)
    return text_field({"categories": value}, "categories", required=False, max_chars=200)


def _question(record: dict[str, Any], reader: QuestionReader) -> Question:
    id_key = next((key for key in ID_KEYS if record.get(key) is not None), ID_KEYS[0])
    question_id = text_field(record, id_key, max_chars=200) or ""
    stem, options = split_options(text_field(record, "question", max_chars=MAX_QUESTION_CHARS) or "")
    return Question(question_id=question_id, images=_images(record, reader), question=stem, options=options,
                    answer=_gold_letter(record, options),
                    question_type=text_field(record, "type", required=False, max_chars=200), body_part="chest",
                    category=_categories(record), case_id=text_field(record, "case_id", max_chars=200),
                    source="Eurorad")


def load(source: Path, reader: QuestionReader) -> Iterator[Question]:
    """The questions of a ChestAgentBench ``metadata.jsonl`` (or of the dataset folder holding it)."""
    path = _question_file(source)
    if path is None:
        raise QuestionFileError(f"{source.name}: ChestAgentBench questions are a metadata.jsonl file",
                                file=source.name)
    for record, line, row in table_rows(path):
        question = reader.build(path, _question, record, reader, row=row, line=line)
        if question is not None:
            yield question
