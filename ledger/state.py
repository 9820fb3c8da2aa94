"""The ledger's state as named sections: what a snapshot, a store or a copy must carry.

Both twins dump themselves to a `LedgerState` (`dump_state()`) and rebuild
from one (`load_state(...)`); the snapshot file, the PostgreSQL store and
the simulator iterate the sections declared here and never name a table.
Adding a per-account table (a product's own columns, say) means adding one
`Table` to `TABLES` here (its section follows), and teaching the two twins
to fill it: the writers pick it up by iteration. A new section is a new
layout: a snapshot written before it names other sections and is refused
by name (recovery skips it as it skips a damaged one, and then needs the
journal it covered, which pruning may have removed), so a release that
adds a section must also load the previous layout (the new table zero).

Sections, in file order:

    meta      the scalars below, as the kernel's int64 meta array (META_SIZE values)
    products  the product table          channels  the rule table (RULES_SIZE bytes)
    quotas    the log quota table: per channel its share of the log window and of
              the failure ring in permille, u16 each (512 bytes; 0 = no quota)
    accounts  account_count x 64         pending   account_count x 16
    owners    account_count x 8: each account's customer number (0 = none)
    deposits  account_count x 32: each account's deposit row (ledger/deposits.py layouts)
    log       the log window: records log_tail..log_count-1 in seq order, 128 bytes each
    failed    the failure window: records failed_tail..failed_count-1 of the failure
              ring (failed transfers that consumed their id), 128 bytes each
    chanlive  today's non-zero day counters, 16 bytes each: u32 slot, u8 channel,
              u8 counter space, 2 zero bytes, i64 used (sorted by space and slot, channel;
              a customer's counters store (key >> 8) - 1 and key & 0xFF alike)
    digest    SHA-256 of the state, equal to `ledger.digest()` when it was dumped

The layout before the failure ring, the log quotas and per-code authorization
(`LEGACY_SECTION_NAMES`, every snapshot written until then: no quotas, owners or
failed section, a 4096-byte channel table, every counter in space 0) still loads:
`LedgerState.from_bytes` gives it no quotas, a zero customer table, an empty
failure ring (its failed transfers are in its log window, where the twins still
find them) and the upgraded rule table (`ledger.types.rules_table_upgraded`). Its
digest is unchanged: the digest covers the customer table only when some account
has one, and the failure ring only when it ever held a record.

The layout before deposits (`SECTION_NAMES_BEFORE_DEPOSITS`: no deposits section,
meta slot 22 zero) loads with the deposit table zero and accrued_day 0; its digest is
unchanged, since the digest covers the deposit table and accrued_day only when either
is not zero.

The indexes (account ids, transfer ids), the expiry heap, the channel
counter hash table and each channel's count of log and failure records are
not sections: they are functions of the sections and each twin rebuilds
them on load.
"""

from __future__ import annotations

import enum
import struct
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

from ledger.types import (
    ACCOUNT_SIZE,
    CHANNEL_COUNT,
    CHANNEL_LIVE_SIZE,
    CUSTOMER_SIZE,
    DEPOSIT_SIZE,
    PENDING_SIZE,
    PRODUCT_SIZE,
    RULES_LEGACY_SIZE,
    RULES_SIZE,
    TRANSFER_SIZE,
    rules_table_upgraded,
)

Buffer = bytes | bytearray | memoryview

# The kernel's meta array (cext/ledger_kernel.pxd `state_load`): one int64 a value.
META_ACCOUNT_COUNT = 0
META_ACCOUNT_CAPACITY = 1
META_ACCOUNT_INDEX_MASK = 2
META_LOG_TAIL = 3
META_LOG_COUNT = 4
META_LOG_MASK = 5
META_TRANSFER_INDEX_MASK = 6
META_TRANSFER_INDEX_COUNT = 7
META_HEAP_SIZE = 8
META_HEAP_CAPACITY = 9
META_CHANNEL_MASK = 10
META_LAST_DAY = 11
META_PRODUCT_COUNT = 12
META_CHANNEL_TABLE_FULL = 13
META_ACCOUNT_SLOT_BITS = 14
META_DIRTY_ENABLED = 15
META_DIRTY_ACCOUNT_COUNT = 16
META_DIRTY_TRANSFER_COUNT = 17
META_DIRTY_OVERFLOW = 18
META_FAILED_TAIL = 19
META_FAILED_COUNT = 20
META_FAILED_MASK = 21
META_ACCRUED_DAY = 22  # the business day interest was last accrued for (0: never)
META_SIZE = 24

