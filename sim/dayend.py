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
4. loans: the instalments of the day, collected over the population's terms table
   (`LoanCollectionMaker`, `POST_WITH_ROWS` entries of at most 8189 loans, each read
   off the state by `Ledger.loan_collection_batch` when it is formed: a
   LOAN_REPAYMENT transfer per loan that paid something and every touched loan's row);
5. the limit-counter rollover (`PURGE_COUNTERS`: day counters before the new day);
6. expiry of pending holds (`EXPIRE_PENDING`).

Each step is a *maker*: a function of the ledger's state returning
`(kind, count, payload, timestamps)` or None when there is nothing to do -- exactly
what `core.engine.Engine.submit_generated` takes. The makers are the engine's own
(`core/services/dayend.py`: `accrual_maker`, `SettlementMaker`, `MaturityMaker`,
`LoanCollectionMaker`, `purge_counters_maker`, `expire_holds_maker`), so the simulator
and the engine share one policy; this module only wraps them with what the simulator
adds (a settlement cursor that skips stretches with nothing to settle, the planted bugs
"interest-one-fen-more" and "loan-row-not-written", the per-run figures of
`DayEndRun`). The simulator applies what a maker returns on the primary, hands the
outcome's result codes back to the maker's `count` like the engine's day-end does, and
streams the entry like any other; the replicas apply it with `core.entries.apply_entry`.

Every step is derived from the ledger's own state, so it resumes: a new primary whose
log holds only part of its predecessor's day-end (the rest was never replicated)
finds the accrual done (`accrued_day`), the rest of the settlement still to post
(`settlement_batch` reads only unsettled accounts) and the maturities still due, and
finishes them; what was done is never done twice (settlement ids are derived from
account and period, maturity ids from account and maturity day, collection ids from
loan and day, and a loan's row records the last day that collected it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.entries import (
    EntryKind,
    pack_post_with_rows_payload,
    pack_settle_payload,
    post_with_rows_payload_fields,
    settle_payload_fields,
)
from core.services.dayend import (
    LOAN_COLLECTION_CHUNK_MAX,
    SETTLEMENT_CHUNK_MAX,
    LoanCollectionMaker,
    MaturityMaker,
    SettlementMaker,
    accrual_maker,
    expire_holds_maker,
    purge_counters_maker,
)
from ledger.deposits import DEPOSIT_WRITE_ALWAYS, DEPOSIT_WRITE_SIZE, deposit_write_view
from ledger.records import pack_transfer, transfer_view
from ledger.types import TRANSFER_SIZE

# (kind, count, payload, timestamps): an entry to form from the state (core.engine.Generated)
Generated = tuple[EntryKind, int, bytes, int]
Maker = Callable[[Any], Generated | None]

__all__ = [
    "DayEndRun",
    "Generated",
    "LoanCollection",
    "Maker",
    "MaturityMaker",
    "Settlement",
    "accrual_maker",
    "expire_holds_maker",
    "purge_counters_maker",
]


class Settlement:
    """Step 2 around the engine's `SettlementMaker`: `make` returns the period's next
    chunk, passing over stretches of accounts with nothing to settle (as the engine's
    day-end keeps calling until the maker is `finished`), None once every account is
    settled. Call it until it returns None; `maker.count` takes each chunk's results.

    `plant_extra_fen`: the planted bug (sim/bugs.py "interest-one-fen-more"): one fen
    more on every chunk's first transfer, which the interest checker must catch."""

    def __init__(
        self, period: int, chunk: int = SETTLEMENT_CHUNK_MAX, *, plant_extra_fen: bool = False
    ) -> None:
        self.maker = SettlementMaker(period, chunk)
        self.plant_extra_fen = plant_extra_fen

    def make(self, ledger: Any) -> Generated | None:
        while not self.maker.finished:
            made = self.maker.make(ledger)
            if made is None:
                continue
            if self.plant_extra_fen:
                made = _one_fen_more(made)
            return made
        return None


def _one_fen_more(made: Generated) -> Generated:
    kind, count, payload, timestamps = made
    period, transfers, slots = settle_payload_fields(payload)
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
    rest = bytes(transfers[TRANSFER_SIZE:])
    return kind, count, pack_settle_payload(period, changed + rest, slots), timestamps


class LoanCollection:
    """Step 4 around the engine's `LoanCollectionMaker`: `make` returns the next chunk,
    None once the terms table is passed; `count` hands the chunk's results to the maker.

    `plant_row_not_written`: the planted bug (sim/bugs.py "loan-row-not-written"): in
    every chunk, the first loan that paid something has its row write dropped (its money
    moves, its row stays as it was), which the loan checker must catch."""

    def __init__(
        self,
        terms: bytes,
        day: int,
        chunk: int = LOAN_COLLECTION_CHUNK_MAX,
        *,
        plant_row_not_written: bool = False,
    ) -> None:
        self.maker = LoanCollectionMaker(terms, day, chunk)
        self.plant_row_not_written = plant_row_not_written
        self.entries = 0

    def make(self, ledger: Any) -> Generated | None:
        made = self.maker.make(ledger)
        if made is None:
            return None
        self.entries += 1
        if self.plant_row_not_written:
            made = _first_collected_row_dropped(made)
        return made

    def count(self, results: bytearray) -> None:
        self.maker.count(results, self.maker.last)


def _first_collected_row_dropped(made: Generated) -> Generated:
    kind, count, payload, timestamps = made
    transfers, writes = post_with_rows_payload_fields(payload)
    for offset in range(0, len(writes), DEPOSIT_WRITE_SIZE):
        if deposit_write_view(writes, offset).transfer_index != DEPOSIT_WRITE_ALWAYS:
            kept = bytes(writes[:offset]) + bytes(writes[offset + DEPOSIT_WRITE_SIZE :])
            return kind, count, pack_post_with_rows_payload(transfers, kept), timestamps
    return made


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
    loans_touched: int = 0
    loans_collected: int = 0
    loan_collected_fen: int = 0
    loans_overdue: int = 0
    loans_closed: int = 0
    loan_terms_skipped: int = 0
    loan_entries: int = 0
    counters_purged: int = 0
    holds_expired: int = 0
    entries: int = 0

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items()}
