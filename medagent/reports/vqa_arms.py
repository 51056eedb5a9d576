"""The arms of a VQA run as its report needs them: their order, experts and corruption, the baseline of the paired
comparisons, and which clean arm starts each corruption's severity curve.

The study's stored configuration gives the order and what each arm asked for (``experts: none`` is ``[]``); the rows
give what the arm ran (its number of experts, its corruption's kind and severity), so a report still reads a run
whose configuration is not at hand.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, Field


class ArmInfo(BaseModel):
    name: str
    experts: int | None = Field(description="the experts the arm ran with, as its rows record; None: unknown")
    no_experts: bool = Field(description="configured with experts: none (or, without a configuration, ran none)")
    corruption: str | None = Field(description="the corruption's label, e.g. gaussian_noise-4; None: clean images")
    corruption_kind: str | None
    severity: float = Field(description="0 for clean images")
    failed: int = Field(default=0, description="questions that failed without an answer")
    answered: bool = Field(description="the arm has at least one answered question")
    # matching keys only, never part of a report's JSON (they hold the arm's planner settings)
    signature: str = Field(default="", exclude=True, description="settings other than name, description, corruption")
    corruption_settings: str = Field(default="", exclude=True, description="its corruption's settings but severity")


def _plain(value: object) -> object:
    return None if isinstance(value, float) and math.isnan(value) else value


def _config_arms(run_config: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    arms = (run_config or {}).get("arms")
    if not isinstance(arms, list):
        return {}
    return {str(arm["name"])[:200]: arm for arm in arms if isinstance(arm, Mapping) and arm.get("name")}


def _corruption(config: Mapping[str, Any], row: Mapping[str, Any]) -> tuple[str | None, str | None, float]:
    """(label, kind, severity): the rows' record first, else the configuration's."""
    label, kind = _plain(row.get("vqa.corruption")), _plain(row.get("vqa.corruption_kind"))
    severity = _plain(row.get("vqa.corruption_severity"))
    if row:
        return (str(label)[:200] if label else None, str(kind)[:200] if kind else None,
                float(severity) if isinstance(severity, int | float) else 0.0)
    corruption = config.get("corruption")
    if not isinstance(corruption, Mapping) or not isinstance(corruption.get("severity"), int):
        return None, None, 0.0
    kind = f"{corruption.get('kind')}{'_up' if corruption.get('direction') == 'up' else ''}"[:200]
    return f"{kind}-{corruption['severity']}", kind, float(corruption["severity"])


def _arm_of_key(key: str, names: Sequence[str]) -> str | None:
    """The arm of a stored case key: ``arm:question`` when a study has several arms, the question id alone else."""
    if len(names) == 1:
        return names[0]
    prefixed = [name for name in names if key.startswith(f"{name}:")]
    return max(prefixed, key=len) if prefixed else None


def _signature(arm: Mapping[str, Any], *, leave_out: tuple[str, ...]) -> str:
    return json.dumps({k: v for k, v in arm.items() if k not in leave_out}, sort_keys=True, default=str)


def arms_of(run_config: Mapping[str, Any] | None, first_rows: Mapping[str, Mapping[str, Any]],
            failed_questions: Sequence[tuple[str | None, str]]) -> list[ArmInfo]:
    """The arms in the study's order, then any the rows name that it does not; ``failed_questions``: (arm if
    recorded, stored key) of each question that failed."""
    configured = _config_arms(run_config)
    names = list(configured) + [name for name in first_rows if name not in configured]
    names += sorted({arm for arm, _ in failed_questions if arm is not None} - set(names))
    failed = {name: 0 for name in names}
    for recorded, key in failed_questions:
        arm = recorded or _arm_of_key(key, names)
        if arm is not None:
            failed[arm] += 1
    arms = []
    for name in names:
        config, row = configured.get(name, {}), first_rows.get(name, {})
        label, kind, severity = _corruption(config, row)
        experts = _plain(row.get("vqa.experts"))
        count = int(experts) if isinstance(experts, int | float) else None
        corruption = config.get("corruption")
        arms.append(ArmInfo(
            name=name, experts=count, no_experts=config.get("experts") == [] if config else count == 0,
            corruption=label, corruption_kind=kind, severity=severity, failed=failed[name], answered=bool(row),
            signature=_signature(config, leave_out=("name", "description", "corruption")),
            corruption_settings=_signature(corruption, leave_out=("severity",)) if isinstance(corruption, Mapping)
            else ""))
    return arms


def baseline_of(arms: Sequence[ArmInfo]) -> str | None:
    """The first answered arm without experts, else the first answered arm."""
    answered = [arm for arm in arms if arm.answered]
    return next((arm.name for arm in answered if arm.no_experts), answered[0].name if answered else None)


def _split(members: Sequence[ArmInfo]) -> list[list[ArmInfo]]:
    """Arms of one corruption kind as curves: one curve unless two share a severity; then arms alike (settings and
    corruption settings) share a curve, a second arm at a taken severity starting another."""
    if len({arm.severity for arm in members}) == len(members):
        return [list(members)]
    parts: list[tuple[tuple[str, str], list[ArmInfo]]] = []
    for arm in members:
        key = (arm.signature, arm.corruption_settings)
        home = next((part for found, part in parts
                     if found == key and all(other.severity != arm.severity for other in part)), None)
        if home is None:
            parts.append((key, home := []))
        home.append(arm)
    return [part for _, part in parts]


def curve_groups(arms: Sequence[ArmInfo], baseline: str | None) -> list[tuple[str, dict[str, float], str | None]]:
    """(label, corrupted arm -> severity, clean arm at severity 0) per curve, one per corruption kind. A curve's
    clean arm is the answered clean arm configured like all its corrupted arms, else the baseline if it is clean,
    else the first answered clean arm."""
    clean = [arm for arm in arms if arm.corruption_kind is None and arm.answered]
    fallback = baseline if any(arm.name == baseline for arm in clean) else clean[0].name if clean else None
    by_kind: dict[str, list[ArmInfo]] = {}
    for arm in arms:
        if arm.corruption_kind is not None and arm.severity > 0:
            by_kind.setdefault(arm.corruption_kind, []).append(arm)
    curves = []
    for kind, members in by_kind.items():
        parts = _split(members)
        for part in parts:
            signatures = {arm.signature for arm in part}
            alike = next((arm.name for arm in clean if {arm.signature} == signatures), None)
            label = kind if len(parts) == 1 else f"{kind} ({part[0].name})"
            curves.append((label, {arm.name: arm.severity for arm in part}, alike or fallback))
    return curves
