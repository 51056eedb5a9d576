"""Expert services on a Ray cluster, described in one YAML file (``medagent expert deploy``)::

    host: 127.0.0.1            # Serve's HTTP proxy; no authentication: loopback or an authenticating proxy
    port: 8000
    experts:
      - name: cxr                             # the Serve application; its URL is http://HOST:PORT/cxr
        experts: [classify_chest_xray, assess_image_quality]   # what `medagent expert serve` takes
        num_gpus: 0.5                         # two such replicas share one GPU
        autoscaling: {min_replicas: 1, max_replicas: 4, target_ongoing_requests: 8}
        runtime_env: {pip: ["torchxrayvision==1.5.7"], env_vars: {MEDAGENT_MAX_BATCH_SIZE: "32"}}
      - name: quality
        experts: [assess_image_quality]
        num_replicas: 2
        num_cpus: 0.5

Each entry is one Serve application of one deployment (:mod:`medagent.remote.ray_serve`); its ``runtime_env`` is the
deployment's own, so experts whose dependencies conflict run side by side. :func:`serve_config` writes the same as
Ray's multi-application config (``serve deploy``), checked against Ray's own schema where Ray is installed.
Card files named under ``experts`` are read where the replica runs: the path must hold on that node.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from medagent.config import Settings
from medagent.errors import ConfigurationError
from medagent.remote.protocol import MAX_ITEMS
from medagent.remote.sources import MAX_SOURCES
from medagent.yaml_io import YamlLimits, load_yaml

IMPORT_PATH = "medagent.remote.ray_serve:build_app"  # the app builder `serve deploy` calls with an entry's fields
DEPLOYMENT_NAME = "MedagentExperts"
MAX_APPLICATIONS = 32
CONFIG_LIMITS = YamlLimits(max_bytes=256 * 1024, max_nodes=20_000, max_depth=16)

_Text = Annotated[str, Field(min_length=1, max_length=512)]
_EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Autoscaling(_Strict):
    """Serve's autoscaler: replicas between the bounds, aiming at ``target_ongoing_requests`` each."""

    min_replicas: int = Field(default=1, ge=0, le=64)
    max_replicas: int = Field(default=4, ge=1, le=256)
    target_ongoing_requests: float = Field(default=8, gt=0, le=256)
    initial_replicas: int | None = Field(default=None, ge=0, le=256)
    upscale_delay_s: float | None = Field(default=None, ge=0, le=3600)
    downscale_delay_s: float | None = Field(default=None, ge=0, le=3600)

    @model_validator(mode="after")
    def _ordered(self) -> Autoscaling:
        if self.max_replicas < self.min_replicas:
            raise ValueError("max_replicas must be at least min_replicas")
        return self


class RuntimeEnv(_Strict):
    """The replica's Python environment: Ray's runtime_env keys medagent passes on, each bounded. At most one of
    pip, uv, conda, py_executable and image_uri: each says on its own which Python runs the experts."""

    env_vars: dict[_EnvName, Annotated[str, Field(max_length=4096)]] = Field(default_factory=dict, max_length=64)
    pip: list[_Text] | None = Field(default=None, max_length=64)
    uv: list[_Text] | None = Field(default=None, max_length=64)
    conda: _Text | None = None  # an existing environment's name, or an environment.yml path on the nodes
    py_executable: _Text | None = None
    image_uri: _Text | None = None
    working_dir: _Text | None = None  # a remote URI (s3://, gs://, https://...zip) for `serve deploy`
    py_modules: list[_Text] | None = Field(default=None, max_length=16)
    excludes: list[_Text] | None = Field(default=None, max_length=64)
    config: dict[Literal["setup_timeout_seconds", "eager_install"], int | bool] | None = None

    @model_validator(mode="after")
    def _one_python(self) -> RuntimeEnv:
        chosen = [key for key in ("pip", "uv", "conda", "py_executable", "image_uri") if getattr(self, key)]
        if len(chosen) > 1:
            raise ValueError(f"name one of pip, uv, conda, py_executable, image_uri (got {', '.join(chosen)})")
        return self

    def ray(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True, exclude_defaults=True)


