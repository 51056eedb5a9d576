"""Simulated patients, the measurement agent and the dialogue assessor (3MDBench / AgentClinic style).

- :mod:`~medagent.simulators.loaders`: AgentClinic JSONL, the 3MDBench layout, medagent's own files.
- :mod:`~medagent.simulators.builtin`: built-in cases and their label set.
- :mod:`~medagent.simulators.personas`: temperaments and biases, as data.
- :mod:`~medagent.simulators.patient`, :mod:`~medagent.simulators.measurement`,
  :mod:`~medagent.simulators.assessor`, :mod:`~medagent.simulators.human`: the roles.

The protocol they speak (cases, label sets, turns, ``run_dialogue``) is :mod:`medagent.dialogue`; the doctor is
:class:`medagent.agents.doctor.DoctorAgent`. Studies run it as ``graph: {type: dialogue}``.
"""
