"""Deposits: the product catalog, fixed deposits (quote, open, early withdrawal, view) and
an account's interest (history, backdated correction). Typed commands in, typed results
out, nothing of HTTP.

Every money movement of a fixed deposit is ONE `POST_WITH_ROWS` entry
(`Engine.submit_generated`): its transfers and the deposit row they change are
applied together, formed from the ledger's state at the moment the entry is
applied (so two withdrawals of one deposit cannot both read the same row), and
the row is written iff the first transfer posted. The transfers of one entry
are LINKED: all post or none.

- Opening: the customer's own Class I or II account (`source`) -> the new
  fixed-deposit account, code FIXED_DEPOSIT, at the caller's channel (its
  codes and caps apply, as to any debit of the customer's account); the row
  records principal, the term's rate on the opening day, the maturity date
  (same day of month, clamped), the early-withdrawal day count, rollover,
  and the payout account.
- Early withdrawal, full: principal back to the payout account and the
  interest for the days held at the demand rate of the withdrawal day
  (start day counted, end day not, one rounding) from the interest-expense
  account; the row is closed. Partial (once): the part withdrawn earns the
  demand rate, the rest keeps its rate and maturity. The bank pays a deposit
  back, so these post at the bank's own channel (`BANK_CHANNEL`): no channel
  cap or strong authentication stands between a customer and their own money.

Idempotency, like every posting: the transfers' ids derive from the channel
and the operation key (`TransferIds`), so a retry meets the original. A
retry is recognised BEFORE anything is recomputed (a retry on a later day
would otherwise compute other interest and look like a conflict): the first
transfer of the key is looked up and, if present, answered again
(`replayed`) when it carries this instruction's fingerprint (`user_data`),
and refused as a conflict (the ledger's EXISTS_WITH_DIFFERENT_* code) when it
does not. An opening also records its key with the customer state
(`opening/...`, like an account opening): the same key with other fields is
IDEMPOTENCY_KEY_REUSED, and a retry finds the deposit account it created.
A full withdrawal posts under item ids 0 and 1 of its key, a partial one
under 2 and 3: which one happened is read back from the ids.

Interest history reads the account's transfers still in the transfer log
(`Settings.retention_s`): settlements (ids from `interest_transfer_id`),
corrections and the interest a fixed deposit paid; plus the units accrued
since the last settlement, in fen (`fen_of_units`, rounded half up).

A backdated correction never rewrites a posting: the interest on a balance
difference over days of one settled period, at each day's demand rate, is
posted as an adjustment: paid from the interest-expense account (code
INTEREST), or taken back as a REVERSAL of part of that period's settlement
(the one way the ledger's rules let interest flow back; the settlement must
still be in the transfer log).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import anyio
import orjson

from core.entries import EntryKind, pack_post_with_rows_payload
from core.services import identity
from core.services.accounts import FIXED_DEPOSIT_CLASS, Accounts, fixed_deposit_product
from core.services.auth import Auth
from core.services.commands import (
    NO_PROOF,
    Caller,
    CorrectInterest,
    OpenFixedDeposit,
    Posting,
    Proof,
    QuoteFixedDeposit,
    WithdrawFixedDeposit,
)
from core.services.customers import Customers
from core.services.lifecycle import Lifecycle
from core.services.payments import Payments
from core.services.policy import INTERNAL_KIND, INTERNAL_ONLY
from core.services.records import date_of_day
from core.services.refusals import (
    Code,
    Refusal,
    Refused,
    kind_refused,
    refused,
    transfer_refused,
)
from core.services.results import (
    FixedDepositOpened,
    FixedDepositQuote,
    FixedDepositRead,
    FixedDepositWithdrawn,
    InterestFigure,
    InterestHistory,
    InterestPosting,
    Posted,
)
from core.services.serial import OneAtATime
from core.services.state import (
    AccountMeta,
    Opening,
    opening_key,
    opening_record,
    operation_key_digest,
)
from core.services.state import account_record as meta_record
from ledger.constants import BANK_CHANNEL, INTEREST_EXPENSE_ID, LEDGER_CNY
from ledger.deposits import (
    DEMAND_KINDS,
    FD_CLOSED,
    FD_OPEN,
    FD_PARTIAL_DONE,
    FD_ROLLOVER,
    FixedRow,
    demand_row_view,
    fen_of_units,
    fixed_row_view,
    interest_transfer_id,
    is_interest_transfer_id,
    pack_deposit_write,
    pack_fixed_row,
)
from ledger.interest import (
    DayCount,
    day_weight,
    early_withdrawal_interest,
    format_rate,
    period_end_day,
    settlement_period,
    term_interest,
)
from ledger.records import account_view, pack_transfer_after_id, transfer_view
from ledger.types import (
    TRANSFER_SIZE,
    AccountStatus,
    CreateAccountResult,
    CreateTransferResult,
    TransferCode,
    TransferFlags,
)
from limits.calendar import add_months
from limits.deposits import DepositCatalog, Term

logger = logging.getLogger("tally.services")
R = CreateTransferResult

# Account numbers of fixed deposits (development BIN, like accounts.BIN_OF_CLASS).
FIXED_DEPOSIT_BIN = "623505"
# Which classes a fixed deposit is opened from and pays back to (PBoC: Class I or II).
PAYMENT_CLASSES = (1, 2)
PAYMENT_CLASS_NAMES = ("class_i", "class_ii")
# Item ids of an early withdrawal's transfers under its operation key.
FULL_ITEMS = (0, 1)
PARTIAL_ITEMS = (2, 3)
# A correction's user_data: this tag in the high 32 bits, the period in the low 32.
CORRECTION_TAG = 0x434F5252  # "CORR"
INTEREST_HISTORY_LIMIT = 500  # transfers of the account's history read for its interest


@dataclass(slots=True)
class _Opening:
    """What an opening posts, decided before its deposit account exists."""

    term: Term
    rate: int
    today: int
    payout: int
    record: bytes  # the funding transfer, id derived


@dataclass(slots=True)
class _Shown:
    """What the ledger holds of a fixed deposit, read in one engine step."""

    row: FixedRow
    balance_minor: int
    status: int
    payout_account_id: int


class Deposits:
    """The deposit services over the bank's runtime (`Lifecycle`), its catalog and auth."""

    def __init__(
        self,
        core: Lifecycle,
        auth: Auth,
        customers: Customers,
        accounts: Accounts,
        payments: Payments,
    ) -> None:
        self.core = core
        self.auth = auth
        self.customers = customers
        self.accounts = accounts
        self.payments = payments
        self.ids = core.ids
        # Operations under way by their state key: a retry with the key waits for the first.
        self._in_flight: dict[Hashable, anyio.Event] = {}

    @property
    def catalog(self) -> DepositCatalog:
        """The catalog in force (reloaded beside the limit rules: `Lifecycle.catalog`)."""
        catalog: DepositCatalog = self.core.catalog
        return catalog

    # --- products and quotes ----------------------------------------------------------

    def products(self) -> dict[str, Any]:
        """The published catalog: demand rate, terms and their rates, every rate set with
        its effective date (`GET /v1/products`)."""
        products: dict[str, Any] = self.catalog.to_json(self.core.today())
        return products

    def quote_new(self, command: QuoteFixedDeposit) -> FixedDepositQuote:
        """What a deposit of `amount_minor` for `term` opened today pays at maturity (today:
        nothing yet). No side effects. Refuses an unknown term and an amount below the
        minimum, exactly as an opening would."""
        catalog = self.catalog
        today = self.core.today()
        term = _term(command.term)
        _check_minimum(catalog, command.amount_minor, "/amount_minor")
        rate = _fixed_rate(catalog, term, today)
        months = term.months
        row = FixedRow(
            command.amount_minor, rate, today, add_months(today, months), months,
            int(catalog.fixed_day_count), FD_OPEN, 0, 0,
        )  # fmt: skip
        return self._quote_of(None, row, today)

    async def quote(
        self, caller: Caller, account_id: int, proof: Proof = NO_PROOF
    ) -> FixedDepositQuote:
        """What fixed deposit `account_id` pays if withdrawn in full today and if held to
        maturity (scoped like reading the account). A closed deposit is refused."""
        self.auth.readable_account(caller, account_id, proof)
        shown = await self._shown(account_id)
        if not shown.row.is_open:
            raise refused(Code.DEPOSIT_CLOSED, str(account_id))
        return self._quote_of(account_id, shown.row, self.core.today())

    def _quote_of(self, account_id: int | None, row: FixedRow, today: int) -> FixedDepositQuote:
        principal = row.principal
        at_maturity = InterestFigure(
            date_of_day(row.maturity_day),
            row.maturity_day - row.open_day,
            format_rate(row.rate),
            row.rate,
            term_interest(principal, row.rate, row.term_months),
            0,
        )
        at_maturity.total_minor = principal + at_maturity.interest_minor
        if today >= row.maturity_day:  # matured: it pays what maturity pays
            now = InterestFigure(
                date_of_day(today), at_maturity.days_held, at_maturity.rate, row.rate,
                at_maturity.interest_minor, at_maturity.total_minor,
            )  # fmt: skip
        else:
            demand = self.catalog.demand_rate(today)
            interest = early_interest(row, principal, demand, today)
            now = InterestFigure(
                date_of_day(today), today - row.open_day, format_rate(demand), demand,
                interest, principal + interest,
            )  # fmt: skip
        return FixedDepositQuote(
            None if account_id is None else str(account_id),
            principal,
            _term_of_months(row.term_months),
            format_rate(row.rate),
            row.rate,
            DayCount(row.day_count).label,
            date_of_day(row.open_day),
            date_of_day(row.maturity_day),
            now,
            at_maturity,
            not row.flags & FD_PARTIAL_DONE and today < row.maturity_day,
        )

    # --- opening ----------------------------------------------------------------------

    async def open(self, command: OpenFixedDeposit) -> FixedDepositOpened:
        """Open a fixed deposit (see the module docstring); once durable, its view.

        Refusals: CUSTOMER_NOT_FOUND; DEPOSIT_TERM_UNKNOWN; DEPOSIT_BELOW_MINIMUM;
        CUSTOMER_ACCOUNT_NOT_FOUND, ACCOUNT_NOT_CUSTOMERS or ACCOUNT_CLASS_NOT_ALLOWED for
        the source or payout account; the holder's consent (password, token); the
        ledger's refusal of the debit (funds, caps: TRANSFER_REFUSED, the deposit account
        then closed again); IDEMPOTENCY_KEY_REUSED for a key used with other fields.
        """
        catalog = self.catalog
        caller = command.caller
        customer = self.customers.customer_of(command.customer_id)
        term = _term(command.term)
        _check_minimum(catalog, command.amount_minor, "/amount_minor")
        source = self._payment_account(customer.customer_id, command.source_account_id, "source")
        payout = command.payout_account_id or source
        self._payment_account(customer.customer_id, payout, "payout")
        await self.auth.authorize_debit(caller, source, command.consent)
        fingerprint = self.ids.fingerprint(
            "fixed_deposit", customer.customer_id, str(source), str(command.amount_minor),
            term.value, str(payout), "rollover" if command.rollover else "",
        )  # fmt: skip
        digest = operation_key_digest(command.key)
        async with self._one_at_a_time(caller.name, digest):
            state_key = opening_key(caller.name, digest)
            first = self.core.customer_state().openings.get(state_key)
            if first is not None:
                if first.fingerprint != fingerprint:
                    raise refused(
                        Code.IDEMPOTENCY_KEY_REUSED, "a fixed-deposit opening with other fields"
                    )
                account_id = first.account_id
            else:
                account_id = self._new_account_number()
            flags = TransferFlags.STRONG_AUTH if command.consent.second_factor else 0
            record = self.ids.packed(caller.ledger_id, command.key, 0) + pack_transfer_after_id(
                source, account_id, command.amount_minor, TransferCode.FIXED_DEPOSIT, 0, 0,
                LEDGER_CNY, flags, caller.ledger_id, fingerprint,
            )  # fmt: skip
            # Everything that can refuse before the ledger does, before an account exists.
            today = self.core.today()
            rate = _fixed_rate(catalog, term, today)
            for check in self.payments.checks:  # the per-posting checks every posting passes
                check(caller, record, 1)
            if first is None:
                meta = AccountMeta(
                    account_id, customer.customer_id, FIXED_DEPOSIT_CLASS, None,
                    self.core.now_ns(),
                )  # fmt: skip
                await self._create_deposit_account(meta, caller.name, digest, fingerprint)
            opening = _Opening(term, rate, today, payout, record)
            return await self._post_opening(command, account_id, opening)

    async def _post_opening(
        self, command: OpenFixedDeposit, account_id: int, opening: _Opening
    ) -> FixedDepositOpened:
        record, payout, today, rate = opening.record, opening.payout, opening.today, opening.rate
        term = opening.term
        transfer_id = int.from_bytes(record[:16], "little")
        first = await self.core.read(
            lambda ledger: (ledger.lookup_transfer(transfer_id), ledger.deposit_row(account_id))
        )
        if first[0] is not None or (first[1] is not None and fixed_row_view(first[1]).flags):
            return await self._opening_replayed(account_id, transfer_id, first[0], record)
        months = term.months
        flags = FD_OPEN | (FD_ROLLOVER if command.rollover else 0)
        product = fixed_deposit_product(self.core.rules)
        day_count = int(self.catalog.fixed_day_count)

        def make(ledger: Any) -> tuple[EntryKind, int, bytes, int] | None:
            if ledger.lookup_transfer(transfer_id) is not None:
                return None  # met meanwhile (a retry that did not wait): answered below
            payout_slot = ledger.account_slot(payout)
            assert payout_slot >= 0, payout
            row = pack_fixed_row(
                principal=command.amount_minor, rate=rate, open_day=today,
                maturity_day=add_months(today, months), term_months=months,
                day_count=day_count, flags=flags, payout_slot=payout_slot, product=product,
            )  # fmt: skip
            rows = pack_deposit_write(account_id, 0, row)
            return EntryKind.POST_WITH_ROWS, 1, pack_post_with_rows_payload(record, rows), 1

        outcome = await self._submit(make)
        if outcome is None:
            raw = await self.core.read(lambda ledger: ledger.lookup_transfer(transfer_id))
            return await self._opening_replayed(account_id, transfer_id, raw, record)
        status = int(outcome[0][0])
        self.payments.count_result(R(status).name.lower())
        if status not in (R.OK, R.EXISTS):
            await self._close_account(account_id)
            raise transfer_refused(status)
        deposit = await self.deposit_after_change(account_id)
        logger.info(
            orjson.dumps(
                {
                    "event": "fixed_deposit_opened",
                    "account_id": str(account_id),
                    "customer_id": command.customer_id,
                    "principal_minor": command.amount_minor,
                    "term": term.value,
                    "rate": deposit.rate,
                    "channel": command.caller.name,
                }
            ).decode()
        )
        return FixedDepositOpened(deposit, f"{transfer_id:032x}", status == R.EXISTS)

    async def _opening_replayed(
        self, account_id: int, transfer_id: int, raw: bytes | None, record: bytes
    ) -> FixedDepositOpened:
        """The answer to a retry of an opening whose transfer the ledger holds (or whose
        row is written, the transfer since evicted): the first answer, or its failure."""
        if raw is not None:
            first = transfer_view(raw)
            differs = _first_difference(transfer_view(record), first)
            if differs is not None:
                raise transfer_refused(differs, "the operation key names another instruction")
            if first.result != R.OK:
                raise transfer_refused(
                    first.result, "replayed: the first request with this key failed",
                    replayed=True,
                )  # fmt: skip
        deposit = await self.deposit_after_change(account_id)
        return FixedDepositOpened(deposit, f"{transfer_id:032x}", True)

    async def _create_deposit_account(
        self, meta: AccountMeta, channel: str, digest: str, fingerprint: int
    ) -> None:
        """Record and create the customer's fixed-deposit account (the key recorded with it,
        in the same durable commit). A crash before the ledger holds it is completed at
        the next start (`Accounts.complete_openings`)."""
        state = self.core.customer_state()
        account_id = meta.account_id
        keyed = opening_key(channel, digest)
        await state.commit(
            [meta_record(meta), opening_record(channel, digest, Opening(account_id, fingerprint))]
        )
        try:
            code = await self.accounts.create_in_ledger(meta)
        except Refused:
            meta.closed = True  # as an account opening: the key forgotten, retry anew
            state.stage([meta_record(meta)])
            state.stage_deletions([keyed])
            raise
        if code not in (CreateAccountResult.OK, CreateAccountResult.EXISTS):
            meta.closed = True
            await state.commit([meta_record(meta)], deleted=[keyed])
            raise Refused(Refusal(Code.ACCOUNT_CREATE_REFUSED, ledger_code=code))

    async def _close_account(self, account_id: int) -> None:
        """A deposit account that holds nothing any more (its funding refused, or paid out
        in full): closed, in the ledger and in the customer's list. Its row says what
        happened; a retry of its key is answered from the transfers, not posted again."""
        state = self.core.customer_state()
        meta = state.accounts[account_id]
        try:
            await self.accounts._update_flags(account_id, 0, 0, status=AccountStatus.CLOSED)
        except Refused as error:  # still open in the ledger: empty, and no row
            logger.warning(
                orjson.dumps(
                    {
                        "event": "fixed_deposit_close_failed",
                        "account_id": str(account_id),
                        "refusal": error.refusal.code.name.lower(),
                    }
                ).decode()
            )
            return
        meta.closed = True
        await state.commit([meta_record(meta)])

    def _new_account_number(self) -> int:
        state = self.core.customer_state()
        while True:
            partial = FIXED_DEPOSIT_BIN + f"{secrets.randbelow(10**12):012d}"
            number = int(partial + identity.luhn_check_digit(partial))
            if number not in state.accounts:
                return number

    def _payment_account(self, customer_id: str, account_id: int, role: str) -> int:
        """`account_id` if it is an open Class I or II account of `customer_id`."""
        pointer = f"/{role}_account_id"
        meta = self.core.customer_state().accounts.get(account_id)
        if meta is None or meta.closed:
            raise refused(Code.CUSTOMER_ACCOUNT_NOT_FOUND, str(account_id), pointer=pointer)
        if meta.customer_id != customer_id:
            raise refused(
                Code.ACCOUNT_NOT_CUSTOMERS,
                f"the {role} account is not this customer's",
                pointer=pointer,
            )
        if meta.account_class not in PAYMENT_CLASSES:
            raise refused(
                Code.ACCOUNT_CLASS_NOT_ALLOWED,
                f"the {role} account must be a Class I or Class II account",
                pointer=pointer,
                classes=PAYMENT_CLASS_NAMES,
            )
        return account_id

    # --- early withdrawal -------------------------------------------------------------

    async def withdraw(self, command: WithdrawFixedDeposit) -> FixedDepositWithdrawn:
        """Withdraw fixed deposit `account_id` early, fully or (once) partly.

        Refusals: FIXED_DEPOSIT_NOT_FOUND; the payout account holder's consent;
        DEPOSIT_CLOSED, DEPOSIT_MATURED, DEPOSIT_AMOUNT_EXCEEDS_PRINCIPAL,
        DEPOSIT_PARTIAL_ALREADY_TAKEN, DEPOSIT_BELOW_MINIMUM (what a partial would
        leave); the key used for another instruction (TRANSFER_REFUSED with an
        EXISTS_WITH_DIFFERENT_* code). Nothing moves on a refusal.
        """
        caller, account_id = command.caller, command.account_id
        self._deposit_meta(account_id)
        shown = await self._shown(account_id)
        payout = shown.payout_account_id
        await self.auth.authorize_debit(caller, payout, command.consent)
        requested = command.amount_minor
        fingerprint = self.ids.fingerprint(
            "fixed_deposit_withdrawal",
            str(account_id),
            "all" if requested is None else str(requested),
        )
        items = (*FULL_ITEMS, *PARTIAL_ITEMS)
        ids = [self.ids.id(caller.ledger_id, command.key, item) for item in items]
        async with self._one_at_a_time(caller.name, operation_key_digest(command.key)):
            first = await self._withdrawal_met(command, ids, fingerprint)
            if first is not None:
                return first
            return await self._post_withdrawal(command, ids, fingerprint, payout)

    async def _post_withdrawal(
        self, command: WithdrawFixedDeposit, ids: list[int], fingerprint: int, payout: int
    ) -> FixedDepositWithdrawn:
        caller, account_id = command.caller, command.account_id
        requested = command.amount_minor
        today = self.core.today()
        catalog = self.catalog
        demand = catalog.demand_rate(today)
        minimum = catalog.minimum_fixed_minor
        checks = self.payments.checks
        taken: list[tuple[str, int, int]] = []  # (kind, principal, interest) of the entry

        def make(ledger: Any) -> tuple[EntryKind, int, bytes, int] | None:
            if any(ledger.lookup_transfer(i) is not None for i in ids):
                return None  # met meanwhile: answered as a retry
            raw_row = ledger.deposit_row(account_id)
            assert raw_row is not None, account_id
            row = fixed_row_view(raw_row)
            kind, amount = _withdrawal_of(row, requested, today, minimum, account_id)
            interest = early_interest(row, amount, demand, today)
            first_item = FULL_ITEMS[0] if kind == "full" else PARTIAL_ITEMS[0]
            transfers = self._payout_transfers(
                command, first_item, payout, amount, interest, fingerprint
            )
            count = len(transfers) // TRANSFER_SIZE
            for check in checks:
                check(caller, transfers, count)
            rows = pack_deposit_write(account_id, 0, _row_after(row, kind, amount))
            taken.append((kind, amount, interest))
            payload = pack_post_with_rows_payload(transfers, rows)
            return EntryKind.POST_WITH_ROWS, count, payload, count

        outcome = await self._submit(make)
        if outcome is None:
            met = await self._withdrawal_met(command, ids, fingerprint)
            assert met is not None
            return met
        (kind, amount, interest) = taken[0]
        codes = outcome[0]
        status = int(codes[0])
        for code in codes:
            self.payments.count_result(R(int(code)).name.lower())
        if status != R.OK:
            raise transfer_refused(status if status != R.LINKED_EVENT_FAILED else int(codes[-1]))
        if kind == "full":
            await self._close_account(account_id)
        deposit = await self.deposit_after_change(account_id)
        first_item = FULL_ITEMS[0] if kind == "full" else PARTIAL_ITEMS[0]
        transfer_ids = [f"{ids[first_item]:032x}"] + (
            [f"{ids[first_item + 1]:032x}"] if interest > 0 else []
        )
        logger.info(
            orjson.dumps(
                {
                    "event": "fixed_deposit_withdrawn",
                    "account_id": str(account_id),
                    "kind": kind,
                    "principal_minor": amount,
                    "interest_minor": interest,
                    "channel": caller.name,
                }
            ).decode()
        )
        return FixedDepositWithdrawn(
            str(account_id), kind, amount, interest, amount + interest, str(payout),
            transfer_ids, deposit, False,
        )  # fmt: skip

    def _payout_transfers(
        self,
        command: WithdrawFixedDeposit,
        first_item: int,
        payout: int,
        amount: int,
        interest: int,
        fingerprint: int,
    ) -> bytes:
        """A withdrawal's transfers, items `first_item` (the principal back to the payout
        account) and `first_item + 1` (its interest from the interest-expense account,
        when any), LINKED: both post or neither. At the bank's own channel: the bank
        pays back a deposit (module docstring)."""
        key, channel = command.key, command.caller.ledger_id
        link = TransferFlags.LINKED if interest > 0 else 0
        transfers = self.ids.packed(channel, key, first_item) + pack_transfer_after_id(
            command.account_id, payout, amount, TransferCode.FIXED_DEPOSIT, 0, 0, LEDGER_CNY,
            link, BANK_CHANNEL, fingerprint,
        )  # fmt: skip
        if interest > 0:
            transfers += self.ids.packed(channel, key, first_item + 1) + pack_transfer_after_id(
                INTEREST_EXPENSE_ID, payout, interest, TransferCode.INTEREST, 0, 0, LEDGER_CNY,
                0, BANK_CHANNEL, fingerprint,
            )  # fmt: skip
        return transfers

    async def _withdrawal_met(
        self, command: WithdrawFixedDeposit, ids: list[int], fingerprint: int
    ) -> FixedDepositWithdrawn | None:
        """The first answer to this operation key, if the ledger holds its transfers: None
        when it does not; a conflict when the key names another instruction."""
        records = await self.core.read(lambda ledger: [ledger.lookup_transfer(i) for i in ids])
        for kind, items in (("full", FULL_ITEMS), ("partial", PARTIAL_ITEMS)):
            raw = records[items[0]]
            if raw is None:
                continue
            first = transfer_view(raw)
            if first.debit_account_id != command.account_id:
                raise transfer_refused(R.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID)
            if first.code != TransferCode.FIXED_DEPOSIT:
                raise transfer_refused(R.EXISTS_WITH_DIFFERENT_CODE)
            if first.user_data != fingerprint:
                raise transfer_refused(
                    R.EXISTS_WITH_DIFFERENT_USER_DATA, "the operation key names another withdrawal"
                )
            if first.result != R.OK:
                raise transfer_refused(first.result, "replayed", replayed=True)
            interest_raw = records[items[1]]
            interest = transfer_view(interest_raw).amount if interest_raw is not None else 0
            deposit = await self.deposit_after_change(command.account_id)
            transfer_ids = [f"{ids[items[0]]:032x}"] + (
                [f"{ids[items[1]]:032x}"] if interest_raw is not None else []
            )
            return FixedDepositWithdrawn(
                str(command.account_id), kind, first.amount, interest, first.amount + interest,
                str(first.credit_account_id), transfer_ids, deposit, True,
            )  # fmt: skip
        # The key may name a posting of another kind (a transfer): its item 0 is ids[0].
        return None

    # --- reads ------------------------------------------------------------------------

    async def deposit(
        self, caller: Caller, account_id: int, proof: Proof = NO_PROOF
    ) -> FixedDepositRead:
        """Fixed deposit `account_id` (scoped like reading the account)."""
        self.auth.readable_account(caller, account_id, proof)
        return await self.deposit_after_change(account_id)

    async def deposit_after_change(self, account_id: int) -> FixedDepositRead:
        """The deposit's view, unscoped: right after a change its caller was authorized
        for (an opening, a withdrawal)."""
        meta = self._deposit_meta(account_id)
        shown = await self._shown(account_id)
        row = shown.row
        return FixedDepositRead(
            str(account_id),
            meta.customer_id,
            "open" if row.is_open else "closed",
            row.principal,
            shown.balance_minor,
            _term_of_months(row.term_months),
            format_rate(row.rate),
            row.rate,
            DayCount(row.day_count).label,
            date_of_day(row.open_day),
            date_of_day(row.maturity_day),
            bool(row.flags & FD_ROLLOVER),
            bool(row.flags & FD_PARTIAL_DONE),
            str(shown.payout_account_id),
            term_interest(row.principal, row.rate, row.term_months) if row.is_open else 0,
            date_of_day(self.core.today()),
        )

    def _deposit_meta(self, account_id: int) -> AccountMeta:
        meta = self.core.customer_state().accounts.get(account_id)
        if meta is None or meta.account_class != FIXED_DEPOSIT_CLASS:
            raise refused(Code.FIXED_DEPOSIT_NOT_FOUND, str(account_id))
        return meta

    async def _shown(self, account_id: int) -> _Shown:
        def read(ledger: Any) -> tuple[bytes, bytes, int] | None:
            raw = ledger.lookup_account(account_id)
            row = ledger.deposit_row(account_id)
            if raw is None or row is None:
                return None
            view = fixed_row_view(row)
            if not view.flags & FD_OPEN:
                return None
            return raw, row, ledger.account_id_at(view.payout_slot)

        found = await self.core.read(read)
        if found is None:
            raise refused(Code.FIXED_DEPOSIT_NOT_FOUND, str(account_id))
        raw, row, payout = found
        account = account_view(raw)
        return _Shown(
            fixed_row_view(row),
            account.credits_posted - account.debits_posted,
            account.status,
            payout,
        )

    async def interest(
        self, caller: Caller, account_id: int, proof: Proof = NO_PROOF
    ) -> InterestHistory:
        """Account `account_id`'s interest: the settled postings in the transfer log and
        what has accrued to date (scoped like reading the account's history)."""
        self.auth.readable_account(caller, account_id, proof)

        def read(ledger: Any) -> Any:
            raw = ledger.lookup_account(account_id)
            if raw is None:
                return None
            history = ledger.account_history(account_id, -1, INTEREST_HISTORY_LIMIT)
            return raw, ledger.deposit_row(account_id), ledger.accrued_day, history

        found = await self.core.read(read)
        if found is None:
            raise refused(Code.ACCOUNT_NOT_FOUND, str(account_id))
        raw, row, accrued_day, history = found
        account = account_view(raw)
        items = [
            posting
            for _, record in history
            if (posting := _interest_posting(account_id, record)) is not None
        ]
        demand = account.kind in DEMAND_KINDS and row is not None
        view = demand_row_view(row) if demand else None
        catalog = self.catalog
        today = self.core.today()
        earns = demand and _earns_demand(self.core.rules, catalog, account.product)
        rate = catalog.demand_rate(today) if earns else 0
        return InterestHistory(
            str(account_id),
            format_rate(rate) if earns else None,
            rate,
            items,
            fen_of_units(view.accrued_units) if view is not None else 0,
            date_of_day(accrued_day) if accrued_day and view is not None else None,
            (view.period_settled or None) if view is not None else None,
            view.interest_paid_total if view is not None else 0,
        )

    # --- backdated correction ---------------------------------------------------------

    async def correct_interest(self, command: CorrectInterest) -> Posted:
        """Post the interest correction `command` describes (module docstring); the
        bank's internal channel only.

        Refusals: CHANNEL_KIND_NOT_ALLOWED; CUSTOMER_ACCOUNT_NOT_FOUND;
        ACCOUNT_CLASS_NOT_ALLOWED (not a demand account); INVALID_FIELD (an empty
        span, one that crosses a settlement period or is not yet settled, a
        correction that rounds to nothing); the ledger's refusal (e.g. the period's
        settlement no longer in the log: REVERSAL_TARGET_NOT_FOUND).
        """
        caller = command.caller
        if caller.kind != INTERNAL_KIND:
            raise kind_refused(caller, INTERNAL_ONLY, "An interest correction")
        account_id = command.account_id
        meta = self.core.customer_state().accounts.get(account_id)
        if meta is None:
            raise refused(Code.CUSTOMER_ACCOUNT_NOT_FOUND, str(account_id))
        if meta.account_class not in DEMAND_KINDS:
            raise refused(
                Code.ACCOUNT_CLASS_NOT_ALLOWED,
                "only a demand account's interest is corrected",
                pointer="/account_id",
                classes=("class_i", "class_ii", "class_iii"),
            )
        start, end = command.start_day, command.end_day
        period = _settled_period_of(start, end, self.core.today())
        amount = correction_interest(self.catalog, command.balance_delta_minor, start, end)
        if amount == 0:
            raise refused(
                Code.INVALID_FIELD,
                "the correction rounds to 0 fen: nothing to post",
                pointer="/balance_delta_minor",
            )
        user_data = (CORRECTION_TAG << 32) | period
        if amount > 0:
            posting = Posting(
                caller, command.key, "interest_correction", INTEREST_EXPENSE_ID, account_id,
                amount, TransferCode.INTEREST, user_data=user_data,
            )  # fmt: skip
        else:
            posting = Posting(
                caller, command.key, "interest_correction", account_id, INTEREST_EXPENSE_ID,
                -amount, TransferCode.REVERSAL,
                pending_id=interest_transfer_id(account_id, period, 0), user_data=user_data,
            )  # fmt: skip
        posted = await self.payments.post(posting)
        logger.info(
            orjson.dumps(
                {
                    "event": "interest_corrected",
                    "account_id": str(account_id),
                    "period": period,
                    "amount_minor": amount,
                    "reason": command.reason,
                    "replayed": posted.replayed,
                }
            ).decode()
        )
        return posted

    # --- plumbing ---------------------------------------------------------------------

    async def _submit(self, make: Callable[[Any], Any]) -> Any:
        """One generated entry through the engine (a full queue waited out, bounded, like
        the customer operations: nothing was queued when it is refused; the engine's
        other refusals become `Refused`); `make`'s own refusal is raised here."""
        engine = self.core.running_engine()
        return await self.core.call_engine_patiently(engine.submit_generated, make)

    def _one_at_a_time(self, channel: str, digest: str) -> OneAtATime:
        return OneAtATime(self._in_flight, (channel, digest))


