"""HTTP config API (FastAPI): fleet and xDS state, models and rollouts, metrics, health;
and ``rollout_cli``, the ``aixds rollout`` command that talks to it.

Imported only by the runtime (and the CLI); it reads and acts through ``ApiContext``.
"""
