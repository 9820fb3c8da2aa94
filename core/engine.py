"""The engine: the single writer that owns the ledger.

Many concurrent callers `submit` commands; one writer task forms them into
batches, applies each batch with the kernels in a worker thread (the GIL is
released inside), hands the batch to the store to be made durable, and only
then answers. Two stages run as a pipeline:

    callers --bounded stream--> [apply] --stream(1)--> [durable] --> answers
                                  |                       |
                          kernel in a thread      store.begin_group/finish_group
                                                  (one fdatasync / COMMIT)

While batch N is being made durable, batch N+1 is being applied. Answers are
released strictly in order and only after their batch is durable. Reads go
through the same queue: a read is computed against the state after every
batch applied before it and released only once those batches are durable,
so a read never shows a posting that could still be lost.

The store is one protocol (`core.store.Store`) for the journal and
PostgreSQL alike: the apply stage calls `store.capture(ledger, entry)` right
after each applied entry (PostgreSQL copies the changed rows; the journal
nothing), the captures travel with their group, and the durable stage begins
each group in order and finishes up to `store.inflight_groups` at once (the
journal one, PostgreSQL two). Between groups the apply stage gives the store
its upkeep (`after_group`: the journal's snapshots).

Customer state (`submit_state`): key/value changes, applied to `self.state`
in entry order. The changes submitted while a group forms travel as ONE
PUT_STATE entry at the end of that group, durable with it, so frequent small
changes cost one entry per group, not one per change. A `state_source`
(the services' customer state) hands over what it has staged (the nonces of
the requests being answered) as each group is formed (`drain`), and is told
when that group is durable (`durable(ticket)`): a request's nonce is then
durable with the request's own posting, in the same fdatasync or COMMIT.

Generated entries (`submit_generated`): an entry formed in the apply stage
from the state of that moment, by a function the caller gives (the day-end's
settlement chunks, fixed-deposit maturities). Its group holds it alone, its
function and its kernel call run in a worker thread, and it is answered once
durable like any other; so what an entry posts can depend on the state it is
applied to without a read and a later write racing other requests.

The day boundary (`accrual_rates`, on in the server): before the first entry
of a new business day the engine forms an ACCRUE_INTEREST entry for each day
that ended since the last accrual, so an ended day's interest is accrued on
its end-of-day balances before anything of the next day is applied, however
late the rest of the day-end (core/services/dayend.py) runs. A generated entry
formed from the state just before the day turned is formed again after the
accrual.

If the store fails (I/O error, a full disk, fenced off, an ambiguous commit),
the durable stage answers that group's callers and every group behind it
with `StoreFailed` (an `EngineStopped`; outcome unknown for the failing
group: a retry with the same id once the store is back tells), then
re-raises: the engine stops. Its in-memory state has then applied groups
that are not durable, so it is never restarted: the owner (the services'
lifecycle) opens the store again and builds a new engine from what is
durable.

The transfer log and the failure ring (failed transfers that consumed their
id) are evicted by journaled EVICT and EVICT_FAILED entries the engine puts
before a transfers entry: when the log would pass 90% of its capacity, and at
most once a second for what is older than the retention (`retention_s` for the
log, `failed_retention_s` for failures). So the log
holds what the retention asks and no more, and a channel's quota of it
(`log_share_permille`, enforced by the kernel) counts only what a retry may
still ask for; failures never hold the log's room, and one channel's burst
never fills the log for the others: EngineFull (503 for a whole batch) is left
for a log that the channels together fill within the retention.

The ledger state is a pure function of the sequence of entries given to the
store: replaying them (core/replay.py) rebuilds it byte for byte. Timestamps
come from the injected clock, forced strictly increasing; the business day of
an entry is that of its first timestamp in the rules' time zone.

The rules for timestamps, batch sizes and lingers, overload and eviction are
`core.engine_policy`'s (sans IO), shared with the failover simulator.
"""

from __future__ import annotations

import enum
import math
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from core import engine_policy as policy
from core.engine_policy import BATCH_SIZE_MAX, NS_PER_S, EvictionPolicy
from core.entries import (
    EVICT_PAYLOAD,
    RULES_HEADER,
    UPDATE_ACCOUNT_PAYLOAD,
    Entry,
    EntryKind,
    StateChanges,
    accrue_payload_fields,
    apply_entry,
    encode_state_changes,
    pack_accrue_payload,
)
from core.errors import TallyError
from core.signals import Waiter, waiter_factory
from core.store import Store
from ledger.kernel import KernelLedger
from ledger.reference import ReferenceLedger
from ledger.types import ACCOUNT_SIZE, TRANSFER_SIZE, split_id
from limits.rules import RuleSet

INLINE_APPLY_COUNT_MAX = 256  # transfers (or accounts) a group may have to be applied on the loop
ACCRUED_COUNTS_KEPT = 8  # days whose accrual count the engine remembers (for the day-end)
LINGER_IDLE_PASSES = 2  # event-loop passes with no new request that end a linger


