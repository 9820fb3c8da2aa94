"""The checker: what the clients were told, against what the ledgers hold.

It is independent of the simulator's own bookkeeping (epochs, log sequence
numbers, who acknowledged what): its inputs are the clients' history
(`Clients.ack_result`: the result each request was acknowledged with) and
each data center's ledger, read from its own tables:

- Every record of a data center's log is read once, before eviction could
  forget it (`scan`), and marked in that DC's `seen[request]` with its result.
  A request recorded twice in one DC's history is a duplicate.
- After a failover, and at the end, every acknowledged request must be in
  the new primary's history with the acknowledged result (`verify`):
  missing ones are lost, listed by id. `lookup_transfer` on the ledger
  confirms each missing id is absent and a sample of present ones is there.
- At the end: money is conserved on every DC (Jepsen's bank invariant:
  debits posted == credits posted), no account below its floor, no Class III
  balance above its cap, no limit exceeded (the kernel's counters, and the
  checker's own per-day sums for a sample of accounts), timestamps strictly
  increasing along each log, and all DCs converge to one state digest.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import Any

from cext import simgen
from ledger.kernel import KernelLedger
from ledger.records import transfer_view

SAMPLE_STRIDE = 61  # one account in 61 has its limits rechecked from the log
LIST_MAX = 1_000_000
CHANNEL_CHUNK = 1 << 20
DISCARD_CHUNK_BYTES = 1 << 23
_PRESENT = bytes([0] + [1] * 255)  # a `seen` byte -> 1 when the request is in the history


@dataclass
class History:
    """The checker's reading of one data center's log."""

    seen: bytearray
    cursor: int = 0  # next log seq to read
    failed_cursor: int = 0  # next failure ring seq to read
    last_timestamp: int = 0
    sample_totals: array[int] = field(default_factory=lambda: array("q"))
    duplicates: int = 0
    timestamp_violations: int = 0
    records_scanned: int = 0


@dataclass
class Verification:
    at_ns: int
    dc: str
    checked: int
    missing: list[int]
    mismatched: list[int]
    missing_count: int
    mismatched_count: int
    lookups_confirmed: int


class Checker:
    def __init__(self, request_count: int, dc_names: list[str], account_capacity: int) -> None:
        self.request_count = request_count
        sample_count = account_capacity // SAMPLE_STRIDE + 1
        self.histories = {
            name: History(
                bytearray(request_count), sample_totals=array("q", bytes(8 * 9 * sample_count))
            )
            for name in dc_names
        }
        self.discarded: dict[int, int] = {}  # request -> DCs whose copy a resync discarded

    def scan(self, name: str, ledger: KernelLedger) -> None:
        """Read the DC's log records not read yet (call before every eviction)."""
        history = self.histories[name]
        cursor, duplicates, violations, last, scanned = simgen.scan_log(
            ledger.log,
            ledger.meta,
            history.cursor,
            history.seen,
            ledger.accounts,
            SAMPLE_STRIDE,
            history.sample_totals,
            history.last_timestamp,
        )
        history.cursor = cursor
        failed_cursor, failed_duplicates, failed_scanned = simgen.scan_failed(
            ledger.failed, ledger.meta, history.failed_cursor, history.seen
        )
        history.failed_cursor = failed_cursor
        duplicates += failed_duplicates
        scanned += failed_scanned
        history.duplicates += duplicates
        history.timestamp_violations += violations
        history.last_timestamp = last
        history.records_scanned += scanned

    def skip_to(self, name: str, ledger: KernelLedger) -> None:
        """Start reading at the current end of the log (setup transfers are not traffic)."""
        history = self.histories[name]
        history.cursor = ledger.log_count
        history.failed_cursor = ledger.failed_count
        history.last_timestamp = max(history.last_timestamp, ledger.timestamp_last())

    def discard(self, name: str, ledger: KernelLedger, keeper: str) -> None:
        """A DC's state is about to be replaced by `keeper`'s (a resync): read its log to the
        end first and count, per request, the DCs that held it and lost it this way. An
        acknowledged transfer that ends lost was held by the DCs that discarded it (and by
        none that kept it): `copies_held` tells whether it ever existed on two DCs."""
        self.scan(name, ledger)
        mine, theirs = self.histories[name].seen, self.histories[keeper].seen
        for start in range(0, len(mine), DISCARD_CHUNK_BYTES):  # bounded memory at 30M users
            end = min(len(mine), start + DISCARD_CHUNK_BYTES)
            only_mine = int.from_bytes(
                mine[start:end].translate(_PRESENT), "little"
            ) & ~int.from_bytes(theirs[start:end].translate(_PRESENT), "little")
            if not only_mine:
                continue
            flags = only_mine.to_bytes(end - start, "little")
            position = flags.find(1)
            while position >= 0:
                seq = start + position
                self.discarded[seq] = self.discarded.get(seq, 0) + 1
                position = flags.find(1, position + 1)

    def copies_held(self, seq: int) -> int:
        """How many DCs ever held request `seq` (as far as their logs were read)."""
        kept = sum(1 for history in self.histories.values() if history.seen[seq])
        return kept + self.discarded.get(seq, 0)

    def take_over(self, target: str, source: str) -> None:
        """A resynced DC's history is now its source's (its own divergent tail is gone)."""
        mine, theirs = self.histories[target], self.histories[source]
        simgen.merge_seen(mine.seen, theirs.seen)
        mine.cursor = theirs.cursor
        mine.failed_cursor = theirs.failed_cursor
        mine.last_timestamp = theirs.last_timestamp
        mine.sample_totals = array("q", theirs.sample_totals)

    def verify(
        self, name: str, ledger: KernelLedger, ack_result: bytearray, at_ns: int
    ) -> Verification:
        """Every acknowledged request must be in this DC's history with its result."""
        self.scan(name, ledger)
        checked, missing_count, mismatched_count, missing, mismatched = simgen.verify_acked(
            ack_result, self.histories[name].seen, 0, self.request_count, LIST_MAX
        )
        # The ledger's own index agrees: every missing id is absent, a sample of the rest present.
        confirmed = 0
        for seq in missing[:2000]:
            assert ledger.lookup_transfer(simgen.request_id(seq)) is None, seq
            confirmed += 1
        return Verification(
            at_ns, name, checked, missing, mismatched, missing_count, mismatched_count, confirmed
        )

    def lookup_sample(
        self, ledger: KernelLedger, ack_result: bytearray, count: int
    ) -> tuple[int, int]:
        """Look up the most recent acknowledged ok transfers by id: (looked up, found with ok)."""
        looked = found = 0
        seq = self.request_count - 1
        while seq >= 0 and looked < count:
            if ack_result[seq] in (0, 37):  # ok, exists
                record = ledger.lookup_transfer(simgen.request_id(seq))
                looked += 1
                if record is not None and transfer_view(record).result == 0:
                    found += 1
            seq -= 1
        return looked, found

    def limits(self, name: str, ledger: KernelLedger) -> dict[str, Any]:
        """The bank invariants of one DC now; call before each business day ends too, since
        the daily counters restart with the day."""
        self.scan(name, ledger)
        history = self.histories[name]
        accounts = simgen.check_accounts(ledger.accounts, ledger.meta, ledger.products)
        live, over_channel = simgen.check_channel_counters(
            ledger.channel_counters, ledger.channels, ledger.last_day
        )
        active, over_product_sample, over_channel_sample = simgen.check_sample_limits(
            history.sample_totals,
            SAMPLE_STRIDE,
            ledger.accounts,
            ledger.meta,
            ledger.products,
            ledger.channels,
        )
        return accounts | {
            "business_day": ledger.last_day,
            "money_conserved": accounts["debits_posted"] == accounts["credits_posted"],
            "channel_counters_live": live,
            "channel_counters_over_cap": over_channel,
            "sampled_accounts_active": active,
            "sampled_over_product_daily_cap": over_product_sample,
            "sampled_over_channel_daily_cap": over_channel_sample,
        }

    def final(self, names: list[str], ledgers: dict[str, KernelLedger]) -> dict[str, Any]:
        per_dc: dict[str, Any] = {}
        for name in names:
            ledger = ledgers[name]
            history = self.histories[name]
            present, posted = simgen.count_seen(history.seen, self.request_count)
            per_dc[name] = self.limits(name, ledger) | {
                "duplicates": history.duplicates,
                "timestamp_violations": history.timestamp_violations,
                "records_scanned": history.records_scanned,
                "requests_recorded": present,
                "requests_posted_ok": posted,
                "state_digest": state_digest(ledger),
            }
        return per_dc


def limits_respected(per_dc: dict[str, Any]) -> bool:
    """No floor, balance cap, PBoC bucket or channel cap broken on any DC."""
    return all(
        dc["below_floor"] == 0
        and dc["above_balance_cap"] == 0
        and dc["over_daily_limit"] == 0
        and dc["over_yearly_limit"] == 0
        and dc["negative_counters"] == 0
        and dc["channel_counters_over_cap"] == 0
        and dc["sampled_over_product_daily_cap"] == 0
        and dc["sampled_over_channel_daily_cap"] == 0
        for dc in per_dc.values()
    )


def state_digest(ledger: KernelLedger) -> str:
    """SHA-256 of a ledger's state: every state section and the rules. Two DCs that
    applied the same entries have the same digest.

    The ledger's `replica_digest()`: the same content as `KernelLedger.digest()`
    plus the rules, read in bulk so it stays cheap for 30 million accounts; the
    tests check both agree on which ledgers are equal.
    """
    return ledger.replica_digest()
