"""Study YAML schema, located errors, config hash, component references and datasets."""

from __future__ import annotations

import csv
import shutil
import textwrap
from pathlib import Path

import pytest

from medagent.errors import ConfigurationError
from medagent.studies import (
    AgentLoopGraph,
    DatasetSpec,
    PipelineGraph,
    StudyConfigError,
    config_hash,
    load_dataset,
    load_study,
    render_arguments,
    resolve_target,
)

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"

BASE = """\
name: triage
graph:
  type: pipeline
  steps:
    - id: quality
      tool: assess_image_quality
    - id: classify
      tool: classify_chest_xray
    - id: ground
      tool: ground_phrase
      for_each: {findings_above: 0.5}
      arguments: {image_id: "{image}", phrase: "{finding}"}
dataset:
  type: folder
  path: images
repeats: 2
"""


def write(tmp_path: Path, text: str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def located(tmp_path: Path, text: str, **options: object) -> StudyConfigError:
    with pytest.raises(StudyConfigError) as caught:
        load_study(write(tmp_path, text), **options)
    return caught.value


# -- the shipped examples ---------------------------------------------------------------


def test_examples_load_and_validate() -> None:
    triage = load_study(WORKFLOWS / "cxr-triage.yaml")
    assert isinstance(triage.graph, PipelineGraph)
    assert [step.id for step in triage.graph.steps] == ["quality", "classify", "ground", "anatomy", "lung_fields"]
    assert triage.graph.steps[0].gate is not None and triage.graph.steps[2].for_each is not None
    assert triage.metrics is not None and triage.metrics.threshold_for("Effusion") == 0.5
    assert triage.concurrency.expert_limits(["classify_chest_xray", "segment_chest_anatomy"]) == {"classify_chest_xray": 16}

    chat = load_study(WORKFLOWS / "chat.yaml")
    assert isinstance(chat.graph, AgentLoopGraph) and chat.dataset is None
    spec = chat.planners["planner"]
    assert spec.resolved_backend() == "embedded" and spec.planner_config().tool_calling == "structured"
    assert "segment_volume" in chat.tool_names()  # empty experts: every registered tool

    comparison = load_study(WORKFLOWS / "planner-comparison.yaml")
    arms = comparison.arm_planners()
    assert list(arms) == ["embedded", "vllm"]
    assert arms["vllm"]["planner"].resolved_backend() == "openai"
    assert arms["vllm"]["planner"].endpoint == "http://127.0.0.1:8000/v1"
    assert arms["embedded"]["planner"].endpoint is None
    assert [comparison.seed_for(r) for r in range(3)] == [11, 12, 13]


# -- located errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "line", "field", "words"),
    [
        ("repeats: 2", "repeats: 2\nreapeats: 3", 17, "reapeats", "did you mean 'repeats'"),
        ("repeats: 2", "repeats: two", 16, "repeats", "valid integer"),
        ("repeats: 2", "repeats: 0", 16, "repeats", "greater than or equal to 1"),
        ("tool: classify_chest_xray", "tool: classify_chest_xrya", 8, "graph.steps[1].tool",
         "unknown tool 'classify_chest_xrya' (known: assess_image_quality"),
        ("for_each: {findings_above: 0.5}", "for_each: {findings_abov: 0.5}", 11,
         "graph.steps[2].for_each.findings_abov",
         "did you mean 'findings_above'"),
        ("for_each: {findings_above: 0.5}", "for_each: {findings_above: 1.5}", 11,
         "graph.steps[2].for_each.findings_above", "less than or equal to 1"),
        ("  path: images\n", "", 13, "dataset.path", "required field is missing"),
        ("type: pipeline", "type: pipelin", 3, "graph.type", "'pipelin'"),
        ('phrase: "{finding}"', 'phrase: "{finding.__class__}"', 12, "graph.steps[2].arguments",
         "is not a placeholder"),
    ],
)
def test_malformed_studies_name_file_line_and_field(tmp_path: Path, old: str, new: str, line: int, field: str,
                                                    words: str) -> None:
    assert old in BASE
    error = located(tmp_path, BASE.replace(old, new, 1))
    assert (error.file, error.line, error.field) == ("study.yaml", line, field)
    assert str(error).startswith(f"study.yaml:{line}: {field}: ")
    assert words in str(error)


