"""The core link against a real `tally serve --link` process: front-ends' transfers
posted once, refusals carried as values, credentials and mutual TLS checked at connect,
every kind of bad frame refused on its connection alone, the window, and the options
`tally serve` refuses.

A front-end here is `core.link.client.LinkClient`, or a raw connection the test writes
frames on by hand (core.link.frames) to send what a LinkClient never would. Accounts
are opened, funded and read over HTTP at the counter of the same server, and the app
channel issues the transaction tokens the transfers consent with: what the balances
show is how the tests see what was posted. The server's log (JSON lines) is how they
see why it closed a connection.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import ssl
import subprocess
import sys
import time
import tomllib
import uuid
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from anyio.abc import ByteStream
from anyio.streams.buffered import BufferedByteReceiveStream
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from channels.iso8583 import services
from core.link import frames
from core.link.address import TlsFiles, client_context
from core.link.client import Connect, LinkClient, LinkRefused, connect_tls, connect_unix
from core.link.frames import (
    HEADER_SIZE,
    HELLO,
    REFUSED,
    REPLIES,
    REQUESTS,
    WELCOME,
    Header,
    decode_messages,
    encode_frame,
    encode_messages,
    receive_frame,
)
from core.link.ops import (
    CALL,
    OK,
    OVERLOADED,
    TRANSFER,
    ChannelProblem,
    Transfer,
    decode_posted,
    encode_transfer,
)
from core.services.commands import Caller, Consent, IssueToken, Movement
from core.services.refusals import Code, Refused
from core.services.results import Posted
from ledger.types import CreateTransferResult
from tests.http_helpers import (
    CHANNELS_FILE,
    REPO_ROOT,
    TallyServer,
    balance,
    cash_deposit,
    free_port,
    open_class_i,
    register,
)

SECRET = b"link-secret-of-the-tests-0123456789"
PASSWORD = "135790"
FUNDS_MINOR = 10_000_000  # 100,000 CNY on every debit account
LIMIT = frames.PAYLOAD_SIZE_MAX
WAIT_S = 15.0  # for a connection, a reply, a log line: a hang fails, never a timing
# What a read from a connection the server closed raises: EOF, a cut frame, or (a Unix
# socket closed with bytes it did not read) a reset.
CLOSED = (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError)


def app_caller() -> Caller:
    """The app channel as the server's registry has it (name, kind, ledger id)."""
    with open(CHANNELS_FILE, "rb") as file:
        entry = tomllib.load(file)["channels"]["app"]
    return Caller("app", str(entry["kind"]), int(entry["id"]))


CALLER = app_caller()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


@dataclass(frozen=True)
class Pair:
    """A funded debit account, its app-channel token, and an empty credit account."""

    debit: int
    credit: int
    token: str

    def transfer(self, key: str, amount_minor: int, token: str | None = None) -> Transfer:
        consent = Consent(self.token if token is None else token)
        return Transfer(CALLER, key, self.debit, self.credit, amount_minor, consent)


class ServerLog:
    """The events the server logged after this cursor was made."""

    def __init__(self, server: TallyServer) -> None:
        self.path = server.log_path
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def events(self, name: str) -> list[dict[str, Any]]:
        with open(self.path, "rb") as file:
            file.seek(self.offset)
            lines = file.read().splitlines()
        found = []
        for line in lines:
            if line.startswith(b"{"):
                try:
                    event = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue  # a line cut by a kill
                if isinstance(event, dict) and event.get("event") == name:
                    found.append(event)
        return found

    def wait_for(self, name: str, count: int = 1) -> list[dict[str, Any]]:
        """The `name` events, once there are `count` (the server logs them just before it
        closes the connection, so they may not be written yet when the test sees it)."""
        deadline = time.monotonic() + WAIT_S
        while len(found := self.events(name)) < count:
            assert time.monotonic() < deadline, f"not {count} {name} logged: {self.tail()}"
            time.sleep(0.02)
        return found

    def tail(self) -> str:
        return self.path.read_text(errors="replace")[-3000:]


@dataclass
class Core:
    """A running `tally serve --link` and what the tests use of it."""

    server: TallyServer
    connect: Connect

    def pair(self, funds_minor: int = FUNDS_MINOR) -> Pair:
        with self.server.client("counter") as counter, self.server.client("app") as app:
            debit = open_class_i(counter, register(counter), password=PASSWORD)
            credit = open_class_i(counter, register(counter), password=PASSWORD)
            if funds_minor:
                cash_deposit(counter, debit, funds_minor)
            issued = app.post(f"/v1/accounts/{debit}/tokens", {"password": PASSWORD})
            assert issued.status_code == 201, issued.text
        return Pair(int(debit), int(credit), str(issued.json()["token"]))

    def balances(self, pair: Pair) -> tuple[int, int]:
        with self.server.client("counter") as counter:
            return balance(counter, str(pair.debit)), balance(counter, str(pair.credit))

    def log(self) -> ServerLog:
        return ServerLog(self.server)


def link_options(directory: Path, *more: str) -> list[str]:
    secret = directory / "link-secret"
    secret.write_bytes(SECRET + b"\n")
    secret.chmod(0o600)
    socket_path = directory / "link.sock"
    assert len(str(socket_path)) < 100, socket_path  # sun_path holds 108 bytes
    return ["--link", f"unix:{socket_path}", "--link-secret-file", str(secret), *more]


def start_core(directory: Path, *more: str) -> Core:
    options = link_options(directory, *more)
    server = TallyServer(directory / "data", extra=options).start()
    return Core(server, connect_unix(options[1].removeprefix("unix:")))


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Core]:
    """A core with an ISO 8583 listener: its link answers the terminal service calls
    (`CALL`) of front-ends' adapters too."""
    iso8583 = f"127.0.0.1:{free_port()}"
    running = start_core(tmp_path_factory.mktemp("link"), "--iso8583", iso8583)
    try:
        yield running
    finally:
        if running.server.process is not None:
            running.server.stop()


