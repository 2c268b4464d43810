"""The development control plane's server-side TLS: one description of the files, loaded in one place.

kuma-cp serves `/bootstrap` and ADS on one TLS port (TLS 1.2 minimum) and sends its certificate as the CA of
proxies whose request has no `caCert`. The dev CP's public front end (`server.DevControlPlane`, which routes
to the HTTP /bootstrap server and the gRPC ADS server) and the standalone HTTPS /bootstrap server
(`bootstrap_server.start_bootstrap_server`) both serve with the context built here, so their TLS cannot
drift apart.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ServerTLS", "TLSFiles", "load_server_tls"]


@dataclass(frozen=True)
class TLSFiles:
    """Certificate chain and key (PEM files) the server presents."""

    cert_file: str
    key_file: str
    #: The CA put in bootstraps whose request has no `caCert` (kuma-cp: its DP-server certificate); default:
    #: the certificate itself, right for a self-signed one.
    ca_file: str = ""


@dataclass(frozen=True)
class ServerTLS:
    """`TLSFiles` loaded: the server context and the PEM texts the bootstrap renderer needs."""

    context: ssl.SSLContext
    cert_pem: str
    ca_pem: str


def load_server_tls(files: TLSFiles, *, alpn: Sequence[str] = ()) -> ServerTLS:
    """Read the files once: a TLS 1.2+ server context (advertising `alpn` when given; a port that also
    carries gRPC offers "h2") and the certificate and CA PEMs."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(files.cert_file, files.key_file)
    if alpn:
        context.set_alpn_protocols(list(alpn))
    cert_pem = Path(files.cert_file).read_text()
    ca_pem = Path(files.ca_file).read_text() if files.ca_file else cert_pem
    return ServerTLS(context=context, cert_pem=cert_pem, ca_pem=ca_pem)
