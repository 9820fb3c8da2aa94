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

import dataclasses
import logging
from collections.abc import Callable, Mapping

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
    Movement,
    Posting,
    PostingBatch,
    Proof,
    RiskContext,
)
from core.services.lifecycle import Lifecycle, engine_refusal
from core.services.policy import COUNTER_KIND, INTERNAL_KIND, INTERNAL_ONLY
from core.services.records import TransferIds
from core.services.refusals import Code, Refusal, Refused, kind_refused, refused, transfer_refused
from core.services.results import BatchPosted, Posted
from core.services.risk import HELD, POSTED, REFUSED, SETTLING_FLAGS, Fired, Risk, Screening
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

PostingCheck = Callable[[Caller, bytes, int], None]
"""A per-posting check: `check(caller, records, count)` over `count` packed transfer
records (`ledger.records.transfer_view(records, 128 * index)` reads one), raising
`Refused` to refuse the request; it runs before the engine sees anything."""


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
        """
        flags = command.flags
        second_factor = False
        if command.authorize:
            consent = command.consent or Consent()
            if not self.auth.token_checked(command.caller, command.authorize, consent):
                assert consent.password is not None
                await self.auth.verify_password(command.authorize, consent.password)
            if consent.second_factor:
                flags |= TransferFlags.STRONG_AUTH
                second_factor = True
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
        decided: Fired | None = None
        if risk is not None and not flags & SETTLING_FLAGS:
            screening = risk.screen(
                caller, record, 1, command.context, command.counterparty, second_factor
            )
            if screening is not None:
                record, decided = await self._risk_single(command, record, screening)
        barred = self.barred
        if barred and packed_id in barred:  # no await from here to `admit`: see `bar`
            raise transfer_refused(R.ID_ALREADY_FAILED, "the operation was cancelled (`bar`)")
        request = self.admit(caller, record, 1)
        await request.done.wait()
        try:
            result = transfer_result(request)
        except (EngineOverloaded, EngineFull, EngineStopped) as error:
            raise engine_refusal(error) from None
        status = result.result
        if status == R.OK:
            self.count_result("ok")
        elif status == R.EXISTS:
            self.count_result("exists")
        elif status == R.ID_ALREADY_FAILED:
            self.count_result("id_already_failed")
            raise await self._replayed_failure(packed_id, record)
        else:
            self.count_result(_RESULT_NAMES[status])
            if decided is not None and risk is not None and decided.decision is None:
                risk.posting_failed(decided.transfer_id, status)
            raise transfer_refused(status)
        if decided is not None:
            hold = decided.hold
            return Posted(
                packed_id,
                command.operation,
                command.debit,
                command.credit,
                command.amount_minor,
                command.code,
                command.flags | TransferFlags.PENDING if hold else command.flags,
                command.pending_id,
                decided.timeout_s if hold else command.timeout_s,
                caller.name,
                result.timestamp,
                status == R.EXISTS,
                hold,
                # When the bank acts on the hold by itself: captures a delayed one, returns
                # a reviewed one no officer decided on.
                decided.release_at_ns or decided.return_at_ns,
                decided.decision_id,
            )
        return Posted(
            packed_id,
            command.operation,
            command.debit,
            command.credit,
            command.amount_minor,
            command.code,
            command.flags,
            command.pending_id,
            command.timeout_s,
            caller.name,
            result.timestamp,
            status == R.EXISTS,
        )

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
                if not screening.fired:
                    return records, None
        refusing = [f for f in screening.fired if f.outcome in RISK_REFUSING]
        if refusing:
            ticket = risk.stage(
                caller, records, screening, NO_CONTEXT, _state_refused,
                only=lambda fired: fired.outcome in RISK_REFUSING,
            )  # fmt: skip
            if ticket:
                await self.core.customer_state().flush_through(ticket)
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
        code = TransferCode.CASH_WITHDRAWAL
        return await self._move(move, "cash_withdrawal", move.account_id, CASH_VAULT_ID, code)

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
        if not move.reference:
            raise refused(
                Code.INVALID_FIELD,
                "the clearing reference is required",
                pointer="/clearing_reference",
            )
        move = dataclasses.replace(move, key=move.reference)
        code = TransferCode.EXTERNAL_TRANSFER_IN
        payer = move.payer
        fingerprint = 0
        number = ""
        if payer is not None:
            number = payer["account_number"]
            fingerprint = self.ids.fingerprint("payer", payer["bank_code"], number, payer["name"])
        return await self._move(
            move, "incoming_transfer", CLEARING_ID, move.account_id, code,
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


def _barred_key(packed_id: bytes) -> bytes:
    return BARRED_PREFIX + packed_id.hex().encode()


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
