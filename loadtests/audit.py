"""`tally audit`: what the clients were told, checked against the books.

    tally audit DATA_DIR --outcomes OUT        # offline: replay the journal
    tally audit http://127.0.0.1:8080 --outcomes OUT --dataset OUT/dataset.json

The outcomes are the `outcomes-*.jsonl` files the load test's clients wrote
(one line per money request with a known answer). The audit collects every
transfer of the ledger by walking the history of every account (offline:
every account the journal created; online: the dataset's accounts, the bank's
internal accounts and every account a collected transfer names, until no new
one appears) and checks:

1. every acknowledged (2xx) answer is in the ledger exactly once, under the
   transfer id derived from its channel and Idempotency-Key, posted, with
   the amount and accounts the client was told;
2. no refused request was applied, and (`--exclusive`: the run was the
   server's only client) every applied transfer was acknowledged to a
   client or is one whose answer was lost (an "unknown" outcome): nothing
   applied twice or out of nowhere;
3. money is conserved: the balances sum to zero over all accounts (posted
   debits == posted credits), pending debits == pending credits, and every
   account's balance and pending amounts equal the ones recomputed from its
   transfers;
4. no limit passed: no customer account below its floor, no Class II/III
   bucket over its PBoC/product cap, no fresh transfer over its channel's
   single-transfer cap, no account over a channel's daily cap.

The other protocols' lines (`protocol` in the line, loadtests/locustfile.py) are
checked the same way, by the key their transfer id is derived from: an ISO 8583
approval (00, or 05: held by the risk stage) by its operation key (terminal id +
STAN + field 7; its field 38 must be the first 6 hex digits of that id), an ISO
20022 ACSC credit by its clearing reference (the instructing agent + TxId); a PDNG
credit (`held`) like an unknown outcome. Neither client is told the bank's side of the
posting (the cash vault, the clearing account): only the amount and the accounts it
named are compared.

5. real-name verification (issue 17, loadtests/verification.py): every open Class
   II/III account's holder is `verified`; every such account was opened on a card
   binding of its holder whose every required step passed, marked used by it (and
   the one its client was told); no fraudster of the load test (another's face, a
   spoof, another's card) was verified or bound the card;
6. nothing secret written down: no SMS code a client received (`sms_code` lines),
   no ID card image and no liveness token in the server's log (`--server-log`) or in
   any state record ever written (offline: every PUT_STATE entry of the store). In a
   JSON log line or record only strings are searched for codes (an amount is none).

It also counts what the bank's risk rules did (issue 15, loadtests/fraud.py): the
holds a delayed or reviewed answer left in the ledger (`risk_holds_found`), the
blocked or challenged requests it finds not applied (`risk_refused_not_applied`; one
applied is a `refused_applied` error like any refusal), and the summary's `risk`
section: fraudulent requests stopped and legitimate ones challenged or held, from the
answers the outcome lines record.

It prints a summary, writes it as JSON with `--json FILE`, and exits 1 on
any error, 2 when it cannot run.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import sys
import tomllib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from core.data import DEFAULT_CHANNELS_PATH, DEFAULT_RULES_PATH
from core.dsn import redact_dsn
from core.errors import TallyError
from core.store import is_store_url
from ledger.constants import BANK_CHANNEL  # the bank's own settlements (risk holds)
from loadtests.fraud import format_summary, risk_summary

INTERNAL_ACCOUNT_IDS = (1, 2, 3)
# State records not searched for leaked codes: the request nonces (random, many, never
# a customer's data).
NOT_SEARCHED_PREFIXES = (b"nonces/", b"nonce/")
RISK_DECISION_PREFIX = b"risk/d/"  # core.services.risk.DECISION_PREFIX
HISTORY_PAGE = 500
ERRORS_SHOWN_MAX = 20
CUSTOMER_KINDS = ("class_i", "class_ii", "class_iii", "savings", "fixed_deposit", "loan")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        help="the server's URL (http://HOST:PORT), or its store, offline: a data directory,"
        " journal:DIR or postgresql://...",
    )
    parser.add_argument(
        "--outcomes",
        required=True,
        action="append",
        help="a directory of outcomes-*.jsonl files, or one file (repeatable)",
    )
    parser.add_argument("--dataset", help="dataset.json of the run (where to start, online)")
    parser.add_argument("--channels", default=str(DEFAULT_CHANNELS_PATH))
    parser.add_argument("--rules", default=str(DEFAULT_RULES_PATH))
    parser.add_argument(
        "--secrets",
        metavar="FILE",
        help="the server's secrets file (its transfer-id key re-derives each acknowledged"
        " transfer's id); default: the public development key of `tally serve --dev`",
    )
    parser.add_argument(
        "--exclusive",
        action="store_true",
        help="the run was the server's only client: every applied transfer must be explained",
    )
    parser.add_argument("--account-capacity", type=int, default=1 << 20)
    parser.add_argument("--transfer-capacity", type=int, default=1 << 22)
    parser.add_argument(
        "--server-log",
        metavar="FILE",
        action="append",
        default=[],
        help="the server's log, searched for the SMS codes the clients received, ID card"
        " images and liveness tokens (repeatable)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the summary as JSON here")


# --- the books, from either source -------------------------------------------------------


@dataclass(slots=True)
class AccountState:
    account_id: int
    kind: str
    balance_minor: int
    pending_debits_minor: int
    pending_credits_minor: int
    available_minor: int | None
    buckets: list[tuple[str, int, int]] = field(default_factory=list)  # (name, used, limit)
    channel_used: list[tuple[int, int]] = field(default_factory=list)  # (channel id, used)


class Books:
    """Accounts and transfers of a ledger, as the audit needs them."""

    def account(self, account_id: int) -> AccountState | None:
        raise NotImplementedError

    def history(self, account_id: int) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def lookup(self, transfer_id: int) -> dict[str, Any] | None:
        raise NotImplementedError

    def first_accounts(self) -> list[int]:
        raise NotImplementedError

    complete_history = True  # False when the log window has dropped old transfers

    def risk_decisions(self) -> dict[int, dict[str, Any]] | None:
        """The risk stage's recorded decisions by transfer id (`risk/d/<id>` records of
        core/services/risk.py), or None when this source cannot read them."""
        return None

    def verification_records(
        self, dataset: dict[str, Any] | None, outcomes: list[dict[str, Any]]
    ) -> VerificationRecords:
        """Customers, accounts and card bindings as the verification audit reads them."""
        raise NotImplementedError

    def state_values(self) -> Iterator[tuple[bytes, bytes]] | None:
        """Every state record ever written (key, value), or None when this source cannot
        read them."""
        return None


class OfflineBooks(Books):
    """The ledger replayed from a store: a data directory's journal and snapshots, or
    PostgreSQL's entries (`core.store.replay_store`)."""

    def __init__(self, source: str, args: argparse.Namespace, rules: Any) -> None:
        from core.store import read_entries, replay_store
        from ledger.records import account_input_view
        from ledger.types import ACCOUNT_SIZE

        self.source = source
        self.recovered = replay_store(source, args.account_capacity, args.transfer_capacity)
        self.ledger = self.recovered.ledger
        self.rules = rules
        self.complete_history = self.ledger.log_tail == 0
        self.ids: list[int] = []
        from core.entries import EntryKind

        for _seq, entry in read_entries(source):
            if entry.kind != EntryKind.CREATE_ACCOUNTS:
                continue
            payload = entry.payload
            for offset in range(0, len(payload), ACCOUNT_SIZE):
                self.ids.append(account_input_view(payload, offset).id)

    def first_accounts(self) -> list[int]:
        return list(dict.fromkeys(self.ids))

    def risk_decisions(self) -> dict[int, dict[str, Any]] | None:
        decisions: dict[int, dict[str, Any]] = {}
        for key, value in self.recovered.state.items():
            if key.startswith(RISK_DECISION_PREFIX) and value:
                decision = orjson.loads(value)
                decisions[int(decision["transfer_id"], 16)] = decision
        return decisions

    def verification_records(
        self, dataset: dict[str, Any] | None, outcomes: list[dict[str, Any]]
    ) -> VerificationRecords:
        return records_from_state(self.recovered.state)

    def state_values(self) -> Iterator[tuple[bytes, bytes]]:
        """Every value of every PUT_STATE entry in the store (a record deleted or replaced
        since included), then the replayed state (a snapshot's records too)."""
        from core.entries import EntryKind, decode_state_changes
        from core.store import read_entries

        for _seq, entry in read_entries(self.source):
            if entry.kind == EntryKind.PUT_STATE:
                for key, value in decode_state_changes(entry.payload):
                    if value is not None and not key.startswith(NOT_SEARCHED_PREFIXES):
                        yield key, value
        for key, value in self.recovered.state.items():
            if value and not key.startswith(NOT_SEARCHED_PREFIXES):
                yield key, value

    def account(self, account_id: int) -> AccountState | None:
        from ledger.records import account_view
        from ledger.types import AccountFlags
        from limits.reference import counters_effective

        raw = self.ledger.lookup_account(account_id)
        if raw is None:
            return None
        view = account_view(raw)
        debits, credits = view.debits_posted, view.credits_posted
        counters = list(view.counters)
        kind, flags, product_id, counters_day = (
            view.kind,
            view.flags,
            view.product,
            view.counters_day,
        )
        pending = self.ledger.account_pending(account_id)
        assert pending is not None
        product = self.rules.products.get(product_id)
        floor = product.balance_floor_minor if product is not None else 0
        balance = credits - debits
        state = AccountState(
            account_id,
            _kind_name(kind),
            balance,
            pending[0],
            pending[1],
            balance - pending[0] - floor
            if flags & AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
            else None,
        )
        if product is not None and product.kind.value in ("class_ii", "class_iii"):
            today = self.ledger.last_day
            if counters_day <= today:
                counters = counters_effective(counters, counters_day, max(today, counters_day))
            for name, used in zip(
                ("inflow_daily", "inflow_yearly", "outflow_daily", "outflow_yearly"),
                counters,
                strict=True,
            ):
                state.buckets.append((name, int(used), getattr(product, name + "_minor")))
        for channel_id, channel in self.rules.channels.items():
            if channel.daily_cap_minor:
                used = self.ledger.channel_used(account_id, channel_id, self.ledger.last_day)
                state.channel_used.append((channel_id, used))
        return state

    def history(self, account_id: int) -> Iterator[dict[str, Any]]:
        from core.services.records import transfer_read

        before = -1
        while True:
            page = self.ledger.account_history(account_id, before, HISTORY_PAGE)
            for _, record in page:
                yield asdict(transfer_read(record))
            if len(page) < HISTORY_PAGE or page[-1][0] <= 0:
                return
            before = page[-1][0]

    def lookup(self, transfer_id: int) -> dict[str, Any] | None:
        from core.services.records import transfer_read

        record = self.ledger.lookup_transfer(transfer_id)
        return None if record is None else asdict(transfer_read(record))


