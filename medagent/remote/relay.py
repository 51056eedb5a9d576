"""What a remote call wrote (masks, overlays, heatmaps) brought into this side's artifact store, so the ids in its
result resolve here exactly as a local tool's do.

The service is trusted to run its experts, not to pick anything on this machine: the file suffix comes from an
allowlist of media types, the bytes must hash to the sha256 the service declared, a PNG must be a PNG, and the
record is bounded. The id is recomputed here (bytes plus metadata); the result is rewritten to it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
from typing import Any

from medagent.errors import RemoteResponseInvalid
from medagent.remote.protocol import (
    ARTIFACT_MEDIA_TYPES,
    MAX_ARTIFACT_BYTES,
    MAX_ARTIFACT_METADATA_BYTES,
    ArtifactPayload,
)
from medagent.remote.transport import Endpoint
from medagent.tools.artifacts import Artifact, ArtifactKind, ArtifactStore

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


async def bring_artifacts(endpoint: Endpoint, artifact_ids: list[str], output: dict[str, Any],
                          store: ArtifactStore) -> dict[str, Any]:
    """``output`` with each id of ``artifact_ids`` replaced by the id of its copy in ``store``."""
    if not artifact_ids:
        return output
    payloads = await endpoint.get_artifacts(list(dict.fromkeys(artifact_ids)))

    def keep_all() -> list[Artifact]:
        checked = [_checked(payload, endpoint.where) for payload in payloads]  # all, before any is stored
        return [_keep(payload, data, suffix, store, endpoint.where) for payload, (data, suffix) in
                zip(payloads, checked, strict=True)]

    stored = await asyncio.to_thread(keep_all)
    return _replaced(output, {payload.id: artifact.id for payload, artifact in zip(payloads, stored, strict=True)})


def _checked(payload: ArtifactPayload, where: str) -> tuple[bytes, str]:
    """The bytes of ``payload`` and the suffix to store them under; :class:`RemoteResponseInvalid` for anything
    that does not hold."""
    suffix = ARTIFACT_MEDIA_TYPES.get(payload.media_type)
    if suffix is None:
        raise RemoteResponseInvalid(f"the expert service at {where} sent an artifact of a media type medagent does "
                                    f"not keep ({payload.media_type[:64]!r})")
    try:
        data = base64.b64decode(payload.content_b64, validate=True)
    except (binascii.Error, ValueError):
        raise RemoteResponseInvalid(f"the expert service at {where} sent an artifact that is not base64") from None
    if len(data) > MAX_ARTIFACT_BYTES or hashlib.sha256(data).hexdigest() != payload.sha256:
        raise RemoteResponseInvalid(f"the expert service at {where} sent an artifact whose bytes do not match "
                                    "its sha256 or are over the size limit")
    if payload.media_type == "image/png" and not data.startswith(_PNG_SIGNATURE):
        raise RemoteResponseInvalid(f"the expert service at {where} sent an overlay that is not a PNG")
    record = json.dumps([payload.metadata, payload.provenance], default=str)
    if len(record) > MAX_ARTIFACT_METADATA_BYTES:
        raise RemoteResponseInvalid(f"the expert service at {where} sent an artifact record over "
                                    f"{MAX_ARTIFACT_METADATA_BYTES} bytes")
    return data, suffix


def _keep(payload: ArtifactPayload, data: bytes, suffix: str, store: ArtifactStore, where: str) -> Artifact:
    provenance = {**payload.provenance, "ran_on": where}  # where it was made, as this side reached it
    return store.put_bytes(data, ArtifactKind(payload.kind), payload.media_type, suffix, metadata=payload.metadata,
                           provenance=provenance)


def _replaced(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str):
        return ids.get(value, value)
    if isinstance(value, dict):
        return {key: _replaced(item, ids) for key, item in value.items()}
    if isinstance(value, list):
        return [_replaced(item, ids) for item in value]
    return value
