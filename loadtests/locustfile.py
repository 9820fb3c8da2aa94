"""Locust users that behave like Tally's customers, one user class per channel.

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8080 -u 200 -r 20 -t 60s

Environment:

- `TALLY_LOADTEST_DATASET`: the dataset JSON written by `tally loadtest --setup-only`
  (default `loadtest-out/dataset.json`): customers, their accounts and passwords.
- `TALLY_LOADTEST_OUT`: where each process writes `outcomes-<host>-<pid>.jsonl`, one line
  per money request with a known answer (default `loadtest-out`). Distributed runs work:
  every worker writes its own file; copy them together before `tally audit`.
- `TALLY_CHANNELS`: the channel registry with the secrets (default `examples/channels.toml`).
- `TALLY_LOADTEST_SHAPE=diurnal`: use `DiurnalCampaignShape` (a day scaled to the run
  length, with a campaign spike after midnight) instead of plain `-u/-r`.
- `TALLY_LOADTEST_SEED`: seeds each process's random choices (default: the pid).
- `TALLY_LOADTEST_FRAUD_SHARE`: the share of users that are fraudsters (`FraudUser`,
  default 0.01; 0: none). See loadtests/fraud.py: every money request carries the signed
  `device` field; a legitimate customer answers a risk challenge with a second factor
  (the same Idempotency-Key), a fraudster cannot; each outcome line says what the risk
  stage did (`risk`) and, for a fraudster's request, its pattern (`fraud`).
- `TALLY_LOADTEST_PROVIDERS`: the provider simulator the server calls (`tally loadtest`
  starts it); its `/sim/sms/{mobile}` is the customers' phone. Without it no new customer
  (`VerifyingCustomerUser`) runs and no Class II account is opened (no SMS code to read).
- `TALLY_LOADTEST_VERIFY_WEIGHT` (default 4; 0: none) and `TALLY_LOADTEST_VERIFY_FRAUD_SHARE`
  (default 0.1): `VerifyingCustomerUser`, new app customers walking the real-name
  verification, each step its own request name, a share of them fraudsters (another's
  face, a spoof, another's card) whom the bank must refuse (loadtests/verification.py).
  Opening a Class II account binds the card first (issuer check, SMS code) everywhere.

The mix follows /work/shared/DOMAIN.md: payments out of Class II (a hold, then a capture
or a void) ~55%, top-ups from the bound card ~15%, transfers to non-bound accounts ~8%,
withdrawals to the bound card ~7%, receipts from other banks ~5%, account openings
rare; plus balance and history reads (in the app and WeChat with the customer's session,
at an ATM with the token the PIN bought), and partner banks verifying account holder
names. Every money request is signed with the channel's
key and carries its own Idempotency-Key; a timeout, a 5xx or a 429 is retried with the
same key (at most `RETRIES_MAX` times, with backoff). Outcomes:

- 2xx: acknowledged; written to the outcomes file (the audit proves it is in the ledger).
- an expected business refusal (insufficient funds, a PBoC/product/channel limit, the
  5-account cap): a success for Locust, written to the outcomes file as refused; so is a
  verification refusal the scenario expects (a fraudster refused, an opening on a binding
  that is not verified, a provider's 503 retried after its Retry-After).
- anything else (5xx, timeouts, 429 after the retries, an unexpected 4xx): a Locust
  failure; a money request whose answer was never seen is written as unknown.

Two users speak the bank's other protocols (docs/iso8583.md, docs/iso20022.md), each
enabled by the file `tally loadtest` writes for it:

- `Iso8583TerminalUser` (`TALLY_LOADTEST_ISO8583`: the listener's address, the run's
  terminals and their keys, loadtests/runner.py): an ATM or POS terminal on its own TCP
  connection (loadtests/iso8583_terminal.py) sending 0200 cash withdrawals, purchases,
  transfers and balance enquiries with the card's PIN, and 0800 echoes. A message with
  no answer is sent again, the same bytes (the bank answers a repeat with the first
  answer). Each money message's outcome line carries its operation key (terminal id +
  STAN + field 7: the transfer id is derived from it) and field 38.
- `PartnerBankUser` (`TALLY_LOADTEST_ISO20022=1`): a partner bank posting signed pacs.008
  files of `PARTNER_CREDITS` credits (loadtests/iso20022_partner.py), a few to an account
  that does not exist (RJCT AC01 expected), and reading the pacs.002: one outcome line
  per credit, keyed by its clearing reference (the instructing agent + TxId). A 503 or
  a lost answer sends the same message again; PDNG credits go again in a new message
  with the same TxIds.

Tags run one flow alone: `--tags pay`, `topup`, `withdraw`, `transfer`, `open`, `cash`,
`incoming`, `read`, `fraud`, `verify`, `iso8583`, `iso20022`.
"""

from __future__ import annotations

import base64
import contextlib
import math
import os
import random
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import orjson
from locust import FastHttpUser, LoadTestShape, User, between, events, tag, task

