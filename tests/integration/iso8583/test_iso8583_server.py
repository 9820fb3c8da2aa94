"""ISO 8583 against a real `tally serve --iso8583` process: every message type over TCP,
repeats and reversals across a kill -9, garbage, a bad MAC, an unknown terminal, many
terminals on one connection, and the listener on every server and event loop `tally
serve` offers (hypercorn on asyncio and trio, uvicorn on uvloop).

The terminals are loadtests/iso8583_terminal.py's simulator with the development keys
(core/data/iso8583-keys.toml); the accounts are opened and read over HTTP at the
counter of the same server, which is how the tests see what was posted.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest

from channels.client import TallyClient
from channels.iso8583 import keys, spec
from channels.iso8583.framing import FrameDecoder, frame
from channels.iso8583.keys import DEFAULT_KEYS_PATH
from channels.iso8583.terminals import DEFAULT_TERMINALS_PATH
from core.bench.server import children_of
from loadtests.iso8583_terminal import (
    BlockingConnection,
    Card,
    ExchangeTimeout,
    Request,
    Response,
    Terminal,
    TerminalProfile,
    open_connection,
)
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

PIN = "135790"
FUNDS_MINOR = 1_000_000  # 10,000 CNY on the card's account
EXCHANGE_TIMEOUT_S = 10.0
# The placeholder merchant of the shipped terminal registry, replaced by a real account.
PLACEHOLDER_MERCHANT = "6235010000000000012"


# Terminals added to the shipped registry for the key exchange tests alone (their keys
# change): one for each test.
KEY_EXCHANGE_TERMINAL = "ATM00003"
FRONT_END_TERMINAL = "ATM00004"
KEY_EXCHANGE_ENTRY = "".join(
    f"""
