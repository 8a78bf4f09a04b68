"""Sessions: multi-turn chat through aixds vs Envoy LEAST_REQUEST, static MAGLEV, vllm-router.

The workload (``sessions_workload``): seeded chat sessions arrive Poisson; each has 3 to
20 turns with think time, each turn's prompt is the whole history plus a new message (the
prefix grows), groups of sessions share a system prompt. 8 fake vLLM replicas with mixed
speeds and vLLM-like automatic prefix caching (a cached prefix skips prefill; prefill is
costly, see ``sessions_workload``). A quarter of the way through each window ``gpu-3``
becomes slow; halfway ``gpu-5`` leaves: its agent stops (its record goes), its server
``DRAIN_S`` later (what it still runs is cut); it is back before the next run. The
capacity is measured first (closed loop straight to the servers, sessions pinned to
replicas, same events); then for each load (60/80/95 % of it) and each policy the same
seeded sessions go through 4 edges (a quarter of them each):

- ``LEAST_REQUEST``: static Envoys as aixds would configure them, no affinity;
- ``MAGLEV``: static Envoys, equal weights, the route hashing on ``x-session-id``;
- ``vllm-router-ca``: 4 ``vllm-router`` processes (vLLM's Rust router, the ``bench``
  extra) with ``--policy cache_aware`` (a prefix tree of each worker's prompts);
- ``aixds``: ``aixds serve`` + agents + Envoys over ADS, as ``bench.routing`` runs it.

Per policy and load: TTFT p50/p99, end-to-end p99, throughput, prefix-cache hit rate
(deltas of ``vllm:prefix_cache_hits``/``queries`` over the window, summed over replicas)
and as a share of an oracle (the same turns if no session ever moved and no cache ever
evicted: ``sessions_workload.oracle_hits``), sessions moved per minute (consecutive turns
of a session on different replicas), the share of sessions that moved across the
replica's removal, errors; then the targets, a plot, and last:

    session TTFT p99 ratio at 80% load: vs LEAST_REQUEST X.XX, vs MAGLEV Y.YY, vs vllm-router Z.ZZ

(baseline p99 / aixds p99: above 1, aixds is better).

    python -m bench.sessions              # 3 loads x 4 policies, 45 s warm-up + 90 s windows
    python -m bench.sessions --quick      # 80% only, 15 s + 30 s windows, no plot

A session lasts ~40 s: with a short warm-up fewer sessions are live in the window than in
steady state, so the offered turns/s (``offer/s``) stay under the nominal load; compare
it with the capacity line.
    python -m bench.sessions --loads 0.8 --policies MAGLEV,aixds --keep-logs /tmp/sb
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import itertools
import json
import math
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import httpx

from bench.routing import (
    EDGES,
    Bench,
    Edge,
    RunResult,
    _ms,
    _ratio,
    _sleep_until,
    print_cpu,
    print_served,
    save_results,
    shut_down,
    summarize,
    vllm_router_binary,
    write_plot,
)
from bench.routing_procs import loadavg
from bench.routing_workload import MODEL, SPEEDS, VERSION, ServerShape
from bench.sessions_load import SESSION_FIELDS
from bench.sessions_workload import (
    DRAIN_S,
    REMOVED,
    REMOVED_AT,
    SLOWED,
    Session,
    fraction,
    make_sessions,
    mean_turns,
    oracle_hits,
    session_rate,
    session_shape,
)
from controlplane.demo.procs import wait_port
from controlplane.ir import affinity_cluster_name
from controlplane.proc_guard import interrupt_on_stop_signals

POLICIES = ("LEAST_REQUEST", "MAGLEV", "vllm-router-ca", "aixds")
BASELINES = {"LEAST_REQUEST": 2.0, "MAGLEV": 1.3, "vllm-router-ca": 1.0}
"""TTFT p99 ratio (baseline / aixds) each baseline should reach at 80% load."""
HIT_TARGET = 0.9
"""aixds's hit rate as a share of the oracle's."""
MOVE_SLACK = 1.1
"""At most this many times 1/N of the sessions may move when 1 of N replicas leaves."""
ROOT = Path(__file__).resolve().parents[1]
PLOT = ROOT / "docs" / "sessions-ttft-p99.png"
CAPACITY_SEED = 4321
SESSION_LOAD = "bench.sessions_load"
METRICS = ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total")
PROBE_KEYS = 1000
"""Session keys probed through an idle aixds edge before and after the replica leaves."""
PROBE_TRIES = 3
"""Probes of one side of the mapping probe until the weights held still through one."""
HOME_TURNS = 3
"""A session's home just before and just after the removal: the replica that served most
of this many turns (one turn bounded load passed on does not move it)."""


@dataclass
class SessionResult(RunResult):
    hits: float = 0.0
    queries: float = 0.0
    oracle_hits: float = 0.0
    oracle_queries: float = 0.0
    moves: int = 0
    """Consecutive turns of one session on different replicas (later turn in the window)."""
    across_removal: int = 0
    """Sessions with a turn served before the replica left and one after."""
    moved_on_removal: int = 0
    """Of those, how many were served by another replica once its server was gone than just
    before its agent left."""
    on_removed: int = 0
    """Of those, how many were on the replica that left."""
    home_moved: int = 0
    """Of those, how many have another home after than before: the replica that served most
    of its last ``HOME_TURNS`` turns before the replica left, and of its first
    ``HOME_TURNS`` once its server was gone (ties: the latest before, the first after). A
    turn that bounded load passed to the next replica while the home was busy does not
    move the home; the mapping change of one leaving replica does; a move earlier in the
    window (the slowed replica shed) is not counted as the removal's."""
    probe_keys: int = 0
    """aixds only: session keys probed through an idle edge before and after the replica
    left (``SessionBench.mapping_churn``); 0 when not probed."""
    probe_on_removed: int = 0
    """Of those, how many the edge sent to the replica that left, before it left."""
    probe_moved: int = 0
    """Of those, how many another replica served after it left than before."""
    probe_share: float = math.nan
    """The leaver's share of the affinity weight (healthy hosts) when probed."""
    probe_settled: bool = True
    """The weights were the same at the end of each probe as at its start (else the keys
    were mapped by two tables and the count is not the removal's alone)."""
    window_share: float = math.nan
    """The leaver's share of the affinity weight at one edge as it left in the window (a
    shed replica's weight does not count: it is out of the table)."""

    @property
    def hit_rate(self) -> float:
        return fraction(self.hits, self.queries)

    @property
    def oracle_rate(self) -> float:
        return fraction(self.oracle_hits, self.oracle_queries)

    @property
    def of_oracle(self) -> float:
        return fraction(self.hit_rate, self.oracle_rate)

    @property
    def moves_per_min(self) -> float:
        return self.moves / (self.window / 60.0)

    @property
    def moved_share(self) -> float:
        return fraction(self.moved_on_removal, self.across_removal)

    @property
    def home_moved_share(self) -> float:
        return fraction(self.home_moved, self.across_removal)

    @property
    def probe_moved_share(self) -> float:
        return fraction(self.probe_moved, self.probe_keys)


