"""The ISO 8583 adapter: one message in, the services called, one response out.

`Iso8583Adapter.handle(raw)` is everything between a frame and its response
frame (the listener, channels/iso8583/server.py, owns the connections). In
order, and nothing is posted before the first three pass:

1. parse (`spec.parse`); a malformed message is answered 30 when it can be
   identified (a request MTI and a known terminal id before the fault), else
   only logged;
2. the terminal (field 41) must be in the terminal registry (else 03,
   unsigned: there is no key to sign with);
3. the MAC (64 or 128) must verify under the terminal's MAC key (else 63);
   until the bank has recovered (`Lifecycle.ready`) every message is then 91; a 0100
   or 0200 takes a token from its channel's rate limit, the bucket the channel's HTTP
   requests share (channels/tier.py; over it: 91);
4. the transaction (MTI + field 3) must be one its kind and its channel may
   ask for (else 58), the fields it needs present (else 30);
5. the PIN block (52) is decrypted with the terminal's PIN key: the PIN is the
   card account's transaction password (wrong: 55, locked: 75);
6. the services' typed command is built and called; the typed result, or the
   refusal through the one table (channels/iso8583/codes.py), becomes the
   response, which echoes 2, 3, 4, 7, 11, 12, 13, 32, 37, 41, 42, 49 (and 70,
   90, 102, 103 when sent), adds 39, 38 on an approved posting and 54 on a
   balance enquiry, and is MACed.

What each message becomes (the terminal's channel is the `Caller`):

    0200 01 cash withdrawal   Payments.cash_withdrawal (card account -> cash vault)
    0200 00 purchase          Payments.purchase: one posting card account -> the
                              terminal's merchant (no hold, nothing to capture)
    0200 31 balance enquiry   Reads.account (nothing posted): 54 = ledger, available
    0200 40 transfer          Payments.transfer 102 (the card's account) -> 103
    0100 00 authorization     Payments.payment: a hold that lapses after its timeout
    0400    reversal          of the original named by field 90: Payments.reversal
                              (cash, transfer, a purchase) or Payments.void (an
                              authorization)
    0800    network           sign-on 001, sign-off 002, echo 301: 00; key exchange
                              161: a new PIN or MAC key (53 says which) in field 48,
                              under the terminal's master key (none: 40)

Idempotency. The operation key of a message is terminal id + STAN + field 7
(`spec.operation_key`); the services derive the transfer ids from the channel
and that key, so a repeated
message meets its first posting and is answered as the first was (same 39,
same 38). A repeat whose original was reversed since is answered 94.

Consent. A PIN is checked once by the services (`Auth.issue_token`: the
keyed scrypt hash, counted failures, the lock) and buys a transaction token
for the card's account at the terminal's channel, exactly as an ATM does over
HTTP (card + PIN buy a token; core/services/policy.py: an ATM reads the
account its PIN's token proves). The adapter keeps the token, keyed by a
keyed hash of channel + account + PIN (the PIN itself is not kept), until
shortly before it expires (`Settings.token_ttl_s`), and consents to the debits
with it: a password check costs 30-60 ms of CPU on purpose, so checking it on
every message would cap a whole ATM network at a few hundred messages a
second. A wrong PIN never matches a kept token, so it always reaches the
password check and is counted; a token revoked by a password change is
dropped and the PIN checked again. After a wrong PIN (or the lock) was
answered for an account, its next PIN goes to the password check whatever is
kept: a good one clears the count of wrong ones, a locked account is 75.

Reversals and their originals. A terminal that timed out sends a 0400 for its
original, and the two may cross: the 0400 can arrive first. Reversal wins,
whatever the order: a 0400 first cancels its original's operation key with the
payments service (`Payments.bar`: durable, in force before it returns, for the
transfer log's retention), then asks the services to reverse the original.
Found: reversed (00; already reversed or declined: 00, nothing is left
posted). Not found: 25. The original, when it arrives (also after a restart),
or a repeat of it, is refused by the payments service before it reaches the
engine (ID_ALREADY_FAILED: 94); one that was queued before the bar is found by
the reversal's read, which runs after it, and reversed. So an original is never
left posted after its reversal was asked for.

Cost per financial message on the hot path (measured figures in
docs/iso8583.md): the parse, a MAC check, a PIN block, one keyed hash of the
PIN, a dict lookup (the kept token), one service call
(one posting), the response and its MAC. Nothing is logged per message.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import secrets
from typing import Final, TypeVar

import anyio
import orjson

from channels.iso8583 import keys, spec
from channels.iso8583.codes import (
    APPROVED,
    FORMAT_ERROR,
    FUNCTION_NOT_SUPPORTED,
    INCORRECT_PIN,
    INVALID_AMOUNT,
    INVALID_CARD,
    INVALID_MERCHANT,
    INVALID_TRANSACTION,
    ISSUER_UNAVAILABLE,
    NOT_PERMITTED_TERMINAL,
    SECURITY_VIOLATION,
    SYSTEM_MALFUNCTION,
    UNABLE_TO_LOCATE,
    ledger_result,
    response_code,
    risk_hold_code,
)
from channels.iso8583.keys import KeyStore, PinBlockError, UnknownKeyError
from channels.iso8583.services import TerminalServices
from channels.iso8583.spec import FormatError, Message
from channels.iso8583.terminals import (
    AUTHORIZATION,
    BALANCE_ENQUIRY,
    CASH_WITHDRAWAL,
    PURCHASE,
    REVERSAL,
    TRANSACTIONS_OF_KIND,
    TRANSFER,
    Terminal,
    Terminals,
)
from core.link.client import LinkOverloaded, LinkUnavailable
from core.services.commands import Consent, IssueToken, Movement, Proof
from core.services.refusals import Code, Refused
from core.services.results import Posted
from ledger.types import CreateTransferResult

logger = logging.getLogger("tally.iso8583")
R = CreateTransferResult
NS_PER_S: Final = 1_000_000_000
K = TypeVar("K")
V = TypeVar("V")

# Fields a response echoes from its request when the request has them: the profile's
# (docs/iso8583.md), and those that say what a network message, a reversal or a transfer
# was about.
ECHOED_PROFILE: Final = ("2", "3", "4", "7", "11", "12", "13", "32", "37", "41", "42", "49")
ECHOED: Final = (*ECHOED_PROFILE, "70", "90", "102", "103")
CAPTURE_SUFFIX: Final = "/capture"  # a purchase's capture: the purchase's key + this
VOID_SUFFIX: Final = "/void"  # a reversal that voids a hold: the reversal's key + this
PIN_SIZE: Final = 6  # the PIN is the account's transaction password: 6 digits
ACCOUNT_DIGITS_MAX: Final = 19
# Kept tokens: at most this many (the oldest dropped first), renewed this long before
# they expire (or a quarter of their lifetime, if shorter) so none expires in flight.
TOKENS_MAX: Final = 200_000
TOKEN_RENEW_MARGIN_S: Final = 30
# What takes a token from the channel's rate limit: the requests that post or read. A
# reversal (0400) is never refused for the rate: it only takes money back, and a terminal
# that timed out repeats it until answered; network management (0800) posts nothing.
RATE_LIMITED_MTIS: Final = frozenset({spec.MTI_AUTHORIZATION_REQUEST, spec.MTI_FINANCIAL_REQUEST})
# A PIN the services refused: the account's next PIN is checked again (`_doubted`).
_PIN_REFUSED: Final = frozenset({Code.PASSWORD_WRONG, Code.PASSWORD_LOCKED})
# A kept token the services no longer honour (a password change revoked it).
_STALE_TOKEN: Final = frozenset({Code.TOKEN_INVALID, Code.TOKEN_NOT_FOR_ACCOUNT})
# What a reversal meets when nothing is left posted: its original was reversed already
# (by another 0400), declined, or (a hold) voided, lapsed or never held money.
_NOTHING_LEFT: Final = frozenset(
    {
        R.EXCEEDS_REVERSIBLE_AMOUNT,
        R.REVERSAL_TARGET_NOT_POSTED,
        R.PENDING_TRANSFER_ALREADY_VOIDED,
        R.PENDING_TRANSFER_EXPIRED,
        R.PENDING_TRANSFER_NOT_PENDING,
    }
)
_NOT_FOUND: Final = frozenset({R.REVERSAL_TARGET_NOT_FOUND, R.PENDING_TRANSFER_NOT_FOUND})
_KNOWN_TRANSACTIONS: Final = frozenset().union(*TRANSACTIONS_OF_KIND.values())
# The fields each request needs beyond the terminal id and its MAC.
_NEEDED: Final = {
    spec.MTI_FINANCIAL_REQUEST: ("2", "3", "7", "11"),
    spec.MTI_AUTHORIZATION_REQUEST: ("2", "3", "4", "7", "11"),
    spec.MTI_REVERSAL_REQUEST: ("3", "7", "11", "90"),
    spec.MTI_NETWORK_REQUEST: ("7", "11", "70"),
}


class Iso8583Adapter:
    """Answers terminals' ISO 8583 messages with the services of one `Bank`.

    Args:
        services: the bank's services (channels/iso8583/services.py): in this process
            (shared with the HTTP app), or the core's over the core link (a front-end).
        terminals: the terminal registry, resolved against the channel registry.
        keys: the terminals' PIN and MAC keys (`SoftwareKeyStore`, or an HSM's).
        authorization_timeout_s: how long a 0100's hold stands before it lapses
            (0: the payments service's default).
    """

    def __init__(
        self,
        services: TerminalServices,
        terminals: Terminals,
        keys: KeyStore,
        *,
        authorization_timeout_s: int = 0,
    ) -> None:
        self.services = services
        self.terminals = terminals
        self.keys = keys
        self.authorization_timeout_s = authorization_timeout_s
        # digest of (channel, account, PIN) -> (token, expires_ns); (channel, account) ->
        # the newest token (a void's proof at a one-account channel: the hold's payer).
        self._tokens: dict[bytes, tuple[str, int]] = {}
        self._account_tokens: dict[tuple[int, int], tuple[str, int]] = {}
        self._issuing: dict[bytes, anyio.Event] = {}
        # (channel, account) -> None: a wrong PIN (or the lock) was answered for the account
        # here since its last good one; its next PIN is checked by the services even if a
        # kept token matches, so a good PIN clears the count of wrong ones (and a lock is
        # answered 75), as without kept tokens.
        self._doubted: dict[tuple[int, int], None] = {}
        self._pin_hasher = hashlib.blake2b(
            key=secrets.token_bytes(32), digest_size=16, person=b"tally-iso-pin"
        )
        # Counters for the metrics and the tests (plain ints, read at scrape time).
        self.answered: dict[str, int] = {}

    # --- one message -----------------------------------------------------------------

    async def handle(self, raw: bytes) -> bytes | None:
        """The response to one message (without its frame), or None when it has none.

        Returns:
            the response bytes, MACed with the terminal's key when the terminal is
            known; None for a message that cannot be answered (not a request MTI, or
            malformed before its terminal id) -- logged.
        Error handling:
            every refusal of the services is an answer (codes.py); a key the key store
            lost is answered 96 and logged. In a front-end, the core out of reach before
            the message was sent to it (or its window full) is 91; a message whose
            outcome the lost link left unknown is not answered (logged): its terminal
            times out and reverses or repeats it, which its operation key resolves.
            Anything else is a defect and propagates.
        """
        try:
            message = spec.parse(raw)
        except FormatError as error:
            return self._format_error(error)
        mti = message["t"]
        response_mti = spec.RESPONSE_MTI.get(str(mti))
        terminal_id = message.get("41")
        if response_mti is None:
            _event("iso8583_not_a_request", mti=mti, terminal=terminal_id)
            return None
        terminal = self.terminals.get(terminal_id) if isinstance(terminal_id, str) else None
        if terminal is None:
            _event(
                "iso8583_unknown_terminal", mti=mti, terminal=terminal_id, stan=message.get("11")
            )
            return self._answer(message, response_mti, INVALID_MERCHANT, None)
        mac_key: bytes | None = None
        try:
            if terminal.master_key_id:  # its keys may have been exchanged elsewhere
                exchanged = await self.services.exchanged_keys(terminal.terminal_id)
                if exchanged is not None:
                    self.keys.install_exchanged(terminal.terminal_id, exchanged)
            mac_key = self.keys.mac_key(terminal)
            code = spec.message_mac(message)
            if code is None or not keys.verify(spec.mac_data(raw), code, mac_key):
                _event(
                    "iso8583_bad_mac",
                    mti=mti,
                    terminal=terminal_id,
                    stan=message.get("11"),
                    mac="absent" if code is None else "wrong",
                )
                return self._answer(message, response_mti, SECURITY_VIOLATION, mac_key)
            if not self.services.ready:  # recovering: every service would refuse (NOT_READY)
                return self._answer(message, response_mti, ISSUER_UNAVAILABLE, mac_key)
            if mti in RATE_LIMITED_MTIS and await self.services.over_rate(terminal.caller.name):
                return self._answer(message, response_mti, ISSUER_UNAVAILABLE, mac_key)
            for name in _NEEDED[str(mti)]:
                if name not in message:
                    _event(
                        "iso8583_field_missing",
                        mti=mti,
                        terminal=terminal_id,
                        stan=message.get("11"),
                        field=name,
                    )
                    return self._answer(message, response_mti, FORMAT_ERROR, mac_key)
            if mti == spec.MTI_NETWORK_REQUEST:
                return await self._network(terminal, message, response_mti, mac_key)
            if mti == spec.MTI_REVERSAL_REQUEST:
                return await self._reversal(terminal, message, response_mti, mac_key)
            return await self._financial(terminal, message, response_mti, mac_key)
        except UnknownKeyError as error:
            _event("iso8583_key_missing", terminal=terminal_id, reason=str(error))
            return self._answer(message, response_mti, SYSTEM_MALFUNCTION, None)
        except (LinkUnavailable, LinkOverloaded) as error:
            if isinstance(error, LinkUnavailable) and error.unknown:
                _event("iso8583_outcome_unknown", mti=mti, terminal=terminal_id,
                       stan=message.get("11"), reason=str(error))  # fmt: skip
                return None
            return self._answer(message, response_mti, ISSUER_UNAVAILABLE, mac_key)

    def _format_error(self, error: FormatError) -> bytes | None:
        fields = error.fields
        response_mti = spec.RESPONSE_MTI.get(error.mti or "")
        terminal_id = error.terminal
        _event(
            "iso8583_format_error",
            mti=error.mti,
            terminal=terminal_id,
            stan=error.stan,
            field=error.field,
            reason=error.reason,
        )
        if response_mti is None or terminal_id is None:
            return None  # nothing to answer to, or nobody to match the answer to
        terminal = self.terminals.get(terminal_id)
        if terminal is None:
            return self._answer(fields, response_mti, INVALID_MERCHANT, None)
        try:
            mac_key = self.keys.mac_key(terminal)
        except UnknownKeyError:
            return self._answer(fields, response_mti, FORMAT_ERROR, None)
        return self._answer(fields, response_mti, FORMAT_ERROR, mac_key)

    def _answer(
        self,
        message: Message,
        response_mti: str,
        code: str,
        mac_key: bytes | None,
        authorization: str = "",
        balances: str = "",
        new_key: str = "",
    ) -> bytes:
        """The response: the echoed fields, 38 (approved postings), 39, 48 and 53 (a key
        exchange's), 54; MACed."""
        response: Message = {"t": response_mti}
        for name in ECHOED:
            value = message.get(name)
            if value is not None:
                response[name] = value
        if authorization:
            response["38"] = authorization
        response["39"] = code
        if new_key:
            response["48"] = new_key
            response["53"] = message["53"]
        if balances:
            response["54"] = balances
        self.answered[code] = self.answered.get(code, 0) + 1
        if mac_key is None:
            return spec.build(response)
        return spec.build_signed(response, functools.partial(keys.mac, key=mac_key))

    async def _network(
        self, terminal: Terminal, message: Message, response_mti: str, mac_key: bytes
    ) -> bytes:
        network = message["70"]
        if network == spec.NETWORK_KEY_EXCHANGE:
            return await self._key_exchange(terminal, message, response_mti, mac_key)
        # Sign-on, sign-off, echo: the terminal is known and signs.
        code = APPROVED if network in spec.NETWORK_CODES else INVALID_TRANSACTION
        return self._answer(message, response_mti, code, mac_key)

    async def _key_exchange(
        self, terminal: Terminal, message: Message, response_mti: str, mac_key: bytes
    ) -> bytes:
        """0800 161: a new PIN or MAC key (field 53 says which) for this terminal, sent in
        field 48 under its master key; 40 for a terminal without one. The answer is MACed
        with the key the request was (a new MAC key is used from the next message on)."""
        if not terminal.master_key_id:
            return self._answer(message, response_mti, FUNCTION_NOT_SUPPORTED, mac_key)
        usage = spec.KEY_EXCHANGE_USAGE.get(str(message.get("53", "")))
        if usage is None:
            _event(
                "iso8583_field_missing",
                mti=message["t"],
                terminal=terminal.terminal_id,
                stan=message.get("11"),
                field="53",
            )
            return self._answer(message, response_mti, FORMAT_ERROR, mac_key)
        exchanged = await self.services.exchange_key(terminal.terminal_id, usage)
        if exchanged is None:
            return self._answer(message, response_mti, FUNCTION_NOT_SUPPORTED, mac_key)
        _event(
            "iso8583_key_exchanged",
            terminal=terminal.terminal_id,
            usage=usage,
            check_value=exchanged[1],
        )
        new_key = spec.key_exchange_field(*exchanged)
        return self._answer(message, response_mti, APPROVED, mac_key, new_key=new_key)

    # --- 0100 and 0200 -----------------------------------------------------------------

    async def _financial(
        self, terminal: Terminal, message: Message, response_mti: str, mac_key: bytes
    ) -> bytes:
        mti = str(message["t"])
        processing = str(message["3"])
        transaction = (mti, processing[:2])
        if transaction not in terminal.allowed:
            known = transaction in _KNOWN_TRANSACTIONS
            code = NOT_PERMITTED_TERMINAL if known else INVALID_TRANSACTION
            return self._answer(message, response_mti, code, mac_key)
        pan = str(message["2"])
        currency = message.get("49")
        if currency is not None and currency != spec.CURRENCY_CNY:
            return self._answer(message, response_mti, INVALID_TRANSACTION, mac_key)
        amount = 0
        if transaction != BALANCE_ENQUIRY:
            field4 = message.get("4")
            if field4 is None:
                return self._answer(message, response_mti, FORMAT_ERROR, mac_key)
            amount = spec.amount_minor(str(field4))
            if amount <= 0:
                return self._answer(message, response_mti, INVALID_AMOUNT, mac_key)
        block = message.get("52")
        if not isinstance(block, bytes):
            return self._answer(message, response_mti, INCORRECT_PIN, mac_key)
        try:
            pin = keys.clear_pin(block, pan, self.keys.pin_key(terminal))
        except (PinBlockError, ValueError):
            return self._answer(message, response_mti, INCORRECT_PIN, mac_key)
        if len(pin) != PIN_SIZE:
            return self._answer(message, response_mti, INCORRECT_PIN, mac_key)
        key = spec.operation_key(terminal.terminal_id, str(message["11"]), str(message["7"]))
        account_id = int(pan)
        try:
            for attempt in range(2):
                token = await self._token(terminal, account_id, pin, renew=bool(attempt))
                try:
                    if transaction == CASH_WITHDRAWAL:
                        return await self._cash(terminal, message, key, amount, token, mac_key)
                    if transaction == PURCHASE:
                        return await self._pay_merchant(
                            terminal, message, key, amount, token, mac_key, hold=False
                        )
                    if transaction == AUTHORIZATION:
                        return await self._pay_merchant(
                            terminal, message, key, amount, token, mac_key, hold=True
                        )
                    if transaction == TRANSFER:
                        return await self._transfer(terminal, message, key, amount, token, mac_key)
                    assert transaction == BALANCE_ENQUIRY, transaction
                    return await self._balance(terminal, message, token, mac_key)
                except Refused as error:
                    if attempt or error.refusal.code not in _STALE_TOKEN:
                        raise
                    self._forget_token(terminal, account_id, pin)
            raise AssertionError("unreachable: the second attempt returns or raises")
        except Refused as error:
            if error.refusal.code in _PIN_REFUSED:
                _bounded_put(
                    self._doubted, (terminal.caller.ledger_id, account_id), None, TOKENS_MAX
                )
            return self._answer(message, response_mti, response_code(error.refusal), mac_key)

    async def _cash(
        self,
        terminal: Terminal,
        message: Message,
        key: str,
        amount: int,
        token: str,
        mac_key: bytes,
    ) -> bytes:
        move = Movement(terminal.caller, key, int(str(message["2"])), amount, Consent(token))
        posted = await self.services.cash_withdrawal(move)  # a risk hold: returned at once
        return self._posted(message, posted, mac_key)

    async def _transfer(
        self,
        terminal: Terminal,
        message: Message,
        key: str,
        amount: int,
        token: str,
        mac_key: bytes,
    ) -> bytes:
        pan = str(message["2"])
        source = message.get("102", pan)
        target = message.get("103")
        response_mti = spec.MTI_FINANCIAL_RESPONSE
        if target is None:
            return self._answer(message, response_mti, FORMAT_ERROR, mac_key)
        if source != pan:  # the PIN consents for the card's account, no other
            return self._answer(message, response_mti, INVALID_TRANSACTION, mac_key)
        if not _account_number(target):
            return self._answer(message, response_mti, INVALID_CARD, mac_key)
        posted = await self.services.transfer(
            terminal.caller, key, int(pan), int(str(target)), amount, Consent(token)
        )
        return self._posted(message, posted, mac_key)

    async def _pay_merchant(
        self,
        terminal: Terminal,
        message: Message,
        key: str,
        amount: int,
        token: str,
        mac_key: bytes,
        *,
        hold: bool,
    ) -> bytes:
        """The card pays the terminal's merchant: a hold (0100, `Payments.payment`) or a
        purchase (0200, `Payments.purchase`: one posting, no hold, no capture)."""
        move = Movement(
            terminal.caller,
            key,
            int(str(message["2"])),
            amount,
            Consent(token),
            counterpart=terminal.merchant_account_id,
            timeout_s=self.authorization_timeout_s if hold else 0,
        )
        if hold:
            posted = await self.services.payment(move)
        else:
            posted = await self.services.purchase(move)
        return self._posted(message, posted, mac_key)

    def _posted(
        self, message: Message, posted: Posted, mac_key: bytes, authorization: str = ""
    ) -> bytes:
        """Answer a posting: approved, unless the risk stage held the money instead of
        moving it (codes.RISK_HOLD_CODES: nothing was paid out)."""
        response_mti = spec.response_mti(str(message["t"]))
        if posted.risk_hold:
            return self._answer(message, response_mti, risk_hold_code(posted.risk_hold), mac_key)
        return self._answer(
            message, response_mti, APPROVED, mac_key, authorization or _authorization_id(posted)
        )

    async def _balance(
        self, terminal: Terminal, message: Message, token: str, mac_key: bytes
    ) -> bytes:
        account_id = int(str(message["2"]))
        view = await self.services.account(terminal.caller, account_id, Proof(token=token))
        available = view.available_minor
        account_type = str(message["3"])[2:4]
        amounts = [
            spec.AdditionalAmount(
                account_type, spec.AMOUNT_TYPE_LEDGER_BALANCE, spec.CURRENCY_CNY, view.balance_minor
            ),
            spec.AdditionalAmount(
                account_type,
                spec.AMOUNT_TYPE_AVAILABLE_BALANCE,
                spec.CURRENCY_CNY,
                view.balance_minor if available is None else available,
            ),
        ]
        return self._answer(
            message,
            spec.MTI_FINANCIAL_RESPONSE,
            APPROVED,
            mac_key,
            balances=spec.additional_amounts_field(amounts),
        )

    # --- consent: the PIN's token ------------------------------------------------------

    def _token_key(self, terminal: Terminal, account_id: int, pin: str) -> bytes:
        hasher = self._pin_hasher.copy()
        hasher.update(b"%d\0%d\0%s" % (terminal.caller.ledger_id, account_id, pin.encode()))
        return hasher.digest()

    async def _token(self, terminal: Terminal, account_id: int, pin: str, *, renew: bool) -> str:
        """A transaction token for the card's account bought with `pin` (kept, see the
        module docstring); `renew`: check the PIN again whatever is kept."""
        token_key = self._token_key(terminal, account_id, pin)
        account = (terminal.caller.ledger_id, account_id)
        while True:
            kept = self._tokens.get(token_key)
            if (
                kept is not None
                and not renew
                and kept[1] > self.services.now_ns()
                and not (self._doubted and account in self._doubted)
            ):
                return kept[0]
            issuing = self._issuing.get(token_key)
            if issuing is None:
                break
            await issuing.wait()  # the same card and PIN at once: one password check
            renew = False
        done = self._issuing[token_key] = anyio.Event()
        try:
            caller = terminal.caller
            issued = await self.services.issue_token(IssueToken(caller, account_id, pin))
        finally:
            del self._issuing[token_key]
            done.set()
        # Kept until shortly before it expires, by this process's clock (a front-end's
        # may differ from the core's): its lifetime from now, less the margin.
        ttl_ns = issued.ttl_s * NS_PER_S
        margin_ns = min(TOKEN_RENEW_MARGIN_S * NS_PER_S, ttl_ns // 4)
        expires_ns = self.services.now_ns() + ttl_ns - margin_ns
        _bounded_put(self._tokens, token_key, (issued.token, expires_ns), TOKENS_MAX)
        _bounded_put(self._account_tokens, account, (issued.token, expires_ns), TOKENS_MAX)
        self._doubted.pop(account, None)
        return issued.token

    def _forget_token(self, terminal: Terminal, account_id: int, pin: str) -> None:
        self._tokens.pop(self._token_key(terminal, account_id, pin), None)
        self._account_tokens.pop((terminal.caller.ledger_id, account_id), None)

    def _account_proof(self, terminal: Terminal, account_id: int) -> Proof:
        """The newest kept token of the account, as a void's proof (none: an empty one)."""
        kept = self._account_tokens.get((terminal.caller.ledger_id, account_id))
        if kept is None or kept[1] <= self.services.now_ns():
            return Proof()
        return Proof(token=kept[0])

    # --- 0400 --------------------------------------------------------------------------

    async def _reversal(
        self, terminal: Terminal, message: Message, response_mti: str, mac_key: bytes
    ) -> bytes:
        try:
            original = spec.original_data(str(message["90"]))
        except ValueError:
            return self._answer(message, response_mti, FORMAT_ERROR, mac_key)
        transaction = (original.mti, str(message["3"])[:2])
        if REVERSAL not in terminal.allowed:
            return self._answer(message, response_mti, NOT_PERMITTED_TERMINAL, mac_key)
        if transaction not in terminal.allowed or transaction == BALANCE_ENQUIRY:
            # Not something this terminal can have had posted (a balance enquiry posts
            # nothing): nothing to reverse.
            return self._answer(message, response_mti, INVALID_TRANSACTION, mac_key)
        original_key = original.key(terminal.terminal_id)
        key = spec.operation_key(terminal.terminal_id, str(message["11"]), str(message["7"]))
        pan = message.get("2")
        account_id = int(pan) if isinstance(pan, str) else 0
        try:
            # Cancelled before the ledger is read: see the module docstring.
            await self.services.bar(terminal.caller, original_key)
        except Refused as error:
            return self._answer(message, response_mti, response_code(error.refusal), mac_key)
        code, posted = await self._reverse(terminal, transaction, original_key, key, account_id)
        if code == UNABLE_TO_LOCATE:
            _event(
                "iso8583_reversal_before_original",
                terminal=terminal.terminal_id,
                original=original_key,
            )
        authorization = _authorization_id(posted) if posted is not None else ""
        return self._answer(message, response_mti, code, mac_key, authorization)

    async def _reverse(
        self,
        terminal: Terminal,
        transaction: tuple[str, str],
        original_key: str,
        key: str,
        account_id: int,
    ) -> tuple[str, Posted | None]:
        """Leave nothing of `original_key` posted: reverse what it posted, or void what it
        held, under `key` (idempotent: a retry posts the same reversal). Returns the
        response code and the reversal or void posted, if any."""
        ledger_id = terminal.caller.ledger_id
        services = self.services
        original_id = await services.transfer_id(ledger_id, original_key)
        if transaction == AUTHORIZATION:
            voided, posted = await self._void(terminal, original_id, key, account_id)
            return INVALID_TRANSACTION if voided is None else voided, posted
        code, posted = await self._reverse_posting(terminal, original_id, key)
        if transaction != PURCHASE or code != APPROVED or posted is not None:
            return code, posted
        # Nothing left of a purchase to reverse: reversed already, declined, or a purchase
        # of an earlier version (a hold its adapter captured under key + CAPTURE_SUFFIX):
        # reverse that capture, or void the hold if it was never captured.
        captured_id = await services.transfer_id(ledger_id, original_key + CAPTURE_SUFFIX)
        code, posted = await self._reverse_posting(terminal, captured_id, key)
        if code != UNABLE_TO_LOCATE:
            return code, posted
        if not terminal.voids:
            return APPROVED, None  # it could not have held: nothing is left posted
        voided, posted = await self._void(terminal, original_id, key + VOID_SUFFIX, account_id)
        return APPROVED if voided is None else voided, posted

    async def _reverse_posting(
        self, terminal: Terminal, transfer_id: int, key: str
    ) -> tuple[str, Posted | None]:
        try:
            move = Movement(terminal.caller, key, transfer_id, None)
            return APPROVED, await self.services.reversal(move)
        except Refused as error:
            result = ledger_result(error.refusal)
            if result in _NOTHING_LEFT:
                return APPROVED, None
            if result in _NOT_FOUND:
                return UNABLE_TO_LOCATE, None
            return response_code(error.refusal), None

    async def _void(
        self, terminal: Terminal, hold_id: int, key: str, account_id: int
    ) -> tuple[str | None, Posted | None]:
        """Void hold `hold_id` under `key`: the response code (None: the hold was captured,
        there is a capture to reverse instead) and the void posted, if any."""
        if not terminal.voids:
            return NOT_PERMITTED_TERMINAL, None
        proof = self._account_proof(terminal, account_id)
        try:
            move = Movement(terminal.caller, key, hold_id, None, proof=proof)
            return APPROVED, await self.services.void(move)
        except Refused as error:
            result = ledger_result(error.refusal)
            if result in _NOTHING_LEFT:
                return APPROVED, None
            if result in _NOT_FOUND:
                return UNABLE_TO_LOCATE, None
            if result == R.PENDING_TRANSFER_ALREADY_POSTED:
                return None, None
            return response_code(error.refusal), None


def _authorization_id(posted: Posted) -> str:
    """Field 38 (an6): the first 6 hex digits of the posting's id (stable for a repeat)."""
    return posted.transfer_id_packed[:-4:-1].hex().upper()


def _account_number(value: str | bytes) -> bool:
    return (
        isinstance(value, str)
        and value.isdigit()
        and value.isascii()
        and len(value) <= ACCOUNT_DIGITS_MAX
    )


def _bounded_put(table: dict[K, V], key: K, value: V, size_max: int) -> None:
    """`table[key] = value`, the oldest entry dropped first when `table` is full."""
    if key not in table and len(table) >= size_max:
        del table[next(iter(table))]  # the oldest
    table[key] = value


def _event(event: str, **fields: object) -> None:
    logger.info(orjson.dumps({"event": event, **fields}).decode())
