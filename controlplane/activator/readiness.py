"""When a held request may go: a model is ready once some replica can take its traffic.

Pure: reads the fleet view and intent that the serve process keeps; ``Readiness`` wakes
every waiter on each fleet change (``changed()``), and each re-checks its own model.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from controlplane.decide.eligibility import candidate, is_fresh
from controlplane.fleet.model import FleetView
from controlplane.intent import Intent
from controlplane.ir import Health


def serving(fleet: FleetView, intent: Intent, model: str, now: float) -> bool:
    """Some fresh replica has a version of ``model`` that takes traffic (ready or warming,
    not draining)."""
    for obs in fleet.values():
        if not is_fresh(obs, now):
            continue
        for m in obs.record.models:
            if m.name != model:
                continue
            c = candidate(obs, model, m.version, intent, now)
            if c is not None and c.health is Health.HEALTHY:
                return True
    return False


class Readiness:
    """``wait(model, deadline)`` returns once ``model`` serves (True) or at the deadline."""

    def __init__(
        self,
        fleet: Callable[[], FleetView],
        intent: Callable[[], Intent],
        clock: Callable[[], float],
    ) -> None:
        self._fleet = fleet
        self._intent = intent
        self._clock = clock
        self._changed = asyncio.Event()

    def changed(self) -> None:
        """The fleet or the intent changed: every waiter looks again."""
        self._changed.set()
        self._changed = asyncio.Event()

    def ready(self, model: str) -> bool:
        return serving(self._fleet(), self._intent(), model, self._clock())

    async def wait(self, model: str, deadline: float, poll_s: float = 0.5) -> bool:
        """Until ``model`` serves or the wall clock passes ``deadline``; also re-checks every
        ``poll_s`` (a replica can turn ready by its record's freshness alone)."""
        while True:
            if self.ready(model):
                return True
            left = deadline - self._clock()
            if left <= 0:
                return False
            ev = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ev.wait(), timeout=min(poll_s, left))
