"""Should a canary be rolled back? Pure: load buckets + rollout + policy + clock -> verdict.

The inputs are per-second counts of successful and failed requests per cluster, as Envoys
report them over LRS. Envoy counts a request as failed (``total_error_requests``) when the
upstream answered 5xx or the request ended in a reset or timeout; 4xx (including 429
from an overloaded server) are the client's problem and count as successful. A request
Envoy retried on another host counts once per host it tried.

The window is the last ``window_s`` seconds, but never before the canary started (counts of
an earlier attempt must not condemn a new one). A canary is rolled back when, in the window:

1. it completed at least ``min_requests`` requests, and
2. its error rate is worse than the stable version's by more than ``margin`` (a fraction)
   even when judged in the canary's favour: the lower bound of the canary's rate minus the
   upper bound of the stable's, both Wilson score bounds at ``z`` standard errors.

The bounds make the rule hold up with small counts, where a plain rate difference (or a
z-test's normal approximation) would roll back a healthy canary for two unlucky errors in
thirty requests; the verdict is evaluated again and again on overlapping windows, so a
lax rule would fire sooner or later. 30 % errors against 0 % are caught after about 30
canary requests. With no stable traffic in the window (canary at 100 %), the stable rate
counts as exactly 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from controlplane.intent import Rollout
from controlplane.ir import cluster_name, version_cluster


@dataclass(frozen=True, slots=True)
class LoadBucket:
    """Requests of one cluster completed in the second starting at ``at`` (wall clock)."""

    at: float
    cluster: str
    success: int
    error: int


@dataclass(frozen=True, slots=True)
class RollbackPolicy:
    window_s: float = 10.0
    """Look at this many seconds of load reports (less if the canary is younger)."""
    min_requests: int = 20
    """The canary needs this many completed requests in the window before any verdict."""
    margin: float = 0.05
    """Roll back when the canary's error rate exceeds the stable's by more than this..."""
    z: float = 2.5
    """...with the rates taken at this many standard errors in the canary's favour."""


@dataclass(frozen=True, slots=True)
class Rate:
    version: str
    requests: int
    errors: int

    @property
    def rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True, slots=True)
class Verdict:
    model: str
    stable: Rate
    canary: Rate
    window_start: float
    canary_low: float
    """Lower bound of the canary's error rate."""
    stable_high: float
    """Upper bound of the stable's error rate."""
    rollback: bool
    reason: str
    """Why it rolls back, or why it does not (yet)."""


def window_start(rollout: Rollout, policy: RollbackPolicy, now: float) -> float:
    return max(now - policy.window_s, rollout.started_at)


def wilson(errors: int, n: int, z: float) -> tuple[float, float]:
    """Wilson score interval of an error rate: (low, high); (0, 0) without requests."""
    if n <= 0:
        return 0.0, 0.0
    p = errors / n
    z2 = z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def evaluate(
    model: str,
    rollout: Rollout,
    buckets: Iterable[LoadBucket],
    policy: RollbackPolicy,
    now: float,
) -> Verdict | None:
    """The verdict for ``model``'s canary; None when no canary is in progress."""
    if not rollout.canary or rollout.canary == rollout.stable:
        return None
    start = window_start(rollout, policy, now)
    names = {cluster_name(model, rollout.stable): 0, cluster_name(model, rollout.canary): 1}
    req = [0, 0]
    err = [0, 0]
    for b in buckets:
        i = names.get(version_cluster(b.cluster))  # the affinity cluster counts too
        # a bucket counts only if it began inside the window (whole seconds after start)
        if i is None or b.at < start or b.at > now:
            continue
        req[i] += b.success + b.error
        err[i] += b.error
    stable = Rate(rollout.stable, req[0], err[0])
    canary = Rate(rollout.canary, req[1], err[1])
    low, _ = wilson(canary.errors, canary.requests, policy.z)
    _, high = wilson(stable.errors, stable.requests, policy.z)
    span = now - start
    if canary.requests < policy.min_requests:
        return Verdict(
            model, stable, canary, start, low, high, False,
            f"waiting for data: {canary.requests}/{policy.min_requests} canary requests "
            f"in the last {span:.1f}s",
        )  # fmt: skip
    summary = (
        f"canary {rollout.canary} error rate {canary.rate:.1%} ({canary.errors}/"
        f"{canary.requests}) vs stable {rollout.stable} {stable.rate:.1%} ({stable.errors}/"
        f"{stable.requests}) over the last {span:.1f}s"
    )
    bad = low - high > policy.margin
    bounds = f"at least {low:.1%} vs at most {high:.1%}"
    if bad:
        reason = f"{summary}: worse by more than {policy.margin:.1%} ({bounds})"
    else:
        reason = f"{summary}: not worse by more than {policy.margin:.1%} ({bounds})"
    return Verdict(model, stable, canary, start, low, high, bad, reason)
