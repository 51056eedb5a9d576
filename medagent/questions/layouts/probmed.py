"""ProbMed (Yan et al., "Worse than Random? An Embarrassingly Simple Probing Evaluation of Large Multimodal Models in
Medical VQA"): yes/no probing questions, each ground-truth question paired with a hallucinated twin.

Layout (Hugging Face ``rippleripple/ProbMed``; evaluation code ``eric-ai-lab/ProbMed``): one JSON file (``test.json``,
a list of records; pass the file or its folder) with the images in a folder beside it. Each record has:

- ``id``: the image (every question about one image shares it); ``image``: its path relative to the image folder;
- ``image_type``: modality and organ joined by ``_`` (``x-ray_chest``, ``ct_scan_brain``, ``mri_spine``);
- ``question``; ``answer``: ``yes`` or ``no`` (answer files written by the evaluation scripts call it ``gt_ans``);
- ``qa_type``: the question family and its role: ``modality_gt`` / ``modality_hallu``, ``body_part_gt`` /
  ``body_part_hallu``, ``entity_gt_<n>`` / ``entity_hallu_<n>``, ``grounding_gt_<n>`` / ``grounding_hallu_<n>``
  (``_gt`` asks about the image's true attribute, ``_hallu`` about a hallucinated one), ``abnormality`` on its own,
  and ``entity_hallu`` alone for an image without findings;
- optionally ``i`` (the record's index) and ``src_dataset`` (MedICaT or ChestX-ray14).

Each record becomes one open yes/no question: ``question_type`` is the family (modality, body_part, abnormality,
entity, grounding), ``case_id`` the image, ``source`` the source dataset. A ``_gt``/``_hallu`` question gets
``pair_id`` ``<id>:<family>[:<n>]`` and ``pair_role`` ``ground_truth`` or ``adversarial``, so a pair counts as
right only when both of its questions are (an ``entity_hallu`` without a twin is a pair of one, as ProbMed scores it). (ProbMed's own scorer goes one step further for entity and grounding:
an image counts only when all its pairs of that family are right; ``case_id`` with ``question_type`` groups them.)
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medagent.questions.layouts.base import QuestionFileError, QuestionReader, bad, read_json_file, text_field
from medagent.questions.loading import peek_columns
from medagent.questions.model import MAX_QUESTION_CHARS, Question

QUESTION_FILES = ("test.json", "probmed.json")
REQUIRED_KEYS = frozenset({"id", "image", "qa_type", "question"})
ANSWER_KEYS = ("answer", "gt_ans")
PAIR_ROLES = {"gt": "ground_truth", "hallu": "adversarial"}

_QA_TYPE_CHARS = re.compile(r"[A-Za-z0-9_\-]{1,64}")
# family, then the role, then the pair's index: entity_gt_3, body_part_hallu, modality_gt
_PAIRED_QA_TYPE = re.compile(r"(?P<family>[a-z][a-z0-9\-]*?(?:_[a-z0-9\-]+)*?)_(?P<role>gt|hallu)(?:_(?P<index>[a-z0-9]+))?")


def _question_file(source: Path) -> Path | None:
    if source.is_dir():
        return next((source / name for name in QUESTION_FILES if (source / name).is_file()), None)
    return source if source.suffix.lower() == ".json" else None


def detect(source: Path) -> bool:
    path = _question_file(source)
    if path is None:
        return False
    keys = peek_columns(path)
    return REQUIRED_KEYS <= keys and any(key in keys for key in ANSWER_KEYS)


def _qa_type(record: dict[str, Any]) -> tuple[str, str, str | None, str | None]:
    """(qa_type, family, role, pair index); role and index are None for a question that is not paired."""
    qa_type = text_field(record, "qa_type", max_chars=64) or ""
    if not _QA_TYPE_CHARS.fullmatch(qa_type):
        raise bad("qa_type", "must be a name of letters, digits and underscores (e.g. modality_gt, entity_hallu_0)")
    qa_type = qa_type.lower()
    match = _PAIRED_QA_TYPE.fullmatch(qa_type)
    if match is None:
        return qa_type, qa_type, None, None
    return qa_type, match["family"], match["role"], match["index"]


def _yes_no(record: dict[str, Any]) -> str:
    key = next((key for key in ANSWER_KEYS if record.get(key) is not None), ANSWER_KEYS[0])
    answer = (text_field(record, key, max_chars=16) or "").lower().rstrip(".").strip()
    if answer not in ("yes", "no"):
        raise bad(key, "must be yes or no")
    return answer


def _modality_and_organ(record: dict[str, Any]) -> tuple[str | None, str | None]:
    image_type = text_field(record, "image_type", required=False, max_chars=100)
    if image_type is None:
        return None, None
    modality, _, organ = image_type.rpartition("_")
    return (modality, organ) if modality and organ else (image_type, None)


def _question(record: Any, reader: QuestionReader) -> Question:
    if not isinstance(record, dict):
        raise bad("(row)", "must be a JSON object")
    image_id = text_field(record, "id", max_chars=100) or ""
    qa_type, family, role, index = _qa_type(record)
    text = (text_field(record, "question", max_chars=MAX_QUESTION_CHARS) or "").replace("<image>", "").strip()
    if not text:
        raise bad("question", "required field is missing")
    answer = _yes_no(record)
    modality, organ = _modality_and_organ(record)
    pair_id = None if role is None else ":".join(part for part in (image_id, family, index) if part)
    return Question(question_id=f"{image_id}:{qa_type}",
                    images=[reader.image_file(record.get("image"), "image")], question=text, answer=answer,
                    question_type=family, modality=modality, body_part=organ, case_id=image_id, pair_id=pair_id,
                    pair_role=PAIR_ROLES[role] if role else None,
                    source=text_field(record, "src_dataset", required=False, max_chars=200))


def load(source: Path, reader: QuestionReader) -> Iterator[Question]:
    """The questions of a ProbMed question file (or of ``test.json`` in the folder ``source``)."""
    path = _question_file(source)
    if path is None:
        raise QuestionFileError(f"{source.name}: a ProbMed question file is a .json file (test.json)",
                                file=source.name)
    records = read_json_file(path)
    if not isinstance(records, list):
        raise QuestionFileError.at(path, "(file)", "must be a JSON list of question records")
    for row, record in enumerate(records, start=1):
        question = reader.build(path, _question, record, reader, row=row)
        if question is not None:
            yield question
