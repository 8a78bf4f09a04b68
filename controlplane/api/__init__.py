"""HTTP config API (FastAPI): fleet and xDS state, metrics, health; later rollouts.

Imported only by the runtime; it reads state through the objects passed to ``create_app``.
"""
