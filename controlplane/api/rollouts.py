"""Models, versions and rollouts: the read views and the write endpoints of the config API.

Reads (open, or scope read with `aixds serve --require-read-token`):
  ``GET /v1/models``, ``GET /v1/models/{model}``: versions, replicas, traffic, rollout.
  ``GET /v1/rollouts``, ``GET /v1/rollouts/{model}``: rollout state, canary health,
  last rollback and its reason, and ``fallback``: the version serving instead of a
  stable version that has no serving replica (fail open).
  ``GET /v1/intent``: the stored intent document.
  ``GET /v1/load``: the latest load report per Envoy and cluster (this replica).
Writes (``Authorization: Bearer <token>`` of a token with scope admin), each answered once
this replica's Envoys run it:
  ``POST /v1/rollouts/{model}``            start: blue-green switch or canary
  ``POST /v1/rollouts/{model}/percent``    set the canary's share
  ``POST /v1/rollouts/{model}/promote``    the canary becomes stable
  ``POST /v1/rollouts/{model}/rollback``   back to stable / previous, reason recorded
  ``POST /v1/rollouts/{model}/abort``      stop the canary without blame
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import APIRouter, Depends

from controlplane.api.context import ApiContext
from controlplane.api.errors import ApiError, error_responses
from controlplane.api.schemas import (
    ChangeResult,
    IntentView,
    ModelsView,
    ModelView,
    RevisionOnly,
    RollbackBody,
    RolloutsView,
    RolloutView,
    SetPercent,
    StartRollout,
)
from controlplane.decide import EnvoyNode, decide
from controlplane.decide.rollback import Verdict
from controlplane.decide.rollout import (
    Counts,
    RolloutPolicy,
    VersionCount,
    abort,
    current_stable,
    phase,
    promote,
    rollback,
    serving_fallback,
    set_percent,
    start,
    version_counts,
)
from controlplane.fleet.audit import Actor
from controlplane.fleet.model import FleetView
from controlplane.intent import Intent
from controlplane.ir import cluster_name
from controlplane.runtime.autorollback import AutoRollback
from controlplane.runtime.rollout_ops import Applied

PolicyChange = Callable[[Intent, Counts, float, RolloutPolicy], Intent]
"""A write's pure change, given the rollout policy in force."""

VERSION_HEADER = "x-model-version"

_ERRORS = error_responses(
    (400, "the body could not be parsed"),
    (401, "missing or unknown API token"),
    (403, "the token lacks scope admin, or no token may write (read-only API)"),
    (404, "unknown model or version"),
    (409, "revision conflict, or the change does not fit the rollout state / fleet"),
    (422, "invalid body"),
    (503, "Redis unreachable or state not read yet: retry"),
)
_READ_ERRORS: dict[int | str, dict[str, Any]] = {s: _ERRORS[s] for s in (404, 422, 503)}
_LIST_ERRORS: dict[int | str, dict[str, Any]] = {503: _ERRORS[503]}


def traffic(view: FleetView, intent: Intent, now: float) -> dict[str, dict[str, float]]:
    """model -> version -> percent of new requests, as the routes now split them."""
    plan = decide(view, intent, EnvoyNode(), now)
    version_of = {c.name: c.version for c in plan.clusters}
    return {
        m.model: {version_of[w.cluster]: w.weight / 100 for w in m.clusters}
        for rc in plan.route_configs
        for m in rc.models
    }


