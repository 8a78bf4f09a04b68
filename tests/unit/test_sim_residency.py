"""The fake server's GPU memory and sleep arithmetic (``sim.residency``), without HTTP."""

from __future__ import annotations

import pytest

from controlplane.sim.lora import LoraRefused
from controlplane.sim.residency import (
    TAGS,
    AvailableSpec,
    Residency,
    parse_available,
    parse_tags,
)
from controlplane.sim.simgpu import GiB


def test_parse_available_reads_memory_and_load_time_and_leaves_gaps_to_defaults() -> None:
    assert parse_available("a:8:1500, b:4 ,c,,d::30") == (
        AvailableSpec("a", 8 * GiB, 1500.0),
        AvailableSpec("b", 4 * GiB, None),
        AvailableSpec("c", None, None),
        AvailableSpec("d", None, 30.0),
    )
    assert parse_available("") == ()


@pytest.mark.parametrize("bad", ["a:x", "a:1:2:3", ":4", "a,a", "a:-1", "a:1:inf"])
def test_parse_available_refuses_nonsense(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_available(bad)


def residency() -> Residency:
    return Residency(
        total_bytes=80 * GiB,
        base_bytes=16 * GiB,
        available=parse_available("big:40:3000,mid:20,small:2:100"),
        default_load_ms=2000.0,
        wake_ms=500.0,
        base_load_ms=1000.0,
    )


def test_reserve_takes_memory_and_says_the_load_time_and_release_frees_it() -> None:
    r = residency()
    assert r.reserve("big") == 3000.0
    assert r.reserve("mid") == 2000.0  # the default
    assert r.weights_bytes == (16 + 40 + 20) * GiB
    assert r.free_bytes == 4 * GiB
    r.release("big")
    assert r.free_bytes == 44 * GiB
    assert r.reserve("plain-lora") is None  # not available: the adapters' own time, no memory
    assert r.free_bytes == 44 * GiB


def test_a_load_that_does_not_fit_is_refused_with_need_and_free() -> None:
    r = Residency(80 * GiB, 16 * GiB, parse_available("x:30,y:40"))
    r.reserve("x")
    with pytest.raises(LoraRefused) as e:
        r.reserve("y")
    assert e.value.status == 500
    assert "loading 'y' needs 40.00 GiB, 34.00 GiB free of 80.00 GiB" in e.value.message
    assert set(r.resident) == {"x"}
    r.release("x")
    assert r.reserve("y") is not None  # fits once x is gone


def test_sleep_level_1_frees_the_gpu_and_wakes_in_wake_ms() -> None:
    r = residency()
    r.reserve("small")
    r.sleep(1)
    assert r.sleeping and r.weights_bytes == 0
    assert r.wake_ms_for(TAGS) == 500.0
    assert r.wake_ms_for(("kv_cache",)) == 0.0
    r.wake(("kv_cache",))
    assert r.sleeping  # the weights still sleep
    r.wake(("weights",))
    assert not r.sleeping and r.weights_bytes == 18 * GiB and r.level == 0


def test_sleep_level_2_wakes_by_reloading_base_and_resident_models() -> None:
    r = residency()
    r.reserve("small")
    r.reserve("mid")
    r.sleep(2)
    assert r.wake_ms_for(TAGS) == 500.0 + 1000.0 + 100.0 + 2000.0
    r.sleep(1)  # a shallower sleep on top keeps the deeper level
    assert r.level == 2


def test_listing_says_memory_times_and_what_is_loaded() -> None:
    r = residency()
    r.reserve("small")
    r.reserve("mid")
    got = {e["name"]: e for e in r.listing(loaded=["small"])}
    assert got["small"] == {
        "name": "small",
        "mem_bytes": 2 * GiB,
        "load_s": 0.1,
        "wake_s": 0.5,
        "loaded": True,
        "loading": False,
    }
    assert got["mid"]["loading"] is True and got["mid"]["mem_bytes"] == 20 * GiB
    assert got["big"]["loaded"] is False and got["big"]["load_s"] == 3.0


def test_parse_tags() -> None:
    assert parse_tags([]) == TAGS
    assert parse_tags(["weights"]) == ("weights",)
    assert parse_tags(["weights,kv_cache"]) == ("weights", "kv_cache")
    with pytest.raises(ValueError, match="unknown"):
        parse_tags(["gpu"])
