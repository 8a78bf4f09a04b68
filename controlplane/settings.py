"""Typed settings of ``aixds serve``, one docstring per field, and the fleet config file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from controlplane.intent import Intent


@dataclass(frozen=True, slots=True)
class ServeSettings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    """Where the fleet registry and intent live."""
    xds_host: str = "127.0.0.1"
    xds_port: int = 18000
    """gRPC ADS server address Envoys connect to."""
    api_host: str = "127.0.0.1"
    api_port: int = 18080
    """HTTP config API, ``/metrics`` and ``/healthz``."""
    config: Path | None = None
    """Optional fleet.yaml: region distances, session header."""
    coalesce_ms: float = 2.0
    """Changes arriving within this window are decided together."""
    resync_s: float = 5.0
    """Full re-read of the registry, on top of events."""
    recovery_grace_s: float = 5.0
    """After Redis comes back, replicas missing from it are kept this long."""
    xds_grace_s: float = 1.0
    """On shutdown, open xDS streams get this long before they are cut."""
    test_hooks: bool = False
    """Enable test-only API switches (never in production)."""


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """The optional fleet.yaml file."""

    region_distance: dict[str, dict[str, int]] = field(default_factory=dict)
    session_header: str = "x-session-id"

    def base_intent(self) -> Intent:
        return Intent(
            region_distance=MappingProxyType(
                {k: MappingProxyType(dict(v)) for k, v in self.region_distance.items()}
            ),
            session_header=self.session_header,
        )


class ConfigError(ValueError):
    pass


def load_fleet_config(path: Path | None) -> FleetConfig:
    """Read fleet.yaml; a clear ``ConfigError`` for anything that does not fit.

    Example::

        regions:
          us-east: {us-west: 10, eu-west: 80}
          eu-west: {us-east: 80, us-west: 90}
        session_header: x-session-id
    """
    if path is None:
        return FleetConfig()
    try:
        doc: Any = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: {e}") from None
    doc = doc or {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    unknown = set(doc) - {"regions", "session_header"}
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}")
    regions = doc.get("regions", {}) or {}
    if not isinstance(regions, dict):
        raise ConfigError(f"{path}: 'regions' must map a region to {{other: distance}}")
    dist: dict[str, dict[str, int]] = {}
    for r, others in regions.items():
        if not isinstance(others, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and v >= 0 for k, v in others.items()
        ):
            raise ConfigError(f"{path}: regions.{r} must map region names to distances >= 0")
        dist[str(r)] = dict(others)
    header = doc.get("session_header", "x-session-id")
    if not isinstance(header, str) or not header:
        raise ConfigError(f"{path}: session_header must be a non-empty string")
    return FleetConfig(region_distance=dist, session_header=header.lower())
