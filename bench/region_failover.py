"""Region loss under load: three regions, streaming load through region a's edge Envoy.

    python -m bench.region_failover [--quick] [--seed N] [--rate R] [--client resume|plain]
                                    [--logs DIR]

Regions a, b, c (distances a-b 10, a-c 50, b-c 40), each with its own redis-server, its
own ``aixds serve --region R`` reading all three registries, and fake vLLM replicas whose
agents write to their region's Redis (``tests.e2e.regions_fleet``). An open-loop load
sends streamed completions (a few hundred ms each) at a fixed rate to a's edge Envoy and
records, per request, its status, whether the stream ended with ``[DONE]`` and the
replica that served it (``x-replica``, mapped to its region). Phases:

1. loss: kill -9 every model server of a and a's redis-server at the same instant.
   Evacuated = seconds after the kill from which every 1 s window of new requests is
   served >= 99 % from b, a's nearest region.
2. return: a's Redis and model servers restart (same ports; the agents publish again).
   Returned = seconds until every 1 s window is >= 99 % back on a; flaps = times traffic
   went back to b after it had returned.
3. half: half of a's model servers are killed (a's Redis stays): the share kept in a vs
   spilled to b, next to Envoy's priority math (overprovisioning factor 1.4).

The load reads each stream through aixds's resuming client (``controlplane.client``,
``--client resume``, the default): a stream cut because its server was killed
mid-response is resumed through the same edge (prompt + the text received, the rest of
the tokens), and the request counts as served when the stitched answer is complete and
exactly the text an uncut stream gives. Failed = a first answer other than 200, a
transport error, a stream that could not be completed or whose text differs, whatever
the phase. The report also says how many streams were cut and what a plain client (one
that does not resume; ``--client plain`` runs one) would have lost. The last line is
exactly ``region loss: failed X/Y, evacuated in Z.ZZ s``.
Run it alone on the machine (it starts ~30 processes).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeGuard

import httpx

from bench.routing_load import REQUEST_TIMEOUT_S, Outcome, fetch, loop_start, sleep_until
from controlplane.client import ResumingStream, StreamFailed
from controlplane.sim.openai_format import text
from tests.e2e.fleet import Edge
from tests.e2e.regions_fleet import Regions
from tests.support import Procs

MODEL = "llama"
SERVER_ARGS = ("--ttft-ms", "30", "--tpot-ms", "10", "--max-running", "16")
"""A stream of 20-40 tokens lasts ~0.25-0.45 s."""
WINDOW_S = 1.0
TARGET_SHARE = 0.99
OVERPROVISIONING = 1.4
MARGIN_S = 0.5
"""Longer than a stream: requests sent this close to the next event are left out of the
phase's evacuation and return times."""


@dataclass(frozen=True)
class Shape:
    replicas: int
    rate: float
    warm_s: float
    loss_s: float
    return_s: float
    half_s: float


FULL = Shape(replicas=4, rate=25.0, warm_s=5.0, loss_s=15.0, return_s=20.0, half_s=12.0)
QUICK = Shape(replicas=2, rate=15.0, warm_s=3.0, loss_s=8.0, return_s=15.0, half_s=8.0)


@dataclass
class StreamOutcome(Outcome):
    cut: str = ""
    """Why the first request's stream ended early ('' when it was not cut)."""
    resumes: int = 0

    def row(self) -> list[object]:
        return [*super().row(), self.cut, self.resumes]


async def fetch_resuming(http: httpx.AsyncClient, o: StreamOutcome, t_ref: float) -> None:
    """One streamed completion read by ``ResumingStream``; fills ``o`` (status and
    replica of the first request; error only when the answer was not completed)."""
    loop = asyncio.get_running_loop()
    body = {"model": MODEL, "prompt": "a" * (4 * o.prompt), "max_tokens": o.output}
    s = ResumingStream(http, "/v1/completions", body, max_resumes=3)
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            async for _ in s:
                if o.ttft < 0:
                    o.ttft = loop.time() - t_ref
        o.e2e = loop.time() - t_ref
        if s.received.text != text(0, o.output):
            o.error = f"answer differs: {s.received.tokens} of {o.output} tokens"
    except StreamFailed as e:
        o.error = str(e)[:120]
    except TimeoutError:
        o.error = "timeout"
    finally:
        if s.attempts:
            o.status = s.attempts[0].status
            o.replica = s.attempts[0].headers.get("x-replica", "")
            o.cut = s.attempts[0].error
            o.resumes = s.resumes


