"""Expert services as Ray Serve deployments: the FastAPI app of ``medagent expert serve`` (:func:`create_app`), built
in each replica, its predictions micro-batched by Ray's ``@serve.batch`` across concurrent requests. The remote-expert
client reaches it unchanged at ``http://HOST:PORT/ROUTE_PREFIX`` (Serve's HTTP proxy); one route is added:

    GET /v1/metrics    this replica's batching: requests, batches, items, batch sizes (the plain service has none)

Ray's own batching metrics (``serve_actual_batch_size``, ``serve_batches_processed``; ``function_name`` is
:data:`BATCH_FUNCTION`) reach Prometheus as Ray's metrics do. Ray is imported only where it runs::

    from medagent.remote.ray_serve import expert_application
    serve.run(expert_application(ExpertApp(name="cxr", experts=["classify_chest_xray"], num_gpus=0.5)),
              name="cxr", route_prefix="/cxr")
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from fastapi import FastAPI
from fastapi.responses import Response
from pydantic import BaseModel, Field

from medagent.config import Settings
from medagent.errors import ConfigurationError
from medagent.remote.app import create_app
from medagent.remote.protocol import (
    MAX_ITEMS,
    PREFIX,
    PROTOCOL_VERSION,
    BatchRequest,
    BatchResponse,
    CallItem,
    ItemResult,
)
from medagent.remote.ray_config import ExpertApp, ExpertDeployment, parse_deployment, serve_config
from medagent.remote.service import ExpertService, wire_error
from medagent.remote.sources import resolve
from medagent.tools.spec import Tool

if TYPE_CHECKING:
    from ray.serve import Application, Deployment

BATCH_FUNCTION = "medagent_expert_batch"
CONNECT_TIMEOUT_S = 5.0  # a cluster address that accepts no connection in this long is refused
_Call = tuple[str, CallItem]  # a tool's name and one of its calls


class BatchingMetrics(BaseModel):
    """One replica's batching since it started."""

    app: str
    deployment: str
    replica: str
    max_batch_size: int
    batch_wait_timeout_s: float
    requests: int = Field(description="batch requests answered (each one or more items)")
    batches: int = Field(description="batches Ray's batcher formed from their items")
    items: int
    mean_batch_size: float
    sizes: dict[int, int] = Field(description="batch size -> batches of that size")


class ServeBatchedService(ExpertService):
    """The expert service whose request items go one by one to Ray's batcher: items of concurrent requests (from any
    number of clients) travel together into one :meth:`ExpertService.predict` per tool, that is one model batch."""

    def __init__(self, tools: list[Tool[Any, Any]], *, max_batch_size: int, batch_wait_timeout_s: float,
                 max_concurrent_batches: int, **options: Any) -> None:
        from ray import serve

        super().__init__(tools, **options)
        self.max_batch_size, self.batch_wait_timeout_s = max_batch_size, batch_wait_timeout_s
        self.requests = 0
        self.sizes: Counter[int] = Counter()

        async def medagent_expert_batch(calls: list[_Call]) -> list[ItemResult]:
            return await self._run_batch(calls)

        medagent_expert_batch.__name__ = BATCH_FUNCTION  # Ray tags its batch metrics with the function's name
        self._batched = serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s,
                                    max_concurrent_batches=max_concurrent_batches)(medagent_expert_batch)

    async def predict(self, name: str, request: BatchRequest) -> BatchResponse:
        if request.protocol != PROTOCOL_VERSION:
            return await super().predict(name, request)  # refused there, typed
        self.registry.get(name)  # UnknownTool for the whole request, before any item waits for a batch
        self.requests += 1
        results = await asyncio.gather(*(self._batched((name, item)) for item in request.items))
        return BatchResponse(protocol=PROTOCOL_VERSION, items=list(results))

    async def _run_batch(self, calls: list[_Call]) -> list[ItemResult]:
        self.sizes[len(calls)] += 1
        by_tool: dict[str, list[int]] = {}
        for index, (name, _) in enumerate(calls):
            by_tool.setdefault(name, []).append(index)
        results: list[ItemResult] = [ItemResult(ok=False)] * len(calls)

        async def run_tool(name: str, indices: list[int]) -> None:
            try:
                answer = await ExpertService.predict(self, name, BatchRequest(
                    protocol=PROTOCOL_VERSION, items=[calls[index][1] for index in indices]))
                answered = answer.items
            except Exception as exc:  # noqa: BLE001 - one tool's failure is its items' typed error, not the batch's
                answered = [ItemResult(ok=False, error=wire_error(exc))] * len(indices)
            for index, result in zip(indices, answered, strict=True):
                results[index] = result

        await asyncio.gather(*(run_tool(name, indices) for name, indices in by_tool.items()))
        return results


