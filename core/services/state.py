"""The customer state: customers, account openings, passwords, tokens, nonces.

None of this is money and none of it is replayed into the kernels, but all
of it must survive a crash and fail over with the ledger: a customer's KYC
record, which card an account is bound to, a password hash and its failure
counter, the transaction tokens and customer sessions issued, the nonces that stop a captured
request from being replayed.

It lives in the same store as the ledger, as key/value changes the engine
writes in the PUT_STATE entry of its next group (`Engine.submit_state`):
journal entries with their checksum in embedded mode, rows of `tally_state`
committed in the same transaction groups in PostgreSQL. One record per key:

    customer/<id>        account/<id>       password/<account>
    failures/<account>   token/<digest>     session/<digest>
    nonces/<batch id>    opening/<channel>/<digest of the Idempotency-Key>
    (nonce/<channel>/<nonce>: the older one-record-per-nonce form, still read)

each value the record as JSON (orjson). `StateStore` keeps the in-memory
maps the services read and applies every change to them through one
function, `apply(key, value)` (None deletes), at load as at run time.

Writers `commit` records: applied in memory at once (so uniqueness checks
see them) and returned once durable; a full engine queue is waited out
(bounded), any other refusal undoes them in memory before it propagates.
The deletion of expired nonces and tokens is staged and not waited for
(the housekeeping task `flush`es it; an expired token is refused whether or
not it is deleted).

Nonces are durable before the request that used them is answered, without
a write of their own. Why: a nonce only in memory is forgotten by a crash
(kill -9), and the captured request could then be replayed while its
timestamp is still inside the window. A timestamp watermark after an
unclean restart cannot close that on its own: the window is +/- 300 s, so a
request signed up to 300 s ahead and accepted just before the crash stays
replayable for up to 600 s, and refusing every timestamp below such a mark
would refuse every honest client for minutes. So a nonce is staged in
memory (`add_nonce`, checked at once by `nonce_seen`) and the engine takes
every staged change into the PUT_STATE entry of the next group it forms
(`drain`, called by the engine): a request that posts or reads through the
engine therefore has its nonce durable in the same fdatasync/COMMIT as its
own change, for free. `staged_ticket` counts the changes staged,
`durable_ticket` how many of them are durable; the adapter answers only
once `durable_ticket` has reached the ticket of its request's nonce, and a
request that never reached the engine (a refusal, a read of this state)
waits for `flush_through`: a barrier through the engine (an empty read),
whose group takes the staged nonces, one group commit shared by every
request waiting at once.

Compaction: the nonces a group takes are ONE record, `nonces/<batch id>`
(`{"k":"nonces","id":..,"n":[[channel, nonce, timestamp_s], ...]}`), not one
record per request, and a batch record is deleted (one change) once all of
its nonces are too old to pass the window check. So `tally_state` and a
snapshot hold the batches of the last window only, and the journal takes one
record per group for nonces instead of two (set, delete) per request.
Records of the older form `nonce/<channel>/<nonce>` (a journal or a legacy
file written before) are still read, and deleted as they expire.

Before this, the state was a JSON-lines file without checksums in the data
directory, `channels-state.jsonl`; `read_legacy_file` reads one so the
lifecycle can import it once into the store.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson

from core.errors import TallyError
from core.services.refusals import Code, Refused

LEGACY_STATE_FILE = "channels-state.jsonl"
LEGACY_IMPORTED_SUFFIX = ".imported"
NS_PER_S = 1_000_000_000
Change = tuple[bytes, bytes | None]
Submit = Callable[[list[Change]], Awaitable[None]]
# The order records are applied in at load: an account after its customer.
COMMIT_ATTEMPTS_MAX = 100  # full-queue retries of one commit (about 5 s at the engine's hint)
LOAD_ORDER = (
    b"customer/",
    b"account/",
    b"password/",
    b"failures/",
    b"token/",
    b"session/",
    b"nonce/",
    b"nonces/",
    b"opening/",
)
Barrier = Callable[[], Awaitable[None]]
# Customer-state keys other services keep and read from the engine's state themselves
# (not records of this store): the day-end's progress (core/services/dayend.py).
# Risk decisions (core/services/risk.py), approval requests, parameter versions, the
# operator audit log and credit limits (core/services/approvals.py). Loan applications,
# loans (contract and terms segments) and early repayments by operation key
# (core/services/loan_accounts.py). Operations cancelled before they arrived
# (core/services/payments.py, `Payments.bar`). Real-name verification's provider calls
# (the audit), card bindings and SMS code challenges (core/services/verification.py).
OTHER_SERVICE_PREFIXES = (
    b"dayend/",
    b"risk/",
    b"approval/",
    b"param/",
    b"audit/",
    b"credit/",
    b"loanapp/",
    b"loan/",
    b"loanpay/",
    b"barred/",
    b"kyccall/",
    b"binding/",
    b"smscode/",
)


class StateError(TallyError):
    """A state record that cannot be read, or a legacy state file that is damaged."""


@dataclass(slots=True)
class Customer:
    customer_id: str
    name: str
    id_number: str
    mobile: str
    kyc: dict[str, Any]
    created_ns: int
    accounts: list[int] = field(default_factory=list)


@dataclass(slots=True)
class AccountMeta:
    account_id: int
    customer_id: str
    account_class: int  # 1, 2, 3 (ledger AccountKind)
    bound: dict[str, Any] | None
    opened_ns: int
    closed: bool = False


@dataclass(slots=True)
class Password:
    salt: bytes
    digest: bytes
    n: int
    r: int
    p: int
    pepper_id: str = ""  # the pepper keyed into the hash (`passwords.pepper_id`); "": none


@dataclass(slots=True)
class Opening:
    """An account opening sent with an Idempotency-Key: a retry meets it (`fingerprint` of its
    fields, `TransferIds.fingerprint`) and is answered with the same account."""

    account_id: int
    fingerprint: int


@dataclass(slots=True)
class Token:
    account_id: int
    channel: str
    expires_ns: int


@dataclass(slots=True)
class Session:
    """A customer session: the channel acts for `customer_id` until `expires_ns`."""

    customer_id: str
    channel: str
    expires_ns: int


def record_key(record: Mapping[str, Any]) -> bytes:
    """The state key of a record (one record per key: a later one replaces it)."""
    kind = record["k"]
    if kind in ("customer", "account"):
        return f"{kind}/{record['id']}".encode()
    if kind in ("password", "failures"):
        return f"{kind}/{record['account']}".encode()
    if kind == "token":
        return f"token/{record['t']}".encode()
    if kind == "session":
        return f"session/{record['t']}".encode()
    if kind == "nonce":
        return nonce_key(record["c"], record["n"])
    if kind == "opening":
        return opening_key(record["c"], record["h"])
    if kind == "nonces":
        return nonce_batch_key(record["id"])
    raise StateError(f"unknown state record kind {kind!r}")


def nonce_key(channel: str, nonce: str) -> bytes:
    assert "/" not in channel, channel
    return f"nonce/{channel}/{nonce}".encode()


def opening_key(channel: str, key_digest: str) -> bytes:
    assert "/" not in channel, channel
    return f"opening/{channel}/{key_digest}".encode()


def operation_key_digest(key: str) -> str:
    """What the state keeps of an operation key (any printable ASCII, `/` included): a fixed-size
    name for its record."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def nonce_batch_key(batch_id: int) -> bytes:
    return b"nonces/%d" % batch_id


