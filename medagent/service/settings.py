"""Settings of ``medagent serve``: ``MEDAGENT_SERVICE_*`` environment variables, or code.

The planner is a :class:`PlannerConfig` (``MEDAGENT_SERVICE_PLANNER='{"backend": "scripted"}'``, or the
command line's ``--backend``/``--endpoint``/``--model``); everything else the agent needs comes from the
library's own :class:`medagent.config.Settings` (``MEDAGENT_HOME``, weights, image limits).
"""

from __future__ import annotations

import re
from typing import Final

import httpx
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from medagent.agents.planner import PlannerConfig

MIB: Final = 1024**2
MAX_DICOMWEB_SERVERS: Final = 32
DICOMWEB_SERVER_NAME: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEDAGENT_SERVICE_", extra="ignore")

    database_url: str | None = Field(default=None, description="the service's SQL store: keys, audit log, session "
                                     "owners; default sqlite under MEDAGENT_HOME (service.sqlite), or postgresql://")
    planner: PlannerConfig = Field(default_factory=PlannerConfig)
    checkpoint_url: str | None = Field(default=None, description="sessions' checkpoints; default "
                                       "MEDAGENT_HOME/sessions.sqlite, so a restarted service resumes them by id")
    rate_per_s: float = Field(default=10.0, gt=0, le=10_000, description="requests a second per key (a key may "
                                                                         "carry its own)")
    burst: int = Field(default=40, ge=1, le=100_000)
    failed_auth_per_s: float = Field(default=2.0, gt=0, description="failed logins a second per client address")
    failed_auth_burst: int = Field(default=20, ge=1)
    max_upload_bytes: int = Field(default=64 * MIB, gt=0, description="one uploaded image (the library's image "
                                                                      "limits apply as well)")
    max_body_bytes: int = Field(default=MIB, gt=0, description="any other request body")
    max_chat_body_bytes: int | None = Field(default=None, gt=0, description="a POST /v1/chat/completions body (the "
                                            "OpenAI facade: images inline as base64); default 1.4 x max_upload_bytes")
    chat_keep_sessions: bool = Field(default=True, description="keep each chat completion's session, owned by the "
                                     "key, for the native API (counted in max_sessions_per_key); false deletes it "
                                     "once answered")
    max_question_chars: int = Field(default=8000, ge=1, le=1_000_000)
    max_sessions_per_key: int = Field(default=1000, ge=1)
    max_images_per_session: int = Field(default=32, ge=1)
    max_concurrent_turns: int = Field(default=64, ge=1, description="turns running at once; more get 503")
    shutdown_grace_s: float = Field(default=30.0, ge=0, description="on shutdown, how long running turns may "
                                    "take to finish before they are stopped at their last checkpoint")
    sse_keepalive_s: float = Field(default=15.0, gt=0, description="a comment line on an idle event stream")
    dicomweb_servers: dict[str, str] = Field(default_factory=dict, description="the DICOMweb servers (PACS) sessions "
                                             "may pull from and push to, by name: name -> base URL (JSON in "
                                             "MEDAGENT_SERVICE_DICOMWEB_SERVERS, or `medagent serve --dicomweb "
                                             "NAME=URL`). Requests name a server, never a URL")

    @property
    def chat_body_bytes(self) -> int:
        """The bound of a chat completion's body: base64 makes an image a third larger, JSON adds a little."""
        return self.max_chat_body_bytes or int(self.max_upload_bytes * 1.4)

    @field_validator("dicomweb_servers")
    @classmethod
    def _servers(cls, servers: dict[str, str]) -> dict[str, str]:
        if len(servers) > MAX_DICOMWEB_SERVERS:
            raise ValueError(f"at most {MAX_DICOMWEB_SERVERS} DICOMweb servers")
        for name, url in servers.items():
            if not re.fullmatch(DICOMWEB_SERVER_NAME, name):
                raise ValueError("a DICOMweb server name is 1-64 letters, digits, '.', '_' or '-'")
            try:
                parsed = httpx.URL(url)
            except (httpx.InvalidURL, TypeError):
                raise ValueError(f"the URL of DICOMweb server {name!r} cannot be parsed") from None
            if parsed.scheme not in ("http", "https") or not parsed.host or parsed.query or parsed.fragment:
                raise ValueError(f"the URL of DICOMweb server {name!r} must be http(s)://host[:port]/path")
        return servers
