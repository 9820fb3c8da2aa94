"""Customers: real-name registration with KYC, and the customer read model."""

from __future__ import annotations

import datetime
import logging
import secrets

import orjson

from core.services import identity
from core.services.commands import RegisterCustomer
from core.services.kyc import BuiltinVerifier, Verifier
from core.services.lifecycle import Lifecycle
from core.services.records import NS_PER_S, rfc3339
from core.services.refusals import Code, refused
from core.services.results import CustomerRead
from core.services.state import Customer, customer_record

logger = logging.getLogger("tally.services")

CLASS_NAMES = {1: "class_i", 2: "class_ii", 3: "class_iii"}
CLASS_OF_NAME = {name: number for number, name in CLASS_NAMES.items()}


class Customers:
    def __init__(self, core: Lifecycle, verifier: Verifier | None = None) -> None:
        self.core = core
        self.verifier = verifier or BuiltinVerifier(core.settings.minimum_age)

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
            raise refused(Code.CUSTOMER_EXISTS, customer_id=existing)
        now_ns = self.core.now_ns()
        today = datetime.datetime.fromtimestamp(now_ns / NS_PER_S, self.core.rules.timezone).date()
        verdict = self.verifier.verify_customer(command.name, parsed, command.mobile, today)
        customer = Customer(
            "c" + secrets.token_hex(10),
            command.name,
            parsed.number,
            command.mobile,
            verdict.as_record(),
            now_ns,
        )
        await state.commit([customer_record(customer)])
        logger.info(
            orjson.dumps(
                {
                    "event": "customer_registered",
                    "customer_id": customer.customer_id,
                    "id_number": identity.mask_resident_id(parsed.number),
                    "kyc": verdict.status,
                }
            ).decode()
        )
        return self.view(state.customers[customer.customer_id])

    def read(self, customer_id: str) -> CustomerRead:
        return self.view(self.customer_of(customer_id))

    def view(self, customer: Customer) -> CustomerRead:
        """The customer read model (identity numbers masked)."""
        accounts = self.core.customer_state().accounts
        return CustomerRead(
            customer.customer_id,
            customer.name,
            identity.mask_resident_id(customer.id_number),
            identity.mask_mobile(customer.mobile),
            customer.kyc,
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
