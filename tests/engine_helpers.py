"""Shared builders for engine tests: a small ledger, rules, accounts and transfers."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import anyio

from core.entries import Entry, apply_entry
from core.store import CommitStats
from ledger.constants import LEDGER_CNY
from ledger.kernel import KernelLedger
from ledger.records import pack_account_input
from ledger.reference import ReferenceLedger, Transfer
from ledger.types import AccountFlags, AccountKind, TransferCode
from limits.rules import RuleSet, load_rules

CLEARING_ID = 1_000
START_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z


def example_rules() -> RuleSet:
    return load_rules("examples/limits.toml")


class FrozenClock:
    """A clock that never moves: the engine's strictly-increasing rule makes time."""

    def __init__(self, now_ns: int = START_NS) -> None:
        self.now = now_ns

    def now_ns(self) -> int:
        return self.now


class ListStore:
    """A store that keeps entries in memory (a fake for engine-only tests).

    `gate`, when given, blocks every group until it is set, to hold batches
    in the not-yet-durable state.
    """

    inflight_groups = 1

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.entries: list[Entry] = []
        self.appends = 0
        self.gate = gate
        self.stats = CommitStats()

    @property
    def last_seq(self) -> int:
        return len(self.entries)

    def capture(self, ledger: object, entry: Entry) -> None:
        return None

    def begin_group(self, entries: Sequence[Entry], captures: Sequence[object]) -> list[Entry]:
        return list(entries)

    async def finish_group(self, pending: list[Entry]) -> None:
        await anyio.to_thread.run_sync(self.append, pending)
        self.stats.observe_commit(0.0)

    def append(self, entries: Sequence[Entry]) -> None:
        if self.gate is not None:
            assert self.gate.wait(timeout=30), "test gate never opened"
        for entry in entries:
            entry.check()
        self.entries.extend(entries)
        self.appends += 1

    async def after_group(self, ledger: object, state: object, wait_durable: object) -> None:
        return None

    async def close(self) -> None:
        return None


def replay(
    entries: Sequence[Entry], backend: str = "kernel", state: dict[bytes, bytes] | None = None
) -> KernelLedger | ReferenceLedger:
    ledger: KernelLedger | ReferenceLedger
    if backend == "kernel":
        ledger = KernelLedger(account_capacity=4096, transfer_capacity=1 << 16)
    else:
        ledger = ReferenceLedger(account_capacity=4096, transfer_capacity=1 << 16)
    for entry in entries:
        apply_entry(ledger, entry, state)
    return ledger


def class_ii_accounts(first_id: int, count: int) -> bytes:
    flags = (
        AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
        | AccountFlags.NON_BOUND_INFLOW_ENABLED
        | AccountFlags.BOUND_EXTERNAL
    )
    return b"".join(
        pack_account_input(id=first_id + i, kind=AccountKind.CLASS_II, flags=flags, product=2)
        for i in range(count)
    )


def clearing_account() -> bytes:
    return pack_account_input(id=CLEARING_ID, kind=AccountKind.INTERNAL_CLEARING, product=7)


def transfer(
    transfer_id: int,
    debit: int,
    credit: int,
    amount: int,
    code: int = TransferCode.TRANSFER,
    flags: int = 0,
    pending_id: int = 0,
    timeout_s: int = 0,
) -> bytes:
    return Transfer(
        id=transfer_id,
        debit_account_id=debit,
        credit_account_id=credit,
        pending_id=pending_id,
        amount=amount,
        timestamp=0,
        timeout_s=timeout_s,
        ledger=LEDGER_CNY,
        code=code,
        flags=flags,
        channel=0,
        result=0,
        debit_slot=0,
        credit_slot=0,
        business_day=0,
        counted=0,
        state=0,
        user_data=0,
        amount_posted=0,
        amount_reversed=0,
    ).pack()
