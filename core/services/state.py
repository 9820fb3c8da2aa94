"""The channels' own durable state: customers, account openings, passwords, nonces.

None of this belongs in the ledger journal (it is not money and not replayed
into the kernels), but all of it must survive a crash: a customer's KYC
record, which card an account is bound to, a password hash and its failure
counter, the nonces that stop a captured request from being replayed.

It is an append-only JSON-lines file, `channels-state.jsonl`, in the data
directory. Writers stage records (applied to the in-memory maps at once, so
uniqueness checks see them) and `commit` waits until they are on disk: one
leader writes every staged line with one `write` and one `fsync`, and every
caller whose records were in that write is released together (group
commit). Nonces are staged but not waited for: a flusher task writes them
within `flush_interval_s` (the money they could replay is protected by the
Idempotency-Key, whose transfer id the ledger remembers).

At open, the file is replayed; a last line without its newline is a torn
write from a crash and is dropped; any other unparseable line is damage and
the store refuses to open. The file is then compacted (expired nonces and
superseded password records dropped) into a new file renamed over the old.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson

from core.errors import TallyError

STATE_FILE = "channels-state.jsonl"
NS_PER_S = 1_000_000_000


class StateError(TallyError):
    """The state file is damaged or cannot be written."""


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


class StateStore:
    def __init__(self, directory: str, fd: int) -> None:
        self.directory = directory
        self.path = os.path.join(directory, STATE_FILE)
        self.fd = fd
        self.customers: dict[str, Customer] = {}
        self.customer_by_id_number: dict[str, str] = {}
        self.accounts: dict[int, AccountMeta] = {}
        self.passwords: dict[int, Password] = {}
        self.failures: dict[int, tuple[int, int]] = {}  # account -> (business day, count)
        self.nonces: dict[str, dict[str, int]] = {}  # channel -> nonce -> timestamp_s
        # (timestamp_s, channel, nonce) in arrival order: pruning pops from the left
        # instead of scanning every live nonce (hundreds of thousands at peak).
        self.nonce_order: collections.deque[tuple[int, str, str]] = collections.deque()
        self._pending: list[bytes] = []
        self._group_next = 1  # the group staged records join
        self._group_durable = 0
        self._lock: anyio.Lock | None = None
        self._failure: str | None = None
        self.fsync_seconds: list[float] = []
        self.groups_written = 0

    # --- opening ----------------------------------------------------------------

    @classmethod
    def open(cls, directory: str, *, now_s: int, nonce_window_s: int) -> StateStore:
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, STATE_FILE)
        records: list[dict[str, Any]] = []
        if os.path.exists(path):
            with open(path, "rb") as file:
                data = file.read()
            lines = data.split(b"\n")
            tail = lines.pop()  # b"" after a final newline, else a torn line
            for number, line in enumerate(lines, 1):
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError as error:
                    raise StateError(f"{path}: line {number} is damaged: {error}") from error
                if not isinstance(record, dict) or "k" not in record:
                    raise StateError(f"{path}: line {number} is not a state record")
                records.append(record)
            del tail  # a torn last write (never acknowledged): dropped by the rewrite below
        store = cls(directory, -1)
        for record in records:
            store._apply(record)
        for channel, nonces in store.nonces.items():
            store.nonces[channel] = {
                nonce: stamp for nonce, stamp in nonces.items() if stamp + nonce_window_s >= now_s
            }
        store.nonce_order = collections.deque(
            sorted(
                (stamp, channel, nonce)
                for channel, nonces in store.nonces.items()
                for nonce, stamp in nonces.items()
            )
        )
        # Compact: rewrite what is current into a new file, then rename it over the old.
        temporary = path + ".tmp"
        with open(temporary, "wb") as file:
            file.write(b"".join(orjson.dumps(r) + b"\n" for r in store._snapshot_records()))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        directory_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory_fd)
        finally:
            os.close(directory_fd)
        store.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        return store

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _snapshot_records(self) -> Iterable[dict[str, Any]]:
        for customer in self.customers.values():
            yield customer_record(customer)
        for meta in self.accounts.values():
            yield account_record(meta)
        for account_id, password in self.passwords.items():
            yield password_record(account_id, password)
        for account_id, (day, count) in self.failures.items():
            yield failures_record(account_id, day, count)
        for channel, nonces in self.nonces.items():
            for nonce, timestamp in nonces.items():
                yield {"k": "nonce", "c": channel, "n": nonce, "t": timestamp}

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
            self.customers[customer.customer_id] = customer
            self.customer_by_id_number[customer.id_number] = customer.customer_id
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
        elif kind == "password":
            self.passwords[int(record["account"])] = Password(
                bytes.fromhex(record["salt"]),
                bytes.fromhex(record["hash"]),
                record["n"],
                record["r"],
                record["p"],
            )
        elif kind == "failures":
            self.failures[int(record["account"])] = (record["day"], record["count"])
        elif kind == "nonce":
            self.nonces.setdefault(record["c"], {})[record["n"]] = record["t"]
            self.nonce_order.append((record["t"], record["c"], record["n"]))
        else:
            raise StateError(f"{self.path}: unknown record kind {kind!r}")

    # --- nonces -----------------------------------------------------------------

    def nonce_seen(self, channel: str, nonce: str) -> bool:
        seen = self.nonces.get(channel)
        return seen is not None and nonce in seen

    def add_nonce(self, channel: str, nonce: str, timestamp_s: int) -> None:
        self.nonces.setdefault(channel, {})[nonce] = timestamp_s
        self.nonce_order.append((timestamp_s, channel, nonce))
        self._pending.append(
            b'{"k":"nonce","c":"%s","n":"%s","t":%d}\n'
            % (channel.encode(), nonce.encode(), timestamp_s)
        )

    def _prune_nonces(self, now_s: int, window_s: int) -> int:
        """Forget nonces whose timestamp is too old to pass the window check again."""
        removed = 0
        order = self.nonce_order
        # Arrival order is only roughly timestamp order: a nonce behind a newer one is
        # forgotten a little later than it could be, never earlier.
        while order and order[0][0] + window_s < now_s:
            _, channel, nonce = order.popleft()
            seen = self.nonces.get(channel)
            if seen is not None and seen.pop(nonce, None) is not None:
                removed += 1
        return removed

    def prune_nonces(self, now_s: int, window_s: int) -> int:
        return self._prune_nonces(now_s, window_s)

    # --- writing ----------------------------------------------------------------

    def stage(self, record: dict[str, Any]) -> None:
        """Apply `record` in memory now; it is written with the next group."""
        if self._failure is not None:
            raise StateError(self._failure)
        self._apply(record)
        self._pending.append(orjson.dumps(record) + b"\n")

    async def commit(self, records: Iterable[dict[str, Any]] = ()) -> None:
        """Stage `records` and return once they (and all staged before) are durable."""
        for record in records:
            self.stage(record)
        group = self._group_next
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            if self._group_durable >= group:
                return  # a leader wrote our records while we waited for the lock
            await self._write_pending()

    async def flush(self) -> None:
        """Write what is staged (nonces included) if anything is."""
        if not self._pending:
            return
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            if self._pending:
                await self._write_pending()

    async def _write_pending(self) -> None:
        if self._failure is not None:
            raise StateError(self._failure)
        lines, self._pending = self._pending, []
        group = self._group_next
        self._group_next += 1
        if lines:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._write_sync, b"".join(lines))
        self._group_durable = group

    def _write_sync(self, data: bytes) -> None:
        import time

        started = time.perf_counter()
        try:
            view = memoryview(data)
            while view:
                written = os.write(self.fd, view)
                view = view[written:]
            os.fsync(self.fd)
        except OSError as error:
            # After a failed fsync the page cache may already have dropped the dirty
            # pages: nothing written since can be trusted, so stop accepting writes.
            self._failure = f"{self.path}: write failed, state store stopped: {error}"
            raise StateError(self._failure) from error
        self.fsync_seconds.append(time.perf_counter() - started)
        if len(self.fsync_seconds) > 4096:
            del self.fsync_seconds[:2048]
        self.groups_written += 1


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
    }
