"""How to serve a planner with vLLM: the flags each model family needs for medagent's tool calls."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from pydantic import BaseModel


class ServeRecipe(BaseModel):
    family: str
    matches: list[str]  # lower-case substrings of the model id or folder name
    flags: list[str]
    tool_calling: str  # the PlannerConfig.tool_calling medagent should use with it
    supports_images: bool = False
    notes: str = ""


def chatml_tools_template() -> Path:
    """A ChatML template that renders tools and <tool_call> blocks (for ChatML models such as SmolLM2)."""
    return Path(str(importlib.resources.files("medagent.agents") / "templates" / "chatml_tools.jinja"))


RECIPES = [
    ServeRecipe(
        family="Qwen2.5-VL", matches=["qwen2.5-vl", "qwen2_5_vl"], tool_calling="native", supports_images=True,
        flags=["--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--max-model-len", "32768"],
        notes="Qwen2.5 models emit hermes-style <tool_call> blocks.",
    ),
    ServeRecipe(
        # after Qwen2.5-VL: the first recipe that matches wins
        family="Qwen2.5", matches=["qwen2.5", "qwen2_5"], tool_calling="native",
        flags=["--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--max-model-len", "32768"],
        notes="Qwen2.5 instruct models emit hermes-style <tool_call> blocks; text only: tools describe the images.",
    ),
    ServeRecipe(
        family="Llama 3.1/3.2/3.3", matches=["llama-3.1", "llama-3.2", "llama-3.3", "llama3.1", "llama3.2",
                                            "llama3.3", "llama-3_1"],
        tool_calling="native",
        flags=["--enable-auto-tool-choice", "--tool-call-parser", "llama3_json", "--max-model-len", "16384"],
        notes=("Llama 3.x emits JSON tool calls (llama3_json parser); its own chat template renders the tools. "
               "Text only: tools describe the images."),
    ),
    ServeRecipe(
        family="MedGemma", matches=["medgemma"], tool_calling="structured", supports_images=True,
        flags=["--max-model-len", "8192"],
        notes=("MedGemma has no tool-call format vLLM can parse; medagent asks for schema-constrained JSON "
               "(vLLM structured outputs) instead, so no parser is needed."),
    ),
    ServeRecipe(
        family="SmolLM2 (ChatML)", matches=["smollm2", "smollm"], tool_calling="structured",
        flags=["--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--chat-template", "{chatml_template}",
               "--dtype", "bfloat16", "--max-model-len", "4096"],
        notes="CPU: set VLLM_CPU_KVCACHE_SPACE=2 and HF_HUB_OFFLINE=1.",
    ),
]


def recipe_for(model: str) -> ServeRecipe | None:
    name = model.lower()
    return next((recipe for recipe in RECIPES if any(token in name for token in recipe.matches)), None)


def serve_command(model: str, *, served_name: str | None = None, host: str = "127.0.0.1", port: int = 8000,
                  python: str = "python") -> list[str]:
    """The vLLM server command. Uses the module entry point: the console script is missing in vllm-cpu."""
    recipe = recipe_for(model)
    flags = [flag.replace("{chatml_template}", str(chatml_tools_template())) for flag in (recipe.flags if recipe else [])]
    command = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", host, "--port", str(port)]
    if served_name:
        command += ["--served-model-name", served_name]
    return command + flags
