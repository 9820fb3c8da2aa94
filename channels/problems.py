"""RFC 9457 problem details: one stable `type` URI per failure, ledger codes included.

Every refusal the HTTP face gives is a `Problem`: raised anywhere in a
handler, turned into `application/problem+json` by the app. Ledger result
codes map to a status and a type derived from the code's name
(`exceeds_daily_outflow` -> `https://tally.example/problems/exceeds-daily-outflow`),
so a client can switch on the type and never parse the `detail` text.
"""

from __future__ import annotations

from typing import Any

import orjson

from ledger.types import AccountUpdateResult, CreateAccountResult, CreateTransferResult

PROBLEM_BASE = "https://tally.example/problems/"
PROBLEM_CONTENT_TYPE = b"application/problem+json"

R = CreateTransferResult


def problem_type(slug: str) -> str:
    return PROBLEM_BASE + slug


def slug_of(name: str) -> str:
    return name.lower().replace("_", "-")


class Problem(Exception):
    """A refusal: status, stable type slug, human title and detail, optional extras."""

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str = "",
        *,
        headers: list[tuple[bytes, bytes]] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(f"{status} {slug}: {detail or title}")
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.headers = headers or []
        self.extensions = extensions

    def body(self, instance: str = "") -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": problem_type(self.slug),
            "title": self.title,
            "status": self.status,
        }
        if self.detail:
            body["detail"] = self.detail
        if instance:
            body["instance"] = instance
        body.update(self.extensions)
        return body

    def encode(self, instance: str = "") -> bytes:
        return orjson.dumps(self.body(instance))


def invalid(detail: str, pointer: str) -> Problem:
    """A request body or parameter that breaks the schema (422), naming where."""
    return Problem(
        422,
        "validation-failed",
        "The request does not match the schema",
        detail,
        errors=[{"pointer": pointer, "detail": detail}],
    )


# --- ledger result codes -> HTTP ----------------------------------------------

_TRANSFER_NOT_FOUND = {
    R.DEBIT_ACCOUNT_NOT_FOUND,
    R.CREDIT_ACCOUNT_NOT_FOUND,
    R.PENDING_TRANSFER_NOT_FOUND,
    R.REVERSAL_TARGET_NOT_FOUND,
}
_TRANSFER_CONFLICT = {
    R.PENDING_TRANSFER_NOT_PENDING,
    R.PENDING_TRANSFER_ALREADY_POSTED,
    R.PENDING_TRANSFER_ALREADY_VOIDED,
    R.PENDING_TRANSFER_EXPIRED,
    R.REVERSAL_TARGET_NOT_POSTED,
    R.DEBIT_ACCOUNT_FROZEN,
    R.CREDIT_ACCOUNT_FROZEN,
    R.DEBIT_ACCOUNT_CLOSED,
    R.CREDIT_ACCOUNT_CLOSED,
}

_TRANSFER_TITLES = {
    R.EXCEEDS_CREDITS: "Insufficient funds",
    R.EXCEEDS_DAILY_OUTFLOW: "The account's daily outflow quota is used up (PBoC)",
    R.EXCEEDS_YEARLY_OUTFLOW: "The account's yearly outflow quota is used up (PBoC)",
    R.EXCEEDS_DAILY_INFLOW: "The account's daily inflow quota is used up (PBoC)",
    R.EXCEEDS_YEARLY_INFLOW: "The account's yearly inflow quota is used up (PBoC)",
    R.EXCEEDS_BALANCE_CAP: "The account's balance cap would be passed (PBoC Class III)",
    R.EXCEEDS_TRANSFER_CAP: "The amount passes the product's single-transfer cap",
    R.EXCEEDS_CHANNEL_TRANSFER_CAP: "The amount passes this channel's single-transfer cap",
    R.EXCEEDS_CHANNEL_DAILY_CAP: "The amount passes this channel's daily cap for the account",
    R.CASH_NOT_ALLOWED: "Cash is not allowed on this account (PBoC account class rules)",
    R.NON_BOUND_INFLOW_DISABLED: "The account does not accept money from non-bound accounts",
    R.NO_BOUND_ACCOUNT: "The account has no bound card for this movement",
    R.DEBIT_ACCOUNT_NOT_FOUND: "The debit account does not exist",
    R.CREDIT_ACCOUNT_NOT_FOUND: "The credit account does not exist",
    R.EXISTS_WITH_DIFFERENT_AMOUNT: "The Idempotency-Key was used for another amount",
}


def transfer_status(code: int) -> int:
    if code in _TRANSFER_NOT_FOUND:
        return 404
    if code in _TRANSFER_CONFLICT:
        return 409
    return 422


def transfer_problem(code: int, detail: str = "") -> Problem:
    """The problem for a failed transfer, carrying the ledger result code."""
    result = R(code)
    assert result not in (R.OK, R.EXISTS), result
    name = result.name.lower()
    title = _TRANSFER_TITLES.get(result)
    if title is None:
        if name.startswith("exists_with_different_"):
            field = name.removeprefix("exists_with_different_").replace("_", " ")
            title = f"The Idempotency-Key was already used with a different {field}"
        else:
            title = "The ledger refused the transfer: " + name.replace("_", " ")
    return Problem(
        transfer_status(code),
        slug_of(name),
        title,
        detail,
        ledger_result={"code": int(result), "name": name},
    )


def account_update_problem(code: int) -> Problem:
    result = AccountUpdateResult(code)
    assert result != AccountUpdateResult.OK
    name = result.name.lower()
    status = {
        AccountUpdateResult.ACCOUNT_NOT_FOUND: 404,
        AccountUpdateResult.ACCOUNT_CLOSED: 409,
        AccountUpdateResult.BALANCE_NOT_ZERO: 409,
        AccountUpdateResult.PENDING_NOT_ZERO: 409,
    }.get(result, 422)
    return Problem(
        status,
        "account-" + slug_of(name) if not name.startswith("account") else slug_of(name),
        "The ledger refused the account change: " + name.replace("_", " "),
        ledger_result={"code": int(result), "name": name},
    )


def account_create_problem(code: int) -> Problem:
    result = CreateAccountResult(code)
    assert result not in (CreateAccountResult.OK, CreateAccountResult.EXISTS)
    name = result.name.lower()
    status = 409 if name.startswith("exists") else 422
    return Problem(
        status,
        "account-create-" + slug_of(name),
        "The ledger refused to open the account: " + name.replace("_", " "),
        ledger_result={"code": int(result), "name": name},
    )


def all_problem_slugs() -> list[str]:
    """Every ledger-derived slug (documented in the OpenAPI document)."""
    slugs = [slug_of(r.name) for r in R if r not in (R.OK, R.EXISTS)]
    slugs += [account_update_problem(int(u)).slug for u in AccountUpdateResult if u != 0]
    slugs += [
        account_create_problem(int(a)).slug
        for a in CreateAccountResult
        if a not in (CreateAccountResult.OK, CreateAccountResult.EXISTS)
    ]
    return slugs
