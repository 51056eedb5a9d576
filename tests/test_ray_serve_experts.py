"""Experts as Ray Serve deployments, on a local Ray cluster started here (2 CPUs): the remote-expert suite of
test_remote_experts.py runs unchanged against a deployment reached through Serve's HTTP proxy, Ray's micro-batching
of concurrent requests shows in the deployment's metrics, and a deployment file's options change what runs
(replicas, runtime_env, resources), deployed by `medagent expert deploy`."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from medagent.config import Settings
from medagent.errors import ConfigurationError
from medagent.remote.ray_config import DEPLOYMENT_NAME, IMPORT_PATH, ExpertApp, load_deployment, serve_config
from medagent.tools.registry import ToolRegistry
from medagent.tools.spec import ToolContext
from tests import test_remote_experts as remote_suite
from tests.conftest import TEST_SECRET
from tests.remote_parts import hostile_card, wait_a_while
from tests.test_remote_experts import (  # noqa: F401 - the remote-expert suite, collected here against Ray Serve
    _remote,
    test_a_hostile_services_card_reaches_planners_capped_and_fenced_as_data,
    test_a_study_mixes_local_and_remote_experts,
    test_artifacts_a_service_sends_wrongly_are_typed_errors_and_nothing_is_kept,
    test_faults_are_typed_errors_in_bounded_time,
    test_remote_tools_are_offered_and_behave_like_local_ones,
    test_what_a_remote_call_writes_resolves_here_as_a_local_calls_does,
)

serve = pytest.importorskip("ray.serve", reason="the Ray Serve tests need Ray with serve (the 'ray' extra)")
ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.ray, pytest.mark.slow]
images = remote_suite.images  # the suite's attached images; its `service_url` is this module's, under Serve


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _replica_environment(home: Path, **extra: str) -> dict[str, str]:
    """What a replica's settings read (runtime_env env_vars, one deployment's own)."""
    return {"MEDAGENT_HOME": str(home), "MEDAGENT_DEID_SECRET": TEST_SECRET.decode(),
            "MEDAGENT_XRV_CACHE_DIR": str(home / "xrv"), **extra}


@pytest.fixture(scope="module")
def serve_port() -> Iterator[int]:
    """A new local Ray cluster (never one already on this machine) with Serve's proxy on a free loopback port."""
    port = _free_port()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield port
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def service_url(serve_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The remote suite's service as a Serve application at "/": the same experts and test tools as the plain
    service, the untrained-weights switch in the deployment's runtime_env, Ray gathering up to 50 ms per batch."""
    home = tmp_path_factory.mktemp("serve-home")
    app = ExpertApp(name="conformance", route_prefix="/", num_cpus=0.5, batch_wait_timeout_s=0.05,
                    experts=["assess_image_quality", "classify_chest_xray", "segment_lung_fields"],
                    runtime_env={"env_vars": _replica_environment(home, MEDAGENT_ALLOW_UNTRAINED_TEST_ONLY="1")})
    from medagent.remote.ray_serve import expert_application

    serve.run(expert_application(app, tools=[wait_a_while, hostile_card]), name=app.name, route_prefix="/")
    try:
        yield f"http://127.0.0.1:{serve_port}"
    finally:
        serve.delete(app.name)


def _metrics(url: str) -> dict[str, Any]:
    answer = httpx.get(f"{url}/v1/metrics", timeout=10)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


@pytest.mark.asyncio
async def test_concurrent_requests_are_batched_by_ray_and_counted_in_the_metrics(
        service_url: str, images: tuple[ToolContext, dict[str, str]], settings: Settings) -> None:
    """The client's own batching off (one call per request): 16 concurrent requests reach the replica, Ray's
    batcher runs them in fewer batches, and the replica's metrics count requests, batches and sizes."""
    context, ids = images
    before = _metrics(service_url)
    assert before["max_batch_size"] == Settings().max_batch_size and before["batch_wait_timeout_s"] == 0.05
    [quality] = _remote(service_url, settings, tools=["assess_image_quality"], max_batch_size=1,
                        max_concurrency=16).values()
    registry = ToolRegistry([quality])
    results = await asyncio.gather(*(registry.call(quality.name, {"image_id": ids[key]}, context)
                                     for key in ["cxr", "cxr2"] * 8))
    assert all(result.model_dump()["provenance"]["expert"] for result in results)
    after = _metrics(service_url)
    requests, items = after["requests"] - before["requests"], after["items"] - before["items"]
    batches = after["batches"] - before["batches"]
    assert requests == items == 16
    assert 1 <= batches < requests, (before, after)
    grown = {size for size, count in after["sizes"].items() if count > before["sizes"].get(size, 0)}
    assert max(int(size) for size in grown) > 1
    assert after["mean_batch_size"] == pytest.approx(after["items"] / after["batches"])
    assert (after["app"], after["deployment"]) == ("conformance", DEPLOYMENT_NAME)


def _pair(port: int, home: Path) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": port, "experts": [{
        "name": "pair", "experts": ["assess_image_quality"], "num_replicas": 2, "num_cpus": 0.25,
        "runtime_env": {"env_vars": _replica_environment(home, MEDAGENT_MAX_BATCH_SIZE="1")}}]}


