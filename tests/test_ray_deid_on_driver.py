"""Executor ray without a cluster: the driver's :class:`RayCases` attaches (de-identifies) every image of a case
itself and ships only de-identified artifacts; a real :class:`CaseWorker` body, whose node can read no case file
(its workspace is an empty folder), runs each case on the imported artifacts. Ray is stood in for by an in-process
object store that keeps everything put, and every call's arguments, pickled (as Ray serializes them), so the test
reads exactly the bytes that would travel. Every graph kind that attaches images is covered; a local run of the
same cases is the reference (same image ids, same errors)."""

from __future__ import annotations

import asyncio
import json
import pickle
import shutil
from collections.abc import Awaitable, Callable, Generator
from pathlib import Path
from typing import Any

import pytest

from medagent.config import Settings
from medagent.imaging.limits import ImageLimits
from medagent.store import CaseResult, StudyStore
from medagent.studies import load_study
from medagent.studies.config import StudyConfig
from medagent.studies.ray_executor import RayCases, _Worker
from medagent.studies.ray_worker import CaseWorker
from medagent.studies.runner import CaseOutcome, StudyRunner, _WorkItem
from medagent.tools.builtin import Toolbox
from tests.conftest import TEST_SECRET
from tests.phi_images import PHI, carries_phi, corrupt_png, phi_dicom, phi_png
from tests.study_files import SCRIPTED, agent_loop, write_manifest, write_study

PREFIXES = ("medagent.", "tests.")


class _Ref:
    """An object of the stand-in store: kept pickled, as Ray keeps it serialized."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __await__(self) -> Generator[Any, None, Any]:
        async def get() -> Any:
            return pickle.loads(self.data)

        return get().__await__()


class _StandInRay:
    """What RayCases uses of Ray once its workers run: put, cancel, kill."""

    def __init__(self) -> None:
        self.puts: list[bytes] = []

    def put(self, value: Any) -> _Ref:
        self.puts.append(pickle.dumps(value))
        return _Ref(self.puts[-1])

    def cancel(self, ref: Any) -> None:
        ref.cancel()

    def kill(self, handle: Any, no_restart: bool = True) -> None:
        pass

    def is_initialized(self) -> bool:
        return False


class _Method:
    def __init__(self, body: Callable[..., Awaitable[Any]]) -> None:
        self.body = body
        self.sent: list[bytes] = []

    def remote(self, *arguments: Any) -> asyncio.Future[Any]:
        self.sent.append(pickle.dumps(arguments))  # what a call carries to the worker
        return asyncio.ensure_future(self.body(*pickle.loads(self.sent[-1])))


class _Handle:
    def __init__(self, worker: CaseWorker) -> None:
        self.run = _Method(worker.run)


@pytest.fixture
def homes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, Settings]:
    """The driver's settings, and a worker node's: another home, and an empty workspace, so the worker can read
    no case file (a read is refused, typed)."""
    monkeypatch.setenv("MEDAGENT_DEID_SECRET", TEST_SECRET.decode())
    nowhere = tmp_path / "worker-workspace"
    nowhere.mkdir()
    return (Settings(home=tmp_path / "driver", xrv_cache_dir=tmp_path / "xrv"),
            Settings(home=tmp_path / "worker", xrv_cache_dir=tmp_path / "xrv", workspace=nowhere))


class _Cluster:
    """A driver runner with RayCases on the stand-in, and one worker body."""

    def __init__(self, config: StudyConfig, driver: Settings, worker: Settings) -> None:
        self.driver_store = StudyStore.open(None, driver.home)
        self.worker_store = StudyStore.open(None, worker.home)
        self.runner = StudyRunner(config, self.driver_store, driver)
        self.ray = _StandInRay()
        self.worker = CaseWorker.__new__(CaseWorker)  # its body without Ray (__init__ joins a cluster)
        self.worker.settings, self.worker.store, self.worker.node_id = worker, self.worker_store, "node-w"
        self.worker.runner = StudyRunner(config, self.worker_store, worker)
        self.handle = _Handle(self.worker)
        self.cases = RayCases(self.runner, self.ray, owns_connection=False)
        self.cases._workers = [_Worker(self.handle, "worker-1")]

    async def run(self, items: list[_WorkItem]) -> list[CaseOutcome]:
        return list(await asyncio.gather(*(self.cases.run_case("r", item) for item in items)))

    def sent_keys(self) -> list[str]:
        return [pickle.loads(sent)[1].key for sent in self.handle.run.sent]

    def shipped(self) -> list[bytes]:
        return [*self.ray.puts, *self.handle.run.sent]

    async def aclose(self) -> None:
        await self.worker.close()
        await self.runner.aclose()
        self.runner.toolbox.close()
        self.driver_store.close()


async def _local(config: StudyConfig, settings: Settings, items: list[_WorkItem]) -> list[CaseResult]:
    """The same cases run locally on the driver's settings: the reference."""
    with StudyStore.open(None, settings.home / "local") as store:
        runner = StudyRunner(config, store, settings)
        try:
            return [(await runner._execute("r", item))[0] for item in items]
        finally:
            await runner.aclose()
            runner.toolbox.close()


