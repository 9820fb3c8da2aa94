"""Every money movement, through one posting path: `Payments.admit`.

Single transfers, payments (holds), captures, voids, reversals, cash,
top-ups, withdrawals, clearing in and out (all through `post(command)`) and
the batch (`post_batch`) build packed 128-byte transfer records and hand
them to `admit(caller, records, count)` before the engine sees them. That
is THE one place where per-posting checks run (`PostingCheck`s: risk,
authorization, sanctions...), so a check installed there applies to every
posting whatever its route. A single posting's id is derived from the
channel and the Idempotency-Key with a keyed hash (`TransferIds`, the
server's `transfer_id_key`), so a retry, even after a crash, meets the
original in the ledger's own idempotency index, and nobody can compute
another channel's ids. The fields a record has no column for (a beneficiary,
a payer) are in its `user_data` as a keyed fingerprint, so the ledger's
idempotency check compares every field of the instruction.

Who may move what: the batch route, and any posting that
names one of the bank's own accounts (ids below `BANK_ACCOUNT_ID_LIMIT`), only
from a channel of kind `internal`, except the internal legs the services build
themselves (the cash vault of cash, clearing of external and incoming transfers
and top-ups); a capture, void or reversal only by the channel that created its
target, which is read anyway to build the posting (no extra await for it, none
at all on a plain transfer).

The risk stage (`core.services.risk.Risk`, issue 15) screens every posting
`post` and `post_batch` make, right before `admit` (it needs what a
`PostingCheck` does not see: the device, IP and location the channel signed,
the beneficiary's card, whether a second factor came with the consent; and it
may turn a posting into a hold). Captures and voids are not screened (they
settle a movement decided when its hold was placed). Its outcomes: allowed
postings go on unchanged; a BLOCK or an unmet CHALLENGE is refused
(RISK_BLOCKED, RISK_CHALLENGE) with nothing posted; a DELAY or REVIEW is
queued as a PENDING hold of the same id and answered with `Posted.risk_hold`.
A hold the stage placed is locked: `_hold` (capture, void) and `reversal`
refuse it with RISK_HOLD_LOCKED; only the bank releases or returns it.

An operation may be cancelled before it arrives (`bar`): a terminal that timed out
reverses a message the bank has not seen yet (ISO 8583's 0400 crossing its 0200),
and the original must then never be posted after its reversal. `bar` records the
operation's id (in memory at once, durable before it returns: a customer-state
record, `barred/<id>`, kept for the transfer log's retention) and `post` refuses a
barred id right before `admit`, with no await in between: so either the posting was
queued before the bar (and a reversal that reads the ledger after `bar` returned finds
it), or it is refused (ID_ALREADY_FAILED: the id is spent, nothing is posted).

`post` is the hot path of the HTTP single transfer: `admit` is a plain call
(no coroutine; with no check installed it is one truth test), then one await
on the engine (the request's done event), no cancel scope, nothing allocated
but the result; refusals are raised (`core.services.refusals` says why). The
risk stage adds one synchronous call there (`Risk.screen`: a cached context
row, one kernel call, None when nothing fired): no await unless a rule fired.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from core.engine import (
    EngineFull,
    EngineOverloaded,
    EngineStopped,
    Request,
    transfer_result,
    transfer_results,
)
from core.services import identity
from core.services.auth import Auth
from core.services.commands import (
    NO_CONTEXT,
    Caller,
    Consent,
    IncomingCredit,
    IncomingCredits,
    Movement,
    Posting,
    PostingBatch,
    Proof,
    ReturnPayment,
    RiskContext,
)
from core.services.lifecycle import Lifecycle, engine_refusal
from core.services.policy import COUNTER_KIND, INTERNAL_KIND, INTERNAL_ONLY, PARTNER_KINDS
from core.services.records import TransferIds
from core.services.refusals import Code, Refusal, Refused, kind_refused, refused, transfer_refused
from core.services.results import BatchPosted, CreditsPosted, Posted
from core.services.risk import (
    HELD,
    POSTED,
    REFUSED,
    RETURNED,
    SETTLING_FLAGS,
    Fired,
    Risk,
    Screening,
)
from ledger.constants import BANK_ACCOUNT_ID_LIMIT, CASH_VAULT_ID, CLEARING_ID, LEDGER_CNY
from ledger.records import TransferView, pack_transfer_after_id, transfer_view
from ledger.types import TRANSFER_SIZE, CreateTransferResult, TransferCode, TransferFlags
from limits.risk_layout import Outcome

logger = logging.getLogger("tally.services")
R = CreateTransferResult
PAYMENT_TIMEOUT_S_DEFAULT = 900
BARRED_PREFIX = b"barred/"  # customer-state records of barred operations (`Payments.bar`)
NS_PER_S = 1_000_000_000
_RESULT_NAMES = {int(code): code.name.lower() for code in R}
RISK_REFUSING = frozenset({Outcome.CHALLENGE, Outcome.BLOCK})  # refused: nothing posted
# Credits from other banks in one `incoming_credits` command (one engine admission): a
# 1,000-credit pacs.008 is the common message; ten times that is the most one may carry.
INCOMING_CREDITS_MAX = 10_000

PostingCheck = Callable[[Caller, bytes, int], None]
"""A per-posting check: `check(caller, records, count)` over `count` packed transfer
records (`ledger.records.transfer_view(records, 128 * index)` reads one), raising
`Refused` to refuse the request; it runs before the engine sees anything."""


@dataclass(slots=True)
class Staged:
    """A posting queued on the engine (`Payments.stage`): `settle` it once
    `request.done` is set."""

    command: Posting
    packed_id: bytes
    record: bytes
    request: Request
    decided: Fired | None = None  # the risk decision it was posted under


class FailedBefore(Exception):
    """`Payments.settle`: the first request with this operation key failed;
    `Payments.replayed_failure(staged)` is the refusal to answer."""

    def __init__(self, staged: Staged) -> None:
        super().__init__("the first request with this operation key failed")
        self.staged = staged


def _with_second_factor(flags: int, consent: Consent) -> tuple[int, bool]:
    """A consented posting's flags: STRONG_AUTH when the channel asserted a second factor."""
    if consent.second_factor:
        return flags | TransferFlags.STRONG_AUTH, True
    return flags, False


