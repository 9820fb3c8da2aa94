"""The ISO 8583 terminal simulator (loadtests/iso8583_terminal.py) and `tally bench iso8583`.

The simulator's messages are checked with the channel's own codec and keys; its
multiplexing against the real listener (channels/iso8583/server.py) with a stub bank
that answers out of order; the bench by a short run (about 10 s) against a real `tally
serve --iso8583`, whose report must carry the issue's keys and an exact ledger.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys

import anyio
import pytest

from channels.iso8583 import keys, spec
from channels.iso8583.server import serve_iso8583
from loadtests.iso8583_terminal import (
    ECHOED,
    BlockingConnection,
    Card,
    ExchangeTimeout,
    Request,
    Terminal,
    TerminalProfile,
    open_connection,
)
from tests.repo_paths import REPO_ROOT

CARD = Card("6222021234567890128", "135790")
TARGET = "6222029876543210987"


def terminal(name: str = "ATM00001", kind: str = "atm") -> Terminal:
    return Terminal(TerminalProfile(name, kind, keys.generate_key(), keys.generate_key()))


def test_a_cash_withdrawal_carries_the_profile_fields_a_pin_block_and_a_mac() -> None:
    """A 0200 parses with the channel's codec; its MAC verifies under the terminal's MAC key
    over the bytes before it; its PIN block decrypts to the card's PIN with the PIN key."""
    atm = terminal()
    request = atm.cash_withdrawal(CARD, 12_300)
    fields = spec.parse(request.raw)
    assert fields["t"] == "0200" and fields["3"] == "010000" and fields["4"] == "000000012300"
    assert fields["2"] == CARD.pan and fields["41"] == "ATM00001" and fields["49"] == "156"
    assert request.key == ("ATM00001", fields["11"])
    mac = spec.message_mac(fields)
    assert mac is not None
    assert keys.verify(spec.mac_data(request.raw), mac, atm.profile.mac_key)
    block = fields["52"]
    assert isinstance(block, bytes)
    assert keys.clear_pin(block, CARD.pan, atm.profile.pin_key) == CARD.pin
    other = terminal()
    assert not keys.verify(spec.mac_data(request.raw), mac, other.profile.mac_key)


def test_each_message_type_is_built_as_the_profile_says() -> None:
    """Purchase (00), balance (31, no amount), transfer (40 with 102/103 and the MAC in 128),
    authorization (0100), network management (0800 with field 70, no card)."""
    pos = terminal("POS00001", "pos")
    purchase = spec.parse(pos.purchase(CARD, 500).raw)
    assert purchase["3"] == "000000" and purchase["18"] == "5411" and "64" in purchase
    balance = spec.parse(pos.balance_enquiry(CARD).raw)
    assert balance["3"] == "310000" and "4" not in balance and "52" in balance
    transfer = spec.parse(pos.transfer(CARD, TARGET, 700).raw)
    assert transfer["3"] == "400000" and transfer["102"] == CARD.pan and transfer["103"] == TARGET
    assert "128" in transfer and "64" not in transfer
    assert spec.parse(pos.authorization(CARD, 900).raw)["t"] == "0100"
    for code in sorted(spec.NETWORK_CODES):
        network = spec.parse(pos.network(code).raw)
        assert network["t"] == "0800" and network["70"] == code
        assert "2" not in network and "52" not in network


def test_a_reversal_names_its_original_and_stans_advance_and_wrap() -> None:
    """A 0400 has its own STAN and names the original's MTI, STAN, field 7 and acquirer in
    field 90 (whose key is the original's operation key); STANs count up and wrap."""
    atm = Terminal(
        TerminalProfile("ATM00002", "atm", keys.generate_key(), keys.generate_key()),
        first_stan=999_999,
    )
    original = atm.cash_withdrawal(CARD, 100)
    reversal = atm.reversal(original)
    fields = spec.parse(reversal.raw)
    assert original.fields["11"] == "999999" and fields["11"] == "000001"
    assert fields["t"] == "0400" and fields["4"] == original.fields["4"] and "52" not in fields
    named = spec.original_data(str(fields["90"]))
    assert (named.mti, named.stan, named.transmission) == ("0200", "999999", original.fields["7"])
    assert named.key("ATM00002") == spec.operation_key(
        "ATM00002", "999999", str(original.fields["7"])
    )
    assert atm.repeat(original).raw == original.raw


class EchoBank:
    """Answers every message like the bank would shape it (the echoed fields, 39, a MAC),
    after a random delay, so answers on a connection come back out of order."""

    def __init__(self, mac_keys: dict[str, bytes]) -> None:
        self.mac_keys = mac_keys
        self.random = random.Random(7)
        self.handled = 0

    async def handle(self, raw: bytes) -> bytes | None:
        fields = spec.parse(raw)
        key = self.mac_keys[str(fields["41"])]
        mac = spec.message_mac(fields)
        assert mac is not None and keys.verify(spec.mac_data(raw), mac, key)
        await anyio.sleep(self.random.random() * 0.01)
        self.handled += 1
        if fields["11"] == "000666":
            return None  # a message the bank never answers: the terminal times out
        answer: spec.Message = {"t": spec.response_mti(str(fields["t"]))}
        answer.update({name: fields[name] for name in ECHOED if name in fields})
        answer["39"] = "00"
        return spec.build_signed(answer, lambda data: keys.mac(data, key))