def affinity_hosts(clusters: Any) -> dict[int, tuple[int, bool]]:
    """Port -> (weight, healthy) of the affinity cluster's hosts, from Envoy's admin
    ``/clusters?format=json``."""
    name = affinity_cluster_name(MODEL, VERSION)
    return {
        h["address"]["socket_address"]["port_value"]: (
            int(h.get("weight", 1)),
            h.get("health_status", {}).get("eds_health_status", "HEALTHY") == "HEALTHY",
        )
        for c in clusters.get("cluster_statuses", [])
        if c["name"] == name
        for h in c.get("host_statuses", [])
    }


def leaver_share(hosts: dict[int, tuple[int, bool]], port: int) -> float:
    """The share of the Maglev table the host on ``port`` holds: its weight over the healthy
    hosts' (0 when it is not healthy): the share of session keys that must move when it
    leaves."""
    total = sum(w for w, healthy in hosts.values() if healthy)
    w, healthy = hosts.get(port, (0, False))
    return fraction(w, total) if healthy else 0.0


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95 % Wilson interval of a share ``k`` of ``n``: how far a small sample can lie."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, mid - half), min(1.0, mid + half)


# -- the bench -------------------------------------------------------------------------------


def cache_counters(client: httpx.Client, url: str) -> tuple[float, float]:
    """(queries, hits) prompt tokens of one fake server's prefix cache so far."""
    got = dict.fromkeys(METRICS, 0.0)
    for line in client.get(f"{url}/metrics").text.splitlines():
        name, _, value = line.rpartition(" ")
        name = name.split("{", 1)[0]
        if name in got:
            got[name] += float(value)
    return got[METRICS[0]], got[METRICS[1]]


