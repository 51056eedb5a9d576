"""Planner backends and the doctor agent (OpenAI-compatible servers, the embedded default, scripted fakes)."""