class ExpertReplica:
    """One replica of an expert application: its service built here, from the replica's own settings (the
    ``MEDAGENT_*`` of its node and runtime_env), and its HTTP face built on it (Serve's late-bound ingress)."""

    def __init__(self, app: dict[str, Any], tools: Sequence[Tool[Any, Any]] = ()) -> None:
        from ray import serve

        options = ExpertApp.model_validate(app)
        settings = Settings()
        found, closers = resolve(options.experts, settings) if options.experts else ([], [])
        wait_s = (options.batch_wait_timeout_s if options.batch_wait_timeout_s is not None
                  else settings.max_batch_wait_ms / 1000.0)
        self.service = ServeBatchedService(
            [*found, *tools], limits=settings.limits, closers=closers, artifact_ttl_s=options.artifact_ttl_s,
            max_batch_size=min(options.max_batch_size or settings.max_batch_size, MAX_ITEMS),
            batch_wait_timeout_s=wait_s, max_concurrent_batches=options.max_concurrent_batches)
        context = serve.get_replica_context()
        self.names = (context.app_name, context.deployment, context.replica_id.unique_id)

    def __serve_build_asgi_app__(self) -> FastAPI:
        app = create_app(self.service)

        @app.get(f"{PREFIX}/metrics")
        async def metrics() -> Response:
            return Response(self.metrics().model_dump_json(), media_type="application/json")

        return app

    def metrics(self) -> BatchingMetrics:
        service = self.service
        batches, items = sum(service.sizes.values()), sum(size * count for size, count in service.sizes.items())
        app, deployment, replica = self.names
        return BatchingMetrics(app=app, deployment=deployment, replica=replica, max_batch_size=service.max_batch_size,
                               batch_wait_timeout_s=service.batch_wait_timeout_s, requests=service.requests,
                               batches=batches, items=items, mean_batch_size=items / batches if batches else 0.0,
                               sizes=dict(sorted(service.sizes.items())))

    def __del__(self) -> None:  # Serve calls it when the replica stops
        service = getattr(self, "service", None)  # absent when the constructor failed
        if service is not None:
            service.close()


def deployment(app: ExpertApp) -> Deployment:
    """The Serve deployment of ``app``: replicas or autoscaling, per-replica CPUs, GPUs (fractional) and runtime_env."""
    from ray import serve

    built = serve.deployment(serve.ingress()(ExpertReplica), **app.deployment_options())
    return cast("Deployment", built)  # typed by Ray as decorator or deployment; given a class, it is the latter


def expert_application(app: ExpertApp, tools: Sequence[Tool[Any, Any]] = ()) -> Application:
    """The Serve application of ``app``; ``tools`` (Python only) are served beside its ``experts`` and travel to the
    replicas pickled: their module must be importable there."""
    return deployment(app).bind(app.model_dump(mode="json"), list(tools))


def build_app(args: dict[str, Any]) -> Application:
    """Ray Serve's app builder (``import_path: medagent.remote.ray_serve:build_app``): ``args`` is one ``experts``
    entry of a deployment file."""
    [app] = parse_deployment({"experts": [args]}, source="serve config args").experts
    return expert_application(app)


def deploy(plan: ExpertDeployment, *, address: str | None) -> dict[str, str]:
    """Every application of ``plan`` on the Ray cluster at ``address`` (``auto``: the local node's; ``local``: a new
    one in this process), each answered at its URL once running; the URLs by application name."""
    import ray
    from ray import serve

    _check_reachable(address)
    if not ray.is_initialized():
        try:
            ray.init(address=address, log_to_driver=False)
        except ConnectionError as exc:
            raise ConfigurationError(f"no Ray cluster at {address!r} ({str(exc)[:200]})") from None
    serve.start(proxy_location=plan.proxy_location, http_options={"host": plan.host, "port": plan.port})
    urls = {}
    for entry in serve_config(plan)["applications"]:  # what `serve deploy` would apply, through the same builder
        serve.run(build_app(entry["args"]), name=entry["name"], route_prefix=entry["route_prefix"])
        urls[entry["name"]] = f"http://{plan.host}:{plan.port}{entry['route_prefix'].rstrip('/')}"
    return urls


def _check_reachable(address: str | None) -> None:
    """A HOST:PORT that accepts no connection is refused at once (Ray would retry it without end)."""
    address = address or ""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # auto, local, ray://: Ray finds or refuses them itself
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ConfigurationError(f"no Ray cluster answers at {address[:200]} ({type(exc).__name__})") from None