def rollout_view(
    model: str,
    intent: Intent,
    counts: dict[str, dict[str, VersionCount]],
    split: dict[str, float],
    verdict: Verdict | None,
    now: float,
) -> dict[str, Any]:
    r = intent.rollouts.get(model)
    lr = r.last_rollback if r is not None else None
    health = None
    if verdict is not None and r is not None and verdict.canary.version == r.canary:
        health = {
            "stable": _rate(verdict.stable),
            "canary": _rate(verdict.canary),
            "window_start": verdict.window_start,
            "canary_low": verdict.canary_low,
            "stable_high": verdict.stable_high,
            "rollback": verdict.rollback,
            "reason": verdict.reason,
        }
    return {
        "model": model,
        "stable": current_stable(model, counts, intent),
        "canary": (r.canary or None) if r is not None else None,
        "canary_percent": r.canary_percent if r is not None and r.canary else 0.0,
        "previous": (r.previous or None) if r is not None else None,
        "started_at": r.started_at if r is not None else None,
        "traffic": split,
        "fallback": serving_fallback(model, counts, intent),
        "draining": {
            v: {"phase": phase(d, now).value, "drain_at": d.drain_at, "remove_at": d.remove_at}
            for v, d in sorted(intent.draining_versions.get(model, {}).items())
        },
        "last_rollback": None
        if lr is None
        else {
            "from_version": lr.from_version,
            "to_version": lr.to_version,
            "reason": lr.reason,
            "trigger": lr.trigger,
            "at": lr.at,
        },
        "health": health,
    }


def _rate(r: Any) -> dict[str, Any]:
    return {"version": r.version, "requests": r.requests, "errors": r.errors, "error_rate": r.rate}


def router(ctx: ApiContext) -> APIRouter:
    """Every endpoint of this module; reads first, then the writes (which need a token)."""
    api = APIRouter(tags=["rollouts"])
    _add_model_reads(api, ctx)
    _add_rollout_reads(api, ctx)
    _add_state_reads(api, ctx)
    api.include_router(_writes(ctx))
    return api


# -- what the endpoints share ---------------------------------------------------------------

_ReadState = tuple[Intent, dict[str, dict[str, VersionCount]], FleetView, float]
"""What a read looks at: intent, replica counts per model version, fleet view, time."""


def _verdicts(ctx: ApiContext) -> dict[str, Verdict]:
    return ctx.guard.verdicts if ctx.guard is not None else {}


def _snapshot(ctx: ApiContext) -> _ReadState:
    it = ctx.require_intents().current()
    now = time.time()
    view = dict(ctx.watcher.view)
    return it, version_counts(view, it, now), view, now


def _models_of(it: Intent, counts: dict[str, dict[str, VersionCount]]) -> list[str]:
    return sorted(set(counts) | set(it.rollouts))


def _known(model: str, it: Intent, counts: dict[str, dict[str, VersionCount]]) -> None:
    if model not in counts and model not in it.rollouts:
        raise ApiError(
            404,
            "unknown_model",
            f"unknown model {model!r}; known models: {', '.join(_models_of(it, counts))}",
        )


def model_view(
    model: str,
    it: Intent,
    counts: dict[str, dict[str, VersionCount]],
    view: FleetView,
    split: dict[str, float],
    verdict: Verdict | None,
    now: float,
) -> dict[str, Any]:
    """One model: its versions with their role, traffic and replicas, and its rollout."""
    ro = rollout_view(model, it, counts, split, verdict, now)
    draining = it.draining_versions.get(model, {})
    ids = _replica_ids(model, view, now)
    versions = []
    for v in sorted(set(counts.get(model, {})) | set(draining)):
        c = counts.get(model, {}).get(v, VersionCount())
        versions.append(
            {
                "version": v,
                "cluster": cluster_name(model, v),
                "role": _role(v, ro, draining),
                "traffic_percent": split.get(v, 0.0),
                "replicas": {"total": c.total, "serving": c.serving, "ready": c.ready},
                "replica_ids": ids.get(v, []),
            }
        )
    return {
        "model": model,
        "versions": versions,
        "rollout": ro,
        "version_header": VERSION_HEADER,
        "session_header": it.session_header,
    }


def _replica_ids(model: str, view: FleetView, now: float) -> dict[str, list[str]]:
    """version -> ids of the fresh replicas that serve ``model`` at that version."""
    ids: dict[str, list[str]] = {}
    for rid, obs in sorted(view.items()):
        for m in obs.record.models:
            if m.name == model and now < obs.expires_at:
                ids.setdefault(m.version, []).append(rid)
    return ids


def _role(version: str, rollout: dict[str, Any], draining: Mapping[str, object]) -> str:
    if version == rollout["stable"]:
        return "stable"
    if version == rollout["canary"]:
        return "canary"
    return "draining" if version in draining else "idle"


