"""The partner-bank simulator (loadtests/iso20022_partner.py) and `tally bench iso20022`.

The simulator's pacs.008 is checked with the channel's own codec and XSD, its pacs.002
reader against the codec's builder; the bench by a small run against a real `tally
serve`, whose report must carry the issue's keys, an exact ledger and consistent
answers to a message sent again.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

from channels.client import Signer
from channels.iso20022 import codec
from channels.iso20022.messages import PACS_008, StatusReport, TxStatus
from loadtests.iso20022_partner import PartnerBank, credit_reference, read_status_report
from tests.repo_paths import REPO_ROOT

ACCOUNT = "6235010000000000010"


def partner() -> PartnerBank:
    return PartnerBank(Signer("open_api", "dev-open-api-1", b"x" * 32), tag="TEST")


def test_a_partner_message_is_a_valid_pacs008_carrying_its_credits() -> None:
    """The simulator's pacs.008 validates against the XSD subset and parses back (with the
    channel's codec) to the credits it was built from: accounts, amounts, TxIds, the
    partner as instructing and debtor agent, NbOfTxs and CtrlSum right."""
    bank = partner()
    credits = bank.credits([(ACCOUNT, 1), ("6235010000000000028", 12_345_67)])
    sent = bank.message(credits)
    codec.validate(sent.body, PACS_008)
    parsed = codec.parse_credit_transfers(sent.body)
    assert parsed.msg_id == sent.msg_id and parsed.number == 2
    assert parsed.control_sum_minor == 1 + 12_345_67
    assert parsed.instructing_agent == bank.bic
    assert [(t.creditor_account, t.amount_minor, t.tx_id) for t in parsed.transactions] == [
        (c.account, c.amount_minor, c.tx_id) for c in credits
    ]
    again = bank.message(credits)  # a resend of the credits: new MsgId, same TxIds
    assert again.msg_id != sent.msg_id
    assert [t.tx_id for t in codec.parse_credit_transfers(again.body).transactions] == [
        c.tx_id for c in credits
    ]
    assert len({c.tx_id for c in bank.credits([(ACCOUNT, 5)] * 50)}) == 50


def test_the_signed_headers_carry_the_msg_id_and_xml() -> None:
    """A partner signs as its channel, sends XML, and names the MsgId as Idempotency-Key."""
    bank = partner()
    sent = bank.message(bank.credits([(ACCOUNT, 100)]))
    headers = bank.headers(sent)
    assert headers["Content-Type"] == "application/xml"
    assert headers["Idempotency-Key"] == sent.msg_id
    assert 'channel="open_api",key_id="dev-open-api-1"' in headers["Authorization"]


def test_the_reader_understands_the_codecs_status_report() -> None:
    """read_status_report (the partner's independent reader) gives back what the codec's
    build_status_report wrote: the original MsgId, group status, each credit's status,
    reason and detail; PDNG is "pending" (sent again by the partner)."""
    statuses = (
        TxStatus("E1", "T1", "ACSC"),
        TxStatus("E2", "T2", "RJCT", "AC01", "no such account"),
        TxStatus("E3", "T3", "PDNG"),
    )
    report = StatusReport(
        "R1", dt.datetime(2026, 12, 7, 4, 0, tzinfo=dt.UTC), "M1", PACS_008, "PART", None,
        statuses,
    )  # fmt: skip
    answer = read_status_report(codec.build_status_report(report))
    assert (answer.msg_id, answer.original_msg_id, answer.group_status) == ("R1", "M1", "PART")
    assert answer.original_msg_type == PACS_008
    by_tx = answer.by_tx_id
    assert [by_tx[f"T{n}"].outcome for n in range(1, 4)] == ["booked", "rejected", "pending"]
    assert (by_tx["T2"].reason, by_tx["T2"].detail) == ("AC01", "no such account")


def test_the_credit_reference_is_the_servers() -> None:
    """The audit derives an ISO 20022 credit's transfer id from the reference the partner
    computes: it must be the one the HTTP adapter books it under."""
    from channels.iso20022.http import credit_reference as server_reference

    assert credit_reference("ICBKCNBJXXX", "T1") == server_reference("ICBKCNBJXXX", "T1")


def test_a_small_bench_run_reports_the_figures_and_an_exact_ledger() -> None:
    """`tally bench iso20022` with 4 messages of 250 credits (5% to no account): the issue's
    keys are in the report, every credit decided (ACSC, or RJCT AC01 for the unknown
    account), a message sent again is answered as the first time, and every account's
    balance equals its ACSC credits."""
    done = subprocess.run(
        [sys.executable, "-m", "core", "bench", "iso20022", "--messages", "4",
         "--transactions", "250", "--accounts", "12", "--warmup-messages", "1",
         "--connections", "2", "--unknown-share", "0.05", "--json"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("pacs008_transactions_per_s", "messages_per_s", "latency_ms_p50",
                "latency_ms_p99", "server_cpu_us_per_transaction"):  # fmt: skip
        assert report[key] > 0, key
    total = (4 + 1) * 250
    assert report["acsc"] + report["rjct"] + report["pdng_final"] == total
    assert report["pdng_final"] == 0  # nothing held or shed for good
    assert report["acsc"] > 0 and report["rjct"] > 0
    assert set(report["rjct_by_reason"]) == {"AC01"}
    assert report["outcomes_unknown"] == 0 and report["problems"] == 0, report
    assert report["repeat_consistent"] is True
    assert report["ledger_exact"] and report["ledger_mismatches"] == 0
    assert report["ledger_accounts_checked"] == 12 and report["ledger_credited_minor"] > 0
    from core.bench.page import render

    page = render([{**report, "_file": "iso20022-test.json"}])
    assert "pacs008_transactions_per_s" in page and ">= 20000" in page.replace(",", "")
