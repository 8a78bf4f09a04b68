"""``aixds demo``: Redis, the control plane, edge Envoys, fake GPU replicas and their agents,
a steady load, and a live table of what the control plane decided and where traffic went.

Everything binds to 127.0.0.1. Ctrl-C, SIGTERM, a closed terminal (SIGHUP) or
``--duration`` stops every process it started; if the demo is killed outright (``kill -9``)
its children get SIGTERM from the kernel (see ``controlplane.proc_guard``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import sys
import tempfile
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from controlplane.client import ResumingStream, StreamFailed
from controlplane.demo.bursts import BurstServed, burst, last_burst
from controlplane.demo.procs import ProcessGroup, free_port, wait_port
from controlplane.demo.regions import (
    REGION_NAMES,
    DemoRegion,
    RegionControl,
    control_app,
    fleet_yaml,
)
from controlplane.demo.swap import SwapDemo, start_swap_node, swap_bursts, swap_lines
from controlplane.embedded_http import EmbeddedServer
from controlplane.proc_guard import interrupt_on_stop_signals, leave_terminal, stop_requested

MODEL = "llama"
COLD_MODEL = "qwen"
"""Loaded nowhere at start; any replica can load it (8 s). Its requests come in bursts:
the first waits in the activator while placement loads it, and it is unloaded when idle."""
COLD_LOAD_MS = 8000
COLD_BURST_EVERY_S = 30.0
SPEEDS = (0.5, 1.0, 2.0, 1.0, 1.5, 0.75)
"""Replica speed factors, cycled: a mix of GPU generations."""
REFERENCE_TPS = 100.0
"""The fake server's per-sequence decode rate at speed 1 (its default 10 ms per token), so
the speed the agents measure reads like the ``--speed`` the fakes were given."""
ZONES = ("a", "b")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
DEMO_TOKEN = "demo"
"""The API token of the demo's control plane (it listens on 127.0.0.1 only), so that the
printed drain and rollout commands work."""


@dataclass
class DemoReplica:
    replica_id: str
    region: str
    zone: str
    port: int
    speed: float


@dataclass
class DemoEdge:
    region: str
    port: int
    admin: int


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--regions",
        type=int,
        default=1,
        choices=(1, 2, 3),
        help="regions; with 2 or 3 each has its own Redis, control plane and edge Envoy,"
        " and a printed command loses or restores one",
    )
    p.add_argument(
        "--replicas", type=int, help="fake replicas per region (default 3; 2 with 3 regions)"
    )
    p.add_argument(
        "--rate", type=float, help="requests/s sent to each edge (default 80; 40 with 3 regions)"
    )
    p.add_argument("--duration", type=float, default=0.0, help="stop after S seconds (0: Ctrl-C)")
    p.add_argument(
        "--listen-port",
        type=int,
        default=10000,
        help="first edge's port if free (0: any free port)",
    )
    p.add_argument("--log-dir", type=Path, help="process logs (default: a temp dir)")


def run(args: argparse.Namespace) -> int:
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="aixds-demo-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    group = ProcessGroup(log_dir)
    interrupt_on_stop_signals()  # while starting up; then _demo's handlers stop it gently
    try:
        return asyncio.run(_demo(args, group, log_dir))
    except KeyboardInterrupt:
        return 0
    finally:
        for sig in STOP_SIGNALS:  # the stop below is bounded: let it finish
            signal.signal(sig, signal.SIG_IGN)
        print("\nstopping every process the demo started...", flush=True)
        group.stop_all()
        print(f"done. logs: {log_dir}")


def _port_or_free(preferred: int) -> int:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            return free_port()


@dataclass
class RegionPorts:
    redis: int
    xds: int
    api: int
    activator: int
    intent: int
    """The region's intent Redis (several regions only)."""

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis}/0"

    @property
    def intent_url(self) -> str:
        return f"redis://127.0.0.1:{self.intent}/0"


