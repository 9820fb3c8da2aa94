"""Real-name verification in the load test (issue 17): the world it runs in, the steps
it reports, the figures it makes. Plain Python, no Locust (the runner, the audit and the
tests import it; the locustfile's `VerifyingCustomerUser` drives it).

The world. `tally loadtest` starts the provider simulator (`core.providers.sim`,
`tally providers serve`) with a provider's realistic latencies (`PROVIDER_LATENCY_MS`
plus `PROVIDER_JITTER_MS`), a small operating failure rate (answered 503: the bank's
provider client retries with backoff, so a client rarely sees it) and the world's fraud
at fixed rates: an identity whose database photo is somebody else's (`photo_mismatch`),
a card whose reserved mobile is not the holder's (`card_mismatch`), an SMS never
delivered (`sms_loss`). The server calls it with `tally serve --providers URL`. The
benches that need customers start one with no latency and no fraud (`bench_simulator`).

The customer. A new app customer (`VerifyingCustomerUser`) walks the remote opening:
register, photograph the ID card, pass the liveness check, bind a card of another bank,
enter the SMS code the bank sent it, open a Class II account, move a little money. A
share of them are fraudsters (`FRAUD_PATTERNS`): another person's face at the liveness
check, a spoof (a photo held up to the camera), another person's card. Some never
enter the code (`SMS_NOT_ENTERED_SHARE`). Each step is its own Locust request name
(`STEP_REQUESTS`), so the report has each step's latency, the provider's included.

The outcome. One line per workflow in the outcomes file (`operation` "verification",
no `key`: it moves no money; the top-up and transfer at its end write their own lines):
`result` "verified" (the account opened), "rejected" (the bank refused the customer or
the card: `reason` says which step, "customer:liveness", "binding:issuer_card"),
"abandoned" (stopped short: the code lost or never typed, "sms_lost",
"sms_not_entered"; nothing was opened on the binding), "refused" (a request refused,
`reason` its problem type: the ID number already a customer's, say); `pattern` the
fraud the user attempted ("": none). Each SMS code a phone received is a line of its
own (`operation` "sms_code", `code`): the audit searches the server's log and every
state record for them. `verification_summary` turns the lines and Locust's stats into
the report's figures.
"""

from __future__ import annotations

import csv
import datetime
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from core.services.identity import resident_id_check_character

# Per-provider latencies of the load test's simulator (ms): what a real identity
# database, OCR service, liveness service, card network and SMS gateway answer in.
PROVIDER_LATENCY_MS = {"identity": 40, "ocr": 120, "liveness": 80, "issuer": 60, "sms": 30}
PROVIDER_JITTER_MS = 20
PROVIDER_FAILURE_RATE = 0.01  # answered 503 (the bank's provider client retries)
PHOTO_MISMATCH_RATE = 0.03
CARD_MISMATCH_RATE = 0.02
SMS_LOSS_RATE = 0.02
SIMULATOR_SEED = 17

VERIFY_WEIGHT_DEFAULT = 4  # VerifyingCustomerUser's weight (wechat 40, app 35, ...)
VERIFY_FRAUD_SHARE_DEFAULT = 0.1  # of the new customers: a fraud pattern
FRAUD_PATTERNS = ("other_face", "spoof", "other_card")
SMS_NOT_ENTERED_SHARE = 0.03  # of the customers who get their code: never type it
NEW_CUSTOMER_REGION = "310101"  # the dataset's customers are 110105...: never the same ID
NEW_IDENTITIES = 35 * 365 * 1000  # new_identity's numbers: a birth day and a sequence

# Each step of the workflow and the Locust request name it is reported under.
STEP_REQUESTS = {
    "register": "POST /v1/customers",
    "id_document": "POST /v1/customers/{id}/verification/id-document",
    "liveness": "POST /v1/customers/{id}/verification/liveness",
    "bind_card": "POST /v1/customers/{id}/card-bindings",
    "request_sms_code": "POST /v1/customers/{id}/sms-codes",
    "confirm_sms_code": "POST /v1/customers/{id}/sms-codes/{id}/confirmation",
    "open_class_ii": "POST /v1/customers/{id}/accounts",
}
RESULTS = ("verified", "rejected", "abandoned", "refused")


def simulator_options(*, realistic: bool = True) -> dict[str, Any]:
    """`running_simulator` options: the load test's world, or (`realistic=False`) a
    bench's: no latency, no failures, no fraud (every honest check passes at once)."""
    if not realistic:
        return {}
    return {
        "latency_ms": dict(PROVIDER_LATENCY_MS),
        "jitter_ms": PROVIDER_JITTER_MS,
        "failure_rate": PROVIDER_FAILURE_RATE,
        "photo_mismatch_rate": PHOTO_MISMATCH_RATE,
        "card_mismatch_rate": CARD_MISMATCH_RATE,
        "sms_loss_rate": SMS_LOSS_RATE,
    }


def bench_simulator() -> Any:
    """A provider simulator for a bench that registers customers at the counter (a context
    manager yielding its URL, for `tally serve --providers URL`): no latency, no fraud."""
    from core.providers.sim import running_simulator

    return running_simulator(SIMULATOR_SEED, **simulator_options(realistic=False))


