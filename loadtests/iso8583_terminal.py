"""A simulator of ATMs and POS terminals speaking ISO 8583 to Tally over TCP.

    terminal = Terminal(TerminalProfile("ATM00001", "atm", pin_key, mac_key))
    async with open_connection("127.0.0.1", 8583) as connection:
        reply = await connection.exchange(terminal.cash_withdrawal(card, 10_000))
        assert reply.code == "00" and terminal.verify(reply)

What a terminal does, as docs/iso8583.md specifies it: each message gets the
terminal's next STAN (field 11) and the transmission date-time (field 7), the
card's PIN travels as an ISO 9564 format 0 block under the terminal's PIN key
(field 52), and the message is signed with the terminal's MAC key (field 64,
or 128 when a field above 64 is present). The codec, the PIN block and the MAC
are the channel's own (`channels.iso8583.spec`, `.keys`, `.framing`): the
simulator builds messages, it does not reimplement the profile.

Many terminals share one connection, as terminals behind a concentrator do:
`TerminalConnection` sends any terminal's message whole and matches each
response to its request by terminal id + STAN (fields 41 and 11, which the
answer echoes), whatever order the answers come in. A request carries
everything a repeat or a reversal needs (`Request.fields`), so a terminal that
timed out sends `terminal.repeat(request)` (the very same bytes: same STAN,
same field 7, so the bank answers with the first response) or
`terminal.reversal(request)` (a 0400 naming it in field 90).

`tally bench iso8583` (loadtests/iso8583_bench.py) drives this with
pre-built messages; `BlockingConnection` is the same exchange on a plain
socket, for a Locust user or a quick script.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Final

import anyio
from anyio.abc import SocketAttribute, SocketStream

from channels.iso8583 import keys, spec
from channels.iso8583.framing import FRAME_SIZE_MAX, FrameDecoder, frame
from channels.iso8583.spec import Message

ACQUIRER_ID: Final = "00010000"  # field 32: the acquiring institution (this bank)
CURRENCY: Final = spec.CURRENCY_CNY
MERCHANT_TYPE_ATM: Final = "6011"  # field 18: automated cash disbursements
MERCHANT_TYPE_POS: Final = "5411"  # field 18: grocery stores, supermarkets
ENTRY_MODE_CHIP_PIN: Final = "051"  # field 22: chip read, PIN entered
ENTRY_MODE_CHIP: Final = "052"  # field 22: chip read, no PIN
CONDITION_NORMAL: Final = "00"  # field 25: an attended POS
CONDITION_UNATTENDED: Final = "02"  # field 25: an unattended terminal (ATM)
SECURITY_CONTROL: Final = "2600000000000000"  # field 53: format 0 PIN block, double-length key
STAN_MAX: Final = 999_999
RECEIVE_SIZE: Final = 65_536
EXCHANGE_TIMEOUT_S_DEFAULT: Final = 30.0
# The fields a response echoes from its request (docs/iso8583.md).
ECHOED: Final = ("2", "3", "4", "7", "11", "12", "13", "32", "37", "41", "42", "49")


@dataclass(frozen=True, slots=True)
class Card:
    """A card: its number is the 19-digit account number (field 2), its PIN the account's
    transaction password."""

    pan: str
    pin: str


@dataclass(frozen=True, slots=True)
class TerminalProfile:
    """What the bank's terminal registry and key store hold about one terminal."""

    terminal_id: str  # field 41, 8 characters
    kind: str  # "atm" or "pos"
    pin_key: bytes  # the terminal PIN key (TPK), double-length 3DES
    mac_key: bytes  # the terminal authentication key (TAK)
    merchant_id: str = ""  # field 42, 15 characters (default: the terminal id, padded)
    acquirer_id: str = ACQUIRER_ID
    master_key: bytes = b""  # the terminal master key (TMK): key exchanges (0800 161)

    def __post_init__(self) -> None:
        assert len(self.terminal_id) == 8, self.terminal_id
        assert self.kind in ("atm", "pos"), self.kind
        if not self.merchant_id:
            object.__setattr__(self, "merchant_id", self.terminal_id.ljust(15, "0"))
        assert len(self.merchant_id) == 15, self.merchant_id


@dataclass(frozen=True, slots=True)
class Request:
    """A signed message and what it was built from: `raw` is sent, `fields` is kept for a
    reversal or a check of the answer."""

    fields: Message
    raw: bytes

    @property
    def key(self) -> tuple[str, str]:
        """What matches the response: terminal id and STAN."""
        return str(self.fields["41"]), str(self.fields["11"])

    @property
    def mti(self) -> str:
        return str(self.fields["t"])