class SessionBench(Bench):
    """``routing.Bench`` with the session events: one replica slowed, one removed."""

    def __init__(self, log_dir: Path, shape: ServerShape, gpu: str) -> None:
        super().__init__(log_dir, shape, gpu)
        self.counters: dict[str, list[tuple[float, float]]] = defaultdict(list)
        """Per replica: (queries, hits) at the window's start and end (or its removal)."""
        self.snapshot_to: tuple[Edge, Path] | None = None
        """An Envoy edge whose clusters (admin ``/clusters``) are saved to this file as the
        replica leaves: the weights and health each host had then, for the logs."""
        self.window_share = math.nan
        """The leaver's affinity weight share at that edge then (``leaver_share``)."""
        self.probe_settled = True
        """The last ``mapping_churn``'s probes each saw the same weights from start to end."""

    def event_times(self) -> list[float]:
        return [SLOWED.at, REMOVED_AT]

    def _scrape(self) -> None:
        for r in self.replicas:
            with contextlib.suppress(httpx.HTTPError):
                self.counters[r.replica_id].append(cache_counters(self.http, r.url))

    def play_events(self, t_begin: float, window: float) -> None:
        self.counters.clear()
        self._scrape()
        _sleep_until(t_begin + SLOWED.at * window)
        self.control(self.replicas[SLOWED.replica], SLOWED.control)
        _sleep_until(t_begin + REMOVED_AT * window)
        gone = self.replicas[REMOVED]
        self.window_share = math.nan
        if self.snapshot_to is not None and self.snapshot_to[0].admin:
            edge, path = self.snapshot_to
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                url = f"http://127.0.0.1:{edge.admin}/clusters?format=json"
                text = self.http.get(url).text
                path.write_text(text)
                self.window_share = leaver_share(affinity_hosts(json.loads(text)), gone.port)
        # The node leaves as an operator removes one: its agent stops first (its record
        # goes, so a control plane can drain it), its server DRAIN_S later (what it still
        # runs then is cut). Static baselines see only the server going.
        self.agents[REMOVED].signal(signal.SIGTERM)
        _sleep_until(t_begin + REMOVED_AT * window + DRAIN_S)
        with contextlib.suppress(httpx.HTTPError):
            self.counters[gone.replica_id].append(cache_counters(self.http, gone.url))
        gone.child.signal(signal.SIGTERM)
        _sleep_until(t_begin + window)
        self._scrape()

    def restore(self) -> None:
        """Bring the removed replica (server and agent) back, on its port."""
        gone = self.replicas[REMOVED]
        self.stop([gone.child, self.agents[REMOVED]])
        gone.child = self.start_server(REMOVED, SPEEDS[REMOVED], gone.port)
        wait_port(gone.port, timeout=30)
        self.agents[REMOVED] = self.start_agent(gone)

    def mapping_churn(self, edge: Edge, keys: int) -> tuple[int, int, int, float]:
        """(keys, on the leaver, moved, its weight share): the key-to-replica mapping of one
        aixds edge, idle, before and after ``gpu-REMOVED`` leaves as in the window (its
        agent stops), probed with ``keys`` session keys, one request at a time (so bounded
        load never passes a turn on). The window's own count has only the few dozen
        sessions live across the removal; this measures the mapping a thousand keys deep,
        on the same Envoys and control plane. Every replica is back and unslowed first, so
        the fleet is the N replicas the target speaks of."""
        self.restore()
        self.reset_and_wait_idle()
        gone = self.replicas[REMOVED]
        everyone = {r.port for r in self.replicas}
        hosts, before, settled = self._settled_probe(edge, everyone, keys, timeout=400.0)
        self.agents[REMOVED].signal(signal.SIGTERM)
        _, after, settled_after = self._settled_probe(edge, everyone - {gone.port}, keys)
        self.probe_settled = settled and settled_after
        on_gone = sum(1 for rid in before.values() if rid == gone.replica_id)
        moved = sum(1 for k, rid in before.items() if after.get(k) != rid)
        return len(before), on_gone, moved, leaver_share(hosts, gone.port)

    def _settled_probe(
        self, edge: Edge, ports: set[int], keys: int, timeout: float = 90.0
    ) -> tuple[dict[int, tuple[int, bool]], dict[str, str], bool]:
        """``_probe`` once the affinity cluster has exactly ``ports`` healthy, repeated (up
        to ``PROBE_TRIES`` times) until its weights were the same after the probe as
        before it: a weight that changes mid-probe (the probe's own requests measure a
        just-restarted replica's speed) rebuilds the Maglev table, and the keys probed
        before and after the change map by different tables. (hosts, mapping, settled)."""
        url = f"http://127.0.0.1:{edge.admin}/clusters?format=json"
        hosts: dict[int, tuple[int, bool]] = {}
        got: dict[str, str] = {}
        for _ in range(PROBE_TRIES):
            hosts = self._wait_affinity_hosts(edge, ports, timeout=timeout)
            got = self._probe(edge, keys)
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                if affinity_hosts(self.http.get(url).json()) == hosts:
                    return hosts, got, True
        return hosts, got, False

    def _probe(self, edge: Edge, keys: int) -> dict[str, str]:
        url = f"http://127.0.0.1:{edge.port}/v1/completions"
        body = {"model": MODEL, "prompt": "hi", "max_tokens": 1}
        out: dict[str, str] = {}
        for k in range(keys):
            key = f"probe-{k}"
            r = self.http.post(url, json=body, headers={"x-session-id": key})
            r.raise_for_status()
            out[key] = r.headers["x-replica"]
        return out

    def _wait_affinity_hosts(
        self, edge: Edge, ports: set[int], timeout: float = 90.0
    ) -> dict[int, tuple[int, bool]]:
        """Until the edge's affinity cluster has exactly ``ports`` as healthy hosts; its
        hosts then (``affinity_hosts``)."""
        url = f"http://127.0.0.1:{edge.admin}/clusters?format=json"
        deadline = time.monotonic() + timeout
        seen: set[int] = set()
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                hosts = affinity_hosts(self.http.get(url).json())
                seen = {port for port, (_, healthy) in hosts.items() if healthy}
                if seen == ports:
                    return hosts
            time.sleep(0.2)
        raise RuntimeError(f"affinity cluster on edge {edge.port}: healthy {seen}, want {ports}")

    def cache_delta(self) -> tuple[float, float]:
        """(hits, queries) over the window, summed over replicas."""
        q = h = 0.0
        for samples in self.counters.values():
            if len(samples) >= 2:
                q += samples[-1][0] - samples[0][0]
                h += samples[-1][1] - samples[0][1]
        return h, q

    def reset_caches(self) -> None:
        """Empty every prefix cache (off drops the unreferenced blocks, then on again)."""
        for r in self.replicas:
            self.http.post(f"{r.url}/control", json={"prefix_caching": False}).raise_for_status()
            self.http.post(f"{r.url}/control", json={"prefix_caching": True}).raise_for_status()

    def capacity(self, warmup: float, window: float) -> tuple[float, list[float]]:
        self.reset_and_wait_idle()
        self.reset_caches()
        try:
            return self.measure_capacity(warmup, window, SESSION_LOAD)
        finally:
            self.restore()

    def run_sessions(
        self, policy: str, load: float, rate: float, warmup: float, window: float, seed: int
    ) -> SessionResult:
        self.reset_and_wait_idle()
        self.reset_caches()
        edges = self.start_edges(policy)
        if policy == "aixds":
            # Every run starts from the whole fleet: a replica the last run slowed is shed
            # until its idle estimate relaxes back (about two minutes), and the warm-up
            # would otherwise map the sessions without it.
            for e in edges:
                self._wait_affinity_hosts(e, {r.port for r in self.replicas}, timeout=400.0)
        name = f"load-{policy}-{round(load * 100)}"
        sched = make_sessions(
            session_rate(rate), warmup, window, EDGES, seed, cooldown=window * 0.25
        )
        try:
            sched_path = self.log_dir / f"{name}.schedule.json"
            out = self.log_dir / f"{name}.json"
            sched.dump(sched_path)
            self.snapshot_to = (edges[0], self.log_dir / f"{name}.clusters-at-removal.json")
            args = ["open", str(sched_path), str(out)]
            args += ["--ports", ",".join(str(e.port) for e in edges)]
            rows, share, _, _ = self.timed_run(name, args, warmup, window, edges, out, SESSION_LOAD)
            churn = (
                self.mapping_churn(edges[0], PROBE_KEYS)
                if policy == "aixds"
                else (0, 0, 0, math.nan)
            )
        finally:
            self.stop([e.child for e in edges])
            self.restore()
        base = summarize(policy, load, rate, warmup, window, rows, SESSION_FIELDS)
        res = SessionResult(**{f.name: getattr(base, f.name) for f in fields(RunResult)})
        res.cpu = share
        res.hits, res.queries = self.cache_delta()
        by_sid = {s.sid: s for s in sched.sessions}
        score_sessions(res, rows, by_sid, seed, warmup, window)
        res.probe_keys, res.probe_on_removed, res.probe_moved, res.probe_share = churn
        res.probe_settled = self.probe_settled if policy == "aixds" else True
        res.window_share = self.window_share
        return res


