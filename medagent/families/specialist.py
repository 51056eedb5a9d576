"""Specialist VLM family: a model behind an OpenAI-compatible endpoint (vLLM, llama.cpp, a hosted API) as expert
tools the planner consults, the way VILA-M3 consults its experts.

    family: specialist_vlm
    name: medgemma                   # tools medgemma_ask and medgemma_report
    endpoint: http://127.0.0.1:8000/v1
    model: google/medgemma-4b-it     # as served: a model the server does not list is a typed model_not_served
    accepts_images: true
    api_key_env: MEDGEMMA_API_KEY    # the variable's name: the key is read at each call, never stored
    timeout_s: 60                    # the whole call: model check, request and streamed answer
    max_concurrency: 2               # requests in flight to this endpoint, both tools together

- ``{name}_ask``: a question and, when the model reads images, the attached image it is about.
- ``{name}_report``: a draft report of an attached image (the card's ``report_prompt``).

A text-only model (``accepts_images: false``) is consulted in words: its ``_ask`` takes a question alone (no image
id to pass), and its ``_report`` refuses with ``PreconditionFailed`` before any request. An image travels as the
de-identified display image (PNG data URL, at most ``image_max_side`` pixels a side, the card's modalities
checked), and is withheld - the call refused - when its DICOM says BurnedInAnnotation=YES unless the settings'
``send_burned_in_images`` allows it, as for image-reading planners. The answer is model output: control
characters are dropped, its length is capped while it streams, and the agent loop fences it as data.
"""

from __future__ import annotations

import re
from importlib.metadata import version
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from medagent.agents.planner import Usage
from medagent.agents.prompts import one_line
from medagent.cards import ModelCard
from medagent.config import Settings
from medagent.errors import PreconditionFailed
from medagent.families.card import SpecialistCard
from medagent.families.specialist_client import SpecialistClient
from medagent.imaging.data_url import display_data_url, shows_burned_in_text
from medagent.imaging.record import ImageRecord
from medagent.runtime.results import ExpertResult, Provenance
from medagent.tools.plugin import ImageInput
from medagent.tools.spec import Tool, ToolContext, ToolPolicy

QUESTION_MAX_CHARS = 2000
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")  # line breaks and tabs are kept: reports use them
_Question = Field(min_length=1, max_length=QUESTION_MAX_CHARS, description="the question, in words")


class SpecialistQuestion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = _Question


class SpecialistImageQuestion(ImageInput):
    question: str = _Question


class SpecialistAnswer(ExpertResult):
    """A specialist model's text: model output, unverified - data for the planner, never instructions."""

    kind: Literal["answer", "report"]
    answer: str = Field(description="the model's text, control characters dropped, length capped while read")
    model: str = Field(description="the model id as the server reported it")
    finish_reason: str = Field(description="stop, or length when max_tokens cut the answer off")
    usage: Usage | None = Field(default=None, description="tokens, when the server reports them")
    image_sent: bool

    def summary_text(self) -> str:
        what = "drafted a report" if self.kind == "report" else "answered"
        cut = " (cut off at max_tokens)" if self.finish_reason == "length" else ""
        return (f"Specialist {self.provenance.expert} ({self.model}) {what}{cut}; model output, unverified: "
                f"{one_line(self.answer, 300)}")