@pytest.mark.anyio
async def test_many_terminals_share_connections_and_get_their_own_answers() -> None:
    """40 terminals over 2 connections, 5 messages each at once: every answer reaches the
    terminal and STAN that sent it, with a MAC its terminal verifies; an unanswered
    message times out without disturbing the others."""
    terminals = [terminal(f"ATM{index:05d}") for index in range(40)]
    bank = EchoBank({t.terminal_id: t.profile.mac_key for t in terminals})
    async with anyio.create_task_group() as group:
        port = await group.start(serve_iso8583, bank, "127.0.0.1", 0)
        async with (
            open_connection("127.0.0.1", port) as first,
            open_connection("127.0.0.1", port) as second,
        ):
            seen: list[tuple[Request, spec.Message, bool]] = []

            async def run(index: int) -> None:
                atm = terminals[index]
                connection = first if index % 2 else second
                for amount in range(1, 6):
                    request = atm.cash_withdrawal(CARD, amount)
                    response = await connection.exchange(request, timeout_s=10)
                    seen.append((request, response.fields, atm.verify(response)))

            async with anyio.create_task_group() as terminals_group:
                for index in range(len(terminals)):
                    terminals_group.start_soon(run, index)
            lost = Terminal(terminals[0].profile, first_stan=666)
            with pytest.raises(ExchangeTimeout):
                await first.exchange(lost.cash_withdrawal(CARD, 1), timeout_s=0.2)
            assert first.counters.timeouts == 1
            echo = await first.exchange(terminals[1].network(spec.NETWORK_ECHO), timeout_s=10)
            assert echo.fields["t"] == "0810" and echo.code == "00"
        group.cancel_scope.cancel()
    assert len(seen) == 200
    for request, answer, mac_ok in seen:
        assert mac_ok
        assert (answer["41"], answer["11"], answer["4"]) == (
            request.fields["41"], request.fields["11"], request.fields["4"]
        )  # fmt: skip
    assert first.counters.unmatched == second.counters.unmatched == 0


@pytest.mark.anyio
async def test_the_blocking_client_exchanges_one_message_at_a_time() -> None:
    """`BlockingConnection` (for a Locust user) sends, waits for its own answer, and times
    out on a message the bank does not answer."""
    atm = terminal()
    bank = EchoBank({atm.terminal_id: atm.profile.mac_key})
    async with anyio.create_task_group() as group:
        port = await group.start(serve_iso8583, bank, "127.0.0.1", 0)

        def exchange() -> list[str]:
            codes = []
            with BlockingConnection("127.0.0.1", port, timeout_s=5) as connection:
                for amount in (1, 2, 3):
                    response = connection.exchange(atm.cash_withdrawal(CARD, amount))
                    assert atm.verify(response)
                    codes.append(response.code)
                lost = Terminal(atm.profile, first_stan=666)
                connection.timeout_s = 0.2
                with pytest.raises(ExchangeTimeout):
                    connection.exchange(lost.cash_withdrawal(CARD, 1))
            return codes

        assert await anyio.to_thread.run_sync(exchange) == ["00", "00", "00"]
        group.cancel_scope.cancel()


@pytest.mark.parametrize("workers", [0, 2], ids=["one-process", "workers-2"])
def test_a_short_bench_run_reports_the_promised_figures_and_an_exact_ledger(workers: int) -> None:
    """`tally bench iso8583` on 8 terminals for 2 s a phase, by the one process and
    through two front-ends: the issue's keys are in the report, every answer was matched,
    every outcome is known, the ledger holds exactly the approved postings, and the
    empty cards were declined 51; through front-ends, the core's and the front-ends'
    CPU are both measured."""
    done = subprocess.run(
        [sys.executable, "-m", "core", "bench", "iso8583", "--terminals", "8", "--seconds", "2",
         "--rate", "200", "--warmup-seconds", "1", "--empty-share", "0.2",
         "--transfers-max", str(1 << 20), "--workers", str(workers), "--json"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("financial_messages_per_s", "latency_ms_p50", "latency_ms_p99"):
        assert report[key] > 0, key
    assert report["approved"] > 0 and report["declined_by_code"].get("51", 0) > 0
    assert report["declined"] == report["declined_by_code"]["51"]
    assert report["ledger_exact"] and report["ledger_mismatches"] == 0
    assert report["outcomes_unknown"] == 0 and report["unmatched_answers"] == 0
    assert report["answers_mac_checked"] > 0 and report["answers_mac_failed"] == 0
    if workers:
        assert report["core_cpu_us_per_message"] > 0
        assert report["front_end_cpu_us_per_message"] > 0
