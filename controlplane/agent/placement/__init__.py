"""Model placement: the desired-models document, loaders, the pure converger and the executor
that applies it. Imported by the rest of ``controlplane.agent`` (and tests) only.
"""
