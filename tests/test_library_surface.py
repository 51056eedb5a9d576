"""The library surface a telemedicine backend embeds: images from bytes, file objects and pydicom datasets under the
same limits and de-identification as files; sessions that belong to an owner; a blocking API for scripts."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import pydicom
import pytest

from medagent.agents.planner import PlannerConfig
from medagent.agents.scripted import tool_sequence_planner
from medagent.api import Agent, AgentConfig
from medagent.config import Settings
from medagent.errors import FileTooLarge, ImageInputError, MedagentError, SessionNotFound, UnknownArtifact
from medagent.imaging.limits import ImageLimits
from medagent.sync_api import SyncAgent
from tests.dicom_files import cr_dicom

PHI = {"PatientName": "Zyxwv^Quintessa", "PatientID": "MRN-5550199", "AccessionNumber": "ACC-7781234",
       "PatientBirthDate": "19470312", "InstitutionAddress": "17 Quarry Lane, Dunmore",
       "ImageComments": "call Quintessa at 555-0199"}


def _dicom_with_phi(nih_images: list[Path], tmp_path: Path) -> pydicom.Dataset:
    dataset = pydicom.dcmread(cr_dicom(nih_images[0], tmp_path / "cr.dcm"))
    for keyword, value in PHI.items():
        setattr(dataset, keyword, value)
    return dataset


def _agent(settings: Settings) -> Agent:
    config = AgentConfig(planner=PlannerConfig(backend="scripted"), checkpoint_url="memory://")
    return Agent(config, settings=settings,
                 planner=tool_sequence_planner(["segment_lung_fields"], config=PlannerConfig(backend="scripted")))


def _no_phi_under(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for value in PHI.values():
                assert value.encode() not in data, f"{value!r} in {path.name}"


@pytest.mark.asyncio
async def test_images_from_bytes_file_objects_and_datasets_are_de_identified_like_files(
        nih_images: list[Path], tmp_path: Path, settings: Settings) -> None:
    dataset = _dicom_with_phi(nih_images, tmp_path)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    async with _agent(settings) as agent:
        session = agent.session()
        from_bytes = await session.attach_bytes(buffer.getvalue())
        from_file = await session.attach_file(io.BytesIO(buffer.getvalue()))
        from_dataset = await session.attach_dataset(dataset)
        assert from_bytes.id == from_file.id == from_dataset.id  # one image, however it arrived
        record = agent.toolbox.store.load_image(from_bytes.id)
        assert record.modality.value == "CR" and record.deid is not None
        with pytest.raises(ImageInputError):
            await session.attach_bytes(b"not an image at all" * 10)
        answer = await session.ask("Outline the lung fields.")
        assert [call["tool"] for call in answer.tool_calls] == ["segment_lung_fields"]
    _no_phi_under(settings.home)


@pytest.mark.asyncio
async def test_uploads_attach_when_a_workspace_confines_the_paths_users_name(nih_images: list[Path],
                                                                           tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", workspace=tmp_path / "workspace", plugins=False)
    (tmp_path / "workspace").mkdir()
    async with _agent(settings) as agent:
        session = agent.session()
        uploaded = await session.attach_bytes(nih_images[0].read_bytes(), "DX")
        assert (await session.artifact(uploaded.id)).kind.value == "image"
        with pytest.raises(MedagentError):
            await session.attach(nih_images[0], "DX")  # a path outside the workspace stays refused


@pytest.mark.asyncio
async def test_oversized_uploads_are_refused_before_anything_is_read_or_written(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", limits=ImageLimits(max_file_bytes=1024), plugins=False)
    async with _agent(settings) as agent:
        session = agent.session()
        with pytest.raises(FileTooLarge):
            await session.attach_bytes(b"\0" * 1025)
        with pytest.raises(FileTooLarge):
            await session.attach_file(io.BytesIO(b"\0" * 5000))
    assert not list((settings.home / "artifacts" / "index").glob("*.json"))


@pytest.mark.asyncio
async def test_a_session_and_its_artifacts_belong_to_their_owner(nih_images: list[Path], settings: Settings) -> None:
    """Another owner gets session_not_found for every use of the id, as for an id that does not exist; artifacts
    are reachable through the sessions that made them only."""
    async with _agent(settings) as agent:
        mine = agent.session("visit-1", owner="clinic-a")
        image = await mine.attach(nih_images[0], "DX")
        answer = await mine.ask("Outline the lung fields.")
        [call] = answer.tool_calls
        overlay = call["output"]["overlay_id"]
        assert (await mine.artifact(overlay)).kind.value == "overlay"
        assert (await mine.artifact(image.id)).id == image.id
        theirs = agent.session("visit-1", owner="clinic-b")
        for attempt in (theirs.history(), theirs.ask("and now?"), theirs.attach(nih_images[1], "DX"),
                        theirs.artifact(overlay), theirs.unfinished()):
            with pytest.raises(SessionNotFound):
                await attempt
        with pytest.raises(SessionNotFound):
            await agent.session("visit-1").history()  # no owner is not the owner either
        other = agent.session("visit-2", owner="clinic-a")
        await other.attach(nih_images[1], "DX")
        with pytest.raises(UnknownArtifact):
            await other.artifact(overlay)  # the same owner's other session did not make it
        assert len(await mine.history()) >= 2  # the owner's session is untouched


@pytest.mark.asyncio
async def test_deleting_a_session_removes_its_checkpoints_and_only_its_owner_may(nih_images: list[Path],
                                                                               settings: Settings) -> None:
    """On the default SQLite checkpointer: the deleted session's rows are gone from the file, its id is unknown
    (an empty history, its artifacts unreachable), and the owner's other session is untouched."""
    checkpoints = settings.home / "sessions.sqlite"
    config = AgentConfig(planner=PlannerConfig(backend="scripted"), checkpoint_url=str(checkpoints))
    async with Agent(config, settings=settings, planner=tool_sequence_planner(
            ["segment_lung_fields"], config=PlannerConfig(backend="scripted"))) as agent:
        doomed, kept = agent.session("visit-1", owner="clinic-a"), agent.session("visit-2", owner="clinic-a")
        for session in (doomed, kept):
            await session.attach(nih_images[0], "DX")
        overlay = (await doomed.ask("Outline the lung fields.")).tool_calls[0]["output"]["overlay_id"]
        await kept.ask("Outline the lung fields.")
        with pytest.raises(SessionNotFound):
            await agent.session("visit-1", owner="clinic-b").delete()  # not the owner: nothing deleted
        assert await doomed.exists()
        await doomed.delete()
        assert not await doomed.exists() and await doomed.history() == []
        with pytest.raises(UnknownArtifact):
            await doomed.artifact(overlay)
        assert len(await kept.history()) >= 2
    with sqlite3.connect(checkpoints) as database:
        threads = {row[0] for row in database.execute("SELECT DISTINCT thread_id FROM checkpoints")}
    assert threads == {"visit-2"}


def test_the_blocking_api_serves_scripts_without_asyncio(nih_images: list[Path], settings: Settings) -> None:
    config = AgentConfig(planner=PlannerConfig(backend="scripted"), checkpoint_url="memory://")
    with SyncAgent(config, settings=settings,
                   planner=tool_sequence_planner(["assess_image_quality"], config=config.planner)) as agent:
        session = agent.session(owner="script")
        image = session.attach(nih_images[0], "DX")
        answer = session.ask("Is the image usable?")
        assert [call["tool"] for call in answer.tool_calls] == ["assess_image_quality"]
        assert session.artifact(image.id).id == image.id and len(session.history()) >= 2
        with pytest.raises(SessionNotFound):
            agent.session(session.id, owner="someone-else").history()
