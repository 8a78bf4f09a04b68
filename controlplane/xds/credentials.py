"""gRPC server credentials for the xDS port (ADS and LRS share it): TLS with the control
plane's certificate, and with a client CA, mutual TLS that refuses every Envoy without a
certificate that CA signed.

Files are read once at start; rotate certificates by restarting (Envoys reconnect).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc


def server_credentials(cert: Path, key: Path, client_ca: Path | None = None) -> Any:
    """``grpc.ServerCredentials`` for ``cert``/``key``; with ``client_ca``, clients must
    present a certificate it signed (the TLS handshake fails otherwise)."""
    return grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())],
        root_certificates=client_ca.read_bytes() if client_ca is not None else None,
        require_client_auth=client_ca is not None,
    )
