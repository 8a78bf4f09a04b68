"""``aixds status``: a terminal view of the control plane's node groups, xDS, rollouts."""

from __future__ import annotations

import sys
import textwrap
from typing import Any

import httpx

from controlplane.api.drain_cli import format_drains
from controlplane.api.models_cli import failed, format_placement
from controlplane.api.rollout_cli import format_rollout
from controlplane.tls import client_verify, verify_hint


def print_status(api: str, token: str = "", ca: str = "") -> int:
    """Print the control plane's state read from ``api`` (verified with ``ca`` if https)."""
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        with httpx.Client(
            base_url=api, timeout=3.0, headers=headers, verify=client_verify(ca)
        ) as c:
            health = c.get("/healthz").json()
            r = c.get("/v1/groups")
            if r.status_code in (401, 403):
                detail = r.json().get("detail", r.text)
                print(
                    f"aixds status: {api} needs a token with scope read (--token or "
                    f"AIXDS_API_TOKEN): {r.status_code} {detail}",
                    file=sys.stderr,
                )
                return 1
            groups = r.json()["groups"]
            xds = c.get("/v1/xds").json()
            fleet = c.get("/v1/fleet").json()["replicas"]
            rollouts = _rollout_lines(c)
            drains = c.get("/v1/drains")
            placement = c.get("/v1/placement")
            intent = c.get("/v1/intent")
    except (httpx.HTTPError, ValueError, KeyError) as err:
        print(f"aixds status: cannot read {api}: {err}{verify_hint(err, api)}", file=sys.stderr)
        return 1
    print(
        f"redis connected: {health['redis_connected']}  replicas: {health['replicas']}  "
        f"node groups: {health['node_groups']}"
    )
    if intent.status_code == 200 and intent.json().get("replication"):
        print("\n" + "\n".join(format_replication(intent.json())))
    for name, g in groups.items():
        print(f"\nnode group {name}")
        differ = g.get("regions_differ", {})
        for model, split in g["routes"].items():
            print(f"  route {model}: " + ", ".join(f"{c} {w / 100:.2f}%" for c, w in split.items()))
            if model in differ:
                print(f"    regions differ: {differ[model]}")
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
    print("\n" + "\n".join(rollouts))
    if drains.status_code == 200 and drains.json()["drained"]:
        print("\n" + format_drains(drains.json()))
    if placement.status_code == 200:
        doc = placement.json()
        if doc["pinned"] or (doc["decision"] or {}).get("models"):
            print("\n" + format_placement(doc))
    failures = _failure_lines(fleet)
    if failures:
        print("\n" + "\n".join(failures))
    return 0


def format_replication(doc: dict[str, Any]) -> list[str]:
    """Replicated intent from ``GET /v1/intent``: each region's copy, the home first."""
    rep = doc["replication"]
    home, here = rep["home"], rep["region"]
    lines = [
        f"intent: home {home}; this region ({here}) applies revision {doc['revision']}",
    ]
    regions: dict[str, Any] = rep["regions"]
    for r in sorted(regions, key=lambda r: (r != home, r)):
        c = regions[r]
        rev = "-" if c["revision"] is None else str(c["revision"])
        if not c["reachable"]:
            link = "unreachable"
        elif c["role"] == "home":
            link = f"redis {c['redis_role']}"
        elif c["link_up"]:
            link = "link up" + (f", lag {c['lag_bytes']} B" if c["lag_bytes"] is not None else "")
        else:
            down = c.get("link_down_s")
            link = "link DOWN" + (f" {down:g} s" if down is not None else "")
        behind = f" ({c['behind']} behind)" if c.get("behind") else ""
        mark = "*" if r == here else " "
        lines.append(f" {mark}{r:<14} {c['role']:<8} revision {rev:<5}{behind} {link}")
        lines += [f"    ! {p}" for p in c["problems"]]
    return lines


def _failure_lines(replicas: list[dict[str, Any]]) -> list[str]:
    """Loads and unloads the agents could not do, from the records in ``GET /v1/fleet``."""
    lines = []
    for r in replicas:
        for f in r.get("failures", []):
            model = f"{f['name']}@{f['version'] or '-'}"
            lines.append(f"  {r['replica_id']}: {f['op']} {model} {failed(f)}")
    return [f"model load failures: {len(lines)}", *lines] if lines else []


def _rollout_lines(c: httpx.Client) -> list[str]:
    """The rollouts section, from ``GET /v1/rollouts`` (a server without intent answers 503)."""
    r = c.get("/v1/rollouts")
    if r.status_code != 200:
        try:
            reason = r.json()["error"]
        except (ValueError, KeyError, TypeError):
            reason = r.reason_phrase
        return [f"rollouts: unavailable ({r.status_code} {reason})"]
    doc = r.json()
    if not doc["rollouts"]:
        return ["rollouts: none"]
    lines = [f"rollouts (intent revision {doc['revision']})"]
    lines += [textwrap.indent(format_rollout(ro), "  ") for ro in doc["rollouts"]]
    return lines
