"""Accounts: opening (PBoC classes, card binding), face to face, inflow, closing.

An opening is recorded in the customer state first and then created in the
ledger; an opening whose ledger half was lost in a crash is completed at the
next start (`complete_openings`).

A Class II/III opening binds a card the customer bound first (a verified, unused card
binding: core/services/verification.py); the binding is marked used in the commit
that records the account.

An opening sent with an Idempotency-Key is recorded with it (`opening/...`,
in the same durable commit as the account): a retry, also after a restart,
is answered with the same account, and the same key with other fields is
refused (IDEMPOTENCY_KEY_REUSED). Concurrent requests with one key wait for
the first.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from typing import TYPE_CHECKING, Any

import anyio
import orjson

from core.services import identity
from core.services.approvals import payload_account_id
from core.services.auth import Auth
from core.services.commands import Caller, ChangeAccount, OpenAccount, VerifyAccount
from core.services.customers import CLASS_NAMES, Customers
from core.services.lifecycle import Lifecycle
from core.services.refusals import Code, Refusal, Refused, kind_refused, refused
from core.services.results import AccountOpened, AccountVerified
from core.services.state import (
    AccountMeta,
    Change,
    Opening,
    kyc_verified,
    opening_key,
    opening_record,
    operation_key_digest,
    password_record,
)
from core.services.state import account_record as meta_record
from ledger.records import account_view, pack_account_input
from ledger.types import AccountFlags, AccountStatus, AccountUpdateResult, CreateAccountResult
from limits.rules import ProductKind, RuleSet

if TYPE_CHECKING:
    from core.services.risk import ApprovalsRegistry
    from core.services.verification import Binding, Verification

logger = logging.getLogger("tally.services")

PRODUCT_OF_CLASS = {1: 1, 2: 2, 3: 3}
FIXED_DEPOSIT_CLASS = 5  # AccountKind.FIXED_DEPOSIT: a customer's fixed deposit (deposits.py)
LOAN_CLASS = 6  # AccountKind.LOAN: a customer's loan (loan_accounts.py); its balance stays 0
# Bank identification numbers of the cards and account numbers this bank issues
# (development values: a real bank uses the BINs assigned to it).
BIN_OF_CLASS = {1: "623501", 2: "623502", 3: "623503"}
ACCOUNTS_PER_CLASS_MAX = {1: 1, 2: 5, 3: 5}
BOUND_CARD_FIELDS = (
    "card_number",
    "card_type",
    "holder_name",
    "holder_id_number",
    "reserved_mobile",
)
FACE_TO_FACE_KINDS = ("counter",)


def face_to_face_only(caller: Caller, what: str) -> None:
    """Refuse unless the caller is a channel where a teller sees the customer."""
    if caller.kind not in FACE_TO_FACE_KINDS:
        raise kind_refused(caller, FACE_TO_FACE_KINDS, what)


class Accounts:
    def __init__(
        self, core: Lifecycle, customers: Customers, auth: Auth, verification: Verification
    ) -> None:
        self.core = core
        self.customers = customers
        self.auth = auth
        self.verification = verification
        # Openings under way by their state key: a retry with the key waits for the first.
        self._openings_in_flight: dict[bytes, anyio.Event] = {}

    def _new_account_number(self, account_class: int) -> int:
        state = self.core.customer_state()
        while True:
            partial = BIN_OF_CLASS[account_class] + f"{secrets.randbelow(10**12):012d}"
            number = int(partial + identity.luhn_check_digit(partial))
            if number not in state.accounts:
                return number

    async def open(self, command: OpenAccount) -> AccountOpened:
        """Open an account; its id once the ledger holds it (the first one's for a retry of
        the Idempotency-Key)."""
        if not command.key:
            return AccountOpened(await self._open(command, None), False)
        caller = command.caller
        digest = operation_key_digest(command.key)
        state_key = opening_key(caller.name, digest)
        card = command.bound_card or {}
        fingerprint = self.core.ids.fingerprint(
            "opening",
            command.customer_id,
            str(command.account_class),
            *(str(card.get(name, "")) for name in BOUND_CARD_FIELDS),
            command.password,
        )
        while (running := self._openings_in_flight.get(state_key)) is not None:
            await running.wait()
        first = self.core.customer_state().openings.get(state_key)
        if first is not None:
            if first.fingerprint != fingerprint:
                raise refused(Code.IDEMPOTENCY_KEY_REUSED, "an account opening with other fields")
            return AccountOpened(first.account_id, True)
        done = self._openings_in_flight[state_key] = anyio.Event()
        try:
            opening = (caller.name, digest, fingerprint)
            return AccountOpened(await self._open(command, opening), False)
        finally:
            del self._openings_in_flight[state_key]
            done.set()

    async def _open(self, command: OpenAccount, opening: tuple[str, str, int] | None) -> int:
        customer = self.customers.customer_of(command.customer_id)
        account_class = command.account_class
        if account_class == 1:
            face_to_face_only(command.caller, "Opening a Class I account (face to face)")
            if command.bound_card is not None:
                raise refused(
                    Code.INVALID_FIELD, "a Class I account binds no card", pointer="/bound_card"
                )
        elif command.bound_card is None:
            raise refused(
                Code.INVALID_FIELD,
                "missing required field (Class II and III bind a card)",
                pointer="/bound_card",
            )
        if not kyc_verified(customer.kyc):
            status = self.verification.kyc_view(customer.kyc)["status"]
            raise refused(Code.KYC_NOT_VERIFIED, f"KYC status is {status}")
        # The password is hashed before the class count is checked: from the count to the
        # staged record below there is no await, so concurrent openings for one customer
        # cannot all pass the PBoC per-class limit.
        hashed = await self.auth.new_password(command.password, customer.id_number, "/password")
        state = self.core.customer_state()
        open_count = sum(
            1
            for a in customer.accounts
            if state.accounts[a].account_class == account_class and not state.accounts[a].closed
        )
        if open_count >= ACCOUNTS_PER_CLASS_MAX[account_class]:
            raise refused(
                Code.ACCOUNT_CLASS_LIMIT,
                f"PBoC allows at most {ACCOUNTS_PER_CLASS_MAX[account_class]}",
                open_count=open_count,
                class_name=CLASS_NAMES[account_class],
            )
        account_id = self._new_account_number(account_class)
        bound = None
        binding: Binding | None = None
        used: list[Change] = []
        if command.bound_card is not None:
            # From the binding's check to its mark in memory nothing awaits: two openings
            # cannot both take one binding.
            card = self.verification.check_card_holder(command.caller, customer, command.bound_card)
            binding = self.verification.binding_for_opening(customer, card)
            bound, change = self.verification.use_binding(binding, account_id)
            used.append(change)
        meta = AccountMeta(
            account_id, customer.customer_id, account_class, bound, self.core.now_ns()
        )
        records = [meta_record(meta), password_record(account_id, hashed)]
        keyed: list[bytes] = []
        if opening is not None:
            channel, digest, fingerprint = opening
            records.append(opening_record(channel, digest, Opening(account_id, fingerprint)))
            keyed.append(opening_key(channel, digest))
        try:
            await state.commit(records, other=used)
        except Refused:
            if binding is not None:
                self.verification.release_binding(binding)
            raise
        try:
            code = await self.create_in_ledger(meta)
        except Refused:
            # The engine refused: the ledger has no such account, so the opening is
            # recorded as closed and does not hold one of the customer's class slots
            # (and its key is forgotten: a retry opens anew; its binding is free
            # again). Staged, not committed: the engine's queue may still be full; a
            # crash before the flush leaves the opening to `complete_openings`.
            meta.closed = True
            state.stage([meta_record(meta)])
            state.stage_deletions(keyed)
            if binding is not None:
                state.stage_change(*self.verification.release_binding(binding))
            raise
        if code not in (CreateAccountResult.OK, CreateAccountResult.EXISTS):
            meta.closed = True
            released = [self.verification.release_binding(binding)] if binding else []
            await state.commit([meta_record(meta)], deleted=keyed, other=released)
            raise Refused(Refusal(Code.ACCOUNT_CREATE_REFUSED, ledger_code=code))
        logger.info(
            orjson.dumps(
                {
                    "event": "account_opened",
                    "account_id": str(account_id),
                    "class": CLASS_NAMES[account_class],
                    "customer_id": customer.customer_id,
                    "bound_card": identity.mask_card(bound["card_number"]) if bound else None,
                }
            ).decode()
        )
        return account_id

    def verify(self, command: VerifyAccount) -> AccountVerified:
        """Whether `command.account_id` is an open customer account held by `command.name`:
        the two booleans a partner bank may learn, nothing else (a closed or bank-internal
        account does not exist for it)."""
        state = self.core.customer_state()
        meta = state.accounts.get(command.account_id)
        if meta is None or meta.closed:
            return AccountVerified(False, False)
        customer = state.customers.get(meta.customer_id)
        return AccountVerified(True, customer is not None and customer.name == command.name)

    async def create_in_ledger(self, meta: AccountMeta) -> int:
        flags = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
        bound_id = 0
        if meta.account_class == FIXED_DEPOSIT_CLASS:
            product = product_of_kind(self.core.rules, ProductKind.FIXED_DEPOSIT)
        elif meta.account_class == LOAN_CLASS:
            product = product_of_kind(self.core.rules, ProductKind.LOAN)
        else:
            product = PRODUCT_OF_CLASS[meta.account_class]
        if meta.account_class == 1:
            flags |= AccountFlags.FACE_TO_FACE_VERIFIED
        elif meta.account_class in (FIXED_DEPOSIT_CLASS, LOAN_CLASS):
            pass  # no card: the deposit or loan row names the accounts it pays and takes
        elif meta.bound is not None and meta.bound["kind"] == "internal":
            bound_id = int(meta.bound["account_id"])
        else:
            flags |= AccountFlags.BOUND_EXTERNAL
        record = pack_account_input(
            id=meta.account_id,
            bound_id=bound_id,
            kind=meta.account_class,
            flags=flags,
            product=product,
            customer=customer_number(meta.customer_id),
        )
        engine = self.core.running_engine()
        results = await self.core.call_engine_patiently(engine.submit_accounts, record)
        return int(results[0])

    async def complete_openings(self) -> None:
        """Create in the ledger any account whose opening was recorded but not posted."""
        metas = [m for m in self.core.customer_state().accounts.values() if not m.closed]
        if not metas:
            return
        ids = [meta.account_id for meta in metas]
        missing = await self.core.read(
            lambda ledger: {i for i in ids if ledger.lookup_account(i) is None}
        )
        for meta in metas:
            if meta.account_id in missing:
                code = await self.create_in_ledger(meta)
                logger.info(
                    orjson.dumps(
                        {
                            "event": "opening_completed",
                            "account_id": str(meta.account_id),
                            "result": code,
                        }
                    ).decode()
                )

    async def _update_flags(
        self, account_id: int, set_flags: int, clear_flags: int = 0, status: int | None = None
    ) -> None:
        raw = await self.core.read(lambda ledger: ledger.lookup_account(account_id))
        if raw is None:
            raise refused(Code.ACCOUNT_NOT_FOUND, str(account_id))
        record = account_view(raw)
        flags = (record.flags | set_flags) & ~clear_flags
        engine = self.core.running_engine()
        code = await self.core.call_engine_patiently(
            engine.update_account, account_id, record.status if status is None else status, flags
        )
        if code != AccountUpdateResult.OK:
            raise Refused(Refusal(Code.ACCOUNT_UPDATE_REFUSED, ledger_code=code))

    def _holder_present(self, command: ChangeAccount) -> AccountMeta:
        meta = self.auth.meta_of(command.account_id)
        customer = self.customers.customer_of(meta.customer_id)
        if command.id_number != customer.id_number:
            raise refused(Code.IDENTITY_MISMATCH)
        return meta

    async def face_to_face(self, command: ChangeAccount) -> None:
        """Record that a teller checked the holder's ID (callers: counters only, as
        `core.services.policy` declares and every adapter checks before calling)."""
        meta = self._holder_present(command)
        flags = AccountFlags.FACE_TO_FACE_VERIFIED
        if meta.account_class == 2:
            flags |= AccountFlags.NON_BOUND_INFLOW_ENABLED  # PBoC: Class II after face to face
        await self._update_flags(command.account_id, flags)

    async def set_non_bound_inflow(self, command: ChangeAccount) -> None:
        account_id = command.account_id
        meta = self.auth.meta_of(account_id)
        assert command.consent is not None
        await self.auth.authorize_debit(command.caller, account_id, command.consent)
        if command.enabled and meta.account_class == 2:
            raw = await self.core.read(lambda ledger: ledger.lookup_account(account_id))
            if raw is None or not account_view(raw).flags & AccountFlags.FACE_TO_FACE_VERIFIED:
                raise refused(Code.FACE_TO_FACE_REQUIRED)
        if meta.account_class == 1:
            raise refused(Code.NOT_APPLICABLE)
        flag = AccountFlags.NON_BOUND_INFLOW_ENABLED
        if command.enabled:
            await self._update_flags(account_id, flag)
        else:
            await self._update_flags(account_id, 0, flag)

    async def close(self, command: ChangeAccount) -> None:
        account_id = command.account_id
        meta = self.auth.meta_of(account_id)
        assert command.consent is not None
        await self.auth.authorize_debit(command.caller, account_id, command.consent)
        self._check_not_bound_to(meta)
        await self._close(meta)

    def _check_not_bound_to(self, meta: AccountMeta) -> None:
        """A Class I account no open account is bound to (CARD_STILL_BOUND)."""
        if meta.account_class != 1:
            return
        for other in self.core.customer_state().accounts.values():
            if (
                not other.closed
                and other.bound is not None
                and other.bound.get("account_id") == str(meta.account_id)
            ):
                raise refused(
                    Code.CARD_STILL_BOUND, f"close or rebind account {other.account_id} first"
                )

    async def _close(self, meta: AccountMeta) -> None:
        state = self.core.customer_state()
        await self._update_flags(meta.account_id, 0, 0, status=AccountStatus.CLOSED)
        meta.closed = True
        await state.commit([meta_record(meta)], deleted=state.token_keys(meta.account_id))

    # --- closing by the bank: maker-checker (core/services/approvals.py) -------------

    def register(self, approvals: ApprovalsRegistry) -> None:
        """The `close_account` operation: a teller asks, a supervisor approves, and the
        bank closes a customer account without the holder's consent (a dormant account,
        an account the holder cannot reach), only when it holds nothing."""
        approvals.register_operation(
            "close_account",
            check=self.close_check,
            execute=self.close_approved,
            object_of=lambda payload: str(payload.get("account_id", "")),
        )

    async def close_check(self, payload: dict[str, Any]) -> None:
        """A customer account, open (else CUSTOMER_ACCOUNT_NOT_FOUND), no
        open account bound to it (CARD_STILL_BOUND), holding nothing: a zero balance and
        no hold either way (ACCOUNT_NOT_EMPTY)."""
        account_id = payload_account_id(payload)
        meta = self.core.customer_state().accounts.get(account_id)
        if meta is None:
            raise refused(Code.CUSTOMER_ACCOUNT_NOT_FOUND, str(account_id))
        if meta.closed:  # as a session is refused on a closed account
            raise refused(Code.CUSTOMER_ACCOUNT_NOT_FOUND, f"{account_id} is closed")
        self._check_not_bound_to(meta)

        def read(ledger: Any) -> Any:
            raw = ledger.lookup_account(account_id)
            return None if raw is None else (raw, ledger.account_pending(account_id))

        found = await self.core.read(read)
        if found is None:
            raise refused(Code.ACCOUNT_NOT_FOUND, str(account_id))
        raw, (debits_pending, credits_pending) = found
        record = account_view(raw)
        balance = record.credits_posted - record.debits_posted
        if balance or debits_pending or credits_pending:
            raise refused(
                Code.ACCOUNT_NOT_EMPTY,
                f"balance {balance} fen, holds {debits_pending} out and {credits_pending} in:"
                " the holder moves the money out first",
            )

    async def close_approved(self, payload: dict[str, Any], checker: Any) -> dict[str, Any]:
        """Close the account of an approved `close_account` request (idempotent: an
        account already closed is left as it is; checked again, since money may have
        arrived between the request and the approval)."""
        account_id = payload_account_id(payload)
        meta = self.auth.meta_of(account_id)
        if not meta.closed:
            await self.close_check(payload)
            await self._close(meta)
        return {"account_id": str(account_id), "closed": True}


def product_of_kind(rules: RuleSet, kind: ProductKind) -> int:
    """The product id accounts of `kind` (fixed deposits, loans) are opened on: the
    lowest-numbered product of that kind in the rules (a rule file without one cannot
    hold such accounts)."""
    ids = [product_id for product_id, product in rules.products.items() if product.kind is kind]
    assert ids, f"the limit rules define no product of kind {kind.value}"
    return min(ids)


def fixed_deposit_product(rules: RuleSet) -> int:
    """The product id fixed-deposit accounts are opened on (`product_of_kind`)."""
    return product_of_kind(rules, ProductKind.FIXED_DEPOSIT)


CUSTOMER_NUMBER_MASK = (1 << 40) - 1  # ledger.types.CUSTOMER_NUMBER_MAX


def customer_number(customer_id: str) -> int:
    """The ledger's number for a customer: stable (a hash of the id), nonzero, < 2**40.

    The kernel keys the customer's daily counters (the cap across channels, the
    strong-authentication total) by it. Two customers share a number with
    probability about n**2 / 2**41 (some hundreds of pairs among 30 million): they
    then share those two totals, which can refuse early but never lets more through.
    """
    digest = hashlib.blake2b(b"tally-customer\0" + customer_id.encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "little") & CUSTOMER_NUMBER_MASK) or 1
