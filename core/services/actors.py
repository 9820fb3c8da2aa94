"""Who acts at a channel: the teller at the counter, and what each role may move.

A counter does not act for itself: a teller does, or a supervisor. The
channel names the person in every request it signs (the HTTP adapter's
`Tally-Actor` header, in the string to sign), and the adapter puts them in
`Caller.actor_id` / `Caller.actor_role`. Which channels must name one, which
roles they may name, and each role's limits are the channel registry's
(`[channels.counter.roles.teller]`, ...); the registry hands them to the
services as `ChannelActors` keyed by the channel's ledger id.

`Actors.admit` is the guard every adapter calls before a service (a channel
that requires an actor refuses a request without one; a role the channel
does not declare is refused); `Actors.check_postings` is a `PostingCheck`
installed at the one posting point (`Payments.admit`), so the role limits
hold on every route that posts (single transfers, cash, captures,
reversals, the batch) and a posting without the required actor is refused
there too, whatever the adapter did. A channel without actor rules pays one
dict lookup per posting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from core.services.commands import Caller
from core.services.refusals import Code, refused
from ledger.records import transfer_view
from ledger.types import CODES_CASH, TRANSFER_SIZE, TransferFlags

TELLER = "teller"
SUPERVISOR = "supervisor"
ROLES = (TELLER, SUPERVISOR)


@dataclass(frozen=True, slots=True)
class RoleLimits:
    """What one posting by this role may move (0: no cap of this role)."""

    transfer_cap_minor: int = 0  # any posting that moves money (not a void)
    cash_cap_minor: int = 0  # a cash deposit or withdrawal


@dataclass(frozen=True, slots=True)
class ChannelActors:
    """A channel's actor rules: whether every request must name one, and the roles."""

    required: bool
    roles: Mapping[str, RoleLimits] = field(default_factory=dict)


class Actors:
    """The actor rules of every channel that has some, by the channel's ledger id."""

    def __init__(self, channels: Mapping[int, ChannelActors] | None = None) -> None:
        self.channels: Mapping[int, ChannelActors] = MappingProxyType(dict(channels or {}))

    def __bool__(self) -> bool:
        return bool(self.channels)

    def admit(self, caller: Caller) -> None:
        """Refuse a request without the actor its channel requires (ACTOR_REQUIRED) or
        naming a role the channel does not declare (ACTOR_ROLE_NOT_ALLOWED)."""
        rules = self.channels.get(caller.ledger_id)
        if not caller.actor_role:
            if rules is not None and rules.required:
                raise refused(
                    Code.ACTOR_REQUIRED,
                    f"channel {caller.name} acts for a teller: name one in the signed request",
                    roles=tuple(rules.roles),
                )
            return
        if rules is None or caller.actor_role not in rules.roles:
            raise refused(
                Code.ACTOR_ROLE_NOT_ALLOWED,
                f"channel {caller.name} declares no role {caller.actor_role!r}",
                roles=tuple(rules.roles) if rules is not None else (),
            )

    def check_postings(self, caller: Caller, records: bytes, count: int) -> None:
        """A `PostingCheck`: the actor admitted, then each posting within the role's caps."""
        rules = self.channels.get(caller.ledger_id)
        if rules is None:
            return
        self.admit(caller)
        if not caller.actor_role:
            return  # an optional actor left out: the channel's own limits only
        limits = rules.roles[caller.actor_role]
        for index in range(count):
            view = transfer_view(records, TRANSFER_SIZE * index)
            if view.flags & TransferFlags.VOID_PENDING:
                continue  # a void releases a hold: it moves nothing
            if view.code in CODES_CASH:
                cap, what = limits.cash_cap_minor, "cash_cap_minor"
            else:
                cap, what = limits.transfer_cap_minor, "transfer_cap_minor"
            if cap and view.amount > cap:
                raise refused(
                    Code.ACTOR_LIMIT_EXCEEDED,
                    f"{view.amount} is over the {caller.actor_role}'s {what} of {cap}",
                    role=caller.actor_role,
                    cap_minor=cap,
                    **({"pointer": f"/transfers/{index}"} if count > 1 else {}),
                )