CHANNEL_LIVE = struct.Struct("<IBB2xq")
assert CHANNEL_LIVE.size == 16


class MetaScalars:
    """The state's scalars read by name from a kernel meta array `self.meta`."""

    __slots__ = ()
    meta: array[int]

    @property
    def account_count(self) -> int:
        return int(self.meta[META_ACCOUNT_COUNT])

    @property
    def log_tail(self) -> int:
        return int(self.meta[META_LOG_TAIL])

    @property
    def log_count(self) -> int:
        return int(self.meta[META_LOG_COUNT])

    @property
    def last_day(self) -> int:
        return int(self.meta[META_LAST_DAY])

    @property
    def failed_tail(self) -> int:
        return int(self.meta[META_FAILED_TAIL])

    @property
    def failed_count(self) -> int:
        return int(self.meta[META_FAILED_COUNT])

    @property
    def channel_table_full_count(self) -> int:
        return int(self.meta[META_CHANNEL_TABLE_FULL])

    @property
    def accrued_day(self) -> int:
        return int(self.meta[META_ACCRUED_DAY])


class Extent(enum.Enum):
    """Which part of a table is live (the rest is zero or unreachable)."""

    ACCOUNTS = "one row per account: rows 0..account_count-1"
    LOG_WINDOW = "the log ring's records log_tail..log_count-1"
    FAILED_WINDOW = "the failure ring's records failed_tail..failed_count-1"
    HEAP = "the expiry heap's first heap_size entries"
    WHOLE = "the whole table (hash tables)"


@dataclass(frozen=True, slots=True)
class Table:
    """One of the kernel ledger's packed tables (an attribute of `KernelLedger`)."""

    name: str
    row_size: int
    extent: Extent
    stored: bool  # a state section; False: rebuilt from the stored sections on load
    sparse: bool = False  # mostly zero: copies skip all-zero chunks, so pages stay unbacked
    in_row: bool = True  # part of the account row a store keeps (ACCOUNT_ROW_SIZE)


TABLES = (
    Table("accounts", ACCOUNT_SIZE, Extent.ACCOUNTS, stored=True),
    Table("pending", PENDING_SIZE, Extent.ACCOUNTS, stored=True, sparse=True),
    # Not in the store's account row: set once at creation, which the entries carry.
    Table("owners", CUSTOMER_SIZE, Extent.ACCOUNTS, stored=True, sparse=True, in_row=False),
    # The deposit rows (ledger/deposits.py): zero but for demand accounts that accrued
    # interest and fixed deposits; in the store's row, since accrual and settlement change it.
    Table("deposits", DEPOSIT_SIZE, Extent.ACCOUNTS, stored=True, sparse=True),
    Table("account_index", 4, Extent.WHOLE, stored=False),
    Table("log", TRANSFER_SIZE, Extent.LOG_WINDOW, stored=True),
    Table("failed", TRANSFER_SIZE, Extent.FAILED_WINDOW, stored=True),
    Table("transfer_index", 16, Extent.WHOLE, stored=False),
    Table("heap", 16, Extent.HEAP, stored=False),
    Table("channel_counters", 16, Extent.WHOLE, stored=False),
    Table("channel_live", CHANNEL_LIVE_SIZE, Extent.WHOLE, stored=False),
)
ACCOUNT_TABLES = tuple(table for table in TABLES if table.extent is Extent.ACCOUNTS)
# An account's row as a store keeps it: the in-row per-account tables' rows, concatenated.
PER_ACCOUNT_TABLES = tuple(table for table in ACCOUNT_TABLES if table.in_row)
ACCOUNT_ROW_SIZE = sum(table.row_size for table in PER_ACCOUNT_TABLES)

