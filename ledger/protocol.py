"""The `Ledger` protocol: what the engine, replay, snapshots, stores and the simulator may call.

Both twins satisfy it (`ledger.kernel.KernelLedger`, the packed tables on
the Cython kernels, and `ledger.reference.ReferenceLedger`, the plain-Python
model they are tested against); a test checks it at runtime and mypy on
assignments. Code that works on either twin types its ledger as `Ledger`
and reaches the state only through these methods: records come back as
bytes to read with `ledger.records`, the state as `ledger.state` sections.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ledger.state import LedgerState


@runtime_checkable
class Ledger(Protocol):
    """A double-entry ledger applying batches of packed records (ledger/types.py)."""

    backend: str
    account_capacity: int
    transfer_capacity: int

    # --- state counters ---------------------------------------------------------

    @property
    def account_count(self) -> int: ...

    @property
    def log_tail(self) -> int:
        """The oldest seq still in the log window."""
        ...

    @property
    def log_count(self) -> int:
        """The next seq: transfers ever recorded."""
        ...

    @property
    def last_day(self) -> int:
        """The business day of the newest call."""
        ...

    @property
    def pending_expiry_count(self) -> int:
        """Holds with a timeout not yet posted, voided or expired (the expiry heap)."""
        ...

    @property
    def failed_tail(self) -> int:
        """The oldest seq still in the failure ring (failed transfers that consumed their id)."""
        ...

    @property
    def failed_count(self) -> int:
        """The failure ring's next seq: failures ever recorded there."""
        ...

    def timestamp_last(self) -> int: ...

    def log_timestamp_oldest(self) -> int:
        """The oldest transfer's timestamp in the log window (0 when it is empty)."""
        ...

    def failed_timestamp_oldest(self) -> int:
        """The oldest remembered failure's timestamp (0 when the failure ring is empty)."""
        ...

    def channel_records(self, channel: int) -> tuple[int, int]:
        """(records in the log window, records in the failure ring) of `channel`."""
        ...

    # --- writes: one journal entry kind each --------------------------------------

    def set_rules(
        self,
        product_table: bytes | bytearray,
        channel_table: bytes | bytearray,
        log_quota_table: bytes | bytearray = b"",
    ) -> None: ...

    def create_accounts(self, batch: bytes | memoryview) -> bytearray: ...

    def update_account(self, account_id: int, status: int, flags: int) -> int: ...

    def create_transfers(
        self, batch: bytes | memoryview, timestamp_first: int, business_day: int
    ) -> tuple[bytearray, array[int], array[int]]: ...

    def expire_pending(self, now_ns: int, business_day: int) -> int: ...

    def evict(self, before_ns: int, count_max: int) -> int: ...

    def evict_failed(self, before_ns: int, count_max: int) -> int: ...

    # --- deposits (ledger/deposits.py rows; cext/deposits.pyx kernels) ----------------

    @property
    def accrued_day(self) -> int:
        """The business day interest was last accrued for (0: never)."""
        ...

    def accrue_interest(self, day: int, rates: bytes | bytearray | memoryview) -> int:
        """One day's accrual: every demand account (ledger.deposits.DEMAND_KINDS) whose
        product has a rate in `rates` (RATE_ROW per product id) and whose posted balance is
        positive gains balance * rate * weight units; sets accrued_day = day (which must be
        after it). Returns the number of accounts accrued."""
        ...

    def settlement_batch(
        self, period: int, start_slot: int, count_max: int
    ) -> tuple[bytes, bytes, int]:
        """A pure read: (transfers, slots u32, next slot) -- the next <= count_max
        settlement transfers of `period` for accounts from `start_slot` not yet settled for
        it (period_settled < period) with at least one fen accrued; next slot is
        account_count when done. A Class III account whose balance would pass its product's
        cap gets two transfers (part 0 up to the cap, part 1 the excess to its bound
        account, or to the clearing account when bound externally); its slot twice."""
        ...

    def settle_interest(
        self,
        period: int,
        transfers: bytes | bytearray | memoryview,
        slots: bytes | bytearray | memoryview,
        timestamp_first: int,
        business_day: int,
    ) -> tuple[bytearray, array[int], array[int]]:
        """Post `settlement_batch`'s transfers, then settle each slot not yet settled for
        `period`: the amounts of its OK transfers leave the accrued units and join
        interest_paid_total; if all were OK the units are zeroed (the sub-fen remainder
        rounded away) and period_settled = period, if some were the period is marked
        settled and the unpaid rest kept, if none the row is unchanged (paid next period).
        Returns the create_transfers outcome."""
        ...

    def post_with_rows(
        self,
        transfers: bytes | bytearray | memoryview,
        rows: bytes | bytearray | memoryview,
        timestamp_first: int,
        business_day: int,
    ) -> tuple[bytearray, array[int], array[int]]:
        """Post `transfers`, then apply each DEPOSIT_WRITE of `rows` whose transfer is
        OK (or that is DEPOSIT_WRITE_ALWAYS) and whose account exists. Returns the
        create_transfers outcome. With no transfers (only rows) nothing is posted, no
        kernel batch runs (no hold expires) and the outcome is empty."""
        ...

    def loan_collection_batch(
        self, day: int, terms: bytes | bytearray | memoryview, start: int, count_max: int
    ) -> tuple[bytes, bytes, array[int], int, int]:
        """A pure read: the day-end collection of `day` (ledger/loan_book.py, steps 1-5)
        over the terms table (`LoanTermsTable.packed()`) from entry `start`, until
        `count_max` loans were touched (one row write each, at most one transfer) or the
        table ends. Returns (transfers, row writes (DEPOSIT_WRITE), parts: int64 x 4 a
        write: its transfer's index (-1: none), principal, interest and penalty paid,
        the entry to continue from (len(terms) // 48 when done), entries skipped because
        the account at their slot is not their loan). ValueError for a bad argument or a
        terms entry out of range or out of (slot, segment) order."""
        ...

    def purge_counters(self, day: int) -> int:
        """Drop the day counters (channel, customer, strong-auth) of days before `day`;
        the number dropped."""
        ...

    # --- reads ------------------------------------------------------------------------

    def lookup_account(self, account_id: int) -> bytes | None: ...

    def account_pending(self, account_id: int) -> tuple[int, int] | None: ...

    def account_counters(self, account_id: int) -> tuple[int, int, int, int] | None: ...

    def lookup_transfer(self, transfer_id: int) -> bytes | None: ...

    def account_history(
        self, account_id: int, before_seq: int = -1, limit: int = 50
    ) -> list[tuple[int, bytes]]: ...

    def channel_used(self, account_id: int, channel: int, day: int) -> int: ...

    def counter_used(self, key: int, day: int) -> int: ...

    def account_customer(self, account_id: int) -> int | None: ...

    def channels_live(self) -> list[tuple[int, int, int]]: ...

    def record_at(self, seq: int) -> bytes: ...

    def log_records(self, start: int, stop: int) -> bytes: ...

    def account_row(self, slot: int) -> bytes: ...

    def account_rows(self, slots: Iterable[int]) -> list[tuple[int, bytes]]: ...

    def account_slot(self, account_id: int) -> int:
        """The account's slot, or -1 when there is none."""
        ...

    def account_id_at(self, slot: int) -> int:
        """The id of the account in `slot` (< account_count)."""
        ...

    def deposit_row(self, account_id: int) -> bytes | None:
        """The account's 32-byte deposit row (ledger/deposits.py views), or None."""
        ...

    def deposit_row_at(self, slot: int) -> bytes:
        """The 32-byte deposit row of `slot` (< account_count)."""
        ...

    def due_fixed_deposits(self, day: int) -> array[int]:
        """Slots (array 'I', in slot order) of fixed-deposit accounts whose row is open
        (FD_OPEN, not FD_CLOSED) and matures on or before `day`."""
        ...

    # --- the whole state --------------------------------------------------------------

    def canonical_chunks(self) -> Iterator[bytes | memoryview]: ...

    def digest(self) -> str: ...

    def dump_state(self) -> LedgerState: ...


class LedgerLoader(Protocol):
    """A twin's class: builds a ledger from dumped state (`KernelLedger.load_state`)."""

    def load_state(
        self, state: LedgerState, *, account_capacity: int, transfer_capacity: int
    ) -> Ledger: ...


if TYPE_CHECKING:  # mypy proves both twins satisfy both protocols (`make lint`)
    from ledger.kernel import KernelLedger
    from ledger.reference import ReferenceLedger

    _KERNEL_IS_A_LEDGER: type[Ledger] = KernelLedger
    _REFERENCE_IS_A_LEDGER: type[Ledger] = ReferenceLedger
    _KERNEL_LOADS: LedgerLoader = KernelLedger
    _REFERENCE_LOADS: LedgerLoader = ReferenceLedger
