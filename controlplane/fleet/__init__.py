"""Fleet state in Redis: replica records (schema, codec, registry), the intent store, the
shared load counts and the rollback lock.

``model`` and ``codec`` are pure and may be imported anywhere; ``registry``,
``intent_store``, ``load_store`` and ``leader`` do Redis I/O and are imported only by the
runtime, the agent and the API.
"""
