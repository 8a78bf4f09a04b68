"""Transport security, the pure parts: the xDS cluster's TLS in the Envoy bootstrap (and
``envoy --mode validate`` on it), the flags' checks and their messages."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from controlplane.proxy import runner
from controlplane.proxy.bootstrap import TEMPLATE_PATH, BootstrapParams, XdsTls, render_bootstrap
from controlplane.settings import ConfigError, ServeSettings
from controlplane.tls import TlsError, check_server_files, client_verify, verify_hint
from tests.tls_certs import Issued, Pki
from tests.unit.test_bootstrap import THREE, envoy_validate


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Issued]:
    p = Pki(tmp_path_factory.mktemp("pki"))
    ca = p.ca("ca")
    return {
        "ca": ca,
        "server": p.issue(ca, "server"),
        "client": p.issue(ca, "client", client=True),
    }


def _params(tls: XdsTls | None, host: str = "127.0.0.1") -> BootstrapParams:
    return BootstrapParams(
        node_id="edge-1",
        region="us",
        xds=((host, 18000),),
        listen_address="127.0.0.1",
        listen_port=10000,
        admin_address="127.0.0.1",
        admin_port=9901,
        xds_tls=tls,
    )


def xds_cluster(tls: XdsTls | None, host: str = "127.0.0.1") -> dict[str, Any]:
    doc = yaml.safe_load(render_bootstrap(_params(tls, host), TEMPLATE_PATH.read_text()))
    (c,) = [c for c in doc["static_resources"]["clusters"] if c["name"] == "xds_cluster"]
    return c  # type: ignore[no-any-return]


def test_plaintext_has_no_transport_socket() -> None:
    assert "transport_socket" not in xds_cluster(None)


def test_mutual_tls_to_an_ip(pki: dict[str, Issued]) -> None:
    tls = XdsTls(pki["ca"].cert, pki["client"].cert, pki["client"].key)
    ts = xds_cluster(tls)["transport_socket"]
    assert ts["name"] == "envoy.transport_sockets.tls"
    ctx = ts["typed_config"]
    assert ctx["@type"].endswith("tls.v3.UpstreamTlsContext")
    assert "sni" not in ctx  # no SNI for an IP literal
    common = ctx["common_tls_context"]
    assert common["alpn_protocols"] == ["h2"]
    assert common["tls_certificates"] == [
        {
            "certificate_chain": {"filename": str(pki["client"].cert)},
            "private_key": {"filename": str(pki["client"].key)},
        }
    ]
    assert common["validation_context"] == {
        "trusted_ca": {"filename": str(pki["ca"].cert)},
        "match_typed_subject_alt_names": [
            {"san_type": "IP_ADDRESS", "matcher": {"exact": "127.0.0.1"}}
        ],
    }


def test_server_name_by_dns_sets_sni_and_san(pki: dict[str, Issued]) -> None:
    ctx = xds_cluster(XdsTls(pki["ca"].cert), "cp.internal")["transport_socket"]["typed_config"]
    assert ctx["sni"] == "cp.internal"
    common = ctx["common_tls_context"]
    assert "tls_certificates" not in common  # TLS without a client certificate
    assert common["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "cp.internal"}}
    ]
    ctx = xds_cluster(XdsTls(pki["ca"].cert, server_name="cp.example"), "10.0.0.1")[
        "transport_socket"
    ]["typed_config"]
    assert ctx["sni"] == "cp.example"


def test_several_control_planes_any_of_their_names(pki: dict[str, Issued]) -> None:
    p = _params(XdsTls(pki["ca"].cert))
    three = BootstrapParams(**{**{f: getattr(p, f) for f in p.__slots__}, "xds": THREE})
    doc = yaml.safe_load(render_bootstrap(three, TEMPLATE_PATH.read_text()))
    (c,) = [c for c in doc["static_resources"]["clusters"] if c["name"] == "xds_cluster"]
    ctx = c["transport_socket"]["typed_config"]
    assert "sni" not in ctx  # one SNI cannot name three servers
    assert ctx["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "IP_ADDRESS", "matcher": {"exact": "10.0.0.1"}},
        {"san_type": "DNS", "matcher": {"exact": "cp-b.local"}},
        {"san_type": "IP_ADDRESS", "matcher": {"exact": "::1"}},
    ]


def test_tls_bootstrap_passes_envoy_validate(pki: dict[str, Issued], tmp_path: Path) -> None:
    cfg = tmp_path / "bootstrap.yaml"
    tls = XdsTls(pki["ca"].cert, pki["client"].cert, pki["client"].key)
    cfg.write_text(render_bootstrap(_params(tls), TEMPLATE_PATH.read_text()))
    envoy_validate(cfg)


def test_template_without_the_tls_line_is_refused(pki: dict[str, Issued]) -> None:
    template = TEMPLATE_PATH.read_text().replace("${XDS_TLS}", "")
    render_bootstrap(_params(None), template)  # plaintext: fine
    with pytest.raises(ValueError, match="XDS_TLS"):
        render_bootstrap(_params(XdsTls(pki["ca"].cert)), template)
    with pytest.raises(ValueError, match="needs its key"):
        render_bootstrap(
            _params(XdsTls(pki["ca"].cert, cert=pki["client"].cert)), TEMPLATE_PATH.read_text()
        )


def envoy_args(*extra: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    runner.configure_parser(p)
    base = ["--xds", "127.0.0.1:18000", "--node-id", "e", "--region", "us"]
    return p.parse_args([*base, "--listen", "127.0.0.1:1", "--admin", "127.0.0.1:2", *extra])


def test_envoy_flags(pki: dict[str, Issued], tmp_path: Path, capsys: Any) -> None:
    ca, client = str(pki["ca"].cert), pki["client"]
    assert runner.xds_tls_from_args(envoy_args()) is None
    with pytest.raises(TlsError, match="need --ca"):
        runner.xds_tls_from_args(envoy_args("--tls-cert", str(client.cert)))
    with pytest.raises(TlsError, match="go together"):
        runner.xds_tls_from_args(envoy_args("--ca", ca, "--tls-cert", str(client.cert)))
    with pytest.raises(TlsError, match="no such file"):
        runner.xds_tls_from_args(envoy_args("--ca", str(tmp_path / "nope.pem")))
    with pytest.raises(TlsError, match="not a certificate and its key"):
        runner.xds_tls_from_args(
            envoy_args("--ca", ca, "--tls-cert", str(client.cert), "--tls-key", str(pki["ca"].key))
        )
    with pytest.raises(TlsError, match="needs --ca"):
        runner.xds_tls_from_args(envoy_args("--xds-server-name", "cp"))
    rel = envoy_args("--ca", ca, "--tls-cert", str(client.cert), "--tls-key", str(client.key))
    tls = runner.xds_tls_from_args(rel)
    assert tls is not None and tls.cert == client.cert.resolve() and tls.ca.is_absolute()
    # `aixds envoy` says what is wrong and exits 2 before starting Envoy.
    assert runner.run(envoy_args("--tls-cert", str(client.cert), "--print-bootstrap")) == 2
    assert "need --ca" in capsys.readouterr().err


def test_serve_tls_settings(pki: dict[str, Issued], tmp_path: Path) -> None:
    server, ca = pki["server"], pki["ca"].cert
    ServeSettings().check_tls()
    ServeSettings(tls_cert=server.cert, tls_key=server.key, client_ca=ca).check_tls()
    with pytest.raises(ConfigError, match="go together"):
        ServeSettings(tls_cert=server.cert).check_tls()
    with pytest.raises(ConfigError, match="needs --tls-cert"):
        ServeSettings(client_ca=ca).check_tls()
    with pytest.raises(ConfigError, match=r"--client-ca .*: not a PEM CA"):
        ServeSettings(tls_cert=server.cert, tls_key=server.key, client_ca=server.key).check_tls()
    with pytest.raises(ConfigError, match=r"--api-tls-cert/--api-tls-key .* not a certificate"):
        ServeSettings(api_tls_cert=server.cert, api_tls_key=pki["client"].key).check_tls()
    assert ServeSettings().api_tls() is None
    both = ServeSettings(tls_cert=server.cert, tls_key=server.key)
    assert both.api_tls() == (server.cert, server.key)
    assert both.xds_security() == "TLS, no client certificates"
    other = ServeSettings(
        tls_cert=server.cert, tls_key=server.key, api_tls_cert=ca, api_tls_key=server.key
    )
    assert other.api_tls() == (ca, server.key)
    with pytest.raises(TlsError, match="no such file"):
        check_server_files(tmp_path / "a.pem", server.key)


def test_client_verify_and_hints(pki: dict[str, Issued], tmp_path: Path) -> None:
    assert client_verify("") is True
    assert client_verify(pki["ca"].cert) is not True
    (tmp_path / "empty.pem").write_text("")
    with pytest.raises(TlsError, match=r"empty\.pem: not a PEM CA certificate"):
        client_verify(tmp_path / "empty.pem")
    with pytest.raises(TlsError, match="holds no CA certificate"):
        client_verify(pki["server"].cert)  # a leaf, not a CA
    err = httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    assert "--ca" in verify_hint(err, "https://cp:18080")
    gone = httpx.RemoteProtocolError("Server disconnected without sending a response.")
    assert "https://" in verify_hint(gone, "http://cp:18080")
    assert verify_hint(httpx.ConnectError("refused"), "http://cp:18080") == ""
