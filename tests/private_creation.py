"""Proof that files and folders are owner-only from the moment they exist, not only once medagent is done.

Inside :func:`watch_creation`, the umask is 0 (so nothing but the mode passed at creation narrows a file), every
``chmod`` is recorded and does nothing (so a create-then-chmod implementation leaves its files open), and every
file or folder opened for writing or made under ``root`` through Python is checked the instant it exists (so a
temporary file that is open for a moment and then renamed or removed is caught too). Files that C libraries
create (SQLite, faiss) escape the instant check; their final modes still show them.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest


@dataclass
class Creation:
    root: Path
    loose: list[tuple[str, str]] = field(default_factory=list)  # (relative path, mode) open to others at creation
    chmods: list[str] = field(default_factory=list)  # relative paths medagent tried to chmod

    def relative(self, path: object) -> str | None:
        """``path`` relative to root, or None when it lies elsewhere (or is a file descriptor)."""
        if isinstance(path, int) or not isinstance(path, (str, bytes, os.PathLike)):
            return None
        name = os.fsdecode(os.fspath(path))
        absolute = os.path.abspath(name)
        base = str(self.root)
        if absolute != base and not absolute.startswith(base + os.sep):
            return None
        return os.path.relpath(absolute, base)

    def check(self, path: object, mode: int) -> None:
        relative = self.relative(path)
        if relative is not None and stat.S_IMODE(mode) & 0o077:
            self.loose.append((relative, f"{stat.S_IMODE(mode):03o}"))


_WRITING = frozenset("wax+")


@contextlib.contextmanager
def watch_creation(root: Path) -> Iterator[Creation]:
    creation = Creation(Path(os.path.abspath(root)))
    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir

    def chmod(path: object, *args: Any, **kwargs: Any) -> None:
        creation.chmods.append(creation.relative(path) or str(path))

    def fchmod(fd: int, *args: Any, **kwargs: Any) -> None:
        creation.chmods.append(f"fd {fd}")

    def os_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        fd = real_os_open(path, flags, mode, dir_fd=dir_fd)
        if flags & os.O_CREAT and dir_fd is None:
            creation.check(path, os.fstat(fd).st_mode)
        return fd

    def open_(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        stream = real_open(file, mode, *args, **kwargs)
        if _WRITING & set(mode):
            creation.check(file, os.fstat(stream.fileno()).st_mode)
        return stream

    def mkdir(path: Any, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        real_mkdir(path, mode, dir_fd=dir_fd)
        if dir_fd is None:
            creation.check(path, os.stat(path).st_mode)

    previous = os.umask(0)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(os, "chmod", chmod)
            patch.setattr(os, "fchmod", fchmod)
            if hasattr(os, "lchmod"):
                patch.setattr(os, "lchmod", chmod)
            patch.setattr(os, "open", os_open)
            patch.setattr(os, "mkdir", mkdir)
            patch.setattr(builtins, "open", open_)
            patch.setattr(io, "open", open_)  # pathlib's Path.open and write_* go through io.open
            yield creation
    finally:
        os.umask(previous)


def modes_open_to_others(root: Path) -> list[tuple[str, str]]:
    """Every file not 0600 and every folder not 0700 under ``root`` (``root`` included), with its mode."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        wanted = 0o700 if path.is_dir() else 0o600
        if not path.is_symlink() and mode != wanted:
            found.append((str(path.relative_to(root)), f"{mode:03o}"))
    return found
