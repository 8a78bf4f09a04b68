"""Routing: aixds weights vs Envoy's own ROUND_ROBIN and LEAST_REQUEST, same workload.

Starts 8 fake vLLM servers (mixed speeds; one becomes slow a quarter of the way through,
one gets a noisy neighbour halfway; long-tailed prompt and output lengths, see
``routing_workload``), measures the fleet's capacity (closed loop straight to the servers,
same scripted events), then for each load (60/80/95% of capacity) and each policy sends
the same seeded open-loop Poisson workload through 4 edge Envoys (each gets a quarter):

- ``ROUND_ROBIN`` / ``LEAST_REQUEST``: static Envoys, equal weights, with the cluster,
  routes, retries and timeouts aixds itself would push (``routing_envoy``);
- ``vllm-router-p2``: vLLM's router (the ``vllm-router`` package, the ``bench`` extra),
  4 of them in place of the Envoys, ``--policy power_of_two`` (it reads each worker's load);
- ``aixds``: Redis + ``aixds serve`` + one ``aixds agent`` per GPU node + Envoys over ADS
  (LEAST_REQUEST on top of aixds's EDS weights).

The control plane and agents run during every run (same machine load for all policies).
Prints, per policy and load: throughput, TTFT and end-to-end p50/p95/p99, errors, xDS
updates per second per Envoy, CPU use of every process (warns when one nears a full core);
then the ratios of aixds to the baselines, and writes a plot of p99 vs load.

    python -m bench.routing              # 3 loads x 4 policies, 90 s windows (~25 min)
    python -m bench.routing --quick      # 80% load only, 24 s windows (< 3 min)
    python -m bench.routing --loads 0.8 --window 60 --keep-logs /tmp/rb

The last line printed is ``p99 ratio at 80% load: vs ROUND_ROBIN X.XX, vs LEAST_REQUEST
Y.YY`` (baseline p99 / aixds p99: above 1 means aixds is better).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import itertools
import json
import math
import random
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.routing_envoy import static_bootstrap
from bench.routing_load import ROW_FIELDS
from bench.routing_procs import (
    CPU_BOUND_WARN,
    CpuWindow,
    cp_pushes,
    envoy_xds_updates,
    loadavg,
)
from bench.routing_workload import (
    EVENTS,
    MODEL,
    SPEEDS,
    VERSION,
    ServerShape,
    make_schedule,
    reset_controls,
)
from controlplane.demo.procs import Child, ProcessGroup, free_port, wait_port
from controlplane.ir import LbPolicy
from controlplane.proc_guard import interrupt_on_stop_signals
from controlplane.proxy.runner import envoy_binary

EDGES = 4
POLICIES = ("ROUND_ROBIN", "LEAST_REQUEST", "vllm-router-p2", "aixds")
VLLM_ROUTER = {"vllm-router-p2": "power_of_two", "vllm-router-ca": "cache_aware"}
"""Policy names of vLLM's router (``vllm-router``, 4 of them as the edges) -> its --policy."""
VLLM_ROUTER_MISSING = (
    "vllm-router is not installed: `uv sync --frozen --extra dev --extra bench` (or "
    "`make bench-extra`) adds it, or leave its policy out with --policies"
)
SESSION_HEADER = "x-session-id"
"""What the static hash policies (MAGLEV, RING_HASH) hash on: the session key aixds uses."""
REGION, ZONE = "us", "us-a"
ROOT = Path(__file__).resolve().parents[1]
PLOT = ROOT / "docs" / "routing-p99.png"
CAPACITY_SEED = 1234


# -- results ---------------------------------------------------------------------------------


def pct(xs: list[float], p: float) -> float:
    """Percentile with linear interpolation (p in 0..100); NaN for no data."""
    if not xs:
        return math.nan
    s = sorted(xs)
    k = (len(s) - 1) * p / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