@pytest.mark.asyncio
async def test_a_deployment_file_deployed_by_the_cli_runs_its_replicas_with_their_environment(
        service_url: str, serve_port: int, tmp_path: Path, settings: Settings,
        images: tuple[ToolContext, dict[str, str]]) -> None:
    """`medagent expert deploy` with two replicas whose runtime_env sets batches of one: both replicas answer at
    /pair, each with its own settings (beside the conformance app's batches of 16), and the client reaches them."""
    from medagent.cli.main import app

    config = tmp_path / "experts.yaml"
    config.write_text(yaml.safe_dump(_pair(serve_port, tmp_path / "home")))
    result = CliRunner().invoke(app, ["expert", "deploy", str(config)], env={"MEDAGENT_HOME": str(settings.home)})
    assert result.exit_code == 0, result.output
    url = f"http://127.0.0.1:{serve_port}/pair"
    assert url in result.output
    try:
        context, ids = images
        [quality] = _remote(url, settings, max_batch_size=1, max_concurrency=8).values()
        registry = ToolRegistry([quality])
        results = await asyncio.gather(*(registry.call(quality.name, {"image_id": ids["cxr"]}, context)
                                         for _ in range(8)))
        assert len({result.model_dump_json() for result in results}) == 1
        seen: dict[str, dict[str, Any]] = {}
        for _ in range(60):
            answer = _metrics(url)
            seen[answer["replica"]] = answer
            if len(seen) == 2:
                break
        assert len(seen) == 2, "one replica answered every request"
        assert {answer["max_batch_size"] for answer in seen.values()} == {1}
        assert sum(answer["items"] for answer in seen.values()) == 8
        assert all(set(answer["sizes"]) <= {"1"} for answer in seen.values())
        assert _metrics(service_url)["max_batch_size"] > 1  # the other application keeps its own settings
    finally:
        serve.delete("pair")


def test_the_serve_config_is_rays_schema_and_refuses_what_cannot_run(tmp_path: Path) -> None:
    """`--serve-config` writes Ray's multi-application config (fractional GPUs, autoscaling, per-application
    runtime_env, the app builder's args); options that cannot run together, and a cluster address nobody answers,
    are typed errors."""
    from ray.serve.schema import ServeDeploySchema

    from medagent.cli.main import app
    from medagent.remote.ray_serve import build_app

    plan = {"experts": [
        {"name": "cxr", "experts": ["classify_chest_xray", "cards/zero_shot.yaml"], "num_gpus": 0.5,
         "autoscaling": {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 4},
         "runtime_env": {"pip": ["torchxrayvision==1.5.7"], "env_vars": {"MEDAGENT_MAX_BATCH_SIZE": "32"}}},
        {"name": "quality", "experts": ["assess_image_quality"], "num_replicas": 2, "num_cpus": 0.5,
         "max_batch_size": 8}]}
    config, written = tmp_path / "experts.yaml", tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump(plan))
    result = CliRunner().invoke(app, ["expert", "deploy", str(config), "--serve-config", str(written)])
    assert result.exit_code == 0, result.output
    schema = ServeDeploySchema.model_validate(yaml.safe_load(written.read_text()))
    cxr, quality = schema.applications
    assert (cxr.route_prefix, cxr.import_path, cxr.runtime_env["pip"]) == ("/cxr", IMPORT_PATH, ["torchxrayvision==1.5.7"])
    assert cxr.args["experts"][1] == str(tmp_path / "cards" / "zero_shot.yaml")  # resolved beside the file
    [options] = cxr.deployments
    assert isinstance(options.autoscaling_config, dict) and options.autoscaling_config["max_replicas"] == 3
    assert options.ray_actor_options.num_gpus == 0.5
    assert quality.deployments[0].num_replicas == 2 and quality.deployments[0].max_ongoing_requests == 16
    assert build_app(quality.args) is not None  # the builder `serve deploy` calls takes the args as written
    assert serve_config(load_deployment(config)) == yaml.safe_load(written.read_text())

    closed = _free_port()
    refused = CliRunner().invoke(app, ["expert", "deploy", str(config), "--address", f"127.0.0.1:{closed}"])
    assert isinstance(refused.exception, ConfigurationError) and str(closed) in refused.exception.message

    entry = plan["experts"][1]
    broken = {"unknown runtime_env key": {**entry, "runtime_env": {"pip_install_anything": ["x"]}},
              "two Pythons": {**entry, "runtime_env": {"pip": ["x"], "conda": "base"}},
              "replicas and autoscaling": {**entry, "autoscaling": {"max_replicas": 2}},
              "batches past the protocol": {**entry, "max_batch_size": 65},
              "too many variables": {**entry, "runtime_env": {"env_vars": {f"V{i}": "1" for i in range(65)}}},
              "a shell in a variable name": {**entry, "runtime_env": {"env_vars": {"A;rm -rf /": "1"}}},
              "one name twice": None}
    for case, bad in broken.items():
        experts = [entry, entry] if bad is None else [bad]
        config.write_text(yaml.safe_dump({"experts": experts}))
        with pytest.raises(ConfigurationError) as error:
            load_deployment(config)
        assert error.value.details.get("file") == "experts.yaml", case
