"""The example plugin (examples/medagent-example-plugin) installed as a user installs it: into a fresh virtual
environment that has only medagent's core dependencies (no torch: the function tool works, the model tool is
listed as unavailable with its install command), and into the full environment (the ResNet-18 expert runs)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from tests.conftest import REPO_ROOT, TEST_SECRET

PLUGIN = REPO_ROOT / "examples" / "medagent-example-plugin"
INSTALL_HINT = "medagent-example-plugin[model]"
CURB65 = {"confusion": True, "urea_mmol_per_l": 8.2, "respiratory_rate_per_min": 32, "systolic_bp_mmhg": 100,
          "diastolic_bp_mmhg": 70, "age_years": 71}
_BUILD_LEFTOVERS = shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "*.pyc")


def _environment(home: Path, path: Path | None = None, **extra: str) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("PYTHONPATH", "VIRTUAL_ENV") and not key.startswith("MEDAGENT_")}
    environment.update({"MEDAGENT_HOME": str(home), "MEDAGENT_DEID_SECRET": TEST_SECRET.decode(),
                        "MEDAGENT_XRV_CACHE_DIR": str(home / "xrv"), "COLUMNS": "200", **extra})
    if path is not None:
        environment["PYTHONPATH"] = str(path)
    return environment


def _run(command: list[str], environment: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, check=False, capture_output=True, text=True, env=environment, timeout=timeout,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"{command[1:3]} exited {result.returncode}: {result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result


def _listing(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in json.loads(result.stdout)}


def _call(answer: dict[str, Any], tool: str) -> dict[str, Any]:
    calls = [call for call in answer["tool_calls"] if call["tool"] == tool]
    assert calls, f"{tool} was not called: {[call['tool'] for call in answer['tool_calls']]}"
    return calls[0]


class Reading(BaseModel):
    celsius: float


class Fever(BaseModel):
    fever: bool


async def has_fever(reading: Reading) -> Fever:
    """Whether a temperature in degrees Celsius is a fever."""
    return Fever(fever=reading.celsius >= 38.0)


def test_experts_list_names_your_own_tools_and_survives_one_that_cannot_say_if_it_is_ready(
        settings: Any) -> None:
    """Rows of `medagent experts list`: a user tool (Agent(tools=...)) is listed as yours; a tool whose readiness
    check raises is listed as unavailable with the error's type, and every other row is still there."""
    from medagent.cli.experts import rows
    from medagent.tools import tool
    from medagent.tools.builtin import Toolbox

    def broken() -> bool:
        raise RuntimeError("/secret/path/of/a/plugin")

    toolbox = Toolbox(settings, tools=[tool(has_fever), tool(name="flaky", ready=broken)(has_fever)], plugins=False)
    try:
        listed = {row["name"]: row for row in rows(toolbox)}
    finally:
        toolbox.close()
    assert listed["has_fever"]["source"] == "user" and listed["has_fever"]["weights"]["weightless"] is True
    assert listed["flaky"]["available"] is False and "RuntimeError" in listed["flaky"]["reason"]
    assert "/secret" not in json.dumps(listed["flaky"])  # a plugin's message may carry paths: only its type shows
    assert listed["image_quality"]["available"] is True


# -- a fresh virtual environment with medagent's core dependencies only (tests/conftest.py: core_venv) --------


@pytest.mark.slow
def test_a_core_install_offers_the_function_tool_and_lists_the_model_tool_unavailable(
        core_venv: Path, tmp_path: Path) -> None:
    """No torch: `experts list` shows the plugin's CURB-65 tool and lists its classifier (and the built-in torch
    tools) as unavailable with the install command; `ask` on the scripted planner calls CURB-65."""
    environment = _environment(tmp_path / "home")
    python, medagent = str(core_venv / "bin" / "python"), str(core_venv / "bin" / "medagent")
    script = "import importlib.util as u; print([m for m in ('torch', 'torchvision', 'torchxrayvision') if u.find_spec(m)])"
    probe = _run([python, "-c", script], environment)
    assert probe.stdout.strip() == "[]", "the core venv must not have the experts extra"

    rows = _listing(_run([medagent, "experts", "list", "--json"], environment))
    curb65, pneumonia = rows["curb65_score"], rows["classify_pneumonia"]
    assert curb65["available"] and curb65["source"] == "plugin" and curb65["package"] == "medagent-example-plugin"
    assert curb65["weights"] == {"present": True, "weightless": True}
    assert pneumonia["available"] is False and pneumonia["package"] == "medagent-example-plugin"
    assert "torch" in pneumonia["reason"] and INSTALL_HINT in pneumonia["hint"]
    assert rows["classify_chest_xray"]["available"] is False and "medagent[experts]" in rows["classify_chest_xray"]["hint"]
    assert rows["image_quality"]["available"] is True  # the built-ins that need no torch still work
    table = _run([medagent, "experts", "list"], environment).stdout
    assert "curb65_score" in table and "unavailable here" in table and INSTALL_HINT in table

    question = "curb65_score " + json.dumps(CURB65)
    answer = json.loads(_run([medagent, "ask", question, "--backend", "scripted", "--json"], environment).stdout)
    call = _call(answer, "curb65_score")
    assert call["ok"] and call["output"]["score"] == 4 and call["output"]["risk_group"] == "high"
    assert call["arguments"] == CURB65


