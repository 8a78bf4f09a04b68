"""Issue 10 end to end: session affinity and migration through ``decide()``, on real parts.

Real Redis, ``aixds serve``, one edge Envoy over ADS, fake vLLM servers with their agents.
A session is the ``x-session-id`` header or the body's ``user``; every response names the
replica that served it (``x-replica``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.e2e.fleet import Edge, Fleet, Replica, prime
from tests.support import Procs, RedisServer, wait_until

pytestmark = pytest.mark.e2e

TOKEN = "affinity-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
MODEL = "llama"
AFFINITY = f"{MODEL}@v1#affinity"


@pytest.fixture
def fleet(procs: Procs, redis_srv: RedisServer) -> Iterator[Fleet]:
    f = Fleet(procs, redis_srv)
    f.start_serve("--api-token", TOKEN)
    yield f


def turn(
    edge: Edge,
    session: str,
    *,
    by: str = "header",
    max_tokens: int = 2,
    client: httpx.Client | None = None,
) -> httpx.Response:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"turn of {session}"}],
        "max_tokens": max_tokens,
    }
    headers = {}
    if by == "header":
        headers["x-session-id"] = session
    elif by == "user":
        body["user"] = session
    post = (client or httpx).post
    return post(f"{edge.url}/v1/chat/completions", json=body, headers=headers, timeout=30)


def home(edge: Edge, session: str, **kw: Any) -> str:
    r = turn(edge, session, **kw)
    assert r.status_code == 200, r.text
    return r.headers["x-replica"]


def in_flight(rep: Replica) -> int:
    """Requests the model server runs or queues (its vLLM gauges)."""
    text = httpx.get(f"{rep.url}/metrics", timeout=5).text
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith(("vllm:num_requests_running{", "vllm:num_requests_waiting{"))
    )


REFERENCE = ("--reference-tps", "100")
"""The fake server's decode rate at speed 1 (tpot 10 ms): measured speeds read as set."""


def replica(fleet: Fleet, *args: str) -> Replica:
    return fleet.add_replica(MODEL, server_args=args, agent_args=REFERENCE)


def settle(
    edge: Edge, want: dict[int, int] | Callable[[dict[int, int]], bool] | None = None
) -> dict[int, int]:
    """Sessionless traffic (turns long enough for the agents to see them running at two
    scrapes in a row) until the agents have measured every replica's capacity (a
    first measurement, like a GPU's real change, moves the affinity weights once) and the
    weights and health hold still for 2 s; with ``want`` (port -> weight, or a test of
    them), until they are that."""
    seen: list[dict[int, int]] = []
    states: list[tuple[dict[int, int], dict[int, str]]] = []
    since = time.monotonic()

    def still() -> bool:
        nonlocal since
        with httpx.Client() as c:
            threads = [
                threading.Thread(target=turn, args=(edge, ""), kwargs={"by": "none",
                                 "max_tokens": 150, "client": c})
                for _ in range(4)
            ]  # fmt: skip
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        hosts = edge.hosts(AFFINITY)
        w = {p: h["weight"] for p, h in hosts.items()}
        state = (w, {p: str(h["health"]) for p, h in hosts.items()})
        if states and state != states[-1]:
            since = time.monotonic()
        seen.append(w)
        states.append(state)
        ok = want is None or (want(w) if callable(want) else w == want)
        return ok and time.monotonic() - since >= 2.0

    try:
        wait_until(still, 60, interval=0.1, what="affinity weights holding still")
    except TimeoutError:
        raise AssertionError(f"affinity weights by port: {seen[-3:]}") from None
    return seen[-1]


def start(fleet: Fleet, n: int, *args: str) -> tuple[list[Replica], Edge]:
    reps = [replica(fleet, *args) for _ in range(n)]
    edge = fleet.add_edge()
    fleet.wait_routable(edge, MODEL, n)
    wait_until(lambda: len(edge.hosts(AFFINITY)) == n, 20, what=f"{n} hosts in {AFFINITY}")
    prime(reps)
    # equal replicas, equal weights: 100, or 71 where a loaded machine measured every
    # peak under 0.84 (the sqrt(2) rungs are finer than the noise of a busy CI host)
    ports = {r.port for r in reps}
    settle(edge, lambda w: set(w) == ports and len(set(w.values())) == 1)
    return reps, edge


