"""Transaction authorization: passwords (hash, failure counter, daily lock) and tokens.

A debit of a customer account needs its holder's consent: a live transaction
token issued to this channel for this account, or the transaction password.
Wrong passwords are counted per business day; at the maximum the account is
locked until the next business day (or a counter resets the password).
The clock is injected (`Lifecycle.now_ns`), so tests move time instead of
sleeping.
"""

from __future__ import annotations

import datetime
import logging
import secrets

import anyio
import orjson

from core.services import passwords
from core.services.commands import Caller, Consent, IssueToken, SetPassword
from core.services.lifecycle import Lifecycle
from core.services.records import NS_PER_S
from core.services.refusals import Code, refused
from core.services.results import TokenIssued
from core.services.state import (
    AccountMeta,
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
        core.on_housekeeping.append(self.forget_expired)

    def meta_of(self, account_id: int) -> AccountMeta:
        meta = self.core.customer_state().accounts.get(account_id)
        if meta is None:
            raise refused(Code.CUSTOMER_ACCOUNT_NOT_FOUND, str(account_id))
        return meta

    async def verify_password(self, account_id: int, password: str) -> None:
        """Check a transaction password; count failures per business day; lock at the max."""
        state = self.core.customer_state()
        stored = state.passwords.get(account_id)
        if stored is None:
            raise refused(Code.PASSWORD_NOT_SET)
        today = self.core.today()
        day, failures = state.failures.get(account_id, (today, 0))
        if day != today:
            failures = 0
        maximum = self.core.settings.password_failures_max
        if failures >= maximum:
            raise self._locked()
        ok = await anyio.to_thread.run_sync(passwords.check_password, password, stored)
        if ok:
            if failures:
                await state.commit([failures_record(account_id, today, 0)])
            return
        failures += 1
        await state.commit([failures_record(account_id, today, failures)])
        logger.info(
            orjson.dumps(
                {"event": "password_failed", "account_id": str(account_id), "failures": failures}
            ).decode()
        )
        if failures >= maximum:
            raise self._locked()
        raise refused(Code.PASSWORD_WRONG, attempts_remaining=maximum - failures)

    def _locked(self) -> Exception:
        timezone = self.core.rules.timezone
        now = datetime.datetime.fromtimestamp(self.core.now_ns() / NS_PER_S, timezone)
        midnight = datetime.datetime.combine(
            now.date() + datetime.timedelta(days=1), datetime.time(), timezone
        )
        seconds = max(1, int((midnight - now).total_seconds()))
        return refused(
            Code.PASSWORD_LOCKED,
            "the lock lifts at the start of the next business day, or at a counter",
            retry_after_s=seconds,
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
        """The holder's change (old password) or, with `id_number`, a counter's reset."""
        account_id = command.account_id
        meta = self.meta_of(account_id)
        if command.id_number:
            customer = self.core.customer_state().customers[meta.customer_id]
            if command.id_number != customer.id_number:
                raise refused(Code.IDENTITY_MISMATCH)
            await self._store_password(account_id, command.new_password, reset=True)
            return
        await self.verify_password(account_id, command.old_password)
        await self._store_password(account_id, command.new_password)

    async def _store_password(self, account_id: int, password: str, *, reset: bool = False) -> None:
        hashed = await anyio.to_thread.run_sync(
            passwords.hash_password, password, self.core.settings.scrypt_n
        )
        records = [password_record(account_id, hashed)]
        if reset:
            records.append(failures_record(account_id, self.core.today(), 0))
        state = self.core.customer_state()
        # The account's tokens are revoked in the same durable change as the password.
        await state.commit(records, deleted=state.token_keys(account_id))
        logger.info(
            orjson.dumps(
                {"event": "password_set", "account_id": str(account_id), "reset": reset}
            ).decode()
        )

    def forget_expired(self, now_ns: int) -> None:
        """Forget expired tokens (their deletion is written with the next flush)."""
        self.core.customer_state().prune_tokens(now_ns)