@dataclass
class FixedRateLoad:
    """Open loop in a thread of its own: one streamed completion every 1/rate s to
    ``port``, 20-40 output tokens each (seeded). ``outcomes[i].at`` is the scheduled send
    time in seconds after ``start``. ``resume``: read each stream with the resuming
    client (``StreamOutcome``s) instead of a plain one."""

    port: int
    rate: float
    seed: int
    resume: bool = False
    start: float = 0.0
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def begin(self) -> None:
        self.start = time.time() + 0.2
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()

    def now(self) -> float:
        return time.time() - self.start

    def end(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop_start(self.start, loop)
        rng = random.Random(self.seed)
        tasks: list[asyncio.Task[None]] = []
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{self.port}", limits=limits
        ) as http:
            i = 0
            while not self._stop.is_set():
                at = i / self.rate
                await sleep_until(loop, t0 + at)
                o = StreamOutcome(at=at, target=0, prompt=8, output=rng.randint(20, 40))
                self.outcomes.append(o)
                fetching = (
                    fetch_resuming(http, o, t0 + at)
                    if self.resume
                    else fetch(self.port, o, t0 + at)
                )
                tasks.append(asyncio.create_task(fetching))
                i += 1
            await asyncio.gather(*tasks)


def was_cut(o: Outcome) -> TypeGuard[StreamOutcome]:
    """The resuming client's first request of ``o`` ended before the answer did."""
    return isinstance(o, StreamOutcome) and bool(o.cut)


def served(o: Outcome, region_of: dict[str, str]) -> str:
    """The region that served ``o`` completely, or ``"failed"``."""
    return "failed" if o.error else region_of.get(o.replica, "?")


def settle_time(
    rows: Sequence[tuple[float, bool]],
    t0: float,
    t_end: float,
    window: float = WINDOW_S,
    share: float = TARGET_SHARE,
) -> float | None:
    """Seconds after ``t0`` from which every ``window`` of requests sent before ``t_end``
    has at least ``share`` good ones (``rows``: (sent at, good), sorted); None: never."""
    rows = [r for r in rows if t0 <= r[0] < t_end]
    last_bad = -1
    for i, (at, _) in enumerate(rows):
        if at + window > t_end:
            break
        win = [good for a, good in rows[i:] if a < at + window]
        if sum(win) < share * len(win):
            last_bad = i
    if last_bad < 0:
        return 0.0
    if last_bad + 1 >= len(rows) or rows[last_bad + 1][0] + window > t_end:
        return None
    return rows[last_bad + 1][0] - t0