class Clock(Protocol):
    def now_ns(self) -> int: ...


class SystemClock:
    def now_ns(self) -> int:
        return time.time_ns()


class EngineOverloaded(TallyError):
    """The engine's queue is full: shed load (HTTP 503 with Retry-After)."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"engine queue full; retry after {retry_after_s:.3f} s")
        self.retry_after_s = retry_after_s


class EngineFull(TallyError):
    """A table is full and nothing can be evicted yet (HTTP 503)."""


class EngineStopped(TallyError):
    """The engine is not running (starting, stopping, or failed)."""


class StoreFailed(EngineStopped):
    """The store failed while this request's group was being made durable (or before
    it): the outcome is unknown until the store is back (HTTP 503 with Retry-After)."""


class StateSource(Protocol):
    """Staged customer-state changes that ride with the next group (module docstring)."""

    def drain(self) -> tuple[list[tuple[bytes, bytes | None]], int] | None: ...

    def durable(self, ticket: int) -> None: ...


Ledger = KernelLedger | ReferenceLedger


class RequestKind(enum.IntEnum):
    TRANSFERS = 1
    ACCOUNTS = 2
    UPDATE_ACCOUNT = 3
    READ = 4
    PUT_STATE = 5
    GENERATED = 6  # an entry formed in the apply stage (`submit_generated`)


# What a `submit_generated` function returns: the entry's kind, count, payload and how
# many timestamps it takes (one per transfer it posts, at least one: a POST_WITH_ROWS
# entry with no transfer, only rows, takes one); None: nothing to do.
Generated = tuple[EntryKind, int, bytes, int]
MakeEntry = Callable[["Ledger"], Generated | None]


class _StagedDurable:
    """The `done` of a drained state request: nobody waits on it; once its group is
    durable (`set` with no error) it tells the state source."""

    __slots__ = ("request", "source", "ticket")

    def __init__(self, source: StateSource, ticket: int) -> None:
        self.source = source
        self.ticket = ticket
        self.request: Request | None = None

    def set(self) -> None:
        request = self.request
        assert request is not None
        if request.error is None:
            self.source.durable(self.ticket)

    def wait(self) -> Awaitable[Any]:
        raise AssertionError("nobody waits on a drained state request")


@dataclass(slots=True)
class Request:
    kind: RequestKind
    done: Waiter
    payload: bytes = b""
    count: int = 0
    read: Callable[[Ledger], Any] | None = None
    make: MakeEntry | None = None
    result: Any = None
    error: Exception | None = None


@dataclass(slots=True)
class TransferResult:
    """One transfer's outcome: result code, timestamp, balances after it (0 unless ok)."""

    result: int
    timestamp: int
    debit_balance: int
    credit_balance: int


@dataclass(slots=True)
class TransferResults:
    """The outcomes of one request's transfers: views into its batch's result arrays.

    One object per request, not per transfer: the batch API answers 8189
    transfers without building 8189 Python objects.
    """

    codes: bytearray
    timestamps: Any
    balances: Any
    offset: int
    count: int

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> TransferResult:
        if not 0 <= index < self.count:
            raise IndexError(index)
        i = self.offset + index
        return TransferResult(
            self.codes[i], self.timestamps[i], self.balances[2 * i], self.balances[2 * i + 1]
        )

    def result_codes(self) -> bytes:
        return bytes(self.codes[self.offset : self.offset + self.count])


@dataclass(slots=True)
class Group:
    """What the apply stage hands to the durable stage: entries and who waits on them."""

    entries: list[Entry]
    requests: list[Request]
    applied_ns: int
    captures: list[Any] = field(default_factory=list)


@dataclass(slots=True)
class EngineMetrics:
    batches: int = 0
    entries: int = 0
    transfers: int = 0
    requests: int = 0
    overloaded: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    durable_latency_s: list[float] = field(default_factory=list)

    def observe_batch(self, size: int) -> None:
        self.batch_sizes.append(size)
        if len(self.batch_sizes) > 4096:
            del self.batch_sizes[:2048]

    def observe_durable(self, seconds: float) -> None:
        self.durable_latency_s.append(seconds)
        if len(self.durable_latency_s) > 4096:
            del self.durable_latency_s[:2048]


