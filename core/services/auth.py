"""Transaction authorization: passwords (keyed hash, attempts, lock) and tokens.

A debit of a customer account needs its holder's consent: a live transaction
token issued to this channel for this account, or the transaction password.

Wrong passwords are counted in a row, and each attempt is counted *before*
its hash is checked: the count is raised in memory in the same step of the
event loop that read it (no await in between, so concurrent guesses cannot
all pass the check), made durable, and only then is the hash checked; a
correct password gives the attempt back. So at most `password_failures_max`
guesses are ever evaluated, even when they arrive at once or the server
crashes mid-check. At the maximum the account is locked, and stays locked
(no lifting by itself the next day) until a supervisor resets the password
at a counter (`set_password` with the holder's ID number, from a counter
request naming a supervisor). The clock is injected (`Lifecycle.now_ns`), so
tests move time instead of sleeping.

Hashing runs on its own bounded pool (`passwords.HashPool`): a burst of
password checks waits there, or is refused 503, and never takes the threads
the engine's postings need.
"""

from __future__ import annotations

import logging
import secrets

import orjson

from core.services import passwords
from core.services.actors import SUPERVISOR
from core.services.commands import Caller, Consent, IssueToken, SetPassword
from core.services.lifecycle import Lifecycle
from core.services.records import NS_PER_S
from core.services.refusals import Code, refused
from core.services.results import TokenIssued
from core.services.state import (
    AccountMeta,
    Password,
    Token,
    failures_record,
    password_record,
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
        # The account's tokens are revoked in the same durable change as the password.
        await state.commit(records, deleted=state.token_keys(account_id))
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
        """Forget expired tokens (their deletion is written with the next flush)."""
        self.core.customer_state().prune_tokens(now_ns)
