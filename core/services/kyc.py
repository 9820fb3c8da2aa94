"""Know-your-customer: the pluggable verifier and the built-in one.

A verifier decides a customer's KYC status (`verified` or `rejected`; a
verifier that asks a remote service may leave it `pending`) and whether a
card may be bound to an account. The built-in verifier runs every check that
can run inside the bank's own walls and lists, in `not_checked`, the ones
that need a party Tally cannot reach: the Ministry of Public Security's
identity database, the issuing bank's card verification, the SMS code.
It never answers "verified" on checks it did not run.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any, Protocol

from core.services.identity import ResidentId, age_on

NOT_CHECKED_HERE = (
    "identity_database_match",  # MPS citizen database: name + ID number + photo
    "issuer_card_verification",  # issuing bank confirms name, ID, reserved mobile, card type
    "sms_code",  # one-time code to the reserved mobile
)


@dataclass(slots=True)
class Verdict:
    status: str  # "verified" | "rejected" | "pending"
    checks: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    not_checked: list[str] = field(default_factory=list)
    verifier: str = "builtin"

    def as_record(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "checks": self.checks,
            "reasons": self.reasons,
            "not_checked": self.not_checked,
            "verifier": self.verifier,
        }


class Verifier(Protocol):
    name: str

    def verify_customer(
        self, name: str, resident_id: ResidentId, mobile: str, today: datetime.date
    ) -> Verdict: ...


class BuiltinVerifier:
    """The checks that are real and cheap: ID structure and check digit, birth date, age."""

    name = "builtin"

    def __init__(self, minimum_age: int = 16) -> None:
        self.minimum_age = minimum_age

    def verify_customer(
        self, name: str, resident_id: ResidentId, mobile: str, today: datetime.date
    ) -> Verdict:
        checks = ["resident_id_check_digit", "resident_id_region", "resident_id_birth_date"]
        reasons: list[str] = []
        if resident_id.birth_date > today:
            reasons.append("the birth date in the ID number is in the future")
        age = age_on(resident_id.birth_date, today)
        checks.append(f"age_at_least_{self.minimum_age}")
        if age < self.minimum_age:
            reasons.append(
                f"the holder is {age}; remote account opening needs {self.minimum_age} or older"
            )
        if age > 130:
            reasons.append(f"the birth date makes the holder {age} years old")
        checks.append("mobile_number_format")
        return Verdict(
            "rejected" if reasons else "verified",
            checks,
            reasons,
            list(NOT_CHECKED_HERE),
            self.name,
        )
