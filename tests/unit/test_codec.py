from __future__ import annotations

import dataclasses
import json

import pytest

from controlplane.fleet.codec import RecordError, decode_record, encode_record
from controlplane.fleet.model import (
    AvailableModel,
    GpuStats,
    LoadStats,
    ModelFailure,
    ModelInfo,
    ModelState,
    ReplicaRecord,
    ServerKind,
)

REC = ReplicaRecord(
    replica_id="gpu-1/vllm-8001",
    node="gpu-1",
    region="us",
    zone="us-a",
    address="10.0.0.5",
    port=8001,
    server_kind=ServerKind.VLLM,
    models=(
        ModelInfo("llama", "v1", ModelState.READY),
        ModelInfo("llama", "v2", ModelState.LOADING),
    ),
    load=LoadStats(queue_waiting=3, running=8, kv_cache_usage=0.42),
    gpus=(
        GpuStats(
            index=0,
            uuid="GPU-abc",
            util_gpu=0.9,
            mem_used_bytes=10,
            mem_total_bytes=80,
            throttled=True,
            faulty=False,
        ),
    ),
    timestamp=1_700_000_000.5,
    speed=1.5,
    failures=(ModelFailure("sql-lora", "v3", "load", "HTTP 404: adapter not found", 4),),
)


def test_round_trip() -> None:
    assert decode_record(encode_record(REC)) == REC


def test_a_record_without_failures_has_no_such_key_and_older_records_decode() -> None:
    bare = dataclasses.replace(REC, failures=())
    raw = encode_record(bare)
    assert "failures" not in json.loads(raw)
    assert decode_record(raw) == bare


def test_an_unmeasured_speed_round_trips_and_older_records_count_as_measured() -> None:
    unmeasured = dataclasses.replace(REC, speed=1.0, capacity=1.0, speed_measured=False)
    raw = encode_record(unmeasured)
    assert json.loads(raw)["speed_measured"] is False
    assert decode_record(raw) == unmeasured
    assert "speed_measured" not in json.loads(encode_record(REC))
    assert decode_record(encode_record(REC)).speed_measured


def test_prefix_cache_hit_rate_round_trips_and_is_left_out_when_unknown() -> None:
    known = dataclasses.replace(REC, load=dataclasses.replace(REC.load, prefix_cache_hit_rate=0.6))
    raw = encode_record(known)
    assert json.loads(raw)["load"]["prefix_cache_hit_rate"] == 0.6
    assert decode_record(raw) == known
    assert "prefix_cache_hit_rate" not in json.loads(encode_record(REC))["load"]
    assert decode_record(encode_record(REC)).load.prefix_cache_hit_rate is None  # older records


@pytest.mark.parametrize(
    ("value", "decoded"),
    [
        (0.25, 0.25),
        (1, 1.0),
        (1.5, 1.0),  # clamped, not refused: the replica stays
        (-0.1, 0.0),
        (None, None),
        ("0.5", None),  # not a number: skipped
        (True, None),
        (10**400, None),
        ([0.5], None),
    ],
)
def test_a_bad_prefix_cache_hit_rate_is_clamped_or_skipped(value: object, decoded: object) -> None:
    rec = decode_record(mutate(load__prefix_cache_hit_rate=value))
    assert rec.load.prefix_cache_hit_rate == decoded
    assert rec.load.kv_cache_usage == REC.load.kv_cache_usage


def test_a_nan_prefix_cache_hit_rate_is_skipped() -> None:
    raw = encode_record(REC).replace(
        '"kv_cache_usage":0.42', '"kv_cache_usage":0.42,"prefix_cache_hit_rate":NaN'
    )
    assert "NaN" in raw
    assert decode_record(raw).load.prefix_cache_hit_rate is None


def mutate(**changes: object) -> str:
    doc = json.loads(encode_record(REC))
    for path, value in changes.items():
        target = doc
        *parents, leaf = path.split("__")
        for p in parents:
            target = target[int(p)] if p.isdigit() else target[p]
        if value is KeyError:
            del target[leaf]
        else:
            target[leaf] = value
    return json.dumps(doc)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("not json", "not JSON"),
        ("[1,2]", "not a JSON object"),
        (mutate(v=2), "schema version"),
        (mutate(port=0), "out of range"),
        (mutate(timestamp=10**400), "out of range"),  # no float holds it
        (mutate(port="8001"), "not a number"),
        (mutate(port=80.5), "not an integer"),
        (mutate(node=KeyError), "missing field 'node'"),
        (mutate(server_kind="nginx"), "unknown server_kind"),
        (mutate(models__0__state="dancing"), "unknown model state"),
        (mutate(load__kv_cache_usage=1.5), "out of range"),
        (mutate(load__running=-1), "out of range"),
        (mutate(gpus__0__faulty="yes"), "not a boolean"),
        (mutate(models="llama"), "not a list"),
        (mutate(address=""), "is empty"),
        (mutate(address="llm-1.internal"), "not an IP address"),
        ('{"v":1,"port":1e999}', "missing field"),
        (mutate(failures__0__op="reboot"), "not load or unload"),
        (mutate(failures__0__error="x" * 301), "over 300 characters"),
        (mutate(failures__0__failures=0), "out of range"),
        (mutate(failures="boom"), "not a list"),
    ],
)
def test_malformed_records_raise_with_a_reason(raw: str, reason: str) -> None:
    with pytest.raises(RecordError, match=reason):
        decode_record(raw)


def test_nan_is_rejected() -> None:
    raw = encode_record(REC).replace('"queue_waiting":3,', '"queue_waiting":NaN,')
    assert "NaN" in raw
    with pytest.raises(RecordError, match="out of range"):
        decode_record(raw)


def test_oversized_record_is_rejected() -> None:
    with pytest.raises(RecordError, match="bytes"):
        decode_record("x" * (300 * 1024))


def test_available_models_and_sleep_round_trip_and_are_optional() -> None:
    rec = dataclasses.replace(
        REC,
        models=(ModelInfo("llama", "v1", ModelState.SLEEPING),),
        available=(
            AvailableModel("llama", "v1", mem_bytes=16 << 30, load_s=20.0, wake_s=0.5),
            AvailableModel("qwen"),
        ),
        sleeping=True,
    )
    assert decode_record(encode_record(rec)) == rec
    bare = json.loads(encode_record(REC))
    assert "available" not in bare and "sleeping" not in bare


@pytest.mark.parametrize(
    "entry",
    [{"name": ""}, {"name": "m", "mem_bytes": -1}, {"name": "m", "load_s": "slow"}, "m"],
)
def test_a_bad_available_entry_refuses_the_record(entry: object) -> None:
    doc = json.loads(encode_record(REC))
    doc["available"] = [entry]
    with pytest.raises(RecordError):
        decode_record(json.dumps(doc))


def test_host_memory_round_trips_and_is_optional() -> None:
    rec = dataclasses.replace(REC, host_mem_bytes=1600 << 30)
    raw = encode_record(rec)
    assert json.loads(raw)["host_mem_bytes"] == 1600 << 30
    assert decode_record(raw) == rec
    assert "host_mem_bytes" not in json.loads(encode_record(REC))  # 0: not reported
    assert decode_record(encode_record(REC)).host_mem_bytes == 0


@pytest.mark.parametrize("value", [-1, 1.5, True, "80", 1 << 60])
def test_a_bad_host_memory_refuses_the_record(value: object) -> None:
    doc = json.loads(encode_record(REC))
    doc["host_mem_bytes"] = value
    with pytest.raises(RecordError, match="host_mem_bytes"):
        decode_record(json.dumps(doc))
