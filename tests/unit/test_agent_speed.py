"""The agent's measured decode speed (``agent.servers.speed``) and the record it ends up in."""

from __future__ import annotations

import pytest

from controlplane.agent.publisher import Target, build_record, worth_publishing
from controlplane.agent.servers.adapter import Probe
from controlplane.agent.servers.speed import DecodeSpeed, next_rung, snap
from controlplane.fleet.model import LoadStats, ModelInfo, ModelState, ServerKind


def feed(est: DecodeSpeed, t0: float, seconds: float, tps_per_seq: float, running: int) -> float:
    """Scrape every 0.25 s for ``seconds`` while ``running`` sequences decode; the speed."""
    t, total = t0, 0.0
    est.observe(t, generated=total, running=running)
    for _ in range(int(seconds / 0.25)):
        t += 0.25
        total += tps_per_seq * running * 0.25
        est.observe(t, generated=total, running=running)
    assert est.speed is not None
    return est.speed


def test_speed_is_per_sequence_rate_over_the_reference_snapped() -> None:
    assert feed(DecodeSpeed(reference_tps=25.0), 0.0, 10, 25.0, 4) == 1.0
    assert feed(DecodeSpeed(reference_tps=25.0), 0.0, 10, 12.5, 4) == snap(0.5, 1.25)
    assert feed(DecodeSpeed(reference_tps=25.0), 0.0, 10, 37.5, 1) == snap(1.5, 1.25)
    assert feed(DecodeSpeed(reference_tps=50.0), 0.0, 10, 37.5, 1) == snap(0.75, 1.25)


def test_unknown_until_measured_and_kept_while_idle() -> None:
    est = DecodeSpeed()
    assert est.observe(0.0, generated=100.0, running=0) is None  # nothing to compare with yet
    assert est.observe(1.0, generated=100.0, running=0) is None  # idle: nothing measured
    speed = feed(est, 2.0, 10, 12.5, 3)
    assert speed < 1.0
    assert (
        est.observe(20.0, generated=1e6, running=0) == speed
    )  # idle again: keep the last estimate
    assert (
        est.observe(21.0, generated=0.0, running=3) == speed
    )  # counter went back (restart): ignored


def test_smoothed_against_one_odd_scrape_but_follows_a_real_change() -> None:
    est = DecodeSpeed(reference_tps=25.0, tau_s=2.0)
    feed(est, 0.0, 10, 25.0, 4)
    t, total = 10.0, 1000.0
    est.observe(t, generated=total, running=4)
    est.observe(
        t + 0.25, generated=total + 5.0, running=4
    )  # one slow scrape: a fifth of the usual tokens
    assert est.speed == 1.0
    assert feed(est, 20.0, 12, 7.5, 4) == snap(0.3, 1.25)  # a real slowdown shows


def test_hysteresis_keeps_a_rung_until_the_estimate_is_clearly_elsewhere() -> None:
    step = 1.25
    assert snap(1.0 * step**0.5, step) in (1.0, step)  # plain rounding flips at half a rung
    assert next_rung(1.0, step**0.6, step) == 1.0  # 0.6 rung up: stay
    assert next_rung(1.0, step**-0.7, step) == 1.0
    assert next_rung(1.0, step**0.8, step) == step  # 0.8 rung up: move to the nearest rung
    assert next_rung(1.0, step**-2.2, step) == pytest.approx(step**-2)
    assert next_rung(None, step**0.6, step) == step  # nothing published yet: just snap