class OnlineBooks(Books):
    """A running server, read over its HTTP API with the bank's internal channel."""

    def __init__(self, url: str, args: argparse.Namespace, dataset: dict[str, Any] | None) -> None:
        from channels.client import TallyClient

        with open(args.channels, "rb") as file:
            channels = tomllib.load(file)["channels"]
        name = "bank" if "bank" in channels else next(iter(channels))
        secret = channels[name]["secrets"][0]
        self.client = TallyClient(url, name, secret["key_id"], secret["secret"], timeout_s=60)
        self.ids = list(INTERNAL_ACCOUNT_IDS)
        for person in (dataset or {}).get("customers", []) + (dataset or {}).get("merchants", []):
            self.ids.append(int(person["class_i"]))
            self.ids.extend(int(account) for account in person["class_ii"])

    def first_accounts(self) -> list[int]:
        return self.ids

    def _get(self, path: str, query: str = "") -> dict[str, Any] | None:
        response = self.client.get(path, query=query)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:300]}")
        value: dict[str, Any] = response.json()
        return value

    def account(self, account_id: int) -> AccountState | None:
        view = self._get(f"/v1/accounts/{account_id}")
        if view is None:
            return None
        state = AccountState(
            account_id,
            view["kind"],
            view["balance_minor"],
            view["pending_debits_minor"],
            view["pending_credits_minor"],
            view["available_minor"],
        )
        quota = view.get("quota")
        if quota:
            for direction in ("inflow", "outflow"):
                for period in ("daily", "yearly"):
                    bucket = quota[direction][period]
                    state.buckets.append(
                        (f"{direction}_{period}", bucket["used_minor"], bucket["limit_minor"] or 0)
                    )
        return state

    def history(self, account_id: int) -> Iterator[dict[str, Any]]:
        cursor = ""
        while True:
            query = f"limit={HISTORY_PAGE}" + (f"&cursor={cursor}" if cursor else "")
            page = self._get(f"/v1/accounts/{account_id}/history", query)
            if page is None:
                return
            yield from page["items"]
            cursor = page.get("next_cursor") or ""
            if not cursor:
                return

    def lookup(self, transfer_id: int) -> dict[str, Any] | None:
        return self._get(f"/v1/transfers/{transfer_id:032x}")

    def verification_records(
        self, dataset: dict[str, Any] | None, outcomes: list[dict[str, Any]]
    ) -> VerificationRecords:
        """Read through the API: the customers the run knows (the dataset's, the new ones
        of the outcome lines), every account each holds, and the bindings the clients
        were told they opened on (the API names no account's binding: those claims are
        what is checked)."""
        records = VerificationRecords()
        claimed: dict[int, str] = {}  # account -> the binding its client opened it on
        customer_ids: list[str] = []
        for person in (dataset or {}).get("customers", []) + (dataset or {}).get("merchants", []):
            customer_ids.append(person["customer_id"])
            for account, binding_id in zip(
                person["class_ii"], person.get("bindings") or [], strict=False
            ):
                claimed[int(account)] = binding_id
        for line in outcomes:
            if line.get("customer_id"):
                customer_ids.append(line["customer_id"])
            if line.get("outcome") == "opened" and line.get("binding_id"):
                claimed[int(line["account_id"])] = line["binding_id"]
        for customer_id in dict.fromkeys(customer_ids):
            view = self._get(f"/v1/customers/{customer_id}")
            if view is None:
                continue
            status = str((view.get("kyc") or {}).get("status", ""))
            records.customers[customer_id] = {"verified": status == "verified", "status": status}
            for account in view.get("accounts", []):
                account_id = int(account["account_id"])
                records.accounts[account_id] = {
                    "customer": customer_id,
                    "class": CLASS_NUMBER.get(account["class"], 0),
                    "closed": bool(account.get("closed")),
                    "bound": account_id in claimed,
                    "binding_id": claimed.get(account_id, ""),
                }
        for account_id, binding_id in claimed.items():
            owner = records.accounts.get(account_id, {}).get("customer")
            if not owner:
                continue
            view = self._get(f"/v1/customers/{owner}/card-bindings/{binding_id}")
            if view is None:
                continue
            states = {step["step"]: step["state"] for step in view.get("steps", [])}
            records.bindings[binding_id] = {
                "customer": view["customer_id"],
                "status": view["status"],
                "steps_passed": all(states.get(name) == "passed" for name in view["required"]),
                "account": 0,  # the API does not say which
                "card_number": "",
            }
        return records