# --- the arithmetic and the rules, as functions -----------------------------------------


def early_interest(row: FixedRow, principal: int, demand_rate: int, day: int) -> int:
    """The interest on `principal` of deposit `row` withdrawn on `day` before maturity:
    `demand_rate` (the demand rate of that day) from the opening day (counted) to `day`
    (not), under the row's day count, one rounding, never more than holding to maturity
    (`ledger.interest.early_withdrawal_interest`). 50,000 CNY after 100 days at 0.05% on
    a 360-day year: 694 fen."""
    return early_withdrawal_interest(
        principal, open_day=row.open_day, withdrawal_day=day, demand_rate=demand_rate,
        day_count=DayCount(row.day_count), fixed_rate=row.rate, term_months=row.term_months,
    )  # fmt: skip


def correction_interest(catalog: DepositCatalog, delta_minor: int, start: int, end: int) -> int:
    """The interest on a balance difference `delta_minor` over days `start` .. `end - 1`, at
    each day's demand rate and day weight, summed exactly in accrual units and rounded
    half up (away from zero) once: what the accrual would have added or not."""
    day_count = DayCount(catalog.demand_day_count)
    units = 0
    for day in range(start, end):
        units += delta_minor * catalog.demand_rate(day) * day_weight(day_count, day)
    return fen_of_units(units)


