"""The parts of studies on a Ray cluster that need no cluster: the slot board behind the cluster-wide limits, the
executor key, the registry's gate, artifacts shipped between driver and worker, retries in the store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from medagent.config import Settings
from medagent.errors import PreconditionFailed
from medagent.store import CaseResult, StudyStore
from medagent.studies import load_study
from medagent.studies.cluster_limits import SlotBoard
from medagent.studies.loading import config_hash
from medagent.studies.ray_worker import artifact_payload, import_artifacts
from medagent.tools.artifacts import ArtifactStore
from medagent.tools.builtin import Toolbox
from medagent.yaml_located import StudyConfigError
from tests.conftest import TEST_SECRET
from tests.study_files import PIPELINE, write_manifest, write_study


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.mark.asyncio
async def test_the_board_holds_each_key_to_its_limit_first_come_first_served() -> None:
    board = SlotBoard()
    await board.acquire("endpoint:a", 2, "t1", "w1")
    await board.acquire("endpoint:a", 2, "t2", "w2")
    third = asyncio.ensure_future(board.acquire("endpoint:a", 2, "t3", "w1"))
    fourth = asyncio.ensure_future(board.acquire("endpoint:a", 2, "t4", "w2"))
    await board.acquire("endpoint:b", 2, "u1", "w1")  # another key has slots of its own
    await _settle()
    assert not third.done() and not fourth.done()
    board.release("endpoint:a", "t1")
    await _settle()
    assert third.done() and not fourth.done()  # the first waiter first
    board.release("endpoint:a", "t2")
    await _settle()
    assert fourth.done()
    assert board.peaks() == {"endpoint:a": 2, "endpoint:b": 1}


@pytest.mark.asyncio
async def test_a_dead_workers_slots_are_freed_and_a_withdrawn_wait_holds_nothing() -> None:
    board = SlotBoard()
    await board.acquire("tool:x", 1, "t1", "dead")
    waiting = asyncio.ensure_future(board.acquire("tool:x", 1, "t2", "alive"))
    queued_by_dead = asyncio.ensure_future(board.acquire("tool:x", 1, "t0", "dead"))
    await _settle()
    assert board.forget("dead") == 1
    await _settle()
    assert waiting.done() and queued_by_dead.cancelled()
    # a caller cancelled while its acquire was still on the way: the late acquire holds no slot
    board.release("tool:x", "late")
    await board.acquire("tool:x", 1, "late", "alive")
    board.release("tool:x", "t2")
    await asyncio.wait_for(board.acquire("tool:x", 1, "t5", "alive"), timeout=1)  # the one slot is free again


def test_the_executor_key_is_validated_and_left_out_of_the_configuration_hash(tmp_path: Path) -> None:
    write_manifest(tmp_path, [])
    local = load_study(write_study(tmp_path, PIPELINE))
    assert local.executor.type == "local"
    on_ray = load_study(write_study(tmp_path, PIPELINE, extra="executor: ray\n", file_name="ray.yaml"))
    assert on_ray.executor.type == "ray" and on_ray.executor.address is None
    assert config_hash(on_ray) == config_hash(local)  # a run may be resumed on either
    spelled = "executor: {type: ray, address: 'ray://head.example:10001', workers: 16}\n"
    assert load_study(write_study(tmp_path, PIPELINE, extra=spelled, file_name="b.yaml")).executor.workers == 16
    for bad in ("executor: {type: ray, address: 'http://head:6379'}", "executor: {type: local, workers: 2}",
                "executor: {type: ray, workers: 0}", "executor: {type: ray, adress: auto}", "executor: spark"):
        with pytest.raises(StudyConfigError, match="executor"):
            load_study(write_study(tmp_path, PIPELINE, extra=bad + "\n", file_name="bad.yaml"))


@pytest.mark.asyncio
async def test_the_registry_enters_a_tools_gate_around_each_call(tmp_path: Path, nih_images: list[Path],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDAGENT_DEID_SECRET", TEST_SECRET.decode())
    entered: list[str] = []

    class Gate:
        async def __aenter__(self) -> None:
            entered.append("in")

        async def __aexit__(self, *_: object) -> None:
            entered.append("out")

    toolbox = Toolbox(Settings(home=tmp_path / "home"))
    try:
        image = toolbox.attach(nih_images[0])
        toolbox.registry.set_gate("assess_image_quality", Gate)
        await toolbox.call("assess_image_quality", {"image_id": image.id}, toolbox.context([image.id]))
        with pytest.raises(PreconditionFailed):  # an ungated tool (refusing a PNG) passes no gate
            await toolbox.call("read_dicom_header", {"image_id": image.id}, toolbox.context([image.id]))
    finally:
        toolbox.close()
    assert entered == ["in", "out"]  # once, around the gated tool only


def test_artifacts_sent_back_keep_their_ids_and_damaged_ones_are_refused(tmp_path: Path, nih_images: list[Path],
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDAGENT_DEID_SECRET", TEST_SECRET.decode())
    toolbox = Toolbox(Settings(home=tmp_path / "worker"))
    toolbox.close()
    artifact = toolbox.attach(nih_images[0], "DX")  # attaching needs no expert: the closed toolbox still stores
    record, data = artifact_payload(artifact)
    driver = ArtifactStore(tmp_path / "driver")
    assert import_artifacts(driver, [(record, data[:-1] + bytes([data[-1] ^ 0xFF]))]) == []
    assert import_artifacts(driver, [(record, data)]) == [artifact.id]
    assert driver.get(artifact.id).sha256 == artifact.sha256
    assert driver.load_image(artifact.id).pixels.shape == toolbox.store.load_image(artifact.id).pixels.shape


def test_a_case_rerun_after_its_worker_died_is_stored_as_a_retry(tmp_path: Path) -> None:
    with StudyStore.open(None, tmp_path) as store:
        store.create_run("r", "s", {}, "hash")
        store.record_case("r", "a", 0, CaseResult(status="succeeded"), attempts=2)
        store.record_case("r", "a", 0, CaseResult(status="succeeded"))  # a duplicate write changes nothing
        store.record_case("r", "b", 0, CaseResult(status="succeeded"))
        assert {case.case_id: case.attempts for case in store.cases("r")} == {"a": 2, "b": 1}
        assert store.counts("r")["cases"] == 2
