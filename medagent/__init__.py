"""medagent: a planner vision-language model reasoning over medical images by calling expert models."""

__version__ = "0.1.0"