# -- the full environment: the plugin installed into a folder on PYTHONPATH -------------------------------------


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin installed with `pip install --target` (its dist-info carries the entry points): subprocesses
    see it through PYTHONPATH, and the environment itself is never changed, even if a test dies."""
    root = tmp_path_factory.mktemp("plugin")
    plugin = root / "plugin-src"
    shutil.copytree(PLUGIN, plugin, ignore=_BUILD_LEFTOVERS)
    target = root / "site"
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
               "--target", str(target), str(plugin)]
    _run(install, _environment(root / "home"), timeout=600)
    return target


MEDAGENT = [sys.executable, "-m", "medagent.cli"]


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a real state dict of the plugin's network (seeded, so not a trained reading)."""
    import torch
    import torchvision  # type: ignore[import-untyped]

    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet18(num_classes=2).state_dict(), folder / "pneumonia_resnet18.pt")
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), folder / "three.pt")
    return folder


@pytest.mark.torch
def test_the_full_install_lists_both_tools_and_ask_runs_the_classifier(
        plugin_path: Path, tmp_path: Path, nih_images: list[Path]) -> None:
    """Both tools listed, the classifier's missing weights file with where it goes; with the test-only switch
    `ask` runs the real ResNet-18 on random weights and the answer says UNTRAINED."""
    home = tmp_path / "home"
    environment = _environment(home, plugin_path)
    rows = _listing(_run([*MEDAGENT, "experts", "list", "--json"], environment))
    assert rows["curb65_score"]["available"] and rows["classify_pneumonia"]["available"]
    assert rows["classify_pneumonia"]["weights"]["expected_path"] == str(home / "weights" / "pneumonia_resnet18.pt")
    assert rows["classify_pneumonia"]["weights"]["present"] is False

    ask = [*MEDAGENT, "ask", "run classify_pneumonia", "--image", str(nih_images[0]), "--modality", "DX",
           "--backend", "scripted"]
    untrained = _run(ask, {**environment, "MEDAGENT_ALLOW_UNTRAINED_TEST_ONLY": "1"}).stdout
    assert "classify_pneumonia" in untrained and "UNTRAINED" in untrained