SECTION_NAMES = (
    "meta",
    "products",
    "channels",
    "quotas",
    *(table.name for table in TABLES if table.stored and table.extent is Extent.ACCOUNTS),
    "log",
    "failed",
    "chanlive",
    "digest",
)
assert all(len(name) <= 8 for name in SECTION_NAMES)  # the snapshot's section name field
# The sections every snapshot had before the failure ring, the log quotas and the
# customer table (per-code authorization): the layout `_upgraded_sections` reads.
LEGACY_SECTION_NAMES = tuple(
    name for name in SECTION_NAMES if name not in ("quotas", "failed", "owners", "deposits")
)
SECTION_NAMES_BEFORE_QUOTAS = LEGACY_SECTION_NAMES
# The sections of the layout before deposits (every snapshot written until then).
SECTION_NAMES_BEFORE_DEPOSITS = tuple(name for name in SECTION_NAMES if name != "deposits")
LOG_QUOTA_TABLE_SIZE = CHANNEL_COUNT * 2  # u16 permille a channel


class StateError(ValueError):
    """Sections that do not describe a state this ledger can hold."""


class StateCorrupt(StateError):
    """The sections contradict each other or their digest."""


class StateTooLarge(StateError):
    """The state does not fit the capacities asked for."""


@dataclass(frozen=True, slots=True)
class LedgerState(MetaScalars):
    """A ledger's state as named sections (module docstring), read in place where possible.

    `sections` maps each of SECTION_NAMES, in order, to its chunks (the log
    window is two slices of the ring when it wraps): a writer streams them,
    `section()` joins one. `meta` is the meta section's values, decoded.
    """

    sections: dict[str, Sequence[Buffer]]
    meta: array[int]

    @classmethod
    def of(cls, sections: dict[str, Sequence[Buffer]]) -> LedgerState:
        """The state of these sections (the meta section decoded once)."""
        meta = array("q")
        meta.frombytes(b"".join(bytes(chunk) for chunk in sections["meta"]))
        return cls(sections, meta)

    @classmethod
    def from_bytes(cls, sections: dict[str, bytes]) -> LedgerState:
        """From one buffer a section (read from a file); checks names and sizes."""
        if tuple(sections) in (LEGACY_SECTION_NAMES, SECTION_NAMES_BEFORE_DEPOSITS):
            sections = _upgraded_sections(sections)
        if tuple(sections) != SECTION_NAMES:
            raise StateCorrupt(f"sections {list(sections)}, expected {list(SECTION_NAMES)}")
        state = cls.of({name: [data] for name, data in sections.items()})
        state.check()
        return state

    def section(self, name: str) -> bytes:
        return b"".join(bytes(chunk) for chunk in self.sections[name])

    def size(self, name: str) -> int:
        return sum(len(chunk) for chunk in self.sections[name])

    @property
    def digest(self) -> str:
        return self.section("digest").hex()

    def channels_live(self) -> list[tuple[int, int, int]]:
        """(slot, channel, used) of today's non-zero day counters (`pack_channels_live`)."""
        return [
            (int(space) << 32 | int(slot), int(channel), int(used))
            for slot, channel, space, used in CHANNEL_LIVE.iter_unpack(self.section("chanlive"))
        ]

    def check(self) -> None:
        """Pair assertions on a state read back: the sizes agree with the counts."""
        problems = []
        if len(self.meta) != META_SIZE:
            raise StateCorrupt(f"meta holds {len(self.meta)} values, expected {META_SIZE}")
        count = self.account_count
        for table in ACCOUNT_TABLES:
            if table.stored and self.size(table.name) != count * table.row_size:
                problems.append(f"{table.name} section is {self.size(table.name)} bytes")
        window = self.log_count - self.log_tail
        if not 0 <= self.log_tail <= self.log_count or self.size("log") != window * TRANSFER_SIZE:
            problems.append(f"log section is {self.size('log')} bytes for {window} transfers")
        failed_window = self.failed_count - self.failed_tail
        if (
            not 0 <= self.failed_tail <= self.failed_count
            or self.size("failed") != failed_window * TRANSFER_SIZE
        ):
            problems.append(f"failed section is {self.size('failed')} bytes for {failed_window}")
        if self.size("quotas") != LOG_QUOTA_TABLE_SIZE:
            problems.append(f"quotas section is {self.size('quotas')} bytes")
        products = self.size("products")
        if products < PRODUCT_SIZE or products % PRODUCT_SIZE:
            problems.append(f"products section is {products} bytes")
        if self.size("channels") != RULES_SIZE:
            problems.append(f"channels section is {self.size('channels')} bytes")
        if self.size("chanlive") % CHANNEL_LIVE.size or self.size("digest") != 32:
            problems.append("chanlive or digest section has the wrong size")
        if problems:
            raise StateCorrupt("; ".join(problems))

    def check_capacity(self, account_capacity: int, log_size: int, failed_size: int) -> None:
        failed_window = self.failed_count - self.failed_tail
        if failed_window > failed_size:
            raise StateTooLarge(
                f"holds {failed_window} failed transfers; the failure ring holds {failed_size}"
            )
        window = self.log_count - self.log_tail
        if self.account_count > account_capacity:
            raise StateTooLarge(
                f"holds {self.account_count} accounts; the account capacity is {account_capacity}"
            )
        if window > log_size:
            raise StateTooLarge(
                f"holds a log window of {window} transfers; the transfer capacity is {log_size}"
            )