def _settled_period_of(start: int, end: int, today: int) -> int:
    """The settlement period the days `start` .. `end - 1` lie in, if it is over; a
    refusal (INVALID_FIELD) for an empty span, one crossing a period's end, or a period
    not yet settled (its accrual follows the balance by itself)."""
    if not 0 < start < end:
        raise refused(Code.INVALID_FIELD, "the span must end after it starts", pointer="/to")
    period = settlement_period(start)
    if settlement_period(end - 1) != period:
        raise refused(
            Code.INVALID_FIELD,
            f"the span crosses the end of settlement period {period} "
            f"({date_of_day(period_end_day(period))}): correct each period apart",
            pointer="/to",
        )
    if period_end_day(period) >= today:
        raise refused(
            Code.INVALID_FIELD,
            "only a settled period is corrected (the accrual of the current one follows "
            "the balance by itself)",
            pointer="/from",
        )
    return period


def _withdrawal_of(
    row: FixedRow, requested: int | None, today: int, minimum: int, account_id: int
) -> tuple[str, int]:
    """("full" | "partial", principal withdrawn) of a withdrawal request, or the refusal,
    in this order: closed, matured, larger than the deposit, second partial, a partial
    leaving less than the minimum."""
    if not row.is_open:
        raise refused(Code.DEPOSIT_CLOSED, str(account_id))
    if today >= row.maturity_day:
        raise refused(
            Code.DEPOSIT_MATURED,
            "the day-end pays a matured deposit to its payout account",
            maturity_date=date_of_day(row.maturity_day),
        )
    if requested is None or requested == row.principal:
        return "full", row.principal
    if requested > row.principal:
        raise refused(
            Code.DEPOSIT_AMOUNT_EXCEEDS_PRINCIPAL,
            f"{requested} fen asked, the deposit holds {row.principal}",
            principal_minor=row.principal,
        )
    if row.flags & FD_PARTIAL_DONE:
        raise refused(
            Code.DEPOSIT_PARTIAL_ALREADY_TAKEN,
            "one partial early withdrawal per deposit: withdraw all of it instead",
        )
    if row.principal - requested < minimum:
        raise refused(
            Code.DEPOSIT_BELOW_MINIMUM,
            f"the rest ({row.principal - requested} fen) would be below the minimum",
            minimum_minor=minimum,
        )
    return "partial", requested