@asynccontextmanager
async def link_client(connect: Connect, name: str = "tests") -> AsyncIterator[LinkClient]:
    """A LinkClient, connected (its connection kept by its own task until the end)."""
    client = LinkClient(connect, SECRET, name)
    async with anyio.create_task_group() as task_group:
        await task_group.start(client.serve_link_client)
        with anyio.fail_after(WAIT_S):
            await client.connected.wait()
        yield client
        task_group.cancel_scope.cancel()


# --- raw connections -----------------------------------------------------------------


def hello(secret: bytes = SECRET) -> bytes:
    return encode_frame(HELLO, orjson.dumps({"secret": secret.decode(), "front_end": "raw"}))


def requests_frame(messages: list[tuple[int, int, bytes]]) -> bytes:
    payload, count = encode_messages(messages)
    return encode_frame(REQUESTS, payload, count)


def frame_with(
    kind: int, payload: bytes, count: int, *, magic: bytes = frames.MAGIC, version: int = 1
) -> bytes:
    """A frame with the given header fields and a checksum that is right for them."""
    head = frames.HEADER.pack(magic, version, kind, count, len(payload), 0)[:12]
    return head + zlib.crc32(payload, zlib.crc32(head)).to_bytes(4, "little") + payload


class Raw:
    """A connection of the test's own, frames written by hand."""

    def __init__(self, stream: ByteStream) -> None:
        self.stream = stream
        self.reader = BufferedByteReceiveStream(stream)

    async def frame(self) -> tuple[Header, bytes]:
        with anyio.fail_after(WAIT_S):
            return await receive_frame(self.reader, LIMIT)

    async def replies(self, count: int) -> list[tuple[int, int, bytes]]:
        """`count` replies, in the order they came (across frames)."""
        replies: list[tuple[int, int, bytes]] = []
        while len(replies) < count:
            header, payload = await self.frame()
            assert header.kind == REPLIES, header
            replies += decode_messages(payload, header.count)
        return replies

    async def closed_by_server(self) -> None:
        """Wait until the server closes the connection; fail if it answers instead."""
        with anyio.fail_after(WAIT_S):
            try:
                header, payload = await receive_frame(self.reader, LIMIT)
            except CLOSED:
                return
        pytest.fail(f"the server answered with a {frames.KINDS[header.kind]}: {payload[:200]!r}")


@asynccontextmanager
async def raw_connection(core: Core, *, welcomed: bool = True) -> AsyncIterator[Raw]:
    """A raw connection; `welcomed`: after a good HELLO and its WELCOME."""
    stream = await core.connect()
    async with stream:
        raw = Raw(stream)
        if welcomed:
            await stream.send(hello())
            header, payload = await raw.frame()
            assert header.kind == WELCOME, header
            assert set(orjson.loads(payload)) >= {"window", "payload_size_max"}
        yield raw


# --- a. posted once ------------------------------------------------------------------

CONCURRENT = 200


def test_transfers_over_the_link_are_posted_once(core: Core) -> None:
    """200 concurrent transfers with distinct keys over one LinkClient are each Posted
    once (200 transfer ids, none replayed, each as asked); a retry of one key answers
    replayed=True with the same transfer id and timestamp; the balances read over HTTP
    moved by exactly the sum, no more."""
    pair = core.pair()
    before = core.balances(pair)
    commands = [pair.transfer(unique("posted"), 100 + index) for index in range(CONCURRENT)]
    posted: dict[str, Posted] = {}

    async def main() -> Posted:
        async with link_client(core.connect) as client:

            async def one(command: Transfer) -> None:
                posted[command.key] = await client.transfer(command)

            async with anyio.create_task_group() as task_group:
                for command in commands:
                    task_group.start_soon(one, command)
            assert client.connections == 1
            return await client.transfer(commands[7])

    retry = anyio.run(main)
    assert len(posted) == CONCURRENT
    assert len({answer.transfer_id_packed for answer in posted.values()}) == CONCURRENT
    for command in commands:
        answer = posted[command.key]
        assert not answer.replayed and answer.risk_hold == "", answer
        assert (answer.debit, answer.credit, answer.amount_minor) == (
            pair.debit,
            pair.credit,
            command.amount_minor,
        )
        assert (answer.operation, answer.channel) == ("transfer", "app")
    first = posted[commands[7].key]
    assert retry.replayed
    assert (retry.transfer_id_packed, retry.timestamp_ns, retry.amount_minor) == (
        first.transfer_id_packed,
        first.timestamp_ns,
        first.amount_minor,
    )
    moved = sum(command.amount_minor for command in commands)
    assert core.balances(pair) == (before[0] - moved, before[1] + moved)


# --- b. refusals -----------------------------------------------------------------------