def _local_ids(settings: Settings, paths: list[Path], modality: str | None = "DX") -> dict[str, str]:
    toolbox = Toolbox(settings)
    try:
        return {path.name: toolbox.attach(path, modality).id for path in paths}
    finally:
        toolbox.close()


@pytest.mark.asyncio
async def test_the_driver_ships_only_de_identified_artifacts_and_fails_unattachable_images_itself(
        tmp_path: Path, homes: tuple[Settings, Settings], nih_images: list[Path]) -> None:
    driver, worker = homes
    dicom, png = phi_dicom(tmp_path), phi_png(nih_images[0], tmp_path)
    broken = corrupt_png(tmp_path)
    large = tmp_path / "large.png"
    shutil.copy(nih_images[1], large)
    limit = max(dicom.stat().st_size, png.stat().st_size) + 1
    assert large.stat().st_size > limit
    driver = driver.model_copy(update={"limits": ImageLimits(max_file_bytes=limit)})
    for raw in (dicom, png):  # the files do carry the PHI the shipped bytes must not
        assert carries_phi(raw.read_bytes()) == [value for value in PHI if value.encode() in raw.read_bytes()] != []
    assert set(carries_phi(dicom.read_bytes())) == set(PHI)
    write_manifest(tmp_path, [("ct-1", dicom, 1, "F"), ("ct-2", dicom, 0, "M"), ("png", png, 1, "F"),
                              ("broken", broken, 0, "M"), ("large", large, 1, "F")])
    study = write_study(tmp_path, agent_loop("Describe the image."),
                        planner=SCRIPTED % ("assess_image_quality, read_dicom_header", ""))
    config = load_study(study)
    cluster = _Cluster(config, driver, worker)
    try:
        items = cluster.runner.work()
        outcomes = dict(zip([item.key for item in items], await cluster.run(items), strict=True))
        reference = dict(zip([item.key for item in items], await _local(config, driver, items), strict=True))
        # the worker could not have read a case file: the same case without the driver's ids fails there
        alone, _, _ = await cluster.worker.runner.execute_one("r", items[0])
    finally:
        await cluster.aclose()
    assert alone.status == "failed" and alone.error is not None and alone.error.code == "path_outside_workspace"
    # nothing that travelled holds PHI; what travelled is the artifacts (the same DICOM once: two cases in flight)
    assert all(carries_phi(payload) == [] for payload in cluster.shipped())
    ids = _local_ids(driver, [dicom, png])
    assert len(cluster.ray.puts) == 2
    assert {json.loads(pickle.loads(put)[0])["id"] for put in cluster.ray.puts} == set(ids.values())
    assert cluster.cases._attached == {} and cluster.cases._shipped == {}  # released with the last case using them
    # images that cannot be attached fail on the driver, with the local run's error, and go to no worker
    assert sorted(cluster.sent_keys()) == ["ct-1", "ct-2", "png"]
    for key in ("broken", "large"):
        error, expected = outcomes[key].result.error, reference[key].error
        assert outcomes[key].result.status == reference[key].status == "failed"
        assert error is not None and expected is not None and error.code == expected.code
        assert outcomes[key].node_id is None
    assert outcomes["broken"].result.error.code == "corrupt_file"  # type: ignore[union-attr]
    assert outcomes["large"].result.error.code == "file_too_large"  # type: ignore[union-attr]
    for key, image in (("ct-1", dicom), ("ct-2", dicom), ("png", png)):
        outcome = outcomes[key]
        assert outcome.result.status == reference[key].status == "succeeded", outcome.result.error
        assert outcome.node_id == "node-w"
        assert {call.arguments["image_id"] for call in outcome.calls} == {ids[image.name]}
        assert carries_phi(json.dumps([outcome.messages, [call.output for call in outcome.calls]]).encode()) == []
    assert [call.tool for call in outcomes["ct-1"].calls] == ["assess_image_quality", "read_dicom_header"]


