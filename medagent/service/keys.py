"""API keys of the HTTP service: shown once, stored as a password hash, found by their id, revoked.

A key reads ``mak_<key id>_<secret>``: the key id (12 hex digits, not secret: it names the key in the audit
log and as the owner of its sessions) finds the row, and the secret (32 random bytes) is checked against its
scrypt hash (``hashlib.scrypt``, a salt per key, constant-time comparison). The raw key is never stored and
never logged; it is returned once, by :meth:`KeyStore.create`.

scrypt is slow on purpose (tens of milliseconds), so a key that verified is remembered for
:data:`VERIFIED_TTL_S` seconds by the SHA-256 of the presented key; revocation is read from the database on
every request and takes effect at once, in every process sharing the store.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from pydantic import BaseModel
from sqlalchemy import select, update
from sqlmodel import Field, SQLModel, col

from medagent.errors import ConfigurationError
from medagent.names import check_name
from medagent.service.db import ServiceDatabase, table, utc_now

KEY_PREFIX: Final = "mak"
KEY_ID_PATTERN: Final = r"[0-9a-f]{12}"
_TOKEN = re.compile(rf"{KEY_PREFIX}_({KEY_ID_PATTERN})_([A-Za-z0-9_-]{{43}})")
_KEY_ID = re.compile(KEY_ID_PATTERN)
# scrypt's interactive-login cost (RFC 7914 section 2): 16 MiB and tens of milliseconds per verification
SCRYPT_N: Final = 2**14
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
_MAX_SCRYPT_N: Final = 2**20  # a hash read back is refused beyond this (a tampered row must not stall the service)
VERIFIED_TTL_S: Final = 60.0
MAX_CONCURRENT_HASHES: Final = 4  # scrypt runs at once (16 MiB each): wrong keys cannot take the memory
_MAX_VERIFIED: Final = 4096


class UnknownApiKey(ConfigurationError):
    """No API key with this id (``medagent keys list`` shows them)."""

    code = "unknown_api_key"


class ApiKeyRow(SQLModel, table=True):
    __tablename__ = "service_api_keys"

    key_id: str = Field(primary_key=True, max_length=32)
    name: str = Field(max_length=128)
    secret_hash: str = Field(max_length=300)
    rate_per_s: float | None = None  # None: the service's default
    burst: int | None = None
    created_at: str = Field(max_length=40)
    revoked_at: str | None = Field(default=None, max_length=40)


class KeyInfo(BaseModel):
    """What may be shown about a key: never its secret or hash."""

    key_id: str
    name: str
    created_at: str
    revoked_at: str | None
    rate_per_s: float | None
    burst: int | None


@dataclass(frozen=True)
class CreatedKey:
    info: KeyInfo
    token: str  # the raw key: shown once, stored nowhere


@dataclass(frozen=True)
class Principal:
    """The caller a valid key stands for."""

    key_id: str
    rate_per_s: float | None
    burst: int | None


def hash_secret(secret: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    encode = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${encode(salt).decode()}${encode(digest).decode()}"


def secret_matches(secret: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        cost, block, parallel = int(n), int(r), int(p)
        salt_bytes, expected = base64.b64decode(salt, validate=True), base64.b64decode(digest, validate=True)
    except ValueError:
        return False
    if scheme != "scrypt" or not (2 <= cost <= _MAX_SCRYPT_N and 1 <= block <= 32 and 1 <= parallel <= 4):
        return False
    actual = hashlib.scrypt(secret.encode(), salt=salt_bytes, n=cost, r=block, p=parallel, dklen=len(expected),
                            maxmem=256 * block * cost + 2**20)
    return hmac.compare_digest(actual, expected)


def parse_key(token: str) -> tuple[str, str] | None:
    """The key id and secret of a well-formed key, else None (nothing about the key is echoed anywhere)."""
    found = _TOKEN.fullmatch(token)
    return (found.group(1), found.group(2)) if found else None


class KeyStore:
    TABLES: Final = [table(ApiKeyRow)]

    def __init__(self, database: ServiceDatabase) -> None:
        self.database = database
        self._verified: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._hashing = threading.BoundedSemaphore(MAX_CONCURRENT_HASHES)

    def create(self, name: str, *, rate_per_s: float | None = None, burst: int | None = None) -> CreatedKey:
        check_name(name, "the key name")
        if (rate_per_s is not None and not 0 < rate_per_s <= 10_000) or (burst is not None and not 1 <= burst <= 100_000):
            raise ConfigurationError("a key's rate must be in (0, 10000] per second and its burst in [1, 100000]")
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        row = ApiKeyRow(key_id=key_id, name=name, secret_hash=hash_secret(secret), rate_per_s=rate_per_s,
                        burst=burst, created_at=utc_now())
        with self.database.writing() as connection:
            connection.execute(table(ApiKeyRow).insert().values(**row.model_dump()))
        return CreatedKey(info=_info(row), token=f"{KEY_PREFIX}_{key_id}_{secret}")

    def all(self) -> list[KeyInfo]:
        with self.database.reading() as connection:
            rows = connection.execute(select(table(ApiKeyRow)).order_by(col(ApiKeyRow.created_at))).mappings()
            return [_info(ApiKeyRow.model_validate(dict(row))) for row in rows]

    def revoke(self, key_id: str) -> KeyInfo:
        """Revoke a key (at once, for every process sharing the store); revoking twice keeps the first time."""
        if not _KEY_ID.fullmatch(key_id):
            raise UnknownApiKey("not a key id (12 hex digits; see medagent keys list)")
        keys = table(ApiKeyRow)
        with self.database.writing() as connection:
            connection.execute(update(keys).where(keys.c.key_id == key_id, keys.c.revoked_at.is_(None))
                               .values(revoked_at=utc_now()))
            row = connection.execute(select(keys).where(keys.c.key_id == key_id)).mappings().first()
        if row is None:
            raise UnknownApiKey("no API key with this id")
        with self._lock:
            self._verified.pop(key_id, None)
        return _info(ApiKeyRow.model_validate(dict(row)))

    def verify(self, token: str) -> Principal | None:
        """The principal of a valid, unrevoked key; None otherwise. Blocking (a query, maybe scrypt): call it
        from a worker thread."""
        parsed = parse_key(token)
        if parsed is None:
            return None
        key_id, secret = parsed
        keys = table(ApiKeyRow)
        with self.database.reading() as connection:
            found = connection.execute(select(keys).where(keys.c.key_id == key_id)).mappings().first()
        if found is None:
            return None
        row = ApiKeyRow.model_validate(dict(found))
        if row.revoked_at is not None:
            return None
        fingerprint = hashlib.sha256(token.encode()).digest()
        with self._lock:
            remembered = self._verified.get(key_id)
        valid = (remembered is not None and remembered[1] > time.monotonic()
                 and hmac.compare_digest(remembered[0], fingerprint))
        if not valid:
            with self._hashing:
                matches = secret_matches(secret, row.secret_hash)
            if not matches:
                return None
            with self._lock:
                self._verified[key_id] = (fingerprint, time.monotonic() + VERIFIED_TTL_S)
                self._verified.move_to_end(key_id)
                while len(self._verified) > _MAX_VERIFIED:
                    self._verified.popitem(last=False)
        return Principal(key_id=row.key_id, rate_per_s=row.rate_per_s, burst=row.burst)


def _info(row: ApiKeyRow) -> KeyInfo:
    return KeyInfo(key_id=row.key_id, name=row.name, created_at=row.created_at, revoked_at=row.revoked_at,
                   rate_per_s=row.rate_per_s, burst=row.burst)
