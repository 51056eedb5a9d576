"""What every model needs to run, below the experts and retrieval that use it.

Device choice and the :class:`~medagent.runtime.expert.Expert` base (lazy load, inference off the event loop),
the shared model cache with a memory budget, weights lookup with checksums, micro-batching, and the provenance
every result carries (including the ``untrained`` marking). It knows no tool, planner or face; import the
submodules directly (this package imports nothing, so a light import stays light).
"""