# --- the audit -----------------------------------------------------------------------------


@dataclass(slots=True)
class Audit:
    errors: list[str] = field(default_factory=list)
    error_counts: Counter[str] = field(default_factory=Counter)
    counts: Counter[str] = field(default_factory=Counter)
    sums: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def error(self, kind: str, message: str) -> None:
        self.error_counts[kind] += 1
        if len(self.errors) < ERRORS_SHOWN_MAX:
            self.errors.append(f"{kind}: {message}")

    @property
    def clean(self) -> bool:
        return not self.error_counts

    def summary(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "errors_total": sum(self.error_counts.values()),
            "errors_by_kind": dict(sorted(self.error_counts.items())),
            "errors_shown": self.errors,
            "counts": dict(sorted(self.counts.items())),
            "sums": self.sums,
            "notes": self.notes,
        }


def read_outcomes(sources: Iterable[str]) -> list[dict[str, Any]]:
    paths: list[str] = []
    for source in sources:
        if os.path.isdir(source):
            paths.extend(sorted(glob.glob(os.path.join(source, "outcomes-*.jsonl"))))
        else:
            paths.append(source)
    lines: list[dict[str, Any]] = []
    for path in paths:
        with open(path, "rb") as file:
            for number, raw in enumerate(file, 1):
                if not raw.strip():
                    continue
                try:
                    lines.append(orjson.loads(raw))
                except orjson.JSONDecodeError as error:
                    raise ValueError(f"{path}:{number}: not JSON ({error})") from error
    return lines


def collect(
    books: Books, audit: Audit
) -> tuple[dict[int, AccountState], dict[int, dict[str, Any]]]:
    """Every account reachable from the first ones through transfers, and every transfer."""
    accounts: dict[int, AccountState] = {}
    transfers: dict[int, dict[str, Any]] = {}
    queue = list(books.first_accounts())
    seen = set(queue)
    while queue:
        account_id = queue.pop()
        state = books.account(account_id)
        if state is None:
            continue
        accounts[account_id] = state
        for view in books.history(account_id):
            transfers[int(view["transfer_id"], 16)] = view
            for name in ("debit_account_id", "credit_account_id"):
                other = int(view[name])
                if other and other not in seen:
                    seen.add(other)
                    queue.append(other)
    audit.counts["accounts"] = len(accounts)
    audit.counts["ledger_transfers"] = len(transfers)
    audit.counts["ledger_transfers_ok"] = sum(
        1 for view in transfers.values() if view["state"] != "failed"
    )
    return accounts, transfers