class Payments:
    def __init__(
        self,
        core: Lifecycle,
        auth: Auth,
        checks: tuple[PostingCheck, ...] = (),
        *,
        risk: Risk | None = None,
    ) -> None:
        """`checks`: the `PostingCheck`s `admit` runs; `risk`: the risk stage
        (core/services/risk.py) `post` and `post_batch` run before `admit` (None: none)."""
        self.core = core
        self.auth = auth
        self.checks = checks
        self.risk = risk
        self.ids: TransferIds = core.ids
        # Ledger results of postings by name: a plain dict on the hot path, read by the
        # metrics collector at scrape time.
        self.results: dict[str, int] = {}
        # Operations cancelled before they arrived (`bar`): packed id -> forgotten at (ns).
        self.barred: dict[bytes, int] = {}
        core.on_state_loaded.append(self._load_barred)
        core.on_housekeeping.append(self._forget_barred)

    def count_result(self, name: str, count: int = 1) -> None:
        self.results[name] = self.results.get(name, 0) + count

    def admit(self, caller: Caller, records: bytes, count: int) -> Request:
        """THE one point every posting passes on its way to the engine: the checks, then
        one engine call (`enqueue_transfers`) for a single transfer and a batch alike.

        Args:
            caller: the channel posting.
            records: `count` packed 128-byte transfers, ids derived.
        Returns:
            the engine's request for `records`, queued: await `request.done.wait()`.
        Error handling:
            a check's `Refused` propagates (nothing is posted); no running engine
            yet, a full queue or a stopped engine is `Refused` (nothing is posted).

        A synchronous call on purpose: the single transfer pays no coroutine for it.
        """
        if self.checks:
            for check in self.checks:
                check(caller, records, count)
        unverified = self.core.state.unverified_accounts
        if unverified:
            _refuse_unverified_debits(unverified, records, count)
        try:
            return self.core.running_engine().enqueue_transfers(records)
        except (EngineOverloaded, EngineFull, EngineStopped) as error:
            raise engine_refusal(error) from None

    async def post(self, command: Posting) -> Posted:
        """Post one transfer (after its holder's consent); answer once durable.

        The ledger's STRONG_AUTH flag is set only when the holder consented (token or
        password, checked here) and the channel asserted a second factor with it (which
        also meets a risk challenge). The risk stage screens the posting (not a capture
        or void) before `admit`: a BLOCK or an unmet CHALLENGE is refused (RISK_BLOCKED,
        RISK_CHALLENGE) once its decision is durable; a DELAY or REVIEW is posted as a
        PENDING hold and answered with `risk_hold` (`_risk_single`).

        `stage` and `settle` are the same steps for a caller that queues many postings
        without a coroutine each (the core link, core/link/server.py).
        """
        consented = self._consented(command)
        if consented is None:  # no token: the password, on the hashing threads
            consent = command.consent
            assert consent is not None and consent.password is not None
            await self.auth.verify_password(command.authorize, consent.password)
            consented = _with_second_factor(command.flags, consent)
        staged = self._stage_consented(command, consented[0], consented[1])
        if not isinstance(staged, Staged):
            return await staged
        await staged.request.done.wait()
        try:
            return self.settle(staged)
        except FailedBefore:
            raise await self._replayed_failure(staged.packed_id, staged.record) from None

    def stage(self, command: Posting) -> Staged | Coroutine[Any, Any, Posted]:
        """`post` up to its wait for the engine, when nothing before it has to wait: the
        posting queued (`Staged`: `settle` it once `request.done` is set). When a step
        must wait (a password to verify, a risk decision to act on), the coroutine that
        does the rest of `post` instead: await it (in a task of its own). Raises the
        refusals `post` raises before queueing."""
        consented = self._consented(command)
        if consented is None:
            return self.post(command)
        return self._stage_consented(command, consented[0], consented[1])

    def settle(self, staged: Staged) -> Posted:
        """The outcome of a staged posting once its request is done: `Posted`, or the
        refusal raised; `FailedBefore` when the first request with the key failed
        (`replayed_failure` says how: await it)."""
        try:
            result = transfer_result(staged.request)
        except (EngineOverloaded, EngineFull, EngineStopped) as error:
            raise engine_refusal(error) from None
        command = staged.command
        decided = staged.decided
        status = result.result
        if status == R.OK:
            self.count_result("ok")
        elif status == R.EXISTS:
            self.count_result("exists")
        elif status == R.ID_ALREADY_FAILED:
            self.count_result("id_already_failed")
            raise FailedBefore(staged)
        else:
            self.count_result(_RESULT_NAMES[status])
            risk = self.risk
            if decided is not None and risk is not None and decided.decision is None:
                risk.posting_failed(decided.transfer_id, status)
            raise transfer_refused(status)
        if decided is not None:
            hold = decided.hold
            return Posted(
                staged.packed_id,
                command.operation,
                command.debit,
                command.credit,
                command.amount_minor,
                command.code,
                command.flags | TransferFlags.PENDING if hold else command.flags,
                command.pending_id,
                decided.timeout_s if hold else command.timeout_s,
                command.caller.name,
                result.timestamp,
                status == R.EXISTS,
                hold,
                # When the bank acts on the hold by itself: captures a delayed one, returns
                # a reviewed one no officer decided on.
                decided.release_at_ns or decided.return_at_ns,
                decided.decision_id,
            )
        return Posted(
            staged.packed_id,
            command.operation,
            command.debit,
            command.credit,
            command.amount_minor,
            command.code,
            command.flags,
            command.pending_id,
            command.timeout_s,
            command.caller.name,
            result.timestamp,
            status == R.EXISTS,
        )

    async def replayed_failure(self, staged: Staged) -> Exception:
        """The refusal for a staged posting `settle` found `FailedBefore`."""
        return await self._replayed_failure(staged.packed_id, staged.record)

    def _consented(self, command: Posting) -> tuple[int, bool] | None:
        """The posting's flags and whether a second factor counts, when the holder's
        consent needs no waiting (none asked, or a live token); None when the password
        must be verified first. Raises the consent's refusals."""
        if not command.authorize:
            return command.flags, False
        consent = command.consent or Consent()
        if not self.auth.token_checked(command.caller, command.authorize, consent):
            return None
        return _with_second_factor(command.flags, consent)

    def _stage_consented(
        self, command: Posting, flags: int, second_factor: bool
    ) -> Staged | Coroutine[Any, Any, Posted]:
        caller = command.caller
        packed_id = self.ids.packed(caller.ledger_id, command.key, 0)
        record = packed_id + pack_transfer_after_id(
            command.debit,
            command.credit,
            command.amount_minor,
            command.code,
            command.pending_id,
            command.timeout_s,
            LEDGER_CNY,
            flags,
            caller.ledger_id,
            command.user_data,
        )
        risk = self.risk
        if risk is not None and not flags & SETTLING_FLAGS:
            screening = risk.screen(
                caller, record, 1, command.context, command.counterparty, second_factor
            )
            if screening is not None:
                return self._post_screened(command, packed_id, record, screening)
        return Staged(command, packed_id, record, self._admit_single(caller, packed_id, record))

    async def _post_screened(
        self, command: Posting, packed_id: bytes, record: bytes, screening: Screening
    ) -> Posted:
        """The rest of `post` for a posting the risk stage fired on."""
        record, decided = await self._risk_single(command, record, screening)
        staged = Staged(
            command, packed_id, record, self._admit_single(command.caller, packed_id, record),
            decided,
        )  # fmt: skip
        await staged.request.done.wait()
        try:
            return self.settle(staged)
        except FailedBefore:
            raise await self._replayed_failure(packed_id, record) from None

    def _admit_single(self, caller: Caller, packed_id: bytes, record: bytes) -> Request:
        barred = self.barred
        if barred and packed_id in barred:  # no await from here to `admit`: see `bar`
            raise transfer_refused(R.ID_ALREADY_FAILED, "the operation was cancelled (`bar`)")
        return self.admit(caller, record, 1)

    async def bar(self, caller: Caller, key: str) -> None:
        """Cancel operation `key` of `caller`'s channel before it arrives: from now on (for
        the transfer log's retention) a posting of it is refused ID_ALREADY_FAILED.

        In memory before the first await, durable on return. A posting queued before that
        is not undone here: the caller reverses it (a ledger read after `bar` returned
        sees every posting queued before it). Idempotent."""
        packed = self.ids.packed(caller.ledger_id, key, 0)
        core = self.core
        forget_at_ns = core.now_ns() + int(core.settings.retention_s * NS_PER_S)
        self.barred[packed] = forget_at_ns
        state = core.customer_state()
        record = orjson.dumps({"k": "barred", "until_ns": forget_at_ns})
        await state.flush_through(state.stage_change(_barred_key(packed), record))

    def _load_barred(self, state: Mapping[bytes, bytes]) -> None:
        """The barred operations from the recovered state (each time the store opens)."""
        self.barred = {
            bytes.fromhex(key[len(BARRED_PREFIX) :].decode()): orjson.loads(value)["until_ns"]
            for key, value in state.items()
            if key.startswith(BARRED_PREFIX)
        }

    def _forget_barred(self, now_ns: int) -> None:
        """Forget the bars past the retention (their deletion rides the next flush)."""
        if not self.barred:
            return
        state = self.core.customer_state()
        for packed in [p for p, until_ns in self.barred.items() if until_ns <= now_ns]:
            del self.barred[packed]
            state.stage_change(_barred_key(packed), None)

    async def _risk_single(
        self, command: Posting, record: bytes, screening: Screening
    ) -> tuple[bytes, Fired | None]:
        """Act on the risk stage's decision for one posting: the record to queue (a hold
        for DELAY / REVIEW) and the decision it was posted under (None: posted as if
        nothing fired). A new non-allow outcome first asks the ledger whether the id was
        posted already (a retry of a posting allowed before: answered as the ledger
        does, nothing recorded). Decisions are staged before the posting is queued."""
        risk = self.risk
        assert risk is not None
        fired = screening.fired[0]
        outcome = fired.outcome
        fresh = fired.decision is None
        if fresh and outcome != Outcome.ALLOW:
            transfer_id = fired.transfer_id
            first = await self.core.read(lambda ledger: ledger.lookup_transfer(transfer_id))
            if first is not None:
                return record, None
        if outcome in RISK_REFUSING:
            if fresh:
                ticket = risk.stage(
                    command.caller, record, screening, command.context, _state_refused
                )
                await self.core.customer_state().flush_through(ticket)
            raise risk.refusal(fired)
        if fired.hold:
            record = risk.hold_record(record, fired)
        if fresh:
            risk.stage(command.caller, record, screening, command.context, _state_posted_or_held)
        return record, fired

    async def _replayed_failure(self, packed_id: bytes, record: bytes) -> Exception:
        """The refusal replayed to a retry of a key whose first request failed; a conflict
        if the retry's instruction differs from the first's (the ledger compares the fields
        of a posted original only)."""
        transfer_id = int.from_bytes(packed_id, "little")
        original = await self.core.read(lambda ledger: ledger.lookup_transfer(transfer_id))
        if original is None:
            return transfer_refused(
                R.ID_ALREADY_FAILED, "the first request with this Idempotency-Key failed"
            )
        first = transfer_view(original)
        differs = _first_difference(transfer_view(record), first)
        if differs is not None:
            return transfer_refused(differs, "the first request with this Idempotency-Key failed")
        return transfer_refused(
            first.result, "replayed: the first request with this Idempotency-Key failed",
            replayed=True,
        )  # fmt: skip

    async def post_batch(self, command: PostingBatch) -> BatchPosted:
        """Post packed records (ids derived) in one engine call; per-item results.

        The batch is a ledger API (any accounts, codes, flags, no holder's consent): the
        bank's internal channel alone may use it, whatever the adapter. The risk stage
        screens it first (`_risk_batch`): a BLOCK or unmet CHALLENGE item refuses the
        whole request (`pointer` /transfers/i); DELAY / REVIEW items become PENDING holds
        in place (their flags in `BatchPosted.records` say so; `Risk.decision` tells why).
        """
        if command.caller.kind != INTERNAL_KIND:
            raise kind_refused(command.caller, INTERNAL_ONLY, "The batch route")
        records = command.records
        count = command.count
        risk = self.risk
        screening: Screening | None = None
        if risk is not None:
            screening = risk.screen(command.caller, records, count)
            if screening is not None:
                records, screening = await self._risk_batch(command, screening)
        request = self.admit(command.caller, records, count)
        await request.done.wait()
        try:
            results = transfer_results(request)
        except (EngineOverloaded, EngineFull, EngineStopped) as error:
            raise engine_refusal(error) from None
        codes = results.result_codes()
        if screening is not None and risk is not None:
            for fired in screening.fired:
                code = codes[fired.index]
                if fired.decision is None and code not in (R.OK, R.EXISTS):
                    risk.posting_failed(fired.transfer_id, code)
        timestamps = results.timestamps[results.offset : results.offset + count]
        histogram = {code: codes.count(code) for code in set(codes)}
        for code, number in histogram.items():
            self.count_result(_RESULT_NAMES[code], number)
        return BatchPosted(records, count, codes, timestamps, histogram)

    async def _drop_posted_before(self, screening: Screening) -> bool:
        """Leave out of `screening` the new non-allow outcomes whose ids the ledger has
        already: retries of postings made before, answered as the ledger does, nothing
        recorded. Returns whether anything fired is left to act on."""
        fresh = [f.transfer_id for f in screening.fired if f.decision is None and f.outcome]
        if fresh:
            posted_before = await self.core.read(
                lambda ledger: {i for i in fresh if ledger.lookup_transfer(i) is not None}
            )
            if posted_before:
                screening.fired = [
                    f for f in screening.fired if f.decision is not None
                    or not f.outcome or f.transfer_id not in posted_before
                ]  # fmt: skip
        return bool(screening.fired)

    async def _record_refusals(
        self, risk: Risk, caller: Caller, records: bytes, screening: Screening
    ) -> None:
        """Make the BLOCK and unmet CHALLENGE decisions of `screening` durable before they
        are answered (a retry then meets the same decision)."""
        ticket = risk.stage(
            caller, records, screening, NO_CONTEXT, _state_refused,
            only=lambda fired: fired.outcome in RISK_REFUSING,
        )  # fmt: skip
        if ticket:
            await self.core.customer_state().flush_through(ticket)

    async def _risk_batch(
        self, command: PostingBatch, screening: Screening
    ) -> tuple[bytes, Screening | None]:
        """Act on the risk stage's decisions for a batch: the records to queue (holds
        rewritten in place) and the screening whose decisions were staged. Items with a
        new non-allow outcome whose ids the ledger has already are retries of postings
        made before: left as they are, nothing recorded. A BLOCK or unmet CHALLENGE
        refuses the whole request (the first such item's pointer), once the refused
        items' decisions are durable; nothing else is recorded then."""
        risk = self.risk
        assert risk is not None
        caller = command.caller
        records = command.records
        if not await self._drop_posted_before(screening):
            return records, None
        refusing = [f for f in screening.fired if f.outcome in RISK_REFUSING]
        if refusing:
            await self._record_refusals(risk, caller, records, screening)
            first = refusing[0]
            raise risk.refusal(first, pointer=f"/transfers/{first.index}")
        holds = [f for f in screening.fired if f.hold]
        if holds:
            buffer = bytearray(records)
            for fired in holds:
                offset = fired.index * TRANSFER_SIZE
                buffer[offset : offset + TRANSFER_SIZE] = risk.hold_record(
                    records[offset : offset + TRANSFER_SIZE], fired
                )
            records = bytes(buffer)
        risk.stage(caller, records, screening, NO_CONTEXT, _state_posted_or_held)
        return records, screening

    # --- the named movements: each picks its counterpart, then `post` ----------------

    def _bound(self, account_id: int) -> int:
        meta = self.auth.meta_of(account_id)
        if meta.bound is None:
            raise transfer_refused(R.NO_BOUND_ACCOUNT, "this account has no bound card")
        if meta.bound["kind"] == "internal":
            return int(meta.bound["account_id"])
        return CLEARING_ID

    def transfer(
        self,
        caller: Caller,
        key: str,
        debit: int,
        credit: int,
        amount_minor: int,
        consent: Consent,
        context: RiskContext = NO_CONTEXT,
    ) -> Posting:
        """The posting of a customer's transfer between two accounts of this bank;
        `context`: the device, IP and location the channel signed (the risk stage)."""
        if debit == credit:
            raise transfer_refused(R.ACCOUNTS_MUST_BE_DIFFERENT)
        if (debit < BANK_ACCOUNT_ID_LIMIT or credit < BANK_ACCOUNT_ID_LIMIT) and (
            caller.kind != INTERNAL_KIND
        ):
            raise _internal_refused(caller, debit if debit < BANK_ACCOUNT_ID_LIMIT else credit)
        return Posting(
            caller, key, "transfer", debit, credit, amount_minor, TransferCode.TRANSFER,
            authorize=debit, consent=consent, context=context,
        )  # fmt: skip

    async def topup(self, move: Movement) -> Posted:
        source = self._bound(move.account_id)
        return await self._move(move, "topup", source, move.account_id, TransferCode.TOPUP_BOUND)

    async def withdraw(self, move: Movement) -> Posted:
        target = self._bound(move.account_id)
        code = TransferCode.WITHDRAW_BOUND
        return await self._move(move, "withdraw", move.account_id, target, code)

    async def cash_deposit(self, move: Movement) -> Posted:
        code = TransferCode.CASH_DEPOSIT
        return await self._move(move, "cash_deposit", CASH_VAULT_ID, move.account_id, code)

    async def cash_withdrawal(self, move: Movement) -> Posted:
        """Cash out (an ATM, a counter): now or never, like a purchase (`return_risk_hold`:
        a DELAY or REVIEW hold is returned at once, never captured after the customer
        left without the cash)."""
        code = TransferCode.CASH_WITHDRAWAL
        posted = await self._move(move, "cash_withdrawal", move.account_id, CASH_VAULT_ID, code)
        return await self.return_risk_hold(posted) if posted.risk_hold else posted

    async def external_transfer(self, move: Movement) -> Posted:
        """Money out to another bank through the clearing account (`move.beneficiary`)."""
        beneficiary = move.beneficiary
        assert beneficiary is not None
        number = beneficiary["account_number"]
        problem = (
            identity.card_number_problem(number) if number.isdigit() and len(number) >= 16 else None
        )
        if problem is not None:
            raise refused(
                Code.BENEFICIARY_CARD_INVALID, problem, pointer="/beneficiary/account_number"
            )
        code = TransferCode.EXTERNAL_TRANSFER_OUT
        fingerprint = self.ids.fingerprint(
            "beneficiary", beneficiary["bank_code"], number, beneficiary["name"]
        )
        posted = await self._move(
            move, "external_transfer", move.account_id, CLEARING_ID, code,
            user_data=fingerprint, counterparty=number,
        )  # fmt: skip
        logger.info(
            orjson.dumps(
                {
                    "event": "clearing_out",
                    "transfer_id": posted.transfer_id_packed[::-1].hex(),
                    "beneficiary_bank": beneficiary["bank_code"],
                    "beneficiary_account": identity.mask_card(number),
                }
            ).decode()
        )
        return posted

    async def incoming_transfer(self, move: Movement) -> Posted:
        """Money in from another bank. The clearing reference is the operation key: the
        transfer id is derived from it (not from the request's Idempotency-Key), so the
        same clearing message sent twice, under any key, posts once."""
        assert move.amount_minor is not None
        credit = IncomingCredit(move.account_id, move.amount_minor, move.reference, move.payer)
        posting = self.incoming_posting(move.caller, credit)
        posting.context = move.context
        return await self.post(posting)

    def incoming_posting(self, caller: Caller, credit: IncomingCredit) -> Posting:
        """THE rule of a credit from another bank, for one (`incoming_transfer`) and many
        (`incoming_credits`) alike: clearing -> the customer's account, code
        EXTERNAL_TRANSFER_IN, the clearing reference as the operation key, the payer's
        fingerprint in `user_data`; one of the bank's own accounts only from the internal
        channel. Refused (raised) before anything is posted."""
        if not credit.reference:
            raise refused(
                Code.INVALID_FIELD,
                "the clearing reference is required",
                pointer="/clearing_reference",
            )
        if credit.account_id < BANK_ACCOUNT_ID_LIMIT and caller.kind != INTERNAL_KIND:
            raise _internal_refused(caller, credit.account_id)
        payer = credit.payer
        fingerprint = 0
        number = ""
        if payer is not None:
            number = payer["account_number"]
            fingerprint = self.ids.fingerprint("payer", payer["bank_code"], number, payer["name"])
        return Posting(
            caller, credit.reference, "incoming_transfer", CLEARING_ID, credit.account_id,
            credit.amount_minor, TransferCode.EXTERNAL_TRANSFER_IN,
            user_data=fingerprint, counterparty=number,
        )  # fmt: skip

    async def payment(self, move: Movement) -> Posted:
        """A hold on the payer's account for the merchant, captured or voided later."""
        if move.account_id == move.counterpart:
            raise transfer_refused(R.ACCOUNTS_MUST_BE_DIFFERENT)
        if move.counterpart < BANK_ACCOUNT_ID_LIMIT and move.caller.kind != INTERNAL_KIND:
            raise _internal_refused(move.caller, move.counterpart)
        return await self._move(
            move, "payment", move.account_id, move.counterpart, TransferCode.PAYMENT,
            flags=TransferFlags.PENDING, timeout_s=move.timeout_s or PAYMENT_TIMEOUT_S_DEFAULT,
        )  # fmt: skip

    async def purchase(self, move: Movement) -> Posted:
        """A payment settled at once (a card purchase at a POS): ONE posting payer ->
        merchant, code PAYMENT, no hold, with `payment`'s rules (the payer's consent, the
        merchant not one of the bank's own accounts, the risk screen: a DELAY or REVIEW
        becomes a hold answered `risk_hold`). Reversed like any posting (`reversal`).
        One engine call where a hold and its capture cost two and a read."""
        if move.account_id == move.counterpart:
            raise transfer_refused(R.ACCOUNTS_MUST_BE_DIFFERENT)
        if move.counterpart < BANK_ACCOUNT_ID_LIMIT and move.caller.kind != INTERNAL_KIND:
            raise _internal_refused(move.caller, move.counterpart)
        posted = await self._move(
            move, "purchase", move.account_id, move.counterpart, TransferCode.PAYMENT
        )
        return await self.return_risk_hold(posted) if posted.risk_hold else posted

    async def return_risk_hold(self, posted: Posted) -> Posted:
        """For a movement that happens now or never (a card purchase, cash out of an ATM:
        the terminal answers at once, a sale or cash not given cannot be settled later):
        the DELAY or REVIEW hold the risk stage placed instead is returned to the payer at
        once (`Risk.return_`: voided, the decision RETURNED), so nothing is left held or
        captured later. Returns `posted` with `risk_hold` RETURNED (nothing moved).
        Idempotent: a repeat meets the returned hold and returns nothing twice."""
        assert posted.risk_hold and self.risk is not None, posted
        transfer_id = int.from_bytes(posted.transfer_id_packed, "little")
        await self.risk.return_(transfer_id, "now-or-never")
        posted.risk_hold = RETURNED
        return posted

    async def _move(
        self,
        move: Movement,
        operation: str,
        debit: int,
        credit: int,
        code: int,
        *,
        flags: int = 0,
        timeout_s: int = 0,
        user_data: int = 0,
        counterparty: str = "",
    ) -> Posted:
        """A movement of `move.account_id`, the customer's side: one of the bank's own
        accounts there only from the internal channel (the other side is the service's).
        `counterparty`: the other bank's card or account number (the risk stage)."""
        assert move.amount_minor is not None
        if move.account_id < BANK_ACCOUNT_ID_LIMIT and move.caller.kind != INTERNAL_KIND:
            raise _internal_refused(move.caller, move.account_id)
        authorize = move.account_id if move.consent is not None else 0
        return await self.post(
            Posting(
                move.caller, move.key, operation, debit, credit, move.amount_minor, code,
                flags=flags, timeout_s=timeout_s, authorize=authorize, consent=move.consent,
                user_data=user_data, context=move.context, counterparty=counterparty,
            )
        )  # fmt: skip

    async def _hold(
        self, caller: Caller, payment_id: int, proof: Proof | None = None
    ) -> TransferView:
        """The hold `payment_id` as its creator sees it: another channel's hold, or at a
        channel acting for one customer (`proof` given) a hold that is neither that
        customer's payment nor paid to them, is answered exactly as a hold that does not
        exist."""
        raw = await self.core.read(lambda ledger: ledger.lookup_transfer(payment_id))
        if raw is None:
            raise transfer_refused(R.PENDING_TRANSFER_NOT_FOUND)
        hold = transfer_view(raw)
        if hold.channel != caller.ledger_id:
            raise _another_channels(R.PENDING_TRANSFER_NOT_FOUND)
        if proof is not None and not self.auth.party_to(
            caller, (hold.debit_account_id, hold.credit_account_id), proof
        ):
            raise _another_channels(R.PENDING_TRANSFER_NOT_FOUND)
        if self.risk is not None and self.risk.hold_locked(payment_id):
            raise _risk_locked(payment_id)
        return hold

    async def capture(self, move: Movement) -> Posted:
        """Capture hold `move.account_id` (all of it unless `amount_minor` says less)."""
        hold = await self._hold(move.caller, move.account_id, move.proof)
        amount = hold.amount if move.amount_minor is None else move.amount_minor
        return await self._settle_hold(move, "capture", hold, amount, TransferFlags.POST_PENDING)

    async def void(self, move: Movement) -> Posted:
        hold = await self._hold(move.caller, move.account_id, move.proof)
        return await self._settle_hold(move, "void", hold, hold.amount, TransferFlags.VOID_PENDING)

    async def _settle_hold(
        self, move: Movement, operation: str, hold: TransferView, amount: int, flags: int
    ) -> Posted:
        return await self.post(
            Posting(
                move.caller, move.key, operation, hold.debit_account_id, hold.credit_account_id,
                amount, hold.code, flags=flags, pending_id=move.account_id,
            )
        )  # fmt: skip

    async def reversal(self, move: Movement, *, approved: bool = False) -> Posted:
        """Reverse posted transfer `move.account_id` (all that was posted unless less).

        At a counter, a reversal of more than `Settings.reversal_approval_minor` is a
        sensitive operation: refused APPROVAL_REQUIRED unless `approved` (the approvals
        service's `reversal` operation, once a supervisor approved a teller's request)."""
        original_id = move.account_id
        raw = await self.core.read(lambda ledger: ledger.lookup_transfer(original_id))
        if raw is None:
            raise transfer_refused(R.REVERSAL_TARGET_NOT_FOUND)
        original = transfer_view(raw)
        if original.channel != move.caller.ledger_id:
            raise _another_channels(R.REVERSAL_TARGET_NOT_FOUND)
        if self.risk is not None and self.risk.hold_locked(original_id):
            raise _risk_locked(original_id)
        debit, credit = original.debit_account_id, original.credit_account_id
        if original.result != R.OK:
            raise transfer_refused(R.REVERSAL_TARGET_NOT_POSTED, "the original transfer failed")
        amount = original.amount_posted if move.amount_minor is None else move.amount_minor
        if amount <= 0:
            raise transfer_refused(R.EXCEEDS_REVERSIBLE_AMOUNT, "nothing left to reverse")
        threshold = self.core.settings.reversal_approval_minor
        if not approved and move.caller.kind == COUNTER_KIND and amount > threshold:
            raise refused(
                Code.APPROVAL_REQUIRED,
                f"a counter reversal of more than {threshold} fen needs a supervisor's"
                " approval: request the `reversal` operation",
                kind="reversal",
                threshold_minor=threshold,
            )
        # A capture names its accounts through its hold; take them from there.
        if debit == 0 or credit == 0:
            hold = await self._hold(move.caller, original.pending_id)
            debit, credit = hold.debit_account_id, hold.credit_account_id
        return await self.post(
            Posting(
                move.caller, move.key, "reversal", credit, debit, amount, TransferCode.REVERSAL,
                pending_id=original_id,
            )
        )  # fmt: skip

    # --- clearing in bulk (ISO 20022 pacs.008, pacs.004) ------------------------------

    async def incoming_credits(self, command: IncomingCredits) -> CreditsPosted:
        """Post credits from another bank in ONE engine admission; one outcome each.

        Each credit follows the rule of `incoming_transfer` (`incoming_posting`: its id
        from the clearing reference, the payer's fingerprint), so a credit sent again, in
        this message or another, posts once: the ledger answers EXISTS (a `Posted` with
        `replayed`) for the same fields, EXISTS_WITH_DIFFERENT_* (a refusal) for others.
        The risk stage screens the batch as `post_batch` does (no per-item counterparty):
        a BLOCK or unmet CHALLENGE refuses that credit alone (its decision durable first),
        a DELAY or REVIEW posts it as a hold (`Posted.risk_hold`).

        Returns:
            `CreditsPosted`, one `Posted` or `Refusal` per credit, in order.
        Error handling:
            the engine's overload or stop refuses the whole command (`Refused`
            OVERLOADED, UNAVAILABLE): nothing was admitted, the sender retries it all.

        Cost (a measured hot path): per credit two keyed BLAKE2b (id, fingerprint) and one
        record pack; one kernel call screens all, one admission posts all; a retry of
        failed credits costs one more ledger read for all of them.
        """
        caller = command.caller
        credits = command.credits
        count = len(credits)
        assert 0 < count <= INCOMING_CREDITS_MAX, count
        if caller.kind not in PARTNER_KINDS:
            raise kind_refused(caller, PARTNER_KINDS, "Crediting money from another bank")
        outcomes: list[Posted | Refusal | None] = [None] * count
        postings: list[Posting] = []
        indices: list[int] = []  # the credit index of each record
        parts: list[bytes] = []
        packed_of = self.ids.packed
        ledger_id = caller.ledger_id
        for index, credit in enumerate(credits):
            try:
                posting = self.incoming_posting(caller, credit)
            except Refused as error:
                outcomes[index] = error.refusal
                continue
            parts.append(
                packed_of(ledger_id, posting.key, 0)
                + pack_transfer_after_id(
                    CLEARING_ID, posting.credit, posting.amount_minor, posting.code, 0, 0,
                    LEDGER_CNY, 0, ledger_id, posting.user_data,
                )
            )  # fmt: skip
            postings.append(posting)
            indices.append(index)
        if parts:
            await self._post_credits(caller, postings, indices, parts, outcomes)
        posted = 0
        for outcome in outcomes:
            assert outcome is not None
            if type(outcome) is Posted:
                posted += 1
        return CreditsPosted(outcomes, posted)

    async def _post_credits(
        self,
        caller: Caller,
        postings: list[Posting],
        indices: list[int],
        parts: list[bytes],
        outcomes: list[Posted | Refusal | None],
    ) -> None:
        """Screen, admit and await the credits' records; fill in their outcomes."""
        risk = self.risk
        records = b"".join(parts)
        held: dict[int, Fired] = {}  # record index -> the hold the risk stage placed
        if risk is not None:
            screening = risk.screen(caller, records, len(parts))
            if screening is not None:
                records, held = await self._risk_credits(
                    caller, records, screening, postings, indices, outcomes
                )
                if not records:
                    return
        count = len(postings)
        barred = self.barred
        if barred:  # no await from here to `admit`: see `bar`
            keep = [
                i for i in range(count)
                if records[i * TRANSFER_SIZE : i * TRANSFER_SIZE + 16] not in barred
            ]  # fmt: skip
            if len(keep) < count:
                for i in set(range(count)).difference(keep):
                    outcomes[indices[i]] = transfer_refused(
                        R.ID_ALREADY_FAILED, "the operation was cancelled (`bar`)"
                    ).refusal
                records, postings, indices, held = _only(keep, records, postings, indices, held)
                count = len(keep)
                if not count:
                    return
        request = self.admit(caller, records, count)
        await request.done.wait()
        try:
            results = transfer_results(request)
        except (EngineOverloaded, EngineFull, EngineStopped) as error:
            raise engine_refusal(error) from None
        codes = results.result_codes()
        timestamps = results.timestamps
        offset = results.offset
        failed_before: list[int] = []
        name = caller.name
        for i, code in enumerate(codes):
            index = indices[i]
            posting = postings[i]
            if code == R.OK or code == R.EXISTS:
                fired = held.get(i)
                outcomes[index] = Posted(
                    records[i * TRANSFER_SIZE : i * TRANSFER_SIZE + 16],
                    "incoming_transfer", CLEARING_ID, posting.credit, posting.amount_minor,
                    posting.code, TransferFlags.PENDING if fired is not None else 0, 0,
                    fired.timeout_s if fired is not None else 0, name,
                    timestamps[offset + i], code == R.EXISTS,
                    fired.hold if fired is not None else "",
                    (fired.release_at_ns or fired.return_at_ns) if fired is not None else 0,
                    fired.decision_id if fired is not None else "",
                )  # fmt: skip
            elif code == R.ID_ALREADY_FAILED:
                failed_before.append(i)
            else:
                outcomes[index] = transfer_refused(code).refusal
                fired = held.get(i)
                if risk is not None and fired is not None and fired.decision is None:
                    risk.posting_failed(fired.transfer_id, code)
        for code, number in {code: codes.count(code) for code in set(codes)}.items():
            self.count_result(_RESULT_NAMES[code], number)
        if failed_before:
            await self._replayed_failures(records, failed_before, indices, outcomes)

    async def _replayed_failures(
        self,
        records: bytes,
        failed: list[int],
        indices: list[int],
        outcomes: list[Posted | Refusal | None],
    ) -> None:
        """The refusals replayed to credits whose reference failed before (one ledger read
        for all of them): the first failure's code, or a conflict if the fields differ."""
        ids = [
            int.from_bytes(records[i * TRANSFER_SIZE : i * TRANSFER_SIZE + 16], "little")
            for i in failed
        ]
        originals = await self.core.read(lambda ledger: [ledger.lookup_transfer(i) for i in ids])
        for i, original in zip(failed, originals, strict=True):
            detail = "the first credit with this reference failed"
            if original is None:
                refusal = transfer_refused(R.ID_ALREADY_FAILED, detail).refusal
            else:
                first = transfer_view(original)
                differs = _first_difference(transfer_view(records, i * TRANSFER_SIZE), first)
                if differs is not None:
                    refusal = transfer_refused(differs, detail).refusal
                else:
                    refusal = transfer_refused(first.result, detail, replayed=True).refusal
            outcomes[indices[i]] = refusal

    async def _risk_credits(
        self,
        caller: Caller,
        records: bytes,
        screening: Screening,
        postings: list[Posting],
        indices: list[int],
        outcomes: list[Posted | Refusal | None],
    ) -> tuple[bytes, dict[int, Fired]]:
        """`_risk_batch` for credits, where a BLOCK or unmet CHALLENGE refuses that credit
        only: its decision made durable, its record left out (`postings` and `indices`
        are cut to match, in place). Returns the records to admit (holds rewritten) and
        the holds by their new record index."""
        risk = self.risk
        assert risk is not None
        if not await self._drop_posted_before(screening):
            return records, {}
        refusing = {f.index: f for f in screening.fired if f.outcome in RISK_REFUSING}
        if refusing:
            await self._record_refusals(risk, caller, records, screening)
            for i, fired in refusing.items():
                outcomes[indices[i]] = risk.refusal(fired).refusal
        holds = {f.index: f for f in screening.fired if f.hold}
        if holds:
            buffer = bytearray(records)
            for i, fired in holds.items():
                offset = i * TRANSFER_SIZE
                buffer[offset : offset + TRANSFER_SIZE] = risk.hold_record(
                    records[offset : offset + TRANSFER_SIZE], fired
                )
            records = bytes(buffer)
        staged = [f for f in screening.fired if f.outcome not in RISK_REFUSING]
        if staged:
            risk.stage(
                caller, records, Screening(staged, screening.outcome, screening.version,
                screening.digest, screening.now_ns), NO_CONTEXT, _state_posted_or_held,
            )  # fmt: skip
        if not refusing:
            return records, holds
        keep = [i for i in range(len(postings)) if i not in refusing]
        records, kept_postings, kept_indices, kept_holds = _only(
            keep, records, postings, indices, holds
        )
        postings[:] = kept_postings
        indices[:] = kept_indices
        return records, kept_holds

    async def payment_return(self, command: ReturnPayment) -> Posted:
        """A partner bank returns (part of) an external transfer of ours: the money goes
        from clearing back to the account it left, as a REVERSAL of the original (so the
        ledger keeps every return and reversal of it together within its amount, and a
        same-day return restores the outflow quota as a reversal does).

        At most one return per original: the return's id is derived from the original's
        id; the partner's return id is in its fingerprint, so a retry of the same return
        meets it (replayed) and another return of the same original is a conflict
        (EXISTS_WITH_DIFFERENT_*). Only a posted EXTERNAL_TRANSFER_OUT can be returned;
        anything else is answered as a transfer that does not exist."""
        original_id = command.original_id
        raw = await self.core.read(lambda ledger: ledger.lookup_transfer(original_id))
        if raw is None:
            raise transfer_refused(R.REVERSAL_TARGET_NOT_FOUND)
        original = transfer_view(raw)
        if (
            original.code != TransferCode.EXTERNAL_TRANSFER_OUT
            or original.credit_account_id != CLEARING_ID
        ):
            raise transfer_refused(R.REVERSAL_TARGET_NOT_FOUND, "not an external transfer out")
        if original.result != R.OK:
            raise transfer_refused(R.REVERSAL_TARGET_NOT_POSTED, "the original transfer failed")
        if command.amount_minor > original.amount:
            raise transfer_refused(
                R.EXCEEDS_REVERSIBLE_AMOUNT,
                f"a return of at most the original's {original.amount} fen",
            )
        return await self.post(
            Posting(
                command.caller, f"return/{original_id:032x}", "payment_return", CLEARING_ID,
                original.debit_account_id, command.amount_minor, TransferCode.REVERSAL,
                pending_id=original_id,
                user_data=self.ids.fingerprint("return", command.return_id),
            )
        )  # fmt: skip


