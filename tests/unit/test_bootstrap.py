"""The Envoy bootstrap template: rendering, quoting, and ``envoy --mode validate``."""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane.proxy import runner
from controlplane.proxy.bootstrap import TEMPLATE_PATH, BootstrapParams, render_bootstrap


def _params(**kw: Any) -> BootstrapParams:
    base: dict[str, Any] = dict(
        node_id="edge-eu-1",
        region="eu-west",
        zone="eu-west-a",
        xds=(("127.0.0.1", 18000),),
        listen_address="0.0.0.0",
        listen_port=10000,
        admin_address="127.0.0.1",
        admin_port=9901,
    )
    return BootstrapParams(**{**base, **kw})


def _render(**kw: Any) -> str:
    return render_bootstrap(_params(**kw), TEMPLATE_PATH.read_text())


THREE = (("10.0.0.1", 18000), ("cp-b.local", 18001), ("::1", 18002))


def envoy_validate(cfg: Path) -> subprocess.CompletedProcess[str]:
    """``envoy --mode validate`` on the bootstrap file ``cfg``; asserts that it passed."""
    out = subprocess.run(
        [str(runner.envoy_binary()), "--mode", "validate", "-c", str(cfg), "--use-dynamic-base-id"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    return out


@pytest.mark.parametrize("kw", [{"role": "edge"}, {"role": "sidecar"}, {"xds": THREE}])
def test_rendered_bootstrap_passes_envoy_validate(kw: dict[str, Any], tmp_path: Path) -> None:
    cfg = tmp_path / "bootstrap.yaml"
    cfg.write_text(_render(**kw))
    out = envoy_validate(cfg)
    assert "deprecated" not in (out.stdout + out.stderr).lower()


def test_node_identity_and_metadata() -> None:
    doc = yaml.safe_load(_render(role="sidecar"))
    node = doc["node"]
    assert node["id"] == "edge-eu-1"
    assert node["cluster"] == "aixds-sidecar"
    assert node["locality"] == {"region": "eu-west", "zone": "eu-west-a"}
    assert node["metadata"] == {
        "role": "sidecar",
        "listen_address": "0.0.0.0",
        "listen_port": 10000,
    }
    assert doc["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9901}


def test_xds_cluster_speaks_http2_and_ads_is_v3() -> None:
    doc = yaml.safe_load(_render())
    (xds,) = doc["static_resources"]["clusters"]
    ep = xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert ep["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 18000}
    opts = xds["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert "http2_protocol_options" in opts["explicit_http_config"]
    dyn = doc["dynamic_resources"]
    assert dyn["ads_config"]["transport_api_version"] == "V3"
    assert dyn["ads_config"]["set_node_on_first_message_only"] is True
    for key in ("cds_config", "lds_config"):
        assert dyn[key]["resource_api_version"] == "V3"
        assert "ads" in dyn[key]


def test_several_control_planes_are_the_xds_clusters_endpoints() -> None:
    doc = yaml.safe_load(_render(xds=THREE))
    (xds,) = doc["static_resources"]["clusters"]
    (group,) = xds["load_assignment"]["endpoints"]
    got = [e["endpoint"]["address"]["socket_address"] for e in group["lb_endpoints"]]
    assert got == [{"address": h, "port_value": p} for h, p in THREE]
    # round robin: after a failed try the next one goes to another control plane
    assert xds["lb_policy"] == "ROUND_ROBIN"
    # ADS and load reports both use that cluster
    dyn = doc["dynamic_resources"]["ads_config"]["grpc_services"]
    lrs = doc["cluster_manager"]["load_stats_config"]["grpc_services"]
    assert dyn == lrs == [{"envoy_grpc": {"cluster_name": "xds_cluster"}}]


def test_values_stay_strings_and_cannot_inject_yaml() -> None:
    tricky = 'a"b: {c}\n- d'
    doc = yaml.safe_load(_render(region="no", zone="1", node_id=tricky, xds=(("::1", 1),)))
    assert doc["node"]["locality"] == {"region": "no", "zone": "1"}
    assert doc["node"]["id"] == tricky
    code = [line for line in _render().splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in code if "$" in line]


@pytest.mark.parametrize(
    "kw",
    [
        {"role": "gateway"},
        {"admin_port": 70000},
        {"node_id": ""},
        {"region": ""},
        {"xds": ()},
        {"xds": (("a", 1), ("a", 1))},
        {"xds": (("a", 1), ("", 2))},
        {"xds": (("a", 1), ("b", 65536))},
    ],
)
def test_bad_params_are_rejected(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        _render(**kw)


def _parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    runner.configure_parser(p)
    return p.parse_args(list(argv))


def test_cli_arguments_become_params() -> None:
    args = _parse(
        "--xds", "cp.local:18000", "--node-id", "n1", "--region", "us", "--zone", "us-a",
        "--role", "sidecar", "--listen", "[::1]:10000", "--admin", "127.0.0.1:9901",
        "--log-level", "info", "--concurrency", "2",
    )  # fmt: skip
    p = runner.params_from_args(args)
    assert (p.xds_host, p.xds_port, p.listen_address, p.listen_port) == (
        "cp.local",
        18000,
        "::1",
        10000,
    )
    assert (p.role, p.zone, p.admin_port) == ("sidecar", "us-a", 9901)
    assert args.envoy_log_level == "info"  # not the top-level --log-level of aixds
    argv = runner.envoy_argv(Path("/tmp/b.yaml"), args.envoy_log_level, args.concurrency)
    assert argv[1:] == ["-c", "/tmp/b.yaml", "--use-dynamic-base-id", "--log-level", "info",
                        "--concurrency", "2"]  # fmt: skip
    for bad in ("nohostport", "a:1,", "a:1,a:1", "a:1,b"):
        with pytest.raises(SystemExit):
            _parse("--xds", bad, "--node-id", "n", "--region", "r", "--listen", "a:1",
                   "--admin", "a:2")  # fmt: skip


def test_cli_takes_several_control_planes() -> None:
    args = _parse(
        "--xds", "cp-a:18000, cp-b:18000,[::1]:18001", "--node-id", "n1", "--region", "us",
        "--listen", "127.0.0.1:10000", "--admin", "127.0.0.1:9901",
    )  # fmt: skip
    p = runner.params_from_args(args)
    assert p.xds == (("cp-a", 18000), ("cp-b", 18000), ("::1", 18001))
    assert (p.xds_host, p.xds_port) == ("cp-a", 18000)


def test_print_bootstrap(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(
        "--xds", "127.0.0.1:18000", "--node-id", "n1", "--region", "us",
        "--listen", "127.0.0.1:10000", "--admin", "127.0.0.1:9901", "--print-bootstrap",
    )  # fmt: skip
    assert runner.run(args) == 0
    assert yaml.safe_load(capsys.readouterr().out)["node"]["id"] == "n1"


def test_envoy_binary_is_executable() -> None:
    path = runner.envoy_binary()
    assert path.is_file() and os.access(path, os.X_OK)