def name_key(name: str) -> str:
    """What a name is looked up by: its words single-spaced, case folded."""
    return " ".join(name.split()).casefold()


def index_add(index: dict[str, str | tuple[str, ...]], key: str, customer_id: str) -> None:
    """Add `customer_id` under `key` (one id as a str: no tuple for the common case)."""
    held = index.get(key)
    if held is None:
        index[key] = customer_id
    elif isinstance(held, str):
        if held != customer_id:
            index[key] = (held, customer_id)
    elif customer_id not in held:
        index[key] = (*held, customer_id)


def index_remove(index: dict[str, str | tuple[str, ...]], key: str, customer_id: str) -> None:
    held = index.get(key)
    if held is None:
        return
    if isinstance(held, str):
        if held == customer_id:
            del index[key]
        return
    left = tuple(other for other in held if other != customer_id)
    index[key] = left[0] if len(left) == 1 else left


def index_get(index: dict[str, str | tuple[str, ...]], key: str) -> tuple[str, ...]:
    held = index.get(key)
    if held is None:
        return ()
    return (held,) if isinstance(held, str) else held


class StateStore:
    """The in-memory maps of the customer state, and the way their changes become durable."""

    def __init__(self, ticket: int = 0) -> None:
        """`ticket`: where `staged_ticket` and `durable_ticket` start (the tickets of a
        StateStore this one replaces, so that a ticket taken before stays comparable)."""
        self.customers: dict[str, Customer] = {}
        self.customer_by_id_number: dict[str, str] = {}
        # The operators' lookups (core/services/search.py): customers by mobile and by
        # name (`name_key`), a customer id, or a tuple of them where several share one.
        self.customers_by_mobile: dict[str, str | tuple[str, ...]] = {}
        self.customers_by_name: dict[str, str | tuple[str, ...]] = {}
        self.accounts: dict[int, AccountMeta] = {}
        # The accounts whose holder is not verified (`kyc_verified`): nothing moves out of
        # them (`Payments.admit`). Kept as customer and account records apply; empty in
        # a bank whose customers all passed the verification workflow, so the posting
        # path's check is one truth test.
        self.unverified_accounts: set[int] = set()
        self.passwords: dict[int, Password] = {}
        # account -> (business day of the last, wrong passwords in a row incl. reserved)
        self.failures: dict[int, tuple[int, int]] = {}
        self.tokens: dict[str, Token] = {}
        self.sessions: dict[str, Session] = {}  # digest -> session
        self.openings: dict[bytes, Opening] = {}  # opening_key(channel, key digest) -> opening
        self.nonces: dict[str, dict[str, int]] = {}  # channel -> nonce -> timestamp_s
        # (timestamp_s, channel, nonce, key of the record holding it) in arrival order:
        # pruning pops from the left instead of scanning every live nonce (hundreds of
        # thousands at peak).
        self.nonce_order: collections.deque[tuple[int, str, str, bytes]] = collections.deque()
        self.nonce_live: dict[bytes, int] = {}  # record key -> its nonces not yet forgotten
        self.values: dict[bytes, bytes] = {}  # the raw records, as applied
        self._pending: list[Change] = []  # staged, written by the next `flush`
        self._batch: list[tuple[str, str, int]] = []  # nonces staged for the next batch record
        self._batch_key: bytes | None = None  # the key the staged nonces will be written under
        self._batch_id_last = 0
        self.staged_ticket = ticket  # changes staged so far (nonces included)
        self.durable_ticket = ticket  # how many of those are durable
        self._submit: Submit | None = None
        self._barrier: Barrier | None = None
        self.changes_committed = 0

    # --- loading ----------------------------------------------------------------

    def load(self, state: Mapping[bytes, bytes], *, now_s: int, nonce_window_s: int) -> None:
        """Apply the recovered state (`OpenedStore.state`); stage the deletion of nonces
        too old to pass the window check again."""
        for prefix in LOAD_ORDER:
            keys = [key for key in state if key.startswith(prefix)]
            if prefix == b"account/":
                keys.sort(key=lambda key: orjson.loads(state[key])["opened_ns"])
            for key in keys:
                self.apply(key, state[key])
        unknown = [key for key in state if not key.startswith(LOAD_ORDER + OTHER_SERVICE_PREFIXES)]
        if unknown:
            raise StateError(f"unknown state key {unknown[0]!r}")
        self.nonce_order = collections.deque(sorted(self.nonce_order))
        self.prune_nonces(now_s, nonce_window_s)

    def attach(self, submit: Submit, barrier: Barrier) -> None:
        """Write through `submit` (the engine's `submit_state`) from now on; `barrier`
        returns once every group the engine formed before it is durable."""
        self._submit = submit
        self._barrier = barrier

    def apply(self, key: bytes, value: bytes | None) -> None:
        """Apply one change to the in-memory maps: the one way a record gets in."""
        if value is None:
            self._delete(key)
            return
        try:
            record = orjson.loads(value)
        except orjson.JSONDecodeError as error:
            raise StateError(f"state record {key!r} is damaged: {error}") from error
        if not isinstance(record, dict) or record_key(record) != key:
            raise StateError(f"state record {key!r} holds another record: {value[:80]!r}")
        self._apply(record)
        self.values[key] = value

    def _apply(self, record: dict[str, Any]) -> None:
        kind = record["k"]
        if kind == "customer":
            customer = Customer(
                record["id"],
                record["name"],
                record["id_number"],
                record["mobile"],
                record["kyc"],
                record["created_ns"],
            )
            previous = self.customers.get(customer.customer_id)
            if previous is not None:
                customer.accounts = previous.accounts
                self._unindex(previous)
            self.customers[customer.customer_id] = customer
            self.customer_by_id_number[customer.id_number] = customer.customer_id
            index_add(self.customers_by_mobile, customer.mobile, customer.customer_id)
            index_add(self.customers_by_name, name_key(customer.name), customer.customer_id)
            if customer.accounts:
                if kyc_verified(customer.kyc):
                    self.unverified_accounts.difference_update(customer.accounts)
                else:
                    self.unverified_accounts.update(customer.accounts)
        elif kind == "account":
            meta = AccountMeta(
                int(record["id"]),
                record["customer"],
                record["class"],
                record.get("bound"),
                record["opened_ns"],
                record.get("closed", False),
            )
            known = meta.account_id in self.accounts
            self.accounts[meta.account_id] = meta
            owner = self.customers.get(meta.customer_id)
            if owner is not None and not known:
                owner.accounts.append(meta.account_id)
            if owner is None or not kyc_verified(owner.kyc):
                self.unverified_accounts.add(meta.account_id)
        elif kind == "password":
            self.passwords[int(record["account"])] = Password(
                bytes.fromhex(record["salt"]),
                bytes.fromhex(record["hash"]),
                record["n"],
                record["r"],
                record["p"],
                record.get("pepper", ""),
            )
        elif kind == "failures":
            self.failures[int(record["account"])] = (record["day"], record["count"])
        elif kind == "token":
            self.tokens[record["t"]] = Token(
                int(record["account"]), record["channel"], record["expires_ns"]
            )
        elif kind == "session":
            self.sessions[record["t"]] = Session(
                record["customer"], record["channel"], record["expires_ns"]
            )
        elif kind == "opening":
            self.openings[opening_key(record["c"], record["h"])] = Opening(
                int(record["account"]), int(record["f"], 16)
            )
        elif kind == "nonce":  # the older form: one record per nonce
            key = nonce_key(record["c"], record["n"])
            self.nonces.setdefault(record["c"], {})[record["n"]] = record["t"]
            self.nonce_order.append((record["t"], record["c"], record["n"], key))
            self.nonce_live[key] = 1
        else:
            assert kind == "nonces", kind
            key = nonce_batch_key(record["id"])
            self._batch_id_last = max(self._batch_id_last, record["id"])
            for channel, nonce, timestamp_s in record["n"]:
                self.nonces.setdefault(channel, {})[nonce] = timestamp_s
                self.nonce_order.append((timestamp_s, channel, nonce, key))
            self.nonce_live[key] = len(record["n"])

    def _delete(self, key: bytes) -> None:
        value = self.values.pop(key, None)
        if value is None:
            return
        record = orjson.loads(value)
        kind = record["k"]
        if kind == "customer":
            customer = self.customers.pop(record["id"])
            self.customer_by_id_number.pop(customer.id_number, None)
            self._unindex(customer)
        elif kind == "account":
            meta = self.accounts.pop(int(record["id"]))
            self.unverified_accounts.discard(meta.account_id)
            owner = self.customers.get(meta.customer_id)
            if owner is not None and meta.account_id in owner.accounts:
                owner.accounts.remove(meta.account_id)
        elif kind == "password":
            self.passwords.pop(int(record["account"]), None)
        elif kind == "failures":
            self.failures.pop(int(record["account"]), None)
        elif kind == "token":
            self.tokens.pop(record["t"], None)
        elif kind == "session":
            self.sessions.pop(record["t"], None)
        elif kind == "opening":
            self.openings.pop(key, None)
        elif kind == "nonce":
            self.nonce_live.pop(key, None)
            seen = self.nonces.get(record["c"])
            if seen is not None:
                seen.pop(record["n"], None)
        else:
            self.nonce_live.pop(key, None)
            for channel, nonce, timestamp_s in record["n"]:
                seen = self.nonces.get(channel)
                if seen is not None and seen.get(nonce) == timestamp_s:
                    del seen[nonce]

    def _unindex(self, customer: Customer) -> None:
        index_remove(self.customers_by_mobile, customer.mobile, customer.customer_id)
        index_remove(self.customers_by_name, name_key(customer.name), customer.customer_id)

    # --- writing ----------------------------------------------------------------

    async def commit(
        self,
        records: Iterable[dict[str, Any]],
        deleted: Iterable[bytes] = (),
        other: Iterable[Change] = (),
    ) -> None:
        """Apply `records` (and delete the keys `deleted`) in memory now; return once
        they are durable. `other`: raw changes of other services' records
        (`OTHER_SERVICE_PREFIXES`, not applied to these maps) made durable in the same
        PUT_STATE entry, so a service's record and an account record it needs are
        written together or not at all.

        Customer-state writes are few and must not be shed like postings: a full
        engine queue (refused at once, before anything was queued) is retried after
        the engine's hint, at most `COMMIT_ATTEMPTS_MAX` times, the records staying
        applied meanwhile so uniqueness checks see them. Any other refusal, the
        last overload, or a cancellation while waiting to retry undoes them in
        memory (each key that still holds this commit's value) before propagating;
        a cancellation once queued does not (the engine makes them durable).
        """
        changes: list[Change] = [(record_key(r), orjson.dumps(r)) for r in records]
        changes.extend((key, None) for key in deleted)
        foreign = list(other)
        assert all(key.startswith(OTHER_SERVICE_PREFIXES) for key, _ in foreign), foreign
        if not changes and not foreign:
            return
        assert self._submit is not None, "the customer state is written once the engine runs"
        previous = [(key, self.values.get(key)) for key, _ in changes]
        for key, value in changes:
            self.apply(key, value)
        for attempt in range(1, COMMIT_ATTEMPTS_MAX + 1):
            try:
                # Nothing awaits before the engine queues the request: a cancellation
                # delivered in here comes after it was queued (it will be durable).
                await self._submit(changes + foreign)
                break
            except Refused as refusal:
                if refusal.refusal.code != Code.OVERLOADED or attempt == COMMIT_ATTEMPTS_MAX:
                    self._undo(changes, previous)
                    raise
                retry_after_s = refusal.refusal.extras.get("retry_after_s", 0.05)
            try:
                await anyio.sleep(retry_after_s)
            except BaseException:
                self._undo(changes, previous)
                raise
        self.changes_committed += len(changes) + len(foreign)

    def _undo(self, changes: list[Change], previous: list[Change]) -> None:
        mine = {key: value for key, value in changes}
        for key, value in reversed(previous):
            if self.values.get(key) == mine[key]:
                self.apply(key, value)

    def stage(self, records: Iterable[dict[str, Any]]) -> None:
        """Apply `records` in memory now; they are written with the next `flush`, not
        waited for: for a change that must not be lost to a refusal of the engine (an
        opening the engine refused is marked closed while its queue is still full)."""
        for record in records:
            key, value = record_key(record), orjson.dumps(record)
            self.apply(key, value)
            self._pending.append((key, value))
            self.staged_ticket += 1

    def stage_change(self, key: bytes, value: bytes | None) -> int:
        """Stage a raw change of another service's record (`OTHER_SERVICE_PREFIXES`: not
        applied to these maps) for the PUT_STATE entry of the next group the engine forms;
        the ticket `durable_ticket` reaches once it is durable. Staged before a posting is
        queued, it is durable in the posting's group or an earlier one (the risk stage
        records its decision so, without a write of its own)."""
        assert key.startswith(OTHER_SERVICE_PREFIXES), key
        self._pending.append((key, value))
        self.staged_ticket += 1
        return self.staged_ticket

    def drain(self) -> tuple[list[Change], int] | None:
        """What is staged, as changes for the PUT_STATE entry of the group the engine is
        forming (the nonces as one batch record), and the ticket they bring
        `durable_ticket` to once that group is durable (`durable`); None if nothing is."""
        if self._batch:
            self._close_batch()
        if not self._pending:
            return None
        pending, self._pending = self._pending, []
        return pending, self.staged_ticket

    def durable(self, ticket: int) -> None:
        """The changes through `ticket` are durable (called when their group is)."""
        if ticket > self.durable_ticket:
            self.durable_ticket = ticket

    def _close_batch(self) -> None:
        """Turn the staged nonces into their batch record, staged (nonces forgotten while
        staged are left out; a batch with none left is not written)."""
        key = self._batch_key
        assert key is not None
        batch, self._batch, self._batch_key = self._batch, [], None
        # Per nonce on every group: the staged tuples themselves (orjson writes a tuple as
        # the same array), one dict lookup per channel, none per nonce for a new empty one.
        nonces = self.nonces
        live = []
        for entry in batch:
            seen = nonces.get(entry[0])
            if seen is not None and seen.get(entry[1]) == entry[2]:
                live.append(entry)
        if not live:
            self.nonce_live.pop(key, None)
            return
        batch_id = int(key[len(b"nonces/") :])
        value = orjson.dumps({"k": "nonces", "id": batch_id, "n": live})
        self.values[key] = value
        self.nonce_live[key] = len(live)
        self._pending.append((key, value))

    def stage_deletions(self, keys: Iterable[bytes]) -> None:
        """Delete `keys` in memory now; written with the next `flush` (see `stage`)."""
        for key in keys:
            self._delete(key)
            self._pending.append((key, None))

    async def flush(self) -> None:
        """Have what is staged (nonces, expired keys' deletions) written: the engine's next
        group takes it (`drain`), and this returns once that group is durable. Left
        staged if the engine refuses (a full queue, a failed store)."""
        if (not self._pending and not self._batch) or self._barrier is None:
            return
        with contextlib.suppress(Refused):
            await self._barrier()

    async def flush_through(self, ticket: int) -> None:
        """Return once the changes through `ticket` are durable: the engine's next group
        takes them (with whatever else is staged by then: one batch record for every
        request waiting here) and this returns once that group is durable. Raises
        `Refused` if the engine cannot make them durable (overloaded, its store failed)."""
        if self.durable_ticket >= ticket:
            return
        assert self._barrier is not None, "engine not attached"
        await self._barrier()
        assert self.durable_ticket >= ticket, (self.durable_ticket, ticket)

    # --- nonces and tokens ------------------------------------------------------

    def nonce_seen(self, channel: str, nonce: str) -> bool:
        seen = self.nonces.get(channel)
        return seen is not None and nonce in seen

    def add_nonce(self, channel: str, nonce: str, timestamp_s: int) -> int:
        """Remember a nonce now (staged for the next group's batch record); returns the
        ticket `durable_ticket` must reach before the request may be answered."""
        key = self._batch_key
        if key is None:
            batch_id = max(time.time_ns(), self._batch_id_last + 1)
            self._batch_id_last = batch_id
            key = self._batch_key = nonce_batch_key(batch_id)
        self.nonces.setdefault(channel, {})[nonce] = timestamp_s
        self.nonce_order.append((timestamp_s, channel, nonce, key))
        self._batch.append((channel, nonce, timestamp_s))
        self.staged_ticket += 1
        return self.staged_ticket

    def prune_nonces(self, now_s: int, window_s: int) -> int:
        """Forget nonces whose timestamp is too old to pass the window check again; the
        deletion of a record all of whose nonces are forgotten is staged."""
        removed = 0
        order = self.nonce_order
        live = self.nonce_live
        # Arrival order is only roughly timestamp order: a nonce behind a newer one is
        # forgotten a little later than it could be, never earlier.
        while order and order[0][0] + window_s < now_s:
            timestamp_s, channel, nonce, key = order.popleft()
            seen = self.nonces.get(channel)
            if seen is not None and seen.get(nonce) == timestamp_s:
                del seen[nonce]
                removed += 1
            if key == self._batch_key:
                continue  # not written yet: `_close_batch` leaves it out
            left = live.get(key)
            if left is None:
                continue  # the record is gone already
            if left > 1:
                live[key] = left - 1
                continue
            del live[key]
            self.values.pop(key, None)
            self._pending.append((key, None))
            self.staged_ticket += 1
        return removed

    def token_keys(self, account_id: int) -> list[bytes]:
        """The keys of `account_id`'s tokens (to delete when its password changes or it closes)."""
        return [
            f"token/{token}".encode()
            for token, entry in self.tokens.items()
            if entry.account_id == account_id
        ]

    def prune_tokens(self, now_ns: int) -> int:
        """Forget expired tokens and sessions (their deletion is staged)."""
        expired = [token for token, entry in self.tokens.items() if entry.expires_ns <= now_ns]
        keys = [f"token/{token}".encode() for token in expired]
        ended = [digest for digest, entry in self.sessions.items() if entry.expires_ns <= now_ns]
        keys += [f"session/{digest}".encode() for digest in ended]
        for key in keys:
            self._delete(key)
            self._pending.append((key, None))
            self.staged_ticket += 1
        return len(keys)

    def session_keys(self, customer_id: str) -> list[bytes]:
        """The keys of `customer_id`'s sessions on every channel (to delete when one of the
        customer's passwords changes)."""
        return [
            f"session/{digest}".encode()
            for digest, entry in self.sessions.items()
            if entry.customer_id == customer_id
        ]


