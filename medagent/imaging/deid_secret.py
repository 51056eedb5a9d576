"""The installation's de-identification key: ``Settings.deid_secret`` (``MEDAGENT_DEID_SECRET``), or
``deid.secret`` in medagent's home.

The key decides every pseudonym, remapped UID and date offset, so whoever reads it can link
de-identified records back to the originals' identifiers: the file is created owner-only (0600,
content complete before it appears), and an existing file that group or others may read is refused.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path
from typing import Final, Protocol

from medagent.errors import InsecurePermissions, SecretInvalid
from medagent.files import create_private, group_or_world_accessible, private_dir

ENV_VARIABLE: Final = "MEDAGENT_DEID_SECRET"
SECRET_FILE: Final = "deid.secret"
MIN_SECRET_BYTES: Final = 16
_MAX_SECRET_BYTES: Final = 4096
_HINT: Final = "generate one with: python -c 'import secrets; print(secrets.token_hex(32))'"


def check_secret(secret: bytes, where: str) -> bytes:
    if len(secret) < MIN_SECRET_BYTES:
        raise SecretInvalid(f"{where} must be at least {MIN_SECRET_BYTES} bytes; {_HINT}", reason="too_short")
    if len(secret) > _MAX_SECRET_BYTES:
        raise SecretInvalid(f"{where} must be at most {_MAX_SECRET_BYTES} bytes", reason="too_long")
    return secret


class _Secret(Protocol):  # pydantic's SecretStr; typed structurally so that this module needs no pydantic
    def get_secret_value(self) -> str: ...


def configured_secret(value: str) -> bytes:
    """A configured key (``MEDAGENT_DEID_SECRET``) as bytes; :class:`SecretInvalid` when short or malformed."""
    # a value pasted with its line break or quotes is a mistake: refuse it rather than key on it
    if value != value.strip() or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise SecretInvalid(f"{ENV_VARIABLE} has leading/trailing white space or control characters; {_HINT}",
                            reason="malformed")
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:  # bytes that were not UTF-8 in the environment (surrogate escapes)
        raise SecretInvalid(f"{ENV_VARIABLE} is not valid UTF-8 text; {_HINT}", reason="malformed") from None
    return check_secret(encoded, ENV_VARIABLE)


def _read_secret_file(path: Path) -> bytes:
    try:
        handle = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:  # ELOOP: a symbolic link, which could point anywhere
        raise InsecurePermissions(f"{SECRET_FILE} in medagent's home cannot be opened as a regular file "
                                  f"({type(exc).__name__}); replace it with a file readable by its owner only",
                                  reason="unreadable") from None
    with os.fdopen(handle, "rb") as stream:
        status = os.fstat(stream.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise InsecurePermissions(f"{SECRET_FILE} in medagent's home is not a regular file", reason="not_a_file")
        if group_or_world_accessible(status.st_mode):
            raise InsecurePermissions(
                f"{SECRET_FILE} in medagent's home may be read by other users (mode "
                f"{stat.S_IMODE(status.st_mode):03o}); run: chmod 600 on it, and consider it leaked if others "
                f"did read it", reason="group_or_world_readable")
        if hasattr(os, "geteuid") and status.st_uid != os.geteuid():
            raise InsecurePermissions(f"{SECRET_FILE} in medagent's home belongs to another user; chown it to "
                                      f"the user running medagent and chmod 600 it", reason="other_owner")
        secret = stream.read(_MAX_SECRET_BYTES + 1)
    return check_secret(secret, SECRET_FILE)


def load_or_create_secret(data_dir: Path, configured: _Secret | None = None) -> bytes:
    """``configured`` (``Settings.deid_secret``) when given, else ``data_dir/deid.secret``, created on first use.

    Raises :class:`SecretInvalid` (too short, malformed) or :class:`InsecurePermissions` (a secret file
    group or others may read); never echoes the secret or the path.
    """
    if configured is not None:
        return configured_secret(configured.get_secret_value())
    secret_file = Path(data_dir) / SECRET_FILE
    if not secret_file.exists() and not secret_file.is_symlink():
        private_dir(data_dir)
        candidate = secrets.token_bytes(32)
        if create_private(secret_file, candidate):
            return candidate
        # another process created it first: every process must use that one
    return _read_secret_file(secret_file)


__all__ = ["ENV_VARIABLE", "MIN_SECRET_BYTES", "SECRET_FILE", "check_secret", "configured_secret",
           "load_or_create_secret"]