def pack_meta(
    account_count: int,
    log_tail: int,
    log_count: int,
    last_day: int,
    channel_table_full: int,
    failed_tail: int = 0,
    failed_count: int = 0,
    accrued_day: int = 0,
) -> bytes:
    """A meta section holding the scalars a load reads (for a ledger without a meta array)."""
    meta = array("q", [0] * META_SIZE)
    meta[META_ACCOUNT_COUNT] = account_count
    meta[META_LOG_TAIL] = log_tail
    meta[META_LOG_COUNT] = log_count
    meta[META_FAILED_TAIL] = failed_tail
    meta[META_FAILED_COUNT] = failed_count
    meta[META_LAST_DAY] = last_day
    meta[META_CHANNEL_TABLE_FULL] = channel_table_full
    meta[META_ACCRUED_DAY] = accrued_day
    return meta.tobytes()


def pack_channels_live(live: Sequence[tuple[int, int, int]]) -> bytearray:
    """The chanlive section from (slot, channel, used) rows; `slot` carries the counter
    space above bit 32 (`channels_live` of either twin)."""
    out = bytearray(len(live) * CHANNEL_LIVE.size)
    for index, (slot, channel, used) in enumerate(live):
        CHANNEL_LIVE.pack_into(
            out, index * CHANNEL_LIVE.size, slot & 0xFFFFFFFF, channel, slot >> 32, used
        )
    return out


def pack_channel_live_digest(slot: int, channel: int, used: int) -> bytes:
    """One day counter as the digest reads it (space-0 counters exactly as before)."""
    if slot >> 32:
        return struct.pack("<QBq", slot, channel, used)
    return struct.pack("<IBq", slot, channel, used)


def _upgraded_sections(sections: dict[str, bytes]) -> dict[str, bytes]:
    """An earlier layout's sections in today's: the legacy one (no quotas, no customers,
    nothing in a failure ring (meta says 0..0), the legacy rule table upgraded) or the one
    before deposits (the deposit table zero; meta slot 22, accrued_day, was zero then)."""
    meta = array("q")
    meta.frombytes(sections["meta"])
    account_count = meta[META_ACCOUNT_COUNT] if len(meta) == META_SIZE else 0
    added = {
        "quotas": bytes(LOG_QUOTA_TABLE_SIZE),
        "owners": bytes(account_count * CUSTOMER_SIZE),
        "failed": b"",
        "deposits": bytes(account_count * DEPOSIT_SIZE),
    }
    upgraded: dict[str, bytes] = {}
    for name in SECTION_NAMES:
        data = sections[name] if name in sections else added[name]
        if name == "channels" and len(data) == RULES_LEGACY_SIZE:
            data = rules_table_upgraded(data)  # another size: `check` reports it
        upgraded[name] = data
    return upgraded
