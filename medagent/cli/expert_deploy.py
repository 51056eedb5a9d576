"""``medagent expert deploy``: expert services as Ray Serve applications, from one YAML file
(:mod:`medagent.remote.ray_config`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console

from medagent.cli.expert_serve import LOOPBACK
from medagent.cli.terminal import safe

errors = Console(stderr=True)


def deploy(
    config: Annotated[Path, typer.Argument(help="the deployment file: experts, replicas or autoscaling, CPUs, "
                                                "GPUs, runtime_env, batching", metavar="DEPLOYMENT_YAML")],
    address: Annotated[str, typer.Option(help="the Ray cluster: auto (this node's), HOST:PORT, ray://HOST:PORT, "
                                              "or local (a new one, served until interrupted)")] = "auto",
    serve_config: Annotated[Path | None, typer.Option(
        "--serve-config", help="write Ray Serve's config (for `serve deploy`) here instead of deploying")] = None,
) -> None:
    """Deploy experts on a Ray cluster as Ray Serve applications, for `family: remote` cards."""
    from medagent.remote.ray_config import load_deployment
    from medagent.remote.ray_config import serve_config as to_serve_config

    plan = load_deployment(config)
    if serve_config is not None:
        serve_config.write_text(yaml.safe_dump(to_serve_config(plan), sort_keys=False))
        errors.print(f"wrote Ray Serve's config for {len(plan.experts)} application(s) to {safe(str(serve_config))}",
                     soft_wrap=True)
        return
    if plan.host not in LOOPBACK:
        errors.print(f"[yellow]warning[/] serving on {safe(plan.host)}: anyone who reaches it can run these experts")
    from medagent.remote.ray_serve import deploy as deploy_plan

    for name, url in deploy_plan(plan, address=address).items():
        errors.print(f"{safe(name)}: {safe(url)}", soft_wrap=True)
    if address != "local":
        return  # the applications stay on the cluster (`serve shutdown` removes them)
    import ray
    from ray import serve

    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
