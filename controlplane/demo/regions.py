"""The demo's regions: names, distances, fleet.yaml, and losing or restoring one live.

With one region the demo runs one Redis and one control plane. With several, each region
stands on its own: its own Redis (the region's registry, which only its agents write), its
own ``aixds serve --region R`` (reading every region's registry) and its own edge Envoy,
as in production; the intent (rollouts, drains, pins, affinity) is one for all, replicated
by Redis from the first region (its home) to an intent Redis in each other region, so a
drain or rollout through any region's API applies everywhere. ``RegionControl`` kills a
region's model servers, agents and Redis at once (``lose``: what a region outage looks
like from the others; its control plane and edge stay up, so the edge's clients see
failover) and starts them again (``restore``); ``control_app`` puts that behind two HTTP
calls that the demo prints.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Literal

from fastapi import FastAPI, HTTPException

from controlplane.demo.procs import Child, ProcessGroup

REGION_NAMES = ("us-east", "eu-west", "ap-south")
DISTANCES = {
    frozenset(("us-east", "eu-west")): 80,
    frozenset(("us-east", "ap-south")): 200,
    frozenset(("eu-west", "ap-south")): 150,
}
"""Failover order: from us-east, eu-west is nearest; from ap-south, eu-west too."""


def distance(a: str, b: str) -> int:
    return DISTANCES[frozenset((a, b))]


def fleet_yaml(
    regions: list[str],
    redis_url: dict[str, str] | None,
    intent_url: dict[str, str] | None = None,
) -> str:
    """fleet.yaml for the demo: with ``redis_url`` (region -> URL) a registry per region,
    else the older form (distances only, one Redis for all); with ``intent_url`` too, the
    intent is replicated: the first region is its home (its intent Redis the primary, the
    others replicas of it)."""
    lines = [f"intent: {{home: {regions[0]}}}"] if intent_url and redis_url else []
    lines.append("regions:")
    for r in regions:
        dist = ", ".join(f"{o}: {distance(r, o)}" for o in regions if o != r)
        if redis_url is None:
            lines.append(f"  {r}: {{{dist}}}")
            continue
        lines += [f"  {r}:", f"    redis: {redis_url[r]}"]
        if intent_url:
            lines.append(f"    intent_redis: {intent_url[r]}")
        lines.append(f"    distance: {{{dist}}}")
    return "\n".join(lines) + "\n"


State = Literal["up", "lost"]


@dataclass
class DemoRegion:
    """One region's processes that a region loss takes down (the Redis and the GPU nodes)."""

    name: str
    redis: Child | None = None
    nodes: list[Child] = field(default_factory=list)
    """Model servers and their agents."""
    intent_redis: Child | None = None
    """The region's copy of the intent (the home's: the primary; others: replicas)."""
    state: State = "up"

    def stores(self) -> list[Child]:
        return [c for c in (self.redis, self.intent_redis) if c is not None]


class RegionControl:
    """Lose and restore regions of a running demo."""

    def __init__(self, group: ProcessGroup, regions: list[DemoRegion]) -> None:
        self._group = group
        self.regions = {r.name: r for r in regions}

    def _get(self, name: str) -> DemoRegion:
        if name not in self.regions:
            raise KeyError(f"no region {name!r}; the demo has {sorted(self.regions)}")
        return self.regions[name]

    def lose(self, name: str) -> DemoRegion:
        """kill -9 the region's Redis (registry and intent copy), model servers and agents,
        all at once."""
        region = self._get(name)
        if region.state == "lost":
            return region
        doomed = [*region.nodes, *region.stores()]
        for child in doomed:  # every signal first, so they die together
            child.signal(signal.SIGKILL)
        for child in doomed:
            self._group.kill(child)  # and reap
        region.state = "lost"
        return region

    def restore(self, name: str) -> DemoRegion:
        """Start the region's Redis first (agents re-publish into it; a restarted intent
        Redis is empty until it syncs from the home, or, at the home, until the control
        planes write back the intent they hold), then its nodes."""
        region = self._get(name)
        if region.state == "up":
            return region
        if region.intent_redis is not None:
            region.intent_redis = self._group.restart(region.intent_redis)
        if region.redis is not None:
            region.redis = self._group.restart(region.redis)
        region.nodes = [self._group.restart(c) for c in region.nodes]
        region.state = "up"
        return region

    def states(self) -> dict[str, State]:
        return {n: r.state for n, r in self.regions.items()}


def control_app(ctl: RegionControl) -> FastAPI:
    """``GET /regions``, ``POST /regions/{name}/lose``, ``POST /regions/{name}/restore``."""
    app = FastAPI(title="aixds demo control", docs_url=None, redoc_url=None)

    @app.get("/regions")
    def regions() -> dict[str, State]:
        return ctl.states()

    # async: the handlers run on the event loop's (main) thread, where the restarted
    # children get their die-with-parent guard (``proc_guard.die_with_parent``)
    @app.post("/regions/{name}/{action}")
    async def act(name: str, action: Literal["lose", "restore"]) -> dict[str, State]:
        try:
            (ctl.lose if action == "lose" else ctl.restore)(name)
        except KeyError as e:
            raise HTTPException(404, str(e.args[0])) from None
        return ctl.states()

    return app