def score_sessions(
    res: SessionResult,
    rows: list[list[Any]],
    sessions: dict[str, Session],
    seed: int,
    warmup: float,
    window: float,
) -> None:
    """The oracle's hit rate and the session moves, from the turns' rows."""
    ix = {f: i for i, f in enumerate(SESSION_FIELDS)}
    sent = [(row[ix["at"]], row[ix["session"]], row[ix["turn"]]) for row in rows]
    res.oracle_hits, res.oracle_queries = oracle_hits(seed, sessions, sent, warmup, warmup + window)
    served: dict[str, list[tuple[int, float, str]]] = defaultdict(list)
    for row in rows:
        if not row[ix["error"]] and row[ix["replica"]]:
            served[row[ix["session"]]].append((row[ix["turn"]], row[ix["at"]], row[ix["replica"]]))
    removed_at = warmup + REMOVED_AT * window
    server_gone = removed_at + DRAIN_S
    gone = f"gpu-{REMOVED}/"
    for turns in served.values():
        turns.sort()
        for (_, _, a), (_, at, b) in itertools.pairwise(turns):
            if a != b and warmup <= at < warmup + window:
                res.moves += 1
        before = [t for t in turns if t[1] < removed_at]
        after = [t for t in turns if t[1] >= server_gone]
        if before and after:
            res.across_removal += 1
            res.moved_on_removal += before[-1][2] != after[0][2]
            res.on_removed += before[-1][2].startswith(gone)
            home_after = _home(after[:HOME_TURNS][::-1])
            res.home_moved += _home(before[-HOME_TURNS:]) != home_after


