"""The load test's starting state, created through the HTTP API like a bank's branches would.

`create_dataset(url, customers=200, merchants=10)` registers customers at the
counter (the real-name verification's counter policy: the ID's structure, the
identity database through the server's providers and the teller's confirmation,
so a customer is `verified` in that one call when the database agrees), opens each
a Class I account face to face with a cash deposit, binds that card at the counter
(the issuer check, on the bank's own records), opens a Class II account remotely
(the app, on that binding), records a face-to-face check on the Class II account
(so it may take money from non-bound accounts) and tops it up from the bound card.
Merchants get a Class I account that receives card payments. The result is written
as one JSON file that the Locust users read (`TALLY_LOADTEST_DATASET`) and the
audit uses to know which accounts to look at.

Identity numbers are derived from `seed`, so two runs against the same
server with different seeds never collide; a collision anyway (409
customer-exists) is skipped, not fatal, and so is a customer the identity
database does not confirm (the providers' simulated fraud, or a provider that
stayed unavailable): not verified, nothing opened for them; `skipped` counts both
by reason.
"""

from __future__ import annotations

import datetime
import time
import tomllib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson

from channels.client import TallyClient, new_key
from core.services.identity import resident_id_check_character

REPO_ROOT = Path(__file__).resolve().parent.parent
CHANNELS_FILE = REPO_ROOT / "examples" / "channels.toml"
PASSWORD = "135790"
CLASS_I_OPENING_MINOR = 10_000_000  # 100,000 CNY cash at the counter
CLASS_II_OPENING_MINOR = 500_000  # 5,000 CNY topped up from the bound card
SETUP_THREADS = 8
SETUP_RETRIES_MAX = 8
BIRTH_DATE_FIRST = datetime.date(1960, 1, 1)
BIRTH_DAYS_SPAN = 40 * 365  # everyone is an adult


def channel_secrets(path: str | Path = CHANNELS_FILE) -> dict[str, dict[str, Any]]:
    """{channel: {"key_id", "secret", "id"}} from a channel registry file (first secret)."""
    with open(path, "rb") as file:
        channels = tomllib.load(file)["channels"]
    return {
        name: {
            "key_id": entry["secrets"][0]["key_id"],
            "secret": entry["secrets"][0]["secret"],
            "id": entry["id"],
        }
        for name, entry in channels.items()
    }


# The counter's setup (opening cash of 100,000 CNY) is over a teller's cap: a supervisor.
SETUP_ACTORS = {"counter": ("S0001", "supervisor")}


def client(url: str, channel: str, secrets_of: dict[str, dict[str, Any]]) -> TallyClient:
    entry = secrets_of[channel]
    return TallyClient(
        url,
        channel,
        entry["key_id"],
        entry["secret"],
        timeout_s=60.0,
        actor=SETUP_ACTORS.get(channel),
    )


