"""Rollout state changes, pure: intent + observed fleet + clock -> new intent, or why not.

The config API and the automatic rollback call these; they never touch Redis. Each
change returns a new ``Intent`` (the caller stores it with compare-and-set) or raises
``RolloutError`` naming what is wrong (``kind`` maps to an HTTP status in the API).

Lifecycle of one model (``Rollout``):

- ``start(to, canary_percent=None)``: a blue-green switch; ``to`` becomes stable at once.
  With a percent: a canary of ``to`` takes that share, the stable keeps the rest.
- ``set_percent``: change the canary's share.
- ``promote``: the canary becomes stable.
- ``rollback``: a canary goes back to stable; without one, the last switch or promote is
  undone (``previous`` becomes stable again). The reason is recorded.
- ``abort``: the canary is stopped without blame (no rollback record).

Before any of these, ``record_serving_versions`` records the version that serves a model
when the control plane first sees it (the default rule, applied once): later versions never
take over by replica count or name. If the recorded stable version has no serving replica
left, traffic fails open to the best remaining version (``serving_fallback``) without any
change to intent.

A version that loses its traffic (old stable on switch/promote, canary on rollback/abort)
is not cut off: it is listed in ``Intent.draining_versions``. Its routes move away at once,
its endpoints turn DRAINING ``drain_settle_s`` later (after Envoy has the new routes, so no
request is routed to a cluster without a healthy host), and its cluster is removed after
``drain_s`` more.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from controlplane.decide.eligibility import candidate, is_fresh
from controlplane.decide.routes import default_version, fallback_version, routable_among
from controlplane.fleet.model import FleetView
from controlplane.intent import DrainingVersion, Intent, RollbackRecord, Rollout, Trigger
from controlplane.ir import Health


class ErrorKind(enum.StrEnum):
    NOT_FOUND = "not_found"
    """Unknown model or version."""
    CONFLICT = "conflict"
    """The request does not fit the model's current rollout state."""
    NOT_READY = "not_ready"
    """The target version has too few ready replicas."""
    INVALID = "invalid"
    """A value out of range."""


