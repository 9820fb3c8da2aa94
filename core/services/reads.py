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
from core.services.records import date_of_day, transfer_read
from core.services.refusals import Code, Refused, refused
from core.services.results import AccountRead, HistoryPage, TransferRead
from ledger.records import AccountView, account_view, transfer_view
from ledger.types import AccountFlags, AccountKind, AccountStatus
from limits.calendar import year_of_day
from limits.reference import counters_effective

HISTORY_PAGE_MAX = 500
AFTER_CHANGE_READ_TRIES = 20


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
