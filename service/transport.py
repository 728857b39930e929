"""The SCP's association server and DICOM TLS (PS3.15 B.1, BCP 195: TLS 1.2 or
later) for the SCP and the export SCU: the standard library's `ssl` contexts,
handed to pynetdicom.

The server's handshake runs in each association's own thread, bounded by
the network timeout, not in the accepting thread: a client that connects
and never completes its handshake must not stop everyone else from
connecting (pynetdicom's default server wraps the socket while accepting).
"""
from __future__ import annotations

import socket
import ssl
from pathlib import Path

from pynetdicom.transport import ThreadedAssociationServer

__all__ = ["server_context", "client_context", "AssociationServer", "SharedPortServer"]


def _load(context: ssl.SSLContext, certificate: Path | None, private_key: Path | None,
          ca_certificates: Path | None) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if certificate is not None:
            context.load_cert_chain(str(certificate), str(private_key) if private_key else None)
        if ca_certificates is not None:
            context.load_verify_locations(cafile=str(ca_certificates))
    except (OSError, ssl.SSLError) as e:
        # Names the files, never their content.
        raise ValueError(f"cannot load the TLS files ({type(e).__name__}: {e.strerror or getattr(e, 'reason', '') or e})") \
            from e
    return context


def server_context(certificate: Path, private_key: Path, ca_certificates: Path | None = None,
                   require_client_certificate: bool = False) -> ssl.SSLContext:
    """The SCP's context.

    Parameters
    ----------
    certificate, private_key : Path
        PEM files of the server's certificate (chain) and its key.
    ca_certificates : Path, optional
        PEM bundle of the authorities whose client certificates are trusted;
        without it client certificates are not asked for.
    require_client_certificate : bool
        Refuse clients without a certificate from ``ca_certificates``.

    Raises
    ------
    ValueError
        A file is missing or not a valid PEM certificate/key, or a client
        certificate is required without authorities to check it against.
    """
    if require_client_certificate and ca_certificates is None:
        raise ValueError("require_client_certificate needs ca_certificates to check client certificates against")
    context = _load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), certificate, private_key, ca_certificates)
    if require_client_certificate:
        context.verify_mode = ssl.CERT_REQUIRED
    elif ca_certificates is not None:
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def client_context(ca_certificates: Path | None = None, certificate: Path | None = None,
                   private_key: Path | None = None, check_hostname: bool = True) -> ssl.SSLContext:
    """The export SCU's context: verifies the destination's certificate
    (against ``ca_certificates``, else the system's authorities) and, with
    ``certificate``/``private_key``, presents a client certificate."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = check_hostname
    return _load(context, certificate, private_key, ca_certificates)


class AssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, with the TLS handshake deferred to the
    association's thread (OpenSSL completes it on the first read) and the
    accepted socket bounded by ``network_timeout``."""

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client, address = self.socket.accept()
        if self.ssl_context:
            client.settimeout(self.ae.network_timeout)
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address


class SharedPortServer(AssociationServer):
    """An association server whose port other receiver processes share
    (SO_REUSEPORT: the kernel hands each new connection to one of them)."""

    def server_bind(self) -> None:
        assert self.socket is not None
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()
