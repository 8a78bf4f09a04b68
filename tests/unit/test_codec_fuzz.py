"""Replica records fuzzed through the codec (hypothesis).

Whatever the bytes, ``decode_record`` returns a valid record or raises ``RecordError``,
never another exception; what it returns survives its own round trip; and every record
the model allows round-trips exactly. Inputs: arbitrary bytes and JSON, and mutations of
valid records (wrong types, missing fields, huge and non-finite numbers, unicode, deep
nesting, very long strings).
"""

from __future__ import annotations

import ipaddress
import json
import math
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from controlplane.fleet.codec import (
    MAX_RECORD_BYTES,
    RecordError,
    decode_record,
    encode_record,
)
from controlplane.fleet.model import (
    MAX_ERROR_CHARS,
    AvailableModel,
    GpuStats,
    LoadStats,
    ModelFailure,
    ModelInfo,
    ModelState,
    ReplicaRecord,
    ServerKind,
)

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- valid records ---------------------------------------------------------------------------

names = st.text(min_size=1, max_size=40)
maybe_empty = st.text(max_size=40)


def fraction() -> st.SearchStrategy[float]:
    return st.floats(0, 1)


def between(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


addresses = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str))

gpus = st.builds(
    GpuStats,
    index=st.integers(0, 1024),
    uuid=maybe_empty,
    util_gpu=fraction(),
    util_mem=fraction(),
    mem_used_bytes=st.integers(0, 2**50),
    mem_total_bytes=st.integers(0, 2**50),
    temperature_c=between(-50, 200),
    power_w=between(0, 1e5),
    power_limit_w=between(0, 1e5),
    throttled=st.booleans(),
    faulty=st.booleans(),
    fault_reason=maybe_empty,
)

failures = st.builds(
    ModelFailure,
    name=names,
    version=maybe_empty,
    op=st.sampled_from(["load", "unload"]),
    error=st.text(max_size=MAX_ERROR_CHARS),
    failures=st.integers(1, 10**9),
    permanent=st.booleans(),
)

available = st.builds(
    AvailableModel,
    name=names,
    version=maybe_empty,
    mem_bytes=st.integers(0, 2**50),
    load_s=between(0, 1e6),
    wake_s=between(0, 1e6),
)

records = st.builds(
    ReplicaRecord,
    replica_id=names,
    node=names,
    region=names,
    zone=maybe_empty,
    address=addresses,
    port=st.integers(1, 65535),
    server_kind=st.sampled_from(ServerKind),
    models=st.lists(
        st.builds(ModelInfo, name=names, version=names, state=st.sampled_from(ModelState)),
        max_size=5,
    ).map(tuple),
    load=st.builds(
        LoadStats,
        queue_waiting=between(0, 1e7),
        running=between(0, 1e7),
        kv_cache_usage=fraction(),
        prefix_cache_hit_rate=st.none() | fraction(),
    ),
    gpus=st.lists(gpus, max_size=3).map(tuple),
    timestamp=between(0, 1e11),
    speed=between(0.001, 1000),
    capacity=between(0.001, 1000),
    speed_measured=st.booleans(),
    draining=st.booleans(),
    failures=st.lists(failures, max_size=2).map(tuple),
    available=st.lists(available, max_size=2).map(tuple),
    sleeping=st.booleans(),
)

# -- bad input --------------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63, max_value=2**70) | st.integers(max_value=-(2**63)),
    st.floats(),  # NaN and +-inf included: json.dumps writes them as NaN/Infinity
    st.text(max_size=20),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=5).map(lambda s: s * 300),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def deep(depth: int) -> str:
    """JSON nested ``depth`` levels (lists and objects): deeper than ``json.dumps`` goes."""
    opens = "".join("[" if i % 2 else '{"k":' for i in range(depth))
    closes = "".join("]" if i % 2 else "}" for i in reversed(range(depth)))
    return opens + "1" + closes


