"""One benchmark question, whatever layout it came from.

Options are keyed by letter (``A``, ``B``, ...); an open question has none. ``answer`` is the gold answer as text
(for a multiple-choice question: the gold option's letter). Pairing keys group questions that are scored together:
ProbMed's adversarial pairs (one ground-truth and one hallucinated question about the same image) and
MediConfusion's image pairs (the same question about two images, each correct only if both are).
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_OPTIONS = 26
MAX_QUESTION_CHARS = 16_384
MAX_ANSWER_CHARS = 4096
MAX_IMAGES_PER_QUESTION = 16
LETTERS = string.ascii_uppercase
YES_NO_ANSWERS = ("yes", "no", "是", "否")  # SLAKE asks in Chinese too
Layout = Literal["manifest", "vqa_rad", "slake", "pmc_vqa", "gmai_mmbench", "probmed", "mediconfusion",
                 "chestagentbench", "medxpertqa_mm", "omnimedvqa"]
LAYOUTS: tuple[str, ...] = get_args(Layout)


class Question(BaseModel):
    """A question about one or more images, with its gold answer and what reports break results down by."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    question_id: str = Field(min_length=1, max_length=200, description="stable within its dataset")
    images: list[Path] = Field(default_factory=list, max_length=MAX_IMAGES_PER_QUESTION,
                               description="absolute paths (embedded image bytes: their de-identified cache files)")
    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    options: dict[str, str] = Field(default_factory=dict, description="letter -> option text; empty: open question")
    answer: str = Field(min_length=1, max_length=MAX_ANSWER_CHARS,
                        description="multiple choice: the gold letter; open: the gold text")
    question_type: str | None = Field(default=None, max_length=200, description="e.g. closed/open, abnormality")
    modality: str | None = Field(default=None, max_length=100)
    body_part: str | None = Field(default=None, max_length=100)
    category: str | None = Field(default=None, max_length=200)
    language: str | None = Field(default=None, max_length=16)
    case_id: str | None = Field(default=None, max_length=200, description="questions about one case share it "
                                "(memory may be kept across them)")
    pair_id: str | None = Field(default=None, max_length=200, description="ProbMed pair / MediConfusion set key")
    pair_role: str | None = Field(default=None, max_length=64, description="e.g. ground_truth or adversarial")
    source: str | None = Field(default=None, max_length=200, description="the sub-dataset (OmniMedVQA, GMAI)")

    @model_validator(mode="after")
    def _consistent(self) -> Question:
        letters = list(self.options)
        if len(letters) > MAX_OPTIONS:
            raise ValueError(f"at most {MAX_OPTIONS} options")
        if letters and letters != list(LETTERS[: len(letters)]):
            raise ValueError("options must be keyed A, B, C, ... in order")
        if any(not text.strip() or len(text) > MAX_ANSWER_CHARS for text in self.options.values()):
            raise ValueError(f"every option needs text of at most {MAX_ANSWER_CHARS} characters")
        if letters and self.answer not in self.options:
            raise ValueError("the gold answer of a multiple-choice question must be one of its option letters")
        return self

    @property
    def kind(self) -> Literal["choice", "yes_no", "open"]:
        """choice: lettered options; yes_no: an open question whose gold answer is yes or no; open: free text."""
        if self.options:
            return "choice"
        return "yes_no" if self.answer.strip().lower() in YES_NO_ANSWERS else "open"

    @property
    def chance(self) -> float | None:
        """The accuracy of guessing uniformly (None for free-text questions)."""
        if self.options:
            return 1.0 / len(self.options)
        return 0.5 if self.kind == "yes_no" else None

    def gold_text(self) -> str:
        return self.options.get(self.answer, self.answer) if self.options else self.answer