def _home(turns: list[tuple[int, float, str]]) -> str:
    """The replica that served most of ``turns`` (ties: the one that served the last)."""
    counts = Counter(rep for _, _, rep in turns)
    last = {rep: i for i, (_, _, rep) in enumerate(turns)}
    return max(counts, key=lambda rep: (counts[rep], last[rep]))


# -- printing --------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{x * 100:.0f}%"


SESSION_HEADER = (
    f"{'policy':<15}{'load':>4}{'offer/s':>8}{'thru/s':>8}{'ttft50':>8}{'ttft99':>8}"
    f"{'e2e99':>8}{'hit':>6}{'oracle':>7}{'/orcl':>6}{'mv/min':>7}{'mv@rm':>7}{'err':>5}"
)


def session_row(r: SessionResult) -> str:
    return (
        f"{r.policy:<15}{r.load * 100:>3.0f}%{r.offered:>8.2f}{r.throughput:>8.2f}"
        f"{_ms(r.ttft[0]):>8}{_ms(r.ttft[2]):>8}{_ms(r.e2e[2]):>8}{_pct(r.hit_rate):>6}{_pct(r.oracle_rate):>7}"
        f"{_pct(r.of_oracle):>6}{r.moves_per_min:>7.1f}{_pct(r.moved_share):>7}"
        f"{sum(r.errors.values()):>5}"
    )


def print_session_run(r: SessionResult) -> None:
    print(session_row(r), flush=True)
    print_served(r)
    print(
        f"  sessions across the removal: {r.across_removal}, next turn elsewhere "
        f"{r.moved_on_removal}, home moved {r.home_moved} ({r.on_removed} were on "
        f"gpu-{REMOVED}); retried turns {r.retried}, max generator "
        f"lag {r.max_lag * 1000:.0f} ms"
    )
    if r.probe_keys:
        print(
            f"  mapping probe, idle edge: {r.probe_moved}/{r.probe_keys} keys moved when "
            f"gpu-{REMOVED} left ({r.probe_on_removed} were on it; its weight share "
            f"{r.probe_share:.1%}); in the window it held {r.window_share:.1%} of the weight "
            f"as it left" + ("" if r.probe_settled else "; WEIGHTS CHANGED DURING THE PROBE")
        )
    print_cpu(f"{r.policy} at {r.load * 100:.0f}%", r.cpu)