COLD_START_FLAGS = (
    # demo-sized cold-start times (seconds for hours): an idle model is unloaded about 20 s
    # after its last request until the idle-time histogram (1 s bins) has learned the 30 s
    # rhythm of the bursts (after 5 gaps) and loads it just before the next one
    "--keep-alive",
    "10",
    "--scale-down-after",
    "5",
    "--placement-hold",
    "5",
    "--unload-after",
    "3",
    "--forecast-bin",
    "1",
)
REGION_GRACE_S = 4.0
"""``serve --region-grace``: a silent remote registry is demoted after 2 s, lost after 4 s."""


async def _demo(args: argparse.Namespace, group: ProcessGroup, log_dir: Path) -> int:
    regions = list(REGION_NAMES[: args.regions])
    multi = len(regions) > 1
    n_replicas = args.replicas if args.replicas is not None else (2 if len(regions) > 2 else 3)
    rate = args.rate if args.rate is not None else (80.0 if len(regions) < 3 else 40.0)
    ports = {r: RegionPorts(*(free_port() for _ in range(5))) for r in regions}
    print(
        "starting "
        + ("a Redis and a control plane per region, " if multi else "Redis, control plane, ")
        + f"{len(regions)} edge Envoy(s) and {n_replicas * len(regions)} fake replicas"
        f" (logs in {log_dir}) ...",
        flush=True,
    )
    config = log_dir / "fleet.yaml"
    config.write_text(
        fleet_yaml(
            regions,
            {r: p.redis_url for r, p in ports.items()} if multi else None,
            {r: p.intent_url for r, p in ports.items()} if multi else None,
        )
    )
    demo_regions: list[DemoRegion] = []
    home = ports[regions[0]].intent
    for region in regions:
        p = ports[region]
        dr = DemoRegion(region, group.redis(p.redis, f"redis-{region}" if multi else "redis"))
        if multi:  # the intent's home first: the others are its replicas
            dr.intent_redis = group.redis(
                p.intent,
                f"redis-intent-{region}",
                replica_of=None if p.intent == home else home,
            )
        demo_regions.append(dr)
        group.aixds(
            f"serve-{region}" if multi else "serve",
            "serve",
            "--redis",
            p.redis_url,
            "--xds",
            f"127.0.0.1:{p.xds}",
            "--api",
            f"127.0.0.1:{p.api}",
            "--config",
            str(config),
            "--api-token",
            DEMO_TOKEN,
            "--activator",
            f"127.0.0.1:{p.activator}",
            *(("--region", region, "--region-grace", str(REGION_GRACE_S)) if multi else ()),
            *COLD_START_FLAGS,
        )
    replicas: list[DemoReplica] = []
    for dr in demo_regions:
        region, redis_url = dr.name, ports[dr.name].redis_url
        for i in range(n_replicas):
            port, speed = free_port(), SPEEDS[(len(replicas)) % len(SPEEDS)]
            zone = f"{region}-{ZONES[i % len(ZONES)]}"
            node = f"{region}-gpu{i + 1}"
            server = group.fake_llm(
                f"llm-{node}",
                port,
                MODEL,
                f"{node}/vllm-{port}",
                "--speed",
                str(speed),
                "--available",
                f"{COLD_MODEL}:20:{COLD_LOAD_MS}",
            )
            agent = group.agent(
                node,
                redis_url,
                region,
                zone,
                "--server",
                f"vllm=http://127.0.0.1:{port}",
                "--reference-tps",
                str(REFERENCE_TPS),
            )
            dr.nodes += [server, agent]
            replicas.append(DemoReplica(f"{node}/vllm-{port}", region, zone, port, speed))
    # one region only: a lost region would take the shared GPU's agent and Redis with it
    swap = None if multi else start_swap_node(group, regions[0], ports[regions[0]].redis_url)
    edges: list[DemoEdge] = []
    for n, region in enumerate(regions):
        port = _port_or_free(args.listen_port + n) if args.listen_port else free_port()
        admin = free_port()
        group.aixds(
            f"envoy-{region}",
            "envoy",
            "--xds",
            f"127.0.0.1:{ports[region].xds}",
            "--node-id",
            f"edge-{region}",
            "--region",
            region,
            "--zone",
            f"{region}-a",
            "--listen",
            f"127.0.0.1:{port}",
            "--admin",
            f"127.0.0.1:{admin}",
        )
        edges.append(DemoEdge(region, port, admin))
    api = ports[regions[0]].api
    wait_port(api)
    for e in edges:
        wait_port(e.admin)
    await asyncio.gather(*(_wait_routable(e) for e in edges))
    curl = (
        f"curl -s http://127.0.0.1:{edges[0].port}/v1/chat/completions "
        f"-H 'content-type: application/json' "
        f'-d \'{{"model":"{MODEL}","messages":[{{"role":"user","content":"hi"}}]}}\''
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _hung_up, stop)
    if stop_requested():  # a stop signal whose KeyboardInterrupt was lost while starting
        stop.set()
    served: deque[Served] = deque(maxlen=200_000)
    cold: deque[BurstServed] = deque(maxlen=100)
    tasks = [
        asyncio.create_task(_load(e, rate, served, stop), name=f"load-{e.region}") for e in edges
    ]
    tasks.append(asyncio.create_task(_cold_bursts(edges[0], cold, stop), name="cold-bursts"))
    if swap is not None:
        tasks.append(asyncio.create_task(swap_bursts(edges[0].port, swap, stop), name="swap"))
    control: Control | None = None
    if multi:
        ctl = RegionControl(group, demo_regions)
        apis = {r: f"http://127.0.0.1:{p.api}" for r, p in ports.items()}
        control = Control(ctl, free_port(), apis)
        http = EmbeddedServer(
            uvicorn.Config(
                control_app(ctl),
                host="127.0.0.1",
                port=control.port,
                log_level="warning",
                lifespan="off",
            )
        )
        stop_server = asyncio.create_task(_stop_on(stop, http), name="demo-control-stop")
        tasks += [asyncio.create_task(http.serve(), name="demo-control"), stop_server]
    api_url = f"http://127.0.0.1:{api}"
    print("\n".join(dashboard_lines(control.apis if control else {"": api_url})), flush=True)
    tasks.append(
        asyncio.create_task(
            _table(api_url, edges, replicas, served, cold, swap, curl, control, stop),
            name="table",
        )
    )
    if args.duration > 0:
        loop.call_later(args.duration, stop.set)
    await stop.wait()
    for t in tasks:
        t.cancel()
    failed = [
        r for r in await asyncio.gather(*tasks, return_exceptions=True) if isinstance(r, Exception)
    ]
    for exc in failed:
        print(f"demo task failed: {exc!r}", file=sys.stderr)
    return 1 if failed else 0


