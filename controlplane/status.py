"""``aixds status``: a terminal view of the control plane's node groups and xDS streams."""

from __future__ import annotations

import sys
from typing import Any

import httpx


def print_status(api: str) -> int:
    try:
        with httpx.Client(base_url=api, timeout=3.0) as c:
            health = c.get("/healthz").json()
            groups = c.get("/v1/groups").json()["groups"]
            xds = c.get("/v1/xds").json()
    except (httpx.HTTPError, ValueError, KeyError) as err:
        print(f"aixds status: cannot read {api}: {err}", file=sys.stderr)
        return 1
    print(
        f"redis connected: {health['redis_connected']}  replicas: {health['replicas']}  "
        f"node groups: {health['node_groups']}"
    )
    for name, g in groups.items():
        print(f"\nnode group {name}")
        for model, split in g["routes"].items():
            print(f"  route {model}: " + ", ".join(f"{c} {w / 100:.2f}%" for c, w in split.items()))
        for cluster, eps in g["clusters"].items():
            print(f"  cluster {cluster}")
            for e in eps:
                print(
                    f"    {e['replica']:<28} {e['address']:<22} w={e['weight']:<4} "
                    f"{e['health']:<9} p{e['priority']} {e['region']}/{e['zone']}"
                )
    streams: list[dict[str, Any]] = xds.get("streams", [])
    print(f"\nxDS streams: {len(streams)}")
    for s in streams:
        types = s.get("types", {})
        acks = "  ".join(
            f"{t}={v.get('acked_version') or '-'}{' NACK' if v.get('last_nack') else ''}"
            for t, v in types.items()
        )
        print(f"  {s.get('node_id')} ({s.get('group')}): {acks}")
    nacks = xds.get("nacks", [])
    if nacks:
        print(f"NACKs: {len(nacks)}")
        for n in nacks[-5:]:
            print(f"  {n}")
    return 0
