"""Customers: real-name registration with KYC, and the customer read model.

Registration records the customer with the first steps of real-name verification
(core/services/verification.py) already run: the ID number's structure, and at a
counter the teller's confirmation; then the steps that can run at once run
(`Verification.start`: the identity database at a counter). The customer's `kyc` is
the workflow as the verification service shows it.

Registering an ID number that is already registered is refused without naming
the existing customer (`CUSTOMER_EXISTS` carries no id: a channel that did not
register the customer must not learn their id from the refusal); the customer
proves who they are with a session (`Auth.open_session`), which names them.
"""

from __future__ import annotations

import datetime
import logging
import secrets
from typing import TYPE_CHECKING

import orjson

from core.services import identity
from core.services.auth import Auth
from core.services.commands import NO_PROOF, Caller, Proof, RegisterCustomer
from core.services.lifecycle import Lifecycle
from core.services.records import NS_PER_S, rfc3339
from core.services.refusals import Code, refused
from core.services.results import CustomerRead
from core.services.state import Customer, customer_record

if TYPE_CHECKING:
    from core.services.verification import Verification

logger = logging.getLogger("tally.services")

CLASS_NAMES = {1: "class_i", 2: "class_ii", 3: "class_iii"}
CLASS_OF_NAME = {name: number for number, name in CLASS_NAMES.items()}
# A customer's fixed deposits are accounts too (AccountKind.FIXED_DEPOSIT, opened by
# core/services/deposits.py): listed with the customer's accounts, never opened by class.
CLASS_NAMES[5] = "fixed_deposit"
CLASS_NAMES[6] = "loan"  # and their loans (AccountKind.LOAN, core/services/loan_accounts.py)


class Customers:
    def __init__(self, core: Lifecycle, auth: Auth, verification: Verification) -> None:
        """`verification`: the bank's (`Bank` passes it)."""
        self.core = core
        self.auth = auth
        self.verification = verification

    def customer_of(self, customer_id: str) -> Customer:
        customer = self.core.customer_state().customers.get(customer_id)
        if customer is None:
            raise refused(Code.CUSTOMER_NOT_FOUND, customer_id)
        return customer

    async def register(self, command: RegisterCustomer) -> CustomerRead:
        parsed = identity.parse_resident_id(command.id_number)
        if isinstance(parsed, str):
            raise refused(Code.INVALID_RESIDENT_ID, parsed, pointer="/id_number")
        state = self.core.customer_state()
        existing = state.customer_by_id_number.get(parsed.number)
        if existing is not None:
            logger.info(
                orjson.dumps(
                    {
                        "event": "customer_exists",
                        "customer_id": existing,
                        "id_number": identity.mask_resident_id(parsed.number),
                        "channel": command.caller.name,
                    }
                ).decode()
            )
            raise refused(Code.CUSTOMER_EXISTS)
        now_ns = self.core.now_ns()
        today = datetime.datetime.fromtimestamp(now_ns / NS_PER_S, self.core.rules.timezone).date()
        kyc = self.verification.initial_kyc(command.caller, parsed, today, now_ns)
        customer = Customer(
            "c" + secrets.token_hex(10), command.name, parsed.number, command.mobile, kyc, now_ns
        )
        await state.commit([customer_record(customer)])
        await self.verification.start(state.customers[customer.customer_id], command.caller)
        customer = state.customers[customer.customer_id]
        logger.info(
            orjson.dumps(
                {
                    "event": "customer_registered",
                    "customer_id": customer.customer_id,
                    "id_number": identity.mask_resident_id(parsed.number),
                    "kyc": customer.kyc["status"],
                }
            ).decode()
        )
        return self.view(state.customers[customer.customer_id])

    def read(self, caller: Caller, customer_id: str, proof: Proof = NO_PROOF) -> CustomerRead:
        """The customer, if the caller's read scope and `proof` (a session) cover them."""
        self.auth.readable_customer(caller, customer_id, proof)
        return self.view(self.customer_of(customer_id))

    def view(self, customer: Customer) -> CustomerRead:
        """The customer read model (identity numbers masked)."""
        accounts = self.core.customer_state().accounts
        return CustomerRead(
            customer.customer_id,
            customer.name,
            identity.mask_resident_id(customer.id_number),
            identity.mask_mobile(customer.mobile),
            self.verification.kyc_view(customer.kyc),
            [
                {
                    "account_id": str(account_id),
                    "class": CLASS_NAMES[accounts[account_id].account_class],
                    "closed": accounts[account_id].closed,
                }
                for account_id in customer.accounts
            ],
            rfc3339(customer.created_ns),
        )
