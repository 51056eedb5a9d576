"""LangGraph workflows: the agent loop, fixed pipelines and YAML-defined studies."""
