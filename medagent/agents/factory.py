"""The one place a planner is built: from a :class:`PlannerConfig` and its ``backend``, or a factory of yours.

The library (``Agent``), the CLI (``medagent chat/ask --backend``) and studies (``backend:`` per role) all
build their planners here::

    async with PlannerFactory(log_dir=settings.home / "logs") as planners:
        planner = await planners.build(PlannerConfig(backend="scripted"))

Backends (``PlannerConfig.backend``; the names are :data:`medagent.agents.planner.BACKENDS`):

- ``openai``: an OpenAI-compatible server (vLLM, llama.cpp, a hosted API) at ``endpoint``, or several replicas
  of one model at ``endpoints`` (:mod:`medagent.agents.replicas`; load and health shared by the factory's planners).
- ``embedded``: llama.cpp on 127.0.0.1 serving ``gguf_path`` (SmolLM2-135M-Instruct by default); one
  server per GGUF file, shared by every planner of one factory and stopped by :meth:`PlannerFactory.aclose`.
- ``scripted``: no model; deterministic (:mod:`medagent.agents.dry_run`).
- ``auto``: ``openai`` when an endpoint is set, else ``embedded`` (decided by :func:`resolve_backend` only).

A planner factory of your own (study YAML ``backend: {_target_: pkg.make_planner, kwargs: {...}}``) has the
contract :data:`PlannerFactoryFunction`: it is called as ``make_planner(config=config, **kwargs)`` with the
role's :class:`PlannerConfig` (only the fields the study set are marked set) and returns a :class:`Planner`,
or an awaitable of one. The planners it returns are closed with the factory.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Self

from medagent.agents.planner import Backend, Planner, PlannerConfig
from medagent.agents.replicas import ReplicaBoard, ReplicatedPlanner
from medagent.errors import BackendConflict, ComponentContract

PlannerFactoryFunction = Callable[..., Planner | Awaitable[Planner]]
"""``(config: PlannerConfig, **kwargs) -> Planner`` (or an awaitable of one); ``config`` is passed by keyword."""


def resolve_backend(config: PlannerConfig) -> Backend:
    """The backend ``config`` names; ``auto`` is openai with an endpoint, else embedded."""
    if config.backend == "auto":
        return "openai" if config.endpoint_urls else "embedded"
    return config.backend


def backend_problem(config: PlannerConfig) -> str | None:
    """Why ``config``'s backend and endpoint do not fit together, or None."""
    backend = resolve_backend(config)
    if backend == "openai" and not config.endpoint_urls:
        return "backend 'openai' needs an endpoint (the server's base URL, e.g. http://127.0.0.1:8000/v1)"
    if backend == "embedded" and config.endpoint_urls:
        return "backend 'embedded' starts its own server: remove the endpoint, or use backend 'openai'"
    return None


def endpoint_key(config: PlannerConfig) -> str:
    """What counts as one endpoint for concurrency limits: the base URL, the embedded GGUF file, or 'scripted'
    (a planner on ``endpoints`` is limited per replica by its factory's :class:`ReplicaBoard` instead)."""
    backend = resolve_backend(config)
    if backend == "openai" and config.endpoint_urls:
        return ",".join(url.rstrip("/") for url in config.endpoint_urls)
    if backend == "scripted":
        return "scripted"
    return f"embedded:{Path(config.gguf_path).resolve() if config.gguf_path else 'default'}"


def served_planner(config: PlannerConfig, replicas: ReplicaBoard | None = None) -> Planner:
    """The client of the OpenAI-compatible server ``config`` names, or of its replicas (``endpoints``, routed on
    ``replicas``: the load and health a factory's planners share; a board of its own when None)."""
    if config.endpoints:
        return ReplicatedPlanner(config, replicas if replicas is not None else ReplicaBoard())
    from medagent.agents.openai_backend import OpenAICompatiblePlanner

    return OpenAICompatiblePlanner(config)


class PlannerFactory:
    """Builds planners and owns them: :meth:`aclose` closes each and stops the embedded servers it started."""

    def __init__(self, *, log_dir: Path | None = None) -> None:
        """``log_dir``: where embedded servers log (default: MEDAGENT_HOME/logs of the environment)."""
        self.log_dir = log_dir
        self._servers: dict[str, Any] = {}
        self._planners: list[Planner] = []
        self._lock = asyncio.Lock()
        self.replicas = ReplicaBoard()  # every planner on endpoints shares each server's load and health

    async def build(self, config: PlannerConfig, *, factory: PlannerFactoryFunction | None = None,
                    kwargs: Mapping[str, Any] | None = None, wait: bool = True) -> Planner:
        """The planner ``config`` describes, or ``factory(config=config, **kwargs)``. ``wait=False``: an
        embedded server starts in the background and the planner's calls wait for it (an interactive agent
        opens sessions and attaches images meanwhile); otherwise this waits until it serves."""
        if factory is not None:
            planner = await self._custom(factory, config, dict(kwargs or {}))
        else:
            planner = await self._builtin(config, wait)
        self._planners.append(planner)
        return planner

    async def _custom(self, factory: PlannerFactoryFunction, config: PlannerConfig,
                      kwargs: dict[str, Any]) -> Planner:
        made = factory(config=config, **kwargs)
        planner = await made if inspect.isawaitable(made) else made
        if not isinstance(planner, Planner):
            name = getattr(factory, "__qualname__", type(factory).__name__)
            raise ComponentContract(f"the planner factory '{name}' returned a {type(planner).__name__}, not a "
                                    "Planner (config, served_model, complete, aclose)", component="planner")
        return planner

    async def _builtin(self, config: PlannerConfig, wait: bool) -> Planner:
        problem = backend_problem(config)
        if problem is not None:
            raise BackendConflict(problem, backend=config.backend, role=config.role)
        backend = resolve_backend(config)
        if backend == "scripted":
            from medagent.agents.dry_run import scripted_planner

            return scripted_planner(config)
        if backend == "openai":
            return served_planner(config, self.replicas)
        from medagent.agents.embedded import embedded_planner_config
        from medagent.agents.openai_backend import OpenAICompatiblePlanner

        served = embedded_planner_config(config)
        self._server(config.gguf_path)  # registered now: stopped on close even if closed before it starts

        async def connect() -> Planner:
            endpoint, server = await self._embedded_endpoint(config.gguf_path)
            return OpenAICompatiblePlanner(served, endpoint=endpoint, diagnose=server.failure)

        if wait:
            return await connect()
        from medagent.agents.lazy import StartingPlanner

        return StartingPlanner(served, connect)

    def _server(self, gguf_path: str | None) -> Any:
        """The one embedded server of ``gguf_path`` (created, not started, on first use)."""
        from medagent.agents.embedded import EmbeddedLlamaServer

        key = str(Path(gguf_path).resolve()) if gguf_path else "default"
        if key not in self._servers:
            self._servers[key] = EmbeddedLlamaServer(Path(gguf_path) if gguf_path else None, log_dir=self.log_dir)
        return self._servers[key]

    async def _embedded_endpoint(self, gguf_path: str | None) -> tuple[str, Any]:
        async with self._lock:  # one start per server however many planners wait for it
            server = self._server(gguf_path)
            return str(await server.start()), server

    def embedded_servers(self) -> list[Any]:
        """The embedded llama.cpp servers started so far (one per GGUF file)."""
        return list(self._servers.values())

    async def aclose(self) -> None:
        planners, self._planners = self._planners, []
        for planner in planners:
            await planner.aclose()
        servers, self._servers = self._servers, {}
        for server in servers.values():
            server.stop()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()
