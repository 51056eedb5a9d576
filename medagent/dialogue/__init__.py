"""The diagnostic dialogue protocol that the doctor and the simulated roles both speak.

- :mod:`~medagent.dialogue.cases`: :class:`DialogueCase` and the facts each role may see.
- :mod:`~medagent.dialogue.labels`: label sets and normalisation of free-text diagnoses.
- :mod:`~medagent.dialogue.protocol`: turns, replies, the speakers' interface and the loop (``run_dialogue``).

It sits below both sides: the doctor (:mod:`medagent.agents.doctor`) and the simulated patient, measurement
agent and assessor (:mod:`medagent.simulators`) import it; it imports neither.
"""
