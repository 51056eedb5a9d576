"""Keep DICOM UIDs out of the logs of the libraries a PACS exchange goes through.

httpx logs every request's URL at INFO, and a DICOMweb URL holds the study and series UIDs; highdicom logs the
SOP Instance UIDs of the datasets it copies from. A filter on those loggers writes such records with every
UID-shaped token (three or more dot-separated numbers: UIDs, and with them IP addresses and version numbers)
replaced by ``<uid>``, before any handler sees them. Filters on a logger apply only to records created there,
so each of a library's module loggers gets one.
"""

from __future__ import annotations

import logging
import re

_UID_LIKE = re.compile(r"(?<![\w.])[0-9]+(?:\.[0-9]+){2,}(?![\w.])")


def redact_uids(text: str) -> str:
    return _UID_LIKE.sub("<uid>", text)


class RedactUids(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a record whose arguments do not fit its format: drop the arguments
            message = str(record.msg)
        record.msg, record.args = redact_uids(message), None
        return True


_FILTER = RedactUids()


def guard_loggers(package: str) -> None:
    """Attach the filter to ``package``'s logger and every module logger under it that exists now."""
    names = [package, *(name for name in list(logging.root.manager.loggerDict) if name.startswith(package + "."))]
    for name in names:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
