"""The risk stage's binary layouts: the compiled rule program, the per-posting context
and the per-posting verdict, shared by the kernel (`cext/risk.pyx`), its reference twin
(`limits/risk_reference.py`), the rule compiler (`limits/risk.py`) and the service
(`core/services/risk.py`). Nobody else packs or unpacks them by position.

A rule set compiles to at most `RULES_MAX` rows of `RULE` (64 bytes each), evaluated in
order for every posting; each posting comes with one `CONTEXT` row (48 bytes) the
service fills from the command (who the holder is, the device, the IP, the
counterparty, the local time of day, whether a second factor was presented), and the
kernel answers one `VERDICT` row (16 bytes) per posting.

Semantics every evaluator implements (the differential test holds the two to it):

- A rule applies to a posting when the posting's transfer code is in the rule's
  `codes` mask (bit `1 << code`, `ledger.types.TransferCode`), its flags are neither
  POST_PENDING nor VOID_PENDING (captures and voids settle a movement already decided;
  reversals carry code REVERSAL and are screened only if a rule names that code), and
  its amount is >= `amount_min`.
- VELOCITY (scope ACCOUNT: the debit account; CUSTOMER: the context's customer key;
  DEVICE; IP; PAYEE: the credit account): over the sliding window of `window_s`
  seconds (kept as 8 sub-buckets of ceil(window_s / 8) seconds: the window's
  resolution), with the postings counted before this one: fires when `count + 1 >
  count_max` (count_max > 0) or `sum + amount > sum_max` (sum_max > 0). A zero key
  (no device sent, no customer) never fires and is not counted.
- HISTORY (scope ACCOUNT or CUSTOMER): the last `HISTORY_SAMPLES` amounts counted for
  the key within `window_s` (30 days typically); fires when at least `samples_min` are
  there and `amount * 1000 > multiple_permille * median` (the median of an even number
  of samples: the lower middle one).
- NEW_PAYEE: the pair (customer key, counterparty) was never counted, or first counted
  less than `window_s` ago; NEW_DEVICE: the pair (customer key, device) likewise. A
  zero customer, counterparty or device never fires.
- TIME_OF_DAY: the context's local second of day is in [from_s, to_s) (from_s > to_s
  wraps past midnight).
- LIST: the value `match` picks (the debit or the credit account id for ACCOUNT, the
  device, the resident-id key, the counterparty, the IP) is in list `list_id`
  (`set_list`).
- LARGE_VALUE: only the amount (`amount_min`) and the codes: a reporting threshold.

The verdict's outcome is the most severe outcome of the rules that fired (ALLOW <
CHALLENGE < DELAY < REVIEW < BLOCK); `report` is set when a fired rule has `report`.
A CHALLENGE that is the most severe outcome and a context with `second_factor` set
is satisfied: the outcome is ALLOW with `challenge_met` set. Counting: a posting
whose final outcome is not BLOCK and not an unmet CHALLENGE is counted (velocity
buckets, history samples, payee and device pairs) before the next posting is
evaluated, so the postings of one batch see each other in order.
"""

from __future__ import annotations

import enum
import hashlib
import struct

RULES_MAX = 64  # a fired-rules mask is one u64
HISTORY_SAMPLES = 16
VELOCITY_BUCKETS = 8


class RuleType(enum.IntEnum):
    VELOCITY = 1
    HISTORY = 2
    NEW_PAYEE = 3
    NEW_DEVICE = 4
    TIME_OF_DAY = 5
    LIST = 6
    LARGE_VALUE = 7


class Scope(enum.IntEnum):
    """Whose counters a VELOCITY or HISTORY rule keeps (0: the rule has no scope)."""

    NONE = 0
    ACCOUNT = 1  # the debit account id
    CUSTOMER = 2  # the context's customer key (the debit account's holder)
    DEVICE = 3
    IP = 4
    PAYEE = 5  # the credit account id (a mule receiving from many)


class Match(enum.IntEnum):
    """What a LIST rule looks up in its list (0: not a list rule)."""

    NONE = 0
    ACCOUNT = 1  # the debit or the credit account id
    DEVICE = 2
    RESIDENT_ID = 3  # the debit account holder's resident id (`key_of("resident_id", ...)`)
    COUNTERPARTY = 4  # the counterparty key (a beneficiary card, or the credit account)
    IP = 5


class Outcome(enum.IntEnum):
    """In order of severity; never renumbered (decisions are recorded with it)."""

    ALLOW = 0
    CHALLENGE = 1  # step-up: the channel retries with a second factor
    DELAY = 2  # posted as a hold, captured by the bank after the delay
    REVIEW = 3  # posted as a hold, a risk officer releases or returns it
    BLOCK = 4


# type, scope, outcome, report, match, 3 pad | codes u32, window_s u32 | amount_min i64 |
# sum_max i64 | count_max u32, samples_min u32 | multiple_permille u32, list_id u32 |
# from_s u32, to_s u32 | 8 pad
RULE = struct.Struct("<BBBBB3xIIqqIIIIII8x")
assert RULE.size == 64

# customer u64, device u64, ip u64, counterparty u64, resident u64 | local_s u32 |
# second_factor u8, 3 pad
CONTEXT = struct.Struct("<QQQQQIB3x")
assert CONTEXT.size == 48

# outcome u8, report u8, challenge_met u8, 5 pad | fired mask u64
VERDICT = struct.Struct("<BBB5xQ")
assert VERDICT.size == 16


def pack_rule(
    rule_type: RuleType,
    *,
    scope: Scope = Scope.NONE,
    outcome: Outcome,
    report: bool = False,
    match: Match = Match.NONE,
    codes: int,
    window_s: int = 0,
    amount_min: int = 0,
    sum_max: int = 0,
    count_max: int = 0,
    samples_min: int = 0,
    multiple_permille: int = 0,
    list_id: int = 0,
    from_s: int = 0,
    to_s: int = 0,
) -> bytes:
    """One compiled rule row."""
    return RULE.pack(
        rule_type, scope, outcome, int(report), match, codes, window_s, amount_min, sum_max,
        count_max, samples_min, multiple_permille, list_id, from_s, to_s,
    )  # fmt: skip


def pack_context(
    *,
    customer: int = 0,
    device: int = 0,
    ip: int = 0,
    counterparty: int = 0,
    resident: int = 0,
    local_s: int = 0,
    second_factor: bool = False,
) -> bytes:
    return CONTEXT.pack(customer, device, ip, counterparty, resident, local_s, int(second_factor))


def key_of(kind: str, value: str) -> int:
    """The 64-bit key of a string value (a device id, an IP, a resident id, a card
    number, a customer id): BLAKE2b-8 of `kind:value`, never 0. The same in every
    evaluator, the rule compiler (list values) and the service (contexts)."""
    digest = hashlib.blake2b(f"{kind}:{value}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1