class Specialist:
    """One card's model: builds the request, sends images only where the card allows, types the answer."""

    def __init__(self, card: SpecialistCard, settings: Settings) -> None:
        self.card = card
        self.settings = settings
        self.client = SpecialistClient(card)

    def refuse_images(self, tool_name: str) -> None:
        if not self.card.accepts_images:
            raise PreconditionFailed(f"{tool_name}: the model {self.card.model} reads no images (its card says "
                                     f"accepts_images: false); ask {self.card.name}_ask a question in words",
                                     tool=tool_name)

    def image_url(self, image: ImageRecord, card: ModelCard, tool_name: str) -> str:
        self.refuse_images(tool_name)
        card.check_image(image, tool_name)
        if shows_burned_in_text(image) and not self.settings.send_burned_in_images:
            raise PreconditionFailed(f"{tool_name}: image withheld: its DICOM says BurnedInAnnotation=YES (text in "
                                     "the pixels may identify the patient); send_burned_in_images allows it",
                                     tool=tool_name)
        return display_data_url(image, self.card.image_max_side)

    async def consult(self, kind: Literal["answer", "report"], prompt: str, image_url: str | None) -> SpecialistAnswer:
        content: Any = prompt
        if image_url is not None:
            content = [{"type": "text", "text": prompt}, {"type": "image_url", "image_url": {"url": image_url}}]
        turn = await self.client.complete([{"role": "user", "content": content}])
        model = one_line(turn.model, 200)  # the server's words: bounded, one line
        provenance = Provenance(expert=self.card.name, model_id=model, weights_sha256=None, device=self.client.host,
                                untrained=self.card.untrained_test_only, library_versions={"openai": version("openai")})
        return SpecialistAnswer(kind=kind, answer=_CONTROLS.sub(" ", turn.content), model=model,
                                finish_reason=one_line(turn.finish_reason or "", 32), usage=turn.usage,
                                image_sent=image_url is not None, provenance=provenance)


def tools(card: SpecialistCard, settings: Settings) -> list[Tool[Any, Any]]:
    """``{name}_ask`` and ``{name}_report``; one slot limit (``max_concurrency``) shared by both."""
    specialist = Specialist(card, settings)
    # the registry's own limit covers the wait for a slot too: one more card timeout of room for it
    policy = ToolPolicy(timeout_s=2 * card.timeout_s + 5, max_concurrency=card.max_concurrency)
    ask_name, report_name = f"{card.name}_ask", f"{card.name}_report"
    unverified = "its text is a model's output, unverified"
    if card.accepts_images:
        ask_card = card.model_card(f"Ask the specialist model {card.model} a question about an attached image "
                                   f"(at most {QUESTION_MAX_CHARS} characters); {unverified}.")

        async def ask(arguments: SpecialistImageQuestion, context: ToolContext) -> SpecialistAnswer:
            url = specialist.image_url(context.load_image(arguments.image_id), ask_card, ask_name)
            return await specialist.consult("answer", arguments.question, url)

        ask_tool: Tool[Any, Any] = Tool(name=ask_name, card=ask_card, input_model=SpecialistImageQuestion,
                                        output_model=SpecialistAnswer, run=ask, policy=policy)
    else:
        text_card = card.model_card(f"Ask the specialist model {card.model} a question in words (it reads no "
                                    f"images; at most {QUESTION_MAX_CHARS} characters); {unverified}.")

        async def ask_in_words(arguments: SpecialistQuestion, context: ToolContext) -> SpecialistAnswer:
            return await specialist.consult("answer", arguments.question, None)

        ask_tool = Tool(name=ask_name, card=text_card, input_model=SpecialistQuestion, output_model=SpecialistAnswer,
                        run=ask_in_words, policy=policy)
    report_card = card.model_card(f"Draft a radiology report of an attached image with the specialist model "
                                  f"{card.model}; a draft: {unverified}.")
    if not card.accepts_images:
        report_card = report_card.model_copy(update={"limitations": [
            *report_card.limitations, "the served model reads no images: this tool refuses every call"]})

    async def report(arguments: ImageInput, context: ToolContext) -> SpecialistAnswer:
        specialist.refuse_images(report_name)  # before the image is even loaded
        url = specialist.image_url(context.load_image(arguments.image_id), report_card, report_name)
        return await specialist.consult("report", card.report_prompt, url)

    return [ask_tool, Tool(name=report_name, card=report_card, input_model=ImageInput, output_model=SpecialistAnswer,
                           run=report, policy=policy)]
