"""Read models: an account with its quotas, its history, one transfer.

Typed results (`core.services.results`: str ids, integer minor units) that
every adapter renders as is. Every read is scoped here, for every adapter, by
the caller's channel kind and the proof the request carried (`Proof`: a
customer session or a transaction token; `Auth.readable_account`,
`Auth.transfer_reader`).
"""

from __future__ import annotations

from typing import Any

import anyio

from core.services import identity
from core.services.auth import Auth
from core.services.commands import NO_PROOF, Caller, Proof
from core.services.lifecycle import Lifecycle
from core.services.records import date_of_day, money_name, transfer_read
from core.services.refusals import Code, Refused, refused
from core.services.results import (
    AccountRead,
    AccountStatement,
    HistoryPage,
    StatementLine,
    TransferRead,
)
from ledger.records import AccountView, account_view, transfer_view
from ledger.types import (
    AccountFlags,
    AccountKind,
    AccountStatus,
    CreateTransferResult,
    TransferFlags,
)
from limits.calendar import year_of_day
from limits.reference import counters_effective

HISTORY_PAGE_MAX = 500
# The most postings one statement read walks (the period's and those booked after it), in
# one engine read: about 1 us each, so the engine pauses at most a few tens of ms.
STATEMENT_SCAN_MAX = 50_000
_BOOKING_FLAGS = TransferFlags.PENDING | TransferFlags.VOID_PENDING  # no booked money moves
AFTER_CHANGE_READ_TRIES = 20
R = CreateTransferResult


def _bucket(limit: int, used: int) -> dict[str, Any]:
    return {
        "limit_minor": limit or None,
        "used_minor": used,
        "remaining_minor": max(0, limit - used) if limit else None,
    }


def _kind_name(kind: int) -> str:
    try:
        return AccountKind(kind).name.lower()
    except ValueError:
        return str(kind)


