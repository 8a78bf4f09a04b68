"""Operator intent: what the fleet should do, as written through the config API.

Intent is plain data (stored in Redis as JSON with a revision number, never expiring).
``decide()`` reads it together with the observed fleet state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class Rollout:
    """Traffic split of one model across its versions (blue-green: 100/0; canary: N%)."""

    stable: str
    """The version that takes traffic by default."""
    canary: str = ""
    """The version being rolled out; empty when no rollout is in progress."""
    canary_percent: float = 0.0
    """Share of traffic for ``canary``, 0..100."""


def _empty() -> Mapping[str, Mapping[str, int]]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Intent:
    """Everything operators asked for. The default is an empty intent."""

    revision: int = 0
    rollouts: Mapping[str, Rollout] = field(default_factory=lambda: MappingProxyType({}))
    """Per model name."""
    drained: frozenset[str] = frozenset()
    """Replica ids that take no new requests (DRAINING in EDS)."""
    region_distance: Mapping[str, Mapping[str, int]] = field(default_factory=_empty)
    """``region_distance[a][b]``: how far region b is from region a (failover order)."""
    session_header: str = "x-session-id"
    """Header whose value keeps a session on one version (sticky canaries)."""


EMPTY_INTENT = Intent()
