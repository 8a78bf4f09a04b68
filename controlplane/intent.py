"""Operator intent: what the fleet should do, as written through the config API.

Intent is plain data (stored in Redis as JSON with a revision number, never expiring).
``decide()`` reads it together with the observed fleet state. ``intent_to_doc`` and
``intent_from_doc`` are its JSON codec; the fleet.yaml part (region distances, session
header, affinity defaults) is not stored: ``with_base`` puts it back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal

SCHEMA = 1
"""Version of the intent document; a document of another schema is refused, not guessed."""

Trigger = Literal["auto", "manual"]


@dataclass(frozen=True, slots=True)
class RollbackRecord:
    """Why and when traffic last went back from a version to the one before it."""

    from_version: str
    to_version: str
    reason: str
    trigger: Trigger
    """``auto``: the control plane's error-rate guard; ``manual``: an operator."""
    at: float
    """Wall clock, seconds since the epoch."""


@dataclass(frozen=True, slots=True)
class Rollout:
    """Traffic split of one model across its versions (blue-green: 100/0; canary: N%)."""

    stable: str
    """The version that takes traffic by default: recorded when the control plane first
    sees the model serving (the version with the most serving replicas, ties: the greatest
    name), then changed only by a rollout (switch, promote, rollback)."""
    canary: str = ""
    """The version being rolled out; empty when no rollout is in progress."""
    canary_percent: float = 0.0
    """Share of traffic for ``canary``, 0..100."""
    previous: str = ""
    """The version that was stable before the last switch or promote: where a rollback
    goes when no canary is in progress. Empty if there is none."""
    started_at: float = 0.0
    """Wall clock when the current canary (or switch) began; the automatic rollback
    counts load reports from here on."""
    last_rollback: RollbackRecord | None = None


@dataclass(frozen=True, slots=True)
class DrainingVersion:
    """A version leaving service: routes moved away at once, then its endpoints are
    DRAINING, then its cluster is removed. Times are wall clock (seconds since the epoch)."""

    drain_at: float
    """Until then its endpoints stay HEALTHY so the route change reaches Envoy first."""
    remove_at: float
    """From then on its cluster (and its ``x-model-version`` route) is gone."""


@dataclass(frozen=True, slots=True)
class ModelPlacement:
    """Where a model must (or may) be resident, as pinned by an operator."""

    min_resident: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    """Per region, how many replicas keep the model loaded and awake whatever the demand
    (pinned: never unloaded or put to sleep). The key ``""`` means every region."""
    max_replicas: int = 0
    """At most this many replicas hold the model in all (0: no bound)."""
    priority: int = 0
    """Who gets GPU memory first when not everything fits (higher first)."""
    fallback: str = ""
    """A model that answers this model's requests while no replica of it is ready (the
    answer is marked with ``x-aixds-fallback``); empty: requests wait for a load."""

    def min_in(self, region: str) -> int:
        """The pinned count for ``region`` (its own entry, else the every-region one)."""
        return self.min_resident.get(region, self.min_resident.get("", 0))


def _empty() -> Mapping[str, Mapping[str, int]]:
    return MappingProxyType({})


