"""Per-model routes: which versions take traffic and with what split.

With a rollout in intent, the split follows it (blue-green 100/0, canary N%); a version
named there that has no cluster is left out (routing to a missing cluster answers 503).
Without one, all traffic goes to the default version: the one with the most serving
replicas (ties: the greatest version name). Versions in ``exclude`` (leaving service) take
no share unless no other version can serve; they stay reachable through the
``x-model-version`` header while they have serving replicas.
"""

from __future__ import annotations

from collections.abc import Mapping

from controlplane.intent import Intent
from controlplane.ir import ModelRouteIR, WeightedClusterIR, cluster_name

SPLIT_SCALE = 10_000
"""Route weights are out of 10,000 so a canary percent keeps two decimals."""


def default_version(serving: Mapping[str, int]) -> str:
    """The version with the most serving replicas; ties go to the greatest name."""
    return max(serving, key=lambda v: (serving[v], v))


def model_route(
    model: str,
    serving: Mapping[str, int],
    intent: Intent,
    exclude: frozenset[str] = frozenset(),
) -> ModelRouteIR | None:
    """``serving``: version -> number of replicas that can take traffic (>= 1 each)."""
    if not serving:
        return None
    routable = {v: n for v, n in serving.items() if v not in exclude} or dict(serving)
    split: dict[str, int] = {}
    rollout = intent.rollouts.get(model)
    if rollout is not None and rollout.stable in routable:
        canary_w = 0
        if rollout.canary and rollout.canary in routable and rollout.canary != rollout.stable:
            canary_w = round(SPLIT_SCALE * min(100.0, max(0.0, rollout.canary_percent)) / 100)
        if canary_w < SPLIT_SCALE:
            split[rollout.stable] = SPLIT_SCALE - canary_w
        if canary_w > 0:
            split[rollout.canary] = canary_w
    elif rollout is not None and rollout.canary in routable:
        split[rollout.canary] = SPLIT_SCALE
    else:
        split[default_version(routable)] = SPLIT_SCALE
    return ModelRouteIR(
        model=model,
        clusters=tuple(
            WeightedClusterIR(cluster_name(model, v), w) for v, w in sorted(split.items())
        ),
        session_header=intent.session_header if len(split) > 1 else "",
        versions=tuple((v, cluster_name(model, v)) for v in sorted(serving)),
    )
