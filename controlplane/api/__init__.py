"""HTTP config API (FastAPI): fleet and xDS state, models and rollouts, metrics, health,
scoped tokens (``tokens``, ``auth``) and the audit log; and the ``aixds`` commands that
talk to it (``*_cli``).

Imported only by the runtime (and the CLI); it reads and acts through ``ApiContext``.
"""