STYLES = {
    "LEAST_REQUEST": ("s", "-", "tab:orange"),
    "MAGLEV": ("o", "-", "tab:blue"),
    "vllm-router-ca": ("^", "--", "tab:purple"),
    "aixds": ("D", "-", "tab:green"),
}
PANELS: tuple[tuple[str, Any, bool], ...] = (
    ("p99 time to first token, s (log scale)", lambda r: r.ttft[2], True),
    ("prefix-cache hit rate, % of the oracle's", lambda r: r.of_oracle * 100, False),
)


def report(results: list[SessionResult], plot: Path | None, window: float, n: int) -> None:
    print(SESSION_HEADER)
    for r in results:
        print(session_row(r))
    by = {(r.policy, r.load): r for r in results}
    print("ratios, baseline / aixds (above 1: aixds better):")
    for load in sorted({r.load for r in results}):
        a = by.get(("aixds", load))
        for base in BASELINES:
            b = by.get((base, load))
            if a is None or b is None:
                continue
            print(
                f"  {load * 100:.0f}% vs {base:<14}: ttft p50 {_ratio(b.ttft[0], a.ttft[0]):.2f}"
                f" p99 {_ratio(b.ttft[2], a.ttft[2]):.2f}  e2e p99 {_ratio(b.e2e[2], a.e2e[2]):.2f}"
                f"  throughput {_ratio(a.throughput, b.throughput):.2f} (aixds/baseline)"
            )
    a80 = by.get(("aixds", 0.8))
    ratios = {}
    for base, need in BASELINES.items():
        b = by.get((base, 0.8))
        ratios[base] = _ratio(b.ttft[2], a80.ttft[2]) if b and a80 else math.nan
        if not math.isnan(ratios[base]):
            print(_target(f"TTFT p99 vs {base} at 80% >= {need:.1f}x", ratios[base] >= need))
    if a80 is not None:
        print(
            _target(f"hit rate >= {HIT_TARGET:.0%} of oracle at 80%", a80.of_oracle >= HIT_TARGET)
        )
        limit = MOVE_SLACK / n
        low, high = wilson(a80.home_moved, a80.across_removal)
        live = (
            f"in the window at 80%: home moved {a80.home_moved}/{a80.across_removal} = "
            f"{a80.home_moved_share:.1%}, 95% interval {low:.1%}-{high:.1%}, the leaver's "
            f"weight share then {a80.window_share:.1%}; next turn on another replica "
            f"{a80.moved_share:.1%}"
        )
        if a80.probe_keys:
            print(
                _target(
                    f"sessions moved when 1 of {n} leaves <= {limit:.1%} (mapping, "
                    f"{a80.probe_keys} keys: {a80.probe_moved_share:.1%}, "
                    f"{fraction(a80.probe_on_removed, a80.probe_keys):.1%} were on the leaver"
                    f"{'' if a80.probe_settled else ', WEIGHTS CHANGED DURING THE PROBE'};"
                    f" {live})",
                    a80.probe_moved_share <= limit and a80.probe_settled,
                )
            )
        else:
            print(
                _target(
                    f"sessions moved when 1 of {n} leaves <= {limit:.1%} ({live})", high <= limit
                )
            )
        errs = sum(sum(r.errors.values()) for r in results if r.policy == "aixds")
        print(_target(f"0 errors (aixds, all loads: {errs})", errs == 0))
    if results and plot is not None:
        write_plot(
            results,
            plot,
            f"sessions: 8 fake vLLM replicas with prefix caching (mixed speeds, one slowed, "
            f"one removed), 4 edges, {window:.0f} s windows",
            STYLES,
            PANELS,
        )
        print(f"plot: {plot}")
    x, y, z = (ratios[b] for b in BASELINES)
    print(
        f"session TTFT p99 ratio at 80% load: vs LEAST_REQUEST {x:.2f}, vs MAGLEV {y:.2f}, "
        f"vs vllm-router {z:.2f}"
    )


