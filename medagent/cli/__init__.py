"""Command-line face of medagent."""
