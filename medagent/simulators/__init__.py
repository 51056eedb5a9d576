"""Simulated patients, the measurement agent and the dialogue assessor (3MDBench / AgentClinic style).

- :mod:`~medagent.simulators.cases`: :class:`DialogueCase` and the facts each role may see.
- :mod:`~medagent.simulators.loaders`: AgentClinic JSONL, the 3MDBench layout, medagent's own files.
- :mod:`~medagent.simulators.labels` / :mod:`~medagent.simulators.builtin`: label sets, built-in cases.
- :mod:`~medagent.simulators.personas`: temperaments and biases, as data.
- :mod:`~medagent.simulators.patient`, :mod:`~medagent.simulators.measurement`,
  :mod:`~medagent.simulators.assessor`, :mod:`~medagent.simulators.human`: the roles.
- :mod:`~medagent.simulators.dialogue`: the protocol (``run_dialogue``); the doctor is
  :class:`medagent.agents.doctor.DoctorAgent`. Studies run it as ``graph: {type: dialogue}``.
"""