def test_bad_conditions_are_located(tmp_path: Path) -> None:
    two_keys = BASE.replace("      tool: classify_chest_xray\n", "      tool: classify_chest_xray\n      when: "
                            "{step_succeeded: quality, output_equals: {step: quality, field: usable, equals: true}}\n")
    error = located(tmp_path, two_keys)
    assert (error.line, error.field) == (9, "graph.steps[1].when") and "exactly one of" in str(error)

    later_step = BASE.replace("      tool: assess_image_quality\n",
                              "      tool: assess_image_quality\n      when: {step_succeeded: classify}\n")
    error = located(tmp_path, later_step)
    assert (error.line, error.field) == (7, "graph.steps[0].when") and "does not run before it" in str(error)

    bare = BASE.replace("      tool: classify_chest_xray\n",
                        "      tool: classify_chest_xray\n      when: {finding_probability_at_least: 0.5}\n")
    error = located(tmp_path, bare)
    assert error.field == "graph.steps[1].when" and "needs for_each" in str(error)

    no_loop = BASE.replace("      for_each: {findings_above: 0.5}\n", "")
    error = located(tmp_path, no_loop)
    assert error.field == "graph.steps[2]" and "'{finding}' is used in arguments" in str(error)


def test_duplicate_key_and_yaml_syntax_error(tmp_path: Path) -> None:
    error = located(tmp_path, BASE.replace("repeats: 2", "repeats: 2\nname: again"))
    assert (error.line, error.field) == (17, "name") and "duplicate key (first given on line 1)" in str(error)
    nested = BASE.replace("  path: images", "  path: images\n  type: manifest")
    error = located(tmp_path, nested)
    assert error.line == 16 and "duplicate key (first given on line 14)" in str(error)

    error = located(tmp_path, BASE.replace("repeats: 2", "repeats: [2"))
    assert error.file == "study.yaml" and error.line == 17 and "YAML syntax error" in str(error)
    assert str(error).startswith("study.yaml:17: ")


def test_unknown_expert_and_tool_outside_experts(tmp_path: Path) -> None:
    experts = "experts: [assess_image_quality, classify_chest_xray, ground_phrase, segment_lungz]\n"
    error = located(tmp_path, BASE + experts)
    assert (error.line, error.field) == (17, "experts[3]") and "unknown tool 'segment_lungz'" in str(error)
    assert len(error.problems) == 1
    error = located(tmp_path, BASE + "experts: [assess_image_quality, ground_phrase]\n")
    assert error.field == "graph.steps[1].tool" and "not among this study's experts" in str(error)
    # a tool named by its factory's declared tools becomes known
    extended = BASE.replace("tool: ground_phrase", "tool: my_grounder") + textwrap.dedent("""\
        experts:
          - assess_image_quality
          - classify_chest_xray
          - {_target_: medagent.tools.grounding_tools.grounding_tools, tools: [my_grounder]}
        """)
    assert load_study(write(tmp_path, extended)).tool_names() == [
        "assess_image_quality", "classify_chest_xray", "my_grounder"]


def test_target_outside_allow_list_is_refused_unless_allowed(tmp_path: Path) -> None:
    text = BASE + "planners:\n  planner:\n    backend: {_target_: os.system, kwargs: {command: ls}}\n"
    error = located(tmp_path, text)
    assert (error.line, error.field) == (19, "planners.planner.backend._target_")
    assert "outside the allowed import prefixes" in str(error)
    config = load_study(write(tmp_path, text), allow_any_target=True)  # explicit opt-in: validated, not imported
    assert config.planners["planner"].backend.target == "os.system"  # type: ignore[union-attr]
    error = located(tmp_path, BASE + "planners:\n  planner: {backend: vlm}\n")
    assert error.field == "planners.planner.backend" and "unknown planner backend 'vlm'" in str(error)


def test_resolve_target_never_escapes_the_allow_list() -> None:
    from medagent.agents.scripted import ScriptedPlanner

    assert resolve_target("medagent.agents.scripted.ScriptedPlanner") is ScriptedPlanner
    for refused in ("os.system", "medagent.tools.builtin.os.system", "medagent.config.__builtins__",
                    "medagent.config.Path", "medagent.config.not_there", "builtins.eval"):
        with pytest.raises(ConfigurationError):
            resolve_target(refused)


def test_semantic_problems(tmp_path: Path) -> None:
    error = located(tmp_path, BASE + "seeds: [1, 2, 3]\n")
    assert (error.line, error.field) == (17, "seeds") and "3 seeds for 2 repeats" in str(error)
    error = located(tmp_path, BASE + "metrics: {findings: [Effusion], thresholds: {Efusion: 0.3}}\n")
    assert error.field == "metrics.thresholds.Efusion"
    arms = BASE + "arms:\n  - {name: a}\n  - {name: a}\n"
    error = located(tmp_path, arms)
    assert (error.line, error.field) == (19, "arms[1].name")
    error = located(tmp_path, BASE, check_paths=True)
    assert (error.line, error.field) == (15, "dataset.path") and "does not exist" in str(error)