@dataclass
class Sessions:
    """Chats that take turns one after another (one request in flight at a time), in a
    background thread: each turn's replica and outcome is recorded. One at a time keeps
    Envoy's bounded load out of the picture, so any move seen is a move of the mapping."""

    edge: Edge
    names: list[str]
    max_tokens: int = 2
    turns: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sessions:
        self.turns = {s: [] for s in self.names}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _run(self) -> None:
        with httpx.Client() as c:
            while not self._stop.is_set():
                for s in self.names:
                    try:
                        r = turn(self.edge, s, max_tokens=self.max_tokens, client=c)
                    except httpx.HTTPError as e:
                        self.failures.append(f"{s}: {e!r}")
                        continue
                    if r.status_code != 200:
                        self.failures.append(f"{s}: {r.status_code} {r.text[:200]}")
                        continue
                    self.turns[s].append((time.monotonic(), r.headers["x-replica"]))

    def total(self) -> int:
        return sum(len(t) for t in self.turns.values())

    def wait_turns(self, n: int, timeout: float = 30) -> None:
        start = self.total()
        wait_until(lambda: self.total() - start >= n, timeout, what=f"{n} more session turns")

    def path(self, s: str) -> list[str]:
        """The replicas session ``s`` went to, in order, repeats collapsed."""
        out: list[str] = []
        for _, rep in self.turns[s]:
            if not out or out[-1] != rep:
                out.append(rep)
        return out


def test_fifty_turns_of_one_session_land_on_one_replica_by_header_and_by_user(
    fleet: Fleet,
) -> None:
    _, edge = start(fleet, 4)

    def table() -> dict[int, tuple[int, str]]:
        return {p: (h["weight"], str(h["health"])) for p, h in edge.hosts(AFFINITY).items()}

    for by in ("header", "user"):
        # A capacity re-measured during the turns (seen in CI) changes a weight and, by
        # design, remaps some keys: such a run says nothing; the turns are taken again
        # while the table holds still.
        for _ in range(3):
            before = table()
            served = Counter(home(edge, f"chat-{by}", by=by) for _ in range(50))
            if table() == before:
                break
        assert len(served) == 1, (by, served, before, table())
    # sessionless requests are not one giant session: they spread by load
    with httpx.Client() as c:
        spread = Counter(
            turn(edge, "", by="none", client=c).headers["x-replica"] for _ in range(40)
        )
    assert len(spread) >= 2, spread


def test_sessions_spread_over_the_replicas_by_capacity(fleet: Fleet) -> None:
    fast = replica(fleet, "--speed", "3.0")
    slow = [replica(fleet) for _ in range(2)]
    edge = fleet.add_edge()
    fleet.wait_routable(edge, MODEL, 3)
    port = {r.replica_id: r.port for r in (fast, *slow)}

    # the agents measure decode speed from traffic; the affinity weights follow the
    # capacity on sqrt(2) rungs with hysteresis (fast: 3.0, measured ~2.4 -> 283, or 200
    # if measured under 2.38; the others 100, or 71 on a loaded machine)
    w = settle(
        edge,
        lambda w: w[slow[0].port] == w[slow[1].port] and w[fast.port] >= 2 * w[slow[0].port],
    )
    assert w[slow[0].port] == w[slow[1].port]
    # 120 sessions: the share's standard deviation is 0.046, so the 0.2 bound is 4 of them
    # (with 40 the table's dependence on the random ports failed about 1 run in 100)
    homes = Counter(port[home(edge, f"user-{i}")] for i in range(120))
    share = homes[fast.port] / 120
    expected = w[fast.port] / sum(w.values())  # 0.5 to 0.59
    assert abs(share - expected) < 0.2, (homes, w)
    assert all(homes[r.port] >= 10 for r in slow), homes


