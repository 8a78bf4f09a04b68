"""Transport security shared by the commands: certificate files checked up front (stdlib
``ssl``, so a bad file is reported by name before anything starts), and the context the CLI
verifies the API with.

Importable from anywhere: it imports the standard library only.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

API_CA_ENV = "AIXDS_API_CA"
"""Environment variable naming the CA file that signed the API's certificate (the CLI's
``--ca`` default)."""


def add_pem_flags(group: Any, *flags: tuple[str, str]) -> None:
    """Add ``(flag, help)`` options taking a PEM file path to an argparse ``group``."""
    for flag, text in flags:
        group.add_argument(flag, type=Path, metavar="PEM", help=text)


class TlsError(ValueError):
    """A certificate, key or CA file that cannot be used; the message names the flag."""


def _readable(flag: str, path: Path) -> None:
    if not path.is_file():
        raise TlsError(f"{flag} {path}: no such file")


def check_server_files(
    cert: Path, key: Path, client_ca: Path | None = None, *, flags: str = "--tls-cert/--tls-key"
) -> None:
    """Raise ``TlsError`` unless ``cert`` and ``key`` form a usable pair (and ``client_ca``,
    if given, holds at least one CA certificate)."""
    _readable(flags.split("/")[0], cert)
    _readable(flags.split("/")[-1], key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError, ValueError) as e:
        raise TlsError(f"{flags} {cert} / {key}: not a certificate and its key ({e})") from None
    if client_ca is not None:
        check_ca_file(client_ca, "--client-ca")


def check_ca_file(ca: Path, flag: str = "--ca") -> None:
    """Raise ``TlsError`` unless ``ca`` is a PEM file with at least one certificate."""
    _readable(flag, ca)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_verify_locations(cafile=str(ca))
    except (ssl.SSLError, OSError, ValueError) as e:
        raise TlsError(f"{flag} {ca}: not a PEM CA certificate ({e})") from None
    if not ctx.get_ca_certs():
        raise TlsError(f"{flag} {ca}: holds no CA certificate")


def client_verify(ca: str | Path | None) -> ssl.SSLContext | bool:
    """What an HTTPS client verifies the server with: the CA in ``ca``, else the system's
    trusted CAs (``True``). Raises ``TlsError`` for a CA file that cannot be used."""
    if not ca:
        return True
    path = Path(ca)
    check_ca_file(path)
    return ssl.create_default_context(cafile=str(path))


def verify_hint(err: BaseException, url: str) -> str:
    """A sentence for a failed API call that looks like a TLS mismatch, else ``""``."""
    text = str(err)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return (
            f" (the API's certificate is not trusted: pass --ca CA.pem or set {API_CA_ENV}"
            " to the CA that signed it)"
        )
    if url.startswith("http://") and ("disconnected" in text or "reset" in text.lower()):
        return " (is the API served over TLS? then use https://)"
    return ""
