"""Discovery: ``--server`` flags, ``agent.yaml``, and Docker containers by label.

Docker is tested with the real Docker SDK client against ``FakeDockerEngine``, which
serves recorded Engine API responses over a real socket (no SDK internals are patched).
"""

from __future__ import annotations

import logging
from pathlib import Path

import docker
import pytest

from controlplane.agent.servers.discovery import (
    MAX_SERVERS,
    Discovery,
    ServerSpec,
    load_config,
    parse_server,
)
from controlplane.agent.servers.docker_source import DockerSource, spec_from_container
from controlplane.fleet.model import ServerKind
from tests.unit.fake_docker import FakeDockerEngine, recorded

NODE_IP = "192.0.2.10"


# -- flags and config file -------------------------------------------------------------------
def test_parse_server() -> None:
    s = parse_server("TRITON=http://10.0.0.5:8000/")
    assert (s.kind, s.url, s.host, s.port, s.replica_name) == (
        ServerKind.TRITON,
        "http://10.0.0.5:8000",
        "10.0.0.5",
        8000,
        "triton-8000",
    )
    assert parse_server("ollama=https://gpu").port == 443


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("vllm", "KIND=URL"),
        ("llamacpp=http://h:1", "unknown server kind"),
        ("tgi=ftp://h", "must be http"),
    ],
)
def test_parse_server_errors(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_server(value)


CONFIG = """\
servers:
  - kind: vllm
    url: http://127.0.0.1:8001
    versions: {meta-llama/Llama-3.1-8B-Instruct: v2, tiny: 3}
  - kind: triton
    url: http://127.0.0.1:8100
    name: triton-a
    metrics_url: http://127.0.0.1:8102/metrics
"""


def test_config_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(CONFIG)
    a, b = load_config(path)
    assert (a.kind, a.port, a.replica_name, a.origin) == (
        ServerKind.VLLM,
        8001,
        "vllm-8001",
        "config",
    )
    assert dict(a.versions) == {"meta-llama/Llama-3.1-8B-Instruct": "v2", "tiny": "3"}
    assert (b.replica_name, b.metrics_url) == ("triton-a", "http://127.0.0.1:8102/metrics")
    path.write_text("- {kind: ollama, url: 'http://127.0.0.1:11434'}\n")  # a bare list works too
    assert [s.kind for s in load_config(path)] == [ServerKind.OLLAMA]
    path.write_text("")
    assert load_config(path) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- {kind: vllm, url: 'http://h:1', port: 3}\n", r"servers\[0\]: unknown key"),
        ("- {kind: vllm}\n", "'url' is required"),
        ("- {kind: vllm, url: 'http://h:1', name: 'a/b'}\n", "name"),
        ("- {kind: foo, url: 'http://h:1'}\n", "unknown server kind"),
        ("- {kind: vllm, url: 'http://h:1', versions: [1]}\n", "versions"),
        ("servers: {kind: vllm}\n", "expected a list"),
        ("{a: [\n", "not YAML"),
        ("- 3\n", "not a mapping"),
    ],
)
def test_config_file_errors_name_the_entry(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config(path)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")


async def test_discovery_merges_resolves_and_keeps_the_last_good_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(CONFIG + "  - {kind: sglang, url: 'http://localhost:30000'}\n")
    flag = parse_server("vllm=http://127.0.0.1:8001")  # same replica name as the file's first
    d = Discovery([flag], path)
    specs = await d.scan()
    assert [(s.replica_name, s.origin, s.address) for s in specs] == [
        ("vllm-8001", "flag", "127.0.0.1"),
        ("triton-a", "config", "127.0.0.1"),
        ("sglang-30000", "config", "127.0.0.1"),  # 'localhost' resolved: records carry IPs
    ]
    path.write_text("- {kind: nonsense}\n")
    with caplog.at_level(logging.ERROR):
        assert await d.scan() == specs
        assert await d.scan() == specs
    assert sum("keeping the last good list" in r.message for r in caplog.records) == 1


async def test_advertise_and_wildcards() -> None:
    wild = parse_server("vllm=http://0.0.0.0:8000")
    assert await Discovery([wild]).scan() == []  # no address Envoy could use: not published
    (s,) = await Discovery([wild], advertise="10.9.8.7").scan()
    assert s.address == "10.9.8.7"


async def test_at_most_max_servers() -> None:
    flags = [parse_server(f"vllm=http://127.0.0.1:{9000 + i}") for i in range(MAX_SERVERS + 5)]
    assert len(await Discovery(flags).scan()) == MAX_SERVERS


# -- Docker ----------------------------------------------------------------------------------
def test_container_with_wildcard_binding_advertises_the_node_address() -> None:
    s = spec_from_container(recorded("container-vllm-a.json"), NODE_IP)
    assert (s.kind, s.url, s.port, s.address) == (
        ServerKind.VLLM,
        "http://127.0.0.1:32768",
        32768,
        NODE_IP,
    )
    assert s.replica_name == "vllm-32768"
    assert dict(s.versions) == {"meta-llama/Llama-3.1-8B-Instruct": "v2"}
    assert s.origin == "docker:vllm-a"


def test_container_with_specific_host_ip_and_triton_metrics_port() -> None:
    s = spec_from_container(recorded("container-triton-b.json"), NODE_IP)
    assert (s.url, s.address, s.replica_name) == ("http://10.0.0.5:18000", "10.0.0.5", "triton-b")
    assert s.metrics_url == "http://10.0.0.5:18002/metrics"


def test_container_with_one_port_and_no_port_label() -> None:
    s = spec_from_container(recorded("container-sglang-c.json"), NODE_IP)
    assert (s.url, s.port, s.address) == ("http://127.0.0.1:30001", 30001, "127.0.0.1")


def test_container_on_the_host_network() -> None:
    s = spec_from_container(recorded("container-ollama.json"), NODE_IP)
    assert (s.url, s.port, s.address) == ("http://127.0.0.1:11434", 11434, NODE_IP)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("container-llamacpp.json", "unknown server kind"),
        ("container-tgi-unpublished.json", "not published"),
    ],
)
def test_containers_that_describe_no_usable_server(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        spec_from_container(recorded(name), NODE_IP)


def test_container_label_errors() -> None:
    doc = recorded("container-vllm-a.json")
    doc["Config"]["Labels"] = {"aixds.kind": "vllm"}
    doc["NetworkSettings"]["Ports"]["9000/tcp"] = [{"HostIp": "0.0.0.0", "HostPort": "9000"}]
    with pytest.raises(ValueError, match=r"aixds\.port"):
        spec_from_container(doc, NODE_IP)
    doc["Config"]["Labels"] = {"aixds.kind": "vllm", "aixds.port": "8000", "aixds.name": "no/slash"}
    with pytest.raises(ValueError, match=r"aixds\.name"):
        spec_from_container(doc, NODE_IP)
    doc["State"]["Running"] = False
    with pytest.raises(ValueError, match="not running"):
        spec_from_container(doc, NODE_IP)


def _source(engine: FakeDockerEngine) -> DockerSource:
    return DockerSource(lambda: docker.DockerClient(base_url=engine.docker_url, timeout=5), NODE_IP)


async def test_docker_source_through_the_sdk() -> None:
    with FakeDockerEngine() as engine:
        src = _source(engine)
        try:
            specs = await src.scan()
        finally:
            src.close()
        assert sorted(s.origin for s in specs) == [
            "docker:ollama",
            "docker:sglang-c",
            "docker:triton-b",
            "docker:vllm-a",
        ]
        listed = [r for r in engine.requests if r.path.endswith("/containers/json")]
        assert listed and '"aixds.kind"' in listed[0].query["filters"][0]
        assert any(r.path == "/version" for r in engine.requests)


async def test_containers_come_and_go_and_an_outage_keeps_the_last_list() -> None:
    with FakeDockerEngine() as engine:
        src = _source(engine)
        d = Discovery([], docker=src.scan, advertise=None)
        try:
            first = {s.replica_name for s in await d.scan()}
            assert first == {"vllm-32768", "triton-b", "sglang-30001", "ollama-11434"}
            engine.present.discard("vllm-a")
            assert {s.replica_name for s in await d.scan()} == first - {"vllm-32768"}
            engine.present.add("vllm-a")
            engine.down = True
            assert {s.replica_name for s in await d.scan()} == first - {"vllm-32768"}
            engine.down = False
            assert {s.replica_name for s in await d.scan()} == first
        finally:
            src.close()


async def test_advertise_overrides_container_addresses() -> None:
    with FakeDockerEngine() as engine:
        src = _source(engine)
        try:
            specs = await Discovery([], docker=src.scan, advertise="10.1.1.1").scan()
        finally:
            src.close()
        assert {s.address for s in specs} == {"10.1.1.1"}


def test_version_map_layers() -> None:
    s = ServerSpec(ServerKind.VLLM, "http://h:1", "h", 1, versions=(("a", "x"),))
    assert s.version_map({"a": "global", "b": "g"}) == {"a": "x", "b": "g"}
