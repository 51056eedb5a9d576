"""A bounded DICOMweb client: QIDO-RS to find a study's series, WADO-RS to retrieve a series instance by instance,
STOW-RS to store derived objects (DICOM SEG, SR) back.

Every exchange is bounded: connect and read timeouts plus a deadline per request, a cap on JSON answers, and on
retrieval the number of instances, each instance's bytes and the pull's total bytes (checked while streaming, so
an oversized answer stops early). Failures are typed (:mod:`medagent.dicomweb.errors`) and their messages hold no
URL, UID or server text. httpx logs each request's URL, which for DICOMweb holds study and series UIDs: its
records are written with every UID replaced (:mod:`medagent.dicomweb.redact`).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Self

import httpx
from pydantic import BaseModel, Field

from medagent.dicomweb.errors import (
    DicomwebError,
    DicomwebNotFound,
    DicomwebRejected,
    DicomwebResponseInvalid,
    DicomwebServerError,
    DicomwebTimeout,
    DicomwebTooLarge,
    DicomwebUnavailable,
    InvalidDicomwebRequest,
)
from medagent.dicomweb.multipart import boundary_of, read_parts
from medagent.dicomweb.redact import guard_loggers

DICOM_JSON = "application/dicom+json"
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+")
_SERIES_UID, _MODALITY, _INSTANCES = "0020000E", "00080060", "00201209"
_FAILED_SOP, _REFERENCED_SOP, _SOP_INSTANCE = "00081198", "00081199", "00081155"


class DicomwebLimits(BaseModel):
    """Bounds on one pull from (or push to) a DICOMweb server."""

    max_series: int = Field(default=64, ge=1, description="image series one pull may retrieve")
    max_instances: int = Field(default=2048, ge=1, description="instances one pull may retrieve, all series")
    max_instance_bytes: int | None = Field(default=None, ge=1, description="one instance; default: the image "
                                           "size limit of medagent's loader (Settings.limits.max_file_bytes)")
    max_total_bytes: int = Field(default=2 * 1024**3, ge=1, description="all instances of one pull together")
    max_json_bytes: int = Field(default=8 * 1024**2, ge=1, description="one QIDO-RS or STOW-RS answer")
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=30.0, gt=0, description="longest silence while an answer streams")
    request_timeout_s: float = Field(default=300.0, gt=0, description="one request, its whole answer included")


def check_uid(value: str, what: str) -> str:
    """A DICOM UID (digits and dots, at most 64 characters); anything else is refused without echoing it."""
    if not isinstance(value, str) or len(value) > 64 or not _UID.fullmatch(value):
        raise InvalidDicomwebRequest(f"the {what} is not a DICOM UID (digits and dots, at most 64 characters)")
    return value


def check_url(url: str) -> str:
    """An http(s) base URL without query or fragment; the trailing slash is dropped."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        raise InvalidDicomwebRequest("the DICOMweb URL cannot be parsed") from None
    if parsed.scheme not in ("http", "https") or not parsed.host or parsed.query or parsed.fragment:
        raise InvalidDicomwebRequest("the DICOMweb URL must be http(s)://host[:port]/path, without query")
    return str(parsed).rstrip("/")


guard_loggers("httpx")


@dataclass(frozen=True)
class _Answer:
    status: int
    content_type: str
    chunks: AsyncIterator[bytes]


@dataclass(frozen=True)
class SeriesInfo:
    """One series as QIDO-RS lists it. ``uid`` is the PACS's own: it is not shown (repr) and never logged."""

    uid: str = field(repr=False)
    modality: str
    instances: int | None


def _value(item: Mapping[str, Any], tag: str) -> Any:
    element = item.get(tag)
    if not isinstance(element, dict):
        return None
    values = element.get("Value")
    return values[0] if isinstance(values, list) and values else None


