"""The simulated bank's day-end: the engine's steps, formed by the primary as replicated entries.

When a business day ends inside the simulated window (local midnight on the rules'
clock), the serving primary runs that day's day-end before it forms any entry of the
next day, in the order of `core/services/dayend.py` (issue 14):

1. accrual: one `ACCRUE_INTEREST` entry (the catalog's rate table of the day);
2. settlement, when the day is a settlement day (the 20th of Mar/Jun/Sep/Dec):
   `SETTLE_INTEREST` entries of at most `BATCH_SIZE_MAX` transfers each, read off the
   state by `Ledger.settlement_batch` at the moment each is formed (credited after
   midnight, i.e. on the 21st);
3. maturities: fixed deposits maturing on or before the next day
   (`Ledger.due_fixed_deposits`) pay principal plus `term_interest` to their payout
   account, or roll over at the term's rate of that day, in `POST_WITH_ROWS` entries
   (transfers and the deposit row written iff they post);
4. the limit-counter rollover (`PURGE_COUNTERS`: day counters before the new day);
5. expiry of pending holds (`EXPIRE_PENDING`).

Each step is a *maker*: a function of the ledger's state returning
`(kind, count, payload, timestamps)` or None when there is nothing to do -- exactly
what `core.engine.Engine.submit_generated` takes, so the engine's day-end and the
simulator's can share the step logic. The simulator applies what a maker returns on
the primary and streams it like any entry; the replicas apply it with
`core.entries.apply_entry`.

Every step is derived from the ledger's own state, so it resumes: a new primary whose
log holds only part of its predecessor's day-end (the rest was never replicated)
finds the accrual done (`accrued_day`), the rest of the settlement still to post
(`settlement_batch` reads only unsettled accounts) and the maturities still due, and
finishes them; what was done is never done twice (settlement ids are derived from
account and period, maturity ids from account and maturity day).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.engine_policy import BATCH_SIZE_MAX
from core.entries import (
    EntryKind,
    pack_accrue_payload,
    pack_post_with_rows_payload,
    pack_purge_payload,
    pack_settle_payload,
)
from core.services.dayend import (
    MATURITY_PART_INTEREST,
    MATURITY_PART_PRINCIPAL,
    MATURITY_PART_ROLLOVER,
    maturity_transfer_id,
)
from ledger.constants import BANK_CHANNEL, INTEREST_EXPENSE_ID, LEDGER_CNY
from ledger.deposits import (
    FD_CLOSED,
    FD_PARTIAL_DONE,
    FD_ROLLOVER,
    fixed_row_view,
    pack_deposit_write,
    pack_fixed_row,
    with_fixed_flags,
)
from ledger.interest import add_months, term_interest
from ledger.records import pack_transfer
from ledger.types import TRANSFER_SIZE, TransferCode, TransferFlags
from limits.deposits import DepositCatalog, RateNotInForceError, Term
from limits.rules import RuleSet

# (kind, count, payload, timestamps): an entry to form from the state (core.engine.Generated)
Generated = tuple[EntryKind, int, bytes, int]
Maker = Callable[[Any], Generated | None]

MATURITIES_PER_ENTRY = BATCH_SIZE_MAX // 2  # two transfers a maturity at most


# --- the steps -------------------------------------------------------------------------


def accrual_maker(day: int, catalog: DepositCatalog, rules: RuleSet) -> Maker:
    """Step 1: accrue `day` (nothing when the ledger accrued it already)."""

    def make(ledger: Any) -> Generated | None:
        if ledger.accrued_day >= day:
            return None
        return (
            EntryKind.ACCRUE_INTEREST,
            0,
            pack_accrue_payload(day, catalog.accrual_rates(day, rules)),
            1,
        )

    return make


@dataclass
class SettlementCursor:
    """Where the settlement of one period has got to on one ledger (the next slot)."""

    period: int
    next_slot: int = 0
    transfers: int = 0
    entries: int = 0
    # A planted bug (sim/bugs.py "interest-one-fen-more"): one fen more on every chunk's
    # first transfer, which the interest checker must catch.
    plant_extra_fen: bool = False


def settlement_maker(cursor: SettlementCursor, chunk: int = BATCH_SIZE_MAX) -> Maker:
    """Step 2: the next chunk of the period's settlement (None when every account is
    settled). Call it until it returns None."""

    def make(ledger: Any) -> Generated | None:
        while cursor.next_slot < ledger.account_count:
            transfers, slots, next_slot = ledger.settlement_batch(
                cursor.period, cursor.next_slot, chunk
            )
            cursor.next_slot = next_slot
            count = len(transfers) // TRANSFER_SIZE
            if count == 0:
                continue
            if cursor.plant_extra_fen:
                transfers = _one_fen_more(transfers)
            cursor.transfers += count
            cursor.entries += 1
            return (
                EntryKind.SETTLE_INTEREST,
                count,
                pack_settle_payload(cursor.period, transfers, slots),
                count,
            )
        return None

    return make


def _one_fen_more(transfers: bytes) -> bytes:
    from ledger.records import transfer_view

    first = transfer_view(transfers)
    changed = pack_transfer(
        id=first.id,
        debit_account_id=first.debit_account_id,
        credit_account_id=first.credit_account_id,
        amount=first.amount + 1,
        code=first.code,
        ledger=first.ledger,
        flags=first.flags,
        channel=first.channel,
        user_data=first.user_data,
    )
    return changed + bytes(transfers[TRANSFER_SIZE:])


@dataclass
class MaturityTally:
    paid: int = 0
    rolled_over: int = 0
    entries: int = 0
    principal_fen: int = 0
    interest_fen: int = 0
    not_matured: int = 0  # a rollover with no interest to carry it: left open, as the engine
    attempted: set[int] = field(default_factory=set)  # slots tried: never tried twice


def maturity_maker(day: int, catalog: DepositCatalog, tally: MaturityTally) -> Maker:
    """Step 3: the fixed deposits maturing on or before `day` (the day after the one that
    ended), at most MATURITIES_PER_ENTRY an entry, as `core/services/dayend.py` forms
    them (its transfer ids): a deposit without rollover pays its principal
    (FIXED_DEPOSIT, from the deposit account) and its term interest (INTEREST, from the
    interest-expense account) to its payout account, linked, and is closed; one with
    rollover has its interest paid into the deposit, which starts again for the same term
    at that day's rate (paid out instead when the catalog has no rate for it). A deposit
    is tried once a run. Call it until it returns None."""

    def make(ledger: Any) -> Generated | None:
        transfers: list[bytes] = []
        rows: list[bytes] = []
        while not transfers:
            due = [slot for slot in ledger.due_fixed_deposits(day) if slot not in tally.attempted]
            if not due:
                return None
            for slot in due[:MATURITIES_PER_ENTRY]:
                tally.attempted.add(slot)
                _mature_one(ledger, catalog, slot, transfers, rows, tally)
        tally.entries += 1
        payload = pack_post_with_rows_payload(b"".join(transfers), b"".join(rows))
        return (EntryKind.POST_WITH_ROWS, len(transfers), payload, len(transfers))

    return make


def _mature_one(
    ledger: Any,
    catalog: DepositCatalog,
    slot: int,
    transfers: list[bytes],
    rows: list[bytes],
    tally: MaturityTally,
) -> None:
    """One deposit's transfers and row write, appended (nothing for a rollover without
    interest to carry it: left open, as the engine leaves it)."""
    raw = ledger.deposit_row_at(slot)
    row = fixed_row_view(raw)
    account_id = ledger.account_id_at(slot)
    interest = term_interest(row.principal, row.rate, row.term_months)
    maturity = row.maturity_day
    if row.flags & FD_ROLLOVER:
        if interest <= 0:
            tally.not_matured += 1
            return
        rate = _rollover_rate(catalog, row.term_months, maturity)
        if rate is not None:
            renewed = pack_fixed_row(
                principal=row.principal + interest,
                rate=rate,
                open_day=maturity,
                maturity_day=add_months(maturity, row.term_months),
                term_months=row.term_months,
                day_count=row.day_count,
                flags=row.flags & ~FD_PARTIAL_DONE,
                payout_slot=row.payout_slot,
                product=row.product,
            )
            rows.append(pack_deposit_write(account_id, len(transfers), renewed))
            transfers.append(
                _transfer(
                    maturity_transfer_id(account_id, maturity, MATURITY_PART_ROLLOVER),
                    INTEREST_EXPENSE_ID,
                    account_id,
                    interest,
                    TransferCode.INTEREST,
                    maturity,
                )
            )
            tally.rolled_over += 1
            tally.interest_fen += interest
            return
    payout_id = ledger.account_id_at(row.payout_slot)
    linked = interest > 0
    transfers.append(
        _transfer(
            maturity_transfer_id(account_id, maturity, MATURITY_PART_PRINCIPAL),
            account_id,
            payout_id,
            row.principal,
            TransferCode.FIXED_DEPOSIT,
            maturity,
            TransferFlags.LINKED if linked else TransferFlags.NONE,
        )
    )
    if linked:
        transfers.append(
            _transfer(
                maturity_transfer_id(account_id, maturity, MATURITY_PART_INTEREST),
                INTEREST_EXPENSE_ID,
                payout_id,
                interest,
                TransferCode.INTEREST,
                maturity,
            )
        )
    closed = with_fixed_flags(raw, row.flags | FD_CLOSED)
    # Written iff the last transfer of the (linked) pair posted.
    rows.append(pack_deposit_write(account_id, len(transfers) - 1, closed))
    tally.paid += 1
    tally.principal_fen += row.principal
    tally.interest_fen += interest


def _rollover_rate(catalog: DepositCatalog, months: int, day: int) -> int | None:
    """The term's rate on `day` for a renewal; None (paid out instead) without one."""
    try:
        return catalog.fixed_rate(Term.of_months(months), day)
    except (ValueError, RateNotInForceError):
        return None


