"""The intent view: the operator intent from Redis, merged with fleet.yaml, kept current.

Every control-plane replica runs one. A revision published on the intent-events channel
triggers a read; a periodic re-read catches anything missed. A revision is adopted only if
it is newer in the same epoch (see ``fleet.intent_store``), so a slow read never rolls the
view back. A document that does not decode is skipped, counted and logged: the last good
intent stays (fail static), as it does while Redis is unreachable. If the key is gone (a
Redis restarted without persistence) the last adopted intent is written back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from controlplane.fleet.intent_store import IntentStore, StoredIntent
from controlplane.intent import Intent, IntentError, intent_from_doc, with_base
from controlplane.runtime.reconnect import reconnect_forever

log = logging.getLogger(__name__)


class IntentMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.revision = Gauge(
            "aixds_intent_revision",
            "Revision of the intent this replica acts on",
            registry=registry,
        )
        self.malformed = Counter(
            "aixds_intent_malformed",
            "Intent documents read from Redis that did not decode (skipped)",
            registry=registry,
        )
        self.restored = Counter(
            "aixds_intent_restored",
            "Times this replica wrote its intent back to a Redis that had lost it",
            registry=registry,
        )


def decode_stored(stored: StoredIntent, base: Intent) -> Intent:
    """The intent of a stored document merged with ``base``; raises ``IntentError``."""
    if stored.doc is None:
        return with_base(Intent(), base)
    try:
        doc = json.loads(stored.doc)
    except ValueError as e:
        raise IntentError(f"not JSON: {e}") from None
    return with_base(intent_from_doc(doc, stored.revision), base)


class IntentWatcher:
    def __init__(
        self,
        store: IntentStore,
        base: Intent,
        on_change: Callable[[], None],
        metrics: IntentMetrics,
        *,
        resync_s: float = 5.0,
        max_backoff_s: float = 2.0,
    ) -> None:
        self._store = store
        self.base = base
        self._on_change = on_change
        self._m = metrics
        self._resync_s = resync_s
        self._max_backoff_s = max_backoff_s
        self._intent = with_base(Intent(), base)
        self.stored: StoredIntent | None = None
        """The last adopted document (None: none yet)."""
        self.synced = False
        """Intent was read from Redis at least once (before that, nothing is published)."""
        self.connected = False
        self._bad_logged: tuple[str, int] | None = None

    def current(self) -> Intent:
        return self._intent

    @property
    def revision(self) -> int:
        return self._intent.revision

    def adopt(self, stored: StoredIntent) -> bool:
        """Take ``stored`` if it is newer (or of a new epoch); True if the view changed."""
        cur = self.stored
        if stored.doc is None:
            return False
        if cur is not None and stored.epoch == cur.epoch and stored.revision <= cur.revision:
            return False
        try:
            intent = decode_stored(stored, self.base)
        except IntentError as e:
            self._m.malformed.inc()
            if self._bad_logged != (stored.epoch, stored.revision):
                self._bad_logged = (stored.epoch, stored.revision)
                log.error(
                    "intent revision %d in Redis does not decode, keeping revision %d: %s",
                    stored.revision,
                    self.revision,
                    e,
                )
            return False
        self.stored = stored
        self._intent = intent
        self._m.revision.set(stored.revision)
        log.info("intent revision %d adopted", stored.revision)
        self._on_change()
        return True

    async def refresh(self) -> None:
        """Read Redis once: adopt a newer intent, or restore ours if the key is gone."""
        stored = await self._store.read()
        if stored.doc is None and self.stored is not None:
            if await self._store.restore(self.stored):
                self._m.restored.inc()
                log.warning(
                    "intent missing from Redis (restarted without persistence?): "
                    "wrote back revision %d",
                    self.stored.revision,
                )
        else:
            self.adopt(stored)
        if not self.synced:
            self.synced = True
            log.info("intent synced at revision %d", self.revision)
            self._on_change()

    async def run(self) -> None:
        """Follow the intent; while Redis is unreachable keep the last one and reconnect."""
        await reconnect_forever(
            self._session,
            self._on_down,
            max_backoff_s=self._max_backoff_s,
            was_up=lambda: self.connected,
        )

    def _on_down(self, e: Exception) -> None:
        if self.connected:
            log.warning("intent watch lost Redis, keeping revision %d: %s", self.revision, e)
        self.connected = False

    async def _session(self) -> None:
        events = self._store.events()
        wake = asyncio.Event()

        async def pump() -> None:
            async for _ in events:
                wake.set()

        pump_task = asyncio.create_task(pump(), name="intent-events")
        pump_task.add_done_callback(lambda _: wake.set())  # a dropped stream: reconnect now
        try:
            await self.refresh()
            self.connected = True
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), self._resync_s)
                if pump_task.done():
                    pump_task.result()
                    raise ConnectionError("intent event stream ended")
                wake.clear()
                await self.refresh()
        finally:
            pump_task.cancel()
            await asyncio.wait([pump_task], timeout=1.0)
