"""Typed errors of the DICOMweb client: one class per way a PACS exchange fails.

Messages name the HTTP status, the limit or the kind of failure, never a URL (it may hold credentials or a
host name), a UID, or anything the server sent back (an error page may quote patient data).
"""

from __future__ import annotations

from typing import ClassVar

from medagent.errors import ErrorFamily, MedagentError


class DicomwebError(MedagentError):
    """A DICOMweb exchange failed; the subclasses say how. Infrastructure unless the request itself was wrong
    (a bad UID or URL, an unknown study, a refusal): those are configuration errors, retrying will not help."""

    family: ClassVar[ErrorFamily] = "infrastructure"
    code = "dicomweb"


class InvalidDicomwebRequest(DicomwebError):
    """A pull or push asked for something malformed: a URL that is not http(s), a UID that is not one."""

    family: ClassVar[ErrorFamily] = "configuration"
    code = "dicomweb_invalid_request"


class DicomwebUnavailable(DicomwebError):
    """The server could not be reached (refused, unknown host, no route, the connection dropped)."""

    code = "dicomweb_unavailable"


class DicomwebTimeout(DicomwebError):
    """The server did not connect, answer or finish within the client's timeouts."""

    code = "dicomweb_timeout"


class DicomwebServerError(DicomwebError):
    """The server answered 5xx: it failed, retrying later may help."""

    code = "dicomweb_server_error"


class DicomwebRejected(DicomwebError):
    """The server refused the request (4xx other than 404): authentication, permissions, a malformed query."""

    family: ClassVar[ErrorFamily] = "configuration"
    code = "dicomweb_rejected"


class DicomwebNotFound(DicomwebError):
    """No study or series with the given UID on the server (404, or a search that found nothing)."""

    family: ClassVar[ErrorFamily] = "configuration"
    code = "dicomweb_not_found"


class DicomwebResponseInvalid(DicomwebError):
    """The answer is not what DICOMweb specifies: malformed multipart or JSON, a wrong media type, a part that is
    no DICOM instance."""

    code = "dicomweb_response_invalid"


class DicomwebTooLarge(DicomwebError):
    """The answer goes past a bound: an instance's bytes, the total bytes, the number of instances or series."""

    code = "dicomweb_too_large"


__all__ = ["DicomwebError", "DicomwebNotFound", "DicomwebRejected", "DicomwebResponseInvalid", "DicomwebServerError",
           "DicomwebTimeout", "DicomwebTooLarge", "DicomwebUnavailable", "InvalidDicomwebRequest"]