def identity_of(seed: int, index: int) -> tuple[str, str, str]:
    """(name, 18-digit resident id, mobile) of customer `index` of the run with `seed`."""
    day = (seed * 7919 + index // 1000) % BIRTH_DAYS_SPAN
    birth = BIRTH_DATE_FIRST + datetime.timedelta(days=day)
    first = "110105" + birth.strftime("%Y%m%d") + f"{index % 1000:03d}"
    id_number = first + resident_id_check_character(first)
    name = "客户" + chr(0x4E00 + (seed + index) % 20000) + chr(0x4E00 + index % 97)
    mobile = f"13{(seed % 10)}{(seed * 100_003 + index) % 10**8:08d}"
    return name, id_number, mobile


def acknowledged_line(
    channel: str, key: str, operation: str, posting: dict[str, Any]
) -> dict[str, Any]:
    """An outcomes-file line for a 2xx money answer (the same shape the Locust users write)."""
    return {
        "channel": channel,
        "key": key,
        "operation": operation,
        "status": 201,
        "attempts": 1,
        "outcome": "acknowledged",
        "transfer_id": posting["transfer_id"],
        "amount_minor": posting["amount_minor"],
        "debit_account_id": posting["debit_account_id"],
        "credit_account_id": posting["credit_account_id"],
        "pending_id": posting.get("pending_id"),
        "state": posting.get("status"),
        "replayed": False,
    }


def post(
    client: TallyClient,
    path: str,
    body: Any,
    idempotency_key: str | None = None,
    *,
    retry: bool = True,
) -> Any:
    """POST, retried with the same Idempotency-Key while the server sheds load (429/503)
    or the answer is lost (a timeout): bounded, then the last answer or error stands.

    `retry=False` for what has no Idempotency-Key and is not safe to repeat (an account
    opening: a 503 may come after the account was recorded, and a retry then meets the
    PBoC per-class cap)."""
    for attempt in range(SETUP_RETRIES_MAX + 1 if retry else 1):
        try:
            response = client.post(path, body, idempotency_key=idempotency_key)
        except httpx.TimeoutException:
            if attempt == SETUP_RETRIES_MAX:
                raise
            continue
        if response.status_code not in (429, 503) or attempt == SETUP_RETRIES_MAX or not retry:
            return response
        retry_after = response.headers.get("retry-after", "")
        time.sleep(min(1.0, float(retry_after)) if retry_after.isdigit() else 0.1 * 2**attempt)
    raise AssertionError("unreachable")


def _expect(response: Any, status: int, what: str) -> Any:
    if response.status_code != status:
        raise RuntimeError(f"setup: {what} answered {response.status_code}: {response.text[:500]}")
    return response.json() if response.content else None


def _customer(
    url: str, secrets_of: dict[str, dict[str, Any]], seed: int, index: int, merchant: bool
) -> dict[str, Any]:
    """The customer's dataset entry, or {"skipped": why}."""
    name, id_number, mobile = identity_of(seed, index)
    with client(url, "counter", secrets_of) as counter, client(url, "app", secrets_of) as app:
        registered = post(
            counter, "/v1/customers", {"name": name, "id_number": id_number, "mobile": mobile}
        )
        if registered.status_code == 409:
            return {"skipped": "customer-exists"}  # a customer of an earlier run, say
        customer = _expect(registered, 201, "register customer")
        customer_id = customer["customer_id"]
        kyc = customer.get("kyc") or {}
        if kyc.get("status") != "verified":
            # Not confirmed by the identity database (or it stayed unreachable): a real
            # counter would send the customer away; nothing is opened for them.
            return {"skipped": f"kyc-{kyc.get('status', 'unknown')}"}
        class_i = _expect(
            post(
                counter,
                f"/v1/customers/{customer_id}/accounts",
                {"class": "class_i", "password": PASSWORD},
                retry=False,
            ),
            201,
            "open Class I",
        )["account_id"]
        key = new_key()
        deposit = _expect(
            post(
                counter,
                f"/v1/accounts/{class_i}/cash-deposits",
                {"amount_minor": CLASS_I_OPENING_MINOR},
                idempotency_key=key,
            ),
            201,
            "opening cash deposit",
        )
        postings = [acknowledged_line("counter", key, "cash_deposit", deposit)]
        entry: dict[str, Any] = {
            "customer_id": customer_id,
            "name": name,
            "id_number": id_number,
            "mobile": mobile,
            "password": PASSWORD,
            "class_i": class_i,
            "class_ii": [],
            "bindings": [],
            "postings": postings,
        }
        if merchant:
            return entry
        card = {
            "card_number": class_i,
            "card_type": "class_i_debit",
            "holder_name": name,
            "holder_id_number": id_number,
            "reserved_mobile": mobile,
        }
        binding = _expect(
            post(counter, f"/v1/customers/{customer_id}/card-bindings", card),
            201,
            "bind the Class I card at the counter",
        )
        if binding["status"] != "verified":
            raise RuntimeError(f"setup: the counter's binding of an own card is {binding}")
        class_ii = _expect(
            post(
                app,
                f"/v1/customers/{customer_id}/accounts",
                {"class": "class_ii", "password": PASSWORD, "bound_card": card},
                retry=False,
            ),
            201,
            "open Class II on the Class I card's binding",
        )["account_id"]
        entry["bindings"] = [binding["binding_id"]]
        _expect(
            post(counter, f"/v1/accounts/{class_ii}/face-to-face", {"id_number": id_number}),
            200,
            "face-to-face check of the Class II account",
        )
        key = new_key()
        topup = _expect(
            post(
                app,
                f"/v1/accounts/{class_ii}/topups",
                {"amount_minor": CLASS_II_OPENING_MINOR, "password": PASSWORD},
                idempotency_key=key,
            ),
            201,
            "opening top-up of the Class II account",
        )
        postings.append(acknowledged_line("app", key, "topup", topup))
        entry["class_ii"] = [class_ii]
        return entry


def create_dataset(
    url: str,
    *,
    customers: int = 200,
    merchants: int = 10,
    seed: int = 1,
    channels_file: str | Path = CHANNELS_FILE,
) -> dict[str, Any]:
    """Create customers, merchants and their funded accounts on the server at `url`."""
    secrets_of = channel_secrets(channels_file)
    total = customers + merchants
    with ThreadPoolExecutor(SETUP_THREADS) as pool:
        made = list(
            pool.map(
                lambda index: _customer(url, secrets_of, seed, index, index >= customers),
                range(total),
            )
        )
    skipped = Counter(entry["skipped"] for entry in made if "skipped" in entry)
    people = [entry for entry in made[:customers] if "skipped" not in entry]
    shops = [entry for entry in made[customers:] if "skipped" not in entry]
    postings = [line for entry in people + shops for line in entry.pop("postings")]
    if len(people) < 2 or not shops:
        raise RuntimeError(
            f"setup: only {len(people)} customers and {len(shops)} merchants could be created"
            f" (skipped: {dict(skipped) or 'none'}; customer-exists: identity numbers taken by"
            " an earlier run, pass another --seed; kyc-pending: has the server --providers?)"
        )
    return {
        "url": url,
        "seed": seed,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "opening": {
            "class_i_minor": CLASS_I_OPENING_MINOR,
            "class_ii_minor": CLASS_II_OPENING_MINOR,
        },
        "customers": people,
        "merchants": shops,
        "skipped": dict(skipped.most_common()),
        "postings": postings,
    }


def write_dataset(dataset: dict[str, Any], path: str | Path) -> None:
    Path(path).write_bytes(orjson.dumps(dataset, option=orjson.OPT_INDENT_2) + b"\n")


def write_setup_outcomes(dataset: dict[str, Any], directory: str | Path) -> Path:
    """The setup's own money movements as an outcomes file, so the audit can explain them."""
    path = Path(directory) / "outcomes-setup.jsonl"
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in dataset["postings"]))
    return path


def read_dataset(path: str | Path) -> dict[str, Any]:
    value: dict[str, Any] = orjson.loads(Path(path).read_bytes())
    return value
