"""The verdict of a run: targets by failure class, invariants, and the scenario's expectations.

A run passes when every invariant holds, every target is met and every `[expect]` line of
the scenario holds. It is computed from the report dict alone (the checker's findings are
in it: lost transfers, the copies each lost one had, duplicates, digests), so anyone can
recompute it from report.json.

- **Failure classes** come from the faults the run actually met (a `random` scenario's
  draws included) and the failovers it made: a data center of the primary's region lost
  (`dc_outage`, `primary_crash`, `old_primary_returns`) or a same-city failover is
  `same_city`; a `region_outage` or a cross-region failover is `region`; link faults are
  `link`; a slow disk, a skewed clock or a remote DC lost is `degradation`; none is
  `steady`. The most severe present is the run's class for the scenario-wide targets.
- **Targets** (`TARGET_METRICS` in model.py) by class, from the scenario's `[targets]` table
  over these defaults: GB/T 20988-2007 level 6 for a same-city failure (RPO 0, RTO <= 60 s);
  level 5 for losing a region (RPO <= the window the scenario states in `rpo_window_s`,
  30 minutes when it states none; RTO <= the operator's promotion delay + 60 s); and
  availability, the longest time without an acknowledged write, the share of requests
  given up and single-copy acknowledgements for every run.
- **Invariants** no scenario can switch off: no acknowledged transfer lost outside the
  declared RPO (a transfer held by one DC only is never RPO: the RPO of a lost region is
  what the remote replica had not received of what the region held twice), all DCs
  converge, no duplicates, money conserved, limits respected, timestamps increasing,
  results as acknowledged, and every acknowledgement on two DCs when the deployment's
  profile promises it.
"""

from __future__ import annotations

from typing import Any

from .model import FAILURE_CLASSES, TARGET_METRICS, Scenario

SAME_CITY_FAULTS = ("dc_outage", "primary_crash", "old_primary_returns")
LINK_FAULTS = ("link_partition", "link_degradation", "link_flapping")
FAILOVER_CLASSES = ("same_city", "region")
LEVEL_6 = "GB/T 20988 level 6"
LEVEL_5 = "GB/T 20988 level 5"
LEVEL_5_RPO_WINDOW_S = 1800.0  # level 5: RPO 0 to 30 minutes
OPERATOR_MARGIN_S = 60.0  # after the operator decides, a promotion is a same-city one
OPERATOR_DELAY_DEFAULT_S = 300.0

# Scenario-wide defaults by the run's (most severe) failure class. Availability is the share
# of 5 s windows in which customers got at least half their requests acknowledged. Faults
# given as shares of the window cost a share of it; a failover costs its RTO, whatever the
# window: the availability bound is the looser of the class's share and one allowed outage
# (AVAILABILITY_ALLOWANCE_S) in the run's window, so a short run or replay is not failed
# for one failover within its RTO, and a write outage of many minutes still fails.
DEFAULTS: dict[str, dict[str, float]] = {
    "steady": {"availability": 0.999, "no_ack_s_max": 5, "given_up_share": 0.001},
    "degradation": {"availability": 0.98, "no_ack_s_max": 30, "given_up_share": 0.01},
    "link": {"availability": 0.95, "no_ack_s_max": 30, "given_up_share": 0.02},
    "same_city": {"availability": 0.9, "no_ack_s_max": 60, "given_up_share": 0.02},
    "region": {"availability": 0.75, "given_up_share": 0.25},  # no_ack_s_max: the operator's
}
AVAILABILITY_ALLOWANCE_S = {"steady": 5.0, "degradation": 30.0, "link": 30.0, "same_city": 65.0}