def test_a_refusal_travels_as_the_services_refused(core: Core) -> None:
    """What the service refuses comes back as Refused with its code: over the balance a
    TRANSFER_REFUSED with the ledger's EXCEEDS_CREDITS, an unknown token TOKEN_INVALID,
    another account's token TOKEN_NOT_FOR_ACCOUNT, the same account both sides
    ACCOUNTS_MUST_BE_DIFFERENT; a retry of the refused key is refused again (replayed);
    nothing moved, and the link still posts afterwards."""
    pair = core.pair(funds_minor=1_000)
    other = core.pair(funds_minor=0)
    before = core.balances(pair)
    over = pair.transfer(unique("over"), 1_001)
    bad_token = pair.transfer(unique("token"), 10, token="not-a-token-of-this-bank")
    not_yours = pair.transfer(unique("not-yours"), 10, token=other.token)
    same = Transfer(CALLER, unique("same"), pair.debit, pair.debit, 10, Consent(pair.token))

    async def refusal(client: LinkClient, command: Transfer) -> Refused:
        with pytest.raises(Refused) as refused:
            await client.transfer(command)
        return refused.value

    async def main() -> tuple[list[Refused], Posted]:
        async with link_client(core.connect) as client:
            answers = [
                await refusal(client, command)
                for command in (over, over, bad_token, not_yours, same)
            ]
            return answers, await client.transfer(pair.transfer(unique("after"), 1_000))

    (first, again, token, foreign, same_account), after = anyio.run(main)
    assert first.refusal.code is Code.TRANSFER_REFUSED, first.refusal
    assert first.refusal.ledger_code == CreateTransferResult.EXCEEDS_CREDITS
    assert not first.refusal.replayed
    assert again.refusal.code is Code.TRANSFER_REFUSED and again.refusal.replayed, again.refusal
    assert token.refusal.code is Code.TOKEN_INVALID, token.refusal
    assert foreign.refusal.code is Code.TOKEN_NOT_FOR_ACCOUNT, foreign.refusal
    assert same_account.refusal.code is Code.TRANSFER_REFUSED, same_account.refusal
    assert same_account.refusal.ledger_code == CreateTransferResult.ACCOUNTS_MUST_BE_DIFFERENT
    assert not after.replayed
    assert core.balances(pair) == (before[0] - 1_000, before[1] + 1_000)


def test_service_calls_answer_as_the_services_do(core: Core) -> None:
    """A CALL returns the service's typed result or raises its refusal, as in-process: a
    transfer id (128 bits, the same for the same key), the channel's rate (the app
    channel has none), a token for an account that does not exist (refused)."""

    async def main() -> tuple[int, int, int, bool, Refused]:
        async with link_client(core.connect) as client:
            first = await client.invoke(services.TRANSFER_ID, CALLER.ledger_id, "key-1")
            again = await client.invoke(services.TRANSFER_ID, CALLER.ledger_id, "key-1")
            other = await client.invoke(services.TRANSFER_ID, CALLER.ledger_id, "key-2")
            over = await client.invoke(services.OVER_RATE, CALLER.name)
            with pytest.raises(Refused) as refused:
                await client.invoke(services.ISSUE_TOKEN, IssueToken(CALLER, 1, "135790"))
            return first, again, other, over, refused.value

    first, again, other, over, refused = anyio.run(main)
    assert first == again != other and 0 <= first < 1 << 128
    assert over is False
    assert refused.refusal.code is not Code.NOT_READY, refused.refusal


def test_a_caller_otherwise_than_the_registry_is_refused(core: Core) -> None:
    """The core takes no more than a channel's name from a front-end: a transfer or a
    service call naming the app channel with another kind, another ledger id or an
    acting teller is refused 403 caller-not-allowed (logged), a channel the registry
    does not have 401; nothing moves, and the same front-end's true caller posts."""
    pair = core.pair()
    before = core.balances(pair)
    forged = [
        Caller(CALLER.name, "counter", CALLER.ledger_id),
        Caller(CALLER.name, CALLER.kind, CALLER.ledger_id + 1),
        Caller(CALLER.name, CALLER.kind, CALLER.ledger_id, "T0001", "supervisor"),
    ]
    log = core.log()

    async def main() -> tuple[list[ChannelProblem], Posted]:
        problems: list[ChannelProblem] = []
        async with link_client(core.connect) as client:
            for index, caller in enumerate([*forged, Caller("nobody", "app", 99)]):
                command = pair.transfer(unique(f"forged-{index}"), 100)
                command.caller = caller
                with pytest.raises(ChannelProblem) as refused:
                    await client.transfer(command)
                problems.append(refused.value)
                move = Movement(caller, unique(f"forged-call-{index}"), pair.debit, 100)
                with pytest.raises(ChannelProblem) as refused:
                    await client.invoke(services.CASH_WITHDRAWAL, move)
                problems.append(refused.value)
            return problems, await client.transfer(pair.transfer(unique("true"), 100))

    problems, posted = anyio.run(main)
    assert [(p.status, p.slug) for p in problems] == [(403, "caller-not-allowed")] * 6 + [
        (401, "channel-unknown")
    ] * 2
    assert len(log.wait_for("link_caller_refused", 6)) == 6
    assert not posted.replayed
    assert core.balances(pair) == (before[0] - 100, before[1] + 100)


def link_metrics(core: Core) -> dict[str, float]:
    """The `tally_link_*` samples of the core's /metrics."""
    text = httpx.get(core.server.url + "/metrics", timeout=10).text
    return {
        name: float(value)
        for line in text.splitlines()
        if line.startswith("tally_link_")
        for name, _, value in [line.rpartition(" ")]
    }


def test_metrics_count_what_the_link_received(core: Core) -> None:
    """/metrics counts the link's connections, its commands and the frames they came in,
    and the connections refused for their credentials or a bad frame: three transfers in
    one frame are 3 requests and 1 frame."""
    pair = core.pair()
    commands = [pair.transfer(unique(f"metrics-{index}"), 10) for index in range(3)]
    before = link_metrics(core)

    async def main() -> None:
        async with raw_connection(core) as raw:
            await raw.stream.send(
                requests_frame([(i, TRANSFER, encode_transfer(c)) for i, c in enumerate(commands)])
            )
            assert {status for _, status, _ in await raw.replies(3)} == {OK}
        async with raw_connection(core, welcomed=False) as raw:
            await raw.stream.send(hello(b"not-the-secret-of-this-link-at-all"))
            header, _ = await raw.frame()
            assert header.kind == REFUSED
        async with raw_connection(core) as raw:
            await raw.stream.send(requests_frame([(1, 99, b"")]))
            await raw.closed_by_server()

    anyio.run(main)
    after = link_metrics(core)
    assert after["tally_link_requests_total"] == before["tally_link_requests_total"] + 3
    assert after["tally_link_frames_total"] == before["tally_link_frames_total"] + 1
    assert after["tally_link_accepted_total"] == before["tally_link_accepted_total"] + 2
    refused = "tally_link_refused_credentials_total"
    assert after[refused] == before[refused] + 1
    assert after["tally_link_refused_frames_total"] == before["tally_link_refused_frames_total"] + 1
    assert after["tally_link_connections"] == 0


