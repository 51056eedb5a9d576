"""One benchmark question per work item: images (perturbed when the arm says so), the arm's experts as the mode
says, then the planner's answer, constrained to the options where the server allows, extracted, and scored.

What a question sees is built here and nowhere else: its own images and text, the arm's expert results, and (only
with ``keep_memory``) the earlier questions of its case with the answers given, read back from the store so a
resumed run remembers exactly what an uninterrupted one would.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from medagent.agents.planner import Message, Planner, PlannerTurn
from medagent.agents.prompts import compact_for_planner, fence_data, fence_tool_result, safe_token
from medagent.errors import MedagentError, PlannerRejected
from medagent.questions.answers import choice_schema, extract_answer, is_correct, token_f1, token_recall
from medagent.questions.corruptions import Corruption, corrupt
from medagent.questions.model import Question
from medagent.runtime.untrained import expert_weights
from medagent.store import CaseError, CaseResult, StudyStore
from medagent.studies.case_images import Attached, case_image_id, stored_image
from medagent.studies.config import Arm, StudyConfig
from medagent.studies.datasets import question_groups
from medagent.studies.pipeline import render_arguments
from medagent.studies.vqa_graph import VqaGraph
from medagent.studies.vqa_judge import judge
from medagent.tools.builtin import Toolbox
from medagent.tools.invoke import ToolCallRecord, invoke

MAX_MEMORY_QUESTIONS = 32  # earlier questions of a case shown to a later one
_KINDS = {"choice": "Reply with the letter of the one best option.", "yes_no": "Reply yes or no.",
          "open": "Reply with a short answer."}
AgentFactory = Callable[[str, int, list[str]], Awaitable[Any]]  # (arm, seed, tools) -> a started api.Agent


class VqaCaseRunner:
    def __init__(self, config: StudyConfig, toolbox: Toolbox, store: StudyStore, modality: str | None) -> None:
        assert isinstance(config.graph, VqaGraph)
        self.graph: VqaGraph = config.graph
        self.toolbox, self.store, self.modality = toolbox, store, modality
        self.arms = {arm.name: arm for arm in config.arms} or {"default": Arm(name="default")}
        self.study_experts = config.tool_names(toolbox.registry.names())
        self._refuses_schema: set[int] = set()  # planners whose server refused structured output (constrained: auto)

    def experts(self, arm: str) -> list[str]:
        chosen = self.arms[arm].experts
        return list(self.study_experts) if chosen is None else [name for name in chosen if name in self.study_experts]

    async def run(self, run_id: str, arm: str, question: Question, repeat: int, seed: int, planner: Planner, *,
                  memory_keys: tuple[str, ...] = (), agent_for: AgentFactory | None = None,
                  judge_planner: Planner | None = None, attached: Attached | None = None
                  ) -> tuple[CaseResult, list[dict[str, Any]], list[ToolCallRecord]]:
        """``attached``: the question's images the driver attached (``executor: ray``), by path; the others are
        attached here."""
        started = time.perf_counter()
        settings = self.arms[arm]
        image_ids = await asyncio.to_thread(self._images, question, settings.corruption, seed, attached or {})
        memory = await asyncio.to_thread(self._memory, run_id, memory_keys, repeat)
        calls: list[ToolCallRecord] = []
        evidence: list[str] = []
        transcript: list[Message] = []
        if self.graph.mode == "expert_then_answer":
            calls, evidence = await self._expert_steps(self.experts(arm), image_ids)
        elif self.graph.mode == "agent":
            assert agent_for is not None
            calls, evidence, transcript = await self._agent(arm, question, seed, image_ids, memory,
                                                            agent_for)
        messages = self._messages(settings.prompt or self.graph.instructions, question, image_ids, memory, evidence,
                                  planner)
        turn, constrained = await self._answer(planner, messages, question)
        parsed = extract_answer(turn.content, question)
        correct = is_correct(parsed, question)
        columns: dict[str, Any] = {
            **question_columns(arm, question),
            "vqa.parsed": int(parsed.parsed), "vqa.method": parsed.method,
            "vqa.correct": None if correct is None else int(correct), "vqa.prediction": parsed.value,
            "vqa.constrained": int(constrained),
            "vqa.memory": "kept" if self.graph.keep_memory else "fresh", "vqa.mode": self.graph.mode,
            "vqa.experts": len(self.experts(arm)),
            "vqa.corruption": None if settings.corruption is None else settings.corruption.label,
            "vqa.corruption_kind": None if settings.corruption is None else settings.corruption.label.rsplit("-", 1)[0],
            "vqa.corruption_severity": 0 if settings.corruption is None else settings.corruption.severity,
        }
        if question.kind == "open" and parsed.value is not None:
            columns["vqa.token_f1"] = token_f1(parsed.value, question.answer)
            columns["vqa.token_recall"] = token_recall(parsed.value, question.answer)
        result = {"question": question.question, "options": question.options, "reply": turn.content,
                  "answer": parsed.value, "unparsed_reason": parsed.reason, "images": image_ids}
        if self.graph.judge and question.kind == "open" and parsed.value is not None and judge_planner is not None:
            await self._judge(judge_planner, question, parsed.value, columns, result)
        usage = turn.usage
        return CaseResult(
            status="succeeded", answer=turn.content, result=result, columns=columns, seed=seed, model_id=turn.model,
            latency_s=time.perf_counter() - started, expert_weights=expert_weights(c.output for c in calls if c.ok),
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
        ), [*transcript, *messages, turn.as_message()], calls

    async def _judge(self, planner: Planner, question: Question, answer: str, columns: dict[str, Any],
                     result: dict[str, Any]) -> None:
        """The judge's verdict beside exact match and token F1; a judge that fails is recorded, typed, and the
        question still counts by its measured overlap."""
        try:
            judgement = await judge(planner, self.graph.judge_rubric, question.question, question.answer, answer)
        except MedagentError as exc:
            result["judge_error"] = CaseError.from_exception(exc).model_dump()
            columns["vqa.judge_failed"] = 1
            return
        result["judge"] = judgement.model_dump()
        columns["vqa.judge_correct"] = int(judgement.verdict == "correct")
        columns["vqa.judge_failed"] = 0

    def _images(self, question: Question, corruption: Corruption | None, seed: int, attached: Attached) -> list[str]:
        """The question's images, stored de-identified; perturbed first when the arm says so (seeded per
        question and image, so every arm with the same corruption sees the same noise). An image the driver
        attached is perturbed from its stored record: the record a load of its file gives, so the same ids."""
        if corruption is None:
            return [case_image_id(self.toolbox, attached, path, self.modality) for path in question.images]
        from medagent.experts.cxr_detect import with_detected_modality

        ids = []
        for index, path in enumerate(question.images):
            stored = stored_image(self.toolbox, attached, path)
            record = (self.toolbox.store.load_image(stored.id) if stored is not None
                      else with_detected_modality(self.toolbox.loader.load(path, modality=self.modality)))
            digest = hashlib.sha256(f"{question.question_id}\0{index}\0{seed}".encode()).digest()
            varied = corruption.model_copy(update={"seed": corruption.seed + int.from_bytes(digest[:4], "big")})
            ids.append(self.toolbox.store.put_image(corrupt(record, varied)).id)
        return ids

    def _memory(self, run_id: str, keys: tuple[str, ...], repeat: int) -> list[dict[str, Any]]:
        """The case's earlier questions and the answers given, as stored (none unless keep_memory)."""
        if not self.graph.keep_memory:
            return []
        remembered = []
        for key in keys[-MAX_MEMORY_QUESTIONS:]:
            record = self.store.get_case(run_id, key, repeat)
            if record is not None and record.status == "succeeded" and record.result:
                remembered.append({"question": record.result.get("question"), "options": record.result.get("options"),
                                   "your_answer": record.result.get("answer")})
        return remembered

    async def _expert_steps(self, experts: list[str], image_ids: list[str]) -> tuple[list[ToolCallRecord], list[str]]:
        calls, evidence = [], []
        context = self.toolbox.context(image_ids)
        summaries = self.toolbox.image_summaries(image_ids)
        for step in self.graph.steps:
            if step.tool not in experts:
                continue  # the arm does not use this expert (e.g. experts: none)
            card = self.toolbox.registry.get(step.tool).card
            for image_id in image_ids:
                if not card.accepts_summary(summaries[image_id]):
                    continue  # a CT for a chest X-ray classifier: not run, not counted
                arguments = render_arguments(step.arguments, {"image": image_id})
                done = await invoke(self.toolbox.registry, step.tool, arguments, context,
                                    call_id=f"{step.tool}:{image_id}")
                calls.append(done.record)
                payload = compact_for_planner(done.record.output) if done.record.ok else {
                    "error": done.record.error.code if done.record.error else "failed"}
                evidence.append(fence_tool_result(f"{step.tool} on {image_id}", payload))
        return calls, evidence

    async def _agent(self, arm: str, question: Question, seed: int, image_ids: list[str],
                     memory: list[dict[str, Any]], agent_for: AgentFactory
                     ) -> tuple[list[ToolCallRecord], list[str], list[Message]]:
        agent = await agent_for(arm, seed, self.experts(arm))
        session = agent.scratch_session()  # a fresh conversation per question, always
        try:
            for image_id in image_ids:
                session.attach_stored(image_id)
            answer = await session.ask(self._question_text(question, memory))
            calls = [ToolCallRecord.model_validate(call) for call in answer.tool_calls]
            return calls, [fence_data("Your findings from the experts", {"findings": answer.text or ""},
                                      max_text=4000)], await session.history()
        finally:  # a question's checkpoints (in memory) are of no use once it is answered or failed
            await session.delete()

    def _messages(self, instructions: str, question: Question, image_ids: list[str], memory: list[dict[str, Any]],
                  evidence: list[str], planner: Planner) -> list[Message]:
        summaries = self.toolbox.image_summaries(image_ids)
        lines = [f"- {safe_token(image_id)}: {safe_token(summary.get('modality', 'UNKNOWN'))}"
                 for image_id, summary in summaries.items()]
        parts = ["Images:\n" + "\n".join(lines) if lines else "No image is attached.", *evidence,
                 self._question_text(question, memory)]
        messages: list[Message] = [{"role": "system", "content": instructions},
                                   {"role": "user", "content": "\n\n".join(parts)}]
        send = self.graph.send_images == "always" or (self.graph.send_images == "auto"
                                                      and planner.config.supports_images)
        return self.toolbox.with_image_parts(messages, image_ids) if send and image_ids else messages

    @staticmethod
    def _question_text(question: Question, memory: list[dict[str, Any]]) -> str:
        parts = []
        if memory:
            parts.append(fence_data("Earlier questions about this case and your answers", memory, max_text=2000,
                                    max_body=32_000))
        body: dict[str, Any] = {"question": question.question}
        if question.options:
            body["options"] = question.options
        parts.append(fence_data("The question", body, max_text=16_384, max_body=64_000))
        parts.append(_KINDS[question.kind])
        return "\n\n".join(parts)

    async def _answer(self, planner: Planner, messages: list[Message], question: Question) -> tuple[PlannerTurn, bool]:
        """The planner's answer: schema-constrained unless the study says never, or (auto) its server refused."""
        if self.graph.constrained != "never" and id(planner) not in self._refuses_schema:
            try:
                return await planner.complete(messages, response_schema=choice_schema(question)), True
            except PlannerRejected:
                if self.graph.constrained == "always":
                    raise
                self._refuses_schema.add(id(planner))
        return await planner.complete(messages), False


def question_columns(arm: str, question: Question) -> dict[str, Any]:
    """What identifies a question's row, whatever its outcome: arm, ids, kind, gold, chance, pairing, groups."""
    return {"vqa.arm": arm, "vqa.question_id": question.question_id, "vqa.kind": question.kind,
            "vqa.gold": question.answer, "vqa.chance": question.chance,
            "vqa.case_id": question.case_id or question.question_id, "vqa.pair_id": question.pair_id,
            "vqa.pair_role": question.pair_role,
            **{f"subgroup.{name}": value for name, value in question_groups(question).items()}}
