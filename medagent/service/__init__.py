"""medagent as an HTTP service (``medagent serve``): the agent behind API keys, rate limits and an audit log.

The web framework is imported only by :mod:`medagent.service.app` and the modules it wires (the ``serve``
extra); keys (:mod:`~medagent.service.keys`), the audit log (:mod:`~medagent.service.audit`) and rate limits
(:mod:`~medagent.service.ratelimit`) work without it, so ``medagent keys`` and ``medagent audit`` start fast.
"""
