"""Simulators that stand in for GPU model servers: the fake vLLM server and its engine.

Used by tests, the demo and benchmarks; imported by the CLI and tests only, never by the
control plane itself.
"""