# --- c. credentials --------------------------------------------------------------------


def test_a_wrong_secret_is_refused_at_connect(core: Core) -> None:
    """A front-end showing another secret is refused at its HELLO: LinkClient's
    serve_link_client raises LinkRefused (it does not retry), a raw connection reads a
    REFUSED frame and then the end, the server logs link_refused for credentials; a
    front-end with the right secret connects and posts afterwards."""
    pair = core.pair()
    log = core.log()

    async def main() -> Posted:
        wrong = LinkClient(core.connect, b"another-secret-of-32-characters!", "wrong")
        with anyio.fail_after(WAIT_S), pytest.raises(LinkRefused):
            await wrong.serve_link_client()
        assert not wrong.is_connected and wrong.connections == 0
        async with raw_connection(core, welcomed=False) as raw:
            await raw.stream.send(hello(SECRET[:-1] + b"!"))
            header, payload = await raw.frame()
            assert header.kind == REFUSED and b"secret" in payload, (header, payload)
            await raw.closed_by_server()
        async with link_client(core.connect) as client:
            return await client.transfer(pair.transfer(unique("good"), 500))

    posted = anyio.run(main)
    assert not posted.replayed
    refusals = log.wait_for("link_refused", 2)
    assert len(refusals) == 2 and {event["reason"] for event in refusals} == {"credentials"}
    assert refusals[0]["front_end"] == "wrong"
    assert not log.events("link_frame_refused")


# --- d. bad frames after the HELLO ---------------------------------------------------


def transfer_body(command: Transfer, **changes: Any) -> bytes:
    """The command's TRANSFER body with fields replaced by value (`amount_minor=True`)."""
    fields = orjson.loads(encode_transfer(command))
    for name, value in changes.items():
        fields[fields.index(getattr(command, name))] = value
    return orjson.dumps(fields)


def flipped(frame: bytes, offset: int) -> bytes:
    damaged = bytearray(frame)
    damaged[offset] ^= 0x04
    return bytes(damaged)


# Each case: the frame (from the good transfer's message, which it carries where it can)
# and what the logged reason must say. The good message comes first: a server that ran a
# frame's messages before reading all of it would post it.
BadFrame = Callable[[tuple[int, int, bytes], Transfer], bytes]
BAD_FRAMES: dict[str, tuple[BadFrame, str]] = {
    "version": (
        lambda good, _: frame_with(REQUESTS, encode_messages([good])[0], 1, version=2),
        "frame version 2, this core speaks version 1",
    ),
    "magic": (
        lambda good, _: frame_with(REQUESTS, encode_messages([good])[0], 1, magic=b"TLNX"),
        "bad magic b'TLNX'",
    ),
    "kind": (
        lambda good, _: frame_with(9, encode_messages([good])[0], 1),
        "unknown frame kind 9",
    ),
    "over-size": (
        lambda good, _: frames.HEADER.pack(frames.MAGIC, 1, REQUESTS, 1, LIMIT + 1, 0),
        f"frame of {LIMIT + 1} bytes over the {LIMIT}-byte limit",
    ),
    "checksum-payload": (
        lambda good, _: flipped(requests_frame([good]), HEADER_SIZE + 20),
        "checksum mismatch on a requests frame",
    ),
    "checksum-count": (
        lambda good, _: flipped(requests_frame([good]), 6),
        "checksum mismatch on a requests frame",
    ),
    "second-hello": (lambda good, _: hello(), "a hello frame from a front-end"),
    "count-over": (
        lambda good, _: frame_with(REQUESTS, encode_messages([good])[0], 2),
        "frame says 2 messages, holds 1",
    ),
    "trailing-bytes": (
        lambda good, _: frame_with(REQUESTS, encode_messages([good])[0] + b"\0", 1),
        "1 bytes after the frame's 1 messages",
    ),
    "unknown-op": (
        lambda good, _: requests_frame([good, (2, 99, b"")]),
        "unknown op 99 in request 2",
    ),
    "body-bool-amount": (
        lambda good, command: requests_frame(
            [good, (2, TRANSFER, transfer_body(command, amount_minor=True))]
        ),
        "transfer fields of the wrong types",
    ),
    "body-str-account": (
        lambda good, command: requests_frame(
            [good, (2, TRANSFER, transfer_body(command, debit=str(command.debit)))]
        ),
        "transfer fields of the wrong types",
    ),
    "body-negative-amount": (
        lambda good, command: requests_frame(
            [good, (2, TRANSFER, transfer_body(command, amount_minor=-5))]
        ),
        "transfer field out of range",
    ),
    "body-arity": (
        lambda good, _: requests_frame([good, (2, TRANSFER, b'["app", "app", 2]')]),
        "transfer body is not an array of",
    ),
    "body-not-json": (
        lambda good, _: requests_frame([good, (2, TRANSFER, b"\x00not json")]),
        "transfer body is not JSON",
    ),
    "call-unknown": (
        lambda good, _: requests_frame([good, (2, CALL, orjson.dumps(["bank.drop_all"]))]),
        "unknown call 'bank.drop_all'",
    ),
    "call-wrong-type": (
        lambda good, _: requests_frame(
            [good, (2, CALL, orjson.dumps(["iso8583.transfer_id", "7", "key"]))]
        ),
        "iso8583.transfer_id argument 0: not an integer",
    ),
    "call-short-command": (
        lambda good, command: requests_frame(
            [good, (2, CALL, orjson.dumps(["payments.cash_withdrawal", [command.key, 1]]))]
        ),
        "payments.cash_withdrawal argument 0: not a Movement",
    ),
    "call-not-an-array": (
        lambda good, _: requests_frame([good, (2, CALL, b'{"name": "reads.account"}')]),
        "a call's body is not [name, argument, ...]",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FRAMES))