def _row_after(row: FixedRow, kind: str, amount: int) -> bytes:
    """The deposit row once `amount` is withdrawn: closed (full), or the smaller principal
    with its one partial withdrawal taken (the rate and maturity kept)."""
    if kind == "full":
        return pack_fixed_row(**row._replace(flags=row.flags | FD_CLOSED)._asdict())
    after = row._replace(principal=row.principal - amount, flags=row.flags | FD_PARTIAL_DONE)
    return pack_fixed_row(**after._asdict())


def _term(text: str) -> Term:
    try:
        return Term(text)
    except ValueError:
        raise refused(
            Code.DEPOSIT_TERM_UNKNOWN,
            f"{text!r} is not a term of the catalog",
            terms=[term.value for term in Term],
        ) from None


def _term_of_months(months: int) -> str:
    return Term.of_months(months).value


def _fixed_rate(catalog: DepositCatalog, term: Term, day: int) -> int:
    try:
        return catalog.fixed_rate(term, day)
    except (KeyError, LookupError):
        raise refused(
            Code.DEPOSIT_TERM_UNKNOWN,
            f"no rate for {term.value} on {date_of_day(day)}",
            terms=[term.value for term in Term],
        ) from None


def _check_minimum(catalog: DepositCatalog, amount_minor: int, pointer: str) -> None:
    minimum = catalog.minimum_fixed_minor
    if amount_minor < minimum:
        raise refused(
            Code.DEPOSIT_BELOW_MINIMUM,
            f"{amount_minor} fen is below the minimum of {minimum}",
            minimum_minor=minimum,
            pointer=pointer,
        )


