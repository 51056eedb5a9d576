"""Names that become keys and file names (run ids, study names, session ids), and output paths.

A name is ``[A-Za-z0-9._-]``, at most :data:`MAX_NAME_LENGTH` characters, and does not start with
'.': it can never be a path separator, a parent reference, a hidden file, or console markup. Output
paths are resolved (symlinks included) and must stay inside the folder they were meant for.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

from medagent.errors import InvalidName, PathOutsideHome

MAX_NAME_LENGTH: Final = 128
NAME_PATTERN: Final = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$"
_NAME = re.compile(NAME_PATTERN)
NAME_RULE: Final = (f"use letters, digits, '.', '_' and '-' only, at most {MAX_NAME_LENGTH} characters, "
                    "not starting with '.' or '-'")


def name_problem(value: object) -> str | None:
    """Why ``value`` is not a safe name, or None when it is."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        return f"not a valid name: {NAME_RULE}"
    return None


def check_name(value: str, what: str) -> str:
    """``value`` when it is a safe name; :class:`InvalidName` otherwise (the value is not echoed)."""
    problem = name_problem(value)
    if problem is not None:
        raise InvalidName(f"{what} is {problem}", what=what)
    return value


def confined(root: Path, relative: str | Path, what: str) -> Path:
    """``root / relative`` resolved, refused unless it stays inside ``root`` (no absolute path, no '..',
    no symlink leading out)."""
    candidate = Path(relative)
    if candidate.is_absolute() or ".." in candidate.parts or str(relative).strip() == "":
        raise PathOutsideHome(f"{what} must be a relative path inside its folder, without '..'", what=what)
    base = root.resolve()
    target = (base / candidate).resolve()
    if not target.is_relative_to(base) or target == base:
        raise PathOutsideHome(f"{what} resolves outside its folder", what=what)
    return target