def test_drained_replica_hands_its_sessions_over_once_without_a_failed_turn(
    fleet: Fleet,
) -> None:
    _, edge = start(fleet, 4)
    names = [f"s{i}" for i in range(12)]
    first = {s: home(edge, s) for s in names}
    target = Counter(first.values()).most_common(1)[0][0]
    moved = [s for s in names if first[s] == target]
    in_flight: list[httpx.Response] = []
    long_turn = threading.Thread(
        target=lambda: in_flight.append(turn(edge, moved[0], max_tokens=300)), daemon=True
    )
    with Sessions(edge, names, max_tokens=4) as load:
        load.wait_turns(36)
        long_turn.start()
        time.sleep(0.5)  # the long turn is on its way (it takes ~3 s)
        r = httpx.post(f"{fleet.api}/v1/drains/{target}", headers=AUTH, timeout=30)
        assert r.status_code == 200 and r.json()["converged"], r.text
        drained_at = time.monotonic()
        load.wait_turns(60)
        long_turn.join(30)
    assert load.failures == []
    # the turn in flight when the drain came finished where it was
    assert [(r.status_code, r.headers["x-replica"]) for r in in_flight] == [(200, target)]
    moved = [s for s in names if first[s] == target]
    assert moved
    collateral = []
    for s in names:
        after = {rep for t, rep in load.turns[s] if t > drained_at + 0.5}
        assert after, s
        # once, to one other replica, and it stays there (no ping-pong)
        assert target not in after and len(after) == 1, (s, load.path(s))
        if s in moved:
            assert load.path(s) == [target, *after], load.path(s)
        elif load.path(s) != [first[s]]:
            # Maglev's table rebuild moves a few of the other keys too (0.1 % of 3,000
            # keys when 1 of 8 left, docs/affinity.md): once, and then they stay
            assert load.path(s) == [first[s], *after], load.path(s)
            collateral.append(s)
    assert len(collateral) <= 1, [load.path(s) for s in collateral]


def test_one_of_n_leaving_moves_about_one_nth_of_the_sessions(fleet: Fleet) -> None:
    """Maglev on stable weights: draining 1 of 4 replicas moves its own sessions (a
    quarter of them, up to the hash's spread) and next to none of the others: the others
    that move are at most 0.1/N of all sessions, so at most ~1.1/N move. The other
    replicas' weights and health must not change with the drain (if they do, the message
    shows Envoy's view before and after)."""
    reps, edge = start(fleet, 4)
    names = [f"m{i}" for i in range(120)]
    with httpx.Client() as c:
        before = {s: home(edge, s, client=c) for s in names}
        view_before = edge.hosts(AFFINITY)
        target = sorted(before.values())[0]  # any one
        port = next(r.port for r in reps if r.replica_id == target)
        r = httpx.post(f"{fleet.api}/v1/drains/{target}", headers=AUTH, timeout=30)
        assert r.status_code == 200 and r.json()["converged"], r.text
        wait_until(
            lambda: (
                edge.hosts(AFFINITY).get(port, {}).get("health", {}).get("eds_health_status")
                in (None, "DRAINING")
            ),
            10,
            what="the drained replica out of the edge's Maglev table",
        )
        after = {s: home(edge, s, client=c) for s in names}
        view_after = edge.hosts(AFFINITY)
    others = {p: h for p, h in view_before.items() if p != port}
    assert {p: h for p, h in view_after.items() if p != port} == others, (view_before, view_after)
    moved = [s for s in names if before[s] != after[s]]
    on_target = [s for s in names if before[s] == target]
    assert set(on_target) <= set(moved)
    collateral = len(moved) - len(on_target)
    assert collateral <= 0.1 * len(names) / 4, (len(moved), len(on_target), view_before, view_after)


def test_killed_replica_sessions_move_once_without_a_failed_turn(fleet: Fleet) -> None:
    reps, edge = start(fleet, 4)
    names = [f"k{i}" for i in range(12)]
    first = {s: home(edge, s) for s in names}
    target = Counter(first.values()).most_common(1)[0][0]
    victim = next(r for r in reps if r.replica_id == target)
    with Sessions(edge, names, max_tokens=4) as load:
        load.wait_turns(36)
        victim.server.kill()  # kill -9 the model server; its agent stays up
        killed_at = time.monotonic()
        wait_until(lambda: time.monotonic() > killed_at + 8, 20, what="8 s of turns")
    assert load.failures == []  # retries to other hosts carried the turns that hit it
    for s in names:
        after = [rep for t, rep in load.turns[s] if t > killed_at]
        assert target not in after, (s, load.path(s))
        if first[s] == target:
            # every turn after the kill on one replica: the first retry's pick is the
            # same as the table's once the host is ejected or gone
            late = {rep for t, rep in load.turns[s] if t > killed_at + 5}
            assert len(late) == 1, (s, load.path(s))