@dataclass
class Control:
    """The demo's region control endpoint and every region's control-plane API."""

    regions: RegionControl
    port: int
    apis: dict[str, str]


async def _stop_on(stop: asyncio.Event, server: EmbeddedServer) -> None:
    await stop.wait()
    server.should_exit = True


def _hung_up(stop: asyncio.Event) -> None:
    """SIGHUP: the terminal closed. Stop, and write the goodbye lines nowhere."""
    leave_terminal()
    stop.set()


async def _wait_routable(edge: DemoEdge, within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    async with httpx.AsyncClient(timeout=5) as c:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                r = await c.post(
                    f"http://127.0.0.1:{edge.port}/v1/completions",
                    json={"model": MODEL, "prompt": "hi", "max_tokens": 1},
                )
                if r.status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise RuntimeError("the edge Envoy never routed a request; see the logs")


Served = tuple[float, str, int, str, str, int]
"""(monotonic time, replica that finished the answer, status (200: completed), chat user
or "", edge's region, resumes of its stream)."""
CHAT_USERS = 24
"""Half the demo's requests are turns of one of these chats (the OpenAI body field
``user``, a session key): each keeps its replica, where its long prompt is cached."""


def _chat_prompt(user: int) -> str:
    """A chat's long, fixed system prompt: the part a replica's prefix cache keeps."""
    return f"You are assistant {user}. " + " ".join(f"rule-{user}-{i}" for i in range(120))


async def _load(edge: DemoEdge, rate: float, served: deque[Served], stop: asyncio.Event) -> None:
    """Open-loop Poisson arrivals at ``rate``/s, each a chat answer streamed through the
    resuming client (a stream cut by a lost server is resumed on another); records (time,
    replica that finished it, status, user, edge region, resumes). Status 200: the answer
    completed."""
    rng = random.Random(7)
    url = f"http://127.0.0.1:{edge.port}/v1/chat/completions"
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        inflight: set[asyncio.Task[None]] = set()

        async def one() -> None:
            body: dict[str, Any] = {
                "model": MODEL,
                "messages": [{"role": "user", "content": "hello"}],
                "max_tokens": rng.choice((8, 16, 32)),
            }
            user = ""
            if rng.random() < 0.5:
                k = rng.randrange(CHAT_USERS)
                user = f"chat-{edge.region}-{k}"
                body["user"] = user
                body["messages"].insert(0, {"role": "system", "content": _chat_prompt(k)})
            s = ResumingStream(client, url, body)
            try:
                await s.text()
                status = 200
            except StreamFailed:
                status = next((a.status for a in s.attempts if a.status != 200), 0)
            except httpx.HTTPError:
                status = 0
            rid = s.attempts[-1].headers.get("x-replica", "?") if s.attempts else "?"
            served.append((time.monotonic(), rid, status, user, edge.region, s.resumes))

        while not stop.is_set():
            await asyncio.sleep(rng.expovariate(rate))
            if len(inflight) < 256:
                t = asyncio.create_task(one())
                inflight.add(t)
                t.add_done_callback(inflight.discard)


async def _cold_bursts(edge: DemoEdge, cold: deque[BurstServed], stop: asyncio.Event) -> None:
    """Every ``COLD_BURST_EVERY_S``, a burst of requests for ``COLD_MODEL`` (from 10 s in)."""
    async with httpx.AsyncClient(timeout=150) as client:
        await asyncio.sleep(10.0)
        while not stop.is_set():
            cold.extend(await burst(client, edge.port, COLD_MODEL))
            await asyncio.sleep(COLD_BURST_EVERY_S)


def _cold_lines(fleet: dict[str, Any], cold: deque[BurstServed], placement: Any) -> list[str]:
    where = []
    for rid, rec in sorted(fleet.items()):
        state = next((m["state"] for m in rec.get("models", ()) if m["name"] == COLD_MODEL), None)
        if state:
            where.append(f"{rid.split('/')[0]} {state}")
    last = last_burst(cold, COLD_MODEL)
    how = f"last burst: {last}" if last else "first burst 10 s after start"
    reasons = ""
    with contextlib.suppress(KeyError, TypeError):
        d = placement["decision"]["models"][COLD_MODEL]
        reasons = "; ".join(d["reasons"])
    return [
        f"cold start: {COLD_MODEL} (any replica can load it in {COLD_LOAD_MS / 1000:g} s),"
        f" bursts every {COLD_BURST_EVERY_S:g} s: {', '.join(where) or 'loaded nowhere'}",
        f"  {how}",
        f"  placement: {reasons or '-'}",
    ]


async def _table(
    api: str,
    edges: list[DemoEdge],
    replicas: list[DemoReplica],
    served: deque[Served],
    cold: deque[BurstServed],
    swap: SwapDemo | None,
    curl: str,
    control: Control | None,
    stop: asyncio.Event,
) -> None:
    async with httpx.AsyncClient(timeout=2) as c:
        while not stop.is_set():
            try:
                fleet = {
                    r["replica_id"]: r for r in (await c.get(f"{api}/v1/fleet")).json()["replicas"]
                }
                weights = {
                    e.region: _weights(await c.get(f"http://127.0.0.1:{e.admin}/clusters"))
                    for e in edges
                }
                placement = (await c.get(f"{api}/v1/placement")).json()
            except (httpx.HTTPError, ValueError, KeyError) as err:
                print(f"waiting for the control plane API: {err!r}", flush=True)
                await asyncio.sleep(0.5)
                continue
            now = time.monotonic()
            recent = [s for s in served if now - s[0] <= 5.0]
            window = [(rid, st) for _, rid, st, _, _, _ in recent]
            share = Counter(rid for rid, st in window if st == 200)
            homes: dict[str, set[str]] = {}
            for _, rid, st, user, _, _ in recent:
                if user and st == 200:
                    homes.setdefault(user, set()).add(rid)
            errors = sum(1 for _, st in window if st != 200)
            resumed = sum(1 for *_, n in recent if n)
            total = max(1, sum(share.values()))
            lines = [
                "\x1b[2J\x1b[H",
                "aixds demo: live fleet (Ctrl-C to stop)",
                *dashboard_lines(control.apis if control else {"": api}),
                "",
            ]
            head = f"{'replica':<28}{'region/zone':<20}{'speed':>6}{'meas':>6}{'wait':>6}{'run':>5}"
            head += f"{'kv%':>6}{'hit%':>6}"
            head += "".join(f"{'w@' + e.region:>11}" for e in edges) + f"{'share(5s)':>11}"
            lines.append(head)
            for r in replicas:
                rec: dict[str, Any] = fleet.get(r.replica_id, {})
                load = rec.get("load", {})
                row = (
                    f"{r.replica_id:<28}{r.region + '/' + r.zone:<20}{r.speed:>6.2f}"
                    f"{rec.get('speed', 0.0):>6.2f}{load.get('queue_waiting', 0):>6.0f}"
                    f"{load.get('running', 0):>5.0f}"
                    f"{100 * load.get('kv_cache_usage', 0):>6.1f}"
                    f"{100 * (load.get('prefix_cache_hit_rate') or 0):>6.0f}"
                )
                for e in edges:
                    w = weights[e.region].get(r.port)
                    row += f"{w if w is not None else '-':>11}"
                row += f"{100 * share[r.replica_id] / total:>10.1f}%"
                lines.append(row)
            rps = len(window) / 5.0
            lines += [
                "",
                f"requests/s: {rps:.1f}   errors in last 5 s: {errors}   streams cut and"
                f" resumed by the client: {resumed}",
                f"chat sessions (body 'user') in the last 5 s: {len(homes)}, replicas per"
                f" session {sum(map(len, homes.values())) / max(1, len(homes)):.2f}"
                " (1.00: every chat stayed where its prompt is cached)",
                *(await _region_lines(c, control, replicas, recent) if control else []),
                *_cold_lines(fleet, cold, placement),
                *(swap_lines(fleet, swap) if swap is not None else []),
                "speed: the fake server's setting; meas: the decode speed its agent measured"
                " (per running sequence: a fuller batch reads lower); hit%: prefix-cache hits",
                "w@edge: EDS weight/priority each edge Envoy has now (its admin /clusters);"
                " /D: draining",
                "",
                "try it:",
                f"  {curl}",
                f"  aixds status --api {api}",
                f"  aixds models placement --api {api}",
                f"  AIXDS_API_TOKEN={DEMO_TOKEN} aixds drain {replicas[0].replica_id.split('/')[0]}"
                f" --api {api}    # then: --undo",
                *(_region_commands(control) if control else []),
            ]
            sys.stdout.write("\n".join(lines) + "\n")
            sys.stdout.flush()
            await asyncio.sleep(1.0)


async def _region_lines(
    c: httpx.AsyncClient, control: Control, replicas: list[DemoReplica], recent: list[Served]
) -> list[str]:
    """Per edge: where its requests were served (by region) in the last 5 s, and its
    errors; per region: up or lost, and how its control plane sees the other registries."""
    region_of = {r.replica_id: r.region for r in replicas}
    states = control.regions.states()
    home = next(iter(control.apis))
    lines = [f"regions (each with its own Redis and control plane; intent home {home}):"]
    for edge_region in control.apis:
        mine = [(rid, st) for _, rid, st, _, e, _ in recent if e == edge_region]
        resumed = sum(1 for *_, e, n in recent if e == edge_region and n)
        ok = Counter(region_of.get(rid, "?") for rid, st in mine if st == 200)
        total = max(1, sum(ok.values()))
        where = ", ".join(f"{r} {100 * n / total:.0f}%" for r, n in sorted(ok.items())) or "-"
        errors = sum(1 for _, st in mine if st != 200)
        seen, revision = await _control_plane_view(c, control.apis[edge_region])
        view = " ".join(f"{r}:{v}" for r, v in sorted(seen.items())) or "?"
        lines.append(
            f"  {edge_region:<9} {states[edge_region].upper():<5} edge served from: {where};"
            f" errors {errors}, streams resumed {resumed}; its control plane sees registries"
            f" {view}, intent rev {revision}"
        )
    return lines


async def _control_plane_view(c: httpx.AsyncClient, api: str) -> tuple[dict[str, str], str]:
    """From a control plane's /metrics: ``aixds_region_state`` (region -> live/demoted/lost)
    and the intent revision it applies (``aixds_intent_revision``; "?" if unreadable)."""
    names = {0: "live", 1: "demoted", 2: "lost"}
    try:
        text = (await c.get(f"{api}/metrics")).text
    except httpx.HTTPError:
        return {}, "?"
    out: dict[str, str] = {}
    revision = "?"
    for line in text.splitlines():
        if line.startswith('aixds_region_state{region="'):
            region = line.split('"')[1]
            out[region] = names.get(int(float(line.rsplit(" ", 1)[1])), "?")
        elif line.startswith("aixds_intent_revision "):
            revision = str(int(float(line.rsplit(" ", 1)[1])))
    return out, revision


def dashboard_lines(apis: dict[str, str]) -> list[str]:
    """Where the web dashboard is, given region -> API URL (one region: the key ``""``): one
    per region's control plane, each showing the fleet as its region sees it."""
    return [
        f"web dashboard{' (' + r + ')' if r else ''}: {url}/ui   (write token: {DEMO_TOKEN})"
        for r, url in apis.items()
    ]


def _region_commands(control: Control) -> list[str]:
    base = f"http://127.0.0.1:{control.port}/regions"
    name = next(iter(control.apis))
    apis = ", ".join(f"{r} {url}" for r, url in control.apis.items())
    return [
        f"  curl -X POST {base}/{name}/lose      # kill -9 its Redis, model servers and agents",
        f"  curl -X POST {base}/{name}/restore   # start them again",
        f"  control-plane APIs (intent writes go to the home, {name}): {apis}",
    ]


def _weights(resp: httpx.Response) -> dict[int, str]:
    """port -> "weight/pN" (plus "/D" while DRAINING) from Envoy's admin ``/clusters`` text."""
    weight: dict[int, str] = {}
    prio: dict[int, str] = {}
    draining: set[int] = set()
    for line in resp.text.splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == f"{MODEL}@v1" and ":" in parts[1]:
            port = int(parts[1].rsplit(":", 1)[1])
            if parts[2] == "weight":
                weight[port] = parts[3]
            elif parts[2] == "priority":
                prio[port] = parts[3]
            elif parts[2] == "health_flags" and "draining" in parts[3]:
                draining.add(port)
    return {
        port: f"{w}/p{prio.get(port, '?')}{'/D' if port in draining else ''}"
        for port, w in weight.items()
    }
