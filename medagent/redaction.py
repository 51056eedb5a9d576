"""Secrets out of everything medagent stores, logs or reports.

A study's configuration carries planner ``api_key`` values and may carry database or endpoint
URLs with credentials. :func:`redact` returns a copy with every such value replaced by
``REDACTED``: values under secret-looking keys (``api_key``, ``password``, ``token``,
``client_secret``...), a URL's whole user info (a password, or a token given as the user name),
the values of the query parameters in :data:`SECRET_QUERY_PARAMETERS` (and of any whose name is a
secret key), ``key=value`` pairs with a secret key inside free text, and bearer tokens. Keys such
as ``max_tokens`` are not secrets: a key is secret when one of its words (split on ``_``, ``-``,
``.``, case changes) is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_plus, urlsplit, urlunsplit

REDACTED = "***"

_SECRET_WORDS = frozenset({"password", "passwd", "pwd", "passphrase", "secret", "token", "apikey", "credential",
                           "credentials", "authorization", "cookie", "privatekey", "accesskey", "secretkey"})
#: Query parameters whose value is a credential although their name is no secret word (compared lower-case):
#: API keys, signed-URL signatures and credentials (S3, GCS, Azure SAS), OAuth tokens and codes.
SECRET_QUERY_PARAMETERS = frozenset({
    "key", "api_key", "apikey", "api-key", "access_key", "token", "access_token", "refresh_token", "id_token",
    "auth", "auth_token", "code", "sig", "signature", "x-amz-signature", "x-amz-credential",
    "x-amz-security-token", "x-goog-signature", "x-goog-credential", "awsaccesskeyid", "password", "pass",
    "passwd", "pwd", "secret", "client_secret"})
_WORD_SPLIT = re.compile(r"[_\-.\s]+|(?<=[a-z0-9])(?=[A-Z])")
_AUTH_SCHEME = r"(?:bearer|basic|token|digest)\s+"
# key=value or key: value pairs inside free text (libpq conninfo strings, command lines, headers); an
# authorization scheme word stays, the credential after it goes
_INLINE_SECRET = re.compile(
    r"(?i)\b((?:[a-z0-9]+[_\-.])*(?:password|passwd|pwd|passphrase|secret|token|api[_\-]?key|access[_\-]?key|"
    r"private[_\-]?key|authorization)\b\s*[=:]\s*(?:" + _AUTH_SCHEME + r")?)(\"[^\"]*\"|'[^']*'|[^\s,;&\"']+)")
# "Bearer <token>" anywhere: a credential is 8+ token68 characters with a digit or punctuation in them, so that
# prose ("bearer tokens", "Bearer authentication") is left alone
_BEARER = re.compile(r"(?i)\b(bearer\s+)(?=[A-Za-z0-9\-._~+/]*[0-9\-._~+/])[A-Za-z0-9\-._~+/]{8,}=*")
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s\"'<>]+")


def is_secret_key(key: str) -> bool:
    """True for ``api_key``, ``apiKey``, ``DB_PASSWORD``, ``client-secret``; False for ``max_tokens``."""
    words = [w.lower() for w in _WORD_SPLIT.split(key) if w]
    joined = "".join(words)
    return any(word in _SECRET_WORDS for word in words) or any(
        joined.endswith(suffix) for suffix in ("apikey", "password", "secret", "token", "privatekey", "accesskey"))


def is_secret_parameter(name: str) -> bool:
    """True for the query parameters of :data:`SECRET_QUERY_PARAMETERS` (any case) and secret-looking keys."""
    name = unquote_plus(name).strip()
    return name.lower() in SECRET_QUERY_PARAMETERS or is_secret_key(name)


def _redact_pairs(query: str) -> str:
    """``a=1&sig=x`` -> ``a=1&sig=***``: only secret values change; the rest keeps its exact encoding."""
    pairs = []
    for pair in query.split("&"):
        name, equals, _ = pair.partition("=")
        pairs.append(f"{name}={REDACTED}" if equals and is_secret_parameter(name) else pair)
    return "&".join(pairs)


def redact_url(url: str) -> str:
    """``scheme://***@host/...?token=***``; text that is not a URL is returned unchanged.

    The user info goes whole, with or without a password: ``https://sk-abc@host/`` carries its token
    as the user name."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED  # unparseable (e.g. a broken IPv6 host): it may still hold credentials
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
    query, fragment = _redact_pairs(parts.query), _redact_pairs(parts.fragment)  # OAuth returns tokens in both
    if (netloc, query, fragment) == (parts.netloc, parts.query, parts.fragment):
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def redact_text(text: str) -> str:
    """Credentials in URLs, ``secret=value`` pairs and bearer tokens inside a string."""
    text = _URL.sub(lambda match: redact_url(match.group(0)), text)
    text = _INLINE_SECRET.sub(lambda match: match.group(1) + REDACTED, text)
    return _BEARER.sub(lambda match: match.group(1) + REDACTED, text)


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


__all__ = ["REDACTED", "SECRET_QUERY_PARAMETERS", "is_secret_key", "is_secret_parameter", "redact", "redact_text",
           "redact_url"]
