"""Observed fleet state: replica records, their Redis schema and codec, and the registry.

``model`` and ``codec`` are pure and may be imported anywhere; ``registry`` does Redis I/O
and is imported only by the runtime, the agent and the API.
"""
