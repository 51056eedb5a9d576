"""Before a study starts: every served planner endpoint it names answers and serves the model it asks for.

A comparison whose second arm points at a server that is not running used to start, run the first arm's
cases and then record every case of the second as failed. Checking first turns that into one typed error
naming the arm, the role and the (credential-free) endpoint, before the run's row or any case exists.
Embedded and ``_target_`` backends have nothing to reach and are skipped.
"""

from __future__ import annotations

from medagent.errors import MedagentError
from medagent.studies.config import PlannerSpec, StudyConfig

_TIMEOUT_S = 10.0  # listing models is instant on a live server; a dead one should not hold the user long


def served_endpoints(config: StudyConfig) -> list[tuple[str, str, PlannerSpec]]:
    """(arm, role, spec) of every role played by an OpenAI-compatible server, once per endpoint and model."""
    seen: set[tuple[str, str | None]] = set()
    found: list[tuple[str, str, PlannerSpec]] = []
    for arm, roles in config.arm_planners().items():
        for role, spec in roles.items():
            if spec.resolved_backend() != "openai" or not spec.endpoint_urls:
                continue
            key = (",".join(spec.endpoint_urls), spec.model)
            if key not in seen:
                seen.add(key)
                found.append((arm, role, spec))
    return found


async def check_planner_endpoints(config: StudyConfig) -> None:
    """Raise the planner's own typed error (``planner_unavailable``, ``model_not_served``, ...) for the first
    endpoint that does not answer, prefixed with the arm and role that use it."""
    from medagent.agents.factory import served_planner

    for arm, role, spec in served_endpoints(config):
        probe = spec.planner_config().model_copy(update={
            "max_retries": 0, "connect_timeout_s": min(spec.connect_timeout_s, _TIMEOUT_S),
            "read_timeout_s": min(spec.read_timeout_s, _TIMEOUT_S)})
        planner = served_planner(probe)  # replicas: at least one answers, and those that do serve one model
        try:
            await planner.served_model()
        except MedagentError as exc:
            where = f"arm {arm!r}, role {role}" if arm != "default" else f"role {role}"
            raise type(exc)(f"{where}: {exc.message} (checked before the study started; no case ran)",
                            **exc.details, arm=arm, role=role) from exc
        finally:
            await planner.aclose()