async def _guard_view(guard: AutoRollback | None) -> dict[str, Any] | None:
    """Who acts for auto-rollback and with which policy; ``None`` without a guard."""
    if guard is None:
        return None
    try:
        holder = await guard.holder()
    except Exception:
        holder = None
    return {
        "enabled": guard.enabled,
        "this_replica": guard.owner,
        "acting": guard.leader,
        "lock_holder": holder,
        "window_s": guard.policy.window_s,
        "min_requests": guard.policy.min_requests,
        "margin": guard.policy.margin,
        "z": guard.policy.z,
    }


# -- reads ----------------------------------------------------------------------------------


def _add_model_reads(api: APIRouter, ctx: ApiContext) -> None:
    @api.get("/v1/models", response_model=ModelsView, responses=_LIST_ERRORS)
    def list_models() -> dict[str, Any]:
        """Every model: its versions with replica counts, traffic split and rollout state."""
        it, counts, view, now = _snapshot(ctx)
        split = traffic(view, it, now)
        verdicts = _verdicts(ctx)
        return {
            "revision": it.revision,
            "models": [
                model_view(m, it, counts, view, split.get(m, {}), verdicts.get(m), now)
                for m in _models_of(it, counts)
            ],
        }

    @api.get("/v1/models/{model:path}", response_model=ModelView, responses=_READ_ERRORS)
    def get_model(model: str) -> dict[str, Any]:
        """One model (404 if no fresh replica serves it and intent does not name it)."""
        it, counts, view, now = _snapshot(ctx)
        _known(model, it, counts)
        split = traffic(view, it, now).get(model, {})
        return model_view(model, it, counts, view, split, _verdicts(ctx).get(model), now)


def _add_rollout_reads(api: APIRouter, ctx: ApiContext) -> None:
    @api.get("/v1/rollouts", response_model=RolloutsView, responses=_LIST_ERRORS)
    async def list_rollouts() -> dict[str, Any]:
        """Rollout state of every model, canary health, and who acts for auto-rollback."""
        it, counts, view, now = _snapshot(ctx)
        split = traffic(view, it, now)
        guard = await _guard_view(ctx.guard)
        verdicts = _verdicts(ctx)
        return {
            "revision": it.revision,
            "guard": guard,
            "rollouts": [
                rollout_view(m, it, counts, split.get(m, {}), verdicts.get(m), now)
                for m in _models_of(it, counts)
            ],
        }

    @api.get("/v1/rollouts/{model:path}", response_model=RolloutView, responses=_READ_ERRORS)
    def get_rollout(model: str) -> dict[str, Any]:
        """One model's rollout: split, canary health, draining versions, last rollback."""
        it, counts, view, now = _snapshot(ctx)
        _known(model, it, counts)
        split = traffic(view, it, now).get(model, {})
        return rollout_view(model, it, counts, split, _verdicts(ctx).get(model), now)


def _add_state_reads(api: APIRouter, ctx: ApiContext) -> None:
    @api.get("/v1/intent", response_model=IntentView, responses=_LIST_ERRORS)
    def get_intent() -> dict[str, Any]:
        """The stored intent document this replica acts on, with its revision."""
        w = ctx.require_intents()
        stored = w.stored
        return {
            "revision": w.revision,
            "epoch": stored.epoch if stored is not None else "",
            "doc": json.loads(stored.doc) if stored is not None and stored.doc else None,
            "replication": ctx.replication.report() if ctx.replication is not None else None,
        }

    @api.get("/v1/load")
    def get_load() -> dict[str, Any]:
        """The latest load report (LRS) per Envoy and cluster received by this replica."""
        return {"reports": ctx.loads.view() if ctx.loads is not None else []}


# -- writes ---------------------------------------------------------------------------------


async def _act(
    ctx: ApiContext,
    by: Actor,
    action: str,
    model: str,
    revision: int | None,
    change: PolicyChange,
) -> dict[str, Any]:
    """Apply one pure change under ``action``'s name, as ``by``; the answer every write gives."""
    svc = ctx.require_rollouts()
    applied = await svc.change(
        action,
        model,
        lambda it, c, now: change(it, c, now, svc.policy),
        by=by,
        expected_revision=revision,
    )
    return _result(ctx, applied, model)


