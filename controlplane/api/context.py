"""What the API reads and acts through: ``ApiContext``, built by ``runtime.serve``.

The rollout parts are optional so a read-only app (and tests) can leave them out; the
endpoints that need them answer 503 then.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from controlplane.runtime.autorollback import AutoRollback
from controlplane.runtime.fleet_watch import FleetWatcher
from controlplane.runtime.intent_watch import IntentWatcher
from controlplane.runtime.load_flush import LoadAccumulator
from controlplane.runtime.reconcile import Reconciler
from controlplane.runtime.rollout_ops import RolloutService


class TestHooks:
    """Test-only switches, enabled by ``aixds serve --test-hooks``."""

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        self.invalid_xds = False


@dataclass
class ApiContext:
    """What the API reads. ``xds_status`` returns the ADS server's per-stream status."""

    watcher: FleetWatcher
    reconciler: Reconciler
    registry: CollectorRegistry
    xds_status: Callable[[], dict[str, Any]]
    test_hooks: TestHooks | None = None
    intents: IntentWatcher | None = None
    rollouts: RolloutService | None = None
    guard: AutoRollback | None = None
    loads: LoadAccumulator | None = None
    api_token: str = ""
    """Bearer token for writes; empty: writes are refused with 403."""
    redis: Any = None
    """The registry's Redis client (``redis.asyncio.Redis``), for operator writes."""
