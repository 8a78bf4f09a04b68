"""The Envoy node (or node group) a plan is made for."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EnvoyNode:
    """Role and place of the Envoys of one node group, and where their listener binds."""

    role: str = "edge"
    region: str = ""
    zone: str = ""
    listen_address: str = "127.0.0.1"
    listen_port: int = 10000