[terminals.{terminal_id}]
channel = "atm"
kind = "atm"
pin_key_id = "dev-atm-tpk"
mac_key_id = "dev-atm-tak"
master_key_id = "dev-atm-tmk"
"""
    for terminal_id in (KEY_EXCHANGE_TERMINAL, FRONT_END_TERMINAL)
)


@dataclass(frozen=True)
class KeyIds:
    pin_key_id: str
    mac_key_id: str
    terminal_id: str = ""
    master_key_id: str = ""


def development_keys() -> tuple[bytes, bytes, bytes, bytes]:
    """The shipped development keys of the shipped ATM00001 and POS00001: ATM PIN and
    MAC keys, POS PIN and MAC keys."""
    store = keys.load_keys(DEFAULT_KEYS_PATH)
    with open(DEFAULT_TERMINALS_PATH, "rb") as file:
        tables = tomllib.load(file)["terminals"]
    atm, pos = (
        KeyIds(tables[name]["pin_key_id"], tables[name]["mac_key_id"])
        for name in ("ATM00001", "POS00001")
    )
    return store.pin_key(atm), store.mac_key(atm), store.pin_key(pos), store.mac_key(pos)


def terminals(first_stan: int = 1) -> tuple[Terminal, Terminal, Terminal]:
    """ATM00001, POS00001 and an ATM the registry does not list (with the ATM's keys)."""
    atm_pin, atm_mac, pos_pin, pos_mac = development_keys()
    return (
        Terminal(TerminalProfile("ATM00001", "atm", atm_pin, atm_mac), first_stan=first_stan),
        Terminal(TerminalProfile("POS00001", "pos", pos_pin, pos_mac), first_stan=first_stan),
        Terminal(TerminalProfile("ATM09999", "atm", atm_pin, atm_mac), first_stan=first_stan),
    )


@dataclass
class Bank:
    """A running `tally serve --iso8583` and what the tests use of it."""

    server: TallyServer
    iso_port: int
    card: Card  # a funded Class I account: its number is the card number
    other: Card  # a second funded account (a transfer's target; its own PIN tests)
    merchant: str  # the POS terminal's merchant account
    atm: Terminal
    pos: Terminal
    stranger: Terminal
    workers: int  # front-ends (tally serve --workers): the listener and adapter run in them

    def counter(self) -> TallyClient:
        return self.server.client("counter")  # the HTTP port changes at each restart

    def balance(self, account: str) -> int:
        with self.counter() as counter:
            return balance(counter, account)

    def connect(self) -> BlockingConnection:
        return BlockingConnection("127.0.0.1", self.iso_port, timeout_s=EXCHANGE_TIMEOUT_S)

    def exchange(self, request: Request, terminal: Terminal | None = None) -> Response:
        """One exchange on a fresh connection; the answer's MAC checked when it has one."""
        with self.connect() as connection:
            response = connection.exchange(request)
        if terminal is not None:
            assert terminal.verify(response), response.fields
        return response

    def restart(self, *, kill: bool) -> None:
        if kill:
            self.server.kill()
        else:
            self.server.stop()
        self.server.start()


def iso_server(
    data: Path, iso_port: int, terminals_file: Path, extra: list[str] | None = None,
    **options: object,
) -> TallyServer:  # fmt: skip
    extra = ["--iso8583", f"127.0.0.1:{iso_port}", "--terminals", str(terminals_file),
             *(extra or [])]  # fmt: skip
    return TallyServer(data, extra=extra, **options)  # type: ignore[arg-type]


def open_funded(counter: TallyClient, amount_minor: int = FUNDS_MINOR) -> str:
    account = open_class_i(counter, register(counter), password=PIN)
    if amount_minor:
        cash_deposit(counter, account, amount_minor)
    return account


@pytest.fixture(scope="module", params=[0, 2], ids=["one-process", "workers-2"])
def bank(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Bank]:
    """Accounts opened over HTTP first (the POS terminal's merchant must exist before the
    terminal registry names it), then the same data directory served with --iso8583: by
    the one process, and by two front-ends (`--workers 2`) that run the listener and
    the adapter and call the core's services over the core link."""
    workers: int = request.param
    work = tmp_path_factory.mktemp("iso8583")
    data = work / "data"
    setup = TallyServer(data).start()
    try:
        with setup.client("counter") as counter:
            card, other = open_funded(counter), open_funded(counter)
            merchant = open_funded(counter, 0)
    finally:
        setup.stop()
    terminals_file = work / "terminals.toml"
    shipped = DEFAULT_TERMINALS_PATH.read_text()
    assert PLACEHOLDER_MERCHANT in shipped
    terminals_file.write_text(shipped.replace(PLACEHOLDER_MERCHANT, merchant) + KEY_EXCHANGE_ENTRY)
    iso_port = free_port()
    extra = ["--workers", str(workers)] if workers else []
    server = iso_server(data, iso_port, terminals_file, extra=extra).start()
    atm, pos, stranger = terminals()
    try:
        yield Bank(
            server, iso_port, Card(card, PIN), Card(other, PIN), merchant, atm, pos, stranger,
            workers,
        )  # fmt: skip
    finally:
        if server.process is not None:
            server.stop()


def amounts(response: Response) -> dict[str, int]:
    """Field 54 by amount type: "01" ledger balance, "02" available."""
    return {
        amount.amount_type: amount.amount_minor
        for amount in spec.additional_amounts(str(response.fields["54"]))
    }


# --- every message type --------------------------------------------------------------------


def test_network_management(bank: Bank) -> None:
    """0800 sign-on, echo and sign-off are answered 0810/00 (key exchange:
    test_key_exchange); each answer echoes STAN, terminal and field 70, MACed."""
    atm = bank.atm
    with bank.connect() as connection:
        for code, expected in [
            (spec.NETWORK_SIGN_ON, "00"),
            (spec.NETWORK_ECHO, "00"),
            (spec.NETWORK_SIGN_OFF, "00"),
        ]:
            request = atm.network(code)
            response = connection.exchange(request)
            assert response.fields["t"] == spec.MTI_NETWORK_RESPONSE
            assert response.code == expected, (code, response.fields)
            for name in ("7", "11", "41", "70"):
                assert response.fields[name] == request.fields[name]
            assert atm.verify(response)


def key_exchanging(terminal_id: str) -> tuple[Terminal, Terminal]:
    """A terminal of the registry that has the development master key, on the file's
    keys: as a simulator that installs the keys it is given, and as one that keeps the
    old ones (`stale`)."""
    atm_pin, atm_mac, _, _ = development_keys()
    with open(DEFAULT_KEYS_PATH, "rb") as file:
        master = bytes.fromhex(tomllib.load(file)["keys"]["dev-atm-tmk"]["value"])
    terminal = Terminal(TerminalProfile(terminal_id, "atm", atm_pin, atm_mac, master_key=master))
    stale = Terminal(TerminalProfile(terminal_id, "atm", atm_pin, atm_mac), first_stan=9)
    return terminal, stale


def test_key_exchange(bank: Bank) -> None:
    """0800 161 gives a terminal with a master key a new MAC key (field 53 2...), then a
    new PIN key (53 1...): each answered 00, MACed with the MAC key in force when asked,
    field 48 the new key under the master key with its check value, which the simulator
    installs; from then on a message signed with the old MAC key is 63, and the new keys
    work (a cash withdrawal's PIN block under the new PIN key is approved)."""
    atm_pin, atm_mac, _, _ = development_keys()
    terminal, stale = key_exchanging(KEY_EXCHANGE_TERMINAL)
    request = terminal.key_exchange("mac")
    response = bank.exchange(request, terminal)  # MACed with the old key
    assert response.code == "00" and response.fields["53"] == request.fields["53"]
    assert terminal.install_key(request, response)
    assert terminal.profile.mac_key != atm_mac
    assert bank.exchange(terminal.network(spec.NETWORK_ECHO), terminal).code == "00"
    assert bank.exchange(stale.network(spec.NETWORK_ECHO)).code == "63"
    request = terminal.key_exchange("pin")
    response = bank.exchange(request, terminal)
    assert response.code == "00" and terminal.install_key(request, response)
    assert terminal.profile.pin_key != atm_pin
    before = bank.balance(bank.card.pan)
    withdrawal = terminal.cash_withdrawal(bank.card, 1_000)
    assert bank.exchange(withdrawal, terminal).code == "00"
    assert bank.balance(bank.card.pan) == before - 1_000


def kill_front_ends(bank: Bank) -> None:
    """kill -9 every front-end of a `--workers` server; back once the core has started
    new ones and they took the terminals' socket again (an echo is answered)."""
    core = bank.server.process
    assert core is not None
    killed = children_of(core.pid)
    assert len(killed) == bank.workers, killed
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        started = [pid for pid in children_of(core.pid) if pid not in killed]
        if len(started) == bank.workers:
            try:
                if bank.exchange(bank.atm.network(spec.NETWORK_ECHO), bank.atm).code == "00":
                    return
            except (OSError, ExchangeTimeout):
                pass
        time.sleep(0.2)
    raise AssertionError("the front-ends did not come back")


def test_front_ends_killed_lose_nothing_and_keep_no_keys(bank: Bank) -> None:
    """Front-ends only. A key exchange made through one front-end, then every front-end
    killed with SIGKILL: the new front-ends (which never saw the exchange) verify the
    terminal's new MAC key and refuse the old one (63), since exchanged keys are the
    core's. A cash withdrawal sent as the front-ends are killed (its answer lost) and
    repeated through the new ones is answered 00 and debited once."""
    if not bank.workers:
        pytest.skip("front-ends only: the one process has no front-end to kill")
    terminal, stale = key_exchanging(FRONT_END_TERMINAL)
    request = terminal.key_exchange("mac")
    response = bank.exchange(request, terminal)
    assert response.code == "00" and terminal.install_key(request, response)
    kill_front_ends(bank)
    assert bank.exchange(terminal.network(spec.NETWORK_ECHO), terminal).code == "00"
    assert bank.exchange(stale.network(spec.NETWORK_ECHO)).code == "63"

    before = bank.balance(bank.card.pan)
    withdrawal = terminal.cash_withdrawal(bank.card, 2_500)
    with bank.connect() as connection:
        connection.sock.sendall(frame(withdrawal.raw))
        kill_front_ends(bank)
    again = bank.exchange(terminal.repeat(withdrawal), terminal)
    assert again.code == "00", again.fields
    assert bank.balance(bank.card.pan) == before - 2_500


def test_balance_enquiry_posts_nothing(bank: Bank) -> None:
    """0200/31 answers 00 with the ledger and available balances in field 54, equal to
    what HTTP reads, and moves no money."""
    before = bank.balance(bank.card.pan)
    response = bank.exchange(bank.atm.balance_enquiry(bank.card), bank.atm)
    assert response.fields["t"] == spec.MTI_FINANCIAL_RESPONSE and response.code == "00"
    assert amounts(response) == {"01": before, "02": before}
    assert bank.balance(bank.card.pan) == before


def test_cash_withdrawal_and_its_repeat(bank: Bank) -> None:
    """0200/01 at the ATM debits the card's account once; the same message again is
    answered as the first was (same 38 and 39) and posts nothing more."""
    before = bank.balance(bank.card.pan)
    request = bank.atm.cash_withdrawal(bank.card, 12_300)
    first = bank.exchange(request, bank.atm)
    assert first.code == "00" and len(str(first.fields["38"])) == 6
    for name in ("2", "3", "4", "7", "11", "12", "13", "32", "37", "41", "42", "49"):
        assert first.fields[name] == request.fields[name]
    assert bank.balance(bank.card.pan) == before - 12_300
    again = bank.exchange(bank.atm.repeat(request), bank.atm)
    assert (again.code, again.fields["38"]) == ("00", first.fields["38"])
    assert bank.balance(bank.card.pan) == before - 12_300


def test_purchase_pays_the_merchant(bank: Bank) -> None:
    """0200/00 at the POS moves the amount from the card's account to the terminal's
    merchant at once (a hold captured in full)."""
    card_before, merchant_before = bank.balance(bank.card.pan), bank.balance(bank.merchant)
    response = bank.exchange(bank.pos.purchase(bank.card, 4_560), bank.pos)
    assert response.code == "00", response.fields
    assert bank.balance(bank.card.pan) == card_before - 4_560
    assert bank.balance(bank.merchant) == merchant_before + 4_560


def test_authorization_holds_and_its_reversal_releases(bank: Bank) -> None:
    """0100 holds the amount (available drops, the ledger balance does not); its 0400
    voids the hold (available back), and nothing reaches the merchant."""
    pos, card = bank.pos, bank.card
    merchant_before = bank.balance(bank.merchant)
    start = amounts(bank.exchange(pos.balance_enquiry(card), pos))
    authorization = pos.authorization(card, 7_000)
    response = bank.exchange(authorization, pos)
    assert response.fields["t"] == spec.MTI_AUTHORIZATION_RESPONSE and response.code == "00"
    held = amounts(bank.exchange(pos.balance_enquiry(card), pos))
    assert held == {"01": start["01"], "02": start["02"] - 7_000}
    reversal = bank.exchange(pos.reversal(authorization), pos)
    assert reversal.fields["t"] == spec.MTI_REVERSAL_RESPONSE and reversal.code == "00"
    assert amounts(bank.exchange(pos.balance_enquiry(card), pos)) == start
    assert bank.balance(bank.merchant) == merchant_before


def test_transfer_between_accounts(bank: Bank) -> None:
    """0200/40 at the ATM moves the amount from 102 (the card's account) to 103."""
    card_before, other_before = bank.balance(bank.card.pan), bank.balance(bank.other.pan)
    response = bank.exchange(bank.atm.transfer(bank.card, bank.other.pan, 3_300), bank.atm)
    assert response.code == "00", response.fields
    assert (response.fields["102"], response.fields["103"]) == (bank.card.pan, bank.other.pan)
    assert bank.balance(bank.card.pan) == card_before - 3_300
    assert bank.balance(bank.other.pan) == other_before + 3_300


def test_reversal_is_idempotent_and_an_unknown_original_is_25(bank: Bank) -> None:
    """A 0400 gives the money back once however often it comes; a 0400 naming nothing
    posted is 25; the original arriving after its reversal is refused (94), unposted."""
    atm, card = bank.atm, bank.card
    before = bank.balance(card.pan)
    withdrawal = atm.cash_withdrawal(card, 5_000)
    assert bank.exchange(withdrawal, atm).code == "00"
    reversal = atm.reversal(withdrawal)
    for _ in range(2):
        response = bank.exchange(reversal, atm)
        assert (response.fields["t"], response.code) == (spec.MTI_REVERSAL_RESPONSE, "00")
        assert response.fields["90"] == reversal.fields["90"]
        assert bank.balance(card.pan) == before
    never_sent = atm.cash_withdrawal(card, 6_000)
    assert bank.exchange(atm.reversal(never_sent), atm).code == "25"
    assert bank.exchange(never_sent, atm).code == "94"  # it crossed its reversal
    assert bank.balance(card.pan) == before


def test_refusals_are_answered_with_their_codes(bank: Bank) -> None:
    """Insufficient funds 51, a wrong PIN 55, an unknown card 14, a transaction the
    terminal's kind may not do 58: answered, MACed, nothing posted."""
    atm, pos, card = bank.atm, bank.pos, bank.card
    before = bank.balance(card.pan)
    assert bank.exchange(atm.cash_withdrawal(card, before + 100), atm).code == "51"
    assert bank.exchange(atm.cash_withdrawal(Card(card.pan, "000000"), 100), atm).code == "55"
    assert bank.exchange(atm.balance_enquiry(card), atm).code == "00"  # the count reset
    nobody = Card(str(int(card.pan) + 10_000_000), PIN)
    assert bank.exchange(atm.cash_withdrawal(nobody, 100), atm).code == "14"
    assert bank.exchange(pos.cash_withdrawal(card, 100), pos).code == "58"
    assert bank.balance(card.pan) == before


# --- refused before anything is posted ------------------------------------------------------


def test_bad_mac_and_unknown_terminal_post_nothing(bank: Bank) -> None:
    """A message whose MAC does not verify is answered 63 (MACed); one from a terminal
    the registry does not list 03 (unsigned: there is no key); neither posts."""
    atm, card = bank.atm, bank.card
    before = bank.balance(card.pan)
    request = atm.cash_withdrawal(card, 1_000)
    tampered = Request(request.fields, request.raw[:-1] + bytes([request.raw[-1] ^ 0x01]))
    response = bank.exchange(tampered, atm)
    assert response.code == "63"
    amount_changed = request.raw.replace(
        str(request.fields["4"]).encode(), spec.amount_field(100_000).encode(), 1
    )
    assert bank.exchange(Request(request.fields, amount_changed), atm).code == "63"
    unknown = bank.exchange(bank.stranger.cash_withdrawal(card, 1_000))
    assert unknown.code == "03" and "64" not in unknown.fields and "128" not in unknown.fields
    assert bank.balance(card.pan) == before


def test_garbage_is_survived_or_cut_off_without_stalling_others(bank: Bank) -> None:
    """Bytes that are no message: unanswered, the connection kept. A message broken
    after its terminal id: answered 30. Framing lost (a zero length, a length over the
    cap): that connection closed, while another one is answered throughout. Nothing
    posted. `/metrics` counts all of it (the one process's: front-ends have no /metrics
    of their own yet, and the core's does not see their listeners)."""
    atm, card = bank.atm, bank.card
    before = bank.balance(card.pan)
    counted = iso_metrics(bank) if not bank.workers else {}
    with bank.connect() as connection, bank.connect() as bystander:
        connection.sock.sendall(frame(b"\x00garbage that is not a message\xff"))
        assert connection.exchange(atm.network(spec.NETWORK_ECHO)).code == "00"
        request = atm.cash_withdrawal(card, 1_000)
        currency = request.raw.rindex(b"156")  # field 49, after field 41
        broken = request.raw[:currency] + b"1X6" + request.raw[currency + 3 :]
        response = connection.exchange(Request(request.fields, broken))
        assert response.code == "30" and atm.verify(response)
        for cut in (b"\x00\x00", b"\xff\xff" + b"\x00" * 64):
            with bank.connect() as doomed:
                doomed.sock.sendall(cut)
                assert closed_by_server(doomed.sock)
            assert bystander.exchange(atm.network(spec.NETWORK_ECHO)).code == "00"
        assert connection.exchange(atm.network(spec.NETWORK_ECHO)).code == "00"
    assert bank.balance(card.pan) == before
    if bank.workers:
        return
    now = iso_metrics(bank)
    assert (
        now["tally_iso8583_connections_dropped_total"]
        >= counted.get("tally_iso8583_connections_dropped_total", 0) + 2
    )  # the two cut off
    assert now["tally_iso8583_connections_total"] >= counted["tally_iso8583_connections_total"] + 4
    assert now["tally_iso8583_messages_total"] >= counted["tally_iso8583_messages_total"] + 6
    assert now["tally_iso8583_unanswered_total"] >= counted["tally_iso8583_unanswered_total"] + 1
    code_30 = 'tally_iso8583_responses_total{code="30"}'
    assert now[code_30] >= counted.get(code_30, 0) + 1


def iso_metrics(bank: Bank) -> dict[str, float]:
    """The `tally_iso8583_*` samples of `/metrics` (the HTTP port of the same server)."""
    text = httpx.get(bank.server.url + "/metrics").text
    samples = {}
    for line in text.splitlines():
        if line.startswith("tally_iso8583_"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    assert "tally_iso8583_connections" in samples, text[:500]
    return samples


def closed_by_server(sock: socket.socket, timeout_s: float = 5.0) -> bool:
    sock.settimeout(timeout_s)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


# --- many terminals on one connection -------------------------------------------------------


def test_many_terminals_share_one_connection(bank: Bank) -> None:
    """Concurrent messages of two terminals on one connection are all answered, each
    matched to its request by terminal and STAN, each posting once."""
    atm, card = bank.atm, bank.card
    second = Terminal(
        TerminalProfile("ATM00002", "atm", atm.profile.pin_key, atm.profile.mac_key),
        first_stan=500_000,
    )
    before = bank.balance(card.pan)
    requests = [t.cash_withdrawal(card, 100) for t in (atm, second) for _ in range(40)]
    requests += [t.balance_enquiry(card) for t in (atm, second) for _ in range(10)]
    codes: list[str] = []

    async def main() -> None:
        async with (
            open_connection("127.0.0.1", bank.iso_port) as connection,
            anyio.create_task_group() as task_group,
        ):
            for request in requests:
                task_group.start_soon(exchange, connection, request)

    async def exchange(connection: object, request: Request) -> None:
        response = await connection.exchange(request, EXCHANGE_TIMEOUT_S)  # type: ignore[attr-defined]
        terminal = atm if request.fields["41"] == "ATM00001" else second
        assert terminal.verify(response)
        assert response.fields["11"] == request.fields["11"]
        codes.append(response.code)

    anyio.run(main)
    assert codes == ["00"] * len(requests)
    assert bank.balance(card.pan) == before - 80 * 100


# --- kill -9 --------------------------------------------------------------------------------


def test_repeats_and_reversals_after_kill_9(bank: Bank) -> None:
    """Across SIGKILL restarts, nothing answered is lost and nothing is posted twice: a
    repeated 0200 gets its first answer back; one whose answer the crash swallowed is
    posted exactly once; a 0400 (and its repeat after another crash) gives the money
    back once; the original repeated after its reversal posts nothing."""
    atm, card = bank.atm, bank.card
    before = bank.balance(card.pan)
    answered = atm.cash_withdrawal(card, 10_000)
    first = bank.exchange(answered, atm)
    assert first.code == "00"
    unanswered = atm.cash_withdrawal(card, 20_000)
    with bank.connect() as connection:
        connection.sock.sendall(frame(unanswered.raw))
        bank.server.kill()  # its outcome is unknown to the terminal: it repeats it
    bank.server.start()
    again = bank.exchange(atm.repeat(answered), atm)
    assert (again.code, again.fields["38"]) == ("00", first.fields["38"])
    assert bank.exchange(atm.repeat(unanswered), atm).code == "00"
    assert bank.balance(card.pan) == before - 30_000

    reversal = atm.reversal(answered)
    assert bank.exchange(reversal, atm).code == "00"
    bank.restart(kill=True)
    assert bank.exchange(atm.repeat(reversal), atm).code == "00"
    assert bank.balance(card.pan) == before - 20_000
    assert bank.exchange(atm.repeat(answered), atm).code == "94"  # reversed since
    assert bank.exchange(atm.repeat(unanswered), atm).code == "00"
    assert bank.balance(card.pan) == before - 20_000


def test_an_original_after_its_reversal_and_a_kill_9_is_not_posted(bank: Bank) -> None:
    """A 0400 that came before its original (25), then a crash: the original, arriving
    after the restart, is still refused and posts nothing (the brief: never posted after
    its reversal)."""
    atm, card = bank.atm, bank.card
    before = bank.balance(card.pan)
    late = atm.cash_withdrawal(card, 1_500)
    assert bank.exchange(atm.reversal(late), atm).code == "25"
    bank.restart(kill=True)
    assert bank.exchange(late, atm).code in ("94", "12")
    assert bank.balance(card.pan) == before


def test_sigterm_answers_in_flight_then_stops(bank: Bank) -> None:
    """A graceful stop (SIGTERM) answers the messages already read, closes the
    terminals' connections, and the restarted server knows what it answered."""
    atm, card = bank.atm, bank.card
    before = bank.balance(card.pan)
    requests = [atm.cash_withdrawal(card, 100) for _ in range(20)]
    with bank.connect() as connection:
        connection.sock.sendall(b"".join(frame(request.raw) for request in requests))
        answers = read_answers(connection.sock, len(requests))
        assert bank.server.stop() == 0
        assert closed_by_server(connection.sock)
    assert [spec.parse(raw)["39"] for raw in answers] == ["00"] * len(requests)
    bank.server.start()
    assert bank.exchange(atm.repeat(requests[0]), atm).code == "00"
    assert bank.balance(card.pan) == before - 20 * 100
    assert "iso8583_stopped" in bank.server.log()


def read_answers(sock: socket.socket, count: int, timeout_s: float = 10.0) -> list[bytes]:
    decoder = FrameDecoder(0xFFFF)
    answers: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while len(answers) < count:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        assert chunk, f"closed after {len(answers)} of {count} answers"
        answers += decoder.feed(chunk)
    return answers


# --- other servers and event loops ----------------------------------------------------------


@pytest.mark.parametrize(
    ("backend", "server"),
    [("trio", "hypercorn"), ("asyncio", "uvicorn")],
    ids=["hypercorn-trio", "uvicorn-uvloop"],
)
def test_listener_on_every_server_and_loop(tmp_path: Path, backend: str, server: str) -> None:
    """The listener runs in the lifespan of whichever server and loop `tally serve`
    uses: a withdrawal, its repeat and its reversal, then a clean stop that drains it."""
    iso_port = free_port()
    process = iso_server(
        tmp_path / "data", iso_port, DEFAULT_TERMINALS_PATH, backend=backend, server=server
    ).start()
    try:
        with process.client("counter") as counter:
            card = Card(open_funded(counter), PIN)
            atm = terminals()[0]
            with BlockingConnection("127.0.0.1", iso_port, EXCHANGE_TIMEOUT_S) as connection:
                request = atm.cash_withdrawal(card, 2_500)
                first = connection.exchange(request)
                again = connection.exchange(atm.repeat(request))
                reversal = connection.exchange(atm.reversal(request))
            assert [first.code, again.code, reversal.code] == ["00", "00", "00"]
            assert first.fields["38"] == again.fields["38"] and atm.verify(reversal)
            assert balance(counter, card.pan) == FUNDS_MINOR
    finally:
        code = process.stop()
    assert code in (0, -15)  # uvicorn ends by re-raising the SIGTERM it caught
    assert "iso8583_stopped" in process.log()


# --- the command line -----------------------------------------------------------------------


def test_serve_refuses_bad_iso8583_options(tmp_path: Path) -> None:
    """A malformed address, --terminals without --iso8583, and the public development
    keys without --dev stop `tally serve` before it starts, saying why."""

    def serve(*words: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "core", "serve", "--data", str(tmp_path / "d"), *words]
        return subprocess.run(
            command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False
        )

    bad_address = serve("--dev", "--iso8583", "8583")
    assert bad_address.returncode == 2 and "--iso8583" in bad_address.stderr
    alone = serve("--dev", "--terminals", str(DEFAULT_TERMINALS_PATH.with_name("x.toml")))
    assert alone.returncode == 2 and "go with --iso8583" in alone.stderr
    public = serve("--iso8583", f"127.0.0.1:{free_port()}")
    assert public.returncode == 2
    assert "development terminal keys" in public.stderr


# --- the channel's rate limit ----------------------------------------------------------------

RATE_LIMITED_ATM = """
rate_per_s = 0.001
burst = 3
"""


@pytest.mark.parametrize("workers", [0, 2], ids=["one-process", "workers-2"])
def test_the_channel_rate_limit_holds_over_iso8583_and_http(tmp_path: Path, workers: int) -> None:
    """The ATM channel's token bucket (burst 3, next token in 1,000 s) is one for both of
    its protocols: three 0200s go, the fourth is 91 with nothing posted, and a signed HTTP
    request of the channel is then 429 too. A reversal and an echo are never refused for
    the rate. `/metrics` counts the refusals of both protocols under the channel. Through
    two front-ends too: the bucket is the core's, whichever front-end a message meets."""
    shipped = CHANNELS_FILE.read_text()
    limited, replaced = re.subn(
        r"(\[channels\.atm\]\n(?:(?!\[).*\n)*?)rate_per_s = [0-9_]+\n",
        lambda match: match.group(1) + RATE_LIMITED_ATM.lstrip("\n"),
        shipped,
    )
    assert replaced == 1
    channels_file = tmp_path / "channels.toml"
    channels_file.write_text(limited)
    data = tmp_path / "data"
    setup = TallyServer(data).start()
    try:
        with setup.client("counter") as counter:
            card = Card(open_funded(counter), PIN)
            merchant = open_funded(counter, 0)
    finally:
        setup.stop()
    terminals_file = tmp_path / "terminals.toml"
    terminals_file.write_text(
        DEFAULT_TERMINALS_PATH.read_text().replace(PLACEHOLDER_MERCHANT, merchant)
    )
    iso_port = free_port()
    extra = ["--workers", str(workers)] if workers else []
    server = iso_server(data, iso_port, terminals_file, extra, channels_file=channels_file)
    server.start()
    try:
        atm = terminals()[0]
        first = atm.cash_withdrawal(card, 1_000)
        codes = []
        for request in [first, *(atm.cash_withdrawal(card, 1_000) for _ in range(3))]:
            # A connection each: behind front-ends, they land on either of them.
            with BlockingConnection("127.0.0.1", iso_port, EXCHANGE_TIMEOUT_S) as line:
                codes.append(line.exchange(request).code)
        assert codes == ["00", "00", "00", "91"]
        with BlockingConnection("127.0.0.1", iso_port, timeout_s=EXCHANGE_TIMEOUT_S) as line:
            assert line.exchange(atm.network("301")).code == "00"  # an echo: not limited
            reversal = line.exchange(atm.reversal(first))
            assert (reversal.fields["t"], reversal.code) == (spec.MTI_REVERSAL_RESPONSE, "00")
        with server.client("counter") as counter:
            assert balance(counter, card.pan) == FUNDS_MINOR - 2 * 1_000
        with server.client("atm") as channel:
            refused = channel.get(f"/v1/accounts/{card.pan}")
        assert refused.status_code == 429, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert int(refused.headers["retry-after"]) >= 1
        text = httpx.get(server.url + "/metrics").text
        assert 'tally_channel_rate_limited_total{channel="atm"} 2.0' in text, text[-2000:]
    finally:
        server.stop()


# --- tally gateway on another machine -------------------------------------------------------


def test_a_gateway_serves_terminals_on_the_cores_services(tmp_path: Path) -> None:
    """`tally gateway --core ADDRESS --iso8583 HOST:PORT` (a front-end on another machine,
    here over the core's Unix link): a withdrawal through it is posted by the core, its
    repeat answered as the first, its reversal gives the money back. The gateway refuses
    to start on the public development keys without --dev, and on a bad address."""
    secret = tmp_path / "link.secret"
    secret.write_text(secrets.token_urlsafe(32))
    secret.chmod(0o600)
    link = f"unix:{tmp_path / 'link.sock'}"
    core_iso, gateway_iso = free_port(), free_port()
    server = iso_server(
        tmp_path / "data", core_iso, DEFAULT_TERMINALS_PATH,
        ["--link", link, "--link-secret-file", str(secret)],
    ).start()  # fmt: skip
    base = [
        sys.executable,
        "-m",
        "core",
        "gateway",
        "--core",
        link,
        "--link-secret-file",
        str(secret),
        "--port",
        str(free_port()),
        "--terminals",
        str(DEFAULT_TERMINALS_PATH),
    ]
    try:
        for extra, said in (
            (["--iso8583", f"127.0.0.1:{gateway_iso}"], "public development terminal keys"),
            (["--iso8583", "nowhere", "--dev"], "--iso8583: expected HOST:PORT"),
        ):
            refused = subprocess.run([*base, *extra], cwd=REPO_ROOT, capture_output=True,
                                     text=True, timeout=60)  # fmt: skip
            assert refused.returncode == 2 and said in refused.stderr, refused.stderr[-2000:]
        log = open(tmp_path / "gateway.log", "wb")  # noqa: SIM115 (closed below)
        gateway = subprocess.Popen(
            [*base, "--iso8583", f"127.0.0.1:{gateway_iso}", "--dev"],
            cwd=REPO_ROOT, stdout=log, stderr=log,
        )  # fmt: skip
        try:
            with server.client("counter") as counter:
                card = Card(open_funded(counter), PIN)
                atm = terminals()[0]
                request = atm.cash_withdrawal(card, 3_000)
                deadline = time.monotonic() + 30
                while True:  # the gateway's listener and its link come up
                    try:
                        with BlockingConnection("127.0.0.1", gateway_iso, 5.0) as line:
                            first = line.exchange(request)
                        break
                    except (OSError, ExchangeTimeout):
                        assert time.monotonic() < deadline, (tmp_path / "gateway.log").read_text()
                        time.sleep(0.2)
                with BlockingConnection("127.0.0.1", gateway_iso, EXCHANGE_TIMEOUT_S) as line:
                    again = line.exchange(atm.repeat(request))
                    assert balance(counter, card.pan) == FUNDS_MINOR - 3_000
                    reversal = line.exchange(atm.reversal(request))
                assert [first.code, again.code, reversal.code] == ["00", "00", "00"]
                assert first.fields["38"] == again.fields["38"] and atm.verify(reversal)
                assert balance(counter, card.pan) == FUNDS_MINOR
        finally:
            gateway.terminate()
            gateway.wait(timeout=20)
            log.close()
    finally:
        server.stop()
