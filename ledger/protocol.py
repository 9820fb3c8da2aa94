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
