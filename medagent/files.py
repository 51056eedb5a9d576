"""Owner-only files and folders, private from their first byte.

Everything medagent writes under its home (databases, artifacts, reports, indexes, the
de-identification secret, cached case images) may hold patient data or secrets, so it is
created 0600 in folders created 0700. The mode is passed to ``open``/``mkdir`` themselves
(and ``mkstemp``, which uses 0600), never set by a ``chmod`` afterwards: there is no window in
which another user could open the file, and a permissive umask cannot widen it (a umask only
ever removes bits).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from medagent.errors import ConfigurationError

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class OutputNotWritable(ConfigurationError):
    """A file or folder medagent must write cannot be created there (a file where a folder should be, no
    permission, a full disk); the message names the reason, never the path."""

    code = "output_not_writable"


@contextlib.contextmanager
def _writing() -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise OutputNotWritable(f"cannot write there: {exc.strerror or type(exc).__name__}") from exc


def private_dir(path: Path | str) -> Path:
    """Create ``path`` and its missing parents 0700; folders that exist already are left as they are."""
    path = Path(path)
    missing: list[Path] = []
    current = path
    while not current.is_dir():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, PRIVATE_DIR_MODE)
        except FileExistsError:
            if not folder.is_dir():
                raise OutputNotWritable("cannot write there: a file stands where a folder should be") from None
        except OSError as exc:
            raise OutputNotWritable(f"cannot write there: {exc.strerror or type(exc).__name__}") from exc
    return path


def writable_dir(path: Path | str) -> Path:
    """:func:`private_dir`, then proof that it can be written (a folder may exist read-only): for commands that
    check where their output goes before they do the work."""
    folder = private_dir(path)
    with _writing(), tempfile.TemporaryFile(dir=folder):
        pass
    return folder


@contextlib.contextmanager
def replacing(target: Path | str) -> Iterator[Path]:
    """A 0600 temporary file beside ``target`` that replaces it in one rename when the block succeeds.

    Libraries that write by path (pandas, faiss, sqlite, matplotlib) open the existing temporary
    file and truncate it, which keeps its mode. On any failure the temporary file is removed.
    """
    target = Path(target)
    private_dir(target.parent)
    with _writing():
        handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        with _writing():
            os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_private(target: Path | str, data: bytes | str) -> Path:
    """Replace ``target`` atomically with ``data`` (UTF-8 if text); 0600, parents 0700."""
    target = Path(target)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with replacing(target) as temporary, _writing(), open(temporary, "wb") as stream:
        stream.write(payload)
        stream.flush()
        os.fsync(stream.fileno())
    return target


def create_private(target: Path | str, data: bytes) -> bool:
    """Create ``target`` holding ``data`` unless it exists; True if this call created it.

    The content is written to a 0600 temporary file first and then linked into place, which fails
    if the name exists: a concurrent reader sees no file or the whole file, never a half-written one.
    """
    target = Path(target)
    private_dir(target.parent)
    with _writing():
        handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        try:
            os.link(name, target)
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(name)


def touch_private(target: Path | str) -> Path:
    """Create ``target`` empty and 0600 if it does not exist (e.g. before SQLite opens it: SQLite keeps an
    existing file's mode and gives its journal and WAL files the same one)."""
    target = Path(target)
    private_dir(target.parent)
    with _writing(), contextlib.suppress(FileExistsError):
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, PRIVATE_FILE_MODE))
    return target


def group_or_world_accessible(mode: int) -> bool:
    return bool(stat.S_IMODE(mode) & 0o077)


__all__ = ["PRIVATE_DIR_MODE", "PRIVATE_FILE_MODE", "OutputNotWritable", "create_private", "group_or_world_accessible", "private_dir",
           "replacing", "touch_private", "write_private"]
