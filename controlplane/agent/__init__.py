"""The node agent: probes local model servers (and GPUs) and publishes replica records.

``adapter``/``gpu`` define the Protocols, ``vllm`` the vLLM adapter, ``publisher`` the
loops, ``main`` the ``aixds agent`` command. Imported only by the CLI and tests.
"""
