"""The simulated roles of one consultation: the built-ins, or the implementations a study names.

    graph:
      type: dialogue
      roles:
        patient: {_target_: mypkg.roles.StubbornPatient, kwargs: {refuses: [x-ray]}}

Each role is built once per consultation by calling its implementation with the keyword arguments
:data:`medagent.studies.dialogue_graph.ROLE_ARGUMENTS` names for it, plus its ``kwargs``:

- ``planner`` (the doctor): ``make(planner=...)`` returns a doctor speaker (``served_model()``,
  ``begin(brief)``, ``respond(turns, *, final=False) -> Reply``); what it knows arrives in the brief.
- ``patient``: ``make(planner=..., case=..., temperament=..., biases=[...])`` returns a speaker
  (``served_model()``, ``respond(turns) -> Reply``; ``respond([])`` is the opening).
- ``measurement``: ``make(planner=..., case=...)`` returns a speaker.
- ``assessor``: ``await make(planner=..., case=..., outcome=..., max_reasks=...)`` gives an ``Assessment``.

``planner`` is that role's planner (``planners.<role>``, the doctor's when unset). An implementation that
returns anything else is a typed ``component_contract`` error naming the role.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from medagent.agents.planner import ROLES, Planner, Role
from medagent.errors import ComponentContract
from medagent.studies.components import TargetPolicy, TargetRef

if TYPE_CHECKING:
    from medagent.dialogue.cases import DialogueCase
    from medagent.dialogue.protocol import DialogueOutcome, DoctorSpeaker, Speaker
    from medagent.simulators.assessor import Assessment

_SPEAKS = {"planner": ("served_model", "begin", "respond"), "patient": ("served_model", "respond"),
           "measurement": ("served_model", "respond")}


def builtin_roles() -> dict[Role, Callable[..., Any]]:
    """The built-in implementation of each role (each meets the contract above)."""
    from medagent.agents.doctor import DoctorAgent
    from medagent.simulators.assessor import assess
    from medagent.simulators.measurement import MeasurementAgent
    from medagent.simulators.patient import SimulatedPatient

    return {"planner": DoctorAgent, "patient": SimulatedPatient, "measurement": MeasurementAgent, "assessor": assess}


class DialogueRoles:
    """Builds each role of a consultation from its implementation; ``roles``: the study's own, resolved now
    under ``targets`` (the policy the study was validated with)."""

    def __init__(self, roles: Mapping[Role, TargetRef] | None = None, targets: TargetPolicy | None = None) -> None:
        builtin = builtin_roles()
        policy = targets or TargetPolicy()
        chosen = dict(roles or {})
        self._makers: dict[Role, tuple[Callable[..., Any], dict[str, Any]]] = {
            role: (policy.resolve(chosen[role].target), dict(chosen[role].kwargs)) if role in chosen
            else (builtin[role], {}) for role in ROLES}

    def _make(self, role: Role, **arguments: Any) -> Any:
        make, kwargs = self._makers[role]
        made = make(**arguments, **kwargs)
        missing = [name for name in _SPEAKS.get(role, ()) if not callable(getattr(made, name, None))]
        if missing:
            raise ComponentContract(f"the {role} role's implementation '{_name(make)}' returned a "
                                    f"{type(made).__name__} without {', '.join(missing)}", role=role)
        return made

    def doctor(self, planner: Planner) -> DoctorSpeaker:
        return self._make("planner", planner=planner)

    def patient(self, planner: Planner, case: DialogueCase, *, temperament: str | None,
                biases: list[str]) -> Speaker:
        return self._make("patient", planner=planner, case=case, temperament=temperament,
                          biases=biases)

    def measurement(self, planner: Planner, case: DialogueCase) -> Speaker:
        return self._make("measurement", planner=planner, case=case)

    async def assess(self, planner: Planner, case: DialogueCase, outcome: DialogueOutcome, *,
                     max_reasks: int) -> Assessment:
        from medagent.simulators.assessor import Assessment

        made = self._make("assessor", planner=planner, case=case, outcome=outcome, max_reasks=max_reasks)
        result = await made if inspect.isawaitable(made) else made
        if not isinstance(result, Assessment):
            raise ComponentContract(f"the assessor role's implementation '{_name(self._makers['assessor'][0])}' "
                                    f"gave a {type(result).__name__}, not an Assessment", role="assessor")
        return result


def _name(make: Callable[..., Any]) -> str:
    return f"{getattr(make, '__module__', '?')}.{getattr(make, '__qualname__', type(make).__name__)}"
