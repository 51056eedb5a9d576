"""Simulated patients, the measurement agent and the dialogue assessor."""