# -- config hash ----------------------------------------------------------------------------


def test_config_hash_is_stable_under_reordering_and_changes_with_content(tmp_path: Path) -> None:
    original = config_hash(load_study(write(tmp_path, BASE, "a.yaml")))
    reordered = "repeats: 2\n" + BASE.replace("repeats: 2\n", "").replace(
        'arguments: {image_id: "{image}", phrase: "{finding}"}',
        'arguments: {phrase: "{finding}", image_id: "{image}"}')
    assert config_hash(load_study(write(tmp_path, reordered, "b.yaml"))) == original
    cosmetic = BASE + "description: only words\nconcurrency: {cases: 32}\n"
    assert config_hash(load_study(write(tmp_path, cosmetic, "c.yaml"))) == original
    explicit_default = BASE + "seeds: 0\n"
    assert config_hash(load_study(write(tmp_path, explicit_default, "d.yaml"))) == original
    for change in (BASE.replace("0.5", "0.6"), BASE.replace("repeats: 2", "repeats: 3")):
        assert config_hash(load_study(write(tmp_path, change, "e.yaml"))) != original


# -- conditions and templates ------------------------------------------------------------------


def test_conditions_and_for_each_evaluate_over_step_outputs(tmp_path: Path) -> None:
    config = load_study(WORKFLOWS / "cxr-triage.yaml")
    assert isinstance(config.graph, PipelineGraph)
    quality, _, ground, anatomy, lung_fields = config.graph.steps
    outputs = {"quality": {"usable": True}, "classify": {"scores": "any shape: conditions read declared labels"}}
    labels = {"classify": {"Effusion": 0.2, "Cardiomegaly": 0.81, "Mass": 0.55}}
    assert quality.gate is not None and quality.gate.evaluate(outputs)
    assert not quality.gate.evaluate({"quality": {"usable": False}})
    assert ground.for_each is not None and ground.for_each.findings(labels["classify"]) == ["Cardiomegaly", "Mass"]
    assert anatomy.when is not None and anatomy.when.evaluate(outputs, labels)
    assert lung_fields.when is not None and not lung_fields.when.evaluate(outputs, labels)
    assert not anatomy.when.evaluate(outputs)  # no declared labels: no finding reaches a threshold
    assert render_arguments(ground.arguments, {"image": "img-1", "finding": "Mass", "case_id": "c"}) == {
        "image_id": "img-1", "phrase": "Mass"}


# -- datasets --------------------------------------------------------------------------------


def _dicom_series(tmp_path: Path, pydicom_ct: Path) -> Path:
    series = tmp_path / "data" / "ct-series"
    series.mkdir(parents=True)
    shutil.copy(pydicom_ct, series / "slice-0001")  # no extension: recognised by its DICM preamble
    return series


def test_folder_dataset(tmp_path: Path, nih_images: list[Path], pydicom_ct: Path, nibabel_data: Path) -> None:
    data = tmp_path / "data"
    (data / "cxr").mkdir(parents=True)
    for image in nih_images:
        shutil.copy(image, data / "cxr" / image.name)
    shutil.copy(pydicom_ct, data / "ct.dcm")
    shutil.copy(nibabel_data / "example4d.nii.gz", data / "volume.nii.gz")
    _dicom_series(tmp_path, pydicom_ct)
    (data / "notes.txt").write_text("not an image")
    cases = load_dataset(DatasetSpec(type="folder", path="data"), tmp_path)
    images = sorted(case.images[0].relative_to(data.resolve()).as_posix() for case in cases)
    assert images == ["ct-series", "ct.dcm", "cxr/00000001_000.png", "cxr/00027426_000.png", "volume.nii.gz"]
    again = load_dataset(DatasetSpec(type="folder", path=str(data)), Path("/"))
    assert [c.case_id for c in cases] == [c.case_id for c in again] and len({c.case_id for c in cases}) == 5


def _manifest_rows(tmp_path: Path, nih_images: list[Path], pydicom_ct: Path, nibabel_data: Path) -> list[dict]:
    images = tmp_path / "images"
    images.mkdir()
    for image in nih_images:
        shutil.copy(image, images / image.name)
    shutil.copy(nibabel_data / "example4d.nii.gz", images / "volume.nii.gz")
    _dicom_series(tmp_path, pydicom_ct)
    return [
        {"case_id": "c1", "path": "images/00000001_000.png", "Cardiomegaly": 1, "patient_id": "p1",
         "study_date": "2020-01-01", "sex": "M", "age_band": "50-59"},
        {"case_id": "c2", "path": "images/00027426_000.png", "Cardiomegaly": 0, "patient_id": "p2",
         "study_date": "2020-02-01", "sex": "F", "age_band": "60-69"},
        {"case_id": "c3", "path": "data/ct-series;images/volume.nii.gz", "Cardiomegaly": 0, "patient_id": "p3",
         "study_date": "", "sex": "F", "age_band": "60-69"},
    ]


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _write_parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)


