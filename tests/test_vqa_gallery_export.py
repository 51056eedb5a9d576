"""The per-case gallery and the trajectory export of a real VQA run: three arms (always A; the lung-field
segmenter's overlays then answers that differ on two questions and fail on one; free text that never parses)
over four questions, one of them hostile markup and one option naming the dataset's own path; and a dialogue
run's transcripts and diagnoses."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import shutil
import stat
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from medagent.agents.planner import PlannerConfig
from medagent.agents.scripted import PlannerRequest, ScriptedPlanner, ScriptResult
from medagent.config import Settings
from medagent.errors import PlannerServerError
from medagent.reports.export import export_trajectories
from medagent.reports.gallery import write_gallery
from medagent.store import StudyStore
from medagent.studies import load_study
from medagent.studies.runner import run_study
from medagent.tools.artifacts import ArtifactStore
from tests.conftest import TEST_SECRET
from tests.test_study_cli import _medagent, _ok
from tests.vqa_parts import answering_planner

HOSTILE = "<script>alert(1)</script>"
RUN = "gallery"


def failing_planner(config: PlannerConfig, *, fail_on: str, answers: dict[str, str]) -> ScriptedPlanner:
    """``answering_planner`` whose server fails (HTTP 500) on the question containing ``fail_on``."""
    planner = answering_planner(config, answers=answers)
    answer = planner.function

    def script(request: PlannerRequest) -> ScriptResult:
        if fail_on in json.dumps(request.messages):
            raise PlannerServerError("the planner server failed (500)")
        return answer(request)  # type: ignore[return-value]

    planner.function = script
    return planner


@dataclass
class Run:
    home: Path
    data: Path
    store: StudyStore
    artifacts: ArtifactStore


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, nih_images: list[Path]) -> Any:
    data = tmp_path_factory.mktemp("vqa-data")
    for index, image in enumerate(nih_images[:2]):
        shutil.copy(image, data / f"cxr{index}.png")
    rows = [{"id": f"q{n}", "image": f"cxr{n % 2}.png", "modality": "DX", "answer": "AB"[n % 2],
             "question": f"MARKER-{n}: which finding?" + (f" {HOSTILE}" if n == 0 else ""),
             "options": {"A": "cardiomegaly", "B": "pneumothorax", "C": f"as in {data}/cxr0.png"}} for n in range(4)]
    (data / "questions.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    seg = "{_target_: tests.test_vqa_gallery_export.failing_planner, " \
          "kwargs: {fail_on: MARKER-3, answers: {MARKER-1: B, MARKER-2: B}}}"
    vague = "{_target_: tests.vqa_parts.answering_planner, kwargs: {refuse_schema: true, free_text: 'A or C?'}}"
    study = data / "study.yaml"
    study.write_text(f"""name: gallery
planners:
  planner:
    backend: {{_target_: tests.vqa_parts.answering_planner}}
experts: [segment_lung_fields]
arms:
  - {{name: bare, experts: none}}
  - {{name: seg, planners: {{planner: {{backend: {seg}}}}}}}
  - {{name: vague, experts: none, planners: {{planner: {{backend: {vague}}}}}}}
graph:
  type: vqa
  mode: expert_then_answer
  steps:
    - tool: segment_lung_fields
dataset:
  type: questions
  path: questions.jsonl
  modality: DX