def read_legacy_file(path: str) -> list[dict[str, Any]] | None:
    """The records of a legacy `channels-state.jsonl`, in order (None: no such file).

    A last line without its newline is a torn write from a crash and is
    dropped; any other unparseable line is damage and refused.
    """
    try:
        with open(path, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        return None
    lines = data.split(b"\n")
    lines.pop()  # b"" after a final newline, else a torn last write (never acknowledged)
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            raise StateError(f"{path}: line {number} is damaged: {error}") from error
        if not isinstance(record, dict) or "k" not in record:
            raise StateError(f"{path}: line {number} is not a state record")
        record_key(record)  # refuses an unknown kind
        records.append(record)
    return records


def legacy_records_to_import(
    records: Iterable[dict[str, Any]], *, now_s: int, nonce_window_s: int
) -> list[dict[str, Any]]:
    """What of a legacy file is still current: the last record per key, nonces in window."""
    current: dict[bytes, dict[str, Any]] = {}
    for record in records:
        if record["k"] == "nonce" and record["t"] + nonce_window_s < now_s:
            continue
        current[record_key(record)] = record
    return list(current.values())


def rename_imported(path: str) -> None:
    """Rename an imported legacy file out of the way, durably."""
    os.replace(path, path + LEGACY_IMPORTED_SUFFIX)
    directory_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)