class DicomwebClient:
    """``async with DicomwebClient(url) as client``. ``headers``: e.g. an ``Authorization`` header for the PACS.
    The server is reached directly: proxies and credentials from the environment (``HTTP_PROXY``, ``.netrc``) are
    not used, and redirects are not followed."""

    def __init__(self, url: str, *, limits: DicomwebLimits | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        self.url = check_url(url)
        self.limits = limits or DicomwebLimits()
        timeout = httpx.Timeout(self.limits.read_timeout_s, connect=self.limits.connect_timeout_s)
        # no redirects: a server that points elsewhere would send the request's UIDs and credentials there
        self._http = httpx.AsyncClient(timeout=timeout, headers=dict(headers or {}), follow_redirects=False,
                                       trust_env=False)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    @asynccontextmanager
    async def _exchange(self, method: str, path: str, *, accept: str, params: Mapping[str, str] | None = None,
                        content: bytes | None = None, content_type: str | None = None
                        ) -> AsyncIterator[_Answer]:
        """One request with its answer open for streaming; every failure typed. The answer's bytes come from
        ``chunks``: each wait is bounded by ``read_timeout_s``, and the whole request by ``request_timeout_s``."""
        deadline = time.monotonic() + self.limits.request_timeout_s
        headers = {"Accept": accept, "Accept-Encoding": "identity"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        try:
            request = self._http.build_request(method, self.url + path, headers=headers, params=params,
                                               content=content)
            response = await self._http.send(request, stream=True)
            try:
                _check_status(response.status_code)
                yield _Answer(response.status_code, response.headers.get("content-type", ""),
                              self._chunks(response, deadline))
            finally:
                await response.aclose()
        except httpx.TimeoutException as exc:
            raise DicomwebTimeout(f"the DICOMweb server did not answer in time ({type(exc).__name__})") from None
        except httpx.DecodingError:
            raise DicomwebResponseInvalid("the DICOMweb answer's content encoding is broken") from None
        except httpx.HTTPError as exc:  # refused, unknown host, dropped connection, broken HTTP framing
            raise DicomwebUnavailable(f"the DICOMweb server could not be reached ({type(exc).__name__})") from None

    async def _chunks(self, response: httpx.Response, deadline: float) -> AsyncIterator[bytes]:
        async for chunk in response.aiter_bytes():
            if time.monotonic() > deadline:
                raise DicomwebTimeout(f"the DICOMweb answer took over {self.limits.request_timeout_s} s",
                                      limit_s=self.limits.request_timeout_s)
            yield chunk

    async def _json(self, path: str, params: Mapping[str, str]) -> list[dict[str, Any]]:
        async with self._exchange("GET", path, accept=DICOM_JSON, params=params) as answer:
            if answer.status == 204:
                return []
            data = await _read_capped(answer.chunks, self.limits.max_json_bytes)
        return _json_list(data)

    async def search_series(self, study_uid: str, series_uid: str | None = None) -> list[SeriesInfo]:
        """QIDO-RS: the study's series (only ``series_uid`` when given); :class:`DicomwebNotFound` when none."""
        params = {"includefield": _INSTANCES}
        if series_uid is not None:
            params["SeriesInstanceUID"] = check_uid(series_uid, "series UID")
        items = await self._json(f"/studies/{check_uid(study_uid, 'study UID')}/series", params)
        found = []
        for item in items:
            uid, modality, count = _value(item, _SERIES_UID), _value(item, _MODALITY), _value(item, _INSTANCES)
            if not isinstance(uid, str) or len(uid) > 64 or not _UID.fullmatch(uid):
                raise DicomwebResponseInvalid("a QIDO-RS answer lists a series without a valid SeriesInstanceUID")
            if series_uid is not None and uid != series_uid:
                continue  # a server that ignores the query filter
            instances = int(count) if isinstance(count, int | str) and str(count).isdigit() else None
            found.append(SeriesInfo(uid=uid, modality=str(modality or "").strip().upper()[:16], instances=instances))
        if not found:
            raise DicomwebNotFound("no such study or series on the DICOMweb server")
        return found

    async def retrieve_series(self, study_uid: str, series_uid: str, *, max_instances: int,
                              max_instance_bytes: int, max_total_bytes: int) -> AsyncGenerator[bytes, None]:
        """WADO-RS: each instance of the series (DICOM Part 10 bytes), streamed under the given bounds."""
        path = f"/studies/{check_uid(study_uid, 'study UID')}/series/{check_uid(series_uid, 'series UID')}"
        async with self._exchange("GET", path, accept='multipart/related; type="application/dicom"') as answer:
            boundary = boundary_of(answer.content_type)
            async for part in read_parts(answer.chunks, boundary, max_parts=max_instances,
                                         max_part_bytes=max_instance_bytes, max_total_bytes=max_total_bytes):
                if part.content_type not in ("application/dicom", ""):
                    raise DicomwebResponseInvalid("a WADO-RS part is not application/dicom")
                yield part.data

    async def store(self, instances: Iterable[bytes]) -> list[str]:
        """STOW-RS: store DICOM Part 10 instances; the SOP Instance UIDs the server says it stored."""
        boundary = uuid.uuid4().hex
        body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
                        for data in instances) + f"--{boundary}--\r\n".encode()
        content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
        async with self._exchange("POST", "/studies", accept=DICOM_JSON, content=body,
                                  content_type=content_type) as answer:
            data = await _read_capped(answer.chunks, self.limits.max_json_bytes)
        items = _json_list(data)  # one DICOM JSON object (some servers wrap it in a list)
        if len(items) != 1:
            raise DicomwebResponseInvalid("the STOW-RS answer is not one DICOM JSON object")
        failed, stored = items[0].get(_FAILED_SOP), items[0].get(_REFERENCED_SOP)
        if isinstance(failed, dict) and failed.get("Value"):
            raise DicomwebRejected("the DICOMweb server refused to store an instance (FailedSOPSequence)")
        values = stored.get("Value") if isinstance(stored, dict) else None
        return [str(_value(item, _SOP_INSTANCE)) for item in values or [] if isinstance(item, dict)]


def _check_status(status: int) -> None:
    if status == 404:
        raise DicomwebNotFound("no such study or series on the DICOMweb server (404)", status=status)
    if 300 <= status < 400:
        raise DicomwebRejected(f"the DICOMweb server redirected ({status}); redirects are not followed",
                               status=status)
    if 400 <= status < 500:
        raise DicomwebRejected(f"the DICOMweb server refused the request ({status})", status=status)
    if status >= 500:
        raise DicomwebServerError(f"the DICOMweb server failed ({status})", status=status)


async def _read_capped(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    kept, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise DicomwebTooLarge(f"the DICOMweb answer is over {limit} bytes", limit=limit)
        kept.append(chunk)
    return b"".join(kept)


def _json_list(data: bytes) -> list[dict[str, Any]]:
    if not data.strip():
        return []
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise DicomwebResponseInvalid("the DICOMweb answer is not valid JSON") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise DicomwebResponseInvalid("the DICOMweb answer is not DICOM JSON (an object or a list of them)")
    return value


__all__ = ["DicomwebClient", "DicomwebError", "DicomwebLimits", "SeriesInfo", "check_uid", "check_url"]