def _target(what: str, ok: bool) -> str:
    return f"  target {what}: {'met' if ok else 'NOT met'}"


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="80%% load only, short windows")
    ap.add_argument("--loads", help="comma-separated fractions of capacity (0.6,0.8,0.95)")
    ap.add_argument("--window", type=float, help="measured seconds per run (90; quick 30)")
    ap.add_argument("--warmup", type=float, help="unmeasured seconds before each (45; quick 15)")
    ap.add_argument("--capacity-window", type=float, help="seconds of the capacity run")
    ap.add_argument("--capacity", type=float, help="skip the capacity run: use this turns/s")
    ap.add_argument("--policies", help=f"comma-separated, of {', '.join(POLICIES)} (all)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--gpu", choices=("auto", "sim", "none"), default="auto")
    ap.add_argument("--plot", type=Path, help=f"write the plot here (full runs: {PLOT})")
    ap.add_argument("--results", type=Path, help="also write every run's numbers here (JSON)")
    ap.add_argument("--keep-logs", type=Path, help="keep process logs and raw results here")
    args = ap.parse_args(argv)

    loads = [float(x) for x in args.loads.split(",")] if args.loads else None
    loads = loads or ([0.8] if args.quick else [0.6, 0.8, 0.95])
    window = args.window or (30.0 if args.quick else 90.0)
    warmup = args.warmup if args.warmup is not None else (15.0 if args.quick else 45.0)
    cap_window = args.capacity_window or (20.0 if args.quick else 40.0)
    plot = args.plot or (None if args.quick else PLOT)
    policies = [p for p in (args.policies or ",".join(POLICIES)).split(",") if p]
    unknown = set(policies) - set(POLICIES)
    if unknown:
        ap.error(f"unknown policies {sorted(unknown)}")
    if "vllm-router-ca" in policies and vllm_router_binary() is None:
        print("vllm-router is not installed (`make bench-extra`): its policy is left out")
        policies.remove("vllm-router-ca")
    gpu = args.gpu
    if gpu == "auto":
        gpu = "sim" if importlib.util.find_spec("controlplane.agent.gpus.sim") else "none"

    log_dir = args.keep_logs or Path(tempfile.mkdtemp(prefix="aixds-sessions-"))
    t_start = time.monotonic()
    interrupt_on_stop_signals()
    print(f"sessions bench: load average {loadavg()}; logs in {log_dir}")
    shape = session_shape()
    bench = SessionBench(log_dir, shape, gpu)
    results: list[SessionResult] = []
    try:
        bench.start_fleet()
        bench.start_control_plane()
        print(
            f"fleet: {len(SPEEDS)} replicas, speeds {list(SPEEDS)}, max_running "
            f"{shape.max_running}, tpot {shape.tpot_ms:.0f} ms, prefill {shape.prefill_tps:.0f}"
            f" tokens/s, KV {shape.kv_capacity_tokens} tokens, prefix caching; agents --gpu {gpu}"
        )
        print(f"event at {SLOWED.at * 100:.0f}% of each window: {SLOWED.what}")
        print(
            f"event at {REMOVED_AT * 100:.0f}% of each window: gpu-{REMOVED} leaves (its agent; "
            f"its server {DRAIN_S:.0f} s later)"
        )
        if args.capacity:
            capacity = args.capacity
            print(f"capacity: {capacity:.2f} turns/s (given)")
        else:
            capacity, phases = bench.capacity(4.0, cap_window)
            ph = " / ".join(f"{p:.2f}" for p in phases)
            print(f"capacity: {capacity:.2f} turns/s (sessions pinned, {cap_window:.0f} s; {ph})")
        print(
            f"windows: {warmup:.0f} s warm-up + {window:.0f} s measured; seed {args.seed}; "
            f"{mean_turns():.1f} turns a session on average"
        )
        print(SESSION_HEADER, flush=True)
        print("  (ms; hit: prefix-cache hit rate; oracle: if no session moved or was evicted;")
        print("   mv/min: session moves a minute; mv@rm: share moved across the removal)")
        for load in loads:
            for policy in policies:
                r = bench.run_sessions(policy, load, load * capacity, warmup, window, args.seed)
                results.append(r)
                print_session_run(r)
    finally:
        shut_down(bench, log_dir, keep=args.keep_logs is not None)
    save_results(results, args.results, t_start)
    report(results, plot, window, len(SPEEDS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
