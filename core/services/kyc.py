"""Know-your-customer: the checks of an ID number the bank runs inside its own walls.

The `id_structure` step of real-name verification (core/services/verification.py)
runs these at registration: the check digit and the region code (already refused
by `identity.parse_resident_id` when wrong: the registration is then refused
INVALID_RESIDENT_ID and no customer exists), a birth date not in the future, an
age of at least `Settings.minimum_age` and at most 130. A failure fails the step
for good, and so the customer's verification is `rejected`. Everything that needs
a party outside the bank (the identity database, OCR, liveness, the card issuer,
the SMS gateway) is another step of the workflow, run through the providers.

Earlier versions ran only these checks and called the customer `verified`; a customer
record carrying such a verdict (no workflow steps) is now `pending`
(`core.services.state.kyc_verified`).
"""

from __future__ import annotations

import datetime

from core.services.identity import ResidentId, age_on

AGE_MAX = 130


def id_structure_reasons(
    resident_id: ResidentId, today: datetime.date, minimum_age: int
) -> list[str]:
    """Why the ID number cannot be a customer's today (empty: the step passes)."""
    reasons: list[str] = []
    if resident_id.birth_date > today:
        reasons.append("the birth date in the ID number is in the future")
    age = age_on(resident_id.birth_date, today)
    if age < minimum_age:
        reasons.append(f"the holder is {age}; opening needs {minimum_age} or older")
    if age > AGE_MAX:
        reasons.append(f"the birth date makes the holder {age} years old")
    return reasons
