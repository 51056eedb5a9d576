"""DICOMweb from the service: pull a study or series from a PACS into a session, push its results back.

    POST /v1/sessions/{id}/dicomweb/pull  {"server": "pacs", "study_uid": "1.2...", "series_uid": null}
    POST /v1/sessions/{id}/dicomweb/push  {"server": "pacs"}

A request names a server by the name the service was configured with (``ServiceSettings.dicomweb_servers``,
``medagent serve --dicomweb NAME=URL``), never by a URL: no caller can make the service reach an address of its
choosing. A pull is :func:`medagent.dicomweb.pull_study` (bounded, de-identified on arrival); its images wait for
the next question as uploads do. A push is :func:`medagent.dicomweb.push_results` over the session's tool calls on
the pulled images: masks as DICOM SEG, findings as a DICOM SR. What a push needs of a pull (the source headers
with the PACS's UIDs, identity removed) is kept in this process's memory only, as the library keeps it: a
restarted service answers a push with ``409`` until the study is pulled again. UIDs reach the audit log as
SHA-256 hashes only.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Annotated, Final

from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field

from medagent.api import Agent, Session
from medagent.dicomweb import DicomwebLimits, PacsPull, pull_study, push_results
from medagent.errors import ConfigurationError
from medagent.service.audit import sha256_hex
from medagent.service.auth import Caller, service_of
from medagent.service.problems import TooManyImages
from medagent.service.schemas import ERRORS, ErrorOut, ImageOut
from medagent.service.settings import DICOMWEB_SERVER_NAME
from medagent.tools.artifacts import Artifact

router = APIRouter(prefix="/v1")
UID_PATTERN: Final = r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$"
MAX_KEPT_PULLS: Final = 256  # pulls remembered for a push, all sessions together; the oldest are forgotten
MAX_PULLS_PER_SESSION: Final = 16
SessionPath = Annotated[str, PathParam(description="a session id from POST /v1/sessions")]
ServerName = Annotated[str, Field(pattern=DICOMWEB_SERVER_NAME, description="a DICOMweb server's configured name")]
_PROBLEMS: Final = {
    **ERRORS,
    404: {"model": ErrorOut, "description": "no such session for this key, no DICOMweb server of that name, or "
                                            "no such study or series on it"},
    409: {"model": ErrorOut, "description": "too many images (pull), or nothing pulled in this service process "
                                            "(push)"},
    502: {"model": ErrorOut, "description": "the DICOMweb server failed, refused, answered out of spec or past a "
                                            "bound"},
    504: {"model": ErrorOut, "description": "the DICOMweb server did not answer in time"},
}


class DicomwebServerUnknown(ConfigurationError):
    """No DICOMweb server of that name is configured."""

    code = "dicomweb_server_unknown"


class NothingPulled(ConfigurationError):
    """A push with nothing pulled from that server into the session by this service process."""

    code = "dicomweb_nothing_pulled"


class PullIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    server: ServerName
    study_uid: str = Field(max_length=64, pattern=UID_PATTERN, description="Study Instance UID on the server")
    series_uid: str | None = Field(default=None, max_length=64, pattern=UID_PATTERN,
                                   description="only this Series Instance UID of the study")


class PullOut(BaseModel):
    server: str
    images: list[ImageOut] = Field(description="attached, de-identified; offered with the next question")
    skipped_instances: int = Field(description="instances that are no image (SEG, SR, ...) and were not attached")


class PushIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    server: ServerName


class StoredObject(BaseModel):
    sop_instance_uid: str
    series_instance_uid: str


class PushOut(BaseModel):
    server: str
    segmentations: list[StoredObject] = Field(description="DICOM SEG objects stored, one per image with masks")
    reports: list[StoredObject] = Field(description="DICOM SR (TID 1500) objects stored, one per image worked on")


class Pulls:
    """The pulls of this process that a push may still use, by session (oldest forgotten first)."""

    def __init__(self, max_kept: int = MAX_KEPT_PULLS, max_per_session: int = MAX_PULLS_PER_SESSION) -> None:
        self.max_kept = max_kept
        self.max_per_session = max_per_session
        self._by_session: OrderedDict[str, list[tuple[str, PacsPull]]] = OrderedDict()

    def add(self, session_id: str, server: str, pull: PacsPull) -> None:
        kept = self._by_session.setdefault(session_id, [])
        kept.append((server, pull))
        del kept[:-self.max_per_session]
        self._by_session.move_to_end(session_id)
        while sum(len(items) for items in self._by_session.values()) > self.max_kept:
            oldest = next(iter(self._by_session.values()))
            oldest.pop(0)
            if not oldest:
                self._by_session.popitem(last=False)

    def of(self, session_id: str, server: str) -> list[PacsPull]:
        return [pull for name, pull in self._by_session.get(session_id, []) if name == server]


def pulls_of(request: Request) -> Pulls:
    state = request.app.state
    found: Pulls | None = getattr(state, "dicomweb_pulls", None)
    if found is None:
        found = state.dicomweb_pulls = Pulls()
    return found


class _Collecting:
    """The session as :func:`pull_study` sees it, with the images it attaches held back: they are attached once
    the pull is known to fit in the session."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.images: list[Artifact] = []

    @property
    def agent(self) -> Agent:
        return self.session.agent

    async def image_ids(self) -> list[str]:
        return await self.session.image_ids()

    def attach_stored(self, image_id: str) -> Artifact:
        artifact = self.session.agent.toolbox.store.get(image_id)
        self.images.append(artifact)
        return artifact