def check_conservation(
    accounts: dict[int, AccountState],
    transfers: dict[int, dict[str, Any]],
    audit: Audit,
    complete_history: bool,
) -> None:
    balance_total = sum(state.balance_minor for state in accounts.values())
    pending_debits = sum(state.pending_debits_minor for state in accounts.values())
    pending_credits = sum(state.pending_credits_minor for state in accounts.values())
    audit.sums = {
        "balances_minor": balance_total,
        "pending_debits_minor": pending_debits,
        "pending_credits_minor": pending_credits,
    }
    if balance_total != 0:
        audit.error("conservation", f"balances sum to {balance_total}, not 0")
    if pending_debits != pending_credits:
        audit.error(
            "conservation", f"pending debits {pending_debits} != pending credits {pending_credits}"
        )
    if not complete_history:
        audit.notes.append("the log window dropped old transfers: balances not recomputed")
        return
    posted: Counter[int] = Counter()
    held_debits: Counter[int] = Counter()
    held_credits: Counter[int] = Counter()
    for view in transfers.values():
        if view["state"] == "failed":
            continue
        debit, credit = int(view["debit_account_id"]), int(view["credit_account_id"])
        amount = view["amount_minor"]
        if view["kind"] == "hold":
            if view["state"] == "pending":
                held_debits[debit] += amount
                held_credits[credit] += amount
        elif view["kind"] in ("single", "reversal", "capture"):
            posted[debit] -= amount
            posted[credit] += amount
    for account_id, state in accounts.items():
        expected = (posted[account_id], held_debits[account_id], held_credits[account_id])
        found = (state.balance_minor, state.pending_debits_minor, state.pending_credits_minor)
        if expected != found:
            audit.error(
                "recomputed",
                f"account {account_id}: (balance, pending debits, pending credits) is {found},"
                f" its transfers give {expected}",
            )


def check_limits(
    accounts: dict[int, AccountState],
    transfers: dict[int, dict[str, Any]],
    rules: Any,
    audit: Audit,
) -> None:
    for state in accounts.values():
        available = state.available_minor
        if state.kind in CUSTOMER_KINDS and available is not None and available < 0:
            audit.error(
                "limit",
                f"account {state.account_id} ({state.kind}) is {-available} below its floor",
            )
        for name, used, limit in state.buckets:
            audit.counts["buckets_checked"] += 1
            if limit and used > limit:
                audit.error("limit", f"account {state.account_id} {name} used {used} > cap {limit}")
        for channel_id, used in state.channel_used:
            cap = rules.channels[channel_id].daily_cap_minor
            if cap and used > cap:
                audit.error(
                    "limit",
                    f"account {state.account_id} channel {channel_id} daily {used} > cap {cap}",
                )
    for view in transfers.values():
        if view["state"] == "failed" or view["kind"] in ("capture", "void"):
            continue
        channel = rules.channels.get(view["channel_id"])
        if channel is not None and channel.transfer_cap_minor:
            audit.counts["transfer_caps_checked"] += 1
            if view["amount_minor"] > channel.transfer_cap_minor:
                audit.error(
                    "limit",
                    f"transfer {view['transfer_id']} of {view['amount_minor']} passes channel"
                    f" {channel.name}'s cap {channel.transfer_cap_minor}",
                )


COUNTED_CODES = frozenset(
    {"transfer", "payment", "cash_deposit", "cash_withdrawal", "external_transfer_out",
     "external_transfer_in"}
)  # fmt: skip


def check_limits_recomputed(
    accounts: dict[int, AccountState],
    transfers: dict[int, dict[str, Any]],
    bound_of: dict[int, int],
    rules: Any,
    audit: Audit,
) -> None:
    """Limits recomputed from the transfers alone, as lower bounds of what each bucket used.

    Only what certainly counts is added (posted counted transfers and captures whose
    counterparty is not the bound account; single transfers for the channel caps), and
    every reversal is taken off: a lower bound over a cap is a limit passed for certain,
    whatever the finer rules on holds and voids.
    """
    used: Counter[tuple[int, str, str]] = Counter()  # (account, bucket, day or year)
    channel_used: Counter[tuple[int, int, str]] = Counter()  # (account, channel, day)
    for view in transfers.values():
        if view["state"] == "failed" or view["kind"] not in ("single", "capture", "reversal"):
            continue
        debit, credit = int(view["debit_account_id"]), int(view["credit_account_id"])
        amount, day = view["amount_minor"], view["business_day"]
        if view["kind"] == "reversal":
            for account in (debit, credit):
                for bucket in ("inflow", "outflow"):
                    used[(account, bucket + "_daily", day)] -= amount
                    used[(account, bucket + "_yearly", day[:4])] -= amount
                for channel_id in rules.channels:
                    channel_used[(account, channel_id, day)] -= amount
            continue
        if view["kind"] == "single":
            channel_used[(debit, view["channel_id"], day)] += amount
        if view["code"] not in COUNTED_CODES:
            continue
        for account, other, bucket in ((debit, credit, "outflow"), (credit, debit, "inflow")):
            if account in bound_of and bound_of[account] != other:
                used[(account, bucket + "_daily", day)] += amount
                used[(account, bucket + "_yearly", day[:4])] += amount
    for (account, bucket, period), amount in used.items():
        state = accounts.get(account)
        limit = dict((name, cap) for name, _, cap in state.buckets).get(bucket) if state else 0
        if limit and amount > limit:
            audit.error(
                "limit_recomputed",
                f"account {account} {bucket} {period}: its transfers use at least {amount}"
                f" > cap {limit}",
            )
    for (account, channel_id, day), amount in channel_used.items():
        state = accounts.get(account)
        channel = rules.channels.get(channel_id)
        if state is None or state.kind not in CUSTOMER_KINDS or channel is None:
            continue
        if channel.daily_cap_minor and amount > channel.daily_cap_minor:
            audit.error(
                "limit_recomputed",
                f"account {account} channel {channel.name} {day}: its transfers use at least"
                f" {amount} > daily cap {channel.daily_cap_minor}",
            )
    audit.counts["limit_lower_bounds_checked"] = len(used) + len(channel_used)