def new_identity(number: int) -> tuple[str, str, str]:
    """(name, ID number, mobile) of the load test's new customer `number` (in
    0..NEW_IDENTITIES): a region no dataset customer has, so never one of theirs."""
    day, sequence = divmod(number % NEW_IDENTITIES, 1000)
    birth = datetime.date(1965, 1, 1) + datetime.timedelta(days=day)
    first = NEW_CUSTOMER_REGION + birth.strftime("%Y%m%d") + f"{sequence:03d}"
    id_number = first + resident_id_check_character(first)
    name = "新客" + chr(0x4E00 + number % 20000) + chr(0x4E00 + (number // 20000) % 97)
    mobile = f"15{number % 10**9:09d}"
    return name, id_number, mobile


# --- the figures ----------------------------------------------------------------------


def step_stats(stats_csv: Path) -> dict[str, dict[str, float]]:
    """Locust's stats of each step's request name: count, failures, requests/s, p50, p99."""
    by_name = {name: step for step, name in STEP_REQUESTS.items()}
    found: dict[str, dict[str, float]] = {}
    if not stats_csv.exists():
        return found
    with open(stats_csv, newline="") as file:
        for row in csv.DictReader(file):
            step = by_name.get(row["Name"])
            if step is None or row["Type"] != "POST":
                continue

            def number(column: str, row: dict[str, str] = row) -> float:
                value = row.get(column, "") or "0"
                return float(value) if value != "N/A" else 0.0

            found[step] = {
                "requests": number("Request Count"),
                "failures": number("Failure Count"),
                "requests_per_s": number("Requests/s"),
                "p50_ms": number("50%"),
                "p99_ms": number("99%"),
            }
    return found


def workflow_lines(lines: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("operation") == "verification"]


def verification_summary(
    lines: Iterable[dict[str, Any]], steps: dict[str, dict[str, float]], seconds: float
) -> dict[str, Any]:
    """The report's verification figures, flat where BENCHMARKS.md shows them.

    `verifications_completed`: workflows the bank decided (every step it requires passed,
    or the customer or the card refused); `verifications_per_s` those over the run's
    seconds; `verification_steps_per_s` the step requests a second; `verification_p99_ms_*`
    each step's p99 (the provider's latency included); `verification_refusals_*` the
    workflows the bank refused by reason (rejected or refused), `verification_abandoned_*`
    those that stopped short; `verification_fraud_*` what the fraudsters attempted and
    how many got through (must be 0)."""
    workflows = workflow_lines(lines)
    results: Counter[str] = Counter(line["result"] for line in workflows)
    reasons: Counter[str] = Counter(
        line["reason"] for line in workflows if line["result"] != "verified"
    )
    attempted = Counter(line["pattern"] for line in workflows if line.get("pattern"))
    passed = Counter(
        line["pattern"]
        for line in workflows
        if line.get("pattern") and line["result"] == "verified"
    )
    completed = results["verified"] + results["rejected"]
    seconds = max(seconds, 1e-9)
    summary: dict[str, Any] = {
        "verifications": len(workflows),
        "verifications_completed": completed,
        "verifications_per_s": round(completed / seconds, 2),
        "verification_steps_per_s": round(
            sum(step["requests_per_s"] for step in steps.values()), 1
        ),
        **{f"verifications_{result}": results[result] for result in RESULTS},
        "verification_fraud_attempted": sum(attempted.values()),
        "verification_fraud_passed": sum(passed.values()),
    }
    for step in STEP_REQUESTS:
        if step in steps:
            summary[f"verification_p99_ms_{step}"] = steps[step]["p99_ms"]
    by_key: Counter[str] = Counter()
    for line in workflows:
        if line["result"] in ("rejected", "refused"):
            by_key[f"verification_refusals_{_flat(line['reason'])}"] += 1
        elif line["result"] == "abandoned":
            by_key[f"verification_abandoned_{_flat(line['reason'])}"] += 1
    summary.update(sorted(by_key.items()))
    # The same, structured, for whoever reads the JSON.
    summary["verification"] = {
        "steps": steps,
        "stopped_by_reason": dict(reasons.most_common()),
        "fraud": {
            pattern: {"attempted": attempted[pattern], "passed": passed[pattern]}
            for pattern in FRAUD_PATTERNS
        },
    }
    return summary


def _flat(reason: str) -> str:
    return "".join(char if char.isalnum() else "_" for char in reason.lower()).strip("_")


def format_summary(summary: dict[str, Any]) -> str:
    """Lines for the terminal."""
    if not summary.get("verifications"):
        return "verify     no verification workflow ran"
    p99 = ", ".join(
        f"{step} {summary[f'verification_p99_ms_{step}']:g}"
        for step in STEP_REQUESTS
        if f"verification_p99_ms_{step}" in summary
    )
    refusals = ", ".join(
        f"{reason} {count}"
        for reason, count in summary["verification"]["stopped_by_reason"].items()
    )
    return (
        f"verify     {summary['verifications']:,} workflows: verified"
        f" {summary['verifications_verified']:,}, rejected {summary['verifications_rejected']:,},"
        f" abandoned {summary['verifications_abandoned']:,}, refused"
        f" {summary['verifications_refused']:,}; {summary['verifications_per_s']:g}"
        f" completed/s, {summary['verification_steps_per_s']:g} steps/s; fraud passed"
        f" {summary['verification_fraud_passed']} of {summary['verification_fraud_attempted']}"
        f"\n  p99 ms   {p99 or '-'}\n  reasons  {refusals or '-'}"
    )
