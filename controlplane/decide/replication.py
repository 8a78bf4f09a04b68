"""Judging replicated intent: is each region's copy what ``intent.home`` says it should be?

Input is what was probed of each region's intent Redis (``CopyState``, filled by
``runtime.intent_replication``); output per region is a ``CopyReport``: its expected role,
how far it is behind the home (replication bytes and intent revisions) and the problems
an operator must see. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CopyState:
    """One region's intent Redis, as probed (``ROLE``/``INFO replication`` and the key)."""

    region: str
    reachable: bool
    role: str = ""
    """``primary`` or ``replica`` (empty when unreachable)."""
    link_up: bool | None = None
    """A replica's link to its primary (``master_link_status``); None for a primary."""
    link_down_s: float | None = None
    """Seconds the replica's link has been down (``master_link_down_since_seconds``)."""
    offset: int | None = None
    """Replication offset: ``master_repl_offset`` (primary) or ``slave_repl_offset``."""
    revision: int | None = None
    """Intent revision stored in this copy (None: no intent there)."""
    epoch: str = ""
    error: str = ""


@dataclass(frozen=True, slots=True)
class CopyReport:
    state: CopyState
    expected_role: str
    """``home`` (the writable primary) or ``replica``."""
    lag_bytes: int | None
    """Home's replication offset minus this copy's (known while both answer)."""
    behind: int | None
    """Intent revisions this copy is behind the home (known while both answer)."""
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def judge_replication(home: str, copies: Mapping[str, CopyState]) -> dict[str, CopyReport]:
    """A report per region of ``copies``; ``home`` names the region that should be primary."""
    h = copies.get(home)
    home_ok = h is not None and h.reachable and h.role == "primary"
    out: dict[str, CopyReport] = {}
    for region, c in sorted(copies.items()):
        problems: list[str] = []
        lag: int | None = None
        behind: int | None = None
        if region == home:
            if not c.reachable:
                problems.append(f"unreachable ({c.error}): intent writes are refused")
            elif c.role != "primary":
                problems.append(
                    "is a replica, not the primary: was the home moved? set intent.home "
                    "in fleet.yaml to the new home"
                )
        elif not c.reachable:
            problems.append(f"unreachable ({c.error})")
        elif c.role != "replica":
            problems.append(
                f"is a primary, not a replica of the home {home}: it does not follow intent "
                "writes (configure replicaof)"
            )
        else:
            if not c.link_up:
                down = f" for {c.link_down_s:g} s" if c.link_down_s is not None else ""
                problems.append(
                    f"replication link down{down}: applying the last intent it has "
                    f"(revision {c.revision or 0})"
                )
            if home_ok and h is not None:
                if h.offset is not None and c.offset is not None and c.link_up:
                    lag = max(0, h.offset - c.offset)
                if h.revision is not None:
                    behind = max(0, h.revision - (c.revision or 0))
                if h.epoch and c.epoch and c.epoch != h.epoch:
                    problems.append(f"holds another intent history (epoch {c.epoch}) than the home")
        out[region] = CopyReport(
            c, "home" if region == home else "replica", lag, behind, tuple(problems)
        )
    return out
