"""Has every Envoy taken the latest snapshot? For the API: answer a rollout change only
once the Envoys connected to this replica run it (bounded by a timeout)."""

from __future__ import annotations

import asyncio
import time

from controlplane.xds.ads import AdsServer
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.resources import SHORT_NAMES

_TYPE_OF_SHORT = {short: url for url, short in SHORT_NAMES.items()}


def envoys_current(ads: AdsServer, cache: SnapshotCache) -> tuple[int, int]:
    """(streams that ACKed the current snapshot of their group for every type, streams)."""
    streams = ads.status()["streams"]
    current = 0
    for s in streams:
        snap = cache.get(s["group"])
        ok = True
        for short, st in s["types"].items() if snap is not None else ():
            type_url = _TYPE_OF_SHORT.get(short)
            if type_url is None or not st["subscribed"]:
                continue
            names = st["names"]
            assert snap is not None
            resp = snap.response(type_url, None if names is None else frozenset(names))
            if resp is not None and st["acked_version"] != resp.version:
                ok = False
                break
        current += ok
    return current, len(streams)


class Convergence:
    """``await wait(timeout_s)``: until every stream is current, or the timeout."""

    def __init__(self, ads: AdsServer, cache: SnapshotCache, poll_s: float = 0.002) -> None:
        self._ads = ads
        self._cache = cache
        self._poll_s = poll_s

    async def wait(self, timeout_s: float) -> tuple[int, int]:
        deadline = time.monotonic() + timeout_s
        while True:
            current, total = envoys_current(self._ads, self._cache)
            if current == total or time.monotonic() >= deadline:
                return current, total
            await asyncio.sleep(self._poll_s)
