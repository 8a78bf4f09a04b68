"""The cold-start benchmark's pure parts: wait/TTFT accounting on hand-made traces (numbers
checked by hand), the reactive loader's LRU eviction, the real ``place`` driving the
simulated agents, the seeded trace, and the smoke run's last line."""

from __future__ import annotations

import itertools
import re

import pytest

from bench.coldstart import (
    FORECAST,
    PER_MODEL,
    PLACEMENT,
    WHY,
    Aixds,
    Layout,
    Mark,
    Row,
    Sim,
    Stats,
    fleet_nodes,
    last_line,
    main,
    oracle,
    percentile,
    reactive,
    run,
    score,
    why_waited,
)
from bench.coldstart_trace import GB, ModelSpec, make_models, make_trace, zipf_shares

ONE = [ModelSpec("a", "tail", 40 * GB, load_s=9.75)]
TWO = [*ONE, ModelSpec("b", "tail", 40 * GB, load_s=9.75)]


def test_waits_and_ttft_by_hand_reactive() -> None:
    # 0.5 is held; the load starts at the tick 1, is done at 10.75: waits 10.25 and (3.0)
    # 7.75; 20.0 finds it ready (keep-alive 60 s).
    st = run(
        reactive(60.0, 0.1), "reactive", ONE, {"a": [0.5, 3.0, 20.0]},
        fleet_nodes(1), 80 * GB, 40, 0.0,
    )  # fmt: skip
    assert st.waits == [10.25, 7.75, 0.0]
    assert st.on_load == [True, True, False]
    assert st.loads == 1 and st.wakes == 0 and st.censored == 0
    assert st.resident_s == 39  # ticks 1..39
    r = score(st, 0.3)
    assert r.requests == 3
    assert r.waited_pct == pytest.approx(200 / 3) and r.on_load_pct == pytest.approx(200 / 3)
    assert r.p50 == pytest.approx(8.05) and r.p99 == pytest.approx(10.55)
    assert r.wait_mean == pytest.approx(9.0) and r.wait_p99 == pytest.approx(10.25)


def test_same_trace_through_real_place() -> None:
    st = run(
        Aixds(FORECAST, PLACEMENT), "aixds", ONE, {"a": [0.5, 3.0, 20.0]},
        fleet_nodes(1), 80 * GB, 40, 0.0,
    )  # fmt: skip
    assert st.waits == [10.25, 7.75, 0.0]
    assert st.loads == 1


def test_warm_never_waits_and_measures_after_learning() -> None:
    st = run(None, "warm", ONE, {"a": [0.5, 3.0, 20.0]}, fleet_nodes(1), 80 * GB, 40, 2.0)
    assert st.waits == [0.0, 0.0]  # 0.5 is before the measured window
    assert st.resident_s == 38
    assert score(st, 0.3).p99 == pytest.approx(0.3)


def test_lru_eviction_when_memory_is_needed() -> None:
    # a: held 0.5, loaded 1..10.75. b at 30.5: 40 + 40 GB > 72 GB, a is evicted at 31
    # (drained 2 s, unloaded in 1: its memory free at 34), b ready at 43.75 (wait 13.25).
    # a again at 45.5: evicts b at 46, loads from 49, ready at 58.75.
    st = run(
        reactive(60.0, 0.1), "reactive", TWO, {"a": [0.5, 45.5], "b": [30.5]},
        fleet_nodes(1), 80 * GB, 60, 0.0,
    )  # fmt: skip
    assert st.waits == [10.25, 13.25, 13.25]
    assert st.loads == 3 and st.overcommit_s == 0


def test_still_held_at_the_end_counts_until_the_end() -> None:
    st = run(reactive(60.0, 0.1), "reactive", ONE, {"a": [0.5]}, fleet_nodes(1), 80 * GB, 5, 0.0)
    assert st.waits == [4.5] and st.censored == 1


def test_the_oracle_loads_just_in_time_and_unloads_when_a_reload_would_come_in_time() -> None:
    # a at 20.5: loading starts at the tick 9 (9.75 s + 2 s early), ready at 18.75; no
    # next request: unloaded at the tick 21, its memory free at 24 (ticks 9..23 resident).
    st = run(oracle({"a": [20.5]}, 0.1), "oracle", ONE, {"a": [20.5]}, fleet_nodes(1), 80 * GB,
             40, 0.0)  # fmt: skip
    assert st.waits == [0.0] and st.loads == 1 and st.resident_s == 15


def test_the_oracle_waits_for_room_it_does_not_evict() -> None:
    # 40 + 40 GB > 72 GB: b (due at 35.5) cannot load while a is needed at 30.5; a goes at
    # the tick 31 (its memory free at 34), b is ready at 43.75 (wait 8.25). With two
    # replicas nobody waits.
    trace = {"a": [20.5, 30.5], "b": [35.5]}
    st = run(oracle(trace, 0.1), "oracle", TWO, trace, fleet_nodes(1), 80 * GB, 50, 0.0)
    assert st.waits == [0.0, 0.0, 8.25] and st.loads == 2 and st.overcommit_s == 0
    st = run(oracle(trace, 0.1), "oracle", TWO, trace, fleet_nodes(2), 80 * GB, 50, 0.0)
    assert st.waits == [0.0, 0.0, 0.0]