def kyc_verified(kyc: Mapping[str, Any]) -> bool:
    """Whether a customer's KYC record says verified by the verification workflow
    (core/services/verification.py): every step required passed. A record without the
    workflow's steps (the built-in verifier's verdict of earlier versions, which ran
    no identity database, OCR, liveness or teller check) is not verified."""
    return kyc.get("status") == "verified" and "steps" in kyc


def customer_record(customer: Customer) -> dict[str, Any]:
    return {
        "k": "customer",
        "id": customer.customer_id,
        "name": customer.name,
        "id_number": customer.id_number,
        "mobile": customer.mobile,
        "kyc": customer.kyc,
        "created_ns": customer.created_ns,
    }


def account_record(meta: AccountMeta) -> dict[str, Any]:
    return {
        "k": "account",
        "id": str(meta.account_id),
        "customer": meta.customer_id,
        "class": meta.account_class,
        "bound": meta.bound,
        "opened_ns": meta.opened_ns,
        "closed": meta.closed,
    }


def failures_record(account_id: int, day: int, count: int) -> dict[str, Any]:
    """Wrong passwords in a row (`count`, reserved before each check) and the business
    day of the last; the count no longer restarts with the day: only a correct password
    or a supervisor's reset at a counter clears it."""
    return {"k": "failures", "account": str(account_id), "day": day, "count": count}


