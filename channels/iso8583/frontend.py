"""The ISO 8583 listener's handler in a front-end (`tally gateway --iso8583`).

The adapter is the one-process adapter (channels/iso8583/adapter.py) on
`LinkServices`: the parse, the MAC, the PIN block and the response are the
front-end's work; every service call (the posting, the PIN's password check, the
channel's rate, a key exchange) is the core's, over the core link.

The terminals are resolved against the channel registry in force at the core, which
the front-end fetches over the link (channels/frontend.py): until the first arrives,
a message waits for it (at most `REGISTRY_WAIT_S`, then it is not answered: its
terminal times out and retries); a registry that does not resolve this front-end's
terminal file is logged and the terminals stay as they were.
"""

from __future__ import annotations

import logging
import os

import anyio
import orjson

from channels.iso8583.adapter import Iso8583Adapter
from channels.iso8583.keys import SoftwareKeyStore
from channels.iso8583.services import LinkServices
from channels.iso8583.terminals import TerminalEntry, TerminalRegistryError, resolve
from channels.registry import Registry
from core.link.client import LinkClient

logger = logging.getLogger("tally.iso8583")
REGISTRY_WAIT_S = 10.0


class TerminalFrontEnd:
    """`MessageHandler` of a front-end's ISO 8583 listener (module docstring)."""

    def __init__(
        self,
        link: LinkClient,
        entries: dict[str, TerminalEntry],
        keys: SoftwareKeyStore,
        source: str | os.PathLike[str],
    ) -> None:
        self.services = LinkServices(link)
        self.entries = entries
        self.keys = keys
        self.source = os.fspath(source)
        self.adapter: Iso8583Adapter | None = None
        self._ready = anyio.Event()

    def install_registry(self, registry: Registry) -> None:
        """Resolve the terminals under the core's registry (a new one, or the first)."""
        try:
            terminals = resolve(self.entries, registry, self.keys, self.source)
        except TerminalRegistryError as error:
            logger.error(
                orjson.dumps(
                    {"event": "iso8583_terminals_unresolved", "registry": registry.version,
                     "problems": error.problems[:20]}
                ).decode()
            )  # fmt: skip
            return
        if self.adapter is None:
            self.adapter = Iso8583Adapter(self.services, terminals, self.keys)
            self._ready.set()
        else:
            self.adapter.terminals = terminals

    async def handle(self, message: bytes) -> bytes | None:
        adapter = self.adapter
        if adapter is None:
            with anyio.move_on_after(REGISTRY_WAIT_S):
                await self._ready.wait()
            adapter = self.adapter
            if adapter is None:
                logger.warning(orjson.dumps({"event": "iso8583_no_registry_yet"}).decode())
                return None
        return await adapter.handle(message)
