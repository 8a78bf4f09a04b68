"""gRPC server credentials for the xDS port (ADS and LRS share it): TLS with the control
plane's certificate, and with a client CA, mutual TLS that refuses every Envoy without a
certificate that CA signed.

The files are read again when they change (compared at each new connection, before its
handshake): replace the certificate, key or CA in place and new connections use them, while
open streams keep theirs. A pair that does not match yet (the certificate written, not yet
its key) is not taken; the server keeps the last good files until it does.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import grpc

from controlplane.tls import check_server_files

log = logging.getLogger(__name__)


class _Files:
    """The certificate files and the version of them in use."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None) -> None:
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self.used = self._stamp()
        self.refused: tuple[bytes, ...] | None = None

    def _stamp(self) -> tuple[bytes, ...]:
        """The files' contents (a few KB; compared, not their times, which a coarse file
        system may not advance between two quick writes)."""
        paths = [self.cert, self.key, *([self.client_ca] if self.client_ca else [])]
        return tuple(p.read_bytes() for p in paths)

    def config(self) -> Any:
        """The files as a ``grpc.ServerCertificateConfiguration``; ``TlsError`` if unusable."""
        check_server_files(self.cert, self.key, self.client_ca)
        return grpc.ssl_server_certificate_configuration(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=self.client_ca.read_bytes() if self.client_ca else None,
        )

    def changed(self) -> Any:
        """A new configuration if the files changed and are usable, else None (keep)."""
        try:
            now = self._stamp()
        except OSError:  # a file is being replaced: look again at the next connection
            return None
        if now in (self.used, self.refused):
            return None
        try:
            config = self.config()
        except (OSError, ValueError) as e:  # TlsError is a ValueError
            self.refused = now  # said once per version of the files
            log.warning("xDS TLS files changed but cannot be used (%s): keeping the last", e)
            return None
        self.used = now
        log.info("xDS TLS: certificate files reloaded")
        return config


def server_credentials(cert: Path, key: Path, client_ca: Path | None = None) -> Any:
    """``grpc.ServerCredentials`` for ``cert``/``key``; with ``client_ca``, clients must
    present a certificate it signed (the TLS handshake fails otherwise). The files are
    reloaded when they change (module docstring)."""
    files = _Files(cert, key, client_ca)
    return grpc.dynamic_ssl_server_credentials(
        files.config(),
        files.changed,
        require_client_authentication=client_ca is not None,
    )
