"""A streaming reader of ``multipart/related`` bodies (RFC 2046) for WADO-RS answers, under hard bounds.

Parts are handed out one at a time as their closing delimiter arrives, so memory holds one part (at most
``max_part_bytes``) plus a delimiter's worth of look-ahead, never the whole answer. Anything that is not a
well-formed body (no boundary, a body that ends before its close delimiter, headers past their cap) is a
:class:`DicomwebResponseInvalid`; a part or a body past its cap, or more parts than allowed, a
:class:`DicomwebTooLarge`. Messages give counts and limits only.
"""

from __future__ import annotations

import email.parser
import email.policy
from collections.abc import AsyncIterator
from dataclasses import dataclass

from medagent.dicomweb.errors import DicomwebResponseInvalid, DicomwebTooLarge

MAX_HEADER_BYTES = 16 * 1024
_MAX_BOUNDARY = 200  # RFC 2046 caps a boundary at 70 characters; a little slack for servers that overstep


@dataclass(frozen=True)
class Part:
    content_type: str
    data: bytes


def boundary_of(content_type: str) -> str:
    """The ``boundary`` parameter of a ``multipart/related`` Content-Type header."""
    message = email.parser.HeaderParser(policy=email.policy.HTTP).parsestr(f"Content-Type: {content_type}\r\n\r\n")
    if message.get_content_maintype() != "multipart":
        raise DicomwebResponseInvalid("the answer is not multipart")
    boundary = message.get_param("boundary")
    if not isinstance(boundary, str) or not 0 < len(boundary) <= _MAX_BOUNDARY or not boundary.isascii() \
            or not boundary.isprintable():
        raise DicomwebResponseInvalid("the multipart answer names no usable boundary")
    return boundary


def _content_type(headers: bytes) -> str:
    text = headers.decode("latin-1")  # every byte decodes: header values are compared, never shown
    message = email.parser.HeaderParser(policy=email.policy.HTTP).parsestr(text + "\r\n\r\n")
    return str(message.get("Content-Type", "") or "").split(";")[0].strip().lower()


async def read_parts(chunks: AsyncIterator[bytes], boundary: str, *, max_parts: int, max_part_bytes: int,
                     max_total_bytes: int) -> AsyncIterator[Part]:
    """Each part of the body ``chunks`` yields, in order; stops at the close delimiter."""
    delimiter = b"--" + boundary.encode("latin-1")
    buffer = bytearray()
    total = 0
    parts = 0
    state = "preamble"
    headers = b""
    body: list[bytes] = []
    body_size = 0

    async for chunk in chunks:
        total += len(chunk)
        if total > max_total_bytes:
            raise DicomwebTooLarge(f"the answer is over {max_total_bytes} bytes", limit=max_total_bytes)
        buffer += chunk
        while True:
            if state == "preamble":
                start = buffer.find(delimiter)
                if start < 0:
                    if len(buffer) > MAX_HEADER_BYTES:
                        raise DicomwebResponseInvalid("no multipart boundary at the start of the answer")
                    break
                after = start + len(delimiter)
                if len(buffer) < after + 2:
                    break
                del buffer[:after]
                state = "delimiter"
            if state == "delimiter":  # just past a delimiter: "--" closes the body, else CRLF opens a part
                if len(buffer) < 2:
                    break
                if buffer[:2] == b"--":
                    return
                end = buffer.find(b"\r\n")
                if end < 0 or buffer[:end].strip(b" \t"):  # transport padding only, then CRLF
                    if end >= 0 or len(buffer) > _MAX_BOUNDARY:
                        raise DicomwebResponseInvalid("malformed multipart delimiter line")
                    break
                del buffer[:end + 2]
                state = "headers"
            if state == "headers":
                end = -2 if buffer.startswith(b"\r\n") else buffer.find(b"\r\n\r\n")  # -2: no headers
                if end == -1:
                    if len(buffer) > MAX_HEADER_BYTES:
                        raise DicomwebResponseInvalid(f"a part's headers are over {MAX_HEADER_BYTES} bytes")
                    break
                if end > MAX_HEADER_BYTES:
                    raise DicomwebResponseInvalid(f"a part's headers are over {MAX_HEADER_BYTES} bytes")
                headers = bytes(buffer[:max(end, 0)])
                del buffer[:end + 4]
                parts += 1
                if parts > max_parts:
                    raise DicomwebTooLarge(f"the answer holds more than {max_parts} parts", limit=max_parts)
                body, body_size, state = [], 0, "body"
            if state == "body":
                closing = b"\r\n" + delimiter
                end = buffer.find(closing)
                taken = end if end >= 0 else max(0, len(buffer) - len(closing) + 1)  # keep a delimiter's look-ahead
                if body_size + taken > max_part_bytes:
                    raise DicomwebTooLarge(f"an instance is over {max_part_bytes} bytes", limit=max_part_bytes)
                if taken:
                    body.append(bytes(buffer[:taken]))
                    body_size += taken
                if end < 0:
                    del buffer[:taken]
                    break
                del buffer[:end + len(closing)]
                yield Part(content_type=_content_type(headers), data=b"".join(body))
                body, body_size = [], 0
                state = "delimiter"
    raise DicomwebResponseInvalid("the multipart answer ended before its closing boundary")