# Settling a hold moves nothing the hold did not decide: posted or voided as placed.
_SETTLING = TransferFlags.POST_PENDING | TransferFlags.VOID_PENDING


def _refuse_unverified_debits(unverified: set[int], records: bytes, count: int) -> None:
    """Refuse (KYC_NOT_VERIFIED, `pointer` /transfers/i in a batch) a posting that debits
    an account whose holder is not verified (`StateStore.unverified_accounts`); credits
    to it stay allowed, and so does settling a hold placed before."""
    for index in range(count):
        view = transfer_view(records, index * TRANSFER_SIZE)
        debit = view.debit_account_id
        if debit not in unverified or view.flags & _SETTLING:
            continue
        extras = {"pointer": f"/transfers/{index}"} if count > 1 else {}
        raise refused(
            Code.KYC_NOT_VERIFIED,
            f"the holder of account {debit} has not completed real-name verification",
            account_id=str(debit),
            **extras,
        )


def _barred_key(packed_id: bytes) -> bytes:
    return BARRED_PREFIX + packed_id.hex().encode()


def _only(
    keep: list[int],
    records: bytes,
    postings: list[Posting],
    indices: list[int],
    held: dict[int, Fired],
) -> tuple[bytes, list[Posting], list[int], dict[int, Fired]]:
    """The records (and their postings, credit indices and holds) at `keep`, renumbered."""
    size = TRANSFER_SIZE
    renumbered = {old: new for new, old in enumerate(keep)}
    return (
        b"".join(records[i * size : (i + 1) * size] for i in keep),
        [postings[i] for i in keep],
        [indices[i] for i in keep],
        {renumbered[i]: fired for i, fired in held.items() if i in renumbered},
    )


