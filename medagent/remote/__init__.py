"""Experts in their own process or virtual environment: the expert service and its client."""
