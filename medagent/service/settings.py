"""Settings of ``medagent serve``: ``MEDAGENT_SERVICE_*`` environment variables, or code.

The planner is a :class:`PlannerConfig` (``MEDAGENT_SERVICE_PLANNER='{"backend": "scripted"}'``, or the
command line's ``--backend``/``--endpoint``/``--model``); everything else the agent needs comes from the
library's own :class:`medagent.config.Settings` (``MEDAGENT_HOME``, weights, image limits).
"""

from __future__ import annotations

from typing import Final

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from medagent.agents.planner import PlannerConfig

MIB: Final = 1024**2


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
    max_question_chars: int = Field(default=8000, ge=1, le=1_000_000)
    max_sessions_per_key: int = Field(default=1000, ge=1)
    max_images_per_session: int = Field(default=32, ge=1)
    max_concurrent_turns: int = Field(default=64, ge=1, description="turns running at once; more get 503")
    shutdown_grace_s: float = Field(default=30.0, ge=0, description="on shutdown, how long running turns may "
                                    "take to finish before they are stopped at their last checkpoint")
    sse_keepalive_s: float = Field(default=15.0, gt=0, description="a comment line on an idle event stream")
