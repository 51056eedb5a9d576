"""Conformance suites any implementation can run in its own tests (in the spirit of LangGraph's checkpointer
conformance): build the suite around your implementation and ``await suite.verify()``; it raises one
``AssertionError`` naming every broken contract. Needs no pytest (``parametrize_checks`` imports it when used).

- :class:`ExpertConformance` / :class:`ToolConformance` (:mod:`medagent.testing.tools`): provenance on every
  result, one bad item fails alone in a batch, ``ready()`` loads nothing, the card agrees with the modality check,
  typed errors only.
- :class:`PlannerConformance` (:mod:`medagent.testing.planners`): streaming, tool calls, structured output,
  typed errors, the model id as served.
- :class:`RoleConformance` (:mod:`medagent.testing.roles`): the patient, measurement, doctor and assessor
  contracts of the consultation.

Example (pytest, one test per check)::

    from medagent.testing import ToolConformance, parametrize_checks

    @parametrize_checks(ToolConformance)
    async def test_my_tool(check, context, image_ids):
        await ToolConformance(my_tool, context, accepted=[image_ids["dx"]]).run(check)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medagent.testing.base import Conformance, NotApplicable, Report, parametrize_checks
    from medagent.testing.planners import PlannerConformance, garbage_server, unreachable_endpoint
    from medagent.testing.roles import RoleConformance
    from medagent.testing.tools import BAD_ITEM, ExpertConformance, ToolConformance, assert_provenance, attach

_HOMES = {
    "Conformance": "base", "NotApplicable": "base", "Report": "base", "parametrize_checks": "base",
    "PlannerConformance": "planners", "garbage_server": "planners", "unreachable_endpoint": "planners",
    "RoleConformance": "roles",
    "BAD_ITEM": "tools", "ExpertConformance": "tools", "ToolConformance": "tools", "assert_provenance": "tools",
    "attach": "tools",
}
__all__ = [
    "BAD_ITEM", "Conformance", "ExpertConformance", "NotApplicable", "PlannerConformance", "Report", "RoleConformance",
    "ToolConformance", "assert_provenance", "attach", "garbage_server", "parametrize_checks", "unreachable_endpoint",
]


def __getattr__(name: str) -> Any:
    # each suite imports only what it checks: the role suite needs no expert, the tool suite no planner
    if name not in _HOMES:
        raise AttributeError(f"module 'medagent.testing' has no attribute {name!r}")
    return getattr(importlib.import_module(f"medagent.testing.{_HOMES[name]}"), name)