def _internal_refused(caller: Caller, account_id: int) -> Refused:
    return refused(
        Code.INTERNAL_ACCOUNT_NOT_ALLOWED,
        f"account {account_id} is one of the bank's own; channel {caller.name} "
        f"is of kind {caller.kind}",
    )


def _risk_locked(transfer_id: int) -> Refused:
    return refused(
        Code.RISK_HOLD_LOCKED,
        f"transfer {transfer_id:032x} is held by the risk controls: only the bank releases"
        " or returns it",
        decision_id=f"{transfer_id:032x}",
    )


def _state_refused(fired: Fired) -> str:
    return REFUSED


def _state_posted_or_held(fired: Fired) -> str:
    return HELD if fired.hold else POSTED


def _another_channels(not_found: int) -> Refused:
    """A target another channel created: rendered as `not_found` (see Code)."""
    return Refused(Refusal(Code.TRANSFER_OF_ANOTHER_CHANNEL, "", int(not_found)))


def _first_difference(retry: TransferView, first: TransferView) -> int | None:
    """The ledger's EXISTS_WITH_DIFFERENT_* code for the first field (in the kernel's order)
    in which a retry differs from the failed first request with its id; None if none."""
    if retry.flags != first.flags:
        return R.EXISTS_WITH_DIFFERENT_FLAGS
    if retry.debit_account_id != first.debit_account_id:
        return R.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID
    if retry.credit_account_id != first.credit_account_id:
        return R.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID
    if retry.amount != first.amount:
        return R.EXISTS_WITH_DIFFERENT_AMOUNT
    if retry.pending_id != first.pending_id:
        return R.EXISTS_WITH_DIFFERENT_PENDING_ID
    if retry.timeout_s != first.timeout_s:
        return R.EXISTS_WITH_DIFFERENT_TIMEOUT
    if retry.ledger != first.ledger:
        return R.EXISTS_WITH_DIFFERENT_LEDGER
    if retry.code != first.code:
        return R.EXISTS_WITH_DIFFERENT_CODE
    if retry.user_data != first.user_data:
        return R.EXISTS_WITH_DIFFERENT_USER_DATA
    return None