def bound_accounts(dataset: dict[str, Any] | None) -> dict[int, int]:
    """{Class II account: its bound Class I account} from the dataset (all bind internally)."""
    bound: dict[int, int] = {}
    for person in (dataset or {}).get("customers", []):
        for account in person["class_ii"]:
            bound[int(account)] = int(person["class_i"])
    return bound


def check_outcomes(
    outcomes: list[dict[str, Any]],
    books: Books,
    transfers: dict[int, dict[str, Any]],
    channel_ids: dict[str, int],
    audit: Audit,
    exclusive: bool,
    transfer_id_key: bytes,
) -> None:
    from core.services.records import TransferIds

    derive_transfer_id = TransferIds(transfer_id_key).id

    explained: set[int] = set()
    acknowledged_keys: Counter[tuple[str, str]] = Counter()
    # Keys whose outcome a client learned (a "sent" line of theirs is only an intent).
    answered_keys = {
        (line["channel"], line["key"])
        for line in outcomes
        if "key" in line and line.get("outcome") not in ("sent", None)
    }

    def find(transfer_id: int) -> dict[str, Any] | None:
        view = transfers.get(transfer_id)
        if view is None:
            view = books.lookup(transfer_id)
        return view

    for line in outcomes:
        outcome = line.get("outcome", "")
        audit.counts[f"outcomes_{outcome}"] += 1
        if outcome in ("opened", "failed") or "key" not in line:
            continue
        channel = line["channel"]
        if channel not in channel_ids:
            audit.error("outcome", f"unknown channel {channel!r} in an outcome line")
            continue
        derived = derive_transfer_id(channel_ids[channel], line["key"], 0)
        if outcome == "acknowledged":
            acknowledged_keys[(channel, line["key"])] += 1
            if acknowledged_keys[(channel, line["key"])] == 2:
                audit.error("duplicate", f"{channel} key {line['key']} acknowledged twice")
            check_identity(line, derived, audit)
            view = find(derived)
            explained.add(derived)
            if view is None:
                audit.error(
                    "missing",
                    f"acknowledged {line['operation']} {derived:032x} is not in the ledger",
                )
                continue
            if view["state"] == "failed":
                audit.error(
                    "missing",
                    f"acknowledged {line['operation']} {derived:032x} is in the ledger as failed"
                    f" ({view['result']['name']})",
                )
                continue
            # What the client was told; an ISO 8583 terminal is not told the cash vault's
            # account, an ISO 20022 partner not the clearing account: only what it knows.
            sides = [name for name in ("debit_account_id", "credit_account_id") if name in line]
            told = (line["amount_minor"], *(str(line[name]) for name in sides))
            booked = (view["amount_minor"], *(str(view[name]) for name in sides))
            if told != booked:
                audit.error(
                    "mismatch",
                    f"{line['operation']} {derived:032x}: the client was told (amount, debit,"
                    f" credit) {told}, the ledger has {booked}",
                )
            if (line.get("pending_id") or None) != (view.get("pending_id") or None):
                audit.error(
                    "mismatch",
                    f"{line['operation']} {derived:032x}: pending id {line.get('pending_id')}"
                    f" told, {view.get('pending_id')} booked",
                )
            audit.counts["acknowledged_found"] += 1
            if "protocol" in line:
                audit.counts[f"acknowledged_found_{line['protocol']}"] += 1
            if line.get("risk") in ("delayed", "review"):
                audit.counts["risk_holds_found"] += 1  # a hold the risk stage placed
        elif outcome == "refused":
            view = find(derived)
            if view is not None and view["state"] != "failed":
                audit.error(
                    "refused_applied", f"refused {line['operation']} {derived:032x} was applied"
                )
            elif line.get("risk"):
                audit.counts["risk_refused_not_applied"] += 1  # blocked or challenged
            elif "protocol" in line:
                audit.counts[f"refused_not_applied_{line['protocol']}"] += 1
        elif outcome in ("unknown", "held") or (
            outcome == "sent" and (channel, line["key"]) not in answered_keys
        ):
            # Unknown: the answer was lost. Held: an ISO 20022 credit answered PDNG (the risk
            # controls hold it, or it was shed and never sent again). Sent and never told:
            # the client stopped while it waited (an ISO user writes "sent" before sending).
            # Either way booked at most once, which the exclusive check and conservation prove.
            view = find(derived)
            applied = view is not None and view["state"] != "failed"
            audit.counts[f"{outcome}_applied" if applied else f"{outcome}_not_applied"] += 1
            explained.add(derived)
    if exclusive:
        for transfer_id, view in transfers.items():
            if view["state"] == "failed" or transfer_id in explained:
                continue
            pending_id = view.get("pending_id")
            if (
                pending_id
                and int(pending_id, 16) in explained
                and view["channel_id"] == BANK_CHANNEL
            ):
                # The bank's own settlement of a hold a client was told of (the risk hold
                # behind an ISO 8583 terminal's 05, returned at once: voided); the ledger
                # posts or voids a hold once, so this explains nothing twice.
                audit.counts["settlements_of_acknowledged_holds"] += 1
            else:
                audit.error(
                    "unexplained",
                    f"{view['kind']} {transfer_id:032x} of {view['amount_minor']} on channel"
                    f" {view['channel_id']} was applied but no client was told",
                )