def test_percentile_nearest_rank() -> None:
    xs = [float(i) for i in range(1, 101)]
    assert percentile(xs, 0.99) == 99.0 and percentile(xs, 0.5) == 50.0
    assert percentile([], 0.99) == 0.0


def test_trace_is_seeded_and_shaped() -> None:
    models = make_models(20, 3)
    a, b = make_trace(models, 1200, 600, 3), make_trace(models, 1200, 600, 3)
    assert a == b and a != make_trace(models, 1200, 600, 4)
    assert {m.kind for m in models} == {"steady", "daily", "periodic", "tail"}
    for m in models:
        assert 8 * GB <= m.mem_bytes <= 40 * GB and 15 <= m.load_s <= 60
        ats = a[m.name]
        assert ats == sorted(ats) and all(0 <= x < 1200 for x in ats)
        if m.kind == "daily":  # the same window each day
            day1 = [x for x in ats if x < 600]
            day2 = [x - 600 for x in ats if x >= 600]
            assert day1 and day2
            assert abs(min(day1) - min(day2)) < 30


def test_popularity_is_zipf_with_steady_models_first_and_the_tail_last() -> None:
    models = make_models(40, 5, zipf_s=1.5, total_rate=2.0)
    ranks = sorted(m.rank for m in models)
    assert ranks == list(range(1, 41))
    assert sum(m.rate for m in models) == pytest.approx(2.0)
    by_rank = sorted(models, key=lambda m: m.rank)
    for a, b in itertools.pairwise(by_rank):  # rate ~ rank ** -1.5
        assert a.rate / b.rate == pytest.approx((b.rank / a.rank) ** 1.5)
    kinds = [m.kind for m in by_rank]
    assert kinds[:6] == ["steady"] * 6 and kinds[-12:] == ["tail"] * 12
    assert make_models(40, 6, 1.5, 2.0) != models  # the order within a band is seeded
    assert zipf_shares(3, 1.0) == pytest.approx([6 / 11, 3 / 11, 2 / 11])


def test_each_shape_spreads_its_zipf_rate_over_the_run() -> None:
    models = make_models(40, 2, zipf_s=1.0, total_rate=5.0)
    end = 12_000.0
    trace = make_trace(models, end, 600, 2)
    for m in models:
        n = len(trace[m.name])
        if m.kind == "periodic":  # at least one request a burst
            assert n >= end / 200 - 1
            if m.rate * 90 >= 3:
                assert n == pytest.approx(m.rate * end, rel=0.35)
        else:
            assert n == pytest.approx(m.rate * end, rel=0.35), m


def test_why_a_wait_began_by_hand() -> None:
    specs = {m.name: m for m in TWO}  # both load in 9.75 s
    marks = {
        ("a", 100): Mark(None, None),  # nobody wanted it
        ("a", 200): Mark(190, 190),  # wanted 10.5 s ahead, loading at once: still loading?
        ("a", 300): Mark(295, 295),  # wanted 5.5 s ahead: too late to load in time
        ("b", 400): Mark(380, None),  # wanted 20 s ahead, never loaded: no memory
        ("b", 500): Mark(470, 495),  # wanted 30 s ahead, loading 25 s later: memory
    }
    episodes = [("a", 100.5), ("a", 200.5), ("a", 300.5), ("b", 400.5), ("b", 500.5)]
    why = why_waited(episodes, marks, specs)
    assert why == {"tail": {WHY[0]: 1, WHY[4]: 1, WHY[1]: 1, WHY[2]: 1, WHY[3]: 1}}


def test_explain_counts_every_wait_that_began() -> None:
    # 0.5 begins a wait (3.0 waits on the same load); 100.5 finds it asleep: another
    aixds = Aixds(FORECAST, PLACEMENT, explain=True)
    slow_wake = [ModelSpec("a", "tail", 40 * GB, load_s=9.75, wake_s=3.0)]
    st = run(aixds, "aixds", slow_wake, {"a": [0.5, 3.0, 100.5]}, fleet_nodes(1), 80 * GB, 110, 0.0)
    assert st.episodes == [("a", 0.5), ("a", 100.5)]
    why = why_waited(st.episodes, aixds.marks, {"a": slow_wake[0]})
    assert why["tail"][WHY[0]] == 2  # nothing foresaw either request


def test_smoke_last_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--smoke", "--seed", "2", "--explain"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(
        r"cold start: waited \d+\.\d%, TTFT p99 vs warm \d+\.\d\dx, "
        r"resident vs reactive \d+\.\d\dx",
        lines[-1],
    ), lines[-1]
    assert any(line.startswith("aixds ") for line in lines)
    assert any(line.startswith("oracle ") for line in lines)
    assert any(line.startswith("why aixds' ") for line in lines)


