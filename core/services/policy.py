"""Channel policy, declared once per operation and protocol-neutral.

Each business operation a channel can ask for is declared here exactly once:
which channel kinds may call it, whether the account holder must consent
(the transaction password or a token from it), and whether it moves money
(and so needs an operation key: HTTP's Idempotency-Key, ISO 8583's STAN +
RRN). Every adapter names its operations by these names and calls `admit`
before the service, so a kind restriction added here holds on every wire;
the HTTP adapter generates its OpenAPI document (`x-tally-channel-kinds`,
`x-tally-consent`, the 403/401 answers) from the same declaration.

Which channels may use an operation at all is the channel registry's
(`channels/registry.py`, per channel); this module says which *kinds* of
channel the bank offers the operation at (cash only at counters and ATMs).
Rules that depend on the command's fields (a Class I opening only face to
face) stay with the service that knows the fields.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.services.commands import Caller
from core.services.refusals import kind_refused

COUNTER_ONLY = ("counter",)
CASH_KINDS = ("counter", "atm")
INTERNAL_KIND = "internal"  # the bank's own back office: the one kind trusted with the ledger
INTERNAL_ONLY = (INTERNAL_KIND,)


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation's channel policy."""

    name: str
    kinds: tuple[str, ...] = ()  # channel kinds that may call it (empty: any kind)
    kinds_what: str = ""  # what a refused channel is told it cannot do ("Cash")
    consent: bool = False  # the holder consents: transaction password or token
    money: bool = False  # moves money: an operation key (Idempotency-Key) is required

    def __post_init__(self) -> None:
        assert bool(self.kinds) == bool(self.kinds_what), self.name


def _declare(*operations: Operation) -> dict[str, Operation]:
    declared = {operation.name: operation for operation in operations}
    assert len(declared) == len(operations), "an operation declared twice"
    return declared


OPERATIONS: dict[str, Operation] = _declare(
    Operation("register_customer"),
    Operation("read_customer"),
    Operation("open_account"),
    Operation("read_account"),
    Operation("read_history"),
    Operation("read_transfer"),
    Operation("set_password"),
    Operation(
        "reset_password",
        kinds=COUNTER_ONLY,
        kinds_what="Resetting a transaction password (face to face)",
    ),
    Operation("issue_token"),
    Operation("close_account", consent=True),
    Operation("face_to_face", kinds=COUNTER_ONLY, kinds_what="Face-to-face verification"),
    Operation("set_non_bound_inflow", consent=True),
    Operation("topup", consent=True, money=True),
    Operation("withdraw", consent=True, money=True),
    Operation("cash_deposit", kinds=CASH_KINDS, kinds_what="Cash", money=True),
    Operation("cash_withdrawal", kinds=CASH_KINDS, kinds_what="Cash", consent=True, money=True),
    Operation("transfer", consent=True, money=True),
    # Any accounts, codes and flags, no holder's consent: a ledger API, the bank's own.
    Operation("batch", kinds=INTERNAL_ONLY, kinds_what="The batch route", money=True),
    Operation("reversal", money=True),
    Operation("external_transfer", consent=True, money=True),
    Operation("incoming_transfer", money=True),
    Operation("payment", consent=True, money=True),
    Operation("capture", money=True),
    Operation("void", money=True),
)


def admit(caller: Caller, operation: Operation) -> None:
    """The generic guard every adapter calls before the service: the caller's channel
    kind must be one the operation is offered at (`Refused` CHANNEL_KIND_NOT_ALLOWED)."""
    if operation.kinds and caller.kind not in operation.kinds:
        raise kind_refused(caller, operation.kinds, operation.kinds_what)