def test_estimate_wobbling_on_a_rung_boundary_does_not_flap() -> None:
    est = DecodeSpeed(reference_tps=25.0, tau_s=0.5)
    seen = set()
    t, total = 0.0, 0.0
    est.observe(t, generated=total, running=4)
    for i in range(400):  # the per-sequence rate alternates 1.08x / 1.16x of the reference
        t += 0.25
        total += (27.0 if (i // 8) % 2 else 29.0) * 4 * 0.25
        seen.add(est.observe(t, generated=total, running=4))
    assert len(seen - {None}) == 1


def test_snapped_speed_stays_inside_what_the_codec_accepts() -> None:
    assert snap(1e4, 1.25) == 1000.0
    assert snap(1e-6, 1.25) == 0.001


def test_bad_parameters_are_refused() -> None:
    for kw in ({"reference_tps": 0.0}, {"tau_s": -1.0}, {"step": 1.0}):
        with pytest.raises(ValueError):
            DecodeSpeed(**kw)  # type: ignore[arg-type]


TARGET = Target("n/vllm-1", "n", "r", "z", "127.0.0.1", 8000, ServerKind.VLLM)
MODELS = (ModelInfo("m", "v1", ModelState.READY),)


def test_record_carries_the_measured_speed_or_the_default() -> None:
    assert build_record(TARGET, Probe(True, MODELS, speed=0.64), (), 1.0).speed == 0.64
    unmeasured = build_record(TARGET, Probe(True, MODELS), (), 1.0)
    assert (unmeasured.speed, unmeasured.speed_measured) == (1.0, False)
    assert build_record(TARGET, Probe(True, MODELS, speed=0.64), (), 1.0).speed_measured


def test_a_speed_change_is_published_at_once() -> None:
    before = (Probe(True, MODELS, LoadStats(running=4.0), speed=1.0), ())
    same = (Probe(True, MODELS, LoadStats(running=4.0), speed=1.0), ())
    slower = (Probe(True, MODELS, LoadStats(running=4.0), speed=0.8), ())
    assert not worth_publishing(before, same)
    assert worth_publishing(before, slower)


def test_speed_from_decode_steps_is_steps_per_second_of_stepping() -> None:
    est = DecodeSpeed(reference_tps=25.0)
    assert est.observe(0.0, intervals=(100.0, 4.0)) is None
    t, steps, secs = 0.0, 100.0, 4.0
    for _ in range(40):  # 40 ms steps (25 tokens/s per sequence), busy a third of the time
        t, steps, secs = t + 0.3, steps + 0.1 / 0.04, secs + 0.1
        est.observe(t, intervals=(steps, secs))
    assert est.speed == 1.0
    assert est.observe(t + 5, intervals=(steps, secs)) == 1.0  # idle: nothing new, kept
    assert est.observe(t + 6, intervals=(0.0, 0.0)) == 1.0  # restart: counters went back, ignored


def test_capacity_holds_the_best_speed_through_a_busy_batch_and_follows_a_lasting_change() -> None:
    est = DecodeSpeed(reference_tps=25.0)
    assert est.capacity is None
    feed(est, 0.0, 10, 25.0, 2)  # light load: full speed
    assert est.capacity == 1.0
    # a big batch: per-sequence rate down to 60 %; speed follows, capacity holds
    assert feed(est, 10.0, 120, 15.0, 30) < 0.8
    assert est.capacity == 1.0
    # a GPU that stays at a third of its speed for an hour: capacity follows
    feed(est, 200.0, 3600, 25.0 / 3, 2)
    assert est.capacity == 0.5
    # and a faster one (twice as fast) shows at once: the best estimate is held
    feed(est, 4000.0, 10, 50.0, 2)
    assert est.capacity == 2.0


def test_record_carries_capacity_and_a_change_is_published() -> None:
    rec = build_record(TARGET, Probe(True, MODELS, speed=0.8, capacity=1.0), (), 1.0)
    assert (rec.speed, rec.capacity) == (0.8, 1.0)
    assert build_record(TARGET, Probe(True, MODELS), (), 1.0).capacity == 1.0
    before = (Probe(True, MODELS, speed=1.0, capacity=1.0), ())
    halved = (Probe(True, MODELS, speed=1.0, capacity=0.5), ())
    assert worth_publishing(before, halved)


def idle(est: DecodeSpeed, t0: float, seconds: float, total: float) -> float:
    """Scrape every second for ``seconds`` with nothing running and no new tokens."""
    for i in range(int(seconds) + 1):
        est.observe(t0 + i, generated=total, running=0)
    assert est.speed is not None
    return est.speed


def test_an_idle_server_relaxes_back_to_its_capacity_a_stalled_one_does_not() -> None:
    est = DecodeSpeed(reference_tps=25.0)
    assert feed(est, 0.0, 20, 25.0, 2) == 1.0
    slow = feed(est, 20.0, 20, 25.0 * 0.3, 2)  # measured 3x slower, then sent nothing
    assert slow == snap(0.3, 1.25)
    assert est.capacity == 1.0
    assert idle(est, 40.0, 4, 1e4) == slow  # idle seconds change little
    for i in range(120):  # sequences running, no token: stalled, not idle
        est.observe(45.0 + i, generated=1e4, running=2)
    assert est.speed == slow
    assert idle(est, 180.0, 60, 1e4) < 1.0  # a shed replica does not return within a minute
    assert idle(est, 241.0, 480, 1e4) == 1.0  # minutes without evidence: back to capacity
    assert idle(est, 722.0, 600, 1e4) == 1.0  # and never above it


def test_inter_token_histogram_measures_short_requests_and_idles_only_when_nothing_runs() -> None:
    est = DecodeSpeed(reference_tps=25.0)
    n, secs, t = 0.0, 0.0, 0.0
    est.observe(t, intervals=(n, secs), running=0)
    for _ in range(40):  # short requests between scrapes: 0 running at each scrape
        t, n, secs = t + 0.5, n + 5, secs + 5 * 0.1  # 10 tokens/s per sequence
        est.observe(t, intervals=(n, secs), running=0)
    assert est.speed == snap(0.4, 1.25)
    est.capacity, est.peak = 1.0, 1.0  # as if it had been fast before
    for _ in range(100):  # a server still running but decoding nothing is not idle
        t += 1.0
        est.observe(t, intervals=(n, secs), running=3)
    assert est.speed == snap(0.4, 1.25)
    for _ in range(600):
        t += 1.0
        est.observe(t, intervals=(n, secs), running=0)
    assert est.speed == 1.0


def test_one_token_requests_leave_no_interval_and_the_token_counter_measures_them() -> None:
    """Requests of one token have no inter-token interval: the histogram stands still, and
    the generated-token counter over the running batch measures instead (a replica measured
    by neither would keep its default while its peers had real speeds, 30x apart)."""
    est = DecodeSpeed(reference_tps=25.0)
    t, tokens = 0.0, 0.0
    est.observe(t, generated=tokens, running=4, intervals=(0.0, 0.0))
    for _ in range(40):
        t, tokens = t + 0.25, tokens + 4 * 12.5 * 0.25
        est.observe(t, generated=tokens, running=4, intervals=(0.0, 0.0))
    assert est.speed == snap(0.5, 1.25)
    # once intervals pass, they are the measure (here: twice as fast per sequence)
    n, secs = 0.0, 0.0
    for _ in range(40):
        t, tokens, n, secs = t + 0.25, tokens + 4 * 12.5 * 0.25, n + 10, secs + 10 * 0.02
        est.observe(t, generated=tokens, running=4, intervals=(n, secs))
    assert est.speed == snap(2.0, 1.25)