class Reads:
    def __init__(self, core: Lifecycle, auth: Auth) -> None:
        self.core = core
        self.auth = auth

    async def account(
        self, caller: Caller, account_id: int, proof: Proof = NO_PROOF
    ) -> AccountRead:
        """The account as `caller` sees it (its own channel quota included), if the
        caller's read scope and `proof` cover it."""
        self.auth.readable_account(caller, account_id, proof)
        return await self._account(caller, account_id)

    async def _account(self, caller: Caller, account_id: int) -> AccountRead:
        today = self.core.today()

        def read(ledger: Any) -> Any:
            raw = ledger.lookup_account(account_id)
            if raw is None:
                return None
            return (
                raw,
                ledger.account_pending(account_id),
                ledger.channel_used(account_id, caller.ledger_id, today),
            )

        found = await self.core.read(read)
        if found is None:
            raise refused(Code.ACCOUNT_NOT_FOUND, str(account_id))
        raw, (debits_pending, credits_pending), channel_used = found
        record = account_view(raw)
        product = self.core.rules.products.get(record.product)
        floor = product.balance_floor_minor if product else 0
        balance = record.credits_posted - record.debits_posted
        flags = record.flags
        view = AccountRead(
            str(account_id),
            _kind_name(record.kind),
            AccountStatus(record.status).name.lower(),
            "CNY",
            balance,
            debits_pending,
            credits_pending,
            balance - debits_pending - floor
            if flags & AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
            else None,
            bool(flags & AccountFlags.FACE_TO_FACE_VERIFIED),
            bool(flags & AccountFlags.NON_BOUND_INFLOW_ENABLED),
            date_of_day(today),
        )
        if product is not None and product.kind.value in ("class_ii", "class_iii"):
            view.quota = self._quota(product, record, today)
        ruled = self.core.rules.channels.get(caller.ledger_id)
        if ruled is not None and ruled.daily_cap_minor and record.kind <= AccountKind.LOAN:
            view.channel_quota = {
                "channel": caller.name,
                "daily": _bucket(ruled.daily_cap_minor, channel_used),
                "transfer_cap_minor": ruled.transfer_cap_minor or None,
            }
        meta = self.core.customer_state().accounts.get(account_id)
        if meta is not None:
            view.customer_id = meta.customer_id
            if meta.bound is not None:
                view.bound_card = {
                    "card_number_masked": identity.mask_card(meta.bound["card_number"]),
                    "kind": meta.bound["kind"],
                    "card_type": meta.bound["card_type"],
                }
        return view

    async def account_after_change(self, caller: Caller, account_id: int) -> AccountRead:
        """`account` right after a change that is already durable (an opening, a flag):
        the change itself was authorized (an opening by its card binding, a flag by the
        holder's consent or a teller), so its answer is not scoped again.

        The change must not be answered with an overload it did not suffer: a full
        engine queue at the read is waited out, a bounded number of times.
        """
        for _ in range(AFTER_CHANGE_READ_TRIES - 1):
            try:
                return await self._account(caller, account_id)
            except Refused as error:
                if error.refusal.code != Code.OVERLOADED:
                    raise
                await anyio.sleep(error.refusal.extras["retry_after_s"])
        return await self._account(caller, account_id)

    @staticmethod
    def _quota(product: Any, record: AccountView, today: int) -> dict[str, Any]:
        counters = list(record.counters)
        day = record.counters_day
        effective = counters_effective(counters, day, max(today, day)) if day <= today else counters
        return {
            "inflow": {
                "daily": _bucket(product.inflow_daily_minor, effective[0]),
                "yearly": _bucket(product.inflow_yearly_minor, effective[1]),
            },
            "outflow": {
                "daily": _bucket(product.outflow_daily_minor, effective[2]),
                "yearly": _bucket(product.outflow_yearly_minor, effective[3]),
            },
            "year": year_of_day(today),
            "balance_cap_minor": product.balance_cap_minor or None,
        }

    async def history(
        self,
        caller: Caller,
        account_id: int,
        limit: int,
        before: int = -1,
        proof: Proof = NO_PROOF,
    ) -> HistoryPage:
        """Up to `limit` transfers of the account, newest first, before cursor `before`
        (scoped as `account`)."""
        assert 1 <= limit <= HISTORY_PAGE_MAX
        self.auth.readable_account(caller, account_id, proof)

        def read(ledger: Any) -> Any:
            if ledger.lookup_account(account_id) is None:
                return None
            return ledger.account_history(account_id, before, limit)

        page = await self.core.read(read)
        if page is None:
            raise refused(Code.ACCOUNT_NOT_FOUND, str(account_id))
        items = [transfer_read(record) for _, record in page]
        next_cursor = page[-1][0] if len(page) == limit and page[-1][0] > 0 else None
        return HistoryPage(account_id, items, next_cursor)

    async def statement(
        self, caller: Caller, account_id: int, from_day: int, to_day: int, proof: Proof = NO_PROOF
    ) -> AccountStatement:
        """The account's booked postings of business days `from_day` .. `to_day` (day
        numbers, inclusive) with the booked balance before and after them (scoped as
        `account`; ISO 20022 camt.053 / camt.054 render it).

        Read in one engine read, so the balance and the postings are one instant's: the
        closing balance is today's booked balance less what was booked after `to_day`,
        the opening one that less the period's postings. The transfer log keeps
        `Settings.retention_s` of postings: a period that may reach past it, or whose
        postings (and those after it) are more than `STATEMENT_SCAN_MAX`, is refused
        (INVALID_FIELD, `pointer` /from)."""
        assert 0 <= from_day <= to_day
        self.auth.readable_account(caller, account_id, proof)
        found = await self.core.read(
            lambda ledger: _statement_scan(ledger, account_id, from_day, to_day)
        )
        if found is None:
            raise refused(Code.ACCOUNT_NOT_FOUND, str(account_id))
        if isinstance(found, str):
            raise refused(Code.INVALID_FIELD, found, pointer="/from")
        balance, records = found
        entries: list[StatementLine] = []
        after = 0  # the net booked after `to_day`
        net = 0  # the net booked within the period
        for raw, day in records:
            f = transfer_view(raw)
            credit = f.credit_slot == records.slot
            signed = f.amount if credit else -f.amount
            if day > to_day:
                after += signed
                continue
            net += signed
            entries.append(
                StatementLine(
                    f"{f.id:032x}",
                    f.amount,
                    credit,
                    f.timestamp,
                    date_of_day(day),
                    money_name(f.code),
                )
            )
        entries.reverse()  # oldest first
        closing = balance - after
        return AccountStatement(
            account_id,
            "CNY",
            date_of_day(from_day),
            date_of_day(to_day),
            closing - net,
            closing,
            entries,
        )

    async def transfer(
        self, caller: Caller, transfer_id: int, proof: Proof = NO_PROOF
    ) -> TransferRead:
        """One transfer, if it touches an account the caller may read; one the caller may
        not read answers as a transfer that does not exist."""
        readable = self.auth.transfer_reader(caller, proof)

        def read(ledger: Any) -> Any:
            raw = ledger.lookup_transfer(transfer_id)
            if raw is None or readable is None:
                return raw, ()
            record = transfer_view(raw)
            accounts = (record.debit_account_id, record.credit_account_id)
            if 0 in accounts and record.pending_id:  # a capture or void names its hold's
                hold = ledger.lookup_transfer(record.pending_id)
                if hold is not None:
                    held = transfer_view(hold)
                    accounts = (held.debit_account_id, held.credit_account_id)
            return raw, accounts

        raw, accounts = await self.core.read(read)
        if raw is None or (
            readable is not None and not any(account in readable for account in accounts)
        ):
            raise refused(Code.TRANSFER_NOT_FOUND, f"{transfer_id:032x}")
        return transfer_read(raw)


class _Scanned(list[tuple[bytes, int]]):
    """(record, business day) of an account's booked postings, newest first; `slot`: the
    account's slot (a posting credits the account when its credit slot is this one)."""

    slot: int = -1


def _statement_scan(ledger: Any, account_id: int, from_day: int, to_day: int) -> Any:
    """In the engine: None (no account), a reason (str) the period cannot be read, or the
    booked balance and the booked postings of business days >= `from_day`."""
    raw = ledger.lookup_account(account_id)
    if raw is None:
        return None
    account = account_view(raw)
    scanned = _Scanned()
    scanned.slot = ledger.account_slot(account_id)
    before = -1
    while True:
        page = ledger.account_history(account_id, before, HISTORY_PAGE_MAX)
        for seq, record in page:
            f = transfer_view(record)
            if f.business_day < from_day:
                return account.credits_posted - account.debits_posted, scanned
            if f.result == R.OK and not f.flags & _BOOKING_FLAGS:
                scanned.append((record, f.business_day))
            before = seq
        if len(scanned) > STATEMENT_SCAN_MAX:
            return f"more than {STATEMENT_SCAN_MAX} postings from this day on: ask for less"
        if len(page) < HISTORY_PAGE_MAX or before <= 0:
            break
    tail = ledger.log_tail
    if tail > 0 and transfer_view(ledger.record_at(tail)).business_day >= from_day:
        oldest = date_of_day(transfer_view(ledger.record_at(tail)).business_day)
        return f"the transfer log keeps postings from {oldest} on: ask from the day after"
    return account.credits_posted - account.debits_posted, scanned
