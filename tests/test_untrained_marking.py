"""Results of untrained (test-only) weights are marked wherever a person looks: the report banner (md and
html), the export column, the case gallery, the trajectory export, the overlay watermark, the run's stored
weights, the chat helper; and every report opens with what produced it."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medagent.config import Settings
from medagent.reports import BootstrapConfig, ReportOptions, build_report, render_html, render_markdown
from medagent.runtime.untrained import UNTRAINED_WEIGHTS, answer_is_untrained, untrained_experts
from medagent.tools.artifacts import ArtifactKind, ArtifactStore
from tests.conftest import TEST_SECRET

FAST = ReportOptions(bootstrap=BootstrapConfig(n_resamples=50, seed=1))
SHA = "ab" * 32


def _cases(weights: dict[str, str | None]) -> pd.DataFrame:
    untrained = any(value == UNTRAINED_WEIGHTS for value in weights.values())
    return pd.DataFrame({
        "run_id": "r", "case_id": ["a", "b"], "repeat": 0, "status": "succeeded", "error_code": None,
        "prompt_tokens": 1.0, "completion_tokens": 1.0, "latency_s": 1.0, "truth.Effusion": [1.0, 0.0],
        "prob.Effusion": [0.8, 0.3], "model_id": "smollm2-135m", "config_hash": "c0ffee", "medagent_version": "0.1.0",
        "git_sha": "1f3666c", "untrained": untrained, "expert_weights": json.dumps(weights),
    })


def test_a_report_of_untrained_results_opens_with_a_banner_in_markdown_and_html() -> None:
    report = build_report(_cases({"cxr_classifier": UNTRAINED_WEIGHTS, "lung_localizer": None}), options=FAST)
    assert report.provenance.untrained and report.provenance.untrained_experts == ["cxr_classifier"]
    markdown = render_markdown(report)
    head = markdown.split("## ", 1)[0]  # before the first section
    assert "UNTRAINED" in head and "cxr_classifier" in head
    page = render_html(report)
    assert page.index('class="untrained"') < page.index("<h2>") and "<title>UNTRAINED" in page


def test_a_report_of_trained_results_has_no_banner() -> None:
    report = build_report(_cases({"cxr_classifier": SHA}), options=FAST)
    assert not report.provenance.untrained
    assert "UNTRAINED" not in render_markdown(report) and "UNTRAINED" not in render_html(report)


@pytest.mark.parametrize("render", [render_markdown, render_html])
def test_every_report_opens_with_what_produced_it(render) -> None:  # type: ignore[no-untyped-def]
    text = render(build_report(_cases({"cxr_classifier": SHA, "lung_localizer": None}), options=FAST))
    first_section = text.index("Produced by")
    assert first_section < text.index("Overview")
    for expected in ("medagent version: 0.1.0", "git SHA: 1f3666c", "config hash: c0ffee",
                     "planner models: smollm2-135m", f"cxr_classifier: {SHA}", "lung_localizer: none"):
        assert expected in text, expected


def test_a_comparison_with_an_untrained_run_carries_the_banner() -> None:
    from medagent.reports import compare_runs

    trained = build_report(_cases({"cxr_classifier": SHA}), options=FAST)
    frame = _cases({"cxr_classifier": UNTRAINED_WEIGHTS}).assign(run_id="random")
    untrained = build_report(frame, options=FAST)
    comparison = compare_runs([trained, untrained])
    assert comparison.untrained_runs == ["random"]
    for text in (render_markdown(trained, comparison), render_html(trained, comparison)):
        assert "UNTRAINED" in text and "Compared runs with untrained results: random" in text
    assert "UNTRAINED" not in render_markdown(trained, compare_runs([trained]))


def test_a_report_without_provenance_columns_still_renders_its_header() -> None:
    frame = _cases({}).drop(columns=["model_id", "config_hash", "medagent_version", "git_sha", "untrained",
                                     "expert_weights"])
    markdown = render_markdown(build_report(frame, options=FAST))
    assert "medagent version: -" in markdown and "UNTRAINED" not in markdown


def _red_band(png: bytes) -> float:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=int)
    top = pixels[:8]
    return float(np.mean((top[..., 0] > 150) & (top[..., 1] < 60) & (top[..., 2] < 80)))


def test_overlays_of_untrained_results_are_watermarked(tmp_path: Path) -> None:
    grey = Image.fromarray((np.tile(np.linspace(0, 255, 256), (256, 1))).astype(np.uint8))
    buffer = io.BytesIO()
    grey.save(buffer, format="PNG")
    store = ArtifactStore(tmp_path / "artifacts")
    plain = store.put_png(buffer.getvalue(), ArtifactKind.OVERLAY, provenance={"expert": "x", "untrained": False})
    marked = store.put_png(buffer.getvalue(), ArtifactKind.OVERLAY, provenance={"expert": "x", "untrained": True})
    assert plain.path.read_bytes() == buffer.getvalue() and _red_band(plain.path.read_bytes()) == 0.0
    watermarked = marked.path.read_bytes()
    assert _red_band(watermarked) > 0.6  # the band that says UNTRAINED spans the top
    centre = np.asarray(Image.open(io.BytesIO(watermarked)).convert("RGB"), dtype=int)[96:160, 32:224]
    assert np.mean(centre[..., 0] - centre[..., 1] > 60) > 0.01  # the red word across the middle


def test_the_chat_helper_says_whether_an_answer_rests_on_untrained_experts() -> None:
    call = {"tool": "classify_chest_xray", "ok": True,
            "output": {"provenance": {"expert": "cxr_classifier", "untrained": True}}}
    trained = {"tool": "locate_lungs", "ok": True, "output": {"provenance": {"expert": "lung_localizer"}}}
    assert answer_is_untrained({"tool_calls": [trained, call]}) and not answer_is_untrained({"tool_calls": [trained]})
    assert untrained_experts([call, trained, call]) == ["cxr_classifier"]


def test_the_gallery_and_the_trajectories_mark_each_case_and_call_of_untrained_weights(tmp_path: Path) -> None:
    """A stored run with one case whose classifier ran on random weights and one whose classifier did not: the
    gallery's page, card, filter and call row say UNTRAINED for the first only, and so do the trajectory lines."""
    from medagent.reports.export import export_trajectories
    from medagent.reports.gallery import write_gallery
    from medagent.store import CaseResult, StudyStore
    from medagent.tools.invoke import ToolCallRecord

    def call(untrained: bool) -> ToolCallRecord:
        provenance = {"expert": "cxr_classifier", "model_id": "densenet121-res224-all", "untrained": untrained,
                      "weights_sha256": None if untrained else SHA}
        return ToolCallRecord(tool="classify_chest_xray", arguments={"image_id": "img-0123456789ab"}, ok=True,
                              output={"probabilities": {"Effusion": 0.8}, "provenance": provenance})

    home = tmp_path / "home"
    with StudyStore.open(None, home) as store:
        store.create_run("r", "study", {"graph": {"type": "pipeline"}}, "c" * 64)
        for case_id, untrained in (("random", True), ("real", False)):
            store.record_case("r", case_id, 0, CaseResult(status="succeeded", answer="effusion"), [], [call(untrained)])
        page = write_gallery(store, "r", ArtifactStore(home / "artifacts"), tmp_path / "report").read_text()
        assert export_trajectories(store, "r", tmp_path / "r.jsonl") == 2
    cards = {card.split("</h2>")[0].split(">")[-1].split(" · ")[0]: card for card in page.split("<article")[1:]}
    assert 'data-untrained="1"' in cards["random"] and 'data-untrained="0"' in cards["real"]
    assert "UNTRAINED test-only weights: cxr_classifier" in cards["random"] and "UNTRAINED" not in cards["real"]
    assert 'ok <span class="badge bad">UNTRAINED</span>' in cards["random"]  # the call row
    head = page.split("<article", 1)[0]
    assert "UNTRAINED: results from random test-only weights" in head and "(1 of 2 cases)" in head
    assert 'value="untrained"> untrained experts (1)' in head  # the filter
    lines = {line["case_id"]: line for line in map(json.loads, (tmp_path / "r.jsonl").read_text().splitlines())}
    assert lines["random"]["untrained"] is True and lines["random"]["tool_calls"][0]["untrained"] is True
    assert lines["real"]["untrained"] is False and lines["real"]["tool_calls"][0]["untrained"] is False