from channels.client import Signer, new_key
from loadtests.dataset import channel_secrets, read_dataset
from loadtests.fraud import (
    FRAUD_PATTERNS as RISK_FRAUD_PATTERNS,
)
from loadtests.fraud import (
    FRAUD_SHARE_DEFAULT,
    RISK_CHALLENGE_MET,
    SECOND_FACTOR,
    device_for,
    risk_of_answer,
    thief_device,
)
from loadtests.profile import diurnal_fraction
from loadtests.verification import (
    FRAUD_PATTERNS,
    NEW_IDENTITIES,
    SMS_NOT_ENTERED_SHARE,
    STEP_REQUESTS,
    VERIFY_FRAUD_SHARE_DEFAULT,
    VERIFY_WEIGHT_DEFAULT,
    new_identity,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
RETRIES_MAX = 3
RETRY_AFTER_MAX_S = 2.0
PROBLEM_BASE = "https://tally.example/problems/"
# Refusals a bank's customers meet every day: recorded, not failures.
EXPECTED_REFUSALS = frozenset(
    {
        "exceeds-credits",
        "exceeds-daily-outflow",
        "exceeds-yearly-outflow",
        "exceeds-daily-inflow",
        "exceeds-yearly-inflow",
        "exceeds-balance-cap",
        "exceeds-transfer-cap",
        "exceeds-channel-transfer-cap",
        "exceeds-channel-daily-cap",
        "exceeds-channel-daily-inflow-cap",
        "exceeds-customer-daily-cap",
        "strong-auth-required",  # the load sends no second factor above 50,000 CNY a day
        "account-class-limit",
        "pending-transfer-expired",
        # The bank's risk rules (issue 15): a fraudster's request stopped, or a legitimate
        # customer's challenge they could not meet; counted in the report's risk section.
        "risk-blocked",
        "risk-challenge",
    }
)
FRAUD_SHARE = float(os.environ.get("TALLY_LOADTEST_FRAUD_SHARE") or FRAUD_SHARE_DEFAULT)
# Requests the risk stage never sees carry no device (their routes take none).
NO_DEVICE_OPERATIONS = frozenset({"incoming_transfer", "capture", "void"})
TOKEN_EXPIRED = "transaction-token-invalid"  # renewed with the PIN and retried, not a failure
SESSION_EXPIRED = "session-invalid"  # a customer session renewed with the password, not a failure
RETRYABLE = frozenset({0, 429, 500, 502, 503, 504})
# Real-name verification (issue 17, loadtests/verification.py): the provider simulator
# the server calls (its `/sim/sms/{mobile}` is the customers' phone), and the new customers.
PROVIDERS_URL = (os.environ.get("TALLY_LOADTEST_PROVIDERS") or "").rstrip("/")
VERIFY_WEIGHT = int(os.environ.get("TALLY_LOADTEST_VERIFY_WEIGHT") or VERIFY_WEIGHT_DEFAULT)
VERIFY_FRAUD_SHARE = float(
    os.environ.get("TALLY_LOADTEST_VERIFY_FRAUD_SHARE") or VERIFY_FRAUD_SHARE_DEFAULT
)
# A provider the bank could not reach or read: the step stays pending, the client tries
# again after Retry-After; expected, not a failure (a 503 of the server's own is one).
PROVIDER_TROUBLE = frozenset({"provider-unavailable", "provider-answer-invalid"})
SMS_READ_TRIES = 4  # the phone is read this often (SMS_READ_PAUSE_S apart) before "lost"
SMS_READ_PAUSE_S = 0.25
SMS_OPERATION = "bind_card"
LIVENESS_TRIES_MAX = 5  # a customer tries the liveness check again at most this often
NEW_CUSTOMER_PASSWORD = "246810"
# A step already decided (its attempts used up, the verification closed): a retry the
# scenario expects to meet it.
DECIDED = frozenset({"verification-attempts-exceeded", "verification-closed"})
# A code sent to this mobile moments ago (another binding of the same customer): the
# customer waits; the workflow stops there.
SMS_TOO_FREQUENT = frozenset({"sms-code-too-frequent"})


# --- shared per process ------------------------------------------------------------------


def _env_path(name: str, default: str) -> Path:
    return Path(os.environ.get(name) or default)


class Shared:
    """What every user of this process reads: the dataset, the secrets, the outcomes file."""

    dataset: ClassVar[dict[str, Any] | None] = None
    secrets: ClassVar[dict[str, dict[str, Any]]] = {}
    outcomes: ClassVar[Any] = None
    rng: ClassVar[random.Random] = random.Random()
    sms_read: ClassVar[set[str]] = set()  # SMS message ids whose code was used
    new_customers: ClassVar[int] = 0  # VerifyingCustomerUser's in this process
    identity_base: ClassVar[int] = 0
    binding: ClassVar[set[str]] = set()  # customers binding a card now (one SMS at a time)

    @classmethod
    def load(cls) -> None:
        if cls.dataset is not None:
            return
        cls.dataset = read_dataset(_env_path("TALLY_LOADTEST_DATASET", "loadtest-out/dataset.json"))
        cls.secrets = channel_secrets(
            os.environ.get("TALLY_CHANNELS") or REPO_ROOT / "examples" / "channels.toml"
        )
        out = _env_path("TALLY_LOADTEST_OUT", "loadtest-out")
        out.mkdir(parents=True, exist_ok=True)
        name = f"outcomes-{socket.gethostname()}-{os.getpid()}.jsonl"
        cls.outcomes = open(out / name, "ab", buffering=0)  # noqa: SIM115 (closed at quit)
        cls.rng = random.Random(int(os.environ.get("TALLY_LOADTEST_SEED") or os.getpid()))

    @classmethod
    def next_identity(cls) -> int:
        """A number for `new_identity` this process has not used: consecutive from a random
        start, so processes (and runs against the same server) rarely meet; one that does
        is refused customer-exists, an expected refusal."""
        if cls.new_customers == 0:
            cls.identity_base = random.SystemRandom().randrange(NEW_IDENTITIES)
        cls.new_customers += 1
        return (cls.identity_base + cls.new_customers) % NEW_IDENTITIES

    @classmethod
    def record(cls, line: dict[str, Any]) -> None:
        assert cls.outcomes is not None
        cls.outcomes.write(orjson.dumps(line) + b"\n")


@events.init.add_listener
def _on_init(environment: Any, **_kwargs: Any) -> None:
    if not isinstance(getattr(environment, "runner", None), _master_runner_type()):
        Shared.load()


@events.quitting.add_listener
def _on_quitting(environment: Any, **_kwargs: Any) -> None:
    if Shared.outcomes is not None:
        Shared.outcomes.close()
        Shared.outcomes = None


def _master_runner_type() -> type:
    from locust.runners import MasterRunner

    return MasterRunner


def lognormal_minor(median_minor: int, sigma: float, cap_minor: int) -> int:
    """A log-normal amount in fen around `median_minor`, in 1..cap_minor."""
    value = Shared.rng.lognormvariate(math.log(median_minor), sigma)
    return max(1, min(cap_minor, int(value)))


# --- the customer -----------------------------------------------------------------------


class TallyUser(FastHttpUser):
    """One customer on one channel: signs every request, retries money with the same key."""

    abstract = True
    channel: ClassVar[str] = ""
    wait_time = between(0.2, 1.5)
    network_timeout = 10.0
    connection_timeout = 5.0

    def on_start(self) -> None:
        Shared.load()
        assert Shared.dataset is not None
        entry = Shared.secrets[self.channel]
        self.signer = Signer(self.channel, entry["key_id"], entry["secret"].encode())
        self.customers: list[dict[str, Any]] = Shared.dataset["customers"]
        self.merchants: list[dict[str, Any]] = Shared.dataset["merchants"]
        self.me: dict[str, Any] = Shared.rng.choice(self.customers)
        self.tokens: dict[str, str] = {}
        self.session: str | None = None
        self.acknowledged: list[str] = []
        self.fraud: str = ""  # the pattern of the request being made ("": legitimate)

    def device(self) -> dict[str, str]:
        """The device this request comes from: the customer's own phone (a terminal's at
        the counter and the ATM: the user instance's own)."""
        return device_for(self.me, self.channel)

    # --- requests ---------------------------------------------------------------------

    def actor_for(self, body: Any) -> tuple[str, str] | None:
        """Who acts at this channel for a request with `body` (None: nobody is named)."""
        return None

    def signed(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        name: str,
        query: str = "",
        idempotency_key: str | None = None,
        token: str | None = None,
        session: str | None = None,
        expected: frozenset[str] = frozenset(),
        check: Callable[[int, dict[str, Any] | None], str] | None = None,
    ) -> tuple[int, Any, dict[str, Any] | None]:
        """One signed request; returns (status, response headers, parsed body or None).

        `expected`: refusal slugs this request's scenario expects (a success of the request
        kind); `check(status, parsed)`: what is wrong with an answer the status alone
        passes ("" if nothing), a Locust failure (a fraudster verified, say)."""
        data = orjson.dumps(body) if body is not None else b""
        headers = self.signer.headers(
            method, path, data, query=query, idempotency_key=idempotency_key,
            actor=self.actor_for(body),
        )  # fmt: skip
        if token is not None:
            headers["Tally-Transaction-Token"] = token
        if session is not None:
            headers["Tally-Session"] = session
        url = path + ("?" + query if query else "")
        with self.client.request(
            method,
            url,
            data=data or None,  # type: ignore[arg-type]  # bytes, sent byte for byte as signed
            headers=headers,
            name=name,
            catch_response=True,
        ) as response:
            status = response.status_code or 0
            parsed: dict[str, Any] | None = None
            if response.content:
                try:
                    parsed = orjson.loads(response.content)
                except orjson.JSONDecodeError:
                    parsed = None
            slug = _slug(parsed)
            problem = check(status, parsed) if check is not None else ""
            if problem:
                response.failure(problem)
            elif (
                200 <= status < 300
                or slug in EXPECTED_REFUSALS
                or slug in expected
                or slug in (TOKEN_EXPIRED, SESSION_EXPIRED)
            ):
                response.success()
            elif status in RETRYABLE:
                response.failure(f"{status} {slug or response.error or ''}".strip())
            else:
                response.failure(f"unexpected {status} {slug}")
            return status, response.headers, parsed

    def money(
        self,
        path: str,
        body: dict[str, Any],
        *,
        name: str,
        operation: str,
        debit_auth: tuple[str, str] | None = None,
    ) -> dict[str, Any] | None:
        """A money request with its own Idempotency-Key, retried with the same key.

        `debit_auth` = (account, password): the debit is authorized with a transaction
        token of this channel, issued once and issued again when it has expired.
        """
        key = new_key()
        if operation not in NO_DEVICE_OPERATIONS and "device" not in body:
            body = dict(body, device=self.device())
        if operation == "incoming_transfer":
            # A partner bank's credit is keyed by its clearing reference (the transfer id is
            # derived from it): the reference is the key the outcome line records.
            body = dict(body, clearing_reference=key)
        status, headers, parsed = 0, None, None
        challenged = False
        attempts_max = RETRIES_MAX + 1  # one more after a challenge: the second factor's
        attempt = 0
        while attempt < attempts_max:
            token = self.token_for(*debit_auth) if debit_auth is not None else None
            status, headers, parsed = self.signed(
                "POST", path, body, name=name, idempotency_key=key, token=token
            )
            attempt += 1
            if _slug(parsed) == TOKEN_EXPIRED and debit_auth is not None:
                self.tokens.pop(debit_auth[0], None)  # expired: the PIN buys a new one
                continue
            if _slug(parsed) == "risk-challenge" and not self.fraud and not challenged:
                # A step-up: the customer passes a second factor, with the same key.
                challenged = True
                attempts_max += 1
                body = dict(body, second_factor=SECOND_FACTOR)
                continue
            if status not in RETRYABLE:
                break
            if attempt < attempts_max:
                time.sleep(_backoff_s(attempt - 1, headers))
        line: dict[str, Any] = {
            "channel": self.channel,
            "key": key,
            "operation": operation,
            "status": status,
            "attempts": attempt,
        }
        risk = risk_of_answer(status, _slug(parsed), parsed)
        if challenged and not risk:
            risk = RISK_CHALLENGE_MET  # the second factor passed (the ledger may still refuse)
        if risk:
            line["risk"] = risk
            if parsed is not None and parsed.get("decision_id"):
                line["decision_id"] = parsed["decision_id"]
        if self.fraud:
            line["fraud"] = self.fraud
        if 200 <= status < 300 and parsed is not None:
            line.update(
                outcome="acknowledged",
                transfer_id=parsed["transfer_id"],
                amount_minor=parsed["amount_minor"],
                debit_account_id=parsed["debit_account_id"],
                credit_account_id=parsed["credit_account_id"],
                pending_id=parsed.get("pending_id"),
                state=parsed.get("status"),
                replayed=bool(headers and headers.get("idempotent-replayed")),
            )
            Shared.record(line)
            self.acknowledged.append(parsed["transfer_id"])
            del self.acknowledged[:-50]
            return parsed
        slug = _slug(parsed)
        if slug in EXPECTED_REFUSALS:
            line.update(outcome="refused", slug=slug, amount_minor=body.get("amount_minor"))
        elif status in RETRYABLE:
            line.update(outcome="unknown", slug=slug)  # the audit looks the key up
        else:
            line.update(outcome="failed", slug=slug)
        Shared.record(line)
        return None

    def token_for(self, account_id: str, password: str) -> str | None:
        """A transaction token for this channel, issued once per account (the PIN once)."""
        token = self.tokens.get(account_id)
        if token is None:
            status, _, parsed = self.signed(
                "POST",
                f"/v1/accounts/{account_id}/tokens",
                {"password": password},
                name="POST /v1/accounts/{id}/tokens",
            )
            if status != 201 or parsed is None:
                return None
            token = self.tokens[account_id] = parsed["token"]
        return token

    def session_for(self) -> str | None:
        """This customer's session at this channel, opened once with the password of one
        of their accounts (and again when it has expired)."""
        if self.session is None:
            status, _, parsed = self.signed(
                "POST",
                "/v1/sessions",
                {"account_id": str(self.me["class_i"]), "password": self.me["password"]},
                name="POST /v1/sessions",
            )
            if status != 201 or parsed is None:
                return None
            self.session = parsed["session"]
        return self.session

    def read_account(
        self, account_id: str, *, session: str | None = None, token: str | None = None
    ) -> dict[str, Any] | None:
        status, _, parsed = self.signed(
            "GET",
            f"/v1/accounts/{account_id}",
            name="GET /v1/accounts/{id}",
            session=session,
            token=token,
        )
        if _slug(parsed) == SESSION_EXPIRED:
            self.session = None  # renewed at the next read
        elif _slug(parsed) == TOKEN_EXPIRED:
            self.tokens.pop(account_id, None)
        return parsed if status == 200 else None

    def read_history(self, account_id: str, *, session: str | None = None) -> None:
        _, _, parsed = self.signed(
            "GET",
            f"/v1/accounts/{account_id}/history",
            query="limit=20",
            name="GET /v1/accounts/{id}/history",
            session=session,
        )
        if _slug(parsed) == SESSION_EXPIRED:
            self.session = None

    def other_customer(self) -> dict[str, Any]:
        while True:
            other = Shared.rng.choice(self.customers)
            if other is not self.me or len(self.customers) == 1:
                return other

    # --- real-name verification (issue 17) ----------------------------------------------

    def step(
        self,
        step: str,
        path: str,
        body: Any,
        *,
        expected: frozenset[str] = frozenset(),
        check: Callable[[int, dict[str, Any] | None], str] | None = None,
        session: str | None = None,
    ) -> tuple[int, dict[str, Any] | None]:
        """One verification step, reported under `STEP_REQUESTS[step]` (`session`: the
        customer's, when the channel did not register them). A provider the bank
        could not reach (503 provider-unavailable or -answer-invalid: the step stays
        pending) is expected: the same request again after Retry-After, a bounded number of
        times; so is a 429 or a 503 of the server's own (those are Locust failures)."""
        status, parsed = 0, None
        for attempt in range(RETRIES_MAX + 1):
            status, headers, parsed = self.signed(
                "POST", path, body, name=STEP_REQUESTS[step],
                expected=expected | PROVIDER_TROUBLE, check=check, session=session,
            )  # fmt: skip
            if status not in RETRYABLE or attempt == RETRIES_MAX or _slug(parsed) in expected:
                break
            time.sleep(_backoff_s(attempt, headers))
        return status, parsed

    def bind_card(
        self,
        customer: dict[str, Any],
        card: dict[str, Any],
        *,
        must_fail: bool = False,
        session: str | None = None,
    ) -> tuple[str, str, str]:
        """Bind `card` to `customer` as the app does: the issuer's check, then the SMS code
        the bank sends to the customer's mobile, read off the phone (the simulator's inbox)
        and typed in. Returns (the binding's status, "verified" or where it stopped; its id;
        why not). Each code received is an outcome line (`operation` "sms_code": the audit
        makes sure the server never wrote it down). `must_fail`: the card is not the
        customer's, and an issuer check that passes it is a Locust failure. `session`: the
        customer's session at this channel (one the channel did not register)."""
        path = f"/v1/customers/{customer['customer_id']}"

        def passed_other_card(status: int, parsed: dict[str, Any] | None) -> str:
            if must_fail and parsed is not None and _step_state(parsed, "issuer_card") == "passed":
                return "the issuer check passed another person's card"
            return ""

        status, binding = self.step(
            "bind_card", path + "/card-bindings", card, expected=SMS_TOO_FREQUENT,
            check=passed_other_card, session=session,
        )  # fmt: skip
        if status != 201 or binding is None:
            return "refused", "", _slug(binding) or f"bind-card-{status}"
        binding_id = str(binding["binding_id"])
        if binding["status"] in ("rejected", "expired"):
            return binding["status"], binding_id, "binding:" + _failed_step(binding)
        issuer = _step_state(binding, "issuer_card")
        if issuer not in ("passed", ""):
            return "rejected", binding_id, "binding:issuer_card"
        if binding["status"] == "verified":
            return "verified", binding_id, ""  # a channel that asks no SMS code
        challenge = binding.get("sms_challenge")
        if not challenge:
            status, challenge = self.step(
                "request_sms_code",
                path + "/sms-codes",
                {"operation": SMS_OPERATION, "subject": binding_id},
                expected=SMS_TOO_FREQUENT,
                session=session,
            )
            if status != 201 or challenge is None:
                return "pending", binding_id, _slug(challenge) or f"sms-code-{status}"
        code = self.read_sms_code(customer["mobile"])
        if code is None:
            return "pending", binding_id, "sms_lost"  # accepted by the gateway, never delivered
        Shared.record(
            {"channel": self.channel, "operation": "sms_code", "outcome": "sms_received",
             "customer_id": customer["customer_id"], "binding_id": binding_id, "code": code}
        )  # fmt: skip
        if Shared.rng.random() < SMS_NOT_ENTERED_SHARE:
            return "pending", binding_id, "sms_not_entered"
        status, confirmed = self.step(
            "confirm_sms_code",
            path + f"/sms-codes/{challenge['challenge_id']}/confirmation",
            {"operation": SMS_OPERATION, "subject": binding_id, "code": code},
            check=lambda status, parsed: (
                f"the code received answered {parsed.get('status')}"
                if status == 200 and parsed is not None and parsed.get("status") != "confirmed"
                else ""
            ),
            session=session,
        )
        if status != 200 or confirmed is None or confirmed.get("status") != "confirmed":
            return "pending", binding_id, _slug(confirmed) or f"sms-confirm-{status}"
        return "verified", binding_id, ""

    def read_verification(self, customer_id: str) -> dict[str, Any]:
        status, _, parsed = self.signed(
            "GET",
            f"/v1/customers/{customer_id}/verification",
            name="GET /v1/customers/{id}/verification",
        )
        if status != 200 or parsed is None:
            return {"status": "unknown", "steps": []}
        return parsed

    def read_sms_code(self, mobile: str) -> str | None:
        """The newest code on the customer's phone (the simulator's `/sim/sms/{mobile}`, read
        past Locust: it is the customer's phone, not the bank); None if none came."""
        import urllib.request

        from core.providers.population import sms_code_in

        for attempt in range(SMS_READ_TRIES):
            with urllib.request.urlopen(f"{PROVIDERS_URL}/sim/sms/{mobile}", timeout=10) as answer:
                messages = orjson.loads(answer.read())["messages"]
            for message in reversed(messages):
                code = sms_code_in(message["text"])
                if code is not None and message["message_id"] not in Shared.sms_read:
                    Shared.sms_read.add(message["message_id"])
                    return code
            if attempt + 1 < SMS_READ_TRIES:
                time.sleep(SMS_READ_PAUSE_S)
        return None

    def open_bound(
        self, customer: dict[str, Any], card: dict[str, Any], binding_id: str, *, verified: bool
    ) -> tuple[int, dict[str, Any] | None]:
        """Open a Class II account bound to `card`: 201 if its binding is `verified`; else the
        bank must refuse it (binding-not-verified), and a 201 is a Locust failure."""
        me = customer
        expected = frozenset() if verified else frozenset({"binding-not-verified"})

        def check(status: int, parsed: dict[str, Any] | None) -> str:
            if not verified and 200 <= status < 300:
                return "opened a Class II account on a card binding that is not verified"
            return ""

        status, parsed = self.step(
            "open_class_ii",
            f"/v1/customers/{me['customer_id']}/accounts",
            {"class": "class_ii", "password": me["password"], "bound_card": card},
            expected=expected,
            check=check,
        )
        if status == 201 and parsed is not None:
            Shared.record(
                {"channel": self.channel, "operation": "open_account", "outcome": "opened",
                 "account_id": parsed["account_id"], "customer_id": me["customer_id"],
                 "card_number": card["card_number"], "binding_id": binding_id}
            )  # fmt: skip
        elif _slug(parsed) == "account-class-limit":
            Shared.record(
                {"channel": self.channel, "operation": "open_account", "outcome": "refused",
                 "slug": "account-class-limit", "customer_id": me["customer_id"]}
            )  # fmt: skip
        return status, parsed


class MobileUser(TallyUser):
    """A customer on a phone: pays, tops up, transfers, withdraws from a Class II account."""

    abstract = True

    def class_ii(self) -> str:
        return str(Shared.rng.choice(self.me["class_ii"]))

    def debit_auth(self, account_id: str) -> tuple[str, str]:
        return account_id, self.me["password"]

    @tag("pay")
    @task(55)
    def pay(self) -> None:
        """A card payment: a hold, then the merchant captures (85%, 10% of them partly),
        voids it (10%) or never comes back (5%: the hold stays pending until it expires).
        At the app and WeChat a hold is settled for its payer or merchant only: the
        capture and the void show the payer's token."""
        account = self.class_ii()
        merchant = Shared.rng.choice(self.merchants)["class_i"]
        amount = lognormal_minor(4_000, 1.0, 2_000_000)
        hold = self.money(
            "/v1/payments",
            {"debit_account_id": account, "merchant_account_id": merchant, "amount_minor": amount},
            name="POST /v1/payments",
            operation="payment",
            debit_auth=self.debit_auth(account),
        )
        if hold is None or hold.get("status") in ("delayed", "review"):
            return  # a hold the risk stage placed is the bank's to settle (RISK_HOLD_LOCKED)
        time.sleep(Shared.rng.uniform(0.0, 0.3))
        payment_id = hold["transfer_id"]
        roll = Shared.rng.random()
        if roll < 0.75:
            self.money(
                f"/v1/payments/{payment_id}/capture",
                {},
                name="POST /v1/payments/{id}/capture",
                operation="capture",
                debit_auth=self.debit_auth(account),  # the payer's token: its hold
            )
        elif roll < 0.85:
            partial = max(1, amount * Shared.rng.randint(50, 99) // 100)
            self.money(
                f"/v1/payments/{payment_id}/capture",
                {"amount_minor": partial},
                name="POST /v1/payments/{id}/capture",
                operation="capture",
                debit_auth=self.debit_auth(account),  # the payer's token: its hold
            )
        elif roll < 0.95:
            self.money(
                f"/v1/payments/{payment_id}/void",
                {},
                name="POST /v1/payments/{id}/void",
                operation="void",
                debit_auth=self.debit_auth(account),  # the payer's token: its hold
            )

    @tag("topup")
    @task(15)
    def topup(self) -> None:
        account = self.class_ii()
        self.money(
            f"/v1/accounts/{account}/topups",
            {"amount_minor": lognormal_minor(50_000, 0.8, 5_000_000)},
            name="POST /v1/accounts/{id}/topups",
            operation="topup",
            debit_auth=self.debit_auth(account),
        )

    @tag("transfer")
    @task(8)
    def transfer(self) -> None:
        """To another customer's account: non-bound outflow (and inflow, for a Class II)."""
        account = self.class_ii()
        other = self.other_customer()
        target = other["class_i"] if Shared.rng.random() < 0.5 else other["class_ii"][0]
        self.money(
            "/v1/transfers",
            {
                "debit_account_id": account,
                "credit_account_id": str(target),
                "amount_minor": lognormal_minor(20_000, 1.0, 2_000_000),
            },
            name="POST /v1/transfers",
            operation="transfer",
            debit_auth=self.debit_auth(account),
        )

    @tag("withdraw")
    @task(7)
    def withdraw(self) -> None:
        account = self.class_ii()
        self.money(
            f"/v1/accounts/{account}/withdrawals",
            {"amount_minor": lognormal_minor(10_000, 1.0, 2_000_000)},
            name="POST /v1/accounts/{id}/withdrawals",
            operation="withdraw",
            debit_auth=self.debit_auth(account),
        )

    @tag("open")
    @task(1)
    def open_class_ii(self) -> None:
        """Open one more Class II account bound to the Class I card (at most 5 per class):
        the card is bound first (the issuer's check on the bank's own records, the SMS
        code off the customer's phone), then the opening uses the binding."""
        if not PROVIDERS_URL or self.me["customer_id"] in Shared.binding:
            return  # no phone to read the code from; or this customer is binding a card
        me = self.me
        card = {
            "card_number": str(me["class_i"]),
            "card_type": "class_i_debit",
            "holder_name": me["name"],
            "holder_id_number": me["id_number"],
            "reserved_mobile": me["mobile"],
        }
        Shared.binding.add(me["customer_id"])  # one code to this phone at a time
        try:
            # The app did not register this customer (the counter did): their session.
            bound, binding_id, _ = self.bind_card(me, card, session=self.session_for())
            if bound == "verified":
                self.open_bound(me, card, binding_id, verified=True)
        finally:
            Shared.binding.discard(me["customer_id"])

    @tag("read")
    @task(10)
    def balance(self) -> None:
        """The customer's own balance, with their session (only theirs is readable)."""
        self.read_account(self.class_ii(), session=self.session_for())

    @tag("read")
    @task(4)
    def history(self) -> None:
        self.read_history(self.class_ii(), session=self.session_for())


class WechatUser(MobileUser):
    channel = "wechat"
    weight = 40


class AppUser(MobileUser):
    channel = "app"
    weight = 35


class CounterUser(TallyUser):
    """A teller serving walk-in customers: cash in and out, transfers, with the PIN typed."""

    channel = "counter"
    weight = 7
    # The teller serves; an amount over the teller's cap (examples/channels.toml) is
    # posted by the supervisor, as at a real counter.
    TELLER_CAP_MINOR = 5_000_000

    def actor_for(self, body: Any) -> tuple[str, str] | None:
        amount = body.get("amount_minor", 0) if isinstance(body, dict) else 0
        if amount > self.TELLER_CAP_MINOR:
            return ("S0001", "supervisor")
        return ("T0001", "teller")

    @tag("cash")
    @task(5)
    def cash_deposit(self) -> None:
        customer = Shared.rng.choice(self.customers)
        self.money(
            f"/v1/accounts/{customer['class_i']}/cash-deposits",
            {"amount_minor": lognormal_minor(200_000, 1.0, 50_000_000)},
            name="POST /v1/accounts/{id}/cash-deposits",
            operation="cash_deposit",
        )

    @tag("cash")
    @task(3)
    def cash_withdrawal(self) -> None:
        customer = Shared.rng.choice(self.customers)
        self.money(
            f"/v1/accounts/{customer['class_i']}/cash-withdrawals",
            {
                "amount_minor": lognormal_minor(100_000, 1.0, 50_000_000),
                "password": customer["password"],
            },
            name="POST /v1/accounts/{id}/cash-withdrawals",
            operation="cash_withdrawal",
        )

    @tag("transfer")
    @task(2)
    def transfer(self) -> None:
        customer, other = Shared.rng.sample(self.customers, 2)
        self.money(
            "/v1/transfers",
            {
                "debit_account_id": customer["class_i"],
                "credit_account_id": other["class_i"],
                "amount_minor": lognormal_minor(500_000, 1.0, 50_000_000),
                "password": customer["password"],
            },
            name="POST /v1/transfers",
            operation="transfer",
        )

    @tag("read")
    @task(2)
    def balance(self) -> None:
        self.read_account(Shared.rng.choice(self.customers)["class_i"])


class AtmUser(TallyUser):
    """A card in an ATM: the PIN buys a token, then cash out (multiples of 100 CNY) or in."""

    channel = "atm"
    weight = 8

    @tag("cash")
    @task(5)
    def cash_withdrawal(self) -> None:
        card = self.me["class_i"]
        self.money(
            f"/v1/accounts/{card}/cash-withdrawals",
            {"amount_minor": 10_000 * Shared.rng.randint(1, 20)},
            name="POST /v1/accounts/{id}/cash-withdrawals",
            operation="cash_withdrawal",
            debit_auth=(card, self.me["password"]),
        )

    @tag("cash")
    @task(2)
    def cash_deposit(self) -> None:
        self.money(
            f"/v1/accounts/{self.me['class_i']}/cash-deposits",
            {"amount_minor": 10_000 * Shared.rng.randint(1, 50)},
            name="POST /v1/accounts/{id}/cash-deposits",
            operation="cash_deposit",
        )

    @tag("read")
    @task(3)
    def balance(self) -> None:
        """A balance enquiry: the card's PIN buys a token, the token reads the balance."""
        card = self.me["class_i"]
        self.read_account(card, token=self.token_for(card, self.me["password"]))


class OpenApiUser(TallyUser):
    """Another bank's clearing link: money arriving from non-bound accounts elsewhere (each
    credit keyed by its clearing reference), and account-name checks before crediting. A
    partner bank reads nothing else."""

    channel = "open_api"
    weight = 10

    @tag("incoming")
    @task(5)
    def incoming(self) -> None:
        customer = Shared.rng.choice(self.customers)
        target = customer["class_i"] if Shared.rng.random() < 0.5 else customer["class_ii"][0]
        self.money(
            "/v1/incoming-transfers",
            {
                "credit_account_id": str(target),
                "amount_minor": lognormal_minor(30_000, 1.0, 500_000),
                "payer": {
                    "bank_code": "ICBC",
                    "account_number": "6222020200112233",
                    "name": "付款人",
                },
            },
            name="POST /v1/incoming-transfers",
            operation="incoming_transfer",
        )

    @tag("incoming", "read")
    @task(2)
    def verify(self) -> None:
        """Check a beneficiary's account and name before crediting it (half the time with a
        name that does not match)."""
        customer = Shared.rng.choice(self.customers)
        name = customer["name"] if Shared.rng.random() < 0.5 else "某人"
        self.signed(
            "POST",
            "/v1/account-verifications",
            {"account_id": str(customer["class_i"]), "name": name},
            name="POST /v1/account-verifications",
        )


# --- real-name verification: new customers in the app (issue 17) ---------------------------


class VerifyingCustomerUser(TallyUser):
    """A new customer opening an account in the app, from nothing (loadtests/verification.py):

    register (the app channel) -> the ID card's photo -> the liveness check (the identity
    database compares the live face with the ID's photo) -> bind a card of another bank
    (the issuer's check, then the SMS code read off the phone and typed in) -> open a
    Class II account on that binding -> a small top-up, and half the time a transfer out
    of it (money moves only from a verified holder's account).

    A share (`TALLY_LOADTEST_VERIFY_FRAUD_SHARE`) are fraudsters: another person's face,
    a spoof, or another person's card; the bank must refuse each (a fraudster verified,
    or an opening on a binding that is not verified, is a Locust failure). The simulated
    world adds its own: a stolen identity (the database photo is not the face), a card
    whose reserved mobile differs, an SMS lost. Every step is its own request name; the
    workflow's end is one outcome line (`operation` "verification")."""

    channel = "app"
    weight = VERIFY_WEIGHT
    abstract = VERIFY_WEIGHT <= 0 or not PROVIDERS_URL
    wait_time = between(0.5, 2.0)

    @tag("verify")
    @task
    def become_customer(self) -> None:
        name, id_number, mobile = new_identity(Shared.next_identity())
        pattern = ""
        if Shared.rng.random() < VERIFY_FRAUD_SHARE:
            pattern = Shared.rng.choice(FRAUD_PATTERNS)
        line: dict[str, Any] = {
            "channel": self.channel,
            "operation": "verification",
            "outcome": "verification",
            "pattern": pattern,
        }
        line.update(self.workflow(name, id_number, mobile, pattern))
        Shared.record(line)

    def workflow(self, name: str, id_number: str, mobile: str, pattern: str) -> dict[str, Any]:
        """The steps, as far as the customer gets; what the outcome line says of them."""
        from core.providers.population import card_for, face_of, id_card_image, liveness_token

        status, registered = self.step(
            "register",
            "/v1/customers",
            {"name": name, "id_number": id_number, "mobile": mobile},
            expected=frozenset({"customer-exists"}),  # an ID number an earlier run took
        )
        if status != 201 or registered is None:
            return {"result": "refused", "reason": _slug(registered) or f"register-{status}"}
        me = {
            "customer_id": registered["customer_id"], "name": name, "id_number": id_number,
            "mobile": mobile, "password": NEW_CUSTOMER_PASSWORD,
        }  # fmt: skip
        found: dict[str, Any] = {"customer_id": me["customer_id"]}
        path = f"/v1/customers/{me['customer_id']}/verification"
        media_type = Shared.rng.choice(("image/png", "image/jpeg"))
        image = id_card_image(name, id_number, media_type)
        body = {"image_base64": base64.b64encode(image).decode(), "media_type": media_type}
        status, read = self.step("id_document", path + "/id-document", body)
        if status != 200 or read is None:
            return found | {"result": "refused", "reason": _slug(read) or f"id-document-{status}"}
        if pattern == "other_face":
            token = liveness_token(face_of(self.other_customer()["id_number"]))
        else:
            token = liveness_token(face_of(id_number), live=pattern != "spoof")
        fraud = pattern in ("other_face", "spoof")

        def verified_fraudster(status: int, parsed: dict[str, Any] | None) -> str:
            if fraud and parsed is not None and parsed.get("status") == "verified":
                return f"a fraudster ({pattern}) was verified"
            return ""

        # A failed attempt leaves the step pending with attempts left: the customer (the
        # fraudster above all) tries again until the bank decides, a bounded number of times.
        for _ in range(LIVENESS_TRIES_MAX):
            status, answer = self.step(
                "liveness", path + "/liveness", {"token": token}, check=verified_fraudster,
                expected=DECIDED,
            )  # fmt: skip
            if status == 200 and answer is not None:
                read = answer
            if status != 200:
                read = self.read_verification(me["customer_id"])  # decided meanwhile
                break
            if read["status"] != "pending" or not _failed_attempt(read):
                break
        if read["status"] != "verified":
            found |= {"customer_status": read["status"]}
            result = "rejected" if read["status"] == "rejected" else "abandoned"
            return found | {"result": result, "reason": "customer:" + _failed_step(read)}
        found["customer_status"] = "verified"
        if pattern == "other_card":
            number = card_for(self.other_customer()["id_number"])
        else:
            number = card_for(id_number, Shared.rng.randrange(4))
        card = {
            "card_number": number, "card_type": "class_i_debit", "holder_name": name,
            "holder_id_number": id_number, "reserved_mobile": mobile,
        }  # fmt: skip
        found["card_number"] = number
        bound, binding_id, reason = self.bind_card(me, card, must_fail=pattern == "other_card")
        found |= {"binding_id": binding_id, "binding_status": bound}
        if bound != "verified":
            self.open_bound(me, card, binding_id, verified=False)  # the bank must refuse it
            result = "rejected" if bound == "rejected" else "abandoned"
            return found | {"result": result, "reason": reason}
        status, opened = self.open_bound(me, card, binding_id, verified=True)
        if status != 201 or opened is None:
            return found | {"result": "refused", "reason": _slug(opened) or f"open-{status}"}
        account = str(opened["account_id"])
        found["account_id"] = account
        self.me = me  # the money below is theirs, from their phone
        topped_up = self.money(
            f"/v1/accounts/{account}/topups",
            {"amount_minor": Shared.rng.randint(10_000, 100_000)},
            name="POST /v1/accounts/{id}/topups",
            operation="topup",
            debit_auth=(account, me["password"]),
        )
        if topped_up is not None and Shared.rng.random() < 0.5:
            self.money(
                "/v1/transfers",
                {
                    "debit_account_id": account,
                    "credit_account_id": str(self.other_customer()["class_i"]),
                    "amount_minor": Shared.rng.randint(100, 5_000),
                },
                name="POST /v1/transfers",
                operation="transfer",
                debit_auth=(account, me["password"]),
            )
        return found | {"result": "verified", "reason": ""}


# --- ISO 8583 terminals and ISO 20022 partner banks (issue 18) ----------------------------

# Field 39 answers that are business outcomes, not failures (channels/iso8583/codes.py).
ISO8583_APPROVED = "00"
ISO8583_HELD = "05"  # the risk stage held the money (a pending transfer), nothing paid out
ISO8583_EXPECTED_REFUSALS = frozenset(
    {
        "51",  # insufficient funds
        "61",  # a cap: channel, product, PBoC bucket, the customer's daily cap
        "59",  # the risk stage blocked it
        "65",  # the risk stage wants a second factor a terminal cannot give
    }
)
ISO8583_RETRYABLE = frozenset({"91", "96"})  # issuer unavailable (overloaded): again later
ISO8583_TIMEOUT_S = 10.0
# ISO 20022: credits a partner sends per pacs.008 (small here; `tally bench iso20022`
# sends 1,000), the share addressed to an account that does not exist (RJCT AC01 expected).
PARTNER_CREDITS = 20
PARTNER_UNKNOWN_ACCOUNT_SHARE = 0.02
PARTNER_UNKNOWN_ACCOUNT = "6235019999999999996"  # a well-formed number no account has
# RJCT reasons that are business outcomes (channels/iso20022/reasons.py): the account is
# unknown, closed or frozen; a cap (AM02); what the account may not receive, or the risk
# controls (AG01). AM05 (a TxId reused with other fields), MS03 and NARR are failures here.
ISO20022_EXPECTED_REASONS = frozenset({"AC01", "AC04", "AC06", "AG01", "AM02"})


def _fire(
    user: User, request_type: str, name: str, started: float, size: int, error: Exception | None
) -> None:
    user.environment.events.request.fire(
        request_type=request_type,
        name=name,
        response_time=(time.perf_counter() - started) * 1000.0,
        response_length=size,
        exception=error,
        context={},
    )


class Iso8583Failure(Exception):
    """An answer that is neither approved nor an expected refusal, or a bad MAC."""


class Iso8583Fleet:
    """This process's share of the run's terminals (TALLY_LOADTEST_ISO8583: the JSON file
    `tally loadtest` writes: the listener's address, the terminals, their keys, the POS
    merchant). Users share the terminals round robin: a terminal numbers every message
    with its next STAN, whichever user sends it, so no two messages share a key."""

    config: ClassVar[dict[str, Any] | None] = None
    terminals: ClassVar[list[Any]] = []
    next_index: ClassVar[int] = 0

    @classmethod
    def load(cls, environment: Any) -> dict[str, Any]:
        if cls.config is None:
            from loadtests.iso8583_terminal import Terminal, TerminalProfile

            path = os.environ["TALLY_LOADTEST_ISO8583"]
            config = orjson.loads(Path(path).read_bytes())
            runner = getattr(environment, "runner", None)
            worker = int(getattr(runner, "worker_index", 0) or 0)
            processes = max(1, int(config.get("processes", 1)))
            share = len(config["terminals"]) // processes  # a block of ATMs and POS each
            first = (worker % processes) * share
            mine = config["terminals"][first : first + share]
            cls.terminals = [
                Terminal(
                    TerminalProfile(
                        entry["terminal_id"], entry["kind"], bytes.fromhex(entry["pin_key"]),
                        bytes.fromhex(entry["mac_key"]),
                    ),
                    first_stan=Shared.rng.randint(1, 900_000),
                )
                for entry in mine
            ]  # fmt: skip
            cls.config = config
        return cls.config

    @classmethod
    def next_terminal(cls) -> Any:
        assert cls.terminals, "no terminals for this process"
        terminal = cls.terminals[cls.next_index % len(cls.terminals)]
        cls.next_index += 1
        return terminal


class Iso8583TerminalUser(User):
    """An ATM or POS terminal speaking ISO 8583 over its own TCP connection: cash withdrawals
    (ATM), purchases paid to the run's merchant (POS), transfers between two customers'
    Class I cards (ATM), balance enquiries and echoes; the card is a customer's Class I
    account, its PIN the account's transaction password."""

    abstract = not os.environ.get("TALLY_LOADTEST_ISO8583")
    weight = 8
    wait_time = between(0.2, 1.5)

    def on_start(self) -> None:
        from loadtests.iso8583_terminal import BlockingConnection, Card

        Shared.load()
        assert Shared.dataset is not None
        config = Iso8583Fleet.load(self.environment)
        self.terminal = Iso8583Fleet.next_terminal()
        self.kind: str = self.terminal.profile.kind
        self.channel: str = next(
            entry["channel"] for entry in config["terminals"]
            if entry["terminal_id"] == self.terminal.terminal_id
        )  # fmt: skip
        self.merchant: str = config["merchant_account_id"]
        host, _, port = config["address"].rpartition(":")
        self.address = (host, int(port))
        self.connection = BlockingConnection(host, int(port), ISO8583_TIMEOUT_S)
        self.customers: list[dict[str, Any]] = Shared.dataset["customers"]
        me = Shared.rng.choice(self.customers)
        self.card = Card(str(me["class_i"]), me["password"])

    def on_stop(self) -> None:
        self.connection.close()

    def _reconnect(self) -> None:
        from loadtests.iso8583_terminal import BlockingConnection

        self.connection.close()
        self.connection = BlockingConnection(*self.address, ISO8583_TIMEOUT_S)

    def exchange(self, request: Any, name: str) -> Any:
        """One message and its answer (sent again, the same bytes, after a timeout or a
        broken connection, at most RETRIES_MAX times); None if it never got one. Every
        attempt is a Locust request event; a wrong MAC on the answer fails it."""
        from loadtests.iso8583_terminal import ExchangeTimeout

        for attempt in range(RETRIES_MAX + 1):
            started = time.perf_counter()
            try:
                response = self.connection.exchange(self.terminal.repeat(request))
            except (ExchangeTimeout, OSError) as lost:
                _fire(self, "ISO8583", name, started, 0, lost)
                self._reconnect_quietly()
                time.sleep(_backoff_s(attempt, None))
                continue
            failure: Exception | None = None
            code = response.code
            if not self.terminal.verify(response):
                failure = Iso8583Failure(f"answer {code} with a wrong MAC")
            elif (
                code not in (ISO8583_APPROVED, ISO8583_HELD)
                and code not in ISO8583_EXPECTED_REFUSALS
            ):
                failure = Iso8583Failure(f"unexpected 39={code}")
            _fire(self, "ISO8583", name, started, len(response.raw), failure)
            if code in ISO8583_RETRYABLE and attempt < RETRIES_MAX:
                time.sleep(_backoff_s(attempt, None))
                continue
            return response
        return None

    def _reconnect_quietly(self) -> None:
        with contextlib.suppress(OSError):  # the next attempt fails and is counted
            self._reconnect()

    def money(self, request: Any, name: str, operation: str, credit_account: str | None) -> None:
        """Send a money message and write its outcome line (as the HTTP users do)."""
        fields = request.fields
        key = f"{fields['41']}:{fields['11']}:{fields['7']}"  # spec.operation_key
        line: dict[str, Any] = {
            "protocol": "iso8583",
            "channel": self.channel,
            "key": key,
            "operation": operation,
        }
        # Written before the message leaves: a user stopped while it waits for the answer
        # (the end of the run) leaves its key, so the audit can explain what was booked.
        Shared.record(dict(line, outcome="sent"))
        response = self.exchange(request, name)
        line.update(amount_minor=int(str(fields["4"])), debit_account_id=self.card.pan)
        if credit_account is not None:
            line["credit_account_id"] = credit_account
        if response is None:
            line.update(outcome="unknown", slug="no answer")
        else:
            code = response.code
            line["response_code"] = code
            if code in (ISO8583_APPROVED, ISO8583_HELD):
                line.update(outcome="acknowledged", authorization=response.fields.get("38", ""))
                line["state"] = "held" if code == ISO8583_HELD else "posted"
            elif code in ISO8583_EXPECTED_REFUSALS:
                line.update(outcome="refused", slug=f"iso8583-{code}")
            elif code in ISO8583_RETRYABLE:
                line.update(outcome="unknown", slug=f"iso8583-{code}")
            else:
                line.update(outcome="failed", slug=f"iso8583-{code}")
        Shared.record(line)

    @tag("iso8583")
    @task(6)
    def spend(self) -> None:
        """An ATM's cash withdrawal (100..2,000 CNY) or a POS purchase (log-normal)."""
        if self.kind == "atm":
            amount = 10_000 * Shared.rng.randint(1, 20)
            request = self.terminal.cash_withdrawal(self.card, amount)
            self.money(request, "0200 01 cash withdrawal", "iso8583_cash_withdrawal", None)
        else:
            amount = lognormal_minor(4_000, 1.0, 500_000)
            request = self.terminal.purchase(self.card, amount)
            self.money(request, "0200 00 purchase", "iso8583_purchase", self.merchant)

    @tag("iso8583")
    @task(2)
    def transfer(self) -> None:
        if self.kind != "atm":
            return
        other = Shared.rng.choice(self.customers)
        if str(other["class_i"]) == self.card.pan:
            return
        target = str(other["class_i"])
        amount = lognormal_minor(20_000, 1.0, 500_000)
        request = self.terminal.transfer(self.card, target, amount)
        self.money(request, "0200 40 transfer", "iso8583_transfer", target)

    @tag("iso8583")
    @task(2)
    def balance(self) -> None:
        self.exchange(self.terminal.balance_enquiry(self.card), "0200 31 balance enquiry")

    @tag("iso8583")
    @task(1)
    def echo(self) -> None:
        from channels.iso8583.spec import NETWORK_ECHO

        self.exchange(self.terminal.network(NETWORK_ECHO), "0800 301 echo")


class PartnerBankUser(FastHttpUser):
    """A partner bank over ISO 20022: signed pacs.008 files of `PARTNER_CREDITS` credits to
    our customers (a few to an account that does not exist), the pacs.002 checked
    credit by credit; each credit's outcome recorded under its clearing reference."""

    abstract = not os.environ.get("TALLY_LOADTEST_ISO20022")
    channel = "open_api"
    weight = 4
    wait_time = between(0.5, 2.0)
    network_timeout = 30.0
    connection_timeout = 5.0

    def on_start(self) -> None:
        from loadtests.iso20022_partner import PartnerBank

        Shared.load()
        assert Shared.dataset is not None
        entry = Shared.secrets[self.channel]
        signer = Signer(self.channel, entry["key_id"], entry["secret"].encode())
        self.customers: list[dict[str, Any]] = Shared.dataset["customers"]
        tag_ = f"{os.getpid() % 100_000:05d}{Shared.rng.randrange(16**4):04x}"
        self.partner = PartnerBank(signer, tag=tag_)
        self.files = 0

    def post(self, sent: Any) -> tuple[int, Any, Any]:
        """POST one pacs.008; (status, headers, the pacs.002 read, or None)."""
        from loadtests.iso20022_partner import PACS_008_PATH, StatusReportError, read_status_report

        with self.client.request(
            "POST",
            PACS_008_PATH,
            data=sent.body,  # bytes, sent byte for byte as signed
            headers=self.partner.headers(sent),
            name="POST /v1/iso20022/pacs.008",
            catch_response=True,
        ) as response:
            status = response.status_code or 0
            answer = None
            if status in (200, 400) and response.content:
                try:
                    answer = read_status_report(response.content)
                except StatusReportError as error:
                    response.failure(f"{status}: unreadable pacs.002 ({error})")
                    return status, response.headers, None
            if status == 200 and answer is not None:
                problem = _check_status_report(sent, answer)
                if problem:
                    response.failure(problem)
                else:
                    response.success()
            elif status in RETRYABLE:
                response.failure(f"{status} {response.error or ''}".strip())
            else:
                response.failure(f"unexpected {status}")
            return status, response.headers, answer

    @tag("iso20022")
    @task
    def credit_transfers(self) -> None:
        """One file: sent again unchanged after a 503 or a lost answer; PDNG credits again
        in a new message (same TxIds); then one outcome line per credit."""
        targets = []
        self.files += 1
        for index in range(PARTNER_CREDITS):
            # A few credits to no account (the first file's first always): RJCT AC01.
            first = self.files == 1 and index == 0
            if first or Shared.rng.random() < PARTNER_UNKNOWN_ACCOUNT_SHARE:
                targets.append((PARTNER_UNKNOWN_ACCOUNT, lognormal_minor(30_000, 1.0, 500_000)))
                continue
            customer = Shared.rng.choice(self.customers)
            account = customer["class_i"] if Shared.rng.random() < 0.7 else customer["class_ii"][0]
            targets.append((str(account), lognormal_minor(30_000, 1.0, 500_000)))
        credits = self.partner.credits(targets)
        for credit in credits:  # before the file leaves (see Iso8583TerminalUser.money)
            Shared.record(
                {"protocol": "iso20022", "channel": self.channel, "outcome": "sent",
                 "key": self.partner.reference(credit), "operation": "iso20022_credit"}
            )  # fmt: skip
        waiting = list(credits)
        outcomes: dict[str, tuple[str, str | None]] = {}
        attempts = 0
        sent = self.partner.message(waiting)
        while waiting and attempts <= RETRIES_MAX:
            attempts += 1
            status, headers, answer = self.post(sent)
            if answer is None or status != 200:
                if status in RETRYABLE and attempts <= RETRIES_MAX:
                    time.sleep(_backoff_s(attempts - 1, headers))
                    continue  # the same message again: same MsgId, same TxIds
                break
            by_tx_id = answer.by_tx_id
            pending = []
            for credit in waiting:
                tx = by_tx_id.get(credit.tx_id)
                if tx is None or not tx.outcome:
                    pending.append(credit)
                elif tx.outcome == "pending":  # PDNG: the same TxId again (held, if it stays)
                    outcomes[credit.tx_id] = (tx.outcome, tx.reason)
                    pending.append(credit)
                else:
                    outcomes[credit.tx_id] = (tx.outcome, tx.reason)
            waiting = pending
            if waiting and attempts <= RETRIES_MAX:
                time.sleep(_backoff_s(attempts - 1, headers))
                sent = self.partner.message(waiting)  # a new MsgId, the same TxIds
        for credit in credits:
            outcome = outcomes.get(credit.tx_id)
            Shared.record(self.outcome_line(credit, outcome, attempts))

    def outcome_line(
        self, credit: Any, outcome: tuple[str, str | None] | None, attempts: int
    ) -> dict[str, Any]:
        """A credit's outcome line: acknowledged (ACSC), held (still PDNG after the resends:
        the risk controls hold the money, or it was shed each time), refused (RJCT with an
        expected reason), failed (another reason), unknown (no pacs.002 answered it)."""
        line: dict[str, Any] = {
            "protocol": "iso20022",
            "channel": self.channel,
            "key": self.partner.reference(credit),
            "operation": "iso20022_credit",
            "tx_id": credit.tx_id,
            "amount_minor": credit.amount_minor,
            "credit_account_id": credit.account,
            "attempts": attempts,
        }
        if outcome is None:
            line.update(outcome="unknown", slug="no answer")
            return line
        status, reason = outcome
        if status == "booked":
            line.update(outcome="acknowledged", state="posted")
        elif status == "pending":
            line.update(outcome="held")
        elif reason in ISO20022_EXPECTED_REASONS:
            line.update(outcome="refused", slug=f"iso20022-{reason}")
        else:
            line.update(outcome="failed", slug=f"iso20022-{reason}")
        return line


def _check_status_report(sent: Any, answer: Any) -> str:
    """What is wrong with a 200's pacs.002 for `sent` ("" if nothing): it must name the
    message, answer every credit once, and carry a group status that agrees."""
    if answer.original_msg_id != sent.msg_id:
        return f"pacs.002 names {answer.original_msg_id}, not {sent.msg_id}"
    statuses = [tx.status for tx in answer.transactions]
    tx_ids = [tx.tx_id for tx in answer.transactions]
    if sorted(tx_ids) != sorted(credit.tx_id for credit in sent.credits):
        return f"pacs.002 answers {len(tx_ids)} credits of {len(sent.credits)}"
    for tx in answer.transactions:
        if tx.status == "RJCT" and tx.reason not in ISO20022_EXPECTED_REASONS:
            return f"RJCT {tx.reason}"
        if tx.status == "RJCT" and not tx.reason:
            return "RJCT without a reason"
    if answer.group_status != _group_status(statuses):
        return f"group status {answer.group_status} for {sorted(set(statuses))}"
    return ""


def _group_status(statuses: list[str]) -> str:
    kinds = set(statuses)
    if kinds == {"ACSC"}:
        return "ACSC"
    if kinds == {"RJCT"}:
        return "RJCT"
    if kinds == {"PDNG"}:
        return "PDNG"
    return "PART"


# --- fraud (issue 15) ---------------------------------------------------------------------


def _fraud_weight(share: float) -> int:
    """FraudUser's weight so that about `share` of the users are fraudsters."""
    if share <= 0:
        return 0
    others = sum(user.weight for user in (WechatUser, AppUser, CounterUser, AtmUser, OpenApiUser))
    return max(1, round(others * share / (1.0 - share)))


class FraudUser(TallyUser):
    """A fraudster in the app (loadtests/fraud.py), in one of two patterns, chosen at start:

    - `stolen_device`: a victim's credentials on the thief's new device: a burst of 3..5
      large transfers (5,000..9,500 CNY) to one payee the victim never paid, seconds
      apart; then the next victim, device and payee;
    - `mule`: one mule account per process (a Class I account: no Class II inflow cap),
      shared by the mule-pattern users; many different payers (scam victims, each on
      their own phone, authorizing with their own password) send it 500..2,000 CNY each.

    The patterns alternate as the users start (the first a stolen device).

    No second factor: a challenge stops the request. Every outcome line says `fraud`."""

    channel = "app"
    weight = _fraud_weight(FRAUD_SHARE)
    abstract = FRAUD_SHARE <= 0
    wait_time = between(0.5, 2.0)

    started: ClassVar[int] = 0  # fraudsters started in this process: patterns alternate
    mule_account: ClassVar[dict[str, Any] | None] = None  # the process's mule, shared

    def on_start(self) -> None:
        super().on_start()
        self.pattern = RISK_FRAUD_PATTERNS[FraudUser.started % len(RISK_FRAUD_PATTERNS)]
        FraudUser.started += 1
        if FraudUser.mule_account is None:
            # One mule per process: every mule-pattern user steers its payers there, so
            # the payee sees many payers within the hour, as a mule does.
            FraudUser.mule_account = Shared.rng.choice(self.customers)
        self.mule = FraudUser.mule_account
        self.new_episode()

    def new_episode(self) -> None:
        self.me = Shared.rng.choice(self.customers)  # the victim
        self.thief = thief_device(Shared.rng)
        self.payee = self.other_customer()  # also never self.me
        self.burst = Shared.rng.randint(3, 5)

    def device(self) -> dict[str, str]:
        return self.thief if self.fraud == "stolen_device" else device_for(self.me, self.channel)

    def debit_auth(self, account_id: str) -> tuple[str, str]:
        return account_id, self.me["password"]  # the victim's, stolen with their phone

    @tag("fraud")
    @task
    def commit_fraud(self) -> None:
        if self.pattern == "stolen_device":
            self.stolen_device()
        else:
            self.mule_payment()

    def stolen_device(self) -> None:
        account = str(self.me["class_ii"][0])
        self.fraud = "stolen_device"
        try:
            self.money(
                "/v1/transfers",
                {
                    "debit_account_id": account,
                    "credit_account_id": str(self.payee["class_ii"][0]),
                    "amount_minor": Shared.rng.randint(500_000, 950_000),
                },
                name="POST /v1/transfers",
                operation="transfer",
                debit_auth=self.debit_auth(account),
            )
        finally:
            self.fraud = ""
        self.burst -= 1
        if self.burst <= 0:
            self.new_episode()

    def mule_payment(self) -> None:
        payer = self.other_customer()
        while payer is self.mule and len(self.customers) > 2:
            payer = self.other_customer()
        self.me = payer  # the scam victim pays from their own phone
        account = str(payer["class_ii"][0])
        self.fraud = "mule"
        try:
            self.money(
                "/v1/transfers",
                {
                    "debit_account_id": account,
                    "credit_account_id": str(self.mule["class_i"]),
                    "amount_minor": Shared.rng.randint(50_000, 200_000),
                },
                name="POST /v1/transfers",
                operation="transfer",
                debit_auth=(account, payer["password"]),
            )
        finally:
            self.fraud = ""


# --- the day, scaled to the run ------------------------------------------------------------


class DiurnalCampaignShape(LoadTestShape):
    """A campaign day squeezed into the run: night trough, daytime waves, a midnight spike.

    Opt-in (`TALLY_LOADTEST_SHAPE=diurnal`): without it plain `-u/-r/-t` runs as usual.
    The run length is `-t` (or TALLY_LOADTEST_SECONDS, default 300); the peak user count
    is `-u` (or TALLY_LOADTEST_USERS, default 200). The first 80% of the run is a day from
    06:00 to 24:00 (a morning rise, a lunch and an evening wave at ~60% of the peak), the
    last 20% is the campaign opening at midnight: a burst to the full peak (the 4-7x over
    the daily average that DOMAIN.md reports) that decays over a few "minutes".
    """

    abstract = os.environ.get("TALLY_LOADTEST_SHAPE", "") != "diurnal"
    use_common_options = True

    def _settings(self) -> tuple[float, int]:
        options = getattr(getattr(self, "runner", None), "environment", None)
        parsed = getattr(options, "parsed_options", None)
        run_time = getattr(parsed, "run_time", None) or float(
            os.environ.get("TALLY_LOADTEST_SECONDS", "300")
        )
        users = getattr(parsed, "num_users", None) or int(
            os.environ.get("TALLY_LOADTEST_USERS", "200")
        )
        return float(run_time), int(users)

    def tick(self) -> tuple[int, float] | None:
        run_time_s, peak_users = self._settings()
        elapsed_s = self.get_run_time()
        if elapsed_s >= run_time_s:
            return None
        users = max(1, round(peak_users * diurnal_fraction(elapsed_s / run_time_s)))
        return users, float(max(1, peak_users))  # the midnight burst is abrupt: 1 s to peak


def _slug(parsed: dict[str, Any] | None) -> str:
    if not parsed or not isinstance(parsed.get("type"), str):
        return ""
    return str(parsed["type"]).removeprefix(PROBLEM_BASE)


def _backoff_s(attempt: int, headers: Any) -> float:
    retry_after: Any = headers.get("retry-after") if headers is not None else None
    if retry_after and str(retry_after).isdigit():
        return min(RETRY_AFTER_MAX_S, float(retry_after))
    return float(min(RETRY_AFTER_MAX_S, 0.05 * 2**attempt * (1 + Shared.rng.random())))


def _step_state(read: dict[str, Any], step: str) -> str:
    """The state of `step` in a VerificationRead or CardBindingRead ("" if not required)."""
    for entry in read.get("steps") or ():
        if entry.get("step") == step:
            return str(entry.get("state") or "")
    return ""


def _failed_step(read: dict[str, Any]) -> str:
    """The first step that failed or expired (or, none: the first still pending)."""
    steps = read.get("steps") or ()
    for states in (("failed", "expired"), ("pending",)):
        for entry in steps:
            if entry.get("state") in states:
                return str(entry.get("step"))
    return "unknown"


def _failed_attempt(read: dict[str, Any]) -> bool:
    """Whether a step of this pending verification failed an attempt and has attempts
    left (a step's `reasons` say why its last attempt failed)."""
    return any(
        entry.get("state") == "pending" and entry.get("reasons") and entry.get("attempts", 0)
        for entry in read.get("steps") or ()
    )