def flaps(rows: Sequence[tuple[float, str]], home: str, bucket: float = 0.5) -> int:
    """Times the majority region of a ``bucket`` went from ``home`` to another region
    after having reached ``home`` (``rows``: (sent at, region), sorted)."""
    buckets: dict[int, Counter[str]] = {}
    for at, region in rows:
        buckets.setdefault(int(at // bucket), Counter())[region] += 1
    majority = [c.most_common(1)[0][0] for _, c in sorted(buckets.items())]
    return sum(1 for prev, cur in itertools.pairwise(majority) if prev == home != cur)


@dataclass
class Events:
    kill: float = 0.0
    back: float = 0.0
    half: float = 0.0
    end: float = 0.0
    half_killed: int = 0
    a_replicas: int = 0


def _fmt(x: float | None) -> str:
    return "never" if x is None else f"{x:.2f} s"


def report(
    outcomes: Sequence[Outcome],
    ev: Events,
    region_of: dict[str, str],
    stats: dict[str, int],
    resumed: bool = False,
) -> tuple[int, int, float | None]:
    """Print the table; returns (failed, total, evacuation time). ``resumed``: the load
    read its streams with the resuming client."""
    rows = sorted(outcomes, key=lambda o: o.at)
    phases = [
        ("warm", 0.0, ev.kill),
        ("loss", ev.kill, ev.back),
        ("return", ev.back, ev.half),
        ("half", ev.half, ev.end),
    ]
    print(f"{'phase':<8} {'requests':>8} {'failed':>7}   served by region (a/b/c)")
    for name, t0, t1 in phases:
        ph = [o for o in rows if t0 <= o.at < t1]
        c = Counter(served(o, region_of) for o in ph)
        share = "/".join(f"{c[r] / max(1, len(ph)):.1%}" for r in "abc")
        print(f"{name:<8} {len(ph):>8} {c['failed']:>7}   {share}")
    failed = [o for o in rows if o.error]
    kills = (ev.kill, ev.half)
    if resumed:
        cut = [o for o in rows if was_cut(o)]
    else:
        cut = [o for o in failed if any(o.at < k < o.at + max(o.e2e, 0.0) + 0.05 for k in kills)]
    # Requests sent within MARGIN_S of the next event may be cut by it: not this phase's.
    loss_end, back_end = ev.back - MARGIN_S, ev.half - MARGIN_S
    evac = settle_time([(o.at, served(o, region_of) == "b") for o in rows], ev.kill, loss_end)
    back = settle_time([(o.at, served(o, region_of) == "a") for o in rows], ev.back, back_end)
    ret_rows = [(o.at, served(o, region_of)) for o in rows if ev.back <= o.at < back_end]
    half_rows = [o for o in rows if ev.half + 2.0 <= o.at < ev.end]
    kept = sum(served(o, region_of) == "a" for o in half_rows) / max(1, len(half_rows))
    healthy = (ev.a_replicas - ev.half_killed) / max(1, ev.a_replicas)
    print()
    print(f"failed requests:           {len(failed)}/{len(rows)}", end="")
    if resumed:
        saved = [o for o in cut if not o.error]
        print(f" (streams cut mid-response: {len(cut)}, {len(saved)} of them resumed)")
        # A plain client fails what failed here and every cut stream that was resumed.
        print(f"a plain client (no resume): {len(failed) + len(saved)}/{len(rows)} failed")
        for one in cut[:4]:
            print(f"  cut at {one.at - ev.kill:+.3f} s after the kill: {one.cut[:70]}")
        whole = sorted(o.e2e for o in rows if not o.error and not was_cut(o))
        took = sorted(o.e2e for o in saved)
        if whole and took:
            print(
                f"  resumed streams took {took[len(took) // 2]:.2f} s (median), "
                f"{took[-1]:.2f} s (max); uncut streams {whole[len(whole) // 2]:.2f} s (median)"
            )
    else:
        print(f" ({len(cut)} in flight when a kill hit, cut mid-response)")
    for o in failed[:8]:
        print(f"  at {o.at - ev.kill:+.3f} s after the kill: {o.error} (status {o.status})")
    print(f"evacuated to b (99 %/1 s): {_fmt(evac)}")
    print(
        f"returned to a (99 %/1 s):  {_fmt(back)} after a's restart, flaps {flaps(ret_rows, 'a')}"
    )
    print(
        f"half of a lost:            {kept:.1%} kept in a ({ev.half_killed} of "
        f"{ev.a_replicas} replicas killed); Envoy's priority math with overprovisioning "
        f"{OVERPROVISIONING}: {min(1.0, OVERPROVISIONING * healthy):.1%}"
    )
    print("edge Envoy: " + ", ".join(f"{k} {v}" for k, v in stats.items()))
    return len(failed), len(rows), evac


ENVOY_STATS = (
    "cluster.llama@v1.upstream_rq_retry",
    "cluster.llama@v1.upstream_rq_retry_overflow",
    "cluster.llama@v1.upstream_cx_connect_fail",
    "cluster.llama@v1.outlier_detection.ejections_enforced_total",
    "cluster.llama@v1.upstream_rq_rx_reset",
)


def run(shape: Shape, seed: int, logs: Path, resume: bool = True) -> int:
    procs = Procs(logs)
    regions = Regions(procs, logs)
    try:
        regions.start()
        regions.start_serve()
        for r in regions.names:
            regions.add_replicas(r, shape.replicas, MODEL, "v1", SERVER_ARGS)
        edge: Edge = regions.add_edge("a")
        regions["a"].wait_routable(edge, MODEL, shape.replicas * len(regions.names), 30)
        region_of = regions.region_of()
        a_reps = regions["a"].replicas
        load = FixedRateLoad(edge.port, shape.rate, seed, resume)
        ev = Events(a_replicas=len(a_reps), half_killed=len(a_reps) // 2)
        load.begin()
        time.sleep(0.2 + shape.warm_s)
        ev.kill = load.now()
        regions.kill("a")
        time.sleep(shape.loss_s)
        ev.back = load.now()
        regions.restore("a")
        time.sleep(shape.return_s - (load.now() - ev.back))
        ev.half = load.now()
        regions.kill("a", a_reps[: ev.half_killed])
        time.sleep(shape.half_s)
        ev.end = load.now()
        load.end()
        (logs / "requests.json").write_text(
            json.dumps({"events": ev.__dict__, "rows": [o.row() for o in load.outcomes]})
        )
        stats = {k.removeprefix("cluster.llama@v1."): edge.stat(k) for k in ENVOY_STATS}
        failed, total, evac = report(load.outcomes, ev, region_of, stats, resume)
    finally:
        regions.stop()
    evac_s = float("nan") if evac is None else evac
    print(f"region loss: failed {failed}/{total}, evacuated in {evac_s:.2f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.region_failover", description=__doc__)
    p.add_argument("--quick", action="store_true", help="2 replicas a region, shorter phases")
    p.add_argument("--seed", type=int, default=1, help="output lengths (default 1)")
    p.add_argument("--rate", type=float, default=0.0, help="requests/s (default 25, quick 15)")
    p.add_argument(
        "--client",
        choices=("resume", "plain"),
        default="resume",
        help="resume: aixds's resuming client (default); plain: a client that does not resume",
    )
    p.add_argument("--logs", type=Path, help="keep process logs here (default: a temp dir)")
    a = p.parse_args(argv)
    shape = QUICK if a.quick else FULL
    if a.rate > 0:
        shape = Shape(**{**shape.__dict__, "rate": a.rate})
    logs = a.logs or Path(tempfile.mkdtemp(prefix="aixds-region-failover-"))
    logs.mkdir(parents=True, exist_ok=True)
    print(
        f"region failover: {json.dumps(shape.__dict__)}, seed {a.seed}, "
        f"client {a.client}, logs {logs}"
    )
    try:
        return run(shape, a.seed, logs, a.client == "resume")
    finally:
        if a.logs is None:
            shutil.rmtree(logs, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