def _medagent(args: list[str], home: Path) -> str:
    import os
    import subprocess
    import sys

    environment = {**os.environ, "MEDAGENT_HOME": str(home), "MEDAGENT_DEID_SECRET": TEST_SECRET.decode(),
                   "MEDAGENT_XRV_CACHE_DIR": str(home / "xrv"), "MEDAGENT_ALLOW_UNTRAINED_TEST_ONLY": "1",
                   "COLUMNS": "250"}
    result = subprocess.run([sys.executable, "-m", "medagent.cli", *args], capture_output=True, text=True, check=False,
                            env=environment, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.torch
@pytest.mark.slow
def test_a_study_on_untrained_weights_is_marked_in_summary_store_export_report_and_overlays(
        tmp_path: Path, nih_images: list[Path]) -> None:
    from medagent.store import StudyStore
    from tests.study_files import write_manifest, write_study

    home = tmp_path / "home"
    write_manifest(tmp_path, [("cxr", nih_images[0], 1, "M")])
    graph = ("  type: pipeline\n  steps:\n    - id: classify\n      tool: classify_chest_xray\n"
             "    - id: anatomy\n      tool: segment_chest_anatomy\n"
             "      arguments: {image_id: '{image}', structures: [Heart]}\n"
             "    - id: lungs\n      tool: segment_lung_fields")
    summary = _medagent(["run", str(write_study(tmp_path, graph)), "--run-id", "u"], home)
    assert "UNTRAINED" in summary and "cxr_classifier" in summary  # the run summary
    with StudyStore.open(None, home) as store:
        [case] = store.cases("u")
        assert case.status == "succeeded", case.error
        assert case.expert_weights["cxr_classifier"] == UNTRAINED_WEIGHTS
        assert case.expert_weights["lung_field_segmenter"] is None  # classical: no weights, not untrained
        overlays = {call.tool: call.output["overlay_id"] for call in store.tool_calls("u")
                    if call.ok and call.output.get("overlay_id")}
    for fmt in ("csv", "parquet"):
        _medagent(["export", "u", "--format", fmt, "--out", str(tmp_path / f"u.{fmt}")], home)
        back = pd.read_csv(tmp_path / "u.csv") if fmt == "csv" else pd.read_parquet(tmp_path / "u.parquet")
        assert bool(back.loc[0, "untrained"]) is True
    _medagent(["report", "u", "--out", str(tmp_path / "report")], home)
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "UNTRAINED" in markdown.split("## ", 1)[0] and "Produced by" in markdown
    artifacts = ArtifactStore(Settings(home=home).artifacts_dir)
    # the random PSPNet's overlay is watermarked; the classical lung-field outline (no weights) is not
    assert _red_band(artifacts.read_bytes(overlays["segment_chest_anatomy"])) > 0.6
    assert _red_band(artifacts.read_bytes(overlays["segment_lung_fields"])) < 0.3


@pytest.mark.torch
@pytest.mark.asyncio
async def test_a_dialogue_study_whose_expert_ran_untrained_is_marked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nih_images: list[Path]) -> None:
    from medagent.store import StudyStore
    from medagent.studies import load_study
    from medagent.studies.runner import run_study

    monkeypatch.setenv("MEDAGENT_DEID_SECRET", TEST_SECRET.decode())
    settings = Settings(home=tmp_path / "home", xrv_cache_dir=tmp_path / "xrv", allow_untrained_test_only=True)
    (tmp_path / "cases.yaml").write_text(f"""label_set: medagent-builtin
cases:
  - case_id: cxr-1
    patient: {{primary_symptom: "I have been short of breath for a week.", history: "Ankles swollen."}}
    images: [{nih_images[0]}]
    diagnosis: pleural effusion
""")
    role = "{backend: {_target_: medagent.simulators.scripted.scripted_role, kwargs: {role: %s}}}"
    roles = "".join(f"  {name}: {role % name}\n" for name in ("planner", "patient", "measurement", "assessor"))
    (tmp_path / "study.yaml").write_text(f"""name: dialogue-untrained
planners:
{roles}experts: [classify_chest_xray]
graph:
  type: dialogue
  strategy: dialogue_with_experts
  label_set: medagent-builtin
  max_turns: 4
dataset:
  type: cases
  path: cases.yaml
  modality: DX
""")
    config = load_study(tmp_path / "study.yaml")
    with StudyStore.open(None, settings.home) as store:
        events = [event async for event in run_study(config, store=store, settings=settings, run_id="dlg")]
        assert events[-1].done == 1 and events[-1].failed == 0
        [case] = store.cases("dlg")
        assert [call.tool for call in store.tool_calls("dlg")] == ["classify_chest_xray"]
        assert case.expert_weights == {"cxr_classifier": UNTRAINED_WEIGHTS}  # the hints' expert ran untrained
        frame = store.cases_frame("dlg")
    assert bool(frame.loc[0, "untrained"]) is True
    report = build_report(frame, run_id="dlg", options=FAST)
    assert "UNTRAINED" in render_markdown(report).split("## ", 1)[0]


@pytest.mark.parametrize("weights", [UNTRAINED_WEIGHTS, SHA], ids=["untrained", "trained"])
def test_report_plots_of_untrained_results_are_watermarked(tmp_path: Path, weights: str) -> None:
    """A plot opened on its own (the PNG beside report.md) says UNTRAINED as the report does."""
    from medagent.reports import write_plots

    frame = _cases({"cxr_classifier": weights})
    report = build_report(frame, options=FAST)
    plots = write_plots(report, frame, None, tmp_path / "report")
    assert plots and all(plot.path.is_file() for plot in plots)
    bands = [_red_band(plot.path.read_bytes()) for plot in plots]
    assert all(band > 0.6 for band in bands) if weights == UNTRAINED_WEIGHTS else all(b == 0.0 for b in bands)