def failure_classes(report: dict[str, Any]) -> list[str]:
    """The failure classes of a run, least severe first (["steady"] when nothing failed)."""
    topology = report.get("topology", {})
    data_centers = topology.get("data_centers", {})
    primary_region = next(
        (dc["region"] for dc in data_centers.values() if dc.get("initial_role") == "primary"),
        None,
    )
    found: set[str] = set()
    for fault in report.get("faults", []):
        kind, target = fault.get("kind"), str(fault.get("target", ""))
        if kind == "region_outage":
            found.add("region")
        elif kind in LINK_FAULTS:
            found.add("link")
        elif kind in SAME_CITY_FAULTS:
            regions = {data_centers.get(name, {}).get("region") for name in target.split(",")}
            remote = kind == "dc_outage" and primary_region not in regions
            found.add("degradation" if remote else "same_city")
        elif kind is not None:
            found.add("degradation")
    for failover in report.get("failover_list", []):
        found.add(_failover_class(failover))
    return [name for name in FAILURE_CLASSES if name in found] or ["steady"]


def _failover_class(failover: dict[str, Any]) -> str:
    return "region" if failover.get("kind") == "cross_region" else "same_city"


def build_verdict(report: dict[str, Any], scenario: Scenario) -> dict[str, Any]:
    classes = failure_classes(report)
    targets = _targets(report, scenario, classes)
    invariants = invariants_of(report)
    expectations = []
    for key, expected in scenario.expect.items():
        ok, actual = expect(report, key, expected)
        expectations.append({"key": key, "expected": expected, "actual": actual, "ok": ok})
    failures = [
        f"invariant {name}: {_invariant_reason(name, report)}"
        for name, ok in invariants.items()
        if not ok
    ]
    failures += [
        f"target {row['failure_class']} {row['name']}: measured {row['measured']},"
        f" target {row['target']}"
        for row in targets
        if not row["met"]
    ]
    failures += [
        f"expectation {item['key']}: expected {item['expected']}, got {item['actual']}"
        for item in expectations
        if not item["ok"]
    ]
    return {
        "pass": not failures,
        "failure_classes": classes,
        "targets": targets,
        "invariants": invariants,
        "expectations": expectations,
        "failures": failures,
    }


def single_copy_acks(report: dict[str, Any]) -> int:
    """Acknowledgements whose batch was durable on one DC only and that nobody declared: the
    simulator's count when it reports one (less those of a primary an operator promoted
    alone, the runbook's stated exposure: `single_copy_acks_declared`), else its degraded
    (local-durability) commits, which are exactly that."""
    value = report.get("single_copy_acks")
    if value is None:
        return int(report.get("degraded_acks") or 0)
    return int(value) - int(report.get("single_copy_acks_declared") or 0)


def invariants_of(report: dict[str, Any]) -> dict[str, bool]:
    """What must hold in every run, whatever the scenario says."""
    promised = bool(report.get("two_copy_promised", False))
    return {
        "no_acknowledged_loss_outside_rpo": report["unexpected_lost"] == 0,
        "all_dcs_converge": bool(report["converged"]),
        "no_duplicates": report["duplicates"] == 0,
        "money_conserved": bool(report["money_conserved"]),
        "limits_respected": bool(report["limits_respected"]),
        "timestamps_monotonic": report["timestamp_violations"] == 0,
        "results_as_acknowledged": report["result_mismatches"] == 0,
        "two_copies_when_promised": not promised or single_copy_acks(report) == 0,
        # The day-end's interest postings as the interest checker recomputed them
        # (sim/interest.py): accrual, settlement, maturities, each once.
        "interest_as_expected": not report.get("interest_mismatches", 0),
        # The loans' collections and disbursements as the loan checker's model has them
        # (sim/loan_checker.py): rows, postings, the loan-funding account, acknowledged
        # disbursements present.
        "loans_as_expected": not report.get("loan_mismatches", 0),
        # The risk stage's decisions as the approved rules make them (sim/risk.py: the
        # pure-Python twin on the same postings); trivially true without a [risk] table.
        "risk_as_specified": not report.get("risk_mismatches", 0),
        # The day's applicants (sim/onboarding.py): no data center holds an account of an
        # applicant whose real-name verification did not pass, let alone debited one.
        "only_verified_hold_accounts": not report.get("onboarding_unverified_accounts", 0)
        and not report.get("onboarding_unverified_debited", 0),
        # A journal replay: every outcome that differs from the server's answer has a cause
        # the faults explain (given up, in a fault window, after a changed request).
        "replay_as_server_answered": not (report.get("replay_diff") or {})
        .get("by_class", {})
        .get("unexplained", 0),
    }


