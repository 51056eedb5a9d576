"""A case's images as the case code uses them: attached here from their files (a local run), or already stored,
de-identified, under the ids the driver attached them as (``executor: ray``: the worker reads no image file).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from medagent.errors import UnknownArtifact
from medagent.tools.artifacts import Artifact, ArtifactKind
from medagent.tools.builtin import Toolbox

Attached = Mapping[str, str]
"""A case's image path (``str(path)``, as the case names it) -> the id of its de-identified image artifact."""


def stored_image(toolbox: Toolbox, attached: Attached, path: Path) -> Artifact | None:
    """The stored image the driver attached for ``path``; None when it attached none (a local run). An id the
    store does not hold as an image (it never arrived) is :class:`UnknownArtifact`, never a read of the file."""
    image_id = attached.get(str(path))
    if image_id is None:
        return None
    artifact = toolbox.store.get(image_id)
    if artifact.kind is not ArtifactKind.IMAGE:
        raise UnknownArtifact(f"artifact {image_id!r} is a {artifact.kind.value}, not an image")
    return artifact


def case_image_id(toolbox: Toolbox, attached: Attached, path: Path, modality: str | None) -> str:
    """The id of ``path``'s de-identified image: the one the driver attached, else ``path`` attached here as a
    local run does (the same loader, key and store, hence the same id)."""
    stored = stored_image(toolbox, attached, path)
    return stored.id if stored is not None else toolbox.attach(path, modality).id
