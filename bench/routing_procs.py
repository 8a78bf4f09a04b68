"""Measurement helpers of the routing benchmark: CPU time of process trees, Envoy stats.

CPU time comes from ``/proc/<pid>/stat`` (utime + stime) of a process and all of its
descendants (``aixds envoy`` runs Envoy as a child), so a run can report how much of a core
each part used and warn when one came near being CPU-bound.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field

import httpx

CLK_TCK = os.sysconf("SC_CLK_TCK")
CPU_BOUND_WARN = 0.5
"""Share of one core above which a process counts as (nearly) CPU-bound."""


def _stat(pid: int) -> tuple[int, float] | None:
    """(ppid, cpu seconds) of ``pid``, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("latin-1")
    except OSError:
        return None
    rest = raw[raw.rfind(")") + 2 :].split()
    # fields after the command: state ppid ... utime(12th) stime(13th), 0-based 11 and 12
    return int(rest[1]), (int(rest[11]) + int(rest[12])) / CLK_TCK


def _all_stats() -> dict[int, tuple[int, float]]:
    out: dict[int, tuple[int, float]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            s = _stat(int(name))
            if s is not None:
                out[int(name)] = s
    return out


def tree_cpu(roots: dict[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each named process and its live descendants."""
    stats = _all_stats()
    children: dict[int, list[int]] = defaultdict(list)
    for pid, (ppid, _) in stats.items():
        children[ppid].append(pid)
    out: dict[str, float] = {}
    for name, root in roots.items():
        total, todo = 0.0, [root]
        while todo:
            pid = todo.pop()
            if pid in stats:
                total += stats[pid][1]
            todo.extend(children.get(pid, ()))
        out[name] = total
    return out


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


@dataclass
class CpuWindow:
    """CPU use of named process trees between ``start()`` and ``stop()``, in cores."""

    roots: dict[str, int]
    _t0: float = 0.0
    _c0: dict[str, float] = field(default_factory=dict)
    share: dict[str, float] = field(default_factory=dict)

    def start(self, now: float) -> None:
        self._t0, self._c0 = now, tree_cpu(self.roots)

    def stop(self, now: float) -> dict[str, float]:
        c1 = tree_cpu(self.roots)
        dt = max(1e-6, now - self._t0)
        self.share = {k: (c1[k] - self._c0.get(k, c1[k])) / dt for k in self.roots}
        return self.share


def envoy_xds_updates(client: httpx.Client, admin_port: int) -> int:
    """xDS updates Envoy accepted so far: CDS + every cluster's EDS + LDS + RDS."""
    text = client.get(f"http://127.0.0.1:{admin_port}/stats?filter=update_success$").text
    total = 0
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if name.endswith(".update_success") and value.strip().isdigit():
            total += int(value)
    return total


def cp_pushes(client: httpx.Client, api_port: int) -> dict[str, float]:
    """``aixds_xds_pushes_total`` by type, from the control plane's /metrics."""
    out: dict[str, float] = {}
    for line in client.get(f"http://127.0.0.1:{api_port}/metrics").text.splitlines():
        if line.startswith("aixds_xds_pushes_total{"):
            labels, _, value = line.partition("} ")
            kind = labels.split('type="', 1)[1].split('"', 1)[0]
            out[kind] = float(value)
    return out
