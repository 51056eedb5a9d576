"""docs/scale-out.md and its deployment recipe docs/ray-cluster.yaml say what runs: the cluster launcher file is valid
for the schema the pinned Ray ships and for Ray's own preparation of a cluster, the commands the two files show name
real subcommands and options (medagent's, Ray's and Serve's command lines, read from the CLIs themselves), and the
YAML examples of the guide load with medagent's own models."""

from __future__ import annotations

import json
import re
import shlex
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("ray", reason="ray is not installed (the 'ray' extra)")

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "scale-out.md"
CLUSTER = REPO / "docs" / "ray-cluster.yaml"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
_CHECKED = re.compile(r"<!-- checked: ([a-z-]+) -->\s*```yaml\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _schema() -> dict[str, Any]:
    import ray

    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


def _clis() -> dict[str, Any]:
    """The click commands of each program (typer's vendored click for medagent: compared by shape, not class)."""
    from ray.scripts.scripts import cli as ray_cli
    from typer.main import get_command

    with warnings.catch_warnings():  # Serve's CLI module declares pydantic fields the pydantic-1 way
        warnings.simplefilter("ignore", DeprecationWarning)
        from ray.serve.scripts import cli as serve_cli

    from medagent.cli.main import app

    return {"medagent": get_command(app), "ray": ray_cli, "serve": serve_cli}


def _command_lines(text: str) -> list[str]:
    """Command lines of the programs in :func:`_clis`: `bash` blocks of the guide, `#` lines of a YAML header."""
    lines = []
    for line in text.splitlines():
        line = line.strip().lstrip("#").strip()
        line = re.sub(r"\s#\s.*$", "", line)  # a comment after the command
        line = re.sub(r"^(?:[A-Z_]+=\S*\s+)+", "", line)  # environment assignments before it
        if line.split(" ", 1)[0].rsplit("/", 1)[-1] in ("medagent", "ray", "serve"):
            lines.append(line)
    return lines


def _check_command(line: str, clis: dict[str, Any]) -> None:
    words = shlex.split(line.replace("...", "x"))
    command = clis[words[0].rsplit("/", 1)[-1]]
    path = [words[0]]
    for word in words[1:]:
        if word not in getattr(command, "commands", {}):
            break
        command, path = command.commands[word], [*path, word]
    assert not hasattr(command, "commands"), f"{line!r}: no such command ({' '.join(path)} ...)"
    options = {option for param in command.params for option in (*param.opts, *param.secondary_opts)}
    named = [word.split("=", 1)[0] for word in words if word.startswith("-")]
    unknown = [option for option in named if option not in options]
    assert not unknown, f"{line!r}: {' '.join(path)} has no option {unknown}"


def test_the_cluster_file_is_valid_for_the_schema_ray_ships() -> None:
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(CLUSTER.read_text())
    validator = jsonschema.Draft7Validator(_schema())
    errors = [error.message for error in validator.iter_errors(config)]
    assert not errors, errors
    # the schema is strict enough to catch a misspelt key, so passing it says something
    assert any("max_worker" in error.message for error in validator.iter_errors({**config, "max_worker": 3}))
    # Ray's own preparation of a launcher config: provider defaults filled in, then validated again
    prepared = prepare_config(config)
    validate_config(prepared)
    assert prepared["max_workers"] == len(config["provider"]["worker_ips"])


def test_the_cluster_file_starts_ray_with_real_options_and_the_same_medagent_everywhere() -> None:
    from medagent.store.engine import medagent_version

    config = yaml.safe_load(CLUSTER.read_text())
    clis = _clis()
    starts = [command for key in ("head_start_ray_commands", "worker_start_ray_commands") for command in config[key]]
    lines = [line for command in starts for line in _command_lines(command.split("&&")[-1])]
    assert len(lines) == 4 and sum("ray start" in line for line in lines) == 2
    for line in lines:
        _check_command(line, clis)
    # a node of another medagent version is refused by the driver: the recipe installs the one this is
    pins = {pin for command in config["setup_commands"] for pin in re.findall(r"medagent\[[a-z,]+\]==([\w.]+)", command)}
    assert pins == {medagent_version()}
    # the key travels in the nodes' environment file, never in the launcher's config
    assert "MEDAGENT_DEID_SECRET=" not in CLUSTER.read_text()
    for line in _command_lines(CLUSTER.read_text().split("cluster_name:", 1)[0]):  # `ray up ...`, `medagent run ...`
        _check_command(line, clis)


def test_the_guides_commands_name_real_commands_and_options() -> None:
    from typer.testing import CliRunner

    from medagent.cli.main import app

    clis = _clis()
    blocks = [body for kind, body in _FENCE.findall(GUIDE.read_text()) if kind == "bash"]
    lines = [line for body in blocks for line in _command_lines(body)]
    assert sum(line.startswith("medagent ") for line in lines) >= 3, lines
    for line in lines:
        _check_command(line, clis)
    help_text = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"}).output
    assert "--ray" in help_text and "--store" in help_text
    with pytest.raises(AssertionError, match="no option"):  # the check itself catches an option that does not exist
        _check_command("medagent run study.yaml --rays auto", clis)


def test_the_guides_yaml_examples_load() -> None:
    from medagent.agents.planner import PlannerConfig
    from medagent.remote.ray_config import parse_deployment, serve_config
    from medagent.studies.config import ConcurrencySpec, ExecutorSpec

    examples = dict(_CHECKED.findall(GUIDE.read_text()))
    assert set(examples) == {"executor", "worker-processes", "expert-deployment", "planner-replicas"}, set(examples)
    study = yaml.safe_load(examples["executor"])
    assert ExecutorSpec.model_validate(study["executor"]).type == "ray"
    local = yaml.safe_load(examples["worker-processes"])
    assert ExecutorSpec.model_validate(local["executor"]).type == "processes"
    ConcurrencySpec.model_validate(local["concurrency"])
    deployment = parse_deployment(yaml.safe_load(examples["expert-deployment"]))
    assert serve_config(deployment)["applications"]  # checked by Ray Serve's own schema inside
    planners = yaml.safe_load(examples["planner-replicas"])["planners"]
    assert all(len(PlannerConfig.model_validate(role).endpoints or []) >= 2 for role in planners.values())
