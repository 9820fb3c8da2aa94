"""Type stubs for cext/risk.pyx (the risk stage's kernel; twin: limits/risk_reference.py).

Layouts and semantics: limits/risk_layout.py. The readings this kernel and its twin
chose where the layout's docstring leaves room are listed in limits/risk_reference.py's
module docstring (counter keys, `amount_min` as a firing gate, the monotonic clock...).
"""

from array import array
from mmap import mmap
from typing import Any, TypeAlias

Buffer: TypeAlias = bytes | bytearray | memoryview | mmap | array[Any]

RULE_SIZE: int  # 64 (risk_layout.RULE.size)
CONTEXT_SIZE: int  # 48
VERDICT_SIZE: int  # 16
RULES_MAX: int  # 64
HISTORY_SAMPLES: int  # 16
VELOCITY_BUCKETS: int  # 8
TRANSFER_SIZE: int  # 128
NOW_S_MAX: int  # 2**32 - 1: counters keep u32 seconds
STRUCT_SIZES: dict[str, int]  # the packed structs' sizes, for the layout test

def mix64(value: int) -> int:
    """The SplitMix64 finalizer of `value` mod 2**64 (the counter and list key mixer)."""

class RiskKernel:
    """Risk counters and the rule program; evaluates postings in C, nogil.

    Not thread-safe: one caller at a time (a concurrent `screen` raises RuntimeError).
    """

    def __init__(self, capacity_log2: int = 16) -> None:
        """Empty counter tables of 2**capacity_log2 slots each (4..30; allocated at the
        first count, doubled at 70% load, expired slots dropped then), no program (every
        posting is allowed), no lists. Slots: velocity 144 bytes, history 216, pairs 16."""
    def set_program(self, program: bytes) -> None:
        """Install a compiled rule program (rows of `risk_layout.RULE`, at most RULES_MAX).
        Counters survive: a rule keeps its counters keyed by what it counts (type, scope,
        window, codes), so an unchanged rule keeps its history. ValueError on a row that
        is not a valid rule (nothing is changed then)."""
    def set_list(self, list_id: int, keys: bytes) -> None:
        """Replace list `list_id` (u32) by the packed `<Q` keys (a zero key is ignored: a
        zero value never matches). A list no `set_list` named is empty."""
    def set_holders(self, rows: Buffer) -> None:
        """Add or replace holder entries: packed `<QQQQ` rows (a debit account id's low
        and high 64 bits, its holder's customer key and resident-id key; see
        `core.services.risk`). Account 0 is ignored. The table is doubled at half full."""
    def context_rows(
        self, records: Buffer, count: int, template: Buffer, rows: bytearray | memoryview
    ) -> list[int]:
        """Write the `count` CONTEXT rows of `count` 128-byte transfer records into `rows`
        (its first count * 48 bytes): the customer and resident-id keys of each debit
        account's holder entry (0, 0 without one), the device, ip, local second and
        second factor of `template` (one CONTEXT row; its customer and resident are not
        read), its counterparty, or, when that is 0, the credit account id's low 64 bits.
        Returns the indexes (ascending) of the records whose debit account has no entry:
        the caller resolves those (`set_holders`, and their rows' words). ValueError when
        a buffer is short or the template not 48 bytes."""
    def clear_holders(self) -> None:
        """Forget every holder entry (`clear` keeps them: they are not counters)."""
    @property
    def holder_count(self) -> int:
        """Accounts in the holder table."""
    def screen(
        self, records: Buffer, contexts: Buffer, count: int, now_s: int, out: bytearray
    ) -> int:
        """Evaluate `count` 128-byte transfer records with their `count` CONTEXT rows at
        `now_s` (unix seconds, 0..NOW_S_MAX), in order, counting each allowed posting
        before the next is evaluated; write `count` VERDICT rows into `out` (its first
        count * 16 bytes). Returns how many postings had any rule fire. ValueError when a
        buffer is short or an argument out of range (nothing evaluated then)."""
    def fired(self) -> list[int]:
        """The indexes of the last `screen`'s postings any rule fired for, ascending."""
    def observed(self, index: int) -> list[tuple[int, int]]:
        """For posting `index` of the last `screen`: (rule index, the value the rule saw)
        of each rule that fired, in rule order. IndexError past the last screen's count."""
    def entries(self) -> int:
        """Counter keys holding data still visible at the kernel's clock (velocity and
        history keys within their window, every payee and device pair)."""
    def memory_bytes(self) -> int:
        """Bytes allocated by the counter tables, the lists and the observed buffer."""
    def clear(self) -> None:
        """Forget every counter and the clock (the program and the lists stay)."""
    @property
    def now_s(self) -> int:
        """The kernel's clock: the largest `now_s` screened since the last `clear` (0)."""
    @property
    def rule_count(self) -> int:
        """Rules in the program in force."""
