"""Real-name checks that are real and cheap: resident ID, bank card, mobile.

- The 18-digit resident identity number (GB 11643-1999): a 6-digit region
  code, an 8-digit birth date, a 3-digit sequence (odd for men), and a check
  character computed with ISO 7064 MOD 11-2 over the first 17 digits.
- Bank card numbers (16 to 19 digits) end in a Luhn check digit.
- Mainland mobile numbers are 11 digits starting 13-19.

Nothing here can tell that a valid number belongs to the person presenting
it: that is the issuing bank's and the police database's job, which Tally
cannot reach. The KYC verifier (`core.services.kyc`) says which checks ran.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass

RESIDENT_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
RESIDENT_ID_CHECK_CHARACTERS = "10X98765432"  # indexed by (weighted sum mod 11)
RESIDENT_ID_PATTERN = re.compile(r"[0-9]{17}[0-9X]")
# First two digits: provinces and the special regions (GB/T 2260), plus 71/81/82/83
# for Taiwan, Hong Kong and Macao residence permits.
PROVINCE_CODES = frozenset(
    {11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46}
    | {50, 51, 52, 53, 54, 61, 62, 63, 64, 65, 71, 81, 82, 83}
)
CARD_NUMBER_PATTERN = re.compile(r"[0-9]{16,19}")
MOBILE_PATTERN = re.compile(r"1[3-9][0-9]{9}")


def resident_id_check_character(first_17_digits: str) -> str:
    """ISO 7064 MOD 11-2 check character of the first 17 digits."""
    assert len(first_17_digits) == 17 and first_17_digits.isdigit(), first_17_digits
    pairs = zip(first_17_digits, RESIDENT_ID_WEIGHTS, strict=True)
    total = sum(int(digit) * weight for digit, weight in pairs)
    return RESIDENT_ID_CHECK_CHARACTERS[total % 11]


@dataclass(frozen=True, slots=True)
class ResidentId:
    number: str
    region_code: str
    birth_date: datetime.date
    sex: str  # "male" | "female"


def parse_resident_id(number: str) -> ResidentId | str:
    """The parsed ID, or the reason it is not a valid 18-digit resident ID number."""
    if not RESIDENT_ID_PATTERN.fullmatch(number):
        return "must be 17 digits followed by a digit or X (18 characters)"
    if int(number[:2]) not in PROVINCE_CODES:
        return f"region code {number[:6]} names no province"
    try:
        birth = datetime.date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return f"birth date {number[6:14]} is not a calendar date"
    if birth.year < 1900:
        return f"birth date {number[6:14]} is before 1900"
    expected = resident_id_check_character(number[:17])
    if number[17] != expected:
        return "check character does not match (ISO 7064 MOD 11-2)"
    sex = "male" if int(number[16]) % 2 == 1 else "female"
    return ResidentId(number, number[:6], birth, sex)


def age_on(birth_date: datetime.date, today: datetime.date) -> int:
    years = today.year - birth_date.year
    if (today.month, today.day) < (birth_date.month, birth_date.day):
        years -= 1
    return years


def luhn_valid(number: str) -> bool:
    if not number.isdigit() or not number:
        return False
    total = 0
    for index, character in enumerate(reversed(number)):
        digit = int(character)
        if index % 2 == 1:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def luhn_check_digit(partial: str) -> str:
    """The digit that makes `partial + digit` Luhn-valid."""
    for digit in "0123456789":
        if luhn_valid(partial + digit):
            return digit
    raise AssertionError("unreachable: one Luhn digit always fits")


def card_number_problem(number: str) -> str | None:
    if not CARD_NUMBER_PATTERN.fullmatch(number):
        return "must be 16 to 19 digits"
    if not luhn_valid(number):
        return "check digit does not match (Luhn)"
    return None


def mask_card(number: str) -> str:
    """First 6 and last 4 digits (PCI DSS display rule); the rest as '*'."""
    if len(number) <= 10:
        return "*" * len(number)
    return number[:6] + "*" * (len(number) - 10) + number[-4:]


def mask_resident_id(number: str) -> str:
    """Region and last digit kept: enough to tell records apart, not to reuse."""
    if len(number) != 18:
        return "*" * len(number)
    return number[:3] + "*" * 14 + number[-1]


def mask_mobile(number: str) -> str:
    if len(number) != 11:
        return "*" * len(number)
    return number[:3] + "****" + number[-4:]
