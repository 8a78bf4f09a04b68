"""Demand forecast: the hybrid histogram policy, the time-of-day profile and the codec."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest

from controlplane.decide.forecast import (
    DemandHistory,
    ForecastConfig,
    HistoryError,
    forecast,
    history_from_doc,
    history_to_doc,
    new_history,
    observe,
)

CFG = ForecastConfig()
DAY = 86_400.0


def run(h: DemandHistory, ticks: list[tuple[float, float]], cfg: ForecastConfig = CFG) -> Any:
    for t, n in ticks:
        h = observe(h, t, n, cfg)
    return h


def periodic(every: float, hours: float, start: float = 1000.0) -> DemandHistory:
    """One request every ``every`` seconds, ticks every second."""
    h = new_history(CFG)
    t = start
    end = start + hours * 3600
    while t <= end:
        h = observe(h, t, 1.0 if (t - start) % every == 0 else 0.0, CFG)
        t += 1.0
    return h


def test_requests_every_ten_minutes_prewarm_at_nine_and_keep_alive_short() -> None:
    h = periodic(600.0, 3.0)
    last = h.last_request_at
    assert last is not None
    assert sum(h.bins) == 18 and h.bins[10] == 18  # 18 idle times of 600 s, all in bin 10
    f = forecast(h, last + 5, CFG, lead_s=30.0)
    assert f.representative
    assert f.prewarm_s == pytest.approx(540.0)  # bin 10's start less 10 %
    assert f.keep_alive_s == pytest.approx(11 * 60 * 1.1 - 540.0)  # 186 s after the pre-warm
    assert f.wanted and "active" in f.reason
    # between the active period and the pre-warm point less the 30 s load: not wanted
    assert not forecast(h, last + 300, CFG, 30.0).wanted
    assert not forecast(h, last + 505, CFG, 30.0).wanted
    f = forecast(h, last + 515, CFG, 30.0)
    assert f.wanted and "pre-warm" in f.reason
    assert forecast(h, last + 700, CFG, 30.0).wanted  # 700 < 540 + 186
    f = forecast(h, last + 730, CFG, 30.0)
    assert not f.wanted and "keep-alive" in f.reason


def test_a_request_is_expected_in_the_histograms_window_not_in_the_fixed_keep_alive() -> None:
    h = periodic(600.0, 3.0)
    last = h.last_request_at
    assert last is not None
    assert forecast(h, last + 515, CFG, 30.0).expected  # pre-warm
    assert forecast(h, last + 700, CFG, 30.0).expected  # within the histogram's keep-alive
    assert not forecast(h, last + 730, CFG, 30.0).expected  # past it: not even wanted
    assert not forecast(h, last + 300, CFG, 30.0).expected
    one = run(new_history(CFG), [(0.0, 1.0)])  # one request predicts nothing
    f = forecast(one, 100.0, CFG, 30.0)
    assert f.wanted and "fixed" in f.reason and not f.expected


def test_a_longer_load_starts_the_prewarm_earlier() -> None:
    h = periodic(600.0, 2.0)
    last = h.last_request_at
    assert last is not None
    assert not forecast(h, last + 400, CFG, lead_s=30.0).wanted
    assert forecast(h, last + 400, CFG, lead_s=150.0).wanted


def test_random_arrivals_are_not_representative_and_use_the_fixed_keep_alive() -> None:
    rng = random.Random(7)
    h = new_history(CFG)
    t = 0.0
    for _ in range(400):
        t += rng.uniform(20.0, 4 * 3600.0)  # idle times spread over the whole range
        h = observe(h, t, 1.0, CFG)
    f = forecast(h, t + 500, CFG, lead_s=30.0)
    assert sum(h.bins) > 300
    assert not f.representative
    assert (f.prewarm_s, f.keep_alive_s) == (0.0, CFG.fixed_keep_alive_s)
    assert f.wanted and "fixed" in f.reason
    assert not forecast(h, t + 601, CFG, 30.0).wanted


def test_too_few_idle_times_or_too_many_out_of_range_fall_back() -> None:
    few = run(new_history(CFG), [(0.0, 1), (600.0, 1), (1200.0, 1)])
    assert not forecast(few, 1300.0, CFG, 10.0).representative
    # idle times of 5 hours: beyond the 4-hour histogram
    far = run(new_history(CFG), [(i * 18_000.0, 1) for i in range(10)])
    assert far.oob == 9 and sum(far.bins) == 0
    assert not forecast(far, 9 * 18_000.0 + 10, CFG, 10.0).representative


def test_no_request_ever_is_not_wanted() -> None:
    f = forecast(new_history(CFG), 100.0, CFG, 30.0)
    assert not f.wanted and f.idle_s is None and f.reason == "no request seen"


def test_the_histogram_stays_bounded_and_keeps_its_shape() -> None:
    cfg = ForecastConfig(max_samples=50.0)
    h = run(new_history(cfg), [(i * 120.0, 1) for i in range(500)], cfg)
    assert sum(h.bins) + h.oob <= 50.0
    assert max(range(len(h.bins)), key=lambda i: h.bins[i]) == 2  # 120 s idle times
    assert len(h.bins) == cfg.n_bins and len(h.slots) == cfg.n_slots


def test_recent_rate_follows_the_requests() -> None:
    h = run(new_history(CFG), [(float(t), 5.0) for t in range(600)])
    assert h.rate == pytest.approx(5.0, rel=0.01)
    h = run(h, [(float(t), 0.0) for t in range(600, 900)])
    assert h.rate < 0.05


def days(n: int, peak: tuple[float, float], per_tick: float, tick: float = 10.0) -> DemandHistory:
    """``n`` days of ticks; requests only inside ``peak`` (seconds into the day)."""
    h = new_history(CFG)
    t = 0.0
    while t < n * DAY:
        inside = peak[0] <= t % DAY < peak[1]
        h = observe(h, t, per_tick if inside else 0.0, CFG)
        t += tick
    return h


def test_a_daily_peak_learned_over_three_days_is_forecast_ahead_by_the_lead() -> None:
    ten, eleven = 10 * 3600.0, 11 * 3600.0
    h = days(3, (ten, eleven), per_tick=2.0)  # 0.2 req/s from 10:00 to 11:00
    day4 = 3 * DAY
    lead = 120.0
    early = forecast(h, day4 + ten - lead - 60, CFG, lead)
    assert not early.wanted and early.peak_in_s is None
    assert "keep-alive" in early.reason  # the last request was 23 hours ago
    f = forecast(h, day4 + ten - 100, CFG, lead)
    assert f.wanted
    assert f.peak_in_s == pytest.approx(100.0)
    assert f.expected_rate == pytest.approx(0.2, rel=0.01)
    assert "peak in 100 s" in f.reason
    assert f.expected
    assert forecast(h, day4 + ten + 1800, CFG, lead).wanted  # inside the peak
    assert not forecast(h, day4 + eleven + 1800, CFG, lead).wanted  # after it


def test_the_profile_averages_across_days() -> None:
    ten = 10 * 3600.0
    slot = int(ten // CFG.slot_s)
    h = days(2, (ten, ten + 900), per_tick=2.0)  # 0.2 req/s, days 1 and 2
    assert h.slots[slot] == pytest.approx(0.2)
    t = 2 * DAY
    while t < 3 * DAY:  # day 3: 0.1 req/s
        h = observe(h, t, 1.0 if ten <= t % DAY < ten + 900 else 0.0, CFG)
        t += 10.0
    assert h.slots[slot] == pytest.approx(0.15)
    assert h.slots[slot + 1] == 0.0 and h.slots[slot - 1] == 0.0


def test_a_peak_counts_once_it_recurs_not_after_one_busy_day() -> None:
    ten, lead = 10 * 3600.0, 120.0
    once = days(1, (ten, ten + 900), per_tick=5.0)  # one busy quarter hour, then nothing
    once = run(once, [(DAY + t, 0.0) for t in range(0, int(DAY), 600)])
    f = forecast(once, 2 * DAY + ten - 100, CFG, lead)
    assert not f.wanted and f.peak_in_s is None  # seen once: not a daily peak
    slot = int(ten // CFG.slot_s)
    assert once.slots[slot] == pytest.approx(0.25) and once.seen[slot] == pytest.approx(0.25)
    twice = days(2, (ten, ten + 900), per_tick=5.0)  # busy the same quarter two days running
    assert twice.seen[slot] == pytest.approx(0.75)
    assert forecast(twice, 2 * DAY + ten - 100, CFG, lead).peak_in_s == pytest.approx(100.0)


def test_a_history_stored_before_the_recurrence_was_kept_decodes_from_zero() -> None:
    h = days(2, (3600.0, 7200.0), per_tick=1.0)
    doc = history_to_doc(h)
    del doc["seen"]
    old = history_from_doc(doc)
    assert old.slots == h.slots and old.seen == (0.0,) * len(h.slots)
    with pytest.raises(HistoryError, match="one share per slot"):
        history_from_doc({**history_to_doc(h), "seen": [0.5]})


def test_a_partly_observed_slot_is_not_learned() -> None:
    start = 10 * 3600.0 + 800.0  # 100 s before the 10:00 slot ends
    h = run(new_history(CFG), [(start + i, 1.0) for i in range(200)])
    assert h.slots[40] is None  # 100 of 900 s seen: too little
    assert h.slot_index == 41


def test_another_config_starts_the_history_over() -> None:
    h = periodic(600.0, 1.0)
    cfg = ForecastConfig(bin_s=1.0, n_bins=100)
    h2 = observe(h, 5000.0, 0.0, cfg)
    assert h2.bin_s == 1.0 and len(h2.bins) == 100 and sum(h2.bins) == 0
    assert h2.slots == h.slots  # the profile's shape did not change


def test_codec_round_trips_through_json() -> None:
    h = days(1, (3600.0, 7200.0), per_tick=1.0)
    h = run(h, [(DAY + 5000.0, 3.0)])
    doc = json.loads(json.dumps(history_to_doc(h)))
    assert history_from_doc(doc) == h


def _doc(**change: Any) -> dict[str, Any]:
    doc = history_to_doc(periodic(600.0, 0.5))
    doc.update(change)
    return doc


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "JSON object"),
        (_doc(schema=2), "schema"),
        (_doc(bins="0,0"), "bins"),
        (_doc(bins=[0.0] * 10_001), "bins"),
        (_doc(bins=[1.0, -1.0]), "bins[] must not be negative"),
        (_doc(bins=[1.0, math.nan]), "bins[] must be a finite number"),
        (_doc(bins=[True]), "bins[]"),
        (_doc(slots=["x"]), "slots[]"),
        (_doc(slots=None), "slots"),
        (_doc(slot_index=True), "slot_index"),
        (_doc(slot_index=-2), "slot_index"),
        (_doc(bin_s=0), "bin_s must be positive"),
        (_doc(rate=math.inf), "rate"),
        (_doc(last_request_at="yesterday"), "last_request_at"),
        ({k: v for k, v in _doc().items() if k != "oob"}, "oob"),
    ],
)
def test_corrupted_docs_are_refused(doc: Any, message: str) -> None:
    with pytest.raises(HistoryError, match=message.replace("[", r"\[").replace("]", r"\]")):
        history_from_doc(doc)