def test_saturated_replica_sends_new_sessions_elsewhere_and_keeps_the_rest(
    fleet: Fleet,
) -> None:
    """A replica that becomes 20x slower: its turns pile up while the others' finish, so
    Envoy's bounded load passes its sessions' turns to their next replica, and once the
    agent has measured the slowdown the control plane sheds it (DEGRADED in the hash
    cluster). New sessions go elsewhere, the other replicas' sessions stay where they are,
    and its own come home once it recovers."""
    reps, edge = start(fleet, 4)
    names = [f"n{i}" for i in range(40)]
    first = {s: home(edge, s) for s in names}
    hot = Counter(first.values()).most_common(1)[0][0]
    hot_rep = next(r for r in reps if r.replica_id == hot)
    hot_sessions = [s for s in names if first[s] == hot]
    r = httpx.post(f"{hot_rep.url}/control", json={"speed": 0.05}, timeout=5)
    assert r.status_code == 200, r.text
    streams = [
        threading.Thread(target=turn, args=(edge, s), kwargs={"max_tokens": 60}, daemon=True)
        for s in hot_sessions * 2
    ]
    for t in streams:
        t.start()

    # the turns that stayed on the slow replica are still running; the rest (those bounded
    # load passed on: how many depends on when each arrived) are done
    def only_the_slow_ones() -> bool:
        active = edge.stat(f"cluster.{AFFINITY}.upstream_rq_active")
        return 3 <= active == in_flight(hot_rep) and active < len(streams)

    wait_until(only_the_slow_ones, 15, what="only the slow replica's turns in flight")
    new = [f"fresh-{i}" for i in range(40)]
    landed = {s: home(edge, s) for s in new}
    others = {s: home(edge, s) for s in names if s not in hot_sessions}
    httpx.post(f"{hot_rep.url}/control", json={"speed": 1.0}, timeout=5)
    for t in streams:
        t.join(60)
    assert hot not in set(landed.values()), Counter(landed.values())
    assert len(set(landed.values())) == 3  # the hot one's share went to several others
    # the others stay (but for Maglev's small rebuild disruption when the shed replica
    # leaves the table: at most one of these ~30, see the drain test)
    assert sum(others[s] != first[s] for s in others) <= 1, (others, first)

    # once it has recovered (the agent measures its speed again from the sessionless
    # turns it still gets, and the control plane stops shedding it), its sessions come
    # home to their cache; without any traffic its idle estimate would take minutes
    back: dict[str, str] = {}

    def home_again() -> bool:
        settle(edge)
        back.update({s: home(edge, s) for s in hot_sessions})
        return set(back.values()) == {hot}

    try:
        wait_until(home_again, 180, what="the slow replica's sessions back home")
    except TimeoutError:
        raise AssertionError((back, edge.hosts(AFFINITY), hot_rep.port)) from None


def test_affinity_turned_off_through_the_cli_sends_sessions_by_load(fleet: Fleet) -> None:
    _, edge = start(fleet, 3)
    assert len({home(edge, "talk") for _ in range(20)}) == 1
    off = subprocess.run(
        [sys.executable, "-m", "controlplane", "affinity", MODEL, "off", "--api", fleet.api],
        env={**os.environ, "AIXDS_API_TOKEN": TOKEN},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert off.returncode == 0, off.stderr
    assert f"{MODEL}: off (api)" in off.stdout
    wait_until(lambda: AFFINITY not in edge.dynamic_versions(), 20, what="affinity cluster gone")
    with httpx.Client() as c:
        spread = Counter(home(edge, "talk", client=c) for _ in range(30))
    assert len(spread) >= 2, spread  # the session header no longer pins a replica
    listed = httpx.get(f"{fleet.api}/v1/affinity", timeout=5).json()["models"]
    assert listed == [{"model": MODEL, "enabled": False, "source": "api"}]