@dataclass
class RunResult:
    policy: str
    load: float
    rate: float
    window: float
    requests: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    completed_in_window: int = 0
    tokens_in_window: int = 0
    ttft: tuple[float, float, float] = (math.nan,) * 3
    e2e: tuple[float, float, float] = (math.nan,) * 3
    max_lag: float = 0.0
    retried: int = 0
    share: dict[str, float] = field(default_factory=dict)
    """Fraction of measured requests each replica served."""
    updates_per_s: float = 0.0
    """xDS updates accepted per Envoy per second (mean over Envoys, over the window)."""
    updates_p90_1s: float = 0.0
    """90th percentile over one-second samples and Envoys of xDS updates accepted."""
    updates_max_1s: float = 0.0
    """Most xDS updates one Envoy accepted in any one-second sample."""
    cp_pushes_per_s: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def offered(self) -> float:
        """Requests that arrived in the measured window, per second."""
        return self.requests / self.window

    @property
    def throughput(self) -> float:
        """Requests completed (any start time) during the measured window, per second."""
        return self.completed_in_window / self.window


def summarize(
    policy: str,
    load: float,
    rate: float,
    warmup: float,
    window: float,
    rows: list[list[Any]],
    fields: tuple[str, ...] = ROW_FIELDS,
) -> RunResult:
    r = RunResult(policy, load, rate, window)
    ix = {f: i for i, f in enumerate(fields)}
    ttft: list[float] = []
    e2e: list[float] = []
    served: Counter[str] = Counter()
    for row in rows:
        at, err, end = row[ix["at"]], row[ix["error"]], row[ix["at"]] + row[ix["e2e"]]
        measured = warmup <= at < warmup + window
        if not err and warmup <= end < warmup + window:
            r.completed_in_window += 1
            r.tokens_in_window += row[ix["output"]]
        if not measured:
            continue
        r.requests += 1
        r.max_lag = max(r.max_lag, row[ix["lag"]])
        if row[ix["attempts"]] > 1:
            r.retried += 1
        if err:
            r.errors[err] += 1
            continue
        r.ok += 1
        ttft.append(row[ix["ttft"]])
        e2e.append(row[ix["e2e"]])
        served[row[ix["replica"]]] += 1
    r.ttft = (pct(ttft, 50), pct(ttft, 95), pct(ttft, 99))
    r.e2e = (pct(e2e, 50), pct(e2e, 95), pct(e2e, 99))
    r.share = {k: v / max(1, r.ok) for k, v in sorted(served.items())}
    return r


# -- the fleet -------------------------------------------------------------------------------


@dataclass
class Replica:
    index: int
    port: int
    child: Child

    @property
    def node(self) -> str:
        return f"gpu-{self.index}"

    @property
    def replica_id(self) -> str:
        return f"{self.node}/vllm-{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Edge:
    child: Child
    port: int
    admin: int
    """Envoy's admin port; 0 for a vllm-router (it has none)."""


