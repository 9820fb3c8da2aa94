"""Transaction authorization: passwords (keyed hash, attempts, lock), tokens,
customer sessions, and whose data a read may see.

A debit of a customer account needs its holder's consent: a live transaction
token issued to this channel for this account, or the transaction password.
A read is scoped by the caller's channel kind (`core.services.policy.READ_SCOPES`):
a customer-facing channel shows a customer session (`open_session`: the
password of one of the customer's accounts buys it, for this channel only) or
a token for the account; an ATM shows the token its PIN bought. Sessions are
kept like tokens (the SHA-256 of the bearer secret, durable, with a lifetime)
and are revoked with every password change of the customer's accounts.

Wrong passwords are counted in a row, and each attempt is counted *before*
its hash is checked: the count is raised in memory in the same step of the
event loop that read it (no await in between, so concurrent guesses cannot
all pass the check), made durable, and only then is the hash checked; a
correct password gives the attempt back. So at most `password_failures_max`
guesses are ever evaluated, even when they arrive at once or the server
crashes mid-check. At the maximum the account is locked, and stays locked
(no lifting by itself the next day) until a supervisor resets the password
at a counter (`set_password` with the holder's ID number, from a counter
request naming a supervisor), or a teller's `unlock_password` request is
approved by a supervisor (core/services/approvals.py: `unlock_password`
clears the count, the holder keeps the password). The clock is injected (`Lifecycle.now_ns`), so
tests move time instead of sleeping.

Hashing runs on its own bounded pool (`passwords.HashPool`): a burst of
password checks waits there, or is refused 503, and never takes the threads
the engine's postings need.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Container

import orjson

from core.services import passwords, policy
from core.services.actors import SUPERVISOR
from core.services.commands import (
    Caller,
    Consent,
    IssueToken,
    OpenSession,
    Proof,
    SetPassword,
)
from core.services.lifecycle import Lifecycle
from core.services.policy import ReadScope
from core.services.records import NS_PER_S
from core.services.refusals import Code, kind_refused, refused
from core.services.results import SessionOpened, TokenIssued
from core.services.state import (
    AccountMeta,
    Password,
    Session,
    Token,
    failures_record,
    password_record,
    session_record,
    token_digest,
    token_record,
)

logger = logging.getLogger("tally.services")


class Auth:
    def __init__(self, core: Lifecycle) -> None:
        self.core = core
        settings = core.settings
        self.pool = passwords.HashPool(
            settings.password_hash_threads or passwords.default_hash_threads(),
            settings.password_hash_queue_max,
        )
        self.checking: dict[int, int] = {}  # account -> its passwords being checked now
        core.on_housekeeping.append(self.forget_expired)

    def meta_of(self, account_id: int) -> AccountMeta:
        meta = self.core.customer_state().accounts.get(account_id)
        if meta is None:
            raise refused(Code.CUSTOMER_ACCOUNT_NOT_FOUND, str(account_id))
        return meta

    async def verify_password(
        self, account_id: int, password: str, pointer: str = "/password"
    ) -> None:
        """Check a transaction password: the attempt reserved first, the lock at the max."""
        state = self.core.customer_state()
        stored = state.passwords.get(account_id)
        if stored is None:
            raise refused(Code.PASSWORD_NOT_SET)
        if not passwords.well_formed(password):  # never counted: it cannot be anyone's
            raise refused(Code.INVALID_FIELD, "must be exactly 6 digits", pointer=pointer)
        settings = self.core.settings
        pepper = settings.secrets.password_pepper
        if stored.pepper_id and stored.pepper_id != passwords.pepper_id(pepper):
            logger.error(
                orjson.dumps(
                    {"event": "password_pepper_mismatch", "account_id": str(account_id)}
                ).decode()
            )
            raise refused(
                Code.UNAVAILABLE,
                "this password was hashed with another pepper: check the server's secrets file",
            )
        maximum = settings.password_failures_max
        # From this read to the reservation below nothing awaits: concurrent attempts see
        # each other's reservations and at most `maximum` of them reach the hash.
        _, failures = state.failures.get(account_id, (0, 0))
        checking = self.checking
        if failures >= maximum:
            if failures - checking.get(account_id, 0) >= maximum:
                raise self._locked()
            # The attempts left are all reserved by checks still running: not locked yet.
            raise refused(
                Code.PASSWORD_CHECKS_BUSY,
                "other checks of this account's password are in progress",
                retry_after_s=passwords.BUSY_RETRY_AFTER_S,
            )
        self.pool.admit()  # a full pool refuses before anything is counted
        checking[account_id] = checking.get(account_id, 0) + 1
        try:
            # `commit` applies the reservation in memory before its first await.
            await state.commit([failures_record(account_id, self.core.today(), failures + 1)])
            ok = await self.pool.run(passwords.check_password, password, stored, pepper)
            rehashed: Password | None = None
            if ok and passwords.needs_rehash(
                stored, pepper, settings.scrypt_n, settings.scrypt_r, settings.scrypt_p
            ):
                rehashed = await self.pool.run(
                    passwords.hash_password,
                    password,
                    pepper,
                    settings.scrypt_n,
                    settings.scrypt_r,
                    settings.scrypt_p,
                )
        finally:
            self.pool.leave()
            left = checking.pop(account_id) - 1
            if left:
                checking[account_id] = left
        _, count = state.failures.get(account_id, (0, 0))
        if ok:
            # The holder knows it: the failures in a row are cleared; the attempts still
            # being checked stay reserved (each counts as a failure unless it succeeds).
            records = [failures_record(account_id, self.core.today(), min(count, left))]
            if rehashed is not None and state.passwords.get(account_id) is stored:
                records.append(password_record(account_id, rehashed))  # not reset meanwhile
            await state.commit(records)
            return
        logger.info(
            orjson.dumps(
                {"event": "password_failed", "account_id": str(account_id), "failures": count}
            ).decode()
        )
        if count >= maximum:
            raise self._locked()
        raise refused(Code.PASSWORD_WRONG, attempts_remaining=maximum - count)

    def unlock_check(self, account_id: int) -> None:
        """What an `unlock_password` request needs (core/services/approvals.py): a
        customer account with a transaction password (CUSTOMER_ACCOUNT_NOT_FOUND,
        PASSWORD_NOT_SET)."""
        state = self.core.customer_state()
        if account_id not in state.accounts:
            raise refused(Code.CUSTOMER_ACCOUNT_NOT_FOUND, str(account_id))
        if account_id not in state.passwords:
            raise refused(Code.PASSWORD_NOT_SET)

    def unlock_password(self, account_id: int) -> dict[str, object]:
        """Lift a password lock (an approved `unlock_password` request): the wrong
        passwords in a row are set to 0; the password itself stays, the holder uses it
        again. Staged, not awaited (no await in here): the change rides in the
        PUT_STATE entry of the next group, the one the approval's "applied" record
        joins, so both are durable together. Idempotent (a re-run sets 0 again).
        Returns {account_id, failures_before, locked_before}."""
        self.unlock_check(account_id)
        state = self.core.customer_state()
        _, before = state.failures.get(account_id, (0, 0))
        locked = before >= self.core.settings.password_failures_max
        state.stage([failures_record(account_id, self.core.today(), 0)])
        logger.info(
            orjson.dumps(
                {"event": "password_unlocked", "account_id": str(account_id),
                 "failures_before": before}
            ).decode()
        )  # fmt: skip
        return {"account_id": str(account_id), "failures_before": before, "locked_before": locked}

    def _locked(self) -> Exception:
        return refused(
            Code.PASSWORD_LOCKED,
            "too many wrong passwords: the holder resets it at a counter, with a supervisor",
        )

    async def authorize_debit(self, caller: Caller, account_id: int, consent: Consent) -> None:
        """The customer behind a debit proves it: a live token for this account, or the password."""
        if not self.token_checked(caller, account_id, consent):
            assert consent.password is not None
            await self.verify_password(account_id, consent.password)

    def token_checked(self, caller: Caller, account_id: int, consent: Consent) -> bool:
        """`authorize_debit` up to the password: True if a valid token authorized the
        debit, False if the password must still be verified; raises the refusals."""
        if account_id not in self.core.customer_state().accounts:
            raise refused(Code.DEBIT_ACCOUNT_NOT_CUSTOMER, str(account_id))
        if consent.token:
            token = self.core.customer_state().tokens.get(token_digest(consent.token))
            if token is None or token.expires_ns <= self.core.now_ns():
                raise refused(Code.TOKEN_INVALID)
            if token.account_id != account_id or token.channel != caller.name:
                raise refused(Code.TOKEN_NOT_FOR_ACCOUNT)
            return True
        if consent.password is None:
            raise refused(
                Code.AUTHENTICATION_REQUIRED,
                "send `password` in the body or a Tally-Transaction-Token header",
            )
        return False

    async def issue_token(self, command: IssueToken) -> TokenIssued:
        account_id = command.account_id
        self.meta_of(account_id)
        await self.verify_password(account_id, command.password)
        ttl = self.core.settings.token_ttl_s
        token = secrets.token_urlsafe(24)
        expires_ns = self.core.now_ns() + ttl * NS_PER_S
        # Durable before it is handed out, so it is honoured after a failover too.
        entry = Token(account_id, command.caller.name, expires_ns)
        await self.core.customer_state().commit([token_record(token_digest(token), entry)])
        return TokenIssued(token, account_id, ttl, expires_ns)

    async def set_password(self, command: SetPassword) -> None:
        """The holder's change (old password), or a counter's reset: the holder's ID number
        checked by a supervisor named in the signed request (a teller alone, or the ID
        number alone, is refused); the reset lifts the lock."""
        account_id = command.account_id
        meta = self.meta_of(account_id)
        customer = self.core.customer_state().customers[meta.customer_id]
        if command.id_number:
            caller = command.caller
            if caller.kind != "counter" or caller.actor_role != SUPERVISOR:
                raise refused(
                    Code.SUPERVISOR_REQUIRED,
                    "a password reset needs a supervisor named in the signed counter request"
                    f" (acting: {caller.actor_role or 'nobody'})",
                )
            if command.id_number != customer.id_number:
                raise refused(Code.IDENTITY_MISMATCH)
            hashed = await self.new_password(command.new_password, customer.id_number)
            await self._store_password(account_id, hashed, caller, reset=True)
            return
        self.check_new_password(command.new_password, customer.id_number)  # before the old
        await self.verify_password(account_id, command.old_password, "/old_password")
        hashed = await self.new_password(command.new_password, customer.id_number)
        await self._store_password(account_id, hashed, command.caller)

    async def new_password(
        self, password: str, id_number: str, pointer: str = "/new_password"
    ) -> Password:
        """The keyed hash of a new password, once it is well formed and not weak."""
        self.check_new_password(password, id_number, pointer)
        settings = self.core.settings
        self.pool.admit()
        try:
            return await self.pool.run(
                passwords.hash_password,
                password,
                settings.secrets.password_pepper,
                settings.scrypt_n,
                settings.scrypt_r,
                settings.scrypt_p,
            )
        finally:
            self.pool.leave()

    def check_new_password(
        self, password: str, id_number: str, pointer: str = "/new_password"
    ) -> None:
        """Refuse a new password that is not exactly 6 digits (422) or is weak (422)."""
        if not passwords.well_formed(password):
            raise refused(Code.INVALID_FIELD, "must be exactly 6 digits", pointer=pointer)
        reason = passwords.weakness(password, id_number)
        if reason is not None:
            raise refused(Code.PASSWORD_WEAK, reason, pointer=pointer, reason=reason)

    async def _store_password(
        self, account_id: int, hashed: Password, caller: Caller, *, reset: bool = False
    ) -> None:
        records = [password_record(account_id, hashed)]
        if reset:
            records.append(failures_record(account_id, self.core.today(), 0))
        state = self.core.customer_state()
        # The account's tokens, and the sessions of its holder (on every channel), are
        # revoked in the same durable change as the password.
        revoked = state.token_keys(account_id)
        meta = state.accounts.get(account_id)
        if meta is not None:
            revoked += state.session_keys(meta.customer_id)
        await state.commit(records, deleted=revoked)
        logger.info(
            orjson.dumps(
                {
                    "event": "password_set",
                    "account_id": str(account_id),
                    "reset": reset,
                    "channel": caller.name,
                    "actor": caller.actor_id or None,
                    "actor_role": caller.actor_role or None,
                }
            ).decode()
        )

    def forget_expired(self, now_ns: int) -> None:
        """Forget expired tokens and sessions (their deletion is written with the next flush)."""
        self.core.customer_state().prune_tokens(now_ns)

    # --- customer sessions ----------------------------------------------------------

    async def open_session(self, command: OpenSession) -> SessionOpened:
        """A session for the customer holding `command.account_id`, at this channel only,
        bought with that account's transaction password (failures counted and locked
        exactly as for a debit)."""
        meta = self.meta_of(command.account_id)
        if meta.closed:
            raise refused(Code.CUSTOMER_ACCOUNT_NOT_FOUND, str(command.account_id))
        await self.verify_password(command.account_id, command.password)
        ttl = self.core.settings.session_ttl_s
        secret = secrets.token_urlsafe(24)
        expires_ns = self.core.now_ns() + ttl * NS_PER_S
        entry = Session(meta.customer_id, command.caller.name, expires_ns)
        # Durable before it is handed out, so it is honoured after a failover too.
        await self.core.customer_state().commit([session_record(token_digest(secret), entry)])
        logger.info(
            orjson.dumps(
                {
                    "event": "session_opened",
                    "customer_id": meta.customer_id,
                    "channel": command.caller.name,
                }
            ).decode()
        )
        return SessionOpened(secret, meta.customer_id, ttl, expires_ns)

    async def end_session(self, caller: Caller, session: str) -> None:
        """End the session presented (the customer logs out)."""
        self.session_customer(caller, session)
        state = self.core.customer_state()
        await state.commit([], deleted=[f"session/{token_digest(session)}".encode()])

    def session_customer(self, caller: Caller, session: str) -> str:
        """The customer a live session of this channel acts for (`Refused` SESSION_INVALID)."""
        entry = self.core.customer_state().sessions.get(token_digest(session))
        if entry is None or entry.expires_ns <= self.core.now_ns() or entry.channel != caller.name:
            raise refused(Code.SESSION_INVALID)
        return entry.customer_id

    # --- whose data a read may see (core.services.policy.READ_SCOPES) ----------------

    def _token_account(self, caller: Caller, token: str) -> int:
        entry = self.core.customer_state().tokens.get(token_digest(token))
        if entry is None or entry.expires_ns <= self.core.now_ns():
            raise refused(Code.TOKEN_INVALID)
        if entry.channel != caller.name:
            raise refused(Code.TOKEN_NOT_FOR_ACCOUNT)
        return entry.account_id

    def _proven(self, caller: Caller, scope: ReadScope, proof: Proof) -> tuple[str, int]:
        """(customer id, account id) the proof of a one-customer or one-account channel
        speaks for (one of them set); refuses a read without a valid proof."""
        if proof.token:
            return "", self._token_account(caller, proof.token)
        if scope == ReadScope.CUSTOMER and proof.session:
            return self.session_customer(caller, proof.session), 0
        raise refused(
            Code.READ_AUTHENTICATION_REQUIRED,
            "send the customer's Tally-Session or a Tally-Transaction-Token for the account"
            if scope == ReadScope.CUSTOMER
            else "send a Tally-Transaction-Token for the account (the card's PIN buys one)",
        )

    def party_to(self, caller: Caller, accounts: tuple[int, int], proof: Proof) -> bool:
        """Whether the customer a one-customer (or one-account) channel acts for, by its
        `proof`, holds one of `accounts` (a hold's payer or merchant). Channels that act for
        a teller or the bank are party to anything their channel created: True.
        `Refused` CUSTOMER_PROOF_REQUIRED without a proof, or the proof's own refusal."""
        scope = policy.read_scope(caller)
        if scope not in (ReadScope.CUSTOMER, ReadScope.ACCOUNT):
            return True
        if not proof.token and not (scope == ReadScope.CUSTOMER and proof.session):
            raise refused(Code.CUSTOMER_PROOF_REQUIRED)
        customer_id, proven_account = self._proven(caller, scope, proof)
        if proven_account:
            return proven_account in accounts
        known = self.core.customer_state().accounts
        return any(
            meta is not None and meta.customer_id == customer_id
            for meta in (known.get(account_id) for account_id in accounts)
        )

    def readable_account(self, caller: Caller, account_id: int, proof: Proof) -> None:
        """Refuse unless `caller` may read `account_id` (its balance, its history).

        Checked before the account is looked up, so an account the caller may not read
        answers the same whether it exists or not.
        """
        scope = policy.read_scope(caller)
        if scope == ReadScope.BANK:
            return
        if scope == ReadScope.NONE:
            raise kind_refused(caller, policy.READ_KINDS, "Reading an account")
        meta = self.core.customer_state().accounts.get(account_id)
        if scope == ReadScope.CUSTOMERS:
            if meta is None:  # a bank-internal account: the internal channel's alone
                raise refused(Code.CUSTOMER_ACCOUNT_NOT_FOUND, str(account_id))
            return
        customer_id, proven_account = self._proven(caller, scope, proof)
        if proven_account:
            if proven_account != account_id:
                raise refused(Code.TOKEN_NOT_FOR_ACCOUNT)
            return
        if meta is None or meta.customer_id != customer_id:
            raise refused(Code.READ_NOT_IN_SCOPE, str(account_id))

    def readable_customer(self, caller: Caller, customer_id: str, proof: Proof) -> None:
        """Refuse unless `caller` may read customer `customer_id` (name, accounts)."""
        scope = policy.read_scope(caller)
        if scope in (ReadScope.BANK, ReadScope.CUSTOMERS):
            return
        if scope != ReadScope.CUSTOMER:
            raise kind_refused(caller, policy.SERVING_KINDS, "Reading a customer")
        if not proof.session:
            raise refused(Code.READ_AUTHENTICATION_REQUIRED, "send the customer's Tally-Session")
        if self.session_customer(caller, proof.session) != customer_id:
            raise refused(Code.READ_NOT_IN_SCOPE, customer_id)

    def transfer_reader(self, caller: Caller, proof: Proof) -> Container[int] | None:
        """The accounts whose transfers `caller` may read: None for every transfer (the
        bank), else a set a transfer must touch (a counter: every customer account).
        Refuses at once a caller that may read none, or shows no valid proof."""
        scope = policy.read_scope(caller)
        if scope == ReadScope.BANK:
            return None
        if scope == ReadScope.NONE:
            raise kind_refused(caller, policy.READ_KINDS, "Reading a transfer")
        state = self.core.customer_state()
        if scope == ReadScope.CUSTOMERS:
            return state.accounts.keys()  # a view: nothing copied
        customer_id, proven_account = self._proven(caller, scope, proof)
        if proven_account:
            return frozenset((proven_account,))
        customer = state.customers.get(customer_id)
        return frozenset(customer.accounts) if customer is not None else frozenset()