@pytest.mark.torch
def test_the_classifier_loads_a_real_weights_file_and_checks_its_checksum(
        plugin_path: Path, weights_dir: Path, tmp_path: Path, nih_images: list[Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing file is a typed weights_unavailable naming the file and the folder to put it in. A state dict in
    MEDAGENT_WEIGHTS_DIR is loaded (provenance carries its sha256, not
    untrained); a pinned sha256 that differs is a typed checksum_mismatch, never papered over by the test-only
    switch; a file of another network is a typed error."""
    from medagent.config import Settings
    from medagent.errors import ChecksumMismatch, ConfigurationError, WeightsUnavailable
    from medagent.tools.builtin import Toolbox

    monkeypatch.syspath_prepend(str(plugin_path))
    from medagent_example_plugin.pneumonia import WEIGHTS_FILE, tools

    digest = hashlib.sha256((weights_dir / WEIGHTS_FILE).read_bytes()).hexdigest()
    settings = Settings(home=tmp_path / "home", weights_dir=weights_dir, allow_untrained_test_only=True,
                        plugins=False)

    async def classify(where: Settings = settings, **kwargs: Any) -> Any:
        toolbox = Toolbox(where, tools=tools(where, **kwargs), plugins=False)
        try:
            image = toolbox.attach(nih_images[0], "DX")
            return await toolbox.call("classify_pneumonia", {"image_id": image.id}, toolbox.context([image.id]))
        finally:
            toolbox.close()

    missing = Settings(home=tmp_path / "home", weights_dir=tmp_path / "empty", plugins=False)
    with pytest.raises(WeightsUnavailable) as raised:
        asyncio.run(classify(missing))
    assert WEIGHTS_FILE in raised.value.message and str(tmp_path / "empty") in raised.value.message
    result = asyncio.run(classify(weights_sha256=digest))
    assert result.provenance.weights_sha256 == digest and result.provenance.untrained is False
    assert 0.0 <= result.probability <= 1.0
    with pytest.raises(ChecksumMismatch):
        asyncio.run(classify(weights_sha256="0" * 64))
    with pytest.raises(ConfigurationError, match="not a state dict"):
        asyncio.run(classify(weights_file="three.pt"))
    with pytest.raises(ConfigurationError, match="file name"):
        tools(settings, weights_file="../three.pt")


@pytest.mark.torch
def test_the_example_plugin_passes_the_expert_and_tool_conformance_suites(
        plugin_path: Path, tmp_path: Path, nih_images: list[Path], pydicom_ct: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What a plugin author runs in their own tests: medagent.testing's expert suite on the ResNet-18 expert
    (untrained mode), the tool suite on both tools (CURB-65 takes no image; the classifier refuses a CT)."""
    from medagent.config import Settings
    from medagent.testing import ExpertConformance, ToolConformance, attach

    monkeypatch.syspath_prepend(str(plugin_path))
    from medagent_example_plugin.curb65 import curb65_score
    from medagent_example_plugin.pneumonia import PneumoniaResNet, tools

    context, ids = attach(tmp_path / "artifacts", {"cxr": (nih_images[0], "DX"), "cxr2": (nih_images[1], "DX"),
                                                   "ct": (pydicom_ct, None)})
    records = {key: context.artifacts.load_image(image_id) for key, image_id in ids.items()}
    settings = Settings(home=tmp_path / "home", allow_untrained_test_only=True, plugins=False)
    [classifier] = tools(settings)
    expert = classifier.ready.__self__  # type: ignore[attr-defined]  # expert_tool hands the tool its expert's ready
    assert isinstance(expert, PneumoniaResNet)

    async def verify() -> None:
        await ExpertConformance(expert, accepted=[records["cxr"], records["cxr2"]], refused=[records["ct"]]).verify()
        await ToolConformance(classifier, context, accepted=[ids["cxr"]], refused=[ids["ct"]],
                              experts=[expert]).verify()
        await ToolConformance(curb65_score, context, calls=[CURB65],
                              bad_calls=[{**CURB65, "age_years": -1}, {"confusion": True}]).verify()

    try:
        asyncio.run(verify())
    finally:
        classifier.close()


@pytest.mark.torch
def test_a_study_naming_the_plugin_tools_runs_its_cases(plugin_path: Path, tmp_path: Path,
                                                        nih_images: list[Path]) -> None:
    """`experts:` names the plugin's tools (registered through its entry points); the agent loop on the scripted
    planner calls the classifier in every case, and the run says its results are untrained."""
    from tests.study_files import agent_loop, write_manifest, write_study

    manifest = [(f"case-{index}", image, "", "F") for index, image in enumerate(nih_images)]
    write_manifest(tmp_path, manifest)
    study = write_study(tmp_path, agent_loop("run classify_pneumonia"), planner="scripted", concurrency=2,
                        extra="experts: [classify_pneumonia, curb65_score]\n")
    environment = _environment(tmp_path / "home", plugin_path, MEDAGENT_ALLOW_UNTRAINED_TEST_ONLY="1")
    result = _run([*MEDAGENT, "run", str(study)], environment).stdout
    assert f"{len(manifest)}/{len(manifest)} cases, 0 failed" in result
    assert "UNTRAINED" in result and "pneumonia_resnet18" in result


@pytest.mark.llama
@pytest.mark.torch
def test_the_embedded_planner_is_offered_the_plugin_tools(plugin_path: Path, weights_dir: Path, tmp_path: Path,
                                                          nih_images: list[Path]) -> None:
    """`medagent ask` on the real embedded planner (SmolLM2, llama.cpp): the tools it was offered for a chest
    radiograph, as its session recorded them, include both plugin tools (the classifier's weights file in
    MEDAGENT_WEIGHTS_DIR), and it called a tool."""
    from medagent.agents.scripted import ScriptedPlanner
    from medagent.api import Agent, AgentConfig
    from medagent.config import Settings

    home = tmp_path / "home"
    environment = _environment(home, plugin_path, MEDAGENT_WEIGHTS_DIR=str(weights_dir))
    command = [*MEDAGENT, "ask", "Does this chest X-ray show pneumonia?", "--image", str(nih_images[0]),
               "--modality", "DX", "--json"]
    answer = json.loads(_run(command, environment, timeout=600).stdout)
    assert answer["model"] == "smollm2-135m-instruct" and answer["tool_calls"]

    async def offered() -> list[str]:
        # the session's checkpoint, read back through the library (no planner runs here)
        config = AgentConfig(checkpoint_url=str(home / "sessions.sqlite"))
        async with Agent(config, settings=Settings(home=home, plugins=False),
                         planner=ScriptedPlanner(lambda _: "unused")) as agent:
            return list((await agent.session(answer["session_id"]).state())["offered"])

    tools = asyncio.run(offered())
    assert {"classify_pneumonia", "curb65_score"} <= set(tools), tools


@pytest.fixture(autouse=True)
def _no_leftovers_in_the_repository() -> Iterator[None]:
    yield
    assert not list(PLUGIN.glob("**/*.egg-info")) and not (PLUGIN / "build").exists()
