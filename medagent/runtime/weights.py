"""Weight files: resolved from configured folders, never fetched, hashed for provenance."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel

from medagent.errors import ChecksumMismatch, WeightsUnavailable

_hash_lock = threading.Lock()
_hash_cache: dict[tuple[str, int, int], str] = {}


class WeightsFile(BaseModel):
    """A weight file an expert needs, as its publisher names it."""

    file_name: str
    url: str | None = None
    sha256: str | None = None  # pinned where the publisher states one

    def locate(self, directories: Sequence[Path]) -> Path | None:
        """The file in the first of ``directories`` that holds it (the order is the user's precedence)."""
        for directory in directories:
            candidate = Path(directory).expanduser() / self.file_name
            if candidate.is_file():
                return candidate
        return None

    def require(self, directories: Sequence[Path], expert: str) -> Path:
        """The file's path, or :class:`WeightsUnavailable` naming the folders searched, in order, and where
        to put the file (the first of them)."""
        found = self.locate(directories)
        if found is None:
            searched = [str(Path(d).expanduser()) for d in directories]
            target = Path(searched[0]) / self.file_name if searched else None
            fetch = f" A connected machine can download it from {self.url} ." if self.url else ""
            put = f" Put it at {target}." if target else ""
            raise WeightsUnavailable(
                f"{expert}: weights file {self.file_name} not found in {', '.join(searched) or 'no folder'} "
                f"(searched in this order).{put}{fetch}",
                expert=expert,
                file_name=self.file_name,
                expected_path=str(target) if target else None,
                searched=searched,
                url=self.url,
            )
        if self.sha256 is not None:
            actual = sha256_file(found)
            if actual != self.sha256:
                raise ChecksumMismatch(
                    f"{expert}: {found.name} has sha256 {actual}, expected {self.sha256}", file_name=self.file_name
                )
        return found


def sha256_file(path: Path) -> str:
    """sha256 of a file, cached by (path, size, mtime) so large weights are hashed once per process."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _hash_lock:
        if key in _hash_cache:
            return _hash_cache[key]
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    with _hash_lock:
        _hash_cache[key] = digest.hexdigest()
    return _hash_cache[key]
