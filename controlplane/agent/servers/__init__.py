"""Model servers: one adapter per kind, metric scraping, decode speed, and discovery (flags,
config file, Docker). Imported by the rest of ``controlplane.agent`` (and tests), nothing else.
"""