def _result(ctx: ApiContext, applied: Applied, model: str) -> dict[str, Any]:
    """A write's answer: the new revision, whether the Envoys run it, the model's rollout."""
    it = applied.intent
    now = time.time()
    view = dict(ctx.watcher.view)
    counts = version_counts(view, it, now)
    split = traffic(view, it, now).get(model, {})
    return {
        "revision": it.revision,
        "changed": applied.changed,
        "converged": applied.converged,
        "envoys": {"current": applied.envoys_current, "total": applied.envoys_total},
        "rollout": rollout_view(model, it, counts, split, _verdicts(ctx).get(model), now),
    }


def _writes(ctx: ApiContext) -> APIRouter:
    """The write endpoints, each behind an admin token. The more specific paths come first:
    ``/v1/rollouts/{model:path}`` would match them too."""
    writes = APIRouter(
        tags=["rollouts"], dependencies=[Depends(ctx.access.admin)], responses=_ERRORS
    )

    @writes.post("/v1/rollouts/{model:path}/percent", response_model=ChangeResult)
    async def post_percent(
        model: str,
        body: SetPercent,
        by: Actor = Depends(ctx.access.admin),  # noqa: B008
    ) -> dict[str, Any]:
        """Set the share of the canary in progress (0..100)."""
        return await _act(
            ctx, by, "set", model, body.revision,
            lambda it, c, now, pol: set_percent(it, model, body.percent, c, pol, now),
        )  # fmt: skip

    @writes.post("/v1/rollouts/{model:path}/promote", response_model=ChangeResult)
    async def post_promote(
        model: str,
        body: RevisionOnly | None = None,
        by: Actor = Depends(ctx.access.admin),  # noqa: B008
    ) -> dict[str, Any]:
        """The canary becomes stable; the old stable drains (DRAINING, then removed)."""
        return await _act(
            ctx, by, "promote", model, body.revision if body else None,
            lambda it, c, now, pol: promote(it, model, c, pol, now),
        )  # fmt: skip

    @writes.post("/v1/rollouts/{model:path}/rollback", response_model=ChangeResult)
    async def post_rollback(
        model: str,
        body: RollbackBody | None = None,
        by: Actor = Depends(ctx.access.admin),  # noqa: B008
    ) -> dict[str, Any]:
        """Back to stable (canary in progress) or to the previous version; reason recorded."""
        reason = (body.reason if body else "") or "manual rollback"
        return await _act(
            ctx, by, "rollback", model, body.revision if body else None,
            lambda it, c, now, pol: rollback(it, model, reason, "manual", c, pol, now),
        )  # fmt: skip

    @writes.post("/v1/rollouts/{model:path}/abort", response_model=ChangeResult)
    async def post_abort(
        model: str,
        body: RevisionOnly | None = None,
        by: Actor = Depends(ctx.access.admin),  # noqa: B008
    ) -> dict[str, Any]:
        """Stop the canary in progress; no rollback is recorded."""
        return await _act(
            ctx, by, "abort", model, body.revision if body else None,
            lambda it, c, now, pol: abort(it, model, c, pol, now),
        )  # fmt: skip

    @writes.post("/v1/rollouts/{model:path}", response_model=ChangeResult)
    async def post_start(
        model: str,
        body: StartRollout,
        by: Actor = Depends(ctx.access.admin),  # noqa: B008
    ) -> dict[str, Any]:
        """Start a rollout: a blue-green switch to ``to``, or a canary with ``canary_percent``.

        Refused unless ``to`` has ``min_ready`` ready replicas. A switch drains the old
        stable. Starting the current stable pins it (later versions never take over by the
        default rule).
        """
        return await _act(
            ctx, by, "start", model, body.revision,
            lambda it, c, now, pol: start(it, model, body.to, body.canary_percent, c, pol, now),
        )  # fmt: skip

    return writes
