"""Watching replicated intent: probe every region's intent Redis, export what was seen.

With fleet.yaml ``intent.home``, each control plane runs one ``IntentReplication`` loop
(spawned by ``runtime.serve``). Every ``interval_s`` it asks each region's intent Redis
for ``INFO replication`` and the stored revision (concurrently, short timeouts), judges the
result with ``decide.replication`` and keeps the report for the API (``GET /v1/intent``,
``aixds status``) and the metrics. It only reads: replication itself is Redis's work.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Gauge

from controlplane.decide.replication import CopyReport, CopyState, judge_replication
from controlplane.fleet import schema

log = logging.getLogger(__name__)


class ReplicationMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.home_reachable = Gauge(
            "aixds_intent_home_reachable",
            "1 while the intent home's Redis answers as a primary (intent writes possible)",
            registry=registry,
        )
        self.copy_revision = Gauge(
            "aixds_intent_copy_revision",
            "Intent revision held by each region's intent Redis (as last probed)",
            ["region"],
            registry=registry,
        )
        self.link_up = Gauge(
            "aixds_intent_replication_link_up",
            "Per replica region: 1 while its intent Redis is linked to its primary",
            ["region"],
            registry=registry,
        )
        self.lag_bytes = Gauge(
            "aixds_intent_replication_lag_bytes",
            "Per replica region: home's replication offset minus the replica's",
            ["region"],
            registry=registry,
        )


async def probe(region: str, client: aioredis.Redis) -> CopyState:
    """What one region's intent Redis says about itself; never raises."""
    try:
        info: dict[str, Any] = await client.info("replication")
        rev, epoch = await client.hmget(schema.INTENT_KEY, ["revision", "epoch"])
    except Exception as e:  # unreachable, timed out, refused: all mean "no answer"
        return CopyState(region, False, error=f"{type(e).__name__}: {e}")
    role = "replica" if info.get("role") == "slave" else "primary"
    if role == "primary":
        return CopyState(
            region,
            True,
            role,
            offset=_int(info.get("master_repl_offset")),
            revision=_int(rev),
            epoch=str(epoch or ""),
        )
    down = info.get("master_link_down_since_seconds")
    return CopyState(
        region,
        True,
        role,
        link_up=info.get("master_link_status") == "up",
        link_down_s=float(down) if isinstance(down, int | float) and down >= 0 else None,
        offset=_int(info.get("slave_repl_offset")),
        revision=_int(rev),
        epoch=str(epoch or ""),
    )


def _shape(problems: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(re.sub(r"\d+(\.\d+)?", "N", p) for p in problems)


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


class IntentReplication:
    """Probes every region's intent Redis; ``report()`` is the last judgement."""

    def __init__(
        self,
        home: str,
        local: str,
        clients: Mapping[str, aioredis.Redis],
        metrics: ReplicationMetrics,
        *,
        interval_s: float = 2.0,
    ) -> None:
        if home not in clients or local not in clients:
            raise ValueError(f"need the intent Redis of {home!r} and {local!r}")
        self.home = home
        self.local = local
        self._clients = dict(clients)
        self._m = metrics
        self._interval_s = interval_s
        self.reports: dict[str, CopyReport] = {}
        self._logged: dict[str, tuple[str, ...]] = {}

    async def tick(self) -> dict[str, CopyReport]:
        states = await asyncio.gather(*(probe(r, c) for r, c in self._clients.items()))
        self.reports = judge_replication(self.home, {s.region: s for s in states})
        home = self.reports[self.home].state
        self._m.home_reachable.set(int(home.reachable and home.role == "primary"))
        for region, rep in self.reports.items():
            st = rep.state
            if st.revision is not None:
                self._m.copy_revision.labels(region=region).set(st.revision)
            if region != self.home:
                self._m.link_up.labels(region=region).set(int(bool(st.link_up)))
                if rep.lag_bytes is not None:
                    self._m.lag_bytes.labels(region=region).set(rep.lag_bytes)
            # Logged when the problems change, not when only a duration or offset does.
            if _shape(rep.problems) != _shape(self._logged.get(region, ())):
                if rep.problems:
                    log.warning("intent copy of %s: %s", region, "; ".join(rep.problems))
                elif region in self._logged:
                    log.info("intent copy of %s: ok again", region)
                self._logged[region] = rep.problems
        return self.reports

    async def run(self) -> None:
        while True:
            await self.tick()
            await asyncio.sleep(self._interval_s)

    def report(self) -> dict[str, Any]:
        """The JSON view for ``GET /v1/intent`` (``replication``)."""
        return {
            "home": self.home,
            "region": self.local,
            "regions": {
                r: {
                    "role": rep.expected_role,
                    "reachable": rep.state.reachable,
                    "redis_role": rep.state.role,
                    "link_up": rep.state.link_up,
                    "link_down_s": rep.state.link_down_s,
                    "revision": rep.state.revision,
                    "lag_bytes": rep.lag_bytes,
                    "behind": rep.behind,
                    "problems": list(rep.problems),
                }
                for r, rep in self.reports.items()
            },
        }
