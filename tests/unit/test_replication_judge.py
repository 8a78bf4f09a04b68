"""``decide.replication`` (each region's intent copy judged against ``intent.home``) and
its lines in ``aixds status``."""

from __future__ import annotations

from controlplane.decide.replication import CopyState, judge_replication
from controlplane.status import format_replication

HOME = CopyState("us", True, "primary", offset=1000, revision=7, epoch="e1")


def replica(**kw: object) -> CopyState:
    base: dict[str, object] = {
        "region": "eu",
        "reachable": True,
        "role": "replica",
        "link_up": True,
        "offset": 900,
        "revision": 6,
        "epoch": "e1",
    }
    base.update(kw)
    return CopyState(**base)  # type: ignore[arg-type]


def test_healthy_replica_reports_lag_and_revisions_behind() -> None:
    r = judge_replication("us", {"us": HOME, "eu": replica()})
    assert r["us"].ok and r["us"].expected_role == "home"
    assert r["eu"].ok and r["eu"].expected_role == "replica"
    assert (r["eu"].lag_bytes, r["eu"].behind) == (100, 1)


def test_partitioned_replica_says_it_keeps_the_last_intent() -> None:
    home_gone = CopyState("us", False, error="ConnectionError: refused")
    r = judge_replication("us", {"us": home_gone, "eu": replica(link_up=False, link_down_s=12)})
    assert r["us"].problems == (
        "unreachable (ConnectionError: refused): intent writes are refused",
    )
    assert r["eu"].problems == (
        "replication link down for 12 s: applying the last intent it has (revision 6)",
    )
    assert r["eu"].lag_bytes is None and r["eu"].behind is None


def test_wrong_roles_and_histories_are_problems() -> None:
    moved = CopyState("us", True, "replica", link_up=True, offset=5, revision=7, epoch="e1")
    r = judge_replication("us", {"us": moved, "eu": CopyState("eu", True, "primary")})
    assert "was the home moved?" in r["us"].problems[0]
    assert "is a primary, not a replica of the home us" in r["eu"].problems[0]
    r = judge_replication("us", {"us": HOME, "eu": replica(epoch="e2")})
    assert r["eu"].problems == ("holds another intent history (epoch e2) than the home",)


def test_status_lines_show_every_regions_copy() -> None:
    copy = {"reachable": True, "link_down_s": None, "lag_bytes": None, "behind": None}
    doc = {
        "revision": 7,
        "replication": {
            "home": "us",
            "region": "eu",
            "regions": {
                "eu": {**copy, "role": "replica", "redis_role": "replica", "link_up": False,
                       "link_down_s": 12.0, "revision": 6, "behind": 1,
                       "problems": ["replication link down for 12 s"]},
                "us": {**copy, "role": "home", "redis_role": "primary", "link_up": None,
                       "revision": 7, "problems": []},
            },
        },
    }  # fmt: skip
    assert format_replication(doc) == [
        "intent: home us; this region (eu) applies revision 7",
        "  us             home     revision 7     redis primary",
        " *eu             replica  revision 6     (1 behind) link DOWN 12 s",
        "    ! replication link down for 12 s",
    ]
