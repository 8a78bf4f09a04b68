"""Chaos soak: steady streaming load while a seeded schedule kill -9s and restarts every
kind of process the fleet has.

    python -m bench.chaos [--minutes 10] [--seed 1] [--rate 8] [--client resume|plain]
                          [--logs DIR]
    python -m bench.chaos --quick          # 2 minutes, a smoke run

The fleet (as processes, ``tests.e2e.fleet`` and ``tests.e2e.control_planes``): one
redis-server, three ``aixds serve`` on it, one edge Envoy that names all three
(``aixds envoy --xds a,b,c``), four fake vLLM replicas with their agents. An open-loop
load sends streamed completions (20-40 tokens, ~0.3-0.5 s) at a fixed rate through the
edge. Every 6-14 s (seeded) one process is killed with SIGKILL and started again 2-6 s
later on the same port: a control plane (serve-1 or serve-2), an agent (restarted with
``--takeover``, as a supervisor would), a model server, or Redis (it comes back empty:
agents re-publish, control planes write their intent back). serve-0 is never killed: its
resident memory, sampled every 5 s, is the "serve RSS" (a leak shows there; a restarted
process would hide it).

The load reads each stream through aixds's resuming client (``--client resume``, the
default; see ``bench.region_failover``): a stream cut because its model server was killed
is resumed through the edge, and counts as served when the stitched answer is complete
and exact. ``--client plain`` reads streams as they come.

Printed: requests and failures by cause (``own replica killed mid-stream``: the request
was being answered by a model server that was killed then, which only the client can
save; any other failure counts against the control plane), the streams cut and resumed,
the schedule, serve-0's RSS over time, and the xDS versions the edge Envoy held
(clusters, listeners, routes; sampled every 2 s): how many distinct ones, and regressions
(going back to a version after having left it), plus the seconds Envoy had no control
plane. The last line is exactly::

    chaos: failed X/Y, serve RSS growth Z MB

X counts every failed request, whatever its cause; Z is serve-0's RSS at the end less its
RSS one minute in (after start-up allocations), in MB.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.region_failover import FixedRateLoad, was_cut
from bench.routing_load import Outcome
from tests.e2e.control_planes import ControlPlanes, envoy_versions
from tests.e2e.fleet import Edge, Fleet, Replica
from tests.support import Procs, RedisServer, wait_port

MODEL = "llama"
SERVER_ARGS = ("--ttft-ms", "30", "--tpot-ms", "10", "--max-running", "32")
KINDS = ("control-plane", "agent", "model-server", "redis")
OWN_REPLICA = "own replica killed mid-stream"
OTHER = "other"
WARM_S = 60.0
"""RSS growth counts from this long after the start (start-up allocations are over)."""


@dataclass(frozen=True)
class Fault:
    """One kill -9 at ``at`` (s after the load began) of ``kind`` number ``index``,
    restarted ``down_s`` later."""

    at: float
    kind: str
    index: int
    down_s: float


def schedule(seed: int, duration_s: float, replicas: int, start_s: float = 5.0) -> list[Fault]:
    """The seeded fault schedule: one at a time, every 6-14 s, each kind in turn shuffled
    (so each kind is hit about as often), down for 2-6 s."""
    rng = random.Random(seed)
    count = {"control-plane": 2, "agent": replicas, "model-server": replicas, "redis": 1}
    out: list[Fault] = []
    kinds: list[str] = []
    t = start_s
    while True:
        if not kinds:
            kinds = list(KINDS)
            rng.shuffle(kinds)
        kind = kinds.pop()
        down = round(rng.uniform(2.0, 6.0), 1)
        if t + down + 2.0 > duration_s:
            return out
        out.append(Fault(round(t, 1), kind, rng.randrange(count[kind]), down))
        t += down + rng.uniform(6.0, 14.0)


@dataclass(frozen=True)
class Kill:
    """A model server's death, for attributing cut streams: its replica id and when."""

    replica: str
    at: float


