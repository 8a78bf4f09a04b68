"""Whether a model name is served alike in every live region.

A session keeps its version through a region failover only if the region it fails over to
serves that version, and a client's served-model alias works there only if the servers
there answer to it. Every name a server answers to is a model to aixds (an alias is one
more model name), so both questions come down to one comparison per model name: which
versions each live region serves. When they differ the model's routes say so in a
response header (``ModelRouteIR.regions_differ``), and ``aixds status`` shows it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

NONE = "-"
"""A region that serves no version of the model."""


def regions_differ(serving: Mapping[str, Collection[str]], regions: Collection[str]) -> str:
    """``serving``: region -> the versions of one model with a replica taking traffic
    there; ``regions``: the live regions. '' when every live region serves the same
    versions (one region alone never differs); else each region's versions, regions and
    versions sorted: ``ap-south=-; eu-west=v1; us-east=v1,v2``."""
    sets = {r: frozenset(serving.get(r, ())) for r in regions}
    if len(set(sets.values())) <= 1:
        return ""
    return "; ".join(f"{r}={','.join(sorted(v)) or NONE}" for r, v in sorted(sets.items()))
