"""GPU sources (NVML, the fake server's simulated GPU), the polling thread, per-server
selection and fault latching. Imported by the rest of ``controlplane.agent`` (and tests) only.
"""
