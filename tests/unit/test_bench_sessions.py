"""The session benchmark's pure parts: workload, oracle, scoring, static MAGLEV bootstrap.

No processes: the workload generator must be deterministic (the same seed gives the same
sessions for every policy), each turn's prompt must start with the previous one (what
makes the prefix cache matter), and groups must share their system prompt.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

from bench.routing_envoy import static_bootstrap
from bench.sessions import SessionResult, affinity_hosts, leaver_share, score_sessions, wilson
from bench.sessions_load import SESSION_FIELDS, request
from bench.sessions_workload import (
    DRAIN_S,
    REMOVED,
    REMOVED_AT,
    TURNS,
    SessionSchedule,
    make_sessions,
    oracle_hits,
    prompt_tokens,
    prompts,
    system_prompt,
)
from controlplane.ir import LbPolicy
from controlplane.sim.prefix_cache import BLOCK_SIZE, CHARS_PER_TOKEN, block_hashes


def _sched(seed: int = 7) -> SessionSchedule:
    return make_sessions(2.0, 5.0, 20.0, 4, seed, cooldown=5.0)


def test_same_seed_same_sessions_and_text(tmp_path: Path) -> None:
    a, b = _sched(), _sched()
    assert a == b
    assert [prompts(7, s) for s in a.sessions[:5]] == [prompts(7, s) for s in b.sessions[:5]]
    other = _sched(8)
    assert other.sessions != a.sessions
    path = tmp_path / "s.json"
    a.dump(path)
    assert SessionSchedule.load(path) == a


def test_poisson_arrivals_and_turn_counts() -> None:
    s = _sched()
    ats = [x.at for x in s.sessions]
    assert ats == sorted(ats) and ats[-1] < s.end
    assert 25 <= len(s.sessions) <= 90  # 2/s over 30 s
    assert all(TURNS[0] <= len(x.turns) <= TURNS[1] for x in s.sessions)
    assert {x.edge for x in s.sessions} == {0, 1, 2, 3}
    assert all(t.think >= 0 for x in s.sessions for t in x.turns)


def test_prefix_grows_turn_by_turn() -> None:
    for s in _sched().sessions[:10]:
        ps = prompts(7, s)
        assert [len(p) // CHARS_PER_TOKEN for p in ps] == prompt_tokens(7, s)
        for prev, cur in itertools.pairwise(ps):
            assert cur.startswith(prev) and len(cur) > len(prev)
            # the server's view: every full block of the last prompt is a block of this one
            old, new = block_hashes(prev), block_hashes(cur)
            assert new[: len(old)] == old


def test_groups_share_system_prompts() -> None:
    sessions = _sched().sessions
    by_group: dict[int, list[str]] = {}
    for s in sessions:
        by_group.setdefault(s.group, []).append(prompts(7, s)[0])
    assert len(by_group) >= 3
    for group, firsts in by_group.items():
        sys_prompt = system_prompt(7, group)
        assert all(p.startswith(sys_prompt) for p in firsts)
        if len(firsts) > 1:
            assert firsts[0] != firsts[1]  # the user's messages differ
    a, b = (system_prompt(7, g) for g in list(by_group)[:2])
    assert block_hashes(a)[0] != block_hashes(b)[0]


def test_turn_request_carries_the_session_key() -> None:
    s = _sched().sessions[0]
    body, headers = request(s, prompts(7, s)[0], 5)
    doc = json.loads(body)
    assert doc["user"] == s.sid and doc["max_tokens"] == 5 and doc["stream"] is True
    assert headers == f"x-session-id: {s.sid}\r\n"


def test_oracle_counts_whole_blocks_of_the_last_prompt() -> None:
    s = _sched().sessions[0]
    sizes = prompt_tokens(7, s)
    sent = [(float(k), s.sid, k) for k in range(3)]
    hits, queries = oracle_hits(7, {s.sid: s}, sent, 0.0, 10.0)
    assert queries == sum(sizes[:3])
    # first turn: nothing (its group is new); then the previous prompt's whole blocks
    assert hits == sum((sizes[k - 1] // BLOCK_SIZE) * BLOCK_SIZE for k in (1, 2))
    # only what was sent in the window counts
    assert oracle_hits(7, {s.sid: s}, sent, 0.5, 1.5) == (
        (sizes[0] // BLOCK_SIZE) * BLOCK_SIZE,
        sizes[1],
    )


def _row(at: float, sid: str, turn: int, replica: str, error: str = "") -> list[object]:
    values = {"at": at, "session": sid, "turn": turn, "replica": replica, "error": error}
    defaults = {"attempts": 1, "ttft": 0.1, "e2e": 0.2, "lag": 0.0, "output": 1}
    return [values.get(f, defaults.get(f, 0)) for f in SESSION_FIELDS]


def test_score_counts_moves_and_moves_across_the_removal() -> None:
    sched = _sched()
    a, b = sched.sessions[0], sched.sessions[1]
    warmup, window = 0.0, 100.0
    rm = warmup + REMOVED_AT * window + DRAIN_S
    gone = f"gpu-{REMOVED}/vllm-1"
    rows = [
        _row(10, a.sid, 0, gone),
        _row(20, a.sid, 1, gone),
        _row(rm + 1, a.sid, 2, "gpu-0/vllm-2"),  # moved: its replica left
        _row(10, b.sid, 0, "gpu-1/vllm-3"),
        _row(20, b.sid, 1, "gpu-2/vllm-4"),  # moved for no reason
        _row(30, b.sid, 2, "gpu-2/vllm-4", error="timeout"),  # failed: not counted
        _row(rm + 2, b.sid, 3, "gpu-2/vllm-4"),
    ]
    res = SessionResult("x", 0.8, 1.0, window)
    score_sessions(res, rows, {s.sid: s for s in sched.sessions}, 7, warmup, window)
    assert res.moves == 2
    assert (res.across_removal, res.moved_on_removal, res.on_removed) == (2, 1, 1)
    assert res.home_moved == 1
    assert res.moves_per_min == 2 / (window / 60)
    assert res.oracle_queries > 0


def test_a_turn_passed_on_by_bounded_load_does_not_move_the_home() -> None:
    sched = _sched()
    a, b = sched.sessions[1], sched.sessions[2]  # 10 and 5 turns
    warmup, window = 0.0, 100.0
    rm = warmup + REMOVED_AT * window + DRAIN_S
    home, next_one = "gpu-1/vllm-3", "gpu-2/vllm-4"
    rows = [
        _row(10, a.sid, 0, home),
        _row(20, a.sid, 1, home),
        _row(30, a.sid, 2, next_one),  # its home was busy: this turn went to the next one
        _row(rm + 1, a.sid, 3, home),
        _row(rm + 9, a.sid, 4, home),
        _row(10, b.sid, 0, home),
        _row(rm + 1, b.sid, 1, next_one),
        _row(rm + 9, b.sid, 2, next_one),  # b's home moved
    ]
    res = SessionResult("x", 0.8, 1.0, window)
    score_sessions(res, rows, {s.sid: s for s in sched.sessions}, 7, warmup, window)
    assert (res.across_removal, res.moved_on_removal, res.home_moved) == (2, 2, 1)
    assert res.home_moved_share == 0.5


def test_a_move_well_before_the_removal_is_not_the_removals() -> None:
    sched = _sched()
    a = sched.sessions[1]  # 10 turns
    warmup, window = 0.0, 100.0
    rm = warmup + REMOVED_AT * window + DRAIN_S
    slowed, new_home = "gpu-3/vllm-5", "gpu-0/vllm-2"
    rows = [_row(2 + i, a.sid, i, slowed) for i in range(5)]  # its replica is shed ...
    rows += [_row(20 + i, a.sid, 5 + i, new_home) for i in range(3)]  # ... it moves once
    rows += [_row(rm + 1, a.sid, 8, new_home), _row(rm + 2, a.sid, 9, new_home)]
    res = SessionResult("x", 0.8, 1.0, window)
    score_sessions(res, rows, {s.sid: s for s in sched.sessions}, 7, warmup, window)
    assert (res.across_removal, res.moved_on_removal, res.home_moved) == (1, 0, 0)
    assert res.moves == 1


def test_wilson_interval_brackets_the_share_and_narrows_with_the_sample() -> None:
    low, high = wilson(9, 45)
    assert low < 9 / 45 < high
    assert round(low, 3) == 0.109 and round(high, 3) == 0.338
    low2, high2 = wilson(200, 1000)
    assert high2 - low2 < (high - low) / 3
    assert wilson(0, 10)[0] == 0.0 and math.isnan(wilson(0, 0)[0])


def test_the_leavers_share_is_its_weight_over_the_healthy_hosts() -> None:
    def host(port: int, weight: int, health: str = "HEALTHY") -> dict[str, Any]:
        return {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "weight": weight,
            "health_status": {"eds_health_status": health},
        }

    doc = {
        "cluster_statuses": [
            {"name": "llama@v1", "host_statuses": [host(1, 7)]},  # the load-following one
            {
                "name": "llama@v1#affinity",
                "host_statuses": [
                    host(1, 141),
                    host(2, 100),
                    host(3, 100, "DEGRADED"),
                    host(4, 50),
                ],
            },
        ]
    }
    hosts = affinity_hosts(doc)
    assert hosts == {1: (141, True), 2: (100, True), 3: (100, False), 4: (50, True)}
    assert leaver_share(hosts, 2) == 100 / 291  # the shed replica is out of the table
    assert leaver_share(hosts, 3) == 0.0 and leaver_share(hosts, 9) == 0.0


def test_static_maglev_bootstrap_hashes_on_the_session_header() -> None:
    doc = json.loads(
        static_bootstrap(
            policy=LbPolicy.MAGLEV,
            replicas=[("gpu-0/a", 1001), ("gpu-1/b", 1002)],
            node_id="n",
            listen_port=1003,
            admin_port=1004,
            model="llama",
            version="v1",
            session_header="x-session-id",
        )
    )
    (cluster,) = doc["static_resources"]["clusters"]
    assert cluster["lb_policy"] == "MAGLEV" and cluster["type"] == "STATIC"
    weights = [
        ep["load_balancing_weight"]
        for loc in cluster["load_assignment"]["endpoints"]
        for ep in loc["lb_endpoints"]
    ]
    assert weights == [1, 1]
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    routes = [
        r for vh in hcm["typed_config"]["route_config"]["virtual_hosts"] for r in vh["routes"]
    ]
    hashed = [r for r in routes if "route" in r and "hash_policy" in r["route"]]
    assert hashed
    assert all(
        r["route"]["hash_policy"][0]["header"]["header_name"] == "x-session-id" for r in hashed
    )
