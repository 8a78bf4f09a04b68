"""``aixds demo``: the whole local fleet with a live table; and local process groups.

Used by the CLI and the benchmarks; nothing in the control plane imports it.
"""

from controlplane.demo.main import configure_parser, run

__all__ = ["configure_parser", "run"]