def _no_draining() -> Mapping[str, Mapping[str, DrainingVersion]]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Intent:
    """Everything operators asked for. The default is an empty intent."""

    revision: int = 0
    rollouts: Mapping[str, Rollout] = field(default_factory=lambda: MappingProxyType({}))
    """Per model name."""
    drained: frozenset[str] = frozenset()
    """Replica ids (``node/name``) and node names (no ``/``: every replica of the node, now
    or later) that take no new requests (DRAINING in EDS)."""
    region_distance: Mapping[str, Mapping[str, int]] = field(default_factory=_empty)
    """``region_distance[a][b]``: how far region b is from region a (failover order)."""
    session_header: str = "x-session-id"
    """Header whose value keeps a session on one version (sticky canaries)."""
    draining_versions: Mapping[str, Mapping[str, DrainingVersion]] = field(
        default_factory=_no_draining
    )
    """``draining_versions[model][version]``: versions leaving service (see
    ``DrainingVersion``); a version listed here takes no share of the model's traffic."""
    affinity: Mapping[str, bool] = field(default_factory=lambda: MappingProxyType({}))
    """Per model, set through the API: session affinity on (True) or off (False). Absent:
    fleet.yaml's ``affinity_base``, then ``affinity_default``."""
    affinity_base: Mapping[str, bool] = field(default_factory=lambda: MappingProxyType({}))
    """fleet.yaml's per-model affinity settings (not stored)."""
    affinity_default: bool = True
    """fleet.yaml's default for models named nowhere (not stored): on."""
    placement: Mapping[str, ModelPlacement] = field(default_factory=lambda: MappingProxyType({}))
    """Per model: pins, bounds, priority and fallback (``aixds models pin``)."""
    activators: tuple[tuple[str, int], ...] = ()
    """Where the control planes' activators listen (address, port), from the settings
    (not stored): a model that can be loaded but is served nowhere is routed there, and
    its requests wait for a load. Empty: such a model answers 404, as an unknown one."""
    version_headers: bool = True
    """fleet.yaml's ``version_headers`` (not stored): answers carry ``x-aixds-version``
    and ``x-aixds-regions-differ``; False: they name no version or region to clients."""

    def affinity_on(self, model: str) -> bool:
        """Whether a session of ``model`` sticks to one replica (see ``docs/affinity.md``)."""
        if model in self.affinity:
            return self.affinity[model]
        return self.affinity_base.get(model, self.affinity_default)


EMPTY_INTENT = Intent()


def set_placement(intent: Intent, model: str, p: ModelPlacement | None) -> Intent:
    """``intent`` with ``model``'s placement set (``None``: removed)."""
    placed = dict(intent.placement)
    if p is None:
        placed.pop(model, None)
    else:
        placed[model] = p
    return replace(intent, placement=MappingProxyType(placed))


def with_base(stored: Intent, base: Intent) -> Intent:
    """The stored intent with the part that comes from fleet.yaml and the settings (region
    distances, session header, affinity defaults, activators, version headers)."""
    return replace(
        stored,
        region_distance=base.region_distance,
        session_header=base.session_header,
        affinity_base=base.affinity_base,
        affinity_default=base.affinity_default,
        activators=base.activators,
        version_headers=base.version_headers,
    )


# -- JSON codec ---------------------------------------------------------------------------


class IntentError(ValueError):
    """A stored intent document that does not follow the schema."""


def intent_to_doc(intent: Intent) -> dict[str, Any]:
    """The stored part of ``intent`` as a JSON-ready dict (no revision, no fleet.yaml part)."""
    return {
        "schema": SCHEMA,
        "rollouts": {m: _rollout_doc(r) for m, r in sorted(intent.rollouts.items())},
        "drained": sorted(intent.drained),
        "draining_versions": {
            m: {
                v: {"drain_at": d.drain_at, "remove_at": d.remove_at} for v, d in sorted(vs.items())
            }
            for m, vs in sorted(intent.draining_versions.items())
            if vs
        },
        "affinity": dict(sorted(intent.affinity.items())),
        "placement": {m: _placement_doc(p) for m, p in sorted(intent.placement.items())},
    }


def _placement_doc(p: ModelPlacement) -> dict[str, Any]:
    return {
        "min_resident": dict(sorted(p.min_resident.items())),
        "max_replicas": p.max_replicas,
        "priority": p.priority,
        "fallback": p.fallback,
    }


def _rollout_doc(r: Rollout) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "stable": r.stable,
        "canary": r.canary,
        "canary_percent": r.canary_percent,
        "previous": r.previous,
        "started_at": r.started_at,
        "last_rollback": None,
    }
    if r.last_rollback is not None:
        lr = r.last_rollback
        doc["last_rollback"] = {
            "from": lr.from_version,
            "to": lr.to_version,
            "reason": lr.reason,
            "trigger": lr.trigger,
            "at": lr.at,
        }
    return doc


