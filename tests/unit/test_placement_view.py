"""What the acting control plane publishes of a placement run (``decision_doc``) and how
``aixds models placement`` / ``aixds status`` print it: per model, and memory per node."""

from __future__ import annotations

from dataclasses import replace

from controlplane.api.models_cli import format_placement
from controlplane.decide.placement import ModelDemand, place
from controlplane.intent import Intent
from controlplane.runtime.placement_loop import decision_doc
from tests.unit.test_placement import CFG, GB, one_gpu


def test_the_decision_carries_each_nodes_memory_and_the_cli_prints_it() -> None:
    f = one_gpu(("a", 40), ("b", 40), loaded=("a",))
    f["n1/a"] = replace(f["n1/a"], record=replace(f["n1/a"].record, host_mem_bytes=64 * GB))
    p = place(f, Intent(), {"a": ModelDemand(waiting=1)}, None, 0.0, CFG)
    doc = decision_doc(p, {}, {"a": 1}, "cp-1")
    assert doc["nodes"] == {
        "n1": {
            "gpu_used_bytes": 40 * GB,
            "gpu_bytes": round(72 * GB),
            "host_used_bytes": 0,
            "host_bytes": 64 * GB,
            "host_from": "agent",
        }
    }
    text = format_placement({"revision": 3, "pinned": [], "decision": doc})
    assert "decided by cp-1:" in text
    assert "  a: 1 awake, 0 asleep, 1 requests waiting" in text
    assert "  n1: GPU 40/72 GiB, host 0/64 GiB (from its agent)" in text


def test_a_decision_written_before_nodes_were_kept_still_prints() -> None:
    doc = {"at": 1.0, "decided_by": "cp-0", "models": {}}
    text = format_placement({"revision": 0, "pinned": [], "decision": doc})
    assert "decided by cp-0:" in text and "memory per node" not in text
