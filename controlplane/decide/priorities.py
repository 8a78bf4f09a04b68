"""Locality priorities: the Envoy's own region is priority 0, others follow by distance.

Distances come from intent (``region_distance[own][other]``); regions at the same distance
share a priority, and regions without a configured distance share the priority after all
configured ones. Priorities are dense (0, 1, 2, ...).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

UNKNOWN_DISTANCE = 1 << 30


def region_priorities(
    own_region: str, regions: Iterable[str], distance: Mapping[str, Mapping[str, int]]
) -> dict[str, int]:
    own = distance.get(own_region, {})

    def key(region: str) -> tuple[int, int, str]:
        if region == own_region:
            return (0, 0, region)
        return (1, own.get(region, UNKNOWN_DISTANCE), region)

    others = sorted({r for r in regions if r != own_region}, key=key)
    prio = {own_region: 0}
    rank, last = 0, None
    for r in others:
        k = key(r)[:2]
        if k != last:
            rank += 1
            last = k
        prio[r] = rank
    return prio
