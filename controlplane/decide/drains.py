"""Operator drains as pure intent changes: ``drain`` and ``undrain`` a replica or a node.

A target is a replica id (``node/name``) or a node name (no ``/``; it covers every replica
of the node, present or future). A drained replica stays in EDS as DRAINING: Envoy sends
it no new requests and lets those in flight finish. The changes refuse (``RolloutError``)
a malformed target and, for ``drain``, one the fleet does not know (a typo would otherwise
drain nothing and look done); ``undrain`` accepts any listed target, known or not, so a
node that is gone can still be cleaned out of the list.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from controlplane.decide.rollout import ErrorKind, RolloutError
from controlplane.intent import Intent

MAX_TARGET_CHARS = 512
MAX_DRAINED = 10_000
"""Entries in ``Intent.drained`` (it is one Redis value)."""


def check_target(target: str) -> None:
    """``RolloutError`` unless ``target`` looks like a node name or a replica id."""
    parts = target.split("/")
    ok = 0 < len(target) <= MAX_TARGET_CHARS and len(parts) <= 2 and all(p.strip() for p in parts)
    if not ok or target != target.strip():
        raise RolloutError(
            ErrorKind.INVALID,
            "bad_target",
            f"{target!r} is neither a node name nor a replica id (node/name)",
        )


def drain(intent: Intent, target: str, known: Iterable[str]) -> Intent:
    """``intent`` with ``target`` drained; ``known``: the node names and replica ids of the
    fleet view."""
    check_target(target)
    if target in intent.drained:
        return intent
    if target not in set(known):
        raise RolloutError(
            ErrorKind.NOT_FOUND,
            "unknown_target",
            f"no replica or node {target!r} is known (see GET /v1/fleet)",
        )
    if len(intent.drained) >= MAX_DRAINED:
        raise RolloutError(
            ErrorKind.CONFLICT, "too_many_drains", f"{MAX_DRAINED} targets are drained already"
        )
    return replace(intent, drained=intent.drained | {target})


def undrain(intent: Intent, target: str) -> Intent:
    """``intent`` without ``target`` in its drained list (unchanged if it was not there)."""
    check_target(target)
    return replace(intent, drained=intent.drained - {target})