class Bench:
    def __init__(self, log_dir: Path, shape: ServerShape, gpu: str) -> None:
        self.log_dir = log_dir
        self.group = ProcessGroup(log_dir)
        self.shape = shape
        self.gpu = gpu
        self.agents: list[Child] = []
        self.http = httpx.Client(timeout=5.0, trust_env=False)
        self.replicas: list[Replica] = []
        # The same edge ports for every run: the control plane keys node groups by listen
        # address, so new ports each run would leave it deciding for groups long gone.
        self.edge_ports = [(quiet_port(), quiet_port()) for _ in range(EDGES)]
        self.redis_port = free_port()
        self.xds_port = free_port()
        self.api_port = free_port()

    # -- processes --------------------------------------------------------------------------
    def start_fleet(self) -> None:
        for i, speed in enumerate(SPEEDS):
            port = free_port()
            self.replicas.append(Replica(i, port, self.start_server(i, speed, port)))
        for r in self.replicas:
            wait_port(r.port, timeout=30)

    def start_server(self, i: int, speed: float, port: int | None = None) -> Child:
        """The fake server of ``gpu-i`` (on its own port again when ``port`` is given)."""
        port = port or self.replicas[i].port
        return self.group.aixds(
            f"llm-gpu-{i}",
            "fake-llm",
            "--listen",
            f"127.0.0.1:{port}",
            "--model",
            MODEL,
            "--version",
            VERSION,
            "--replica-id",
            f"gpu-{i}/vllm-{port}",
            "--speed",
            str(speed),
            *self.shape.args(),
        )

    def start_control_plane(self) -> None:
        self.group.redis(self.redis_port)
        url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.group.aixds(
            "serve",
            "serve",
            "--redis",
            url,
            "--xds",
            f"127.0.0.1:{self.xds_port}",
            "--api",
            f"127.0.0.1:{self.api_port}",
        )
        wait_port(self.api_port, timeout=30)
        self.agents = [self.start_agent(r) for r in self.replicas]

    def start_agent(self, r: Replica) -> Child:
        url = f"redis://127.0.0.1:{self.redis_port}/0"
        args = ["--redis", url, "--node", r.node, "--region", REGION, "--zone", ZONE]
        args += ["--server", f"vllm={r.url}", "--gpu", self.gpu]
        return self.group.aixds(f"agent-{r.node}", "agent", *args)

    def start_edges(self, policy: str) -> list[Edge]:
        """Start the 4 edge Envoys of ``policy``; once more on new ports if one cannot bind."""
        try:
            return self._start_edges(policy)
        except RuntimeError as e:
            print(f"  ({e}; retrying on other ports)", flush=True)
            self.edge_ports = [(quiet_port(), quiet_port()) for _ in range(EDGES)]
            return self._start_edges(policy)

    def _start_edges(self, policy: str) -> list[Edge]:
        edges: list[Edge] = []
        for i, (port, admin) in enumerate(self.edge_ports):
            name = f"envoy-{policy}-{i}"
            if policy.startswith("aixds"):
                child = self.group.aixds(
                    name,
                    "envoy",
                    "--xds",
                    f"127.0.0.1:{self.xds_port}",
                    "--node-id",
                    f"edge-{i}",
                    "--region",
                    REGION,
                    "--zone",
                    ZONE,
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--admin",
                    f"127.0.0.1:{admin}",
                    "--concurrency",
                    "1",
                )
            elif policy in VLLM_ROUTER:
                child = self._start_vllm_router(name, VLLM_ROUTER[policy], port)
                admin = 0
            else:
                lb = LbPolicy(policy)
                hashed = lb in (LbPolicy.MAGLEV, LbPolicy.RING_HASH)
                cfg = self.log_dir / f"{name}.json"
                cfg.write_text(
                    static_bootstrap(
                        policy=lb,
                        session_header=SESSION_HEADER if hashed else "",
                        replicas=[(r.replica_id, r.port) for r in self.replicas],
                        node_id=f"static-{i}",
                        listen_port=port,
                        admin_port=admin,
                        model=MODEL,
                        version=VERSION,
                        region=REGION,
                        zone=ZONE,
                    )
                )
                argv = [str(envoy_binary()), "-c", str(cfg), "--use-dynamic-base-id"]
                argv += ["--concurrency", "1", "--log-level", "warning"]
                child = self.group.start(name, argv)
            edges.append(Edge(child, port, admin))
        try:
            for e in edges:
                wait_port(e.admin or e.port, timeout=30)
                self._wait_routable(e)
        except (RuntimeError, TimeoutError) as err:
            self.stop([e.child for e in edges])
            raise RuntimeError(str(err)) from err
        return edges

    def _start_vllm_router(self, name: str, policy: str, port: int) -> Child:
        """vLLM's router (``vllm-router``, the ``bench`` extra) over every replica."""
        exe = vllm_router_binary()
        if exe is None:
            raise SystemExit(VLLM_ROUTER_MISSING)
        argv = [exe, "--host", "127.0.0.1", "--port", str(port), "--policy", policy]
        argv += ["--worker-urls", *(r.url for r in self.replicas)]
        argv += ["--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port())]
        argv += ["--log-level", "warning"]
        return self.group.start(name, argv)

    def _wait_routable(self, e: Edge) -> None:
        cluster = f"{MODEL}@{VERSION}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                hosts = []
                if e.admin:  # an Envoy: every replica known first
                    url = f"http://127.0.0.1:{e.admin}/clusters?format=json"
                    doc = self.http.get(url).json()
                    hosts = [
                        h
                        for c in doc.get("cluster_statuses", [])
                        if c["name"] == cluster
                        for h in c.get("host_statuses", [])
                    ]
                if not e.admin or len(hosts) == len(self.replicas):
                    body = {"model": MODEL, "prompt": "hi", "max_tokens": 1}
                    r = self.http.post(f"http://127.0.0.1:{e.port}/v1/completions", json=body)
                    if r.status_code == 200:
                        return
            time.sleep(0.1)
        raise RuntimeError(f"edge on {e.port} never became routable; logs in {self.log_dir}")

    def stop(self, children: list[Child]) -> None:
        for c in children:
            c.signal(signal.SIGTERM)
        for c in children:
            try:
                c.popen.wait(5)
            except Exception:
                c.signal(signal.SIGKILL)
                c.popen.wait(5)
            with contextlib.suppress(ValueError):
                self.group.children.remove(c)

    # -- fleet control ----------------------------------------------------------------------
    def control(self, r: Replica, doc: dict[str, float]) -> None:
        self.http.post(f"{r.url}/control", json=doc).raise_for_status()

    def reset_and_wait_idle(self, timeout: float = 120.0) -> None:
        for r, doc in zip(self.replicas, reset_controls(), strict=True):
            self.control(r, doc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = [self.http.get(f"{r.url}/control").json() for r in self.replicas]
            if all(s["running"] == 0 and s["waiting"] == 0 for s in states):
                return
            time.sleep(0.25)
        raise RuntimeError("the fleet did not go idle between runs")

    def roots(self) -> dict[str, int]:
        """Every live process this bench started (the load generator included), by name."""
        return {c.name: c.popen.pid for c in self.group.children if c.alive()}

    # -- one timed run ----------------------------------------------------------------------
    def timed_run(
        self,
        name: str,
        loadgen_args: list[str],
        warmup: float,
        window: float,
        edges: list[Edge],
        out: Path,
        module: str = "bench.routing_load",
    ) -> tuple[list[list[Any]], dict[str, float], list[dict[str, int]], dict[str, float]]:
        """Start the load generator (``module``), play the events (``play_events``),
        sample CPU and xDS counters.

        Returns the rows, CPU share per process over the window, one sample of xDS
        updates per Envoy per second, and the control plane's pushes/s by type.
        """
        edges = [e for e in edges if e.admin]  # Envoys: the ones with xDS counters
        start = time.time() + 1.5
        argv = [sys.executable, "-m", module, *loadgen_args]
        argv += ["--start", f"{start:.6f}"]
        loadgen = self.group.start(name, argv)
        cpu = CpuWindow(self.roots())
        samples: list[dict[str, int]] = []
        stop_sampling = threading.Event()

        def sample() -> None:
            client = httpx.Client(timeout=2.0, trust_env=False)
            while not stop_sampling.wait(1.0):
                with contextlib.suppress(httpx.HTTPError):
                    samples.append(_updates(client, edges))
            client.close()

        t_begin = start + warmup
        _sleep_until(t_begin)
        cpu.start(time.time())
        cp0 = self._cp_pushes()
        sampler = threading.Thread(target=sample, daemon=True)
        if edges:
            samples.append(_updates(self.http, edges))
            sampler.start()
        self.play_events(t_begin, window)
        _sleep_until(t_begin + window)
        share = cpu.stop(time.time())
        cp1 = self._cp_pushes()
        stop_sampling.set()
        if edges:
            sampler.join(5)
            samples.append(_updates(self.http, edges))
        rc = loadgen.popen.wait(timeout=600)
        with contextlib.suppress(ValueError):
            self.group.children.remove(loadgen)
        if rc != 0:
            raise RuntimeError(f"load generator failed ({rc}); see {self.log_dir / name}.log")
        rows = json.loads(out.read_text())["rows"]
        cp = {k: (cp1.get(k, 0.0) - cp0.get(k, 0.0)) / window for k in cp1}
        return rows, share, samples, cp

    def event_times(self) -> list[float]:
        """When the scripted events happen, as shares of the window, in order."""
        return [ev.at for ev in EVENTS]

    def play_events(self, t_begin: float, window: float) -> None:
        """The scripted events, each at its share of the window (wall clock)."""
        for ev in EVENTS:
            _sleep_until(t_begin + ev.at * window)
            self.control(self.replicas[ev.replica], ev.control)

    def _cp_pushes(self) -> dict[str, float]:
        try:
            return cp_pushes(self.http, self.api_port)
        except httpx.HTTPError:
            return {}

    # -- capacity ---------------------------------------------------------------------------
    def measure_capacity(
        self, warmup: float, window: float, module: str = "bench.routing_load"
    ) -> tuple[float, list[float]]:
        """Completions/s of the saturated fleet over the window (same events); per phase too.

        ``module``: the load generator (its ``saturate`` mode)."""
        self.reset_and_wait_idle()
        out = self.log_dir / "capacity.json"
        per_replica = self.shape.max_running + 2
        args = ["saturate", str(out), "--duration", f"{warmup + window:.3f}"]
        args += ["--per-replica", str(per_replica), "--seed", str(CAPACITY_SEED)]
        args += ["--ports", ",".join(str(r.port) for r in self.replicas)]
        rows, share, _, _ = self.timed_run("capacity", args, warmup, window, [], out, module)
        ix = {f: i for i, f in enumerate(ROW_FIELDS)}
        ends = [
            row[ix["at"]] + row[ix["e2e"]] - warmup
            for row in rows
            if not row[ix["error"]] and row[ix["e2e"]] >= 0
        ]
        bounds = [0.0, *self.event_times(), 1.0]
        phases = []
        for lo, hi in itertools.pairwise(bounds):
            n = sum(1 for t in ends if lo * window <= t < hi * window)
            phases.append(n / ((hi - lo) * window))
        total = sum(1 for t in ends if 0 <= t < window) / window
        print_cpu("capacity run", share)
        return total, phases

    # -- one policy at one load -------------------------------------------------------------
    def run(
        self, policy: str, load: float, rate: float, warmup: float, window: float, seed: int
    ) -> RunResult:
        self.reset_and_wait_idle()
        edges = self.start_edges(policy)
        try:
            name = f"load-{policy}-{round(load * 100)}"
            sched_path = self.log_dir / f"{name}.schedule.json"
            out = self.log_dir / f"{name}.json"
            sched = make_schedule(rate, warmup, window, EDGES, seed, cooldown=window * 0.25)
            sched.dump(sched_path)
            args = ["open", str(sched_path), str(out)]
            args += ["--ports", ",".join(str(e.port) for e in edges)]
            rows, share, samples, cp = self.timed_run(name, args, warmup, window, edges, out)
        finally:
            self.stop([e.child for e in edges])
        res = summarize(policy, load, rate, warmup, window, rows)
        res.cpu = share
        if len(samples) >= 2:
            first, last = samples[0], samples[-1]
            res.updates_per_s = sum(last[k] - first[k] for k in first) / len(first) / window
            per_s = [float(b[k] - a[k]) for a, b in itertools.pairwise(samples) for k in a]
            res.updates_p90_1s = pct(per_s, 90)
            res.updates_max_1s = max(per_s, default=0.0)
        res.cp_pushes_per_s = {k: v / EDGES for k, v in cp.items() if v}
        return res


def vllm_router_binary() -> str | None:
    """The ``vllm-router`` of this environment (next to its Python), else on PATH."""
    here = Path(sys.executable).parent / "vllm-router"
    return str(here) if here.exists() else shutil.which("vllm-router")


def quiet_port() -> int:
    """A free port below the kernel's ephemeral range (32768+), so no outgoing connection
    of this machine takes it between now and when an Envoy binds it."""
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(20000, 32000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    return free_port()


def _updates(client: httpx.Client, edges: list[Edge]) -> dict[str, int]:
    return {str(e.admin): envoy_xds_updates(client, e.admin) for e in edges}


def _sleep_until(t: float) -> None:
    d = t - time.time()
    if d > 0:
        time.sleep(d)


# -- printing --------------------------------------------------------------------------------


def _kind(name: str) -> str:
    for prefix in ("llm", "agent", "envoy", "load", "capacity"):
        if name.startswith(prefix):
            return "loadgen" if prefix in ("load", "capacity") else prefix
    return name


def print_cpu(label: str, share: dict[str, float]) -> None:
    """One line per run: per kind of process, the busiest one and the sum; then warnings."""
    kinds: dict[str, list[float]] = {}
    for k, v in share.items():
        kinds.setdefault(_kind(k), []).append(v)
    parts = ", ".join(
        f"{k} {max(vs) * 100:.0f}%" + (f" (x{len(vs)} sum {sum(vs) * 100:.0f}%)" * (len(vs) > 1))
        for k, vs in sorted(kinds.items(), key=lambda kv: -sum(kv[1]))
    )
    total = sum(share.values())
    print(f"  cpu % of one core ({label}): all {total * 100:.0f}%; busiest per kind: {parts}")
    for k, v in sorted(share.items(), key=lambda kv: -kv[1]):
        if v <= CPU_BOUND_WARN:
            break
        print(
            f"  WARNING: {k} used {v * 100:.0f}% of a core during {label}: it may be "
            "CPU-bound and the numbers may measure the machine, not the routing",
            flush=True,
        )


def _ms(x: float) -> str:
    return "-" if math.isnan(x) else f"{x * 1000:.0f}"


HEADER = (
    f"{'policy':<14}{'load':>5}{'offer/s':>8}{'thru/s':>8}{'ttft50':>8}{'ttft95':>8}"
    f"{'ttft99':>8}{'e2e50':>8}{'e2e95':>8}{'e2e99':>8}{'err':>5}{'xds/s':>7}{'max1s':>6}"
)
"""Latencies in ms; offer/s: arrivals in the window; thru/s: completions in the window;
xds/s: xDS updates each Envoy accepted per second (mean); max1s: most in any second."""


def row_text(r: RunResult) -> str:
    return (
        f"{r.policy:<14}{r.load * 100:>4.0f}%{r.offered:>8.2f}{r.throughput:>8.2f}"
        f"{_ms(r.ttft[0]):>8}{_ms(r.ttft[1]):>8}{_ms(r.ttft[2]):>8}"
        f"{_ms(r.e2e[0]):>8}{_ms(r.e2e[1]):>8}{_ms(r.e2e[2]):>8}"
        f"{sum(r.errors.values()):>5}{r.updates_per_s:>7.2f}{r.updates_max_1s:>6.0f}"
    )


def print_served(r: RunResult) -> None:
    """Which replica served what share of the run, and its errors if any."""
    share = " ".join(f"{k.split('/')[0]}:{v * 100:.0f}%" for k, v in r.share.items())
    print(f"  served: {share}")
    if r.errors:
        print(f"  errors: {dict(r.errors)}")


def print_run(r: RunResult) -> None:
    print(row_text(r), flush=True)
    print_served(r)
    if r.cp_pushes_per_s:
        cp = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r.cp_pushes_per_s.items()))
        print(f"  control plane pushes per Envoy per s: {cp}")
    if r.updates_per_s:
        print(
            f"  xDS updates per Envoy: {r.updates_per_s:.2f}/s mean, "
            f"{r.updates_p90_1s:.0f} p90 and {r.updates_max_1s:.0f} max in one second"
        )
    print(f"  retried requests: {r.retried}, max generator lag {r.max_lag * 1000:.0f} ms")
    print_cpu(f"{r.policy} at {r.load * 100:.0f}%", r.cpu)


STYLES = {
    "ROUND_ROBIN": ("o", "-", "tab:blue"),
    "LEAST_REQUEST": ("s", "-", "tab:orange"),
    "vllm-router-p2": ("^", "--", "tab:purple"),
    "aixds": ("D", "-", "tab:green"),
}
"""Marker, line and colour of each policy in the plots."""
P99_PANELS: tuple[tuple[str, Any, bool], ...] = (
    ("p99 end-to-end latency, s (log scale)", lambda r: r.e2e[2], True),
    ("p99 time to first token, s (log scale)", lambda r: r.ttft[2], True),
)
"""(y label, value of a run, log scale) of each panel."""


def write_plot(
    results: list[Any],
    path: Path,
    title: str,
    styles: dict[str, tuple[str, str, str]] = STYLES,
    panels: tuple[tuple[str, Any, bool], ...] = P99_PANELS,
) -> None:
    """One panel per ``panels`` entry, a line per policy, against load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2))
    loads = sorted({r.load * 100 for r in results})
    for policy, (marker, line, color) in styles.items():
        rs = sorted((r for r in results if r.policy == policy), key=lambda r: r.load)
        if not rs:
            continue
        xs = [r.load * 100 for r in rs]
        for ax, (_, value, _) in zip(axes, panels, strict=True):
            ys = [value(r) for r in rs]
            ax.plot(xs, ys, marker=marker, linestyle=line, color=color, label=policy)
    seconds = FuncFormatter(lambda v, _: f"{v:g}")
    for ax, (label, _, log) in zip(axes, panels, strict=True):
        ax.set_xlabel("offered load, % of measured fleet capacity")
        ax.set_ylabel(label)
        if log:
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(seconds)
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(loads)
        ax.set_xlim(min(loads) - 5, max(loads) + 5)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 and not math.isnan(a) and not math.isnan(b) else math.nan


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="80%% load only, short windows")
    ap.add_argument("--loads", help="comma-separated fractions of capacity (0.6,0.8,0.95)")
    ap.add_argument("--window", type=float, help="measured seconds per run (90; quick 24)")
    ap.add_argument("--warmup", type=float, help="unmeasured seconds before each window (4)")
    ap.add_argument("--capacity-window", type=float, help="seconds of the capacity run")
    ap.add_argument("--capacity", type=float, help="skip the capacity run: use this req/s")
    ap.add_argument(
        "--policies",
        help=f"comma-separated, of {', '.join(POLICIES)} (default: all)",
    )
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--gpu", choices=("auto", "sim", "none"), default="auto")
    ap.add_argument("--plot", type=Path, default=PLOT)
    ap.add_argument("--results", type=Path, help="also write every run's numbers here (JSON)")
    ap.add_argument("--replot", type=Path, help="no runs: report and plot a --results file")
    ap.add_argument("--keep-logs", type=Path, help="keep process logs and raw results here")
    args = ap.parse_args(argv)
    if args.replot:
        saved = load_results(args.replot)
        report(saved, args.plot, saved[0].window if saved else 0.0)
        return 0

    loads = [float(x) for x in args.loads.split(",")] if args.loads else None
    loads = loads or ([0.8] if args.quick else [0.6, 0.8, 0.95])
    window = args.window or (24.0 if args.quick else 90.0)
    warmup = args.warmup if args.warmup is not None else 4.0
    cap_window = args.capacity_window or (16.0 if args.quick else 40.0)
    policies = [p for p in (args.policies or ",".join(POLICIES)).split(",") if p]
    unknown = set(policies) - set(POLICIES)
    if unknown:
        ap.error(f"unknown policies {sorted(unknown)}")
    gpu = args.gpu
    if gpu == "auto":
        gpu = "sim" if importlib.util.find_spec("controlplane.agent.gpus.sim") else "none"

    log_dir = args.keep_logs or Path(tempfile.mkdtemp(prefix="aixds-routing-"))
    t_start = time.monotonic()
    interrupt_on_stop_signals()  # SIGTERM, SIGHUP: stop every child, as on Ctrl-C
    print(f"routing bench: load average {loadavg()} on {_cpus()} CPUs; logs in {log_dir}")
    shape = ServerShape()
    bench = Bench(log_dir, shape, gpu)
    results: list[RunResult] = []
    try:
        bench.start_fleet()
        bench.start_control_plane()
        print(
            f"fleet: {len(SPEEDS)} replicas, speeds {list(SPEEDS)}, max_running "
            f"{shape.max_running}, tpot {shape.tpot_ms:.0f} ms, batch slowdown "
            f"{shape.batch_slowdown}, KV {shape.kv_capacity_tokens} tokens; agents --gpu {gpu}"
        )
        for ev in EVENTS:
            print(f"event at {ev.at * 100:.0f}% of each window: {ev.what}")
        if args.capacity:
            capacity = args.capacity
            print(f"capacity: {capacity:.2f} req/s (given)")
        else:
            capacity, phases = bench.measure_capacity(4.0, cap_window)
            ph = " / ".join(f"{p:.2f}" for p in phases)
            print(f"capacity: {capacity:.2f} req/s (saturated, {cap_window:.0f} s; per phase {ph})")
        print(f"windows: {warmup:.0f} s warm-up + {window:.0f} s measured; seed {args.seed}")
        print(HEADER, flush=True)
        print("  (ms; offer/s: arrivals in the window; thru/s: completions in it; xds/s: xDS")
        print("   updates accepted per Envoy per second, mean; max1s: most in one second)")
        for load in loads:
            for policy in policies:
                r = bench.run(policy, load, load * capacity, warmup, window, args.seed)
                results.append(r)
                print_run(r)
    finally:
        shut_down(bench, log_dir, keep=args.keep_logs is not None)
    save_results(results, args.results, t_start)
    report(results, args.plot, window)
    return 0


def shut_down(bench: Bench, log_dir: Path, keep: bool) -> None:
    """Stop every process the bench started; remove its logs unless ``keep``."""
    bench.group.stop_all()
    bench.http.close()
    if not keep:
        shutil.rmtree(log_dir, ignore_errors=True)


def save_results(results: list[Any], path: Path | None, t_start: float) -> None:
    """Every run's numbers to ``path`` (JSON), if given; then the summary's heading."""
    if path:
        doc = [{**asdict(r), "errors": dict(r.errors)} for r in results]
        path.write_text(json.dumps(doc, indent=1))
    print()
    print(f"summary (load average now {loadavg()}; {time.monotonic() - t_start:.0f} s)")


def load_results(path: Path) -> list[RunResult]:
    """The runs a ``--results`` file holds."""
    out = []
    for d in json.loads(path.read_text()):
        d["errors"] = Counter(d["errors"])
        d["ttft"], d["e2e"] = tuple(d["ttft"]), tuple(d["e2e"])
        out.append(RunResult(**d))
    return out


def report(results: list[RunResult], plot: Path, window: float) -> None:
    """The summary table, the ratios, the plot, and the last line."""
    print(HEADER)
    for r in results:
        print(row_text(r))
    by = {(r.policy, r.load): r for r in results}
    print("ratios, baseline / aixds (above 1: aixds better):")
    for load in sorted({r.load for r in results}):
        a = by.get(("aixds", load))
        if a is None:
            continue
        for base in ("ROUND_ROBIN", "LEAST_REQUEST", "vllm-router-p2"):
            b = by.get((base, load))
            if b is None:
                continue
            print(
                f"  {load * 100:.0f}% vs {base:<14}: e2e p50 {_ratio(b.e2e[0], a.e2e[0]):.2f}"
                f" p95 {_ratio(b.e2e[1], a.e2e[1]):.2f} p99 {_ratio(b.e2e[2], a.e2e[2]):.2f}"
                f"  ttft p99 {_ratio(b.ttft[2], a.ttft[2]):.2f}"
                f"  throughput {_ratio(a.throughput, b.throughput):.2f} (aixds/baseline)"
            )
    if results:
        write_plot(
            results,
            plot,
            f"p99 vs load: 8 fake vLLM replicas (mixed speeds, one slowed, one noisy "
            f"neighbour), 4 edge Envoys, Poisson load, {window:.0f} s windows",
        )
        print(f"plot: {plot}")
    a80 = by.get(("aixds", 0.8))
    rr, lr = by.get(("ROUND_ROBIN", 0.8)), by.get(("LEAST_REQUEST", 0.8))
    x = _ratio(rr.e2e[2], a80.e2e[2]) if rr and a80 else math.nan
    y = _ratio(lr.e2e[2], a80.e2e[2]) if lr and a80 else math.nan
    print(f"p99 ratio at 80% load: vs ROUND_ROBIN {x:.2f}, vs LEAST_REQUEST {y:.2f}")


def _cpus() -> int:
    import os

    return os.cpu_count() or 1


if __name__ == "__main__":
    sys.exit(main())