MANIFEST_STUDY = """\
name: manifest-study
graph: {type: agent_loop, question: "Is there cardiomegaly?"}
dataset:
  type: manifest
  path: MANIFEST
  columns:
    case_id: case_id
    labels: [Cardiomegaly]
    patient_id: patient_id
    study_date: study_date
    subgroups: [sex, age_band]
metrics: {findings: [Cardiomegaly], subgroups: [sex]}
"""


@pytest.mark.parametrize(("name", "writer"), [("manifest.csv", _write_csv), ("manifest.parquet", _write_parquet)])
def test_manifest_dataset(tmp_path: Path, nih_images: list[Path], pydicom_ct: Path, nibabel_data: Path,
                          name: str, writer: object) -> None:
    rows = _manifest_rows(tmp_path, nih_images, pydicom_ct, nibabel_data)
    writer(tmp_path / name, rows)  # type: ignore[operator]
    config = load_study(write(tmp_path, MANIFEST_STUDY.replace("MANIFEST", name)), check_paths=True)
    cases = config.cases()
    assert [c.case_id for c in cases] == ["c1", "c2", "c3"]
    assert [c.labels for c in cases] == [{"Cardiomegaly": 1}, {"Cardiomegaly": 0}, {"Cardiomegaly": 0}]
    assert cases[0].images == [(tmp_path / "images" / "00000001_000.png").resolve()]
    assert [p.name for p in cases[2].images] == ["ct-series", "volume.nii.gz"] and cases[2].study_date is None
    assert cases[1].subgroups == {"sex": "F", "age_band": "60-69"} and cases[1].patient_id == "p2"


def test_manifest_errors_name_row_and_column_not_values(tmp_path: Path, nih_images: list[Path], pydicom_ct: Path,
                                                        nibabel_data: Path) -> None:
    rows = _manifest_rows(tmp_path, nih_images, pydicom_ct, nibabel_data)
    study = write(tmp_path, MANIFEST_STUDY.replace("MANIFEST", "manifest.csv"))

    _write_csv(tmp_path / "manifest.csv", [{k: v for k, v in row.items() if k != "sex"} for row in rows])
    with pytest.raises(StudyConfigError) as caught:
        load_study(study).cases()
    assert caught.value.field == "sex" and "column 'sex' is missing" in str(caught.value)

    rows[1]["path"] = "images/absent-patient-file.png"
    _write_csv(tmp_path / "manifest.csv", rows)
    with pytest.raises(StudyConfigError) as caught:
        load_study(study).cases()
    error = caught.value
    assert (error.file, error.line, error.field) == ("manifest.csv", 3, "path")
    assert "row 2 (line 3): column 'path': file not found" in str(error) and "absent-patient" not in str(error)

    rows[1]["path"] = "images/00027426_000.png"
    rows = [{**row, "Cardiomegaly": str(row["Cardiomegaly"])} for row in rows]
    rows[2]["Cardiomegaly"] = "maybe"
    _write_parquet(tmp_path / "manifest.parquet", rows)
    spec = DatasetSpec(type="manifest", path="manifest.parquet", columns={"labels": ["Cardiomegaly"]})
    with pytest.raises(StudyConfigError) as caught:
        load_dataset(spec, tmp_path)
    assert "row 3: column 'Cardiomegaly': expected 0 or 1" in str(caught.value) and "maybe" not in str(caught.value)

    missing = write(tmp_path, MANIFEST_STUDY.replace("MANIFEST", "nowhere.csv"))
    with pytest.raises(StudyConfigError) as caught:
        load_study(missing).cases()
    assert (caught.value.file, caught.value.line, caught.value.field) == ("study.yaml", 5, "dataset.path")


def test_builtin_tool_names_match_the_registry(settings: object) -> None:
    from medagent.studies import BUILTIN_TOOL_NAMES
    from medagent.tools.builtin import build_registry
    from medagent.tools.suite import ExpertSuite

    registry = build_registry(ExpertSuite.from_settings(settings))  # type: ignore[arg-type]
    assert sorted(tool.name for tool in registry.tools()) == sorted(BUILTIN_TOOL_NAMES)
