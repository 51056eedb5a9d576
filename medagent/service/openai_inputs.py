"""What a chat completion request gives the agent: its images (decoded from data URLs) and one question.

The facade is stateless, as OpenAI's API is: each request carries the whole conversation. The agent is asked
the last message's text (it must be the user's); the messages before it are given with it as context, fenced
and bounded: system (and developer) messages first, then the most recent of the others, until the service's
``max_question_chars`` is reached (older ones are left out, and the question says how many). Every image of
the conversation's user messages is attached, once each, in order.

Images come inline only, as ``data:<media type>;base64,<data>`` URLs. An ``http(s)`` URL is refused with a
``400``: the service never fetches a URL a request names (no requests on a caller's behalf). Each decoded image
is bounded like an upload (``max_upload_bytes``) before it is decoded.
"""

from __future__ import annotations

import base64
import binascii
from typing import Final

from medagent.service.openai_errors import ContextTooLong, ImageURLNotSupported
from medagent.service.openai_schemas import ChatMessage
from medagent.service.problems import InvalidRequest, PayloadTooLarge, TooManyImages, UnsupportedMediaType

IMAGE_MEDIA_TYPES: Final = frozenset({"image/png", "image/jpeg", "image/jpg", "application/dicom",
                                      "application/octet-stream", "application/gzip", "application/x-nifti"})
OPEN: Final = "<<<conversation"
CLOSE: Final = "conversation>>>"
_HEADER: Final = "Earlier messages of this conversation, as the client sent them (the current message follows):"
_MARGIN: Final = 200  # the header, the fence and the omission note


def decode_image(url: str, limit: int) -> tuple[bytes, str]:
    """The bytes and media type of a ``data:`` URL image, at most ``limit`` bytes once decoded."""
    if url[:5].lower() != "data:":
        raise ImageURLNotSupported("images must be sent inline as data: URLs (base64); the service fetches no URL")
    header, comma, payload = url[5:].partition(",")
    if not comma or len(header) > 200:
        raise InvalidRequest("a data: URL image needs a media type, ';base64' and a comma before its data")
    fields = [field.strip().lower() for field in header.split(";")]
    if "base64" not in fields[1:]:
        raise InvalidRequest("a data: URL image must be base64-encoded (data:<type>;base64,<data>)")
    media_type = fields[0]
    if media_type not in IMAGE_MEDIA_TYPES:
        raise UnsupportedMediaType(f"send images as one of {', '.join(sorted(IMAGE_MEDIA_TYPES))}")
    if len(payload) > 4 * (limit // 3 + 1):  # over the limit whatever it decodes to: not decoded at all
        raise PayloadTooLarge(f"an image may have at most {limit} bytes")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("an image's data: URL is not valid base64") from None
    if len(data) > limit:
        raise PayloadTooLarge(f"an image may have at most {limit} bytes")
    if not data:
        raise InvalidRequest("an image's data: URL is empty")
    return data, media_type


def image_urls(messages: list[ChatMessage], max_images: int) -> list[str]:
    """The image URLs of the conversation, in order, each once; only user messages may carry images."""
    found: list[str] = []
    for message in messages:
        images = message.images()
        if images and message.role != "user":
            raise InvalidRequest(f"only user messages may carry images (a {message.role} message has some)")
        for image in images:
            if image.url not in found:
                found.append(image.url)
    if len(found) > max_images:
        raise TooManyImages(f"a conversation may carry at most {max_images} images")
    return found


def _line(message: ChatMessage) -> str:
    images = len(message.images())
    attached = f" [{images} image{'s' if images > 1 else ''} attached]" if images else ""
    text = message.text().replace(CLOSE, "conversation>>").strip()
    return f"{message.role}: {text}{attached}" if text or attached else ""


def question(messages: list[ChatMessage], max_chars: int) -> str:
    """The text the agent is asked: the last (user) message, after the earlier ones as bounded context."""
    *earlier, last = messages
    if last.role != "user":
        raise InvalidRequest("the last message must be the user's: it is what the agent is asked")
    asked = last.text().strip()
    if not asked:
        raise InvalidRequest("the last user message has no text: ask a question about the images")
    if len(asked) > max_chars:
        raise ContextTooLong(f"the last user message may have at most {max_chars} characters")
    lines = [(index, _line(message), message.role in ("system", "developer")) for index, message
             in enumerate(earlier)]
    lines = [(index, text, pinned) for index, text, pinned in lines if text]
    budget = max_chars - len(asked) - len(_HEADER) - _MARGIN
    if not lines or budget <= 0:
        return asked
    kept: list[tuple[int, str]] = []
    # system messages first (they say what the client wants), then the most recent of the others
    for index, text, _pinned in [*(line for line in lines if line[2]), *reversed([line for line in lines
                                                                                  if not line[2]])]:
        if budget <= 1:
            break
        clipped = text if len(text) + 1 <= budget else text[:budget - 2] + "…"
        kept.append((index, clipped))
        budget -= len(clipped) + 1
    left_out = len(lines) - len(kept)
    context = [text for _index, text in sorted(kept)]
    note = [f"[{left_out} earlier message{'s' if left_out > 1 else ''} left out]"] if left_out else []
    return "\n".join([_HEADER, OPEN, *note, *context, CLOSE, "", asked])
