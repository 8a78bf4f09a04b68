"""Per-model demand history and forecast: should a model be resident now?

Two learners, both pure and bounded in size:

1. The hybrid histogram policy of "Serverless in the Wild" (Shahrad et al., ATC'20): a
   histogram of idle times (the gap between the last request of an active period and the
   next request). Its 5th percentile (less a 10 % margin) is the pre-warm point, its 99th
   (plus 10 %) the end of the keep-alive: a model used every 10 minutes is loaded again
   about 9 minutes after its last use and kept a few minutes. When the histogram is not
   representative (too few idle times, too many beyond its range, or bin counts spread so
   evenly that their coefficient of variation is under the paper's threshold of 2) the
   policy falls back to a fixed keep-alive after the last request and no pre-warm.
2. A time-of-day profile: the request rate per slot of a period (a day), averaged across
   periods with an exponential weight, so a peak that recurs daily is loaded for ahead of
   time (by the load's lead). A slot counts only once it *recurs*: an exponentially
   weighted share of the periods in which it saw requests (``seen``) must reach
   ``profile_recur`` (with the default weight 0.5: the last two periods). Without that,
   one request of a rarely used model, or one burst of a model used every few minutes,
   was taken for a daily peak and the model loaded at that time the next days
   (``bench.coldstart``: a third of the GPU memory in the hour of a daily peak held by
   such models).

``observe`` is called once per tick with the requests seen since the previous tick;
``forecast`` reads the history. ``history_to_doc``/``history_from_doc`` store it as JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

SCHEMA = 1
MAX_BINS = 10_000
"""Longest histogram or profile a stored document may carry."""


@dataclass(frozen=True, slots=True)
class ForecastConfig:
    """How demand is learned and judged (times in seconds of the caller's clock)."""

    bin_s: float = 60.0
    """Width of one idle-time bin (the paper: one minute; a compressed-time benchmark: 1)."""
    n_bins: int = 240
    """Bins in the histogram: idle times up to ``bin_s * n_bins`` (4 hours) are in range."""
    head: float = 0.05
    """Percentile of idle times that sets the pre-warm point."""
    tail: float = 0.99
    """Percentile of idle times that sets the end of the keep-alive."""
    margin: float = 0.10
    """Pre-warm that much earlier and keep alive that much longer than the percentiles."""
    cv_min: float = 2.0
    """The histogram is representative only when its bin counts' coefficient of variation
    is at least this (the paper's threshold: an even spread predicts nothing)."""
    oob_max: float = 0.5
    """...and when fewer than this share of idle times fell beyond its range..."""
    min_samples: int = 5
    """...and when it holds at least this many idle times."""
    fixed_keep_alive_s: float = 600.0
    """Keep-alive after the last request when the histogram is not representative."""
    active_gap_s: float = 10.0
    """Requests closer than this belong to one active period; longer gaps are idle times."""
    max_samples: float = 1000.0
    """When the histogram holds more idle times than this, every count is halved (old
    behaviour fades, the counts stay bounded)."""
    day_s: float = 86_400.0
    """Period of the time-of-day profile."""
    n_slots: int = 96
    """Slots per period (96: 15 minutes a day)."""
    day_alpha: float = 0.5
    """Weight of the newest period in a slot's average rate (the first one counts whole)."""
    min_slot_coverage: float = 0.5
    """A slot is learned only when ticks covered at least this share of it."""
    profile_rps: float = 0.01
    """A profile rate at or above this (requests per second) counts as expected demand..."""
    profile_recur: float = 0.7
    """...in a slot whose share of periods with requests (weighted as ``day_alpha``, from
    0) is at least this: with ``day_alpha`` 0.5, a slot seen busy in the last two periods
    (0.75), not one seen once (0.5)."""
    rate_tau_s: float = 60.0
    """Time constant of the recent request rate (an exponentially weighted average)."""

    @property
    def slot_s(self) -> float:
        return self.day_s / self.n_slots


@dataclass(frozen=True, slots=True)
class DemandHistory:
    """What ``observe`` learned about one model; the size is fixed by the config."""

    bin_s: float
    slot_s: float
    bins: tuple[float, ...]
    """Idle-time counts: ``bins[i]`` counts idle times in ``[i * bin_s, (i + 1) * bin_s)``."""
    oob: float = 0.0
    """Idle times beyond the last bin."""
    last_request_at: float | None = None
    """The last tick that saw a request."""
    last_tick_at: float | None = None
    rate: float = 0.0
    """Recent requests per second (exponentially weighted)."""
    slots: tuple[float | None, ...] = ()
    """Average request rate per slot of the period; ``None``: never learned."""
    seen: tuple[float, ...] = ()
    """Per slot, the weighted share of learned periods in which it saw requests (0: none,
    or never learned; a stored history without it starts from 0)."""
    slot_index: int = -1
    """Absolute number of the slot being counted (``floor(t / slot_s)``); -1: none."""
    slot_count: float = 0.0
    """Requests counted in that slot so far."""
    slot_from: float = 0.0
    """Since when that slot is being counted."""


@dataclass(frozen=True, slots=True)
class Forecast:
    """The verdict for one model at one time."""

    wanted: bool
    """The model should be resident now (awake on at least one replica)."""
    reason: str
    keep_alive_s: float
    prewarm_s: float
    """Idle time after which the next request is expected (0: keep alive from the last)."""
    representative: bool
    """The idle-time histogram decided (else the fixed keep-alive did)."""
    expected_rate: float
    """The highest rate the time-of-day profile expects in ``[now, now + lead_s]``."""
    peak_in_s: float | None
    """Seconds until the profile expects demand (0: now); ``None``: not within the lead."""
    recent_rate: float
    idle_s: float | None
    """Seconds since the last request; ``None``: none seen."""
    active: bool = False
    """In an active period: a request within ``active_gap_s``."""
    expected: bool = False
    """Wanted because a request is expected: within a representative histogram's window
    (from its pre-warm point to its keep-alive's end) or a recurring peak within the lead.
    False when only the fixed keep-alive keeps it (after a request that predicts nothing)."""


def new_history(cfg: ForecastConfig) -> DemandHistory:
    """An empty history shaped by ``cfg``."""
    return DemandHistory(
        bin_s=cfg.bin_s,
        slot_s=cfg.slot_s,
        bins=(0.0,) * cfg.n_bins,
        slots=(None,) * cfg.n_slots,
        seen=(0.0,) * cfg.n_slots,
    )


def observe(h: DemandHistory, now: float, requests: float, cfg: ForecastConfig) -> DemandHistory:
    """``h`` after a tick at ``now`` that saw ``requests`` since the previous tick. A history
    shaped by another config (bin width or count, slot length or count) starts over."""
    if h.bin_s != cfg.bin_s or len(h.bins) != cfg.n_bins:
        h = replace(h, bin_s=cfg.bin_s, bins=(0.0,) * cfg.n_bins, oob=0.0)
    if h.slot_s != cfg.slot_s or len(h.slots) != cfg.n_slots:
        h = replace(h, slot_s=cfg.slot_s, slots=(None,) * cfg.n_slots, slot_index=-1)
    if len(h.seen) != len(h.slots):
        h = replace(h, seen=(0.0,) * len(h.slots))
    requests = max(0.0, requests)
    dt = 0.0 if h.last_tick_at is None else max(0.0, now - h.last_tick_at)
    rate = h.rate
    if dt > 0:
        a = 1.0 - math.exp(-dt / cfg.rate_tau_s)
        rate += a * (requests / dt - rate)
    bins, oob, last = h.bins, h.oob, h.last_request_at
    if requests > 0:
        if last is not None and now - last > cfg.active_gap_s:
            bins, oob = _record_idle(bins, oob, now - last, cfg)
        last = now
    slots, seen, index, count, since = _profile(h, now, requests, cfg)
    return replace(
        h,
        bins=bins,
        oob=oob,
        last_request_at=last,
        last_tick_at=now if h.last_tick_at is None else max(now, h.last_tick_at),
        rate=rate,
        slots=slots,
        seen=seen,
        slot_index=index,
        slot_count=count,
        slot_from=since,
    )


def _record_idle(
    bins: tuple[float, ...], oob: float, idle: float, cfg: ForecastConfig
) -> tuple[tuple[float, ...], float]:
    i = int(idle // cfg.bin_s)
    out = list(bins)
    if i < len(out):
        out[i] += 1.0
    else:
        oob += 1.0
    if sum(out) + oob > cfg.max_samples:
        out = [c / 2 for c in out]
        oob /= 2
    return tuple(out), oob


def _profile(
    h: DemandHistory, now: float, requests: float, cfg: ForecastConfig
) -> tuple[tuple[float | None, ...], tuple[float, ...], int, float, float]:
    slot_s = cfg.slot_s
    index = math.floor(now / slot_s)
    if index == h.slot_index:
        return h.slots, h.seen, index, h.slot_count + requests, h.slot_from
    slots, seen = h.slots, h.seen
    if h.slot_index >= 0 and h.last_tick_at is not None:
        end = min((h.slot_index + 1) * slot_s, h.last_tick_at)
        covered = end - h.slot_from
        if covered >= cfg.min_slot_coverage * slot_s:
            rate = h.slot_count / covered
            i = h.slot_index % cfg.n_slots
            old = slots[i]
            new = rate if old is None else old + cfg.day_alpha * (rate - old)
            slots = (*slots[:i], new, *slots[i + 1 :])
            busy = seen[i] + cfg.day_alpha * (float(h.slot_count > 0) - seen[i])
            seen = (*seen[:i], busy, *seen[i + 1 :])
    if h.last_tick_at is None or now - h.last_tick_at > slot_s / 4:
        return slots, seen, index, 0.0, now  # after a gap: what this tick counted has no span
    return slots, seen, index, requests, h.last_tick_at  # this tick's: since the last


def forecast(h: DemandHistory, now: float, cfg: ForecastConfig, lead_s: float) -> Forecast:
    """Should the model be resident at ``now``, given that loading it takes ``lead_s``?

    Wanted: within an active period; within the keep-alive after the last request (from
    the pre-warm point minus the lead on, when the histogram predicts the next request);
    or when the time-of-day profile expects demand within the lead.
    """
    rep, prewarm, keep = _windows(h, cfg)
    idle = None if h.last_request_at is None else max(0.0, now - h.last_request_at)
    rate, peak_in = _profile_ahead(h, now, cfg, lead_s)
    wanted, reason = _verdict(idle, rep, prewarm, keep, lead_s, cfg)
    expected = wanted and rep
    if not expected and peak_in is not None:
        if not wanted:
            reason = f"forecast: peak in {peak_in:.0f} s ({rate:.2g} req/s expected)"
        wanted = expected = True
    return Forecast(
        wanted=wanted,
        reason=reason,
        keep_alive_s=keep,
        prewarm_s=prewarm,
        representative=rep,
        expected_rate=rate,
        peak_in_s=peak_in,
        recent_rate=h.rate,
        idle_s=idle,
        active=idle is not None and idle <= cfg.active_gap_s,
        expected=expected,
    )


def _verdict(
    idle: float | None, rep: bool, prewarm: float, keep: float, lead_s: float, cfg: ForecastConfig
) -> tuple[bool, str]:
    kind = "histogram" if rep else "fixed"
    if idle is None:
        return False, "no request seen"
    if idle <= cfg.active_gap_s:
        return True, f"active (last request {idle:.0f} s ago)"
    if idle > prewarm + keep:
        return False, f"idle {idle:.0f} s > keep-alive {prewarm + keep:.0f} s ({kind})"
    if idle + lead_s >= prewarm:
        if prewarm > 0:
            return True, f"pre-warm: next request expected {prewarm:.0f} s after the last"
        return True, f"idle {idle:.0f} s < keep-alive {keep:.0f} s ({kind})"
    return False, f"idle {idle:.0f} s: pre-warm at {prewarm:.0f} s less the {lead_s:.0f} s load"


def _windows(h: DemandHistory, cfg: ForecastConfig) -> tuple[bool, float, float]:
    """(representative, pre-warm, keep-alive): the keep-alive counts from the pre-warm."""
    n = len(h.bins)
    total = sum(h.bins)
    if n < 2 or total < cfg.min_samples or h.oob / (total + h.oob) >= cfg.oob_max:
        return False, 0.0, cfg.fixed_keep_alive_s
    mean = total / n
    std = math.sqrt(sum((c - mean) ** 2 for c in h.bins) / (n - 1))
    if std / mean < cfg.cv_min:
        return False, 0.0, cfg.fixed_keep_alive_s
    head = _percentile_bin(h.bins, total, cfg.head)
    tail = _percentile_bin(h.bins, total, cfg.tail)
    prewarm = head * h.bin_s * (1 - cfg.margin)
    end = (tail + 1) * h.bin_s * (1 + cfg.margin)
    return True, prewarm, end - prewarm


def _percentile_bin(bins: tuple[float, ...], total: float, p: float) -> int:
    seen = 0.0
    for i, c in enumerate(bins):
        seen += c
        if seen >= p * total:
            return i
    return len(bins) - 1


def _profile_ahead(
    h: DemandHistory, now: float, cfg: ForecastConfig, lead_s: float
) -> tuple[float, float | None]:
    """(highest expected rate, seconds until it reaches ``profile_rps``) over the lead."""
    n = len(h.slots)
    if n == 0:
        return 0.0, None
    first = math.floor(now / h.slot_s)
    last = math.floor((now + max(0.0, lead_s)) / h.slot_s)
    best, peak_in = 0.0, None
    for index in range(first, min(last, first + n - 1) + 1):
        r = h.slots[index % n]
        if r is None or (h.seen[index % n] if len(h.seen) == n else 0.0) < cfg.profile_recur:
            continue
        best = max(best, r)
        if peak_in is None and r >= cfg.profile_rps:
            peak_in = max(0.0, index * h.slot_s - now)
    return best, peak_in


# -- JSON codec ---------------------------------------------------------------------------


class HistoryError(ValueError):
    """A stored demand history that does not follow the schema."""


def history_to_doc(h: DemandHistory) -> dict[str, Any]:
    """``h`` as a JSON-ready dict (``history_from_doc`` reads it back)."""
    return {
        "schema": SCHEMA,
        "bin_s": h.bin_s,
        "slot_s": h.slot_s,
        "bins": list(h.bins),
        "oob": h.oob,
        "last_request_at": h.last_request_at,
        "last_tick_at": h.last_tick_at,
        "rate": h.rate,
        "slots": list(h.slots),
        "seen": list(h.seen),
        "slot_index": h.slot_index,
        "slot_count": h.slot_count,
        "slot_from": h.slot_from,
    }


def history_from_doc(doc: Any) -> DemandHistory:
    """Decode a stored history; ``HistoryError`` says what does not fit."""
    if not isinstance(doc, dict):
        raise HistoryError("demand history must be a JSON object")
    if doc.get("schema") != SCHEMA:
        raise HistoryError(f"demand history schema {doc.get('schema')!r} is not {SCHEMA}")
    bins = doc.get("bins")
    if not isinstance(bins, list) or len(bins) > MAX_BINS:
        raise HistoryError(f"bins must be a list of at most {MAX_BINS} counts")
    slots = doc.get("slots")
    if not isinstance(slots, list) or len(slots) > MAX_BINS:
        raise HistoryError(f"slots must be a list of at most {MAX_BINS} rates or nulls")
    rates = tuple(None if r is None else _count(r, "slots[]") for r in slots)
    seen = doc.get("seen") or [0.0] * len(slots)  # stored before it was kept: from 0
    if not isinstance(seen, list) or len(seen) != len(slots):
        raise HistoryError("seen must be a list of one share per slot")
    index = doc.get("slot_index")
    if isinstance(index, bool) or not isinstance(index, int) or index < -1:
        raise HistoryError("slot_index must be a whole number >= -1")
    return DemandHistory(
        bin_s=_positive(doc.get("bin_s"), "bin_s"),
        slot_s=_positive(doc.get("slot_s"), "slot_s"),
        bins=tuple(_count(c, "bins[]") for c in bins),
        oob=_count(doc.get("oob"), "oob"),
        last_request_at=_opt_time(doc.get("last_request_at"), "last_request_at"),
        last_tick_at=_opt_time(doc.get("last_tick_at"), "last_tick_at"),
        rate=_count(doc.get("rate"), "rate"),
        slots=rates,
        seen=tuple(_count(x, "seen[]") for x in seen),
        slot_index=index,
        slot_count=_count(doc.get("slot_count"), "slot_count"),
        slot_from=_time(doc.get("slot_from"), "slot_from"),
    )


def _time(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise HistoryError(f"{what} must be a finite number")
    return float(v)


def _opt_time(v: Any, what: str) -> float | None:
    return None if v is None else _time(v, what)


def _count(v: Any, what: str) -> float:
    x = _time(v, what)
    if x < 0:
        raise HistoryError(f"{what} must not be negative")
    return x


def _positive(v: Any, what: str) -> float:
    x = _time(v, what)
    if x <= 0:
        raise HistoryError(f"{what} must be positive")
    return x