def cause(o: Outcome, kills: Sequence[Kill], slack_s: float = 0.05) -> str:
    """Why ``o`` failed: its own model server was killed while answering it, or not."""
    end = o.at + max(o.e2e, 0.0) + slack_s
    for k in kills:
        if o.replica == k.replica and o.at <= k.at <= end:
            return OWN_REPLICA
    return OTHER


def rss_growth_mb(samples: Sequence[tuple[float, int]], warm_s: float = WARM_S) -> float:
    """(s, RSS bytes) samples -> the last less the first at or after ``warm_s``, in MB."""
    warm = [rss for t, rss in samples if t >= warm_s]
    if len(warm) < 2:
        return 0.0
    return (warm[-1] - warm[0]) / 1e6


def regressions(history: Sequence[dict[str, str]]) -> int:
    """How often a resource went back to a version it had held before another one."""
    n = 0
    seen: dict[str, list[str]] = {}
    for snapshot in history:
        for name, version in snapshot.items():
            past = seen.setdefault(name, [])
            if past and past[-1] != version:
                if version in past:
                    n += 1
                past.append(version)
            elif not past:
                past.append(version)
    return n


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class Chaos:
    """The fleet and what the soak records about it."""

    procs: Procs
    redis: RedisServer
    cps: ControlPlanes
    fleet: Fleet
    edge: Edge
    kills: list[Kill] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)
    versions: list[dict[str, str]] = field(default_factory=list)
    disconnected_s: float = 0.0
    log: list[str] = field(default_factory=list)

    def kill(self, f: Fault, now: float) -> Callable[[], None]:
        """kill -9 what ``f`` names; returns what starts it again."""
        if f.kind == "control-plane":
            cp = self.cps.all[1 + f.index]
            cp.proc.kill()
            return lambda: self.cps.restart(cp)
        if f.kind == "redis":
            self.redis.stop()
            return self.redis.start
        rep: Replica = self.fleet.replicas[f.index]
        if f.kind == "agent":
            assert rep.agent is not None
            agent = rep.agent
            agent.kill()
            return lambda: agent.start()
        rep.server.kill()
        self.kills.append(Kill(rep.replica_id, now))

        def again() -> None:
            rep.server.start()
            wait_port(rep.port)

        return again

    def sample(self, now: float, rss: bool) -> None:
        if rss:
            self.rss.append((now, rss_bytes(self.cps.all[0].proc.pid)))
        try:
            self.versions.append(envoy_versions(self.edge))
            if self.edge.stat("control_plane.connected_state") != 1:
                self.disconnected_s += 1.0
        except (httpx.HTTPError, ValueError, KeyError):
            self.disconnected_s += 1.0


def build(procs: Procs, logs: Path, replicas: int) -> Chaos:
    redis = RedisServer(logs)
    redis.start()
    cps = ControlPlanes(procs, redis, 3)
    fleet = Fleet(procs, redis)
    for _ in range(replicas):
        fleet.add_replica(MODEL, "v1", server_args=SERVER_ARGS, agent_args=("--takeover",))
    edge = fleet.add_edge(xds=cps.xds)
    fleet.wait_routable(edge, MODEL, replicas, 60)
    return Chaos(procs, redis, cps, fleet, edge)