""")
    home = data / "home"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDAGENT_DEID_SECRET", TEST_SECRET.decode())
        settings = Settings(home=home, xrv_cache_dir=data / "xrv")
        store = StudyStore.open(None, home)

        async def go() -> None:
            config = load_study(study, allowed_prefixes=("medagent.", "tests."))
            assert [event async for event in run_study(config, store=store, settings=settings, run_id=RUN)]

        asyncio.run(go())
    yield Run(home=home, data=data, store=store, artifacts=ArtifactStore(settings.artifacts_dir))
    store.close()


class _Cards(HTMLParser):
    """The cards' ids and filter flags, every image source, and the text of script tags."""

    def __init__(self) -> None:
        super().__init__()
        self.flags: dict[str, dict[str, str]] = {}
        self.sources: list[str] = []
        self.scripts: list[str] = []
        self._card: dict[str, str] | None = None
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {name: value or "" for name, value in attrs}
        if tag == "article":
            self._card = {name[5:]: value for name, value in found.items() if name.startswith("data-")}
        elif tag == "img":
            self.sources.append(found["src"])
        self._in = tag

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "h2" and self._card is not None:
            self.flags[data.split(" · ")[0]] = self._card
            self._card = None
        elif self._in == "script":
            self.scripts.append(data)


def _private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) == 0o600


def _overlays(run: Run) -> set[str]:
    return {call.output["overlay_id"] for call in run.store.tool_calls(RUN) if call.ok}


@pytest.mark.lungs  # the lung-field segmenter needs opencv
def test_the_gallery_shows_each_case_with_its_images_overlays_and_filters(run: Run, tmp_path: Path) -> None:
    page = write_gallery(run.store, RUN, run.artifacts, tmp_path)
    markup = page.read_text()
    cards = _Cards()
    cards.feed(markup)
    assert sorted(cards.flags) == sorted(case.case_id for case in run.store.cases(RUN)) and len(cards.flags) == 12
    marked = {name: {case for case, flags in cards.flags.items() if flags[name] == "1"}
              for name in ("error", "unparsed", "wrong", "disagree")}
    # bare answers A; seg answers B on q1 and q2 and fails on q3; vague never parses. Gold: A, B, A, B
    assert marked["disagree"] == {f"{arm}:q{n}" for arm in ("bare", "seg", "vague") for n in (1, 2)}
    assert marked["error"] == {"seg:q3"} and marked["unparsed"] == {f"vague:q{n}" for n in range(4)}
    assert marked["wrong"] == {"bare:q1", "bare:q3", "seg:q2"}
    overlays = _overlays(run)
    assert len(overlays) == 2  # one per radiograph
    for overlay in overlays:
        assert f"gallery/{overlay}.png" in cards.sources
        thumbnail = tmp_path / "gallery" / f"{overlay}.png"
        assert thumbnail.read_bytes().startswith(b"\x89PNG") and _private(thumbnail)
    assert all(re.fullmatch(r"gallery/(img|ovl)-[0-9a-f]{12}\.png", source) for source in cards.sources)
    assert {path.name for path in (tmp_path / "gallery").iterdir()} == {source[8:] for source in cards.sources}
    assert HOSTILE not in markup and "&lt;script&gt;alert(1)&lt;/script&gt;" in markup
    assert markup.count("<script") == 1 and "innerHTML" not in markup
    assert str(run.data) not in markup and "as in [path]" in markup
    [script] = cards.scripts
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in markup and "default-src 'none'" in markup
    assert _private(page)

    cut = write_gallery(run.store, RUN, run.artifacts, tmp_path / "cut", max_cases=5)
    few = _Cards()
    few.feed(cut.read_text())
    assert len(few.flags) == 5 and "7 left out" in cut.read_text()


