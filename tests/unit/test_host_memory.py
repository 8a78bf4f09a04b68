"""``aixds agent --host-memory``: the node's budget for sleeping weights, and what the agent
publishes of it."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from controlplane.agent.host_memory import GIB, host_memory_bytes, meminfo_total_bytes
from controlplane.agent.main import config_from_args, configure_parser
from controlplane.agent.publisher import build_record
from controlplane.agent.servers.adapter import Probe
from controlplane.agent.servers.discovery import parse_server

MEMINFO = """MemTotal:       2113929216 kB
MemFree:        1000000000 kB
MemAvailable:   1900000000 kB
"""


def test_meminfo_total_is_read_in_bytes() -> None:
    assert meminfo_total_bytes(MEMINFO) == 2113929216 * 1024
    with pytest.raises(ValueError, match="no MemTotal"):
        meminfo_total_bytes("MemFree: 1 kB\n")
    with pytest.raises(ValueError, match="unreadable"):
        meminfo_total_bytes("MemTotal: lots\n")


def test_auto_takes_most_of_a_gpu_nodes_ram_and_nothing_on_a_simulated_one(
    tmp_path: Path,
) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(MEMINFO)
    assert host_memory_bytes("auto", "nvml", meminfo) == int(0.8 * 2113929216 * 1024)
    assert host_memory_bytes("auto", "sim", meminfo) == 0
    assert host_memory_bytes("auto", "none", meminfo) == 0
    with pytest.raises(ValueError, match="cannot read the node's RAM"):
        host_memory_bytes("auto", "nvml", tmp_path / "missing")


def test_gib_and_off() -> None:
    assert host_memory_bytes("96", "sim") == 96 * GIB
    assert host_memory_bytes("1.5", "nvml") == int(1.5 * GIB)
    assert host_memory_bytes("off", "nvml") == 0


@pytest.mark.parametrize("value", ["0", "-4", "nan", "inf", "lots", "1e9"])
def test_a_bad_value_says_what_is_wrong(value: str) -> None:
    with pytest.raises(ValueError, match="--host-memory"):
        host_memory_bytes(value, "sim")


def test_the_flag_reaches_every_record_of_the_node() -> None:
    p = argparse.ArgumentParser()
    configure_parser(p)
    base = ["--redis", "redis://127.0.0.1:1/0", "--node", "n1", "--region", "eu", "--zone", "z"]
    server = ["--server", "vllm=http://127.0.0.1:8001"]
    cfg = config_from_args(p.parse_args([*base, *server, "--host-memory", "64"]))
    assert cfg.host_mem_bytes == 64 * GIB
    target = cfg.target(parse_server("vllm=http://127.0.0.1:8001"))
    rec = build_record(target, Probe(reachable=True), (), 0.0)
    assert rec.host_mem_bytes == 64 * GIB
    # the default (auto) publishes nothing without a real GPU source
    assert config_from_args(p.parse_args([*base, *server])).host_mem_bytes == 0
    with pytest.raises(ValueError, match="--host-memory"):
        config_from_args(p.parse_args([*base, *server, "--host-memory", "big"]))