def test_sleep_then_wake_through_real_place() -> None:
    # Loaded for 0.5 (ready at 10.75); no need once the 60 s keep-alive and the 10 s
    # scale-down are over: asleep. 100.5 wakes it (wake 3 s from the tick 101: wait 3.5).
    slow_wake = [ModelSpec("a", "tail", 40 * GB, load_s=9.75, wake_s=3.0)]
    st = run(
        Aixds(FORECAST, PLACEMENT), "aixds", slow_wake, {"a": [0.5, 100.5]},
        fleet_nodes(1), 80 * GB, 110, 0.0,
    )  # fmt: skip
    assert st.waits == [10.25, 3.5]
    assert st.on_load == [True, False]  # the second waited on a wake, not a load
    assert st.loads == 1 and st.wakes == 1
    r = score(st, 0.3)
    assert r.waited_pct == 100.0 and r.on_load_pct == 50.0


def test_last_line_ratios_are_the_issues() -> None:
    """X: aixds waited on a load; Y: aixds TTFT p99 / warm's; Z: aixds resident model-s /
    reactive's."""

    def row(policy: str, on_load: float, p99: float, resident: float) -> Row:
        return Row(
            policy, 100, on_load + 2.0, 0.3, p99, 0.0, 0.0, resident, 0.0, 0, 0, 0,
            on_load_pct=on_load,
        )  # fmt: skip

    rows = {
        "warm": row("warm", 0.0, 0.3, 9000.0),
        "reactive": row("reactive", 20.0, 30.0, 2000.0),
        "aixds": row("aixds", 1.5, 0.45, 2200.0),
    }
    assert last_line(rows) == (
        "cold start: waited 1.5%, TTFT p99 vs warm 1.50x, resident vs reactive 1.10x"
    )


def test_a_server_asleep_on_its_own_frees_the_gpu_and_wakes_instead_of_a_reload() -> None:
    # two 40 GB models on one 80 GB GPU (72 GB usable): not both awake. a sleeps after its
    # keep-alive; b then loads next to it; a's second request wakes it (b asleep by then)
    two = [ModelSpec(m, "tail", 40 * GB, load_s=9.75, wake_s=1.0) for m in "ab"]
    trace = {"a": [0.5, 200.5], "b": [100.5]}

    def once(layout: Layout) -> Stats:
        return run(
            Aixds(FORECAST, PLACEMENT), "aixds", two, trace, fleet_nodes(1), 80 * GB, 230, 0.0,
            layout,
        )  # fmt: skip

    apart = once(Layout())
    assert (apart.loads, apart.wakes) == (2, 1)
    assert apart.waits == [10.25, 10.25, 1.5]  # a, b: loads; a again: a wake
    assert apart.overcommit_s == 0 and apart.asleep_s > 0
    shared = once(Layout(per_model=False))  # asleep, a keeps its GPU memory: reloaded
    assert (shared.loads, shared.wakes) == (3, 0)
    assert shared.waits == [10.25, 11.25, 11.25]  # each load waits the other's unload (1 s)
    assert shared.overcommit_s == 0 and shared.asleep_s == 0


def test_a_swap_waits_for_the_drain_and_the_sleep_it_needs() -> None:
    """As the agent does: a load or a wake on a GPU starts once the sleeps and unloads
    under way there are done (drain 2 s, then the sleep: the wake time, or the unload 1 s)."""
    two = [ModelSpec(m, "tail", 40 * GB, load_s=9.75, wake_s=1.0) for m in "ab"]
    st = run(
        Aixds(FORECAST, PLACEMENT), "aixds", two, {"a": [0.5, 30.5], "b": [20.5]},
        fleet_nodes(1), 80 * GB, 60, 0.0,
    )  # fmt: skip
    # a ready at 10.75; b at 20.5: a goes to sleep at the tick 21 (free at 24), b loads
    # from 24, ready at 33.75 (wait 13.25); a at 30.5: b (loading, then ready at 34) goes
    # to sleep at 34 (free at 37), a wakes from 37, ready at 38 (wait 7.5, on a wake)
    assert st.waits == [10.25, 13.25, 7.5]
    assert st.on_load == [True, True, False]
    assert (st.loads, st.wakes, st.overcommit_s) == (2, 1, 0)
    # GPU model-seconds: a 1..20 and freeing 21..23, b 24..33 and freeing 34..36, a 37..59
    assert st.resident_s == 20 + 3 + 10 + 3 + 23


def test_a_load_asked_to_unload_runs_to_its_end_and_holds_the_gpu_until_then() -> None:
    """As the agent does: a server's load call is not cancelled; the unload follows it, and
    another load or wake on that GPU starts only once both are done."""
    two = [ModelSpec(m, "tail", 40 * GB, load_s=10.0, wake_s=1.0) for m in "ab"]
    sim = Sim(two, fleet_nodes(1), 80 * GB, 0.0, "test", PER_MODEL)
    sim.load("gpu-0", "a", 0.0)
    sim.now = 2.0
    sim.unload("gpu-0", "a")  # 8 s of load left, then 1 s to unload
    assert sim.freeing["gpu-0"] == [11.0]
    sim.load("gpu-0", "b", 3.0)
    assert sim.slots["gpu-0"]["b"].start == 11.0
    assert sim.slots["gpu-0"]["b"].done_at == 21.0