def check_identity(line: dict[str, Any], derived: int, audit: Audit) -> None:
    """The transfer id the client was told (HTTP) is the one derived from its key; an ISO 8583
    approval's field 38 (the first 6 hex digits of its posting's id) agrees with it too. An
    ISO 20022 partner is told no id: its clearing reference is the key."""
    if "transfer_id" in line and line["transfer_id"] != f"{derived:032x}":
        audit.error(
            "identity",
            f"{line['channel']} key {line['key']}: answered id {line['transfer_id']} is not the"
            f" id derived from the key ({derived:032x})",
        )
    authorization = line.get("authorization")
    if authorization and authorization != f"{derived:032x}"[:6].upper():
        audit.error(
            "identity",
            f"{line['channel']} key {line['key']}: field 38 {authorization} is not the id"
            f" derived from the key ({derived:032x})",
        )


# The risk answer an outcome line records -> the decision's outcome the store must hold.
RISK_ANSWER_OUTCOMES = {
    "blocked": "block",
    "challenge": "challenge",
    "challenge_met": "allow",
    "delayed": "delay",
    "review": "review",
}


def check_risk_decisions(
    outcomes: list[dict[str, Any]],
    decisions: dict[int, dict[str, Any]] | None,
    channel_ids: dict[str, int],
    audit: Audit,
    transfer_id_key: bytes,
) -> None:
    """Every risk answer a client saw has the server's decision behind it, with the same
    outcome (a met challenge: allowed with `challenge_met`), and every fraudulent request
    the rules stopped carried the device its pattern used (a stolen device: not the
    victim's). Only where the source holds the decisions (a data directory)."""
    if decisions is None:
        audit.notes.append("risk decisions not read from this source (online)")
        return
    from core.services.records import TransferIds

    derive = TransferIds(transfer_id_key).id
    audit.counts["risk_decisions"] = len(decisions)
    for line in outcomes:
        risk = line.get("risk")
        if not risk or "key" not in line or line["channel"] not in channel_ids:
            continue
        derived = derive(channel_ids[line["channel"]], line["key"], 0)
        decision = decisions.get(derived)
        expected = RISK_ANSWER_OUTCOMES.get(risk)
        if decision is None:
            audit.error("risk_decision", f"{risk} answer for {derived:032x}: no decision recorded")
            continue
        if decision["outcome"] != expected or (
            risk == "challenge_met" and not decision.get("challenge_met")
        ):
            audit.error(
                "risk_decision",
                f"{risk} answer for {derived:032x}: the decision says {decision['outcome']}"
                f" (challenge met: {decision.get('challenge_met')})",
            )
            continue
        audit.counts["risk_decisions_as_answered"] += 1
        if line.get("fraud") == "stolen_device":
            device = (decision.get("context") or {}).get("device", "")
            if device.startswith("x-"):
                audit.counts["risk_stolen_devices_seen"] += 1
            else:
                audit.error("risk_decision", f"stolen-device {derived:032x}: device {device!r}")


# --- real-name verification (issue 17) -------------------------------------------------

OPENED_CLASSES = (2, 3)  # Class II and III: opened remotely on a card binding
CLASS_NUMBER = {"class_i": 1, "class_ii": 2, "class_iii": 3}
CODE_PATTERN = re.compile(r"(?<![0-9A-Za-z.])[0-9]{6}(?![0-9A-Za-z])")
# What an ID card image (raw, base64 from its first byte, or the simulator's text inside
# it) and a liveness SDK token look like: none may reach the log or the state.
IMAGE_AND_TOKEN_MARKERS = (
    "iVBORw0KGgo",  # base64 of the PNG signature
    "/9j/",  # base64 of the JPEG magic
    "\x89PNG",
    "\xff\xd8\xff",
    "Tally-ID-Card",  # core.providers.population.ID_CARD_KEYWORD, the text an image holds
    "lv1.face-",  # a liveness token (core.providers.population.liveness_token)
)


@dataclass(slots=True)
class VerificationRecords:
    """What the verification audit reads, from the state (offline) or the API (online):
    customers {id: {"verified": bool, "status": str}}, accounts {id: {"customer",
    "class" (1, 2, 3), "closed", "binding_id"}}, bindings {id: {"customer", "status",
    "steps_passed": bool (every step its policy required passed), "account"}}."""

    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    accounts: dict[int, dict[str, Any]] = field(default_factory=dict)
    bindings: dict[str, dict[str, Any]] = field(default_factory=dict)


def binding_entry(record: dict[str, Any]) -> dict[str, Any]:
    """A `binding/<id>` record (core/services/verification.py) as the audit reads it."""
    steps = record.get("steps") or {}
    passed = all(
        (steps.get(name) or {}).get("state") == "passed" for name in record.get("required") or ()
    )
    account = int(record.get("account") or 0)
    return {
        "customer": record["customer"],
        "status": "used" if account else "unused",
        "steps_passed": passed,
        "account": account,
        "card_number": (record.get("bound") or {}).get("card_number", ""),
    }


def records_from_state(state: dict[bytes, bytes]) -> VerificationRecords:
    """The verification records of a replayed customer state."""
    from core.services.state import kyc_verified

    records = VerificationRecords()
    for key, value in state.items():
        if not value:
            continue
        if key.startswith(b"customer/"):
            record = orjson.loads(value)
            kyc = record.get("kyc") or {}
            records.customers[record["id"]] = {
                "verified": kyc_verified(kyc),
                "status": str(kyc.get("status", "")),
            }
        elif key.startswith(b"account/"):
            record = orjson.loads(value)
            bound = record.get("bound") or {}
            records.accounts[int(record["id"])] = {
                "customer": record["customer"],
                "class": int(record["class"]),
                "closed": bool(record.get("closed")),
                "bound": bool(bound),
                "binding_id": bound.get("binding_id", ""),
            }
        elif key.startswith(b"binding/"):
            record = orjson.loads(value)
            records.bindings[record["id"]] = binding_entry(record)
    return records