class ExpertApp(_Strict):
    """One Serve application: the experts it hosts, how many replicas with what resources, and its batching (unset
    batching options come from the replica's settings: ``MEDAGENT_MAX_BATCH_SIZE``, ``MEDAGENT_MAX_BATCH_WAIT_MS``)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,47}$")
    experts: list[Annotated[str, Field(min_length=1, max_length=1024)]] = Field(default_factory=list,
                                                                                max_length=MAX_SOURCES)
    route_prefix: str | None = Field(default=None, pattern=r"^/([A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*)?$",
                                     max_length=128)
    num_replicas: int | None = Field(default=None, ge=1, le=256)
    autoscaling: Autoscaling | None = None
    num_cpus: float = Field(default=1.0, ge=0, le=256)
    num_gpus: float = Field(default=0.0, ge=0, le=16)  # fractional: 0.25 puts four replicas on one GPU
    runtime_env: RuntimeEnv = Field(default_factory=RuntimeEnv)
    max_batch_size: int | None = Field(default=None, ge=1, le=MAX_ITEMS)
    batch_wait_timeout_s: float | None = Field(default=None, ge=0, le=1)
    # batches run at once on a replica: one slow tool does not hold back the next batch
    max_concurrent_batches: int = Field(default=2, ge=1, le=16)
    max_ongoing_requests: int | None = Field(default=None, ge=1, le=1024)  # default: a full batch of each
    artifact_ttl_s: float = Field(default=900.0, ge=1, le=86_400)

    @model_validator(mode="after")
    def _one_scaling(self) -> ExpertApp:
        if self.num_replicas is not None and self.autoscaling is not None:
            raise ValueError("give num_replicas or autoscaling, not both")
        return self

    @property
    def batch_size_hint(self) -> int:
        """The batch size as far as the deploying side knows (the replica's settings may say otherwise)."""
        return self.max_batch_size or int(Settings.model_fields["max_batch_size"].default)

    @property
    def prefix(self) -> str:
        return self.route_prefix or f"/{self.name}"

    def deployment_options(self) -> dict[str, Any]:
        """``serve.deployment`` options: replicas or autoscaling, per-replica resources and environment."""
        actor: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.runtime_env.ray():
            actor["runtime_env"] = self.runtime_env.ray()
        options: dict[str, Any] = {"name": DEPLOYMENT_NAME, "ray_actor_options": actor,
                                   "max_ongoing_requests": self.max_ongoing_requests
                                   or min(1024, self.batch_size_hint * self.max_concurrent_batches)}
        if self.autoscaling is not None:
            options["autoscaling_config"] = self.autoscaling.model_dump(exclude_none=True)
        else:
            options["num_replicas"] = self.num_replicas or 1
        return options


class ExpertDeployment(_Strict):
    host: str = Field(default="127.0.0.1", max_length=255)
    port: int = Field(default=8000, ge=1, le=65535)
    proxy_location: Literal["HeadOnly", "EveryNode", "Disabled"] = "HeadOnly"
    experts: list[ExpertApp] = Field(min_length=1, max_length=MAX_APPLICATIONS)

    @model_validator(mode="after")
    def _distinct(self) -> ExpertDeployment:
        for what, values in (("name", [app.name for app in self.experts]),
                             ("route prefix", [app.prefix for app in self.experts])):
            if len(set(values)) != len(values):
                raise ValueError(f"each application needs its own {what}")
        return self


def parse_deployment(data: object, *, source: str = "deployment", base_dir: Path | None = None) -> ExpertDeployment:
    """A validated deployment; relative card-file paths resolve against ``base_dir``."""
    try:
        deployment = ExpertDeployment.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "deployment"
        raise ConfigurationError(f"{source}: {field}: {first['msg']} ({exc.error_count()} problem(s))",
                                 file=source, field=field) from None
    if base_dir is None:
        return deployment
    apps = [app.model_copy(update={"experts": [_located(item, base_dir) for item in app.experts]})
            for app in deployment.experts]
    return deployment.model_copy(update={"experts": apps})


def _located(source: str, base_dir: Path) -> str:
    path = Path(source).expanduser()
    if path.suffix in (".yaml", ".yml", ".json") and not path.is_absolute():
        return str((base_dir / path).resolve())
    return source


def load_deployment(path: Path) -> ExpertDeployment:
    path = Path(path).expanduser()
    return parse_deployment(load_yaml(path, CONFIG_LIMITS), source=path.name, base_dir=path.resolve().parent)


def serve_config(deployment: ExpertDeployment) -> dict[str, Any]:
    """Ray Serve's multi-application config (``ServeDeploySchema``) for ``serve deploy``, checked by Ray's schema
    when Ray is installed."""
    applications = []
    for app in deployment.experts:
        options = app.deployment_options()
        runtime_env = options["ray_actor_options"].pop("runtime_env", {})
        applications.append({"name": app.name, "route_prefix": app.prefix, "import_path": IMPORT_PATH,
                             "args": app.model_dump(mode="json", exclude_none=True), "runtime_env": runtime_env,
                             "deployments": [options]})
    config = {"proxy_location": deployment.proxy_location,
              "http_options": {"host": deployment.host, "port": deployment.port}, "applications": applications}
    try:
        from ray.serve.schema import ServeDeploySchema
    except ImportError:
        return config
    try:
        ServeDeploySchema.model_validate(config)
    except ValidationError as exc:  # a bound here that Ray does not accept: medagent's fault, said plainly
        raise ConfigurationError(f"Ray Serve refuses the generated config ({exc.error_count()} problem(s))") from None
    return config