DEEP = "\x00deep\x00"
"""Stands for a deeply nested value until the mutated document is serialized."""


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside ``doc`` (dict keys and list indexes)."""
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += paths(v, (*prefix, i))
    return out


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A valid record's JSON with one to three of its values replaced, deleted or added."""
    doc = json.loads(encode_record(draw(records)))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths(doc)))
        *parents, leaf = path
        target: Any = doc
        for p in parents:
            target = target[p]
        action = draw(st.sampled_from(["replace", "delete", "add", "deep", "long"]))
        if action == "delete":
            del target[leaf]
        elif action == "add" and isinstance(target, dict):
            target[draw(st.text(max_size=10))] = draw(json_values)
        elif action == "deep":
            target[leaf] = DEEP
        elif action == "long":
            target[leaf] = draw(st.sampled_from(["x", "é", "\U0001f600", "\ud800"])) * draw(
                st.integers(1000, 300_000)
            )
        else:
            target[leaf] = draw(json_values)
        if not paths(doc):
            break
    # allow_nan: NaN and Infinity reach the decoder
    return json.dumps(doc).replace(json.dumps(DEEP), deep(draw(st.integers(50, 5000))))


def check_valid(rec: ReplicaRecord) -> None:
    """What a decoded record promises ``decide()``."""
    ipaddress.ip_address(rec.address)
    assert 1 <= rec.port <= 65535
    assert rec.replica_id and rec.node and rec.region
    for x in (rec.timestamp, rec.speed, rec.capacity, rec.load.queue_waiting, rec.load.running):
        assert math.isfinite(x)
    assert 0 <= rec.load.kv_cache_usage <= 1
    h = rec.load.prefix_cache_hit_rate
    assert h is None or 0 <= h <= 1
    for g in rec.gpus:
        assert 0 <= g.util_gpu <= 1 and math.isfinite(g.temperature_c)
    assert decode_record(encode_record(rec)) == rec


def decode_or_refuse(raw: str | bytes) -> None:
    try:
        rec = decode_record(raw)
    except RecordError as e:
        assert str(e)  # a reason, for the log line
        return
    check_valid(rec)


# -- properties -------------------------------------------------------------------------------


@FUZZ
@given(records)
def test_every_valid_record_round_trips(rec: ReplicaRecord) -> None:
    raw = encode_record(rec)
    assert decode_record(raw) == rec
    assert decode_record(raw.encode()) == rec  # bytes, as Redis gives them


@FUZZ
@given(st.binary(max_size=2000))
@example(b"\xff\xfe{}")
@example(b'{"v":1,"models":' + b"[" * 100_000)
def test_arbitrary_bytes_decode_or_raise_record_error(raw: bytes) -> None:
    decode_or_refuse(raw)


@FUZZ
@given(json_values)
@example({"v": 1})
@example({"v": True, "models": []})
def test_arbitrary_json_decodes_or_raises_record_error(doc: Any) -> None:
    decode_or_refuse(json.dumps(doc))


@FUZZ
@given(mutated())
def test_mutated_records_decode_or_raise_record_error(raw: str) -> None:
    decode_or_refuse(raw)


@FUZZ
@given(st.text(max_size=300))
def test_arbitrary_text_decodes_or_raises_record_error(raw: str) -> None:
    decode_or_refuse(raw)


def test_deep_nesting_is_a_record_error_not_a_recursion_error() -> None:
    """Regression: ``json.loads`` raised RecursionError past ~1,000 levels."""
    for raw in ("[" * 100_000, '{"v":1,"models":' + "[" * 100_000, deep(5000), deep(50_000)):
        assert len(raw) <= MAX_RECORD_BYTES
        try:
            decode_record(raw)
        except RecordError as e:
            assert "nested too deeply" in str(e) or "not JSON" in str(e) or "field" in str(e)
        else:
            raise AssertionError("a nested document decoded")