def _server_url(request: Request, name: str) -> str:
    url = service_of(request).settings.dicomweb_servers.get(name)
    if url is None:
        raise DicomwebServerUnknown("no DICOMweb server of that name is configured")
    return url


@router.post("/sessions/{session_id}/dicomweb/pull", response_model=PullOut, status_code=201, tags=["dicomweb"],
             responses=_PROBLEMS)
async def pull(request: Request, caller: Caller, session_id: SessionPath, body: PullIn) -> PullOut:
    """Pull a study (or one of its series) from a configured DICOMweb server into the session: found by QIDO-RS,
    retrieved by WADO-RS, de-identified on arrival; the images are offered with the next question."""
    service = service_of(request)
    session = await service.sessions.open(caller.key_id, session_id)
    request.state.inputs.update(server=body.server, study_uid_sha256=sha256_hex(body.study_uid))
    if body.series_uid is not None:
        request.state.inputs["series_uid_sha256"] = sha256_hex(body.series_uid)
    url = _server_url(request, body.server)
    room = service.settings.max_images_per_session - len(await session.image_ids())
    if room <= 0:
        raise TooManyImages(f"a session may hold {service.settings.max_images_per_session} images")
    library_limit = service.agent.toolbox.settings.limits.max_file_bytes
    limits = DicomwebLimits(max_series=min(DicomwebLimits().max_series, room),
                            max_instance_bytes=min(library_limit, service.settings.max_upload_bytes))
    collecting = _Collecting(session)
    pulled = await pull_study(collecting, url, body.study_uid, body.series_uid, limits=limits)
    if len(collecting.images) > room:
        raise TooManyImages(f"the pull holds {len(collecting.images)} images; the session has room for {room}")
    for artifact in collecting.images:
        session.attach_stored(artifact.id)
        await service.sessions.add_pending(session_id, artifact.id)
    pulls_of(request).add(session_id, body.server, pulled)
    return PullOut(server=body.server, skipped_instances=pulled.skipped_instances, images=[
        ImageOut(image_id=artifact.id, kind=artifact.kind.value, media_type=artifact.media_type,
                 summary=dict(artifact.metadata.get("summary", {})),
                 deidentified=bool(artifact.provenance.get("deidentified"))) for artifact in collecting.images])


@router.post("/sessions/{session_id}/dicomweb/push", response_model=PushOut, tags=["dicomweb"], responses=_PROBLEMS)
async def push(request: Request, caller: Caller, session_id: SessionPath, body: PushIn) -> PushOut:
    """Store the session's results on the pulled images back on the server they came from (STOW-RS): masks as
    DICOM SEG, measurements and verdicts as a DICOM SR, referencing the source instances. Each push stores new
    objects for every result so far."""
    service = service_of(request)
    session = await service.sessions.open(caller.key_id, session_id)
    request.state.inputs["server"] = body.server
    _server_url(request, body.server)
    pulled = pulls_of(request).of(session_id, body.server)
    if not pulled:
        raise NothingPulled("nothing was pulled from that server into this session since the service started; "
                            "pull the study again")
    records = list((await session.state()).get("tool_records", []))
    out = PushOut(server=body.server, segmentations=[], reports=[])
    handled: set[str] = set()
    for source in reversed(pulled):  # an image pulled twice is pushed once, with the latest pull's references
        images = set(source.image_ids) - handled
        handled |= images
        calls = [record for record in records if (record.get("arguments") or {}).get("image_id") in images]
        stored = await push_results(source, calls, service.agent.toolbox.store)
        out.segmentations += [StoredObject(sop_instance_uid=uid, series_instance_uid=series)
                              for uid, series in zip(stored.segmentations, stored.segmentation_series, strict=True)]
        out.reports += [StoredObject(sop_instance_uid=uid, series_instance_uid=series)
                        for uid, series in zip(stored.reports, stored.report_series, strict=True)]
    return out
