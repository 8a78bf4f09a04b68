"""Writing the audit log without ever failing the change it records.

``AuditTrail.record`` is called after a change was stored (intent by ``RolloutService``,
desired models and GPU-fault clears by the API). If the entry cannot be appended (Redis
down, the intent home unreachable, slower than ``timeout_s``), the change stands: the
failure is counted in ``aixds_audit_writes_total{result="failed"}`` and logged with the
whole entry, so it can still be found in the control plane's log.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from controlplane.fleet.audit import Actor, AuditEntry, AuditLog, entry, to_fields

log = logging.getLogger(__name__)


class AuditMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.writes = Counter(
            "aixds_audit_writes",
            "Audit-log appends by result (ok, failed: the change stands, the entry is logged)",
            ["result"],
            registry=registry,
        )
        for result in ("ok", "failed"):
            self.writes.labels(result)


class AuditTrail:
    def __init__(self, store: AuditLog, metrics: AuditMetrics, *, timeout_s: float = 2.0) -> None:
        self.store = store
        self.metrics = metrics
        self._timeout_s = timeout_s

    async def record(
        self, by: Actor, action: str, target: str, old: Any, new: Any, *, revision: int = 0
    ) -> AuditEntry | None:
        """Append one entry; the stored entry, or None if it could not be (never raises)."""
        e = entry(by, action, target, old, new, revision=revision)
        try:
            stored_id = await asyncio.wait_for(self.store.append(e), self._timeout_s)
        except Exception as err:
            self.metrics.writes.labels("failed").inc()
            log.error(
                "audit log not written (the change stands): %s: %s; entry %s",
                type(err).__name__, err or "timed out", to_fields(e),
            )  # fmt: skip
            return None
        self.metrics.writes.labels("ok").inc()
        return replace(e, id=stored_id)
