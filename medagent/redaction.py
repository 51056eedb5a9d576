"""Secrets out of everything medagent stores, logs or reports.

A study's configuration carries planner ``api_key`` values and may carry database or endpoint
URLs with passwords. :func:`redact` returns a copy with every such value replaced by
``REDACTED``: values under secret-looking keys (``api_key``, ``password``, ``token``,
``client_secret``...), the password in a URL's user info, secret query parameters, and
``key=value`` pairs with a secret key inside free text. Keys such as ``max_tokens`` are not
secrets: a key is secret when one of its words (split on ``_``, ``-``, ``.``, case changes) is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "***"

_SECRET_WORDS = frozenset({"password", "passwd", "pwd", "passphrase", "secret", "token", "apikey", "credential",
                           "credentials", "authorization", "cookie", "privatekey", "accesskey", "secretkey"})
_WORD_SPLIT = re.compile(r"[_\-.\s]+|(?<=[a-z0-9])(?=[A-Z])")
# key=value or key: value pairs inside free text (libpq conninfo strings, command lines, headers)
_INLINE_SECRET = re.compile(
    r"(?i)\b((?:[a-z0-9]+[_\-.])*(?:password|passwd|pwd|passphrase|secret|token|api[_\-]?key|access[_\-]?key|"
    r"private[_\-]?key|authorization)\b\s*[=:]\s*)(?:bearer\s+)?(\"[^\"]*\"|'[^']*'|[^\s,;&\"']+)")
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s\"'<>]+")


def is_secret_key(key: str) -> bool:
    """True for ``api_key``, ``apiKey``, ``DB_PASSWORD``, ``client-secret``; False for ``max_tokens``."""
    words = [w.lower() for w in _WORD_SPLIT.split(key) if w]
    joined = "".join(words)
    return any(word in _SECRET_WORDS for word in words) or any(
        joined.endswith(suffix) for suffix in ("apikey", "password", "secret", "token", "privatekey", "accesskey"))


def redact_url(url: str) -> str:
    """``scheme://user:***@host/...?token=***``; text that is not a URL is returned unchanged."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return REDACTED  # unparseable (e.g. a bad port): it may still hold credentials
    netloc = parts.netloc
    if password is not None:
        userinfo, _, hostinfo = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{REDACTED}@{hostinfo}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(is_secret_key(key) for key, _ in pairs):
            query = urlencode([(key, REDACTED if is_secret_key(key) else value) for key, value in pairs], safe="*")
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """Credentials in URLs and ``secret=value`` pairs inside a string."""
    text = _URL.sub(lambda match: redact_url(match.group(0)), text)
    return _INLINE_SECRET.sub(lambda match: match.group(1) + REDACTED, text)


def redact(value: Any) -> Any:
    """A copy of ``value`` (dicts, lists, tuples, strings) with every secret replaced by ``REDACTED``.

    ``None`` and empty values under secret keys stay as they are, so a report still shows that no
    key was set.
    """
    if isinstance(value, Mapping):
        return {key: (REDACTED if isinstance(key, str) and is_secret_key(key) and item not in (None, "")
                      else redact(item)) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact(item) for item in value)
    if isinstance(value, str):
        return redact_text(value)
    return value


__all__ = ["REDACTED", "is_secret_key", "redact", "redact_text", "redact_url"]
