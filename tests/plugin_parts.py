"""Small parts a user plugs into studies by ``_target_``: a tool factory, a planner factory that records what
it was offered, and a patient role. Studies name them as ``tests.plugin_parts.*`` (allowed prefix ``tests.``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from medagent.agents.planner import Planner, PlannerConfig
from medagent.agents.scripted import ScriptedPlanner, tool_sequence_planner
from medagent.config import Settings
from medagent.dialogue.cases import DialogueCase
from medagent.dialogue.protocol import Reply, Turn
from medagent.experts import ExpertResult, Provenance
from medagent.tools.plugin import ImageInput, tool
from medagent.tools.spec import Tool, ToolContext

PLANNERS: list[ScriptedPlanner] = []  # every planner recording_planner built, in order


class Brightness(ExpertResult):
    mean: float
    scale: float

    def summary_text(self) -> str:
        return f"mean brightness {self.mean:.3f} (x{self.scale:g})"


def brightness_tools(settings: Settings, *, scale: float = 1.0, names: tuple[str, ...] = ("mean_brightness",)
                     ) -> list[Tool[Any, Any]]:
    """A tool factory: one weightless image tool per name."""
    def make(name: str) -> Tool[Any, Any]:
        @tool(name=name, summary="Mean brightness of the image's display view (0-1), times a scale.")
        async def brightness(arguments: ImageInput, context: ToolContext) -> Brightness:
            pixels = context.load_image(arguments.image_id).display()
            return Brightness(provenance=Provenance(expert=name, model_id="tests/brightness", device="cpu"),
                              mean=float(np.mean(pixels)) * scale, scale=scale)

        return brightness

    return [make(name) for name in names]


def recording_planner(config: PlannerConfig, *, tools: list[str]) -> Planner:
    """A planner factory: calls ``tools`` in order, keeps every request (with the tool schemas offered)."""
    planner = tool_sequence_planner(tools, config=config)
    PLANNERS.append(planner)
    return planner


def doctor_planner(config: PlannerConfig, **kwargs: Any) -> Planner:
    """A planner factory for the doctor of a consultation: the keyword baseline, under another model id."""
    from medagent.simulators.scripted import scripted_role

    planner = scripted_role("planner", config=config, **kwargs)
    planner.model = "my-doctor"
    return planner


class EchoPatient:
    """A patient role: states its main complaint, then repeats it with the doctor's question."""

    def __init__(self, *, planner: Planner, case: DialogueCase, temperament: str | None, biases: list[str],
                 prefix: str = "echo") -> None:
        self.complaint = case.patient.primary_symptom
        self.prefix = prefix

    async def served_model(self) -> str | None:
        return "echo-patient"

    async def respond(self, turns: list[Turn]) -> Reply:
        asked = turns[-1].text if turns else "opening"
        return Reply(action="answer", text=f"{self.prefix}: {self.complaint} ({asked})", model="echo-patient")


class SilentPatient:
    """A patient role that does not take the role's arguments (``case`` and the rest): refused when loading."""

    def __init__(self, *, planner: Planner) -> None:
        self.planner = planner