def password_record(account_id: int, password: Password) -> dict[str, Any]:
    return {
        "k": "password",
        "account": str(account_id),
        "salt": password.salt.hex(),
        "hash": password.digest.hex(),
        "n": password.n,
        "r": password.r,
        "p": password.p,
        **({"pepper": password.pepper_id} if password.pepper_id else {}),
    }


def opening_record(channel: str, key_digest: str, opening: Opening) -> dict[str, Any]:
    return {
        "k": "opening",
        "c": channel,
        "h": key_digest,
        "account": str(opening.account_id),
        "f": f"{opening.fingerprint:016x}",
    }


def token_digest(token: str) -> str:
    """What the state keeps of a transaction token: its SHA-256, never the bearer secret
    itself, so the journal, a snapshot or a `tally_state` row does not hand out live
    tokens to whoever reads them."""
    return hashlib.sha256(token.encode()).hexdigest()


def session_record(digest: str, entry: Session) -> dict[str, Any]:
    """The record of a customer session: keyed by the SHA-256 of the bearer secret
    (`token_digest`), like a transaction token."""
    return {
        "k": "session",
        "t": digest,
        "customer": entry.customer_id,
        "channel": entry.channel,
        "expires_ns": entry.expires_ns,
    }


def token_record(digest: str, entry: Token) -> dict[str, Any]:
    """The record of a token issued: keyed by its `token_digest`."""
    return {
        "k": "token",
        "t": digest,
        "account": str(entry.account_id),
        "channel": entry.channel,
        "expires_ns": entry.expires_ns,
    }
