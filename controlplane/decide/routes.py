"""Per-model routes: which versions take traffic and with what split.

With a rollout in intent (the control plane records one for every model it sees serving,
see ``rollout.record_serving_versions``), the split follows it (blue-green 100/0, canary
N%); a version named there that has no cluster is left out (routing to a missing cluster
answers 503). Fail open: if the recorded stable version has no serving replica, its share
goes to the canary if one serves, else to the default version (``fallback_version``);
intent is not changed, so traffic returns once the stable serves again. Without a rollout
(a model not recorded yet), all traffic goes to the default version: the one with the most
serving replicas (ties: the greatest version name). Versions in ``exclude`` (leaving
service) take no share unless no other version can serve; they stay reachable through the
``x-model-version`` header while they have serving replicas.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from controlplane.intent import Intent
from controlplane.ir import ModelRouteIR, WeightedClusterIR, affinity_cluster_name, cluster_name

SPLIT_SCALE = 10_000
"""Route weights are out of 10,000 so a canary percent keeps two decimals."""


def default_version(serving: Mapping[str, int]) -> str:
    """The version with the most serving replicas; ties go to the greatest name."""
    return max(serving, key=lambda v: (serving[v], v))


def routable_among(serving: Mapping[str, int], exclude: Collection[str]) -> dict[str, int]:
    """The versions that may take traffic: those not in ``exclude`` (leaving service), or
    every one of ``serving`` if only excluded versions serve."""
    return {v: n for v, n in serving.items() if v not in exclude} or dict(serving)


def fallback_version(model: str, routable: Mapping[str, int], intent: Intent) -> str | None:
    """The version that takes all of ``model``'s traffic because its recorded stable
    version is not among ``routable`` (no serving replica): the canary if it can serve,
    else the default version. None while the stable can serve, without a rollout in
    intent, or when nothing can serve."""
    rollout = intent.rollouts.get(model)
    if rollout is None or not routable or rollout.stable in routable:
        return None
    if rollout.canary in routable:
        return rollout.canary
    return default_version(routable)


def model_route(
    model: str,
    serving: Mapping[str, int],
    intent: Intent,
    exclude: frozenset[str] = frozenset(),
    *,
    affinity: bool = False,
) -> ModelRouteIR | None:
    """``serving``: version -> number of replicas that can take traffic (>= 1 each).
    ``affinity``: requests with a session key go to the versions' affinity clusters (same
    split, hashed on the key)."""
    if not serving:
        return None
    routable = routable_among(serving, exclude)
    split: dict[str, int] = {}
    rollout = intent.rollouts.get(model)
    fallback = fallback_version(model, routable, intent)
    if rollout is None:
        split[default_version(routable)] = SPLIT_SCALE
    elif fallback is not None:
        split[fallback] = SPLIT_SCALE
    else:
        canary_w = 0
        if rollout.canary and rollout.canary in routable and rollout.canary != rollout.stable:
            canary_w = round(SPLIT_SCALE * min(100.0, max(0.0, rollout.canary_percent)) / 100)
        if canary_w < SPLIT_SCALE:
            split[rollout.stable] = SPLIT_SCALE - canary_w
        if canary_w > 0:
            split[rollout.canary] = canary_w
    return ModelRouteIR(
        model=model,
        clusters=tuple(
            WeightedClusterIR(cluster_name(model, v), w, v) for v, w in sorted(split.items())
        ),
        session_header=intent.session_header if len(split) > 1 else "",
        versions=tuple((v, cluster_name(model, v)) for v in sorted(serving)),
        affinity_clusters=tuple(
            WeightedClusterIR(affinity_cluster_name(model, v), w, v)
            for v, w in sorted(split.items())
        )
        if affinity
        else (),
        session_key_header=intent.session_header if affinity else "",
    )