def check_verification(
    records: VerificationRecords,
    outcomes: list[dict[str, Any]],
    audit: Audit,
) -> None:
    """Every open Class II/III account's holder is verified; every such account was opened
    on a binding of its holder that passed every step its policy required and names it;
    what a client was told it opened on a binding is that binding; no fraudster the
    load test sent (`pattern` on a verification line) was verified or bound the card."""
    for account_id, account in records.accounts.items():
        if account["class"] not in OPENED_CLASSES or account["closed"]:
            continue
        holder = records.customers.get(account["customer"])
        if holder is None or not holder["verified"]:
            status = holder["status"] if holder is not None else "no such customer"
            audit.error(
                "unverified_holder",
                f"account {account_id} (class {account['class']}) is open for customer"
                f" {account['customer']}, whose verification is {status}",
            )
        else:
            audit.counts["class_ii_holders_verified"] += 1
        if not account.get("bound", True):
            continue  # online: the API does not say; the client's claims are checked below
        binding_id = account["binding_id"]
        binding = records.bindings.get(binding_id) if binding_id else None
        if binding is None:
            audit.error(
                "unverified_binding",
                f"account {account_id} is bound to a card without a binding"
                f" ({binding_id or 'none named'})",
            )
            continue
        problem = _binding_problem(binding, account_id, account["customer"])
        if problem:
            audit.error(
                "unverified_binding", f"account {account_id}, binding {binding_id}: {problem}"
            )
        else:
            audit.counts["opening_bindings_verified"] += 1
    for line in outcomes:
        if line.get("outcome") == "opened" and line.get("binding_id"):
            opened = records.accounts.get(int(line["account_id"]))
            if opened is not None and opened["binding_id"] != line["binding_id"]:
                audit.error(
                    "unverified_binding",
                    f"account {line['account_id']} was opened on binding {line['binding_id']}"
                    f" (its client was told), the books say {opened['binding_id'] or 'none'}",
                )
        if line.get("operation") != "verification" or "customer_id" not in line:
            continue
        audit.counts["verification_workflows"] += 1
        customer = records.customers.get(line["customer_id"])
        pattern = line.get("pattern") or ""
        if customer is None:
            audit.error("verification", f"customer {line['customer_id']} is not in the books")
            continue
        if line.get("customer_status") == "verified" and not customer["verified"]:
            audit.error(
                "verification",
                f"customer {line['customer_id']}: told verified, the books say"
                f" {customer['status']}",
            )
        fraud_passed = ""
        if pattern in ("other_face", "spoof") and customer["verified"]:
            fraud_passed = f"{pattern} customer {line['customer_id']} is verified"
        elif pattern == "other_card":
            taken = [
                binding_id
                for binding_id, binding in records.bindings.items()
                if binding["customer"] == line["customer_id"]
                and binding["card_number"] == line.get("card_number")
                and (binding["steps_passed"] or binding["status"] == "used")
            ]
            if taken:
                fraud_passed = f"customer {line['customer_id']} bound another person's card"
        if fraud_passed:
            audit.error("fraud_verified", fraud_passed)
        elif pattern:
            audit.counts["fraud_refused"] += 1


def _binding_problem(binding: dict[str, Any], account_id: int, customer_id: str) -> str:
    if binding["customer"] != customer_id:
        return f"the binding is customer {binding['customer']}'s"
    if not binding["steps_passed"]:
        return "the binding's steps did not all pass"
    if binding["status"] != "used":
        return f"the binding is {binding['status']}, not used"
    if binding["account"] and binding["account"] != account_id:
        return f"the binding was used by account {binding['account']}"
    return ""


def sms_codes(outcomes: list[dict[str, Any]]) -> set[str]:
    """The SMS codes the load test's customers received (their `sms_code` lines)."""
    return {str(line["code"]) for line in outcomes if line.get("operation") == "sms_code"}


def leaks_in_text(text: str, codes: set[str]) -> tuple[set[str], set[str]]:
    """(codes, image or token markers) found in `text`: in a JSON log line or state value
    only its strings are searched for codes (a 6-digit amount is no code)."""
    markers = {marker for marker in IMAGE_AND_TOKEN_MARKERS if marker in text}
    found: set[str] = set()
    if not codes:
        return found, markers
    start = text.find("{")
    value: Any = None
    if start >= 0:
        try:
            value = orjson.loads(text[start:])
        except orjson.JSONDecodeError:
            value = None
    if value is None:
        found.update(match for match in CODE_PATTERN.findall(text) if match in codes)
        return found, markers
    found.update(match for match in CODE_PATTERN.findall(text[:start]) if match in codes)
    for string in _strings(value):
        found.update(match for match in CODE_PATTERN.findall(string) if match in codes)
    return found, markers


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def check_leaks(
    codes: set[str],
    server_logs: list[Path],
    state_values: Iterable[tuple[bytes, bytes]] | None,
    audit: Audit,
) -> None:
    """No SMS code a customer received, no ID card image and no liveness token in the
    server's log or in any state record ever written."""
    audit.counts["sms_codes_checked"] = len(codes)
    leaked: set[str] = set()
    for path in server_logs:
        with open(path, encoding="utf-8", errors="replace") as file:
            for number, line in enumerate(file, 1):
                audit.counts["server_log_lines_checked"] += 1
                found, markers = leaks_in_text(line, codes)
                for marker in markers:
                    audit.error("leak", f"{path.name}:{number}: an image or token ({marker!r})")
                for code in sorted(found):
                    audit.error("leak", f"{path.name}:{number}: the SMS code {code}")
                leaked |= found
    if state_values is None:
        audit.notes.append("state records not searched for codes (online)")
    else:
        for key, value in state_values:
            found, markers = leaks_in_text(value.decode("utf-8", "replace"), codes)
            where = key.decode(errors="replace")
            for marker in markers:
                audit.error("leak", f"state {where}: an image or token ({marker!r})")
            for code in sorted(found):
                audit.error("leak", f"state {where}: the SMS code {code}")
            leaked |= found
            audit.counts["state_values_checked"] += 1
    if not server_logs:
        audit.notes.append("no server log given: not searched for codes")
    audit.counts["sms_codes_not_leaked"] = len(codes - leaked)