@dataclass(frozen=True, slots=True)
class Response:
    """A parsed answer and how long it took (from the send to its arrival)."""

    fields: Message
    raw: bytes
    latency_s: float

    @property
    def code(self) -> str:
        """Field 39, the response code ("00" approved); "" if the answer has none."""
        value = self.fields.get("39", "")
        return value if isinstance(value, str) else ""


class Terminal:
    """One terminal: numbers its messages (STAN), signs them, checks its answers' MACs.

    `clock` gives the wall time (seconds) for fields 7, 12 and 13; the STAN runs
    from `first_stan` and wraps after 999999, as a terminal's does.
    """

    def __init__(
        self,
        profile: TerminalProfile,
        *,
        first_stan: int = 1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        assert 1 <= first_stan <= STAN_MAX, first_stan
        self.profile = profile
        self.stan = first_stan - 1
        self.clock = clock
        self._mac = partial(keys.mac, key=profile.mac_key)
        self._pin_blocks: dict[tuple[str, str], bytes] = {}  # (pan, pin) -> block

    @property
    def terminal_id(self) -> str:
        return self.profile.terminal_id

    def next_stan(self) -> str:
        self.stan = self.stan % STAN_MAX + 1
        return f"{self.stan:06d}"

    def pin_block(self, card: Card) -> bytes:
        """The card's encrypted PIN block (format 0 is deterministic: kept per card)."""
        block = self._pin_blocks.get((card.pan, card.pin))
        if block is None:
            block = keys.pin_block(card.pin, card.pan, self.profile.pin_key)
            self._pin_blocks[(card.pan, card.pin)] = block
        return block

    def header(self, mti: str, processing: str, card: Card | None) -> Message:
        """The fields every request of this terminal carries (a new STAN each call)."""
        profile = self.profile
        seconds = self.clock()
        now, local = time.gmtime(seconds), time.localtime(seconds)  # field 7 is in GMT
        stan = self.next_stan()
        fields: Message = {
            "t": mti,
            "3": processing,
            "7": time.strftime("%m%d%H%M%S", now),
            "11": stan,
            "12": time.strftime("%H%M%S", local),
            "13": time.strftime("%m%d", local),
            "18": MERCHANT_TYPE_ATM if profile.kind == "atm" else MERCHANT_TYPE_POS,
            "22": ENTRY_MODE_CHIP_PIN if card is not None else ENTRY_MODE_CHIP,
            "25": CONDITION_UNATTENDED if profile.kind == "atm" else CONDITION_NORMAL,
            "32": profile.acquirer_id,
            # Retrieval reference: year digit, day of the year, hour, STAN (an12).
            "37": time.strftime("%y%j%H", now)[1:] + stan,
            "41": profile.terminal_id,
            "42": profile.merchant_id,
            "49": CURRENCY,
        }
        if card is not None:
            fields["2"] = card.pan
            fields["52"] = self.pin_block(card)
            fields["53"] = SECURITY_CONTROL
        return fields

    def sign(self, fields: Message) -> Request:
        return Request(fields, spec.build_signed(fields, self._mac))

    def _financial(
        self, mti: str, kind: str, card: Card, amount_minor: int | None, extra: Message
    ) -> Request:
        fields = self.header(mti, kind + "0000", card)
        if amount_minor is not None:
            fields["4"] = spec.amount_field(amount_minor)
        fields.update(extra)
        return self.sign(fields)

    def cash_withdrawal(self, card: Card, amount_minor: int) -> Request:
        """0200, processing 01: cash out of the card's account at this ATM."""
        return self._financial(
            spec.MTI_FINANCIAL_REQUEST, spec.PROCESSING_CASH_WITHDRAWAL, card, amount_minor, {}
        )

    def purchase(self, card: Card, amount_minor: int) -> Request:
        """0200, processing 00: a payment to this terminal's merchant."""
        return self._financial(
            spec.MTI_FINANCIAL_REQUEST, spec.PROCESSING_PURCHASE, card, amount_minor, {}
        )

    def authorization(self, card: Card, amount_minor: int) -> Request:
        """0100, processing 00: a hold for this terminal's merchant."""
        return self._financial(
            spec.MTI_AUTHORIZATION_REQUEST, spec.PROCESSING_PURCHASE, card, amount_minor, {}
        )

    def balance_enquiry(self, card: Card) -> Request:
        """0200, processing 31: the balance (field 54 of the answer), nothing posted."""
        return self._financial(
            spec.MTI_FINANCIAL_REQUEST, spec.PROCESSING_BALANCE_ENQUIRY, card, None, {}
        )

    def transfer(self, card: Card, target_account: str, amount_minor: int) -> Request:
        """0200, processing 40: from the card's account (102) to another (103)."""
        extra: Message = {"102": card.pan, "103": target_account}
        return self._financial(
            spec.MTI_FINANCIAL_REQUEST, spec.PROCESSING_TRANSFER, card, amount_minor, extra
        )

    def reversal(self, original: Request) -> Request:
        """0400 for `original` (a 0100 or 0200): its own STAN, the original named in
        field 90 (MTI, STAN, field 7, acquirer); the PIN is not sent again."""
        source = original.fields
        fields = self.header(spec.MTI_REVERSAL_REQUEST, str(source["3"]), None)
        for name in ("2", "4", "102", "103"):
            if name in source:
                fields[name] = source[name]
        fields["90"] = spec.OriginalData(
            str(source["t"]), str(source["11"]), str(source["7"]), str(source["32"]), ""
        ).field()
        return self.sign(fields)

    def network(self, code: str) -> Request:
        """0800 network management: `spec.NETWORK_SIGN_ON`, `_SIGN_OFF`, `_ECHO`,
        `_KEY_EXCHANGE` (field 70); no card, no amount."""
        assert code in spec.NETWORK_CODES, code
        fields = self.header(spec.MTI_NETWORK_REQUEST, "000000", None)
        for name in ("3", "18", "22", "25", "37", "49"):
            del fields[name]
        fields["70"] = code
        return self.sign(fields)

    def key_exchange(self, usage: str) -> Request:
        """0800 161: ask the bank for a new "pin" or "mac" key (field 53 says which);
        `install_key` with the answer puts it in force here."""
        request = self.network(spec.NETWORK_KEY_EXCHANGE)
        fields = dict(request.fields)
        fields["53"] = spec.KEY_EXCHANGE_CONTROL[usage]
        return self.sign(fields)

    def install_key(self, request: Request, response: Response) -> bool:
        """Install the new key a key exchange's answer carries (field 48, under this
        terminal's master key) once the answer's MAC and the key's check value are
        right; False (nothing changed) otherwise. A new MAC key signs the next message."""
        usage = spec.KEY_EXCHANGE_USAGE.get(str(request.fields.get("53", "")))
        field48 = response.fields.get("48")
        if usage is None or not isinstance(field48, str) or not self.verify(response):
            return False
        try:
            encrypted, check_value = spec.key_exchange_data(field48)
            key = keys.decrypt_key(encrypted, self.profile.master_key)
        except ValueError:
            return False
        if keys.check_value(key) != check_value:
            return False
        if usage == "pin":
            self.profile = replace(self.profile, pin_key=key)
            self._pin_blocks.clear()
        else:
            self.profile = replace(self.profile, mac_key=key)
            self._mac = partial(keys.mac, key=key)
        return True

    def repeat(self, request: Request) -> Request:
        """The same message again (a terminal that got no answer): same bytes, same key."""
        return request

    def verify(self, response: Response) -> bool:
        """Whether the answer carries a valid MAC under this terminal's key."""
        code = spec.message_mac(response.fields)
        if code is None:
            return False
        return keys.verify(spec.mac_data(response.raw), code, self.profile.mac_key)


def response_key(fields: Message) -> tuple[str, str]:
    """Terminal id and STAN of an answer (what `Request.key` matches)."""
    return str(fields.get("41", "")), str(fields.get("11", ""))


class _Waiter:
    __slots__ = ("event", "response", "sent_at")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.response: Response | None = None
        self.sent_at = 0.0


class ExchangeTimeout(TimeoutError):
    """No answer in time: the terminal repeats the message or reverses it."""


@dataclass
class ConnectionCounters:
    sent: int = 0
    received: int = 0
    unmatched: int = 0  # answers nobody waited for (late, or a key never sent)
    timeouts: int = 0
    unparsable: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    errors: list[str] = field(default_factory=list)


class TerminalConnection:
    """One TCP connection carrying many terminals' messages (use `open_connection`).

    `exchange` may be called by many tasks at once: their frames are queued and
    written by one task (`serve_sends`), whole and in order, all those queued
    meanwhile in one write (one system call for many terminals, as a concentrator
    sends them); answers are matched by terminal id + STAN. Two requests with the
    same key in flight at once are a caller's error.
    """

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self.counters = ConnectionCounters()
        self._waiting: dict[tuple[str, str], _Waiter] = {}
        self._outbox: list[bytes] = []
        self._outbox_filled = anyio.Event()
        self._closed = False

    async def exchange(
        self, request: Request, timeout_s: float = EXCHANGE_TIMEOUT_S_DEFAULT
    ) -> Response:
        """Send `request`, wait for its answer. ExchangeTimeout when none comes in time;
        the connection's own errors (closed, reset) propagate."""
        key = request.key
        assert key not in self._waiting, f"{key} already in flight"
        waiter = self._waiting[key] = _Waiter()
        try:
            if self._closed:
                raise anyio.ClosedResourceError("the connection is closed")
            payload = frame(request.raw)
            waiter.sent_at = time.perf_counter()
            self._outbox.append(payload)
            self._outbox_filled.set()
            self.counters.sent += 1
            self.counters.bytes_sent += len(payload)
            with anyio.move_on_after(timeout_s):
                await waiter.event.wait()
            if waiter.response is None:
                if self._closed:
                    raise anyio.ClosedResourceError("the server closed the connection")
                self.counters.timeouts += 1
                raise ExchangeTimeout(f"no answer to {request.mti} {key} in {timeout_s} s")
            return waiter.response
        finally:
            self._waiting.pop(key, None)

    async def serve_sends(self) -> None:
        """Write the queued frames until the connection breaks (then wake every sender)."""
        try:
            while True:
                await self._outbox_filled.wait()
                self._outbox_filled = anyio.Event()
                frames, self._outbox = self._outbox, []
                await self.stream.send(frames[0] if len(frames) == 1 else b"".join(frames))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._close()

    def _close(self) -> None:
        self._closed = True
        for waiter in list(self._waiting.values()):
            waiter.event.set()  # their senders see no response and a closed connection

    async def serve_answers(self) -> None:
        """Read answers until the server closes the connection; wake their senders."""
        decoder = FrameDecoder(FRAME_SIZE_MAX)
        counters = self.counters
        waiting = self._waiting
        try:
            while True:
                try:
                    chunk = await self.stream.receive(RECEIVE_SIZE)
                except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                    return
                now = time.perf_counter()
                counters.bytes_received += len(chunk)
                for raw in decoder.feed(chunk):
                    counters.received += 1
                    try:
                        fields = spec.parse(raw)
                    except spec.FormatError as error:
                        counters.unparsable += 1
                        counters.errors.append(f"unparsable answer: {error}")
                        continue
                    waiter = waiting.get(response_key(fields))
                    if waiter is None or waiter.response is not None:
                        counters.unmatched += 1
                        continue
                    waiter.response = Response(fields, raw, now - waiter.sent_at)
                    waiter.event.set()
        finally:
            self._close()


@asynccontextmanager
async def open_connection(host: str, port: int) -> AsyncIterator[TerminalConnection]:
    """A connection to Tally's ISO 8583 listener, its frames written and its answers read
    by tasks of its own; closed (and the tasks ended) when the block exits."""
    stream = await anyio.connect_tcp(host, port)
    stream.extra(SocketAttribute.raw_socket).setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    connection = TerminalConnection(stream)
    async with anyio.create_task_group() as group:
        group.start_soon(connection.serve_answers)
        group.start_soon(connection.serve_sends)
        try:
            yield connection
        finally:
            group.cancel_scope.cancel()
            await stream.aclose()


class BlockingConnection:
    """One terminal's exchanges on a plain blocking socket, one message at a time: for a
    Locust user (gevent makes the socket cooperative) or a script.

    Answers that match no request of this exchange (a late one to a timed-out
    message) are counted and skipped.
    """

    def __init__(self, host: str, port: int, timeout_s: float = EXCHANGE_TIMEOUT_S_DEFAULT) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout_s = timeout_s
        self.decoder = FrameDecoder(FRAME_SIZE_MAX)
        self.ready: list[bytes] = []
        self.unmatched = 0

    def exchange(self, request: Request) -> Response:
        """Send `request` and wait for its answer; ExchangeTimeout after `timeout_s`."""
        started = time.perf_counter()
        deadline = started + self.timeout_s
        self.sock.sendall(frame(request.raw))
        while True:
            while self.ready:
                raw = self.ready.pop(0)
                fields = spec.parse(raw)
                if response_key(fields) == request.key:
                    return Response(fields, raw, time.perf_counter() - started)
                self.unmatched += 1
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise ExchangeTimeout(f"no answer to {request.mti} {request.key}")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(RECEIVE_SIZE)
            except TimeoutError:
                raise ExchangeTimeout(f"no answer to {request.mti} {request.key}") from None
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.ready.extend(self.decoder.feed(chunk))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> BlockingConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