@pytest.mark.lungs
def test_trajectories_hold_each_cases_messages_tool_calls_and_score_as_stored(run: Run, tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    assert export_trajectories(run.store, RUN, target) == 12 and _private(target)
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    stored = {(case.case_id, case.repeat): case for case in run.store.cases(RUN)}
    assert sorted((line["case_id"], line["repeat"]) for line in lines) == sorted(stored)
    for line in lines:
        case = stored[(line["case_id"], line["repeat"])]
        assert line["messages"] == run.store.messages(RUN, case.case_id, case.repeat)
        calls = run.store.tool_calls(RUN, case.case_id, case.repeat)
        assert [(c["name"], c["arguments"], c["ok"], c["output"]) for c in line["tool_calls"]] == \
            [(c.tool, c.arguments, c.ok, c.output) for c in calls]
        assert (line["arm"], line["question_id"]) == tuple(case.case_id.split(":"))
        assert (line["run_id"], line["answer"], line["model_id"], line["seed"]) == (RUN, case.answer, case.model_id,
                                                                                    case.seed)
        correct = case.columns.get("vqa.correct")
        assert line["correct"] == (None if correct is None else bool(correct))
        assert line["prediction"] == case.columns.get("vqa.prediction")
    by_case = {line["case_id"]: line for line in lines}
    assert by_case["seg:q1"]["tool_calls"][0]["name"] == "segment_lung_fields"
    last = by_case["seg:q1"]["messages"][-1]
    assert (last["role"], last["content"]) == ("assistant", '{"answer": "B"}')
    assert (by_case["seg:q1"]["prediction"], by_case["seg:q1"]["gold"], by_case["seg:q1"]["correct"]) == ("B", "B", True)
    assert by_case["seg:q3"]["status"] == "failed" and by_case["seg:q3"]["error"] == "planner_server_error"
    assert by_case["vague:q0"]["parsed"] is False and by_case["vague:q0"]["correct"] is None


@pytest.mark.lungs
def test_the_cli_exports_trajectories_and_writes_the_gallery_beside_the_report(run: Run, tmp_path: Path) -> None:
    stdout = _ok(_medagent(["export", RUN, "--format", "trajectories"], run.home, cwd=tmp_path))
    target = tmp_path / f"{RUN}.jsonl"
    assert json.loads(stdout) == {"run_id": RUN, "rows": 12, "path": target.name}
    assert _private(target) and len(target.read_text().splitlines()) == 12

    folder = tmp_path / "report"
    stdout = _ok(_medagent(["report", RUN, "--format", "html", "--out", str(folder)], run.home))
    gallery = folder / "gallery.html"
    assert "case gallery written to" in stdout and str(gallery) in stdout.replace("\n", "")
    assert _private(gallery) and _private(folder / "report.html")
    assert all(_private(path) for path in (folder / "gallery").iterdir())
    assert {f"{overlay}.png" for overlay in _overlays(run)} <= set(os.listdir(folder / "gallery"))


@pytest.mark.asyncio
async def test_a_dialogue_runs_gallery_shows_transcripts_and_its_trajectories_the_diagnoses(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_dialogue_study import _first_cases, _scripted_planners, _study

    monkeypatch.setenv("MEDAGENT_DEID_SECRET", TEST_SECRET.decode())
    settings = Settings(home=tmp_path / "home", xrv_cache_dir=tmp_path / "xrv")
    cases = _first_cases(tmp_path, 2)
    config = load_study(_study(tmp_path, dataset=cases.name, planners=_scripted_planners()))
    with StudyStore.open(None, settings.home) as store:
        assert [event async for event in run_study(config, store=store, settings=settings, run_id="talk")]
        page = write_gallery(store, "talk", ArtifactStore(settings.artifacts_dir), tmp_path / "report")
        assert export_trajectories(store, "talk", tmp_path / "talk.jsonl") == 2
        stored = {case.case_id: case for case in store.cases("talk")}
        transcripts = {key: store.messages("talk", key, 0) for key in stored}
    markup = page.read_text()
    cards = _Cards()
    cards.feed(markup)
    assert sorted(cards.flags) == sorted(stored) and not any(flags["disagree"] == "1" for flags in cards.flags.values())
    assert markup.count("<details open><summary>transcript") == 2 and '<span class="role">patient</span>' in markup
    for line in map(json.loads, (tmp_path / "talk.jsonl").read_text().splitlines()):
        columns = stored[line["case_id"]].columns
        assert line["messages"] == transcripts[line["case_id"]] and line["messages"][0]["role"] == "patient"
        assert (line["prediction"], line["gold"], line["correct"]) == (
            columns["dialogue.prediction"], columns["dialogue.truth"], bool(columns["dialogue.correct"]))