def audit_books(
    books: Books,
    outcomes: list[dict[str, Any]],
    rules: Any,
    channel_ids: dict[str, int],
    *,
    exclusive: bool,
    dataset: dict[str, Any] | None = None,
    transfer_id_key: bytes | None = None,
    server_logs: list[Path] | None = None,
) -> Audit:
    """Audit `books` against the clients' `outcomes`; acknowledged transfer ids are re-derived
    with `transfer_id_key` (the server's; default: the development key)."""
    from core.services.server_secrets import DEVELOPMENT

    audit = Audit()
    accounts, transfers = collect(books, audit)
    check_conservation(accounts, transfers, audit, books.complete_history)
    check_limits(accounts, transfers, rules, audit)
    bound = bound_accounts(dataset)
    for line in outcomes:  # Class II accounts opened during the run bind the same card
        if line.get("outcome") == "opened" and dataset is not None:
            owner = next(
                (p for p in dataset["customers"] if p["customer_id"] == line["customer_id"]), None
            )
            if owner is not None:
                bound[int(line["account_id"])] = int(owner["class_i"])
    if bound:
        check_limits_recomputed(accounts, transfers, bound, rules, audit)
    else:
        audit.notes.append("no dataset: bucket limits not recomputed from the transfers")
    key = DEVELOPMENT.transfer_id_key if transfer_id_key is None else transfer_id_key
    check_outcomes(outcomes, books, transfers, channel_ids, audit, exclusive, key)
    check_risk_decisions(outcomes, books.risk_decisions(), channel_ids, audit, key)
    check_verification(books.verification_records(dataset, outcomes), outcomes, audit)
    check_leaks(sms_codes(outcomes), server_logs or [], books.state_values(), audit)
    return audit


def print_summary(summary: dict[str, Any], source: str) -> None:
    print(f"audit of {source}")
    for name, value in summary["counts"].items():
        print(f"  {name:28} {value:,}")
    for name, value in summary["sums"].items():
        print(f"  {name:28} {value:,}")
    for note in summary["notes"]:
        print(f"  note: {note}")
    if summary["clean"]:
        print(
            "audit: clean (every acknowledged transfer booked once, money conserved,"
            " no limit passed, every Class II holder and binding verified, no code leaked)"
        )
        return
    for line in summary["errors_shown"]:
        print(f"  ERROR {line}")
    by_kind = ", ".join(f"{kind} {count}" for kind, count in summary["errors_by_kind"].items())
    print(f"audit: {summary['errors_total']} error(s): {by_kind}")


def run(args: argparse.Namespace) -> int:
    from core.services.server_secrets import DEVELOPMENT, load_server_secrets
    from limits.rules import load_rules

    try:
        rules = load_rules(args.rules)
        secrets = load_server_secrets(args.secrets) if args.secrets else DEVELOPMENT
        with open(args.channels, "rb") as file:
            channel_ids = {
                name: int(entry["id"]) for name, entry in tomllib.load(file)["channels"].items()
            }
        outcomes = read_outcomes(args.outcomes)
        dataset = orjson.loads(Path(args.dataset).read_bytes()) if args.dataset else None
        books: Books
        if args.source.startswith(("http://", "https://")):
            books = OnlineBooks(args.source, args, dataset)
        else:
            if not is_store_url(args.source):
                raise ValueError(
                    f"{redact_dsn(args.source)} is neither a URL nor a data directory"
                    " (nor journal:DIR, postgresql://...)"
                )
            books = OfflineBooks(args.source, args, rules)
    except (OSError, ValueError, KeyError, TallyError) as error:
        print(f"tally audit: {error}", file=sys.stderr)
        return 2
    audit = audit_books(
        books,
        outcomes,
        rules,
        channel_ids,
        exclusive=args.exclusive,
        dataset=dataset,
        transfer_id_key=secrets.transfer_id_key,
        server_logs=[Path(path) for path in args.server_log],
    )
    summary = audit.summary()
    summary["source"] = redact_dsn(args.source)  # a postgresql:// source may carry a password
    # What the risk rules did to the clients' requests (loadtests/fraud.py), from their answers.
    summary["risk"] = risk_summary([line for line in outcomes if line.get("outcome") != "sent"])
    print_summary(summary, summary["source"])
    if summary["risk"]["fraud"]["total"] or summary["risk"]["legitimate"]["total"]:
        print(format_summary(summary["risk"]))
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
    return 0 if audit.clean else 1


def main_for_loadtest(
    source: str,
    out: Path,
    *,
    channels: str,
    rules: str,
    exclusive: bool,
    server_logs: list[Path] | None = None,
) -> dict[str, Any]:
    """`tally audit` as `tally loadtest` runs it: prints, writes OUT/audit.json, returns it."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    words = [source, "--outcomes", str(out), "--channels", channels, "--rules", rules]
    words += ["--dataset", str(out / "dataset.json"), "--json", str(out / "audit.json")]
    if exclusive:
        words.append("--exclusive")
    for path in server_logs or []:
        words += ["--server-log", str(path)]
    status = run(parser.parse_args(words))
    if status == 2:
        return {"clean": False, "errors_total": 1, "counts": {}}
    summary: dict[str, Any] = orjson.loads((out / "audit.json").read_bytes())
    return summary


def _kind_name(kind: int) -> str:
    from ledger.types import AccountKind

    try:
        return AccountKind(kind).name.lower()
    except ValueError:
        return str(kind)