def _vqa_study(folder: Path, images: list[Path]) -> StudyConfig:
    rows = [{"id": f"q{index}", "image": str(image), "question": "Which finding?",
             "options": {"A": "cardiomegaly", "B": "no finding"}, "answer": "A", "modality": "DX"}
            for index, image in enumerate(images)]
    (folder / "questions.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    study = folder / "vqa.yaml"
    study.write_text("""name: vqa
planners:
  planner:
    backend: {_target_: tests.vqa_parts.answering_planner, kwargs: {}}
graph:
  type: vqa
dataset:
  type: questions
  path: questions.jsonl
  modality: DX
arms:
  - {name: plain}
  - {name: noisy, corruption: {kind: gaussian_noise, severity: 3}}
concurrency: {cases: 4}
""")
    return load_study(study, allowed_prefixes=PREFIXES)


def _pipeline_study(folder: Path, images: list[Path]) -> StudyConfig:
    write_manifest(folder, [(f"c{index}", image, 1, "F") for index, image in enumerate(images)])
    return load_study(write_study(folder, "  type: pipeline\n  steps:\n    - id: header\n      tool: read_dicom_header"))


def _dialogue_study(folder: Path, images: list[Path]) -> StudyConfig:
    cases = [f"""  - case_id: d{index}
    patient: {{primary_symptom: "I have been short of breath for a week."}}
    examiner: {{physical_examination: {{Heart: "Displaced apex beat"}}}}
    images: [{image}]
    diagnosis: pleural effusion
""" for index, image in enumerate(images)]
    (folder / "cases.yaml").write_text("label_set: medagent-builtin\ncases:\n" + "".join(cases))
    role = "{backend: {_target_: medagent.simulators.scripted.scripted_role, kwargs: {role: %s}}}"
    (folder / "dialogue.yaml").write_text(f"""name: dialogue
planners:
  planner: {role % "planner"}
  patient: {role % "patient"}
  measurement: {role % "measurement"}
  assessor: {role % "assessor"}
graph:
  type: dialogue
  max_turns: 3
  label_set: medagent-builtin
  temperaments: [sanguine]
  biases: [none]
dataset:
  type: cases
  path: cases.yaml
  modality: DX
concurrency: {{cases: 2}}
""")
    return load_study(folder / "dialogue.yaml")


def _image_ids(kind: str, result: CaseResult, calls: list[Any]) -> list[str]:
    if kind == "vqa":
        return list(result.result["images"])  # type: ignore[index]
    return [call.arguments["image_id"] for call in calls]


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["pipeline", "vqa", "dialogue"])
async def test_every_graph_kind_runs_on_the_driver_s_artifacts_with_a_local_run_s_ids(
        kind: str, tmp_path: Path, homes: tuple[Settings, Settings], nih_images: list[Path]) -> None:
    """A VQA arm that perturbs its images does so from the shipped record: the same noisy image as locally."""
    driver, worker = homes
    images = [phi_dicom(tmp_path)] if kind == "pipeline" else [phi_dicom(tmp_path), phi_png(nih_images[0], tmp_path)]
    config = {"pipeline": _pipeline_study, "vqa": _vqa_study, "dialogue": _dialogue_study}[kind](tmp_path, images)
    cluster = _Cluster(config, driver, worker)
    try:
        items = cluster.runner.work()
        outcomes = await cluster.run(items)
        with StudyStore.open(None, driver.home / "local") as store:
            local_runner = StudyRunner(config, store, driver)
            try:
                reference = [await local_runner._execute("r", item) for item in items]
            finally:
                await local_runner.aclose()
                local_runner.toolbox.close()
        alone, _, _ = await cluster.worker.runner.execute_one("r", items[0])
    finally:
        await cluster.aclose()
    # this worker reads no file: the cases below ran on shipped artifacts
    assert alone.status == "failed" and alone.error is not None and alone.error.code == "path_outside_workspace"
    assert len(outcomes) == len(reference) == len(items) >= len(images)
    for item, outcome, (result, _, calls) in zip(items, outcomes, reference, strict=True):
        assert outcome.result.status == result.status == "succeeded", (item.key, outcome.result.error)
        assert outcome.node_id == "node-w"
        assert _image_ids(kind, outcome.result, outcome.calls) == _image_ids(kind, result, calls)
    if kind == "vqa":  # the noisy arm's images are new artifacts, equal to the local run's
        noisy = [outcome for item, outcome in zip(items, outcomes, strict=True) if item.arm == "noisy"]
        local = set(_local_ids(driver, images).values())
        assert noisy and all(set(outcome.result.result["images"]).isdisjoint(local)  # type: ignore[index]
                             for outcome in noisy)
    assert all(carries_phi(payload) == [] for payload in cluster.shipped())
    assert len(cluster.ray.puts) >= len(images)
