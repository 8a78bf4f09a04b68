"""The dashboard's timeline: what changed between two snapshots, as events.

``changes(before, after)`` is pure: it compares two ``ui_snapshot.snapshot`` dicts and
names what happened in between (rollout started / share changed / promoted / aborted,
rollbacks with their reason, drains, NACKs, GPU faults, regions demoted or lost,
replicas that came or went). Comparing states rather than hooking each write path
catches every source alike: this replica's API, another control-plane replica, the
automatic rollback, an agent. Two changes inside one snapshot interval (about a
second) show as their net effect.

``Timeline`` keeps the most recent events in a bounded ring.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

Level = Literal["info", "warn", "error"]
Event = dict[str, Any]
"""``{"at": float, "kind": str, "level": Level, "text": str}``."""

MAX_EVENTS = 200


def changes(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> list[Event]:
    """Events that explain how ``before`` became ``after`` (none for the first snapshot,
    nor for the first after the control plane has read Redis: a restart is no news)."""
    if before is None or not before.get("synced", True):
        return []
    at = float(after["at"])
    out: list[Event] = []

    def add(kind: str, level: Level, text: str) -> None:
        out.append({"at": at, "kind": kind, "level": level, "text": text})

    _rollouts(before, after, add)
    _drains(before, after, add)
    _nacks(before, after, add)
    _replicas(before, after, add)
    _regions(before, after, add)
    return out


class Timeline:
    """The last ``maxlen`` events, oldest first."""

    def __init__(self, maxlen: int = MAX_EVENTS) -> None:
        self._events: deque[Event] = deque(maxlen=maxlen)

    def extend(self, events: list[Event]) -> None:
        self._events.extend(events)

    def __iter__(self) -> Iterator[Event]:
        return iter(self._events)

    def __len__(self) -> int:
        return len(self._events)

    def newest(self, n: int) -> list[Event]:
        """The ``n`` most recent events, newest first."""
        return list(reversed(self._events))[:n]


_Add = Callable[[str, Level, str], None]
_REGION_LEVEL: dict[str, Level] = {"lost": "error", "demoted": "warn", "live": "info"}


def _rollouts(before: Mapping[str, Any], after: Mapping[str, Any], add: _Add) -> None:
    was = {m["model"]: m["rollout"] for m in before["models"]}
    for m in after["models"]:
        model, now = m["model"], m["rollout"]
        old = was.get(model)
        if old is None:
            continue
        lr, old_lr = now.get("last_rollback"), old.get("last_rollback")
        if lr is not None and (old_lr is None or lr["at"] != old_lr["at"]):
            add(
                "rollback",
                "error" if lr["trigger"] == "auto" else "warn",
                f"{model}: rolled back {lr['from_version']} -> {lr['to_version']} "
                f"({lr['trigger']}): {lr['reason']}",
            )
            continue
        if now["canary"] and now["canary"] != old["canary"]:
            add(
                "rollout",
                "info",
                f"{model}: canary {now['canary']} started at {now['canary_percent']:g}% "
                f"(stable {now['stable']})",
            )
        elif now["canary"] and now["canary_percent"] != old["canary_percent"]:
            add(
                "rollout",
                "info",
                f"{model}: canary {now['canary']} at {now['canary_percent']:g}% "
                f"(was {old['canary_percent']:g}%)",
            )
        elif now["stable"] != old["stable"] and now["stable"] is not None:
            how = "promoted" if old["canary"] == now["stable"] else "switched to"
            add("rollout", "info", f"{model}: {how} {now['stable']} (was {old['stable']})")
        elif old["canary"] and not now["canary"]:
            add("rollout", "warn", f"{model}: canary {old['canary']} aborted")


def _drains(before: Mapping[str, Any], after: Mapping[str, Any], add: _Add) -> None:
    was, now = set(before["drains"]), set(after["drains"])
    for t in sorted(now - was):
        add("drain", "warn", f"drain {t}: no new requests")
    for t in sorted(was - now):
        add("drain", "info", f"undrain {t}: takes requests again")


def _nacks(before: Mapping[str, Any], after: Mapping[str, Any], add: _Add) -> None:
    seen = {(n["group"], n.get("at"), n.get("type")) for n in before["nacks"]}
    for n in after["nacks"]:
        if (n["group"], n.get("at"), n.get("type")) not in seen:
            add(
                "nack",
                "error",
                f"NACK from {n.get('node_id')} ({n['group']}) of {n.get('type')} "
                f"{n.get('version')}: {n.get('error_detail')}",
            )


def replicas(snap: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Every replica of a snapshot's fleet tree, by id."""
    return {
        r["id"]: r
        for reg in snap["regions"]
        for z in reg["zones"]
        for n in z["nodes"]
        for r in n["replicas"]
    }


def _faults(rep: Mapping[str, Any]) -> dict[int, str]:
    return {g["index"]: g["fault"] or "fault" for g in rep["gpus"] if g["faulty"]}


def _replicas(before: Mapping[str, Any], after: Mapping[str, Any], add: _Add) -> None:
    was, now = replicas(before), replicas(after)
    for rid in sorted(set(now) - set(was)):
        add("replica", "info", f"replica {rid} joined")
    for rid in sorted(set(was) - set(now)):
        add("replica", "warn", f"replica {rid} left (record expired or region lost)")
    for rid in sorted(set(now) & set(was)):
        f_now, f_was = _faults(now[rid]), _faults(was[rid])
        for gpu, reason in sorted(f_now.items()):
            if gpu not in f_was:
                add("fault", "error", f"{rid}: GPU {gpu} faulty ({reason}): leaves EDS")
        for gpu in sorted(set(f_was) - set(f_now)):
            add("fault", "info", f"{rid}: GPU {gpu} fault cleared")
        lost, was_lost = set(now[rid]["lost"]), set(was[rid]["lost"])
        if lost - was_lost:
            add("fault", "error", f"{rid}: server stopped answering ({', '.join(sorted(lost))})")
        elif was_lost and not lost:
            add("fault", "info", f"{rid}: server answers again")
        if now[rid]["fresh"] != was[rid]["fresh"]:
            if now[rid]["fresh"]:
                add("replica", "info", f"replica {rid} heartbeat back")
            else:
                add("replica", "warn", f"replica {rid} heartbeat stale")


def _regions(before: Mapping[str, Any], after: Mapping[str, Any], add: _Add) -> None:
    was = {r["name"]: r["state"] for r in before["regions"]}
    for r in after["regions"]:
        old = was.get(r["name"])
        if old is not None and old != r["state"]:
            add(
                "region",
                _REGION_LEVEL.get(r["state"], "info"),
                f"region {r['name']}: {old} -> {r['state']}",
            )