def _transfer(
    transfer_id: int,
    debit_id: int,
    credit_id: int,
    amount: int,
    code: int,
    maturity_day: int,
    flags: int = TransferFlags.NONE,
) -> bytes:
    return pack_transfer(
        id=transfer_id,
        debit_account_id=debit_id,
        credit_account_id=credit_id,
        amount=amount,
        code=code,
        ledger=LEDGER_CNY,
        flags=int(flags),
        channel=BANK_CHANNEL,
        user_data=maturity_day,
    )


def purge_maker(new_day: int) -> Maker:
    """Step 4: the limit-counter rollover: drop the day counters of days before `new_day`."""

    def make(ledger: Any) -> Generated | None:
        return (EntryKind.PURGE_COUNTERS, 0, pack_purge_payload(new_day), 1)

    return make


def expiry_maker() -> Maker:
    """Step 5: expire the pending holds past their timeout."""

    def make(ledger: Any) -> Generated | None:
        if not ledger.pending_expiry_count:
            return None
        return (EntryKind.EXPIRE_PENDING, 0, b"", 1)

    return make


@dataclass
class DayEndRun:
    """One execution of one day's day-end on one primary (a resumed one included)."""

    day: int
    dc: str
    at_ns: int
    resumed: bool
    accrued_accounts: int = 0
    settlement_period: int = 0
    settlement_transfers: int = 0
    settlement_entries: int = 0
    maturities_paid: int = 0
    rollovers: int = 0
    maturity_interest_fen: int = 0
    counters_purged: int = 0
    holds_expired: int = 0
    entries: int = 0

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items()}
