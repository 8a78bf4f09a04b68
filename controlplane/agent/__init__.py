"""The node agent: probes local model servers and GPUs, publishes replica records, and
loads/unloads models as the control plane asks. Imported only by the CLI and tests.

Protocols: ``adapter`` (model servers), ``gpu`` (GPU sources). Adapters: ``vllm``,
``sglang``, ``tgi``, ``triton``, ``trtllm``, ``ollama`` (``adapters`` picks one). GPUs:
``nvml`` (real), ``gpu_sim`` (the fake server's simulated GPU), ``gpu_select``, ``faults``
(latching and operator clears). Discovery: ``discovery``, ``docker_source``, ``config``.
Executor: ``desired``, ``loaders``, ``converge``, ``executor``. Safety: ``lock``.
Wiring: ``publisher`` (loops), ``node`` (starts every task), ``main`` (``aixds agent``).
"""
