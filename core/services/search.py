"""The operators' lookups across channels: customers, accounts, transfers.

For the operations console (channels/console/pages_customers.py): a customer by
customer id, resident id, mobile or name; an account by id; a transfer by id, or
by the Idempotency-Key and the channel that sent it (the id is derived from both:
`TransferIds`, so the lookup is the ledger's own index, no scan).

Every lookup is an index hit (the customer state's maps: `customer_by_id_number`,
`customers_by_mobile`, `customers_by_name`, core/services/state.py), never a scan
of the customers, so it costs the same with 30 million of them. A name matches
exactly (words single-spaced, case folded), as a teller types it from an ID card.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from core.services.state import Customer, StateStore, index_get, name_key

RESULTS_MAX: Final = 100  # customers sharing a name or a mobile shown at most
BATCH_ITEMS_MAX: Final = 100  # transfers of one Idempotency-Key looked up at most (a batch)
CUSTOMER_ID_PATTERN: Final = re.compile(r"c[0-9a-f]{20}")
RESIDENT_ID_PATTERN: Final = re.compile(r"[0-9]{17}[0-9Xx]")
MOBILE_PATTERN: Final = re.compile(r"\+?[0-9]{6,15}")
ACCOUNT_ID_PATTERN: Final = re.compile(r"[0-9]{1,39}")
TRANSFER_ID_PATTERN: Final = re.compile(r"[0-9a-fA-F]{32}")


@dataclass(frozen=True, slots=True)
class CustomerMatch:
    customer: Customer
    matched_by: str  # "customer_id" | "resident_id" | "mobile" | "name"


def find_customers(state: StateStore, text: str) -> list[CustomerMatch]:
    """The customers `text` names: a customer id, a resident id, a mobile number, else a
    name; at most `RESULTS_MAX`, in registration order."""
    text = text.strip()
    if not text:
        return []
    if CUSTOMER_ID_PATTERN.fullmatch(text):
        customer = state.customers.get(text)
        return [CustomerMatch(customer, "customer_id")] if customer is not None else []
    if RESIDENT_ID_PATTERN.fullmatch(text):
        customer_id = state.customer_by_id_number.get(text.upper())
        customer = state.customers.get(customer_id) if customer_id is not None else None
        if customer is not None:
            return [CustomerMatch(customer, "resident_id")]
    if MOBILE_PATTERN.fullmatch(text):
        found = _customers(state, index_get(state.customers_by_mobile, text), "mobile")
        if found:
            return found
    return _customers(state, index_get(state.customers_by_name, name_key(text)), "name")


def _customers(state: StateStore, ids: tuple[str, ...], matched_by: str) -> list[CustomerMatch]:
    found = []
    for customer_id in ids[:RESULTS_MAX]:
        customer = state.customers.get(customer_id)
        if customer is not None:
            found.append(CustomerMatch(customer, matched_by))
    found.sort(key=lambda match: (match.customer.created_ns, match.customer.customer_id))
    return found


def parse_account_id(text: str) -> int | None:
    """An account id as typed (decimal), or None."""
    text = text.strip()
    if not ACCOUNT_ID_PATTERN.fullmatch(text):
        return None
    value = int(text)
    return value if 0 < value < 1 << 128 else None


def parse_transfer_id(text: str) -> int | None:
    """A transfer id as every adapter shows it (32 hex digits), or None."""
    text = text.strip()
    if not TRANSFER_ID_PATTERN.fullmatch(text):
        return None
    value = int(text, 16)
    return value or None


def transfer_ids_of_key(ids: Any, channel_ledger_id: int, key: str) -> list[int]:
    """The ids the transfers sent with Idempotency-Key `key` by a channel would have: item
    0 (a single transfer, a payment) and the next items of a batch, in order. The caller
    looks them up and stops at the first that does not exist."""
    return [ids.id(channel_ledger_id, key, index) for index in range(BATCH_ITEMS_MAX)]