def intent_from_doc(doc: Any, revision: int) -> Intent:
    """Decode a stored document; ``IntentError`` says what does not fit."""
    if not isinstance(doc, dict):
        raise IntentError("intent document must be a JSON object")
    if doc.get("schema") != SCHEMA:
        raise IntentError(f"intent schema {doc.get('schema')!r} is not {SCHEMA}")
    rollouts_doc = _obj(doc.get("rollouts", {}), "rollouts")
    rollouts = {_name(m, "model"): _rollout(m, r) for m, r in rollouts_doc.items()}
    drained = doc.get("drained", [])
    if not isinstance(drained, list) or not all(isinstance(x, str) for x in drained):
        raise IntentError("drained must be a list of replica ids and node names")
    draining: dict[str, Mapping[str, DrainingVersion]] = {}
    for m, vs in _obj(doc.get("draining_versions", {}), "draining_versions").items():
        entries = {}
        for v, d in _obj(vs, f"draining_versions.{m}").items():
            d = _obj(d, f"draining_versions.{m}.{v}")
            entries[_name(v, "version")] = DrainingVersion(
                drain_at=_num(d.get("drain_at"), "drain_at"),
                remove_at=_num(d.get("remove_at"), "remove_at"),
            )
        draining[_name(m, "model")] = MappingProxyType(entries)
    affinity = _obj(doc.get("affinity", {}), "affinity")
    for m, on in affinity.items():
        _name(m, "model")
        if not isinstance(on, bool):
            raise IntentError(f"affinity.{m} must be true or false")
    placement = {
        _name(m, "model"): _placement(m, p)
        for m, p in _obj(doc.get("placement", {}), "placement").items()
    }
    return Intent(
        revision=revision,
        rollouts=MappingProxyType(rollouts),
        drained=frozenset(drained),
        draining_versions=MappingProxyType(draining),
        affinity=MappingProxyType(dict(affinity)),
        placement=MappingProxyType(placement),
    )


def _placement(model: str, doc: Any) -> ModelPlacement:
    d = _obj(doc, f"placement.{model}")
    mins: dict[str, int] = {}
    for region, n in _obj(d.get("min_resident", {}), f"placement.{model}.min_resident").items():
        mins[_str(region, "region")] = _count(n, f"placement.{model}.min_resident.{region}")
    fallback = _str(d.get("fallback", ""), "fallback")
    if fallback == model:
        raise IntentError(f"placement.{model}.fallback must be another model")
    return ModelPlacement(
        min_resident=MappingProxyType(mins),
        max_replicas=_count(d.get("max_replicas", 0), f"placement.{model}.max_replicas"),
        priority=int(_num(d.get("priority", 0), f"placement.{model}.priority")),
        fallback=fallback,
    )


def _count(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 100_000:
        raise IntentError(f"{what} must be a whole number from 0 to 100000")
    return v


def _rollout(model: str, doc: Any) -> Rollout:
    d = _obj(doc, f"rollouts.{model}")
    pct = _num(d.get("canary_percent", 0.0), "canary_percent")
    if not 0.0 <= pct <= 100.0:
        raise IntentError(f"rollouts.{model}.canary_percent must be in [0, 100]")
    lr_doc = d.get("last_rollback")
    last: RollbackRecord | None = None
    if lr_doc is not None:
        lr = _obj(lr_doc, f"rollouts.{model}.last_rollback")
        trigger = lr.get("trigger")
        if trigger not in ("auto", "manual"):
            raise IntentError(f"rollouts.{model}.last_rollback.trigger must be auto or manual")
        last = RollbackRecord(
            from_version=_str(lr.get("from"), "last_rollback.from"),
            to_version=_str(lr.get("to"), "last_rollback.to"),
            reason=_str(lr.get("reason"), "last_rollback.reason"),
            trigger=trigger,
            at=_num(lr.get("at"), "last_rollback.at"),
        )
    return Rollout(
        stable=_name(d.get("stable"), "stable"),
        canary=_str(d.get("canary", ""), "canary"),
        canary_percent=pct,
        previous=_str(d.get("previous", ""), "previous"),
        started_at=_num(d.get("started_at", 0.0), "started_at"),
        last_rollback=last,
    )


def _obj(v: Any, what: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise IntentError(f"{what} must be a JSON object")
    return v


def _str(v: Any, what: str) -> str:
    if not isinstance(v, str):
        raise IntentError(f"{what} must be a string")
    return v


def _name(v: Any, what: str) -> str:
    s = _str(v, what)
    if not s:
        raise IntentError(f"{what} must not be empty")
    return s


def _num(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise IntentError(f"{what} must be a finite number")
    return float(v)
