"""Load reports (LRS) -> per-second counts in Redis, and a recent view for the API.

``LoadAccumulator.add`` is the LRS server's sink: it adds each report's successful and
failed requests per cluster to the bucket of the second it arrived in, and keeps the last
report per Envoy and cluster (with per-endpoint counts) for ``GET /v1/load``. ``run``
flushes the pending buckets to the shared ``LoadStore`` every ``interval_s``; if Redis is
unreachable they stay pending (bounded) and go with the next flush.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from controlplane.fleet.load_store import LoadStore
from controlplane.xds.lrs import LoadReport

log = logging.getLogger(__name__)

MAX_PENDING = 100_000
"""(second, cluster) entries kept while Redis is unreachable; the oldest go first."""


class LoadAccumulator:
    def __init__(
        self,
        store: LoadStore,
        *,
        interval_s: float = 0.25,
        keep_latest_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._interval_s = interval_s
        self._keep_latest_s = keep_latest_s
        self._clock = clock
        self._pending: dict[tuple[int, str], tuple[int, int]] = {}
        self.latest: dict[tuple[str, str], dict[str, Any]] = {}
        """(node id, cluster) -> the last report of that cluster from that Envoy."""
        self._failing = False

    def add(self, report: LoadReport) -> None:
        sec = math.floor(report.at)
        for c in report.clusters:
            if c.success or c.error:
                s, e = self._pending.get((sec, c.cluster), (0, 0))
                self._pending[(sec, c.cluster)] = (s + c.success, e + c.error)
            self.latest[(report.node_id, c.cluster)] = {
                "node_id": report.node_id,
                "at": report.at,
                "interval_s": report.interval_s,
                **asdict(c),
            }
        while len(self._pending) > MAX_PENDING:
            self._pending.pop(next(iter(self._pending)))

    def view(self) -> list[dict[str, Any]]:
        return [self.latest[k] for k in sorted(self.latest)]

    def forget_before(self, at: float) -> None:
        for k in [k for k, v in self.latest.items() if v["at"] < at]:
            del self.latest[k]

    async def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        try:
            await self._store.add(batch)
        except BaseException:
            for k, (s, e) in batch.items():  # put back: they go with the next flush
                s2, e2 = self._pending.get(k, (0, 0))
                self._pending[k] = (s + s2, e + e2)
            raise
        if self._failing:
            log.info("load reports reach Redis again")
            self._failing = False

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if not self._failing:
                    log.warning("cannot write load reports to Redis (kept pending): %s", e)
                    self._failing = True
            self.forget_before(self._clock() - self._keep_latest_s)