def test_a_bad_frame_closes_its_connection_alone(core: Core, case: str) -> None:
    """A bad frame after a good HELLO (another version, magic or kind, over the size, a
    wrong checksum, a count or length that does not fit, an unknown op, a malformed
    transfer body beside a good one): the server closes that connection without an
    answer, logs link_frame_refused with a reason naming the problem, runs nothing of
    the frame (the good transfer it carried, sent again on another connection, posts
    fresh, and the balances moved by it once), and the front-end connected beside it
    keeps its connection and posts."""
    build, reason = BAD_FRAMES[case]
    pair = core.pair()
    before = core.balances(pair)
    command = pair.transfer(unique(case), 1_234)
    log = core.log()

    async def main() -> Posted:
        async with link_client(core.connect, "beside") as beside:
            async with raw_connection(core) as raw:
                await raw.stream.send(build((1, TRANSFER, encode_transfer(command)), command))
                await raw.closed_by_server()
            posted = await beside.transfer(command)
            assert beside.connections == 1  # its connection was never touched
            return posted

    posted = anyio.run(main)
    refused = log.wait_for("link_frame_refused")
    assert len(refused) == 1 and reason in refused[0]["reason"], refused
    assert not posted.replayed, "the bad frame's good transfer was posted"
    assert core.balances(pair) == (before[0] - 1_234, before[1] + 1_234)


# --- e. before the HELLO -------------------------------------------------------------

BEFORE_HELLO: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "requests-first": (
        lambda good: requests_frame([(1, TRANSFER, good)]),
        "the first frame is a requests, not a hello",
    ),
    "hello-not-json": (
        lambda _: encode_frame(HELLO, b"secret=" + SECRET),
        "the hello is not {secret, front_end}",
    ),
    "hello-without-secret": (
        lambda _: encode_frame(HELLO, b'{"front_end": "raw"}'),
        "the hello is not {secret, front_end}",
    ),
    "hello-secret-not-a-string": (
        lambda _: encode_frame(HELLO, b'{"secret": 12345678901234567890}'),
        "the hello is not {secret, front_end}",
    ),
    "hello-an-array": (
        lambda _: encode_frame(HELLO, orjson.dumps([SECRET.decode()])),
        "the hello is not {secret, front_end}",
    ),
    "hello-over-size": (
        lambda _: encode_frame(HELLO, orjson.dumps({"secret": "x" * 5000})),
        "over the 4096-byte limit",
    ),
    "hello-checksum": (
        lambda _: flipped(hello(), HEADER_SIZE + 3),
        "checksum mismatch on a hello frame",
    ),
    "http": (lambda _: b"GET / HTTP/1.1\r\nHost: core\r\n\r\n", "bad magic b'GET '"),
}


@pytest.mark.parametrize("case", list(BEFORE_HELLO))
def test_no_good_hello_no_link(core: Core, case: str) -> None:
    """A first frame that is not a HELLO, a HELLO that is not {secret, front_end} (not
    JSON, no secret, not a string, an array), over the HELLO's size, with a wrong
    checksum, or not the link's protocol at all: closed without an answer, logged as
    link_frame_refused with the reason, nothing run (a transfer sent first posts fresh
    afterwards), and the server goes on serving."""
    build, reason = BEFORE_HELLO[case]
    pair = core.pair()
    command = pair.transfer(unique(case), 321)
    log = core.log()

    async def main() -> Posted:
        async with raw_connection(core, welcomed=False) as raw:
            await raw.stream.send(build(encode_transfer(command)))
            await raw.closed_by_server()
        async with link_client(core.connect) as client:
            return await client.transfer(command)

    posted = anyio.run(main)
    refused = log.wait_for("link_frame_refused")
    assert len(refused) == 1 and reason in refused[0]["reason"], refused
    assert len(log.events("link_connected")) == 1  # the good client's alone
    assert not posted.replayed


def test_connections_over_the_cap_are_closed_and_retry_later(tmp_path: Path) -> None:
    """`--link-connections-max 1`: while one front-end is connected, a second connection
    is closed unanswered (logged link_refused, reason connections; counted in /metrics)
    and the first keeps posting; once the first is gone, a front-end connects again (it
    retries until the server has seen the first one's close)."""
    capped = start_core(tmp_path, "--link-connections-max", "1")
    try:
        pair = capped.pair()
        log = capped.log()

        async def main() -> Posted:
            async with link_client(capped.connect, "first") as first:
                async with raw_connection(capped, welcomed=False) as raw:
                    with contextlib.suppress(anyio.BrokenResourceError):  # closed already
                        await raw.stream.send(hello())
                    await raw.closed_by_server()
                posted = await first.transfer(pair.transfer(unique("capped"), 100))
            async with link_client(capped.connect, "again") as again:
                assert again.connections == 1
            return posted

        assert not anyio.run(main).replayed
        # The second front-end may itself be closed once or more before the first's close
        # reached the server: it retries, as any front-end refused so does.
        refused = log.wait_for("link_refused")
        assert {event["reason"] for event in refused} == {"connections"}, refused
        assert link_metrics(capped)["tally_link_refused_connections_total"] == len(refused)
    finally:
        capped.server.stop()