class RolloutError(Exception):
    """A refused change; ``code`` is a stable machine name, ``detail`` says what to do."""

    def __init__(self, kind: ErrorKind, code: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class RolloutPolicy:
    min_ready: int = 1
    """A switch, canary start, percent raise or promote needs this many ready replicas
    of the target version."""
    drain_settle_s: float = 1.0
    """Between moving routes off a version and marking its endpoints DRAINING."""
    drain_s: float = 30.0
    """How long a version's endpoints stay DRAINING before its cluster is removed."""


@dataclass(frozen=True, slots=True)
class VersionCount:
    """Replicas of one model version, as the fleet view shows them now."""

    total: int = 0
    """Fresh records that list the version, in any state."""
    serving: int = 0
    """Can take traffic now (ready or warming, not draining, GPU fine)."""
    ready: int = 0
    """Serving and fully warmed up."""


Counts = Mapping[str, Mapping[str, VersionCount]]
"""model -> version -> counts."""


def version_counts(
    fleet: FleetView, intent: Intent, now: float
) -> dict[str, dict[str, VersionCount]]:
    """Per model and version, how many replicas have it, serve it, are ready."""
    out: dict[str, dict[str, VersionCount]] = {}
    for _, obs in sorted(fleet.items()):
        if not is_fresh(obs, now):
            continue
        for m in obs.record.models:
            c = candidate(obs, m.name, m.version, intent, now)
            serving = c is not None and c.health is Health.HEALTHY
            ready = serving and c is not None and not c.warming
            old = out.setdefault(m.name, {}).get(m.version, VersionCount())
            out[m.name][m.version] = VersionCount(
                total=old.total + 1,
                serving=old.serving + int(serving),
                ready=old.ready + int(ready),
            )
    return out


def routable_versions(model: str, counts: Counts, intent: Intent) -> dict[str, int]:
    """Versions that can take ``model``'s traffic now, with their serving replicas: those
    not draining, or every serving one if only draining versions serve (as ``decide()``)."""
    serving = {v: c.serving for v, c in counts.get(model, {}).items() if c.serving > 0}
    return routable_among(serving, intent.draining_versions.get(model, {}))


def current_stable(model: str, counts: Counts, intent: Intent) -> str | None:
    """The model's stable version: from intent, else the default-route rule."""
    r = intent.rollouts.get(model)
    if r is not None:
        return r.stable
    routable = routable_versions(model, counts, intent)
    return default_version(routable) if routable else None


def serving_fallback(model: str, counts: Counts, intent: Intent) -> str | None:
    """The version taking the traffic of ``model``'s recorded stable version because that
    one has no serving replica (fail open, see ``routes.fallback_version``); None while the
    stable serves."""
    return fallback_version(model, routable_versions(model, counts, intent), intent)


# -- the serving version, recorded at first sight ---------------------------------------------


def unrecorded(intent: Intent, counts: Counts) -> dict[str, str]:
    """Models with a serving replica and no version recorded in intent, each with the
    version that takes its traffic now (the default rule)."""
    out = {}
    for model in sorted(counts):
        if model not in intent.rollouts:
            v = current_stable(model, counts, intent)
            if v is not None:
                out[model] = v
    return out


def record_serving_versions(intent: Intent, counts: Counts, now: float) -> Intent:
    """Record the serving version of every model seen for the first time (``unrecorded``)
    as its stable version. From then on only a rollout changes it: replicas of another
    version, more of them or of a greater name, take no traffic."""
    new = unrecorded(intent, counts)
    if not new:
        return intent
    rollouts = dict(intent.rollouts)
    for model, version in new.items():
        rollouts[model] = Rollout(stable=version, started_at=now)
    return replace(intent, rollouts=MappingProxyType(rollouts))


# -- draining phases ------------------------------------------------------------------------


class Phase(enum.Enum):
    SETTLING = "settling"
    """Routes moved away; endpoints still HEALTHY (in-flight and header-routed requests)."""
    DRAINING = "draining"
    """Endpoints DRAINING: no new requests reach them."""
    REMOVED = "removed"
    """Cluster gone from the plan."""


def phase(d: DrainingVersion, now: float) -> Phase:
    if now >= d.remove_at:
        return Phase.REMOVED
    if now >= d.drain_at:
        return Phase.DRAINING
    return Phase.SETTLING


def next_deadline(intent: Intent, now: float) -> float:
    """The next wall-clock time at which a draining version changes phase (inf: none)."""
    times = (
        t
        for vs in intent.draining_versions.values()
        for d in vs.values()
        for t in (d.drain_at, d.remove_at)
        if t > now
    )
    return min(times, default=math.inf)


# -- changes ----------------------------------------------------------------------------------


def start(
    intent: Intent,
    model: str,
    to: str,
    canary_percent: float | None,
    counts: Counts,
    policy: RolloutPolicy,
    now: float,
) -> Intent:
    """Blue-green switch to ``to`` (``canary_percent`` None) or a canary of ``to``."""
    versions = _versions(model, counts)
    if to not in versions:
        raise RolloutError(
            ErrorKind.NOT_FOUND,
            "unknown_version",
            f"model {model!r} has no version {to!r}; known versions: {', '.join(sorted(versions))}",
        )
    stable = current_stable(model, counts, intent)
    r = intent.rollouts.get(model)
    if r is not None and r.canary:
        if to == r.canary and canary_percent is not None:
            return set_percent(intent, model, canary_percent, counts, policy, now)
        raise RolloutError(
            ErrorKind.CONFLICT,
            "rollout_in_progress",
            f"a canary of {model}@{r.canary} is in progress ({r.canary_percent:g}%): "
            "promote, roll back or abort it first",
        )
    if to == stable or stable is None:
        # Pin the current stable in intent (idempotent): later versions never take over.
        _require_ready(model, to, counts, policy.min_ready)
        pinned = Rollout(
            stable=to,
            previous=r.previous if r is not None else "",
            started_at=r.started_at if r is not None else now,
            last_rollback=r.last_rollback if r is not None else None,
        )
        return _with(intent, model, pinned, now, counts, undrain=to)
    _require_ready(model, to, counts, policy.min_ready)
    last = r.last_rollback if r is not None else None
    if canary_percent is None:
        switched = Rollout(stable=to, previous=stable, started_at=now, last_rollback=last)
        return _with(intent, model, switched, now, counts, undrain=to, drain=stable, policy=policy)
    canary = Rollout(
        stable=stable,
        canary=to,
        canary_percent=_percent(canary_percent),
        previous=r.previous if r is not None else "",
        started_at=now,
        last_rollback=last,
    )
    return _with(intent, model, canary, now, counts, undrain=to)


def set_percent(
    intent: Intent,
    model: str,
    percent: float,
    counts: Counts,
    policy: RolloutPolicy,
    now: float,
) -> Intent:
    """Change the share of the canary in progress."""
    _versions(model, counts, intent)
    r = _canary_in_progress(model, intent)
    pct = _percent(percent)
    if pct > r.canary_percent:
        _require_ready(model, r.canary, counts, policy.min_ready)
    return _with(intent, model, replace(r, canary_percent=pct), now, counts)


def promote(
    intent: Intent, model: str, counts: Counts, policy: RolloutPolicy, now: float
) -> Intent:
    """The canary becomes stable; the old stable drains."""
    _versions(model, counts, intent)
    r = _canary_in_progress(model, intent)
    _require_ready(model, r.canary, counts, policy.min_ready)
    promoted = Rollout(
        stable=r.canary, previous=r.stable, started_at=now, last_rollback=r.last_rollback
    )
    return _with(
        intent, model, promoted, now, counts, undrain=r.canary, drain=r.stable, policy=policy
    )


def rollback(
    intent: Intent,
    model: str,
    reason: str,
    trigger: Trigger,
    counts: Counts,
    policy: RolloutPolicy,
    now: float,
) -> Intent:
    """Canary in progress: back to stable. Otherwise: back to ``previous``."""
    _versions(model, counts, intent)
    r = intent.rollouts.get(model)
    if r is not None and r.canary:
        record = RollbackRecord(r.canary, r.stable, reason, trigger, now)
        back = Rollout(
            stable=r.stable, previous=r.previous, started_at=r.started_at, last_rollback=record
        )
        return _with(
            intent, model, back, now, counts, undrain=r.stable, drain=r.canary, policy=policy
        )
    if r is None or not r.previous:
        raise RolloutError(
            ErrorKind.CONFLICT,
            "nothing_to_roll_back",
            f"model {model!r} has no canary in progress and no previous version to go back to",
        )
    # Going back fast matters more than the min_ready guard rail, but not onto nothing.
    _require_ready(model, r.previous, counts, 1)
    record = RollbackRecord(r.stable, r.previous, reason, trigger, now)
    back = Rollout(stable=r.previous, previous=r.stable, started_at=now, last_rollback=record)
    return _with(
        intent, model, back, now, counts, undrain=r.previous, drain=r.stable, policy=policy
    )


def abort(intent: Intent, model: str, counts: Counts, policy: RolloutPolicy, now: float) -> Intent:
    """Stop the canary in progress; no rollback is recorded."""
    _versions(model, counts, intent)
    r = _canary_in_progress(model, intent)
    back = replace(r, canary="", canary_percent=0.0)
    return _with(intent, model, back, now, counts, undrain=r.stable, drain=r.canary, policy=policy)


# -- helpers ----------------------------------------------------------------------------------


def _versions(
    model: str, counts: Counts, intent: Intent | None = None
) -> Mapping[str, VersionCount]:
    versions = counts.get(model)
    if not versions and (intent is None or model not in intent.rollouts):
        raise RolloutError(
            ErrorKind.NOT_FOUND,
            "unknown_model",
            f"unknown model {model!r}: no fresh replica serves it"
            + (f"; known models: {', '.join(sorted(counts))}" if counts else ""),
        )
    return versions or {}


def _canary_in_progress(model: str, intent: Intent) -> Rollout:
    r = intent.rollouts.get(model)
    if r is None or not r.canary:
        raise RolloutError(
            ErrorKind.CONFLICT,
            "no_canary",
            f"model {model!r} has no canary in progress; start one with "
            f"`aixds rollout start {model} --to VERSION --canary PERCENT`",
        )
    return r


def _require_ready(model: str, version: str, counts: Counts, need: int) -> None:
    have = counts.get(model, {}).get(version, VersionCount()).ready
    if have < need:
        raise RolloutError(
            ErrorKind.NOT_READY,
            "not_enough_ready_replicas",
            f"{model}@{version} has {have} ready replica(s); {need} needed",
        )


def _percent(p: float) -> float:
    if not math.isfinite(p) or not 0.0 <= p <= 100.0:
        raise RolloutError(ErrorKind.INVALID, "bad_percent", "percent must be in [0, 100]")
    return round(float(p), 2)


def _with(
    intent: Intent,
    model: str,
    rollout: Rollout,
    now: float,
    counts: Counts,
    *,
    undrain: str = "",
    drain: str = "",
    policy: RolloutPolicy | None = None,
) -> Intent:
    """``intent`` with the model's new rollout, draining list updated and pruned."""
    present = counts.get(model, {})
    versions = {
        v: d
        for v, d in intent.draining_versions.get(model, {}).items()
        # a removed version that no replica has any more is forgotten
        if v != undrain and not (phase(d, now) is Phase.REMOVED and v not in present)
    }
    if drain and drain != undrain and drain not in versions:
        settle = policy.drain_settle_s if policy is not None else 0.0
        length = policy.drain_s if policy is not None else 0.0
        versions[drain] = DrainingVersion(drain_at=now + settle, remove_at=now + settle + length)
    draining = dict(intent.draining_versions)
    if versions:
        draining[model] = MappingProxyType(versions)
    else:
        draining.pop(model, None)
    rollouts = dict(intent.rollouts)
    rollouts[model] = rollout
    return replace(
        intent,
        rollouts=MappingProxyType(rollouts),
        draining_versions=MappingProxyType(draining),
    )