def _earns_demand(rules: Any, catalog: DepositCatalog, product_id: int) -> bool:
    """Whether accounts of `product_id` earn the demand rate (the catalog names kinds)."""
    product = rules.products.get(product_id)
    return product is not None and product.kind in catalog.demand_kinds


def _interest_posting(account_id: int, raw: bytes) -> InterestPosting | None:
    """One interest posting of the account from a history record, or None."""
    t = transfer_view(raw)
    if t.result != R.OK:
        return None
    if t.code == TransferCode.INTEREST and t.credit_account_id == account_id:
        if is_interest_transfer_id(t.id):
            kind, period, amount = "settlement", (t.id >> 64) & 0xFFFFFFFF, t.amount
        elif t.user_data >> 32 == CORRECTION_TAG:
            kind, period, amount = "correction", t.user_data & 0xFFFFFFFF, t.amount
        else:
            kind, period, amount = "deposit_interest", None, t.amount
    elif (
        t.code == TransferCode.REVERSAL
        and t.debit_account_id == account_id
        and t.credit_account_id == INTEREST_EXPENSE_ID
    ):
        kind, amount = "correction", -t.amount
        period = t.user_data & 0xFFFFFFFF if t.user_data >> 32 == CORRECTION_TAG else None
    else:
        return None
    return InterestPosting(
        f"{t.id:032x}", kind, amount, period, t.timestamp, date_of_day(t.business_day)
    )


def _first_difference(retry: Any, first: Any) -> int | None:
    """The ledger's EXISTS_WITH_DIFFERENT_* code for the first field in which a retry
    differs from the transfer its key names (the kernel's order); None if none."""
    for field, code in (
        ("flags", R.EXISTS_WITH_DIFFERENT_FLAGS),
        ("debit_account_id", R.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID),
        ("credit_account_id", R.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID),
        ("amount", R.EXISTS_WITH_DIFFERENT_AMOUNT),
        ("code", R.EXISTS_WITH_DIFFERENT_CODE),
        ("user_data", R.EXISTS_WITH_DIFFERENT_USER_DATA),
    ):
        if getattr(retry, field) != getattr(first, field):
            return int(code)
    return None