def _invariant_reason(name: str, report: dict[str, Any]) -> str:
    if name == "no_acknowledged_loss_outside_rpo":
        return (
            f"{report['unexpected_lost']} acknowledged transfers lost outside the declared RPO"
            f" ({report.get('lost_single_copy', 0)} of the lost were held by one DC only)"
        )
    if name == "two_copies_when_promised":
        return f"{single_copy_acks(report)} single-copy acknowledgements"
    if name == "interest_as_expected":
        failures = ((report.get("deposits") or {}).get("findings") or {}).get("failures", [])
        return f"{report.get('interest_mismatches')} mismatches: " + "; ".join(failures[:3])
    if name == "loans_as_expected":
        failures = ((report.get("loans") or {}).get("findings") or {}).get("failures", [])
        return f"{report.get('loan_mismatches')} mismatches: " + "; ".join(failures[:3])
    if name == "risk_as_specified":
        examples = (report.get("risk") or {}).get("mismatch_examples", [])
        count = report.get("risk_mismatches")
        return f"{count} risk decisions differ from the approved rules: " + "; ".join(examples[:3])
    if name == "only_verified_hold_accounts":
        return (
            f"{report.get('onboarding_unverified_accounts')} accounts of applicants not"
            f" verified, {report.get('onboarding_unverified_debited')} of them debited"
        )
    if name == "all_dcs_converge":
        return f"state digests {report.get('state_digests')}"
    if name == "replay_as_server_answered":
        diff = report.get("replay_diff") or {}
        return (
            f"{diff.get('by_class', {}).get('unexplained')} replayed outcomes differ from the"
            " server's answers with no fault to explain them"
        )
    key = {
        "no_duplicates": "duplicates",
        "timestamps_monotonic": "timestamp_violations",
        "results_as_acknowledged": "result_mismatches",
    }.get(name, name)
    return f"{key} = {report.get(key)}"


def _targets(
    report: dict[str, Any], scenario: Scenario, classes: list[str]
) -> list[dict[str, Any]]:
    operator_s = float(
        report.get("topology", {}).get("failover", {}).get("operator_delay_s")
        or OPERATOR_DELAY_DEFAULT_S
    )
    run_class = classes[-1]
    failovers = report.get("failover_list", [])
    rows: list[dict[str, Any]] = []

    def add(
        name: str, failure_class: str, measured: Any, default: float | None, source: str
    ) -> None:
        declared = scenario.targets.get(failure_class, {}).get(name)
        declared = declared or scenario.targets.get("", {}).get(name)
        if declared is not None:
            operator, bound = declared
            source = "scenario"
        elif default is not None:
            operator, bound = TARGET_METRICS[name][0], default
        else:
            rows.append(_row(name, failure_class, None, measured, True, source))
            return
        met = measured is None or _compare(measured, operator, bound)
        rows.append(_row(name, failure_class, f"{operator} {bound:g}", measured, met, source))

    for failure_class in classes:
        if failure_class not in FAILOVER_CLASSES:
            continue
        mine = [item for item in failovers if _failover_class(item) == failure_class]
        lost = sum(int(item.get("acknowledged_lost") or 0) for item in mine)
        amount = sum(int(item.get("lost_amount_minor") or 0) for item in mine)
        rto: float | str | None = None
        if mine:
            values = [item.get("rto_s") for item in mine]
            rto = "never" if None in values else max(float(v) for v in values if v is not None)
        if failure_class == "same_city":
            add("rpo_transfers", failure_class, lost, 0, LEVEL_6)
            add("rpo_amount_minor", failure_class, amount, 0, LEVEL_6)
            add("rto_s", failure_class, rto, 60, LEVEL_6)
        else:
            window = max((float(item.get("lost_window_s") or 0) for item in mine), default=0.0)
            add("rpo_transfers", failure_class, lost, None, LEVEL_5)
            add("rpo_amount_minor", failure_class, amount, None, LEVEL_5)
            add("rpo_window_s", failure_class, round(window, 3), LEVEL_5_RPO_WINDOW_S, LEVEL_5)
            add("rto_s", failure_class, rto, operator_s + OPERATOR_MARGIN_S, LEVEL_5)
    defaults = DEFAULTS[run_class] | (
        {"no_ack_s_max": operator_s + OPERATOR_MARGIN_S} if run_class == "region" else {}
    )
    availability = report.get("availability", {})
    allowance = AVAILABILITY_ALLOWANCE_S.get(run_class, operator_s + OPERATOR_MARGIN_S + 5)
    window_s = float(report.get("simulated_s") or 0)
    if window_s > 0:
        floor = max(0.0, round(1 - allowance / window_s, 6))
        defaults["availability"] = min(defaults["availability"], floor)
    if run_class not in FAILOVER_CLASSES:
        add("rpo_transfers", run_class, report["acknowledged_lost"], 0, "default")
    add("availability", run_class, availability.get("overall"), defaults["availability"], "default")
    add("no_ack_s_max", run_class, report.get("no_ack_s_max"), defaults["no_ack_s_max"], "default")
    given_up = availability.get("requests_given_up_share")
    add("given_up_share", run_class, given_up, defaults["given_up_share"], "default")
    promised = bool(report.get("two_copy_promised", False))
    profile = (report.get("profile") or {}).get("name", "the deployment")
    add(
        "single_copy_acks",
        run_class,
        single_copy_acks(report),
        0 if promised else None,
        f"{profile} promises two copies" if promised else f"{profile} does not promise two copies",
    )
    declared = int(report.get("single_copy_acks_declared") or 0)
    if declared:
        add(
            "single_copy_acks_declared",
            run_class,
            declared,
            None,
            "an operator promoted a primary with no standby: its exposure, reported",
        )
    return rows


