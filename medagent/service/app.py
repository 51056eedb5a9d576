"""The ASGI app of ``medagent serve`` (FastAPI): one :class:`medagent.api.Agent` behind keys, limits and audit.

    app = create_app(ServiceSettings(planner=PlannerConfig(backend="scripted")))
    uvicorn.run(app, host="127.0.0.1", port=8080)

The app's lifespan opens the service store (keys, audit log, session owners), starts the agent (its
checkpoints under ``MEDAGENT_HOME``, so sessions survive a restart) and, on shutdown, lets running turns
finish for ``shutdown_grace_s`` before stopping the rest at their last checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from medagent import __version__
from medagent.agents.planner import Planner
from medagent.api import Agent, AgentConfig
from medagent.config import Settings
from medagent.errors import MedagentError
from medagent.service import dicomweb_routes, openai_facade, problems
from medagent.service.audit import AuditEntry, AuditLog
from medagent.service.auth import Caller
from medagent.service.db import ServiceDatabase
from medagent.service.keys import KeyStore
from medagent.service.middleware import ServiceMiddleware
from medagent.service.ratelimit import RateLimiter
from medagent.service.routes import router
from medagent.service.schemas import Readiness
from medagent.service.sessions import Sessions
from medagent.service.settings import ServiceSettings
from medagent.service.turns import Turns
from medagent.tools.spec import Tool

log = logging.getLogger("medagent.service.app")


@dataclass
class Service:
    settings: ServiceSettings
    database: ServiceDatabase
    keys: KeyStore
    audit: AuditLog
    agent: Agent
    sessions: Sessions
    turns: Turns
    limiter: RateLimiter
    failed_logins: RateLimiter
    accepting: bool = True  # False once shutdown begins: readiness turns 503 while running turns drain

    async def record(self, entry: AuditEntry) -> None:
        try:
            await asyncio.to_thread(self.audit.append, entry)
        except Exception as exc:  # noqa: BLE001 - a store that fails is logged, by type, and seen by readiness
            log.error("audit record not written", extra={"fields": {"exception_type": type(exc).__name__}})

    async def readiness(self) -> Readiness:
        database = await asyncio.to_thread(self.database.ping)
        return Readiness(ready=database and self.accepting, database=database, agent=self.accepting,
                         turns_running=self.turns.running)


def open_store(settings: ServiceSettings, library: Settings) -> tuple[ServiceDatabase, KeyStore, AuditLog]:
    """The service store with its tables: for the app and for ``medagent keys``/``medagent audit``."""
    database = ServiceDatabase.open(settings.database_url, library.home,
                                    [*KeyStore.TABLES, *AuditLog.TABLES, *Sessions.TABLES])
    return database, KeyStore(database), AuditLog(database)


def create_app(settings: ServiceSettings | None = None, *, library_settings: Settings | None = None,
               tools: Iterable[Tool[Any, Any]] = (), planner: Planner | None = None) -> FastAPI:
    """The service's app. ``tools``: your own tools beside the built-in and plugin ones; ``planner``: a planner
    object instead of the one ``settings.planner`` describes (tests, embedding)."""
    settings = settings or ServiceSettings()
    library = library_settings or Settings()
    extra_tools = list(tools)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database, keys, audit = await asyncio.to_thread(open_store, settings, library)
        config = AgentConfig(planner=settings.planner, checkpoint_url=settings.checkpoint_url)
        try:
            async with Agent(config, settings=library, tools=extra_tools, planner=planner) as agent:
                service = Service(settings=settings, database=database, keys=keys, audit=audit, agent=agent,
                                  sessions=Sessions(database, agent, max_per_key=settings.max_sessions_per_key),
                                  turns=Turns(settings.max_concurrent_turns, lambda entry: service.record(entry)),
                                  limiter=RateLimiter(settings.rate_per_s, settings.burst),
                                  failed_logins=RateLimiter(settings.failed_auth_per_s, settings.failed_auth_burst))
                app.state.service = service
                log.info("service started", extra={"fields": {"version": __version__}})
                try:
                    yield
                finally:
                    service.accepting = False
                    await service.turns.shutdown(settings.shutdown_grace_s)
                    log.info("service stopped")
        finally:
            database.close()

    app = FastAPI(title="medagent", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None, description="medagent's agent over HTTP: sessions, de-identified image uploads, "
                                                "questions answered as JSON or Server-Sent Events, approvals, "
                                                "artifacts. Every route but health and readiness needs an API key.")
    app.include_router(router)
    app.include_router(dicomweb_routes.router)
    app.include_router(openai_facade.router)

    @app.get("/v1/openapi.json", include_in_schema=False)
    async def openapi(_caller: Caller) -> JSONResponse:
        return JSONResponse(app.openapi())

    async def record(entry: AuditEntry) -> None:
        service: Service | None = getattr(app.state, "service", None)
        if service is not None:
            await service.record(entry)

    app.add_exception_handler(MedagentError, problems.medagent_error)
    app.add_exception_handler(problems.TurnFailed, problems.turn_failed)
    app.add_exception_handler(HTTPException, problems.http_error)
    app.add_exception_handler(RequestValidationError, problems.validation_error)
    app.add_exception_handler(Exception, problems.unexpected_error)
    app.add_middleware(ServiceMiddleware, max_body_bytes=settings.max_body_bytes,
                       max_upload_bytes=settings.max_upload_bytes, record=record,
                       max_chat_body_bytes=settings.chat_body_bytes)
    return app