def test_a_silent_connection_is_closed_after_the_hello_timeout(core: Core) -> None:
    """A connection that sends nothing is closed by the server (the HELLO's timeout,
    5 s) and logged: a connection cannot hold a slot without credentials."""
    log = core.log()

    async def main() -> None:
        async with raw_connection(core, welcomed=False) as raw:
            await raw.closed_by_server()

    anyio.run(main)
    assert log.wait_for("link_frame_refused")[0]["reason"] == "no hello in time"


# --- f. the window -------------------------------------------------------------------

WINDOW = 4


@pytest.fixture(scope="module")
def narrow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Core]:
    """A core whose link window is 4 commands per connection."""
    running = start_core(tmp_path_factory.mktemp("window"), "--link-window", str(WINDOW))
    try:
        yield running
    finally:
        if running.server.process is not None:
            running.server.stop()


def window_frame(commands: list[Transfer]) -> bytes:
    return requests_frame(
        [(index, TRANSFER, encode_transfer(command)) for index, command in enumerate(commands)]
    )


def test_requests_over_the_window_are_answered_overloaded_and_not_run(narrow: Core) -> None:
    """One frame of 12 transfers on a connection whose window is 4: the first 4 are
    posted, the 8 over the window answered OVERLOADED at once (before any posting's
    reply) with nothing done: their keys, sent again within the window, post fresh (not
    replayed), and the balances moved by the 12 once each. A retry of one of the first
    4 is replayed."""
    pair = narrow.pair()
    before = narrow.balances(pair)
    commands = [pair.transfer(unique("window"), 100 + index) for index in range(12)]

    async def main() -> tuple[list[tuple[int, int, bytes]], list[Posted]]:
        async with raw_connection(narrow) as raw:
            await raw.stream.send(window_frame(commands))
            replies = await raw.replies(len(commands))
        async with link_client(narrow.connect) as client:
            again = [await client.transfer(command) for command in commands]
        return replies, again

    replies, again = anyio.run(main)
    status = {request_id: status for request_id, status, _ in replies}
    assert status == {index: OK if index < WINDOW else OVERLOADED for index in range(12)}
    order = [status for _, status, _ in replies]
    assert order == [OVERLOADED] * 8 + [OK] * WINDOW, "OVERLOADED waited for the postings"
    first = {
        request_id: decode_posted(body) for request_id, status, body in replies if status == OK
    }
    for index, posted in enumerate(again):
        if index < WINDOW:
            assert posted.replayed
            assert posted.transfer_id_packed == first[index].transfer_id_packed
        else:
            assert not posted.replayed, f"request {index} over the window was run"
    moved = sum(command.amount_minor for command in commands)
    assert narrow.balances(pair) == (before[0] - moved, before[1] + moved)


def test_a_frame_far_over_the_window_is_answered_not_closed(narrow: Core) -> None:
    """One frame of 20 transfers at window 4 (more than twice over it): still 4 posted
    and 16 answered OVERLOADED, the connection kept, as the server's contract says ("a
    request over it is answered OVERLOADED at once")."""
    pair = narrow.pair()
    commands = [pair.transfer(unique("far"), 10) for _ in range(20)]

    async def main() -> list[tuple[int, int, bytes]]:
        async with raw_connection(narrow) as raw:
            await raw.stream.send(window_frame(commands))
            try:
                return await raw.replies(len(commands))
            except CLOSED:
                pytest.fail("the server closed the connection instead of answering")

    replies = anyio.run(main)
    assert sorted(status for _, status, _ in replies) == [OK] * 4 + [OVERLOADED] * 16


# --- g. mutual TLS -------------------------------------------------------------------


@dataclass(frozen=True)
class Pem:
    cert: Path
    key: Path