def _row(
    name: str, failure_class: str, target: str | None, measured: Any, met: bool, source: str
) -> dict[str, Any]:
    return {
        "name": name,
        "failure_class": failure_class,
        "target": target,
        "measured": measured,
        "met": met,
        "source": source,
    }


def _compare(measured: Any, operator: str, bound: float) -> bool:
    if not isinstance(measured, int | float):  # "never": no acknowledgement after a failover
        return False
    return {
        "<=": measured <= bound,
        ">=": measured >= bound,
        "<": measured < bound,
        ">": measured > bound,
        "==": measured == bound,
    }[operator]


def expect(report: dict[str, Any], key: str, expected: Any) -> tuple[bool, Any]:
    """One `[expect]` line: an integer or boolean must be equal; a string compares
    (">0", ">=1", "<=10", "==rpo_transfers")."""
    actual = report.get(key)
    if isinstance(expected, bool | int):
        return actual == expected, actual
    text = str(expected).strip()
    for operator in (">=", "<=", "==", ">", "<"):
        if text.startswith(operator):
            operand_text = text[len(operator) :].strip()
            operand = report.get(operand_text) if operand_text in report else float(operand_text)
            if actual is None or operand is None:
                return False, actual
            return _compare(actual, operator, operand), actual
    return str(actual) == text, actual


def targets_table(verdict: dict[str, Any]) -> list[str]:
    """The targets as terminal lines: class, metric, target, measured, met."""
    rows = verdict.get("targets", [])
    if not rows:
        return []
    lines = [f"  {'class':<11} {'target':<17} {'bound':<12} {'measured':<14} met"]
    for row in rows:
        bound = row["target"] if row["target"] is not None else "(reported)"
        met = "yes" if row["met"] else "NO"
        measured = "-" if row["measured"] is None else row["measured"]
        lines.append(
            f"  {row['failure_class']:<11} {row['name']:<17} {bound:<12} {measured!s:<14} {met}"
        )
        if row["name"].startswith("single_copy_acks") and row["target"] is None and row["measured"]:
            lines.append(
                f"  note: {row['measured']} acknowledgements were held by one DC only"
                f" ({row['source']})"
            )
    return lines