class Engine:
    """The single writer. Start it with `await task_group.start(engine.serve)`."""

    def __init__(
        self,
        ledger: Ledger,
        store: Store,
        rules: RuleSet,
        *,
        clock: Clock | None = None,
        queue_size: int = 65536,
        batch_size_max: int = BATCH_SIZE_MAX,
        linger_s: float = 0.001,
        retention_s: float = 86_400.0,
        failed_retention_s: float = 900.0,
        expire_interval_s: float = 1.0,
        write_rules: bool = True,
        state: dict[bytes, bytes] | None = None,
        state_source: StateSource | None = None,
        on_store_failure: Callable[[StoreFailed], None] | None = None,
        accrual_rates: Callable[[int, RuleSet], bytes] | None = None,
    ) -> None:
        """`state` is the recovered customer state (`open_store`); the engine then owns it.
        `state_source` hands staged state changes to each group (module docstring);
        `on_store_failure` is called at once when the store fails (the owner stops
        taking requests before the engine has even unwound). `accrual_rates(day, rules)`
        (the deposit catalog's accrual table of a day) turns on the day-boundary accrual:
        the interest of each ended day is accrued on its end-of-day balances before the
        first entry of the next day (module docstring)."""
        if sys.flags.optimize:
            raise RuntimeError("refusing to run under python -O: assertions guard the ledger")
        assert 1 <= batch_size_max <= BATCH_SIZE_MAX
        assert queue_size >= 1
        self.ledger = ledger
        self.store: Store = store
        self.state: dict[bytes, bytes] = {} if state is None else state
        self.state_source = state_source
        self.on_store_failure = on_store_failure
        self.rules = rules
        self.clock = clock or SystemClock()
        self.queue_size = queue_size
        self.batch_size_max = batch_size_max
        self.linger_s = linger_s
        self.retention_ns = int(retention_s * NS_PER_S)
        self.failed_retention_ns = int(failed_retention_s * NS_PER_S)
        self.eviction = EvictionPolicy(self.retention_ns, self.failed_retention_ns)
        self._evict_due_ns = 0  # the first transfers entry from then on evicts by age
        self.expire_interval_s = expire_interval_s
        self.metrics = EngineMetrics()
        self.timestamp_last = 0
        self.running = False
        self.store_failure: StoreFailed | None = None  # why the store stopped the engine
        self.business_day_last = ledger.last_day
        self._write_rules = write_rules
        self._rules_pending = False
        self._send: MemoryObjectSendStream[Request] | None = None
        self._carry: Request | None = None
        self._groups_sent = 0
        self._groups_durable = 0
        self._durable_advanced: anyio.Event | None = None
        self._waiter: Callable[[], Waiter] = anyio.Event
        if isinstance(ledger, KernelLedger):
            self.timestamp_last = ledger.timestamp_last()
        self.accrual_rates = accrual_rates
        self._accrued_through = ledger.accrued_day  # the last day accrued or formed to be
        self.accrued_counts: dict[int, int] = {}  # day -> accounts accrued (the last few days)

    # --- callers ----------------------------------------------------------------

    def queue_depth(self) -> int:
        if self._send is None:
            return 0
        return self._send.statistics().current_buffer_used

    def _enqueue(self, request: Request) -> None:
        if self._send is None or not self.running:
            raise self.store_failure or EngineStopped("engine is not running")
        try:
            self._send.send_nowait(request)
        except anyio.WouldBlock:
            self.metrics.overloaded += 1
            retry_after_s = policy.overload_retry_after_s(self.linger_s)
            raise EngineOverloaded(retry_after_s=retry_after_s) from None

    async def _wait(self, request: Request) -> Any:
        await request.done.wait()
        if request.error is not None:
            raise request.error
        return request.result

    async def _submit_records(self, kind: RequestKind, batch: bytes, record_size: int) -> Any:
        count, remainder = divmod(len(batch), record_size)
        assert remainder == 0 and 1 <= count <= BATCH_SIZE_MAX, len(batch)
        request = Request(kind, self._waiter(), payload=bytes(batch), count=count)
        self._enqueue(request)
        return await self._wait(request)

    async def submit_transfers(self, batch: bytes) -> TransferResults:
        """Post packed transfers (128 bytes each, up to 8189); answers once durable."""
        results: TransferResults = await self._submit_records(
            RequestKind.TRANSFERS, batch, TRANSFER_SIZE
        )
        return results

    async def submit_transfer(self, transfer: bytes) -> TransferResult:
        """Post one packed transfer; answers once durable (the single-transfer route's path,
        so it skips the batch checks and result views `submit_transfers` makes)."""
        assert len(transfer) == TRANSFER_SIZE, len(transfer)
        request = self.enqueue_transfers(transfer)
        await request.done.wait()
        return transfer_result(request)

    def enqueue_transfers(self, transfers: bytes) -> Request:
        """Queue packed transfers (128 bytes each, up to 8189) and return their request at
        once (or raise EngineOverloaded / EngineStopped); the caller awaits
        `request.done.wait()` and reads it with `transfer_result` (one transfer) or
        `transfer_results`. `submit_transfer(s)` in two halves, so a caller on the hottest
        path needs no coroutine of the engine's."""
        count, remainder = divmod(len(transfers), TRANSFER_SIZE)
        assert remainder == 0 and 1 <= count <= BATCH_SIZE_MAX, len(transfers)
        request = Request(
            RequestKind.TRANSFERS, self._waiter(), payload=bytes(transfers), count=count
        )
        self._enqueue(request)
        return request

    async def submit_accounts(self, batch: bytes) -> bytes:
        """Create packed accounts (64-byte inputs); returns one result code per account."""
        results: bytes = await self._submit_records(RequestKind.ACCOUNTS, batch, ACCOUNT_SIZE)
        return results

    async def update_account(self, account_id: int, status: int, flags: int) -> int:
        payload = UPDATE_ACCOUNT_PAYLOAD.pack(*split_id(account_id), status, flags)
        request = Request(RequestKind.UPDATE_ACCOUNT, self._waiter(), payload=payload, count=1)
        self._enqueue(request)
        result: int = await self._wait(request)
        return result

    async def submit_state(self, changes: StateChanges) -> None:
        """Change customer state: `(key, value)` sets a key, `(key, None)` deletes it.

        Returns once the changes are durable (in the PUT_STATE entry of the
        group they joined) and applied to `self.state`, in submission order.
        """
        assert changes, "no changes"
        payload = encode_state_changes(changes)
        count = len(changes)
        request = Request(RequestKind.PUT_STATE, self._waiter(), payload=payload, count=count)
        self._enqueue(request)
        await self._wait(request)

    async def read(self, function: Callable[[Ledger], Any]) -> Any:
        """Run `function(ledger)` on a state whose every posting is durable."""
        request = Request(RequestKind.READ, self._waiter(), read=function)
        self._enqueue(request)
        return await self._wait(request)

    async def submit_generated(self, make: MakeEntry) -> Any:
        """Apply and journal an entry formed from the state at the moment it is applied.

        `make(ledger)` runs in the apply stage, in a worker thread, against the
        state after everything queued before it (and before anything queued
        after it); it must only read the ledger. It returns `(kind, count,
        payload, timestamps)` or None (nothing to do). The engine gives the
        entry its strictly increasing timestamps (`timestamps` of them) and
        business day, applies it with `apply_entry` (evicting first, like a
        transfers entry, when it posts transfers), journals it in a group of
        its own, and answers once it is durable.

        This is how the day-end forms its entries: a settlement chunk is read
        off the state in the same step that posts it, so nothing can slip in
        between the read and the posting.

        Returns `apply_entry`'s outcome (for entries that post transfers, the
        `(results, timestamps, balances)` of `create_transfers`), or None when
        `make` returned None (still answered only once everything before it is
        durable). Raises what `make` raised (in this caller alone, never in the
        engine), EngineFull when the kernel refused the entry for capacity
        before changing anything (nothing journaled), EngineOverloaded and
        EngineStopped like every submit.
        """
        request = Request(RequestKind.GENERATED, self._waiter(), make=make)
        self._enqueue(request)
        return await self._wait(request)

    # --- the writer -------------------------------------------------------------

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the two stages until cancelled; ready once the rules entry is durable."""
        send, receive = anyio.create_memory_object_stream[Request](self.queue_size)
        durable_send, durable_receive = anyio.create_memory_object_stream[Group](1)
        self._send = send
        self._waiter = waiter_factory()
        self._durable_advanced = anyio.Event()
        try:
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(self._serve_durable, durable_receive)
                with durable_send:
                    if self._write_rules:
                        await self._apply_group(durable_send, self._rules_entries(), [])
                    self.running = True
                    task_status.started()
                    await self._serve_apply(receive, durable_send)
        finally:
            self.running = False
            self._send = None
            self._fail_queued(receive)
            send.close()
            receive.close()

    def _fail_queued(self, receive: MemoryObjectReceiveStream[Request]) -> None:
        stopped = self.store_failure or EngineStopped(
            "engine stopped before this request was applied"
        )
        queued = [] if self._carry is None else [self._carry]
        self._carry = None
        while True:
            try:
                queued.append(receive.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
        for request in queued:
            request.error = stopped
            request.done.set()

    def _rules_entries(self) -> list[Entry]:
        products = bytes(self.rules.product_table())
        channels = bytes(self.rules.channel_table())
        quotas = bytes(self.rules.log_quota_table())
        payload = RULES_HEADER.pack(len(products)) + products + channels + quotas
        return self._entries(EntryKind.SET_RULES, 1, payload, timestamps=1)

    def set_rules(self, rules: RuleSet) -> None:
        """Install new rules at the next batch boundary (journaled, so replay sees them)."""
        self.rules = rules
        self._rules_pending = True

    def _entries(
        self, kind: EntryKind, count: int, payload: bytes, *, timestamps: int
    ) -> list[Entry]:
        """A new entry (`_entry`), preceded by the accrual of every day that ended since the
        last entry when the day-boundary accrual is on: so an ended day's interest is
        accrued on its end-of-day balances, before anything of the next day is applied."""
        entries: list[Entry] = []
        if self.accrual_rates is not None:
            first = policy.next_timestamp(self.clock.now_ns(), self.timestamp_last)
            day = policy.entry_business_day(self.rules.business_day(first), self.business_day_last)
            accrued = max(self._accrued_through, self.ledger.accrued_day)
            for ended in policy.accrual_days(accrued, self.business_day_last, day):
                payload_accrue = pack_accrue_payload(ended, self.accrual_rates(ended, self.rules))
                entries.append(
                    self._entry(EntryKind.ACCRUE_INTEREST, 0, payload_accrue, timestamps=1)
                )
                self._accrued_through = ended
        entries.append(self._entry(kind, count, payload, timestamps=timestamps))
        return entries

    def _entry(self, kind: EntryKind, count: int, payload: bytes, *, timestamps: int) -> Entry:
        """A new entry with the next strictly increasing timestamps and its business day."""
        first = policy.next_timestamp(self.clock.now_ns(), self.timestamp_last)
        self.timestamp_last = policy.last_timestamp(first, timestamps)
        self.business_day_last = policy.entry_business_day(
            self.rules.business_day(first), self.business_day_last
        )
        return Entry(kind, first, self.business_day_last, count, payload)

    async def _serve_apply(
        self,
        receive: MemoryObjectReceiveStream[Request],
        durable_send: MemoryObjectSendStream[Group],
    ) -> None:
        while True:
            first: Request | None = self._carry
            self._carry = None
            if first is None:
                with anyio.move_on_after(self.expire_interval_s):
                    first = await receive.receive()
            if first is None:
                if self._has_pending_holds():
                    entries = self._entries(EntryKind.EXPIRE_PENDING, 0, b"", timestamps=1)
                    await self._apply_group(durable_send, entries, [])
                continue
            if first.kind == RequestKind.GENERATED:
                if self._rules_pending:
                    self._rules_pending = False
                    await self._apply_group(durable_send, self._rules_entries(), [])
                await self._apply_generated(durable_send, first)
                continue
            requests = [first]
            transfer_count = first.count if first.kind == RequestKind.TRANSFERS else 0
            # Take what is queued, then linger while more keeps coming: yield to the event
            # loop and stop after two passes that brought nothing (a request that just
            # arrived on a socket reaches `submit` within two passes), or at the linger
            # deadline. While an earlier group is still being made durable this one could
            # not start its sync anyway: wait for that (up to the deadline) and take what
            # came meanwhile. So a closed loop of clients costs a few passes, not the
            # whole linger, and a stream of arrivals still fills the batch.
            deadline = policy.linger_deadline(anyio.current_time(), self.linger_s)
            idle_passes = 0
            while transfer_count < self.batch_size_max:
                try:
                    request = receive.receive_nowait()
                except anyio.WouldBlock:
                    remaining = deadline - anyio.current_time()
                    if remaining <= 0:
                        break
                    if idle_passes < LINGER_IDLE_PASSES:
                        idle_passes += 1
                        await anyio.lowlevel.checkpoint()
                        continue
                    if self._groups_durable == self._groups_sent:
                        break
                    advanced = self._durable_advanced
                    assert advanced is not None
                    with anyio.move_on_after(remaining):
                        await advanced.wait()
                    idle_passes = LINGER_IDLE_PASSES - 1  # one more pass for what came
                    continue
                idle_passes = 0
                if request.kind == RequestKind.GENERATED:
                    self._carry = request  # formed from the state after this group: alone
                    break
                if request.kind == RequestKind.TRANSFERS:
                    if not policy.batch_fits(transfer_count, request.count, self.batch_size_max):
                        self._carry = request
                        break
                    transfer_count += request.count
                requests.append(request)
            if self._rules_pending:
                self._rules_pending = False
                await self._apply_group(durable_send, self._rules_entries(), [])
            if self.state_source is not None:
                self._take_staged(requests)
            await self._apply_group(durable_send, self._entries_for(requests), requests)

    def _take_staged(self, requests: list[Request]) -> None:
        """The state source's staged changes join this group as one more PUT_STATE request."""
        source = self.state_source
        assert source is not None
        drained = source.drain()
        if drained is None:
            return
        changes, ticket = drained
        done = _StagedDurable(source, ticket)
        request = Request(
            RequestKind.PUT_STATE, done, payload=encode_state_changes(changes), count=len(changes)
        )
        done.request = request
        requests.append(request)

    def _has_pending_holds(self) -> bool:
        if isinstance(self.ledger, KernelLedger):
            return self.ledger.heap_size > 0
        return bool(self.ledger.expiry_heap)

    def _entries_for(self, requests: list[Request]) -> list[Entry]:
        """One entry per run of consecutive requests of the same kind (one kernel call each),
        and one PUT_STATE entry last with every state change of the group, in order."""
        entries: list[Entry] = []
        state_requests: list[Request] = []
        for run in request_runs(requests):
            kind = run[0].kind
            if kind == RequestKind.PUT_STATE:
                state_requests.extend(run)
                continue
            count = sum(request.count for request in run)
            payload = b"".join(request.payload for request in run)
            if kind == RequestKind.TRANSFERS:
                entries += self._entries(
                    EntryKind.CREATE_TRANSFERS, count, payload, timestamps=count
                )
            elif kind == RequestKind.ACCOUNTS:
                entries += self._entries(EntryKind.CREATE_ACCOUNTS, count, payload, timestamps=1)
            elif kind == RequestKind.UPDATE_ACCOUNT:
                entries += self._entries(EntryKind.UPDATE_ACCOUNT, 1, payload, timestamps=1)
        if state_requests:
            count = sum(request.count for request in state_requests)
            payload = b"".join(request.payload for request in state_requests)
            entries += self._entries(EntryKind.PUT_STATE, count, payload, timestamps=1)
        return entries

    async def _apply_group(
        self,
        durable_send: MemoryObjectSendStream[Group],
        entries: list[Entry],
        requests: list[Request],
    ) -> None:
        if self._inline(entries):
            applied, outcomes, captures = self._apply_entries_sync(entries)
        else:
            applied, outcomes, captures = await anyio.to_thread.run_sync(
                self._apply_entries_sync, entries
            )
        # The day-boundary accruals formed with these entries answer no request.
        outcomes = [
            outcome
            for entry, outcome in zip(entries, outcomes, strict=True)
            if entry.kind != EntryKind.ACCRUE_INTEREST
        ]
        self._distribute(requests, outcomes)
        self.metrics.batches += 1
        self.metrics.entries += len(applied)
        for entry in applied:
            if entry.kind == EntryKind.CREATE_TRANSFERS:
                self.metrics.transfers += entry.count
                self.metrics.observe_batch(entry.count)
        self._groups_sent += 1
        await durable_send.send(Group(applied, requests, time.perf_counter_ns(), captures))
        await self.store.after_group(self.ledger, self.state, self.wait_durable)

    async def _apply_generated(
        self, durable_send: MemoryObjectSendStream[Group], request: Request
    ) -> None:
        """A generated request's group: `make` and the apply run in a worker thread (a
        settlement chunk is 8189 transfers: never on the loop); the group carries the
        entry (and its evictions), or nothing when `make` had nothing to do (then it
        only waits its turn to be released, like a read)."""
        applied, outcome, captures = await anyio.to_thread.run_sync(self._generate_sync, request)
        if isinstance(outcome, Exception):
            request.error = outcome
        else:
            request.result = outcome
        self.metrics.batches += 1
        self.metrics.entries += len(applied)
        self._groups_sent += 1
        await durable_send.send(Group(applied, [request], time.perf_counter_ns(), captures))
        await self.store.after_group(self.ledger, self.state, self.wait_durable)

    def _generate_sync(self, request: Request) -> tuple[list[Entry], Any, list[Any]]:
        """Form the generated entry from the current state and apply it (worker thread):
        what was applied, the outcome (or the error for the caller) and the captures."""
        make = request.make
        assert make is not None
        applied: list[Entry] = []
        captures: list[Any] = []
        while True:
            try:
                made = make(self.ledger)
            except Exception as error:  # the make function's failure is its caller's
                return applied, error, captures
            if made is None:
                return applied, None, captures
            kind, count, payload, timestamps = made
            assert timestamps >= 1, timestamps
            entries = self._entries(EntryKind(kind), count, payload, timestamps=timestamps)
            if len(entries) == 1:
                done, outcomes, captured = self._apply_entries_sync(entries)
                return applied + done, outcomes[0], captures + captured
            # A day ended since the last entry: accrue it first, then form the entry again
            # from the state after the accrual (its timestamps are skipped, never reused).
            done, _, captured = self._apply_entries_sync(entries[:-1])
            applied += done
            captures += captured

    def _inline(self, entries: list[Entry]) -> bool:
        """Whether to apply on the event loop: a small group of postings with no eviction
        due takes the kernel microseconds, less than a hop to a worker thread and back.
        (Only the kernel call moves; where the fsync runs is the store's choice:
        core/journal_store.py.)"""
        count = 0
        for entry in entries:
            if entry.kind not in _INLINE_KINDS:
                return False
            if entry.kind == EntryKind.CREATE_TRANSFERS and policy.evict_due(
                entry.timestamp_first, self._evict_due_ns
            ):
                return False  # an eviction by age may be due: not on the loop
            count += entry.count
        if count > INLINE_APPLY_COUNT_MAX:
            return False
        ledger = self.ledger
        return not policy.under_pressure(
            ledger.log_count - ledger.log_tail, count, ledger.transfer_capacity
        )

    async def wait_durable(self) -> None:
        """Wait until every group applied so far is durable."""
        while self._groups_durable < self._groups_sent:
            event = self._durable_advanced
            assert event is not None, "engine not serving"
            await event.wait()

    def _apply_entries_sync(self, entries: list[Entry]) -> tuple[list[Entry], list[Any], list[Any]]:
        """Apply entries in order (worker thread); returns what was applied, each outcome,
        and the store's capture of each applied entry.

        A transfer or account batch the kernel refuses for capacity is refused
        before any state changes: it is not applied, not journaled, and its
        callers get EngineFull. Anything else raising here is a defect: crash.
        """
        applied: list[Entry] = []
        outcomes: list[Any] = []
        captures: list[Any] = []
        capture = self.store.capture
        state = self.state
        for entry in entries:
            if entry.kind in _POSTING_KINDS:
                for evict in self._evict_entries(entry):
                    apply_entry(self.ledger, evict)
                    applied.append(evict)
                    captures.append(capture(self.ledger, evict))
            if entry.kind == EntryKind.ACCRUE_INTEREST:
                accrued = apply_entry(self.ledger, entry, state)
                outcomes.append(accrued)
                day = accrue_payload_fields(entry.payload)[0]
                self.accrued_counts[day] = accrued
                while len(self.accrued_counts) > ACCRUED_COUNTS_KEPT:
                    del self.accrued_counts[min(self.accrued_counts)]
                applied.append(entry)
                captures.append(capture(self.ledger, entry))
                continue
            try:
                outcomes.append(apply_entry(self.ledger, entry, state))
            except ValueError as error:
                if entry.kind not in _POSTING_KINDS and entry.kind != EntryKind.CREATE_ACCOUNTS:
                    raise
                outcomes.append(EngineFull(f"batch refused before posting: {error}"))
                continue
            applied.append(entry)
            captures.append(capture(self.ledger, entry))
        return applied, outcomes, captures

    def _evict_entries(self, transfers: Entry) -> list[Entry]:
        """The evictions to journal before `transfers` (`EvictionPolicy.plan`): an EVICT
        entry when the log window would pass 90% of its capacity (down to 80%, of what is
        past the retention), and once every EVICT_INTERVAL_NS an EVICT of all that is past
        the retention and an EVICT_FAILED of the failures past the failure retention (each
        only if there is one: a quiet ledger journals nothing). They take the timestamp
        of `transfers`."""
        ledger = self.ledger
        now_ns = transfers.timestamp_first
        plan = self.eviction.plan(
            now_ns,
            self._evict_due_ns,
            window=ledger.log_count - ledger.log_tail,
            incoming=transfers.count,
            capacity=ledger.transfer_capacity,
            log_oldest_ns=ledger.log_timestamp_oldest(),
            failed_window=ledger.failed_count - ledger.failed_tail,
            failed_oldest_ns=ledger.failed_timestamp_oldest(),
        )
        self._evict_due_ns = plan.due_ns
        evictions: list[Entry] = []
        day = transfers.business_day
        if plan.log is not None:
            payload = EVICT_PAYLOAD.pack(plan.log.before_ns, plan.log.count)
            evictions.append(Entry(EntryKind.EVICT, now_ns, day, 0, payload))
        if plan.failed is not None:
            payload = EVICT_PAYLOAD.pack(plan.failed.before_ns, plan.failed.count)
            evictions.append(Entry(EntryKind.EVICT_FAILED, now_ns, day, 0, payload))
        return evictions

    def _distribute(self, requests: list[Request], outcomes: list[Any]) -> None:
        """Give every request its slice of its entry's outcome (released once durable)."""
        outcome_iter = iter(outcomes)
        for run in request_runs(requests):
            kind = run[0].kind
            if kind == RequestKind.READ:
                read = run[0].read
                assert read is not None
                try:
                    run[0].result = read(self.ledger)
                except Exception as error:  # the read function's failure is its caller's
                    run[0].error = error
                continue
            if kind == RequestKind.PUT_STATE:
                continue  # its entry is the group's last: applied, released once durable
            outcome = next(outcome_iter)
            if isinstance(outcome, Exception):
                for request in run:
                    request.error = outcome
            elif kind == RequestKind.TRANSFERS:
                results, timestamps, balances = outcome
                offset = 0
                for request in run:
                    request.result = TransferResults(
                        results, timestamps, balances, offset, request.count
                    )
                    offset += request.count
            elif kind == RequestKind.ACCOUNTS:
                offset = 0
                for request in run:
                    request.result = bytes(outcome[offset : offset + request.count])
                    offset += request.count
            else:
                run[0].result = outcome

    async def _serve_durable(self, receive: MemoryObjectReceiveStream[Group]) -> None:
        """The durable stage: every group through `store.begin_group` and `finish_group`.

        With one group in flight (the journal) each group is finished right here:
        a task, a semaphore and an event per group cost the single-submit benchmark
        about a third of its rate (`tally bench engine`: ~80,000 against ~120,000
        transfers/s, small groups), for no overlap at all."""
        if self.store.inflight_groups > 1:
            await self._serve_durable_pipelined(receive)
            return
        begin, finish = self.store.begin_group, self.store.finish_group
        async with receive:
            async for group in receive:
                # A group under way is finished and its answers released even if we
                # are being cancelled: its outcome must be known, never left half-said.
                with anyio.CancelScope(shield=True):
                    if group.entries:
                        try:
                            await finish(begin(group.entries, group.captures))
                        except BaseException as error:
                            self._fail_groups([group], receive, error)
                            raise
                    self._release_group(group)

    async def _serve_durable_pipelined(self, receive: MemoryObjectReceiveStream[Group]) -> None:
        """Up to `store.inflight_groups` groups in the store at once: each is begun here,
        in order, and finished in a task of its own; answers are released strictly in
        group order, each only once its group (hence every group before it) is durable.
        An append under way is finished and its answers released even if we are being
        cancelled: its outcome must be known, never left half-said. After a failure
        every group behind it is answered EngineStopped."""
        begin = self.store.begin_group
        finish = self.store.finish_group
        slots = anyio.Semaphore(self.store.inflight_groups)
        failures: list[BaseException] = []
        released = anyio.Event()  # the answers of the group before the next one are out
        released.set()

        async def finish_one(
            group: Group, pending: Any, before: anyio.Event, mine: anyio.Event
        ) -> None:
            with anyio.CancelScope(shield=True):
                try:
                    error: BaseException | None = None
                    if pending is not None:
                        try:
                            await finish(pending)
                        except BaseException as caught:  # shielded: not a cancellation
                            error = caught
                    await before.wait()
                    if error is None and failures:  # behind a failure: nothing is answered
                        error = failures[0]
                    if error is None:
                        self._release_group(group)
                        return
                    failures.append(error)
                    self._fail_groups([group], None, failures[0])
                    tasks.cancel_scope.cancel()
                finally:
                    mine.set()
                    slots.release()

        unhanded: list[Group] = []
        async with receive:
            async with anyio.create_task_group() as tasks:
                async for group in receive:
                    with anyio.CancelScope(shield=True):
                        await slots.acquire()
                    try:
                        if failures:
                            raise failures[0]
                        pending = begin(group.entries, group.captures) if group.entries else None
                    except BaseException as error:
                        slots.release()
                        unhanded.append(group)
                        if not failures:
                            failures.append(error)
                        break
                    mine = anyio.Event()
                    tasks.start_soon(finish_one, group, pending, released, mine)
                    released = mine
            if failures:
                self._fail_groups(unhanded, receive, failures[0])
                raise failures[0]

    def _release_group(self, group: Group) -> None:
        """The group is durable: its answers go out."""
        self.metrics.observe_durable((time.perf_counter_ns() - group.applied_ns) / 1e9)
        self.metrics.requests += len(group.requests)
        for request in group.requests:
            request.done.set()
        self._groups_durable += 1
        advanced, self._durable_advanced = self._durable_advanced, anyio.Event()
        assert advanced is not None
        advanced.set()

    def _fail_groups(
        self,
        groups: list[Group],
        receive: MemoryObjectReceiveStream[Group] | None,
        error: BaseException,
    ) -> None:
        """The store failed: answer the groups and every group behind them, then stop."""
        self.running = False
        stopped = StoreFailed(f"engine stopped: the store failed ({error}); outcome unknown")
        if self.store_failure is None and self.on_store_failure is not None:
            self.on_store_failure(stopped)
        self.store_failure = stopped
        groups = list(groups)
        while receive is not None:
            try:
                groups.append(receive.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
        for failed in groups:
            for request in failed.requests:
                request.error = stopped
                request.done.set()


# The entry kinds that post transfers into the log: evicted for like a transfers entry, and
# a capacity refusal is EngineFull (the day-end's settlement and the deposits' postings too).
_POSTING_KINDS = frozenset(
    {EntryKind.CREATE_TRANSFERS, EntryKind.SETTLE_INTEREST, EntryKind.POST_WITH_ROWS}
)

_INLINE_KINDS = frozenset(
    {
        EntryKind.CREATE_TRANSFERS,
        EntryKind.CREATE_ACCOUNTS,
        EntryKind.UPDATE_ACCOUNT,
        EntryKind.PUT_STATE,
    }
)


def transfer_results(request: Request) -> TransferResults:
    """The outcomes of a transfers request once its `done` is set (or its error)."""
    if request.error is not None:
        raise request.error
    results: TransferResults = request.result
    return results


def transfer_result(request: Request) -> TransferResult:
    """The outcome of a one-transfer request once its `done` is set (or its error)."""
    if request.error is not None:
        raise request.error
    results: TransferResults = request.result
    i = results.offset
    return TransferResult(
        results.codes[i],
        results.timestamps[i],
        results.balances[2 * i],
        results.balances[2 * i + 1],
    )


def request_runs(requests: list[Request]) -> Iterator[list[Request]]:
    """Consecutive requests that share one kernel call: runs of transfers, runs of
    account creations; every other request alone. Forming entries and handing out
    their outcomes must split the same way, so both use this."""
    index = 0
    while index < len(requests):
        kind = requests[index].kind
        end = index + 1
        if kind in (RequestKind.TRANSFERS, RequestKind.ACCOUNTS):
            while end < len(requests) and requests[end].kind == kind:
                end += 1
        yield requests[index:end]
        index = end


def latency_quantile(samples: Sequence[float], quantile: float) -> float:
    if not samples:
        return math.nan
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]