def write_pem(
    directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> Pem:
    pem = Pem(directory / f"{name}.pem", directory / f"{name}.key")
    pem.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pem.key.chmod(0o600)
    return pem


def certificate(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    usage: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    """A certificate for `name` signed by `issuer` (None: self-signed)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_cert, issuer_key = issuer if issuer is not None else (None, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), True
        )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if usage == ExtendedKeyUsageOID.SERVER_AUTH:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        builder = builder.add_extension(san, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass(frozen=True)
class Pki:
    ca: Path
    server: Pem
    client: Pem
    self_signed: Pem
    other_ca_client: Pem


def make_pki(directory: Path) -> Pki:
    """The link's CA, the core's certificate (127.0.0.1) and a front-end's it signed; a
    self-signed front-end certificate and one another CA signed."""
    keys = {name: ec.generate_private_key(ec.SECP256R1()) for name in
            ("ca", "server", "client", "self", "other-ca", "other")}  # fmt: skip
    ca = certificate("tally link CA", keys["ca"], None, ca=True)
    other_ca = certificate("another CA", keys["other-ca"], None, ca=True)
    server = certificate(
        "core", keys["server"], (ca, keys["ca"]), usage=ExtendedKeyUsageOID.SERVER_AUTH
    )
    client = certificate(
        "front-end", keys["client"], (ca, keys["ca"]), usage=ExtendedKeyUsageOID.CLIENT_AUTH
    )
    self_signed = certificate(
        "front-end", keys["self"], None, usage=ExtendedKeyUsageOID.CLIENT_AUTH
    )
    other = certificate(
        "front-end", keys["other"], (other_ca, keys["other-ca"]),
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
    )  # fmt: skip
    ca_pem = write_pem(directory, "ca", ca, keys["ca"])
    return Pki(
        ca_pem.cert,
        write_pem(directory, "server", server, keys["server"]),
        write_pem(directory, "client", client, keys["client"]),
        write_pem(directory, "self-signed", self_signed, keys["self"]),
        write_pem(directory, "other-ca-client", other, keys["other"]),
    )


def trusting_client(pki: Pki, pem: Pem | None) -> ssl.SSLContext:
    """A client context that trusts the core (the link's CA), showing `pem` if any."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
    if pem is not None:
        context.load_cert_chain(str(pem.cert), str(pem.key))
    return context


async def handshake_refused(port: int, context: ssl.SSLContext) -> BaseException:
    """Connect with `context`, send a good HELLO: the error that ends it (a TLS alert, a
    reset, an end), never a WELCOME."""
    with anyio.fail_after(WAIT_S):
        try:
            stream = await connect_tls("127.0.0.1", port, context)()
        except (OSError, anyio.BrokenResourceError, anyio.EndOfStream) as error:
            return error  # TLS 1.2: the handshake itself fails
        async with stream:
            try:  # TLS 1.3: the client's handshake ends first, the server's alert follows
                await stream.send(hello())
                header, _ = await receive_frame(BufferedByteReceiveStream(stream), LIMIT)
            except (OSError, *CLOSED) as error:
                return error
    pytest.fail(f"a connection without a certificate of the link's CA got a {header}")


def test_mutual_tls_admits_only_front_ends_of_the_links_ca(tmp_path: Path) -> None:
    """Over `--link tls:`: a front-end whose certificate the link's CA signed connects,
    shows the secret and posts; one with a self-signed certificate, one with another
    CA's, and one with none fail the TLS handshake, each logged as link_refused with the
    handshake's reason, and none of them reached a HELLO; the server keeps serving (a
    new front-end of the CA posts after them)."""
    pki = make_pki(tmp_path)
    port = free_port()
    secret = tmp_path / "link-secret"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    options = ["--link", f"tls:127.0.0.1:{port}", "--link-secret-file", str(secret),
               "--link-cert", str(pki.server.cert), "--link-key", str(pki.server.key),
               "--link-ca", str(pki.ca)]  # fmt: skip
    server = TallyServer(tmp_path / "data", extra=options).start()
    try:
        good = TlsFiles(str(pki.client.cert), str(pki.client.key), str(pki.ca))
        core = Core(server, connect_tls("127.0.0.1", port, client_context(good)))
        pair = core.pair()
        before = core.balances(pair)
        log = core.log()

        async def main() -> tuple[list[BaseException], list[Posted]]:
            posted = []
            async with link_client(core.connect, "tls-front-end") as client:
                posted.append(await client.transfer(pair.transfer(unique("tls"), 700)))
            errors = [
                await handshake_refused(port, trusting_client(pki, pem))
                for pem in (pki.self_signed, pki.other_ca_client, None)
            ]
            async with link_client(core.connect, "tls-front-end") as client:
                posted.append(await client.transfer(pair.transfer(unique("tls"), 300)))
            return errors, posted

        errors, posted = anyio.run(main)
        assert [answer.replayed for answer in posted] == [False, False]
        assert core.balances(pair) == (before[0] - 1_000, before[1] + 1_000)
        refusals = log.wait_for("link_refused", 3)
        assert len(refusals) == 3, (errors, log.tail())
        assert all(event["reason"].startswith("TLS handshake") for event in refusals), refusals
        assert len(log.events("link_connected")) == 2  # the two good front-ends alone
        assert not log.events("link_frame_refused")
    finally:
        server.stop()


# --- h. options tally serve refuses ---------------------------------------------------

START_TIMEOUT_S = 60


def serve(data: Path, *words: str) -> subprocess.CompletedProcess[str]:
    """`tally serve --dev` with `words`, expected to exit on its own."""
    command = [sys.executable, "-m", "core", "serve", "--dev", "--port", str(free_port())]
    command += ["--data", str(data), "--access-log", "off", *words]
    try:
        return subprocess.run(
            command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=START_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"tally serve {' '.join(words)} kept running (it started)")


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    """A good secret, a short one, a non-ASCII one, and a PEM file that holds nothing."""
    paths = {
        "secret": tmp_path / "secret",
        "short": tmp_path / "short",
        "accented": tmp_path / "accented",
        "empty-pem": tmp_path / "empty.pem",
    }
    paths["secret"].write_bytes(SECRET)
    paths["short"].write_bytes(b"  fifteen-chars-x \n")
    paths["accented"].write_text("secret-é-of-more-than-16-characters", encoding="utf-8")
    paths["empty-pem"].write_text("")
    for name in ("secret", "short", "accented"):
        paths[name].chmod(0o600)
    paths["open"] = tmp_path / "open-secret"
    paths["open"].write_bytes(SECRET)
    paths["open"].chmod(0o644)
    return {name: str(path) for name, path in paths.items()} | {"dir": str(tmp_path)}


UNIX = "--link unix:{dir}/l.sock --link-secret-file {secret}"
TLS = "--link tls:127.0.0.1:9 --link-secret-file {secret}"
# The words (formatted with the `files` fixture's paths) and what stderr must say.
REFUSED_OPTIONS: dict[str, tuple[str, str]] = {
    "no-secret-file": ("--link unix:{dir}/l.sock", "--link needs --link-secret-file"),
    "secret-without-link": ("--link-secret-file {secret}", "--link-* options go with --link"),
    "short-secret": (
        "--link unix:{dir}/l.sock --link-secret-file {short}",
        "--link-secret-file: {short}: a link secret of 15 characters (16 at least)",
    ),
    "non-ascii-secret": (
        "--link unix:{dir}/l.sock --link-secret-file {accented}",
        "--link-secret-file: {accented}: the link secret must be ASCII",
    ),
    "secret-others-may-read": (
        "--link unix:{dir}/l.sock --link-secret-file {open}",
        "--link-secret-file: {open}: a link secret must be readable by its owner only (600)",
    ),
    "missing-secret-file": (
        "--link unix:{dir}/l.sock --link-secret-file {dir}/nothing",
        "--link-secret-file: [Errno 2] No such file or directory",
    ),
    "bad-address": (
        "--link tcp:127.0.0.1:9 --link-secret-file {secret}",
        "--link: 'tcp:127.0.0.1:9' is neither unix:PATH nor tls:HOST:PORT",
    ),
    "empty-unix-path": (
        "--link unix: --link-secret-file {secret}",
        "--link: 'unix:' is neither unix:PATH nor tls:HOST:PORT",
    ),
    "tls-port-out-of-range": (
        "--link tls:127.0.0.1:70000 --link-secret-file {secret}",
        "--link: 'tls:127.0.0.1:70000' is neither unix:PATH nor tls:HOST:PORT",
    ),
    "tls-without-certificates": (
        TLS,
        "a tls: link needs --link-cert, --link-key and --link-ca (mutual TLS)",
    ),
    "tls-without-ca": (
        TLS + " --link-cert {empty-pem} --link-key {empty-pem}",
        "a tls: link needs --link-cert, --link-key and --link-ca (mutual TLS)",
    ),
    "tls-unreadable-certificates": (
        TLS + " --link-cert {empty-pem} --link-key {empty-pem} --link-ca {empty-pem}",
        "--link-cert/--link-key/--link-ca: ",
    ),
    "certificate-with-unix": (
        UNIX + " --link-cert {empty-pem}",
        "--link-cert, --link-key and --link-ca are for a tls: link",
    ),
    "window-zero": (UNIX + " --link-window 0", "--link-window must be 1 to 65535"),
    "window-over": (UNIX + " --link-window 65536", "--link-window must be 1 to 65535"),
    "connections-zero": (
        UNIX + " --link-connections-max 0", "--link-connections-max must be 1 to 65535"
    ),
}


@pytest.mark.parametrize("case", list(REFUSED_OPTIONS))
def test_serve_refuses_bad_link_options(tmp_path: Path, files: dict[str, str], case: str) -> None:
    """Each bad combination of the --link options stops `tally serve` before it binds
    anything: exit 2, one line naming the option and the problem, no data directory
    made and no socket file."""
    words, message = REFUSED_OPTIONS[case]
    done = serve(tmp_path / "data", *words.format(**files).split())
    assert done.returncode == 2, done.stderr
    assert f"tally serve: {message.format(**files)}" in done.stderr, done.stderr
    assert not (tmp_path / "data").exists()
    assert not (tmp_path / "l.sock").exists()


def test_a_link_that_cannot_bind_stops_the_start(tmp_path: Path, files: dict[str, str]) -> None:
    """A link socket in a directory that does not exist: the server does not start
    half-way (HTTP without its link); it exits with an error naming the link."""
    link = f"unix:{tmp_path}/no-such-directory/l.sock"
    done = serve(tmp_path / "data", "--link", link, "--link-secret-file", files["secret"])
    assert done.returncode != 0, done.stderr
    assert f"link {link}: [Errno 2]" in done.stderr, done.stderr[-2000:]


# --- shutdown ------------------------------------------------------------------------


def test_sigterm_stops_a_link_server_cleanly(tmp_path: Path) -> None:
    """SIGTERM stops a `tally serve --link` (hypercorn on asyncio) as it stops one
    without a link: exit 0, no traceback in its log."""
    server = TallyServer(tmp_path / "data", extra=link_options(tmp_path)).start()
    code = server.stop()
    assert code == 0 and "Traceback" not in server.log(), server.log()


def test_a_retry_while_the_core_recovers_is_not_ready_never_refused(tmp_path: Path) -> None:
    """A transfer acknowledged over the link, the core killed (SIGKILL) and started
    again: a front-end that reconnects before the bank is ready and resends the key is
    answered NOT_READY (nothing known yet, nothing done), never a refusal that would
    tell the customer a posted transfer failed; once ready, the resend is the first
    transfer replayed."""
    running = start_core(tmp_path)
    pair = running.pair()
    command = pair.transfer(unique("recover"), 100)

    async def first() -> Posted:
        async with link_client(running.connect) as client:
            return await client.transfer(command)

    posted = anyio.run(first)
    running.server.kill()
    server = TallyServer(running.server.data_dir, extra=running.server.extra)
    server.start(wait_ready=False)
    answers: list[tuple[int, bytes]] = []

    async def early() -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                stream = await anyio.connect_unix(str(tmp_path / "link.sock"))
                break
            except OSError:
                assert time.monotonic() < deadline, "the link never listened"
                await anyio.sleep(0.001)
        async with stream:
            reader = BufferedByteReceiveStream(stream)
            await stream.send(hello())
            await frames.receive_frame(reader, frames.PAYLOAD_SIZE_MAX)
            for request_id in range(200):
                frame = requests_frame([(request_id, TRANSFER, encode_transfer(command))])
                await stream.send(frame)
                header, payload = await frames.receive_frame(reader, frames.PAYLOAD_SIZE_MAX)
                ((_, status, body),) = frames.decode_messages(payload, header.count)
                answers.append((status, body))
                if status == OK:
                    return
                await anyio.sleep(0.01)

    try:
        anyio.run(early)
        server.wait_ready()
    finally:
        server.stop()
    not_ready = [body for status, body in answers if status != OK]
    assert not_ready, "every resend came after the bank was ready: the window was not met"
    assert answers[-1][0] == OK, answers[-3:]
    replayed = decode_posted(answers[-1][1])
    assert replayed.replayed and replayed.transfer_id_packed == posted.transfer_id_packed
    for body in not_ready:
        assert orjson.loads(body)[0] == Code.NOT_READY, body
