"""One simulated consultation per work item: the doctor (planner + experts), a simulated patient and
measurement agent, then the assessor; the transcript, tool calls and scores become one stored case."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medagent.agents.planner import ROLES, Planner, Role
from medagent.dialogue.cases import DialogueCase
from medagent.dialogue.labels import LabelSet
from medagent.errors import ComponentContract, MedagentError
from medagent.runtime.untrained import expert_weights
from medagent.store import CaseError, CaseResult
from medagent.studies.case_images import Attached, case_image_id
from medagent.studies.components import TargetPolicy
from medagent.studies.config import PlannerSpec
from medagent.studies.dialogue_graph import NO_BIAS, DialogueGraph
from medagent.studies.roles import DialogueRoles
from medagent.tools.builtin import Toolbox
from medagent.tools.invoke import ToolCallRecord, invoke


def resolve_label_set(graph: DialogueGraph, cases: list[DialogueCase], search_dirs: list[Path]) -> LabelSet:
    from medagent.simulators.builtin import label_set_named, open_label_set

    name = graph.label_set
    if name == "auto":  # the label set the cases name, when they agree on one; else each case's own diagnosis
        named = {case.label_set for case in cases}
        name = (named.pop() if len(named) == 1 else None) or "open"
    if name == "open":
        return open_label_set(cases)
    return label_set_named(name, search_dirs)


def role_specs(planners: Mapping[Role, PlannerSpec], seed: int) -> dict[Role, PlannerSpec]:
    """Each role's planner; a role the study does not configure plays on the doctor's model."""
    doctor = planners["planner"]
    return {role: planners.get(role, doctor).model_copy(update={"role": role, "seed": seed}) for role in ROLES}


class DialogueCaseRunner:
    def __init__(self, graph: DialogueGraph, toolbox: Toolbox, label_set: LabelSet, modality: str | None,
                 targets: TargetPolicy | None = None) -> None:
        """``targets``: the ``_target_`` policy the study was validated with (its ``graph.roles`` resolve under it)."""
        self.graph = graph
        self.toolbox = toolbox
        self.label_set = label_set
        self.modality = modality
        self.roles = DialogueRoles(graph.roles, targets)

    async def _hints(self, image_ids: list[str]) -> tuple[list[Any], list[ToolCallRecord]]:
        """The expert's top-k labels (the label probabilities its output declares) for the doctor's context, and
        the calls that produced them; a failed call is recorded and the doctor goes on without its hints."""
        from medagent.dialogue.protocol import ExpertHint

        hints: list[ExpertHint] = []
        calls: list[ToolCallRecord] = []
        context = self.toolbox.context(image_ids)
        summaries = self.toolbox.image_summaries(image_ids)
        card = self.toolbox.registry.get(self.graph.expert).card if self.graph.expert in self.toolbox.registry else None
        for image_id in image_ids:
            if card is not None and not card.accepts_summary(summaries[image_id]):
                continue  # the expert does not read this kind of image (a CT for a chest X-ray classifier)
            done = await invoke(self.toolbox.registry, self.graph.expert, {"image_id": image_id}, context,
                                call_id=f"hint:{image_id}")
            calls.append(done.record)
            ranked = sorted((done.probabilities() or {}).items(), key=lambda item: -item[1])
            hints += [ExpertHint(label=str(label), probability=float(probability), tool=self.graph.expert)
                      for label, probability in ranked[: self.graph.top_k]]
        return hints, calls

    async def run(self, case: DialogueCase, planners: dict[str, Planner], *, temperament: str, bias: str,
                  seed: int, subgroups: dict[str, str], attached: Attached | None = None
                  ) -> tuple[CaseResult, list[dict[str, Any]], list[ToolCallRecord]]:
        """``attached``: the case's images the driver attached (``executor: ray``), by path; the others are
        attached here."""
        from medagent.dialogue.protocol import DialogueSettings, run_dialogue

        started = time.perf_counter()
        image_ids = [case_image_id(self.toolbox, attached or {}, path, self.modality) for path in case.images]
        summaries = self.toolbox.image_summaries(image_ids)
        hints, calls = await self._hints(image_ids) if self.graph.strategy == "dialogue_with_experts" else ([], [])
        settings = DialogueSettings(strategy=self.graph.strategy, max_turns=self.graph.max_turns,
                                    turn_timeout_s=self.graph.turn_timeout_s,
                                    dialogue_timeout_s=self.graph.dialogue_timeout_s, top_k=self.graph.top_k)
        biases = [] if bias == NO_BIAS else [bias]
        outcome = await run_dialogue(
            case,
            doctor=self.roles.doctor(planners["planner"]),  # strategy, labels, hints arrive in its brief
            patient=self.roles.patient(planners["patient"], case, temperament=temperament, biases=biases),
            measurement=self.roles.measurement(planners["measurement"], case),
            label_set=self.label_set, settings=settings, hints=hints, image_summaries=summaries)
        truth = self.label_set.normalise(case.diagnosis) or case.diagnosis
        columns: dict[str, Any] = {
            "dialogue.truth": truth, "dialogue.prediction": outcome.diagnosis, "dialogue.label_set": self.label_set.name,
            "dialogue.correct": int(outcome.diagnosis == truth), "dialogue.turns": len(outcome.turns),
            "dialogue.stop_reason": outcome.stop_reason, "dialogue.leaks": outcome.leaks_redacted,
            "subgroup.temperament": temperament, "subgroup.bias": bias,
            **{f"subgroup.{name}": value for name, value in subgroups.items()},
        }
        result: dict[str, Any] = {"strategy": self.graph.strategy, "stop_reason": outcome.stop_reason,
                                  "diagnosis_text": outcome.diagnosis_text, "models": outcome.models,
                                  "hints": [hint.model_dump() for hint in hints]}
        if self.graph.assess:
            try:
                assessment = await self.roles.assess(planners["assessor"], case, outcome,
                                                     max_reasks=self.graph.max_reasks)
            except ComponentContract:
                raise  # a role that breaks its contract is a configuration mistake: the case fails, typed
            except MedagentError as exc:  # a typed failure of the assessor, recorded; the dialogue still counts
                result["assessment_error"] = CaseError.from_exception(exc).model_dump()
                columns["assessment.failed"] = 1
            else:
                scores = assessment.scores.model_dump()
                result["assessment"] = assessment.model_dump(mode="json")
                columns["assessment.overall"] = scores.pop("overall")
                columns.update({f"rubric.{name}": int(value) for name, value in scores.items()})
                columns["assessment.failed"] = 0
        messages = [{"role": turn.speaker, "content": turn.text, "action": turn.action, "note": turn.note,
                     "index": turn.index,
                     "elapsed_s": round(turn.elapsed_s, 3), "model": turn.model} for turn in outcome.turns]
        return CaseResult(status="succeeded", answer=outcome.diagnosis_text, result=result, columns=columns,
                          seed=seed, model_id=outcome.models.get("doctor"), latency_s=time.perf_counter() - started,
                          expert_weights=expert_weights(call.output for call in calls if call.ok)), messages, calls