def run(
    duration_s: float, rate: float, seed: int, replicas: int, logs: Path, resume: bool = True
) -> int:
    procs = Procs(logs)
    try:
        ch = build(procs, logs, replicas)
        faults = schedule(seed, duration_s, replicas)
        load = FixedRateLoad(ch.edge.port, rate, seed, resume)
        load.begin()
        pending = list(faults)
        restarts: list[tuple[float, Callable[[], None], str]] = []
        next_sample = next_rss = 0.0
        while (now := load.now()) < duration_s:
            if pending and now >= pending[0].at:
                f = pending.pop(0)
                restarts.append((now + f.down_s, ch.kill(f, now), f"{f.kind} {f.index}"))
                ch.log.append(f"{now:7.1f} s  kill -9 {f.kind} {f.index} ({f.down_s} s down)")
            for item in [r for r in restarts if now >= r[0]]:
                restarts.remove(item)
                item[1]()
                ch.log.append(f"{load.now():7.1f} s  restarted {item[2]}")
            if now >= next_sample:
                ch.sample(now, rss=now >= next_rss)
                next_sample = now + 1.0
                if now >= next_rss:
                    next_rss = now + 5.0
            time.sleep(0.1)
        for _, start, _ in restarts:
            start()
        time.sleep(2.0)  # the last streams finish
        load.end()
        (logs / "requests.json").write_text(
            json.dumps({"rows": [o.row() for o in load.outcomes], "rss": ch.rss})
        )
        return report(ch, load.outcomes)
    finally:
        procs.stop_all()


def report(ch: Chaos, outcomes: Sequence[Outcome]) -> int:
    failed = [o for o in outcomes if o.error or o.status != 200]
    causes = Counter(cause(o, ch.kills) for o in failed)
    print("schedule:")
    print("\n".join("  " + line for line in ch.log))
    print(f"requests: {len(outcomes)}, failed {len(failed)}", end="")
    print(" (" + ", ".join(f"{n} {c}" for c, n in sorted(causes.items())) + ")" if failed else "")
    for o in [o for o in failed if cause(o, ch.kills) == OTHER][:10]:
        print(f"  at {o.at:.2f} s: status {o.status} {o.error} replica {o.replica or '-'}")
    cut = [o for o in outcomes if was_cut(o)]
    if cut:
        saved = sum(1 for o in cut if not o.error)
        print(f"streams cut mid-response: {len(cut)}, {saved} resumed by the client")
    print("serve-0 RSS (MB) every minute: " + " ".join(
        f"{rss / 1e6:.0f}" for t, rss in ch.rss if int(t) % 60 < 5
    ))  # fmt: skip
    names = {name for snap in ch.versions for name in snap}
    distinct = {name: len({s[name] for s in ch.versions if name in s}) for name in names}
    print(
        f"xDS versions held by the edge: {sum(distinct.values())} distinct over "
        f"{len(names)} resources, {regressions(ch.versions)} regressions; "
        f"{ch.disconnected_s:.0f} s without a control plane"
    )
    print(f"chaos: failed {len(failed)}/{len(outcomes)}, serve RSS growth "
          f"{rss_growth_mb(ch.rss):.1f} MB")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    p.add_argument("--minutes", type=float, default=10.0, help="soak length (default 10)")
    p.add_argument("--quick", action="store_true", help="2 minutes")
    p.add_argument("--seed", type=int, default=1, help="fault schedule and load (default 1)")
    p.add_argument("--rate", type=float, default=8.0, help="requests/s (default 8)")
    p.add_argument("--replicas", type=int, default=4, help="model servers (default 4)")
    p.add_argument(
        "--client",
        choices=("resume", "plain"),
        default="resume",
        help="resume: aixds's resuming client (default); plain: a client that does not resume",
    )
    p.add_argument("--logs", type=Path, help="keep process logs here (default: a temp dir)")
    a = p.parse_args(argv)
    minutes = 2.0 if a.quick else a.minutes
    logs = a.logs or Path(tempfile.mkdtemp(prefix="aixds-chaos-"))
    logs.mkdir(parents=True, exist_ok=True)
    print(f"chaos: {minutes} min, {a.rate} req/s, {a.replicas} replicas, seed {a.seed}, "
          f"client {a.client}, logs {logs}", flush=True)  # fmt: skip
    try:
        return run(minutes * 60.0, a.rate, a.seed, a.replicas, logs, a.client == "resume")
    finally:
        if a.logs is None:
            shutil.rmtree(logs, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
