"""Where the core link listens and how a front-end reaches it.

`unix:/path/to/socket` on one machine (the socket file is the core's alone, mode 0600);
`tls:host:port` between machines, TLS with mutual authentication: the core shows its
certificate and demands one from the front-end, each checked against the link's CA
(`--link-ca`). A front-end whose certificate the CA did not sign fails the handshake,
logged as `link_refused` with the reason, before it can send a frame. Both ways the
HELLO then carries the link's shared secret.
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
from dataclasses import dataclass
from typing import Any

import anyio
import orjson
from anyio.abc import Listener
from anyio.streams.tls import TLSListener

from core.link.client import Connect, connect_tls, connect_unix

logger = logging.getLogger("tally.link")


@dataclass(frozen=True, slots=True)
class LinkAddress:
    kind: str  # "unix" or "tls"
    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.kind == "unix" else f"tls:{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files: this side's certificate chain and key, and the CA that signs the other's."""

    certfile: str
    keyfile: str
    cafile: str


def parse_link_address(text: str) -> LinkAddress:
    """`unix:PATH` or `tls:HOST:PORT`; ValueError saying what is wrong."""
    if text.startswith("unix:") and len(text) > 5:
        return LinkAddress("unix", path=text[5:])
    if text.startswith("tls:"):
        host, _, port = text[4:].rpartition(":")
        if host and port.isdigit() and 0 < int(port) < 65536:
            return LinkAddress("tls", host=host.strip("[]"), port=int(port))
    raise ValueError(f"{text!r} is neither unix:PATH nor tls:HOST:PORT")


def read_secret(path: str) -> bytes:
    """The link's shared secret from its file (whitespace around it ignored); ValueError
    if others may read the file or it holds fewer than 16 characters."""
    with open(path, "rb") as file:
        if os.fstat(file.fileno()).st_mode & 0o077:
            raise ValueError(f"{path}: a link secret must be readable by its owner only (600)")
        secret = file.read().strip()
    if len(secret) < 16:
        raise ValueError(f"{path}: a link secret of {len(secret)} characters (16 at least)")
    try:
        secret.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: the link secret must be ASCII") from None
    return secret


def server_context(files: TlsFiles) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=files.cafile)
    context.load_cert_chain(files.certfile, files.keyfile)
    context.verify_mode = ssl.CERT_REQUIRED  # mutual: no client certificate, no link
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def client_context(files: TlsFiles) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=files.cafile)
    context.load_cert_chain(files.certfile, files.keyfile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class _LoggedTLSListener(TLSListener):
    @staticmethod
    async def handle_handshake_error(exc: BaseException, stream: Any) -> None:
        logger.warning(
            orjson.dumps(
                {"event": "link_refused", "reason": f"TLS handshake: {exc!r}"[:300]}
            ).decode()
        )
        with anyio.CancelScope(shield=True):
            await anyio.aclose_forcefully(stream)
        if not isinstance(exc, Exception):
            raise exc


async def open_link_listener(address: LinkAddress, tls: TlsFiles | None) -> Listener[Any]:
    """The listener for `address` (a stale socket file of a dead core is replaced)."""
    if address.kind == "unix":
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address.path)
        listener = await anyio.create_unix_listener(address.path, mode=0o600)
        return listener
    if tls is None:
        raise ValueError("a tls: link needs --link-cert, --link-key and --link-ca")
    tcp = await anyio.create_tcp_listener(local_host=address.host, local_port=address.port)
    return _LoggedTLSListener(tcp, server_context(tls), standard_compatible=False)


def link_connector(address: LinkAddress, tls: TlsFiles | None) -> Connect:
    if address.kind == "unix":
        return connect_unix(address.path)
    if tls is None:
        raise ValueError("a tls: link needs --link-cert, --link-key and --link-ca")
    return connect_tls(address.host, address.port, client_context(tls))
