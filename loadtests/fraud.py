"""Fraud in the load test: who the fraudsters are, what devices everybody sends, and what
the bank's risk rules stopped (issue 15).

Every money request of the load test carries the signed body field `"device": {"id",
"ip", "location"}` (`channels/http/routes.py` DEVICE): a legitimate customer always the
same phone (`device_for`), a fraudster a device the victim never used (`thief_device`).
A share of the Locust users (`--fraud-share`, default 1%, `TALLY_LOADTEST_FRAUD_SHARE`)
is `FraudUser` (loadtests/locustfile.py), in one of two patterns:

- `stolen_device`: a victim's credentials on a new device: several large transfers
  (5,000..9,500 CNY) to one payee the victim never paid, within minutes;
- `mule`: the user steers many different payers (scam victims on their own phones) into
  one mule account (a Class I account, shared by the process's mule users) within the
  hour.

The bank's answers, as each outcome line records them (`risk`): `blocked` (403
risk-blocked), `challenge` (403 risk-challenge; a legitimate customer retries with the
same Idempotency-Key and a second factor: `challenge_met` once that passes, whatever the
ledger then answers; a fraudster has no second factor and stops), `delayed` / `review`
(202, a hold the bank releases later).
`fraud` on a line names the pattern of a fraudulent request (absent: legitimate).

`risk_summary(outcomes)` counts what the rules stopped (fraudulent requests blocked,
challenged and not met, held) and what they cost legitimate customers (challenged, held,
blocked: false positives): the load test's report and `tally audit` print it.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from typing import Any

FRAUD_SHARE_DEFAULT = 0.01
FRAUD_PATTERNS = ("stolen_device", "mule")
# The risk answers an outcome line records (`risk`).
RISK_BLOCKED = "blocked"
RISK_CHALLENGE = "challenge"  # refused: no second factor met it
RISK_CHALLENGE_MET = "challenge_met"  # the retry with a second factor posted
RISK_DELAYED = "delayed"
RISK_REVIEW = "review"
STOPPED = frozenset({RISK_BLOCKED, RISK_CHALLENGE, RISK_DELAYED, RISK_REVIEW})
SECOND_FACTOR = "sms"
LOCATIONS = ("CN-11", "CN-31", "CN-44", "CN-32", "CN-33", "CN-51")


def _digest(*parts: str) -> bytes:
    return hashlib.blake2b("|".join(parts).encode(), digest_size=8).digest()


def device_for(customer: dict[str, Any], channel: str) -> dict[str, str]:
    """The customer's own device on `channel` (the same every time): id, IP, location."""
    bits = _digest("device", str(customer["customer_id"]), channel)
    return {
        "id": f"{channel}-{bits.hex()}",
        "ip": f"10.{bits[0]}.{bits[1]}.{max(1, bits[2])}",
        "location": LOCATIONS[bits[3] % len(LOCATIONS)],
    }


def thief_device(rng: random.Random) -> dict[str, str]:
    """A device, IP and location no customer has used (a fraudster's)."""
    return {
        "id": f"x-{rng.getrandbits(64):016x}",
        "ip": f"172.{16 + rng.randrange(16)}.{rng.randrange(256)}.{1 + rng.randrange(254)}",
        "location": f"{rng.uniform(18, 50):.4f},{rng.uniform(75, 130):.4f}",
    }


def risk_of_answer(status: int, slug: str, parsed: dict[str, Any] | None) -> str:
    """What the risk stage did, from the server's answer ("" when it did nothing visible)."""
    if slug == "risk-blocked":
        return RISK_BLOCKED
    if slug == "risk-challenge":
        return RISK_CHALLENGE
    if status == 202 and parsed is not None:
        state = str(parsed.get("status") or "")
        if state in (RISK_DELAYED, RISK_REVIEW):
            return state
    return ""


def risk_summary(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    """What the risk rules did to the money requests of a run, from the outcome lines.

    `fraud`: requests of each pattern, how many the rules stopped (blocked, challenged and
    not met, held for delay or review), how many posted anyway; `legitimate`: requests,
    challenged (met or not), held, blocked: the false positives; `stopped_share` and
    `false_positive_share`."""
    fraud_total: Counter[str] = Counter()
    fraud_stopped: Counter[str] = Counter()
    fraud_by_answer: Counter[str] = Counter()
    legit: Counter[str] = Counter()
    for line in outcomes:
        if "key" not in line or line.get("outcome") in ("opened", "failed"):
            continue
        risk = str(line.get("risk") or "")
        pattern = line.get("fraud")
        if pattern:
            fraud_total[pattern] += 1
            fraud_by_answer[risk or "posted"] += 1
            if risk in STOPPED:
                fraud_stopped[pattern] += 1
        else:
            legit["total"] += 1
            if risk:
                legit[risk] += 1
    total = sum(fraud_total.values())
    stopped = sum(fraud_stopped.values())
    challenged = legit[RISK_CHALLENGE] + legit[RISK_CHALLENGE_MET]
    held = legit[RISK_DELAYED] + legit[RISK_REVIEW]
    flagged = challenged + held + legit[RISK_BLOCKED]
    return {
        "fraud": {
            "total": total,
            "stopped": stopped,
            "by_pattern": {
                pattern: {"total": fraud_total[pattern], "stopped": fraud_stopped[pattern]}
                for pattern in FRAUD_PATTERNS
            },
            "by_answer": dict(sorted(fraud_by_answer.items())),
        },
        "stopped_share": round(stopped / total, 4) if total else None,
        "legitimate": {
            "total": legit["total"],
            "challenged": challenged,
            "challenge_met": legit[RISK_CHALLENGE_MET],
            "held": held,
            "blocked": legit[RISK_BLOCKED],
        },
        "false_positive_share": round(flagged / legit["total"], 6) if legit["total"] else None,
    }


def format_summary(summary: dict[str, Any]) -> str:
    """One line for the terminal."""
    fraud, legit = summary["fraud"], summary["legitimate"]
    return (
        f"risk       fraud stopped {fraud['stopped']:,} / {fraud['total']:,}"
        f" ({', '.join(f'{k} {v}' for k, v in fraud['by_answer'].items()) or 'none'});"
        f" legitimate challenged {legit['challenged']:,} (met {legit['challenge_met']:,}),"
        f" held {legit['held']:,}, blocked {legit['blocked']:,} of {legit['total']:,}"
    )
