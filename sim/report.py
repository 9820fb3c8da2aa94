"""What a run found: report.json, report.html with PNG charts, and the terminal summary.

`digest` is the SHA-256 of the report's canonical JSON without the fields
that depend on the machine or the moment (wall time, speed, memory, code
version, output paths): same seed + same code = same digest.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import html
import itertools
import json
import math
import os
import resource
from array import array
from typing import Any

from cext import simgen
from core.reports import code_version

from . import plot, replay_diff
from . import risk as risk_module
from .checker import limits_respected
from .model import NS_PER_S, REPO_ROOT, SimConfig
from .simulation import Simulation
from .verdict import build_verdict, single_copy_acks, targets_table

MACHINE_FIELDS = (
    "wall_s",
    "simulated_to_wall_ratio",
    "peak_rss_gib",
    "timings",
    "code_version",
    "out",
    "files",
    "drill",  # a real drill's report beside the simulation's (an input, not the run)
)
RPO_IDS_IN_JSON = 1000
AVAILABILITY_WINDOW_S = 5


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)


def _percentiles(histogram: list[int]) -> dict[str, float | int]:
    total = sum(histogram)
    result: dict[str, float | int] = {"count": total}
    if total == 0:
        return result | {"p50_ms": 0.0, "p90_ms": 0.0, "p99_ms": 0.0, "p999_ms": 0.0, "max_ms": 0.0}
    for name, share in (("p50_ms", 0.5), ("p90_ms", 0.9), ("p99_ms", 0.99), ("p999_ms", 0.999)):
        result[name] = _quantile_ms(histogram, total, share)
    top = max(index for index, value in enumerate(histogram) if value)
    result["max_ms"] = round(_bucket_ms(top + 1), 3)
    return result


def _bucket_ms(edge: float) -> float:
    return 10 ** (edge / simgen.LATENCY_BUCKETS_PER_DECADE) / 1000.0


def _quantile_ms(histogram: list[int], total: int, share: float) -> float:
    target = share * total
    running = 0
    for index, value in enumerate(histogram):
        running += value
        if running >= target:
            return round(_bucket_ms(index + 0.5), 3)
    return round(_bucket_ms(len(histogram)), 3)


def build(
    simulation: Simulation, results: dict[str, Any], config: SimConfig, wall_s: float
) -> dict[str, Any]:
    sim = simulation
    clients = sim.clients
    final = results["final_verification"]
    per_dc = results["per_dc"]
    primary = results["primary"]
    window_s = sim.window_ns / NS_PER_S
    traffic = sim.traffic
    request_count = sim.request_count

    # Acknowledged transfers lost, attributed to the failover that lost them.
    lost_final = set(final.missing)
    # A lost transfer that no second DC ever held was acknowledged on one copy: never RPO.
    single_copy = {seq for seq in lost_final if sim.checker.copies_held(seq) < 2}
    rpo_seqs: list[int] = []
    failovers: list[dict[str, Any]] = []
    for failover in sim.failovers:
        lost = [seq for seq in failover.lost if seq in lost_final]
        if failover.kind == "cross_region" or not failover.sync_candidate:
            rpo_seqs.extend(seq for seq in lost if seq not in single_copy)
        lost_of_failover = _lost_details(sim, sorted(lost))
        primary_lost_s = failover.lost_primary_ns / NS_PER_S
        failovers.append(
            {
                "number": failover.number,
                "kind": failover.kind,
                "decided_by": failover.decided_by,
                "from": failover.old_primary,
                "to": failover.new_primary,
                "epoch": failover.epoch,
                "primary_lost_s": round(failover.lost_primary_ns / NS_PER_S, 3),
                "decided_s": round(failover.decided_ns / NS_PER_S, 3),
                "promoted_s": round(failover.promoted_ns / NS_PER_S, 3),
                "first_ack_s": None
                if failover.first_ack_ns is None
                else round(failover.first_ack_ns / NS_PER_S, 3),
                "rto_s": None if failover.rto_ns is None else round(failover.rto_ns / NS_PER_S, 3),
                "new_primary_was_sync_standby": failover.sync_candidate,
                "acknowledged_lost": len(lost),
                "lost_amount_minor": lost_of_failover["amount_minor"],
                # how far back before the primary was lost the lost acknowledgements reach
                "lost_window_s": round(
                    max(0.0, primary_lost_s - lost_of_failover["window_start_s"]), 3
                )
                if lost
                else 0.0,
                "checked_at_promotion": failover.verification.checked
                if failover.verification
                else 0,
            }
        )
    rpo = _lost_details(sim, sorted(rpo_seqs))
    lost_details = _lost_details(sim, sorted(lost_final))
    acknowledged_lost = final.missing_count
    rto_values: list[float] = [item["rto_s"] for item in failovers if item["rto_s"] is not None]
    digests = {name: dc["state_digest"] for name, dc in per_dc.items()}
    converged = len(set(digests.values())) == 1 and sim.converged_in_drain
    kernel_digests = results["kernel_digests"]
    if kernel_digests:
        converged = converged and len(set(kernel_digests.values())) == 1
    results_named = {
        _result_name(code, sim): count for code, count in enumerate(sim.result_counts) if count
    }
    series = time_series(sim, lost_details["rows"])
    exact = exact_latency(sim)
    report: dict[str, Any] = {
        "report": "tally-sim",
        "version": 1,
        "seed": config.seed,
        "plant_bug": config.plant_bug,
        "scenario": sim.scenario.name,
        "scenario_description": sim.scenario.description,
        "traffic": traffic.kind,
        "traffic_profile": traffic.info,
        "users": sim.population.users if sim.population else None,
        "population": (sim.population.describe() | {"accounts": sim.population_counts})
        if sim.population
        else None,
        "hours": round(window_s / 3600, 6),
        "step_ms": config.step_ms,
        "topology": _topology_summary(sim),
        "code_version": code_version(),
        "requests": request_count,
        "attempts": _sum(sim.attempts_per_s),
        "attempts_applied_by_primaries": sim.attempts_applied,
        "batches": sim.batches,
        "postings": per_dc[primary]["requests_posted_ok"],
        "acknowledged": clients.acked,
        "acknowledged_first_attempt": clients.acked_first_attempt,
        "answered_exists": clients.answered_exists,
        "retries": clients.retries,
        "timeouts": clients.timeouts,
        "refusals": clients.refusals,
        "gave_up": clients.gave_up,
        "results": results_named,
        "acknowledged_lost": acknowledged_lost,
        "rpo_transfers": len(rpo_seqs),
        "unexpected_lost": acknowledged_lost - len(rpo_seqs),
        "lost_single_copy": len(single_copy),
        "rpo": rpo,
        "lost": lost_details,
        "result_mismatches": final.mismatched_count,
        "duplicates": sum(dc["duplicates"] for dc in per_dc.values()),
        "timestamp_violations": sum(dc["timestamp_violations"] for dc in per_dc.values()),
        "money_conserved": all(dc["money_conserved"] for dc in per_dc.values()),
        "limits_respected": limits_respected(per_dc)
        and limits_respected({str(index): check for index, check in enumerate(sim.day_checks)}),
        "day_end_checks": [_jsonable(check) for check in sim.day_checks],
        "converged": converged,
        "state_digests": digests,
        "kernel_digests": kernel_digests,
        "final_primary": primary,
        "lookups_confirmed": {
            "looked_up": results["lookup_sample"][0],
            "found_ok": results["lookup_sample"][1],
        },
        "failovers": len(failovers),
        "failover_list": failovers,
        "rto_s": max(rto_values) if rto_values else None,  # the worst failover
        "rto_s_per_failover": [item["rto_s"] for item in failovers],
        "fenced": bool(sim.fences),
        "fences": sim.fences,
        "stale_primary_acks": sim.stale_primary_acks,
        "stale_primary_batches": sim.stale_primary_batches,
        "resyncs": sim.resyncs,
        "degraded_commits": sim.degraded_commits,
        "degraded_acks": sim.degraded_acks,
        "profile": sim.profile.describe(),
        # Acknowledgements whose batch was durable on one DC only when acknowledged; the
        # declared ones were made by a primary an operator promoted alone (region lost).
        "single_copy_acks": sim.single_copy_acks,
        "single_copy_acks_declared": sim.single_copy_acks_declared,
        "two_copy_promised": sim.profile.has("strict_sync") and sim.no_sync_standby == "block",
        "roles": sim.roles(),
        "refused_backlog": sim.refused_backlog,
        "accounts_opened": sim.openings_created,
        "faults": sim.fault_log,
        "availability": _availability(sim, window_s),
        "no_ack_s_max": _no_ack_s_max(sim, window_s),
        "latency": _latency(sim) | {"exact": exact},
        "replication_lag_ms": _lag(sim),
        "throughput": _throughput(sim, window_s),
        "simulated_s": round(window_s, 3),
        "drained_s": round((sim.end_ns - sim.window_ns) / NS_PER_S, 3),
        "checks": {name: _jsonable(dc) for name, dc in per_dc.items()},
        "events": sim.event_log[:2000],
        "series": series,
        "clock": clock(sim),
    }
    report.update(deposits_summary(sim, results))
    report.update(loans_summary(sim, results))
    report.update(risk_summary(sim))
    report.update(onboarding_summary(sim))
    sim.__dict__.pop("_grouped_latencies", None)  # the grouped samples: done with them
    diff = replay_diff.compare(sim, primary)
    if diff is not None:
        report["replay_diff"] = diff
    report["verdict"] = build_verdict(report, sim.scenario)
    report["digest"] = report_digest(report)
    report["wall_s"] = round(wall_s, 3)
    report["simulated_to_wall_ratio"] = round(window_s / wall_s, 2) if wall_s > 0 else None
    report["peak_rss_gib"] = round(peak_rss_gib(), 3)
    report["timings"] = {key: round(value, 3) for key, value in sim.timings.items()}
    if sim.risk is not None:
        report["timings"]["risk_memory"] = sim.risk.memory()
    return report


def onboarding_summary(sim: Simulation) -> dict[str, Any]:
    """The day's applicants (sim/onboarding.py): how verification decided them, and what
    each DC's ledger holds of their accounts; nothing for a journal replay (no population)."""
    if sim.onboarding is None:
        return {}
    section = sim.onboarding.report()
    held = {name: sim.onboarding.check(dc.ledger) for name, dc in sim.dcs.items()}
    section["ledgers"] = held
    return {
        "onboarding": section,
        "onboarding_applicants": section["applicants"],
        "onboarding_rejected": section["rejected"] + section["binding_rejected"],
        "onboarding_unverified_accounts": max(
            (dc["accounts_unverified"] for dc in held.values()), default=0
        ),
        "onboarding_unverified_debited": max(
            (dc["unverified_debited"] for dc in held.values()), default=0
        ),
    }


def risk_summary(sim: Simulation) -> dict[str, Any]:
    """The risk stage's section (sim/risk.py) and the top-level figures scenarios state
    expectations on; nothing for a scenario without [risk] (its digest is unchanged)."""
    if sim.risk is None:
        return {"risk": {"note": sim.risk_note}} if sim.risk_note else {}
    section = sim.risk.report()
    return {
        "risk": section,
        "risk_fraud_total": section["fraud"]["total"],
        "risk_fraud_stopped": section["fraud"]["stopped"],
        "risk_legit_challenged": section["legitimate"]["challenged"],
        "risk_legit_held": section["legitimate"]["held"],
        "risk_mismatches": section["mismatches"],
    }


def deposits_summary(sim: Simulation, results: dict[str, Any]) -> dict[str, Any]:
    """The day-end runs and what the interest checker found (sim/dayend.py, sim/interest.py):
    the `deposits` section and the top-level figures scenarios state expectations on."""
    checker = sim.interest_checker
    if checker is None:
        return {"deposits": None, "interest_mismatches": 0}
    findings = checker.report()
    return {
        "deposits": {
            "runs": [run.to_json() for run in sim.dayend_runs],
            "findings": findings,
            "per_dc": results.get("interest_per_dc", {}),
        },
        "dayends": len({run.day for run in sim.dayend_runs}),
        "interest_accrued_accounts": findings["accrued_accounts"],
        "interest_postings": findings["settlement_postings"],
        "maturities_paid": findings["maturities_paid"] + findings["rollovers"],
        "interest_mismatches": findings["mismatches"],
    }


def loans_summary(sim: Simulation, results: dict[str, Any]) -> dict[str, Any]:
    """The loans (sim/loans.py) and what the loan checker found (sim/loan_checker.py): the
    `loans` section and the top-level figures scenarios state expectations on."""
    checker, book, disbursements = sim.loan_checker, sim.loan_book, sim.disbursements
    if checker is None or book is None or disbursements is None:
        return {"loans": None, "loan_mismatches": 0}
    findings = checker.report()
    per_dc = results.get("loan_per_dc", {})
    final = per_dc.get(results["primary"], {})
    return {
        "loans": {
            "population": book.describe(),
            "disbursements": disbursements.report(),
            "findings": findings,
            "per_dc": per_dc,
        },
        "loans_disbursed": len(disbursements.acknowledged_loans()),
        "loans_collected": final.get("collections", 0),
        "loans_overdue": final.get("overdue", 0),
        "loan_mismatches": findings["mismatches"],
    }


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    """Integers JSON readers would round (above 2**53) as strings."""
    return {
        key: (str(value) if isinstance(value, int) and abs(value) >= 1 << 53 else value)
        for key, value in values.items()
    }


def report_digest(report: dict[str, Any]) -> str:
    canonical = {
        key: value for key, value in report.items() if key not in MACHINE_FIELDS and key != "digest"
    }
    for key in ("rpo", "lost"):  # the rows go to lost_transfers.csv; their ids stay in the JSON
        if isinstance(canonical.get(key), dict):
            canonical[key] = {
                name: value for name, value in canonical[key].items() if name != "rows"
            }
    encoded = json.dumps(canonical, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(encoded).hexdigest()


def _sum(values: Any) -> int:
    return int(sum(values))


def _result_name(code: int, sim: Simulation | None = None) -> str:
    if sim is not None and sim.risk is not None and code in risk_module.RESULT_NAMES:
        return risk_module.RESULT_NAMES[code]  # the simulated channel's risk refusals
    return replay_diff.result_name(code)


def _lost_details(sim: Simulation, seqs: list[int]) -> dict[str, Any]:
    amount = 0
    rows = []
    for seq in seqs:
        transfer = sim.traffic.record(seq)
        acked = sim.ack_result[seq]
        moved = acked in (0, 37)
        if moved:
            amount += transfer.amount
        rows.append(
            (seq, simgen.request_id(seq), acked, sim.ack_ms[seq], transfer.amount if moved else 0)
        )
    times = [row[3] for row in rows]
    return {
        "count": len(rows),
        "amount_minor": amount,
        "window_start_s": round(min(times) / 1000, 3) if times else None,
        "window_end_s": round(max(times) / 1000, 3) if times else None,
        "ids": [f"{row[1]:032x}" for row in rows[:RPO_IDS_IN_JSON]],
        "ids_listed": min(len(rows), RPO_IDS_IN_JSON),
        "rows": rows,
    }


def _topology_summary(sim: Simulation) -> dict[str, Any]:
    topology = sim.topology
    return {
        "source": os.path.relpath(topology.source, REPO_ROOT)
        if topology.source.startswith(str(REPO_ROOT))
        else topology.source,
        "regions": {
            name: {"client_share": region.client_share} for name, region in topology.regions.items()
        },
        "data_centers": {
            name: {
                "region": dc.region,
                "replication": dc.replication,
                "priority": dc.priority,
                "initial_role": dc.initial_role,
            }
            for name, dc in topology.data_centers.items()
        },
        "links_ms": {name: link.latency_ns / 1e6 for name, link in topology.links.items()},
        "profile": sim.profile.name,
        "no_sync_standby": sim.no_sync_standby,
        "patroni": {
            "ttl_s": topology.patroni_ttl_ns / NS_PER_S,
            "loop_wait_s": topology.loop_wait_ns / NS_PER_S,
            "retry_timeout_s": topology.retry_timeout_ns / NS_PER_S,
            "promote_base_s": topology.promote_base_ns / NS_PER_S,
            "rebuild_s_per_million_accounts": topology.rebuild_ns_per_million_accounts / NS_PER_S,
            "any_standby_when_no_sync": topology.any_standby_when_no_sync,
            "nofailover": [name for name, dc in topology.data_centers.items() if dc.nofailover],
        },
        "failover": {
            "same_region": topology.same_region,
            "cross_region": topology.cross_region,
            "operator_delay_s": topology.operator_delay_ns / NS_PER_S,
            "suspect_after_ms": topology.suspect_ns / 1e6,
            "witness": topology.witness,
        },
        "client_timeout_ms": topology.client_timeout_ns / 1e6,
        "log_retention_s": topology.log_retention_ns / NS_PER_S,
        "overrides": sim.scenario.topology_overrides,
    }


def _availability(sim: Simulation, window_s: float) -> dict[str, Any]:
    """Share of time the service acknowledged writes: a 5 s window is down when its
    customers' new requests got less than half as many acknowledgements (of any attempt)."""
    seconds = sim.seconds
    windows = math.ceil(window_s / AVAILABILITY_WINDOW_S)
    result: dict[str, Any] = {"window_s": AVAILABILITY_WINDOW_S}
    down_any = 0
    counted_any = 0
    per_region_down = []
    for region in range(2):
        down = counted = 0
        for window in range(windows):
            start = window * AVAILABILITY_WINDOW_S
            end = min(seconds, start + AVAILABILITY_WINDOW_S)
            offered = sum(sim.offered_per_s[region * seconds + s] for s in range(start, end))
            acked = sum(sim.acked_per_s[region * seconds + s] for s in range(start, end))
            if offered == 0:
                continue
            counted += 1
            if acked * 2 < offered:
                down += 1
        per_region_down.append((down, counted))
        name = sim.regions[region] if region < len(sim.regions) else f"r{region}"
        result[f"region_{name}"] = round(1 - down / counted, 6) if counted else None
        result[f"region_{name}_down_s"] = down * AVAILABILITY_WINDOW_S
        down_any += down
        counted_any += counted
    result["overall"] = round(1 - down_any / counted_any, 6) if counted_any else None
    total = sim.clients.acked + sim.clients.gave_up
    result["requests_acknowledged_share"] = (
        round(sim.clients.acked / sim.request_count, 6) if sim.request_count else None
    )
    result["requests_given_up_share"] = round(sim.clients.gave_up / total, 6) if total else None
    return result


def _no_ack_s_max(sim: Simulation, window_s: float) -> int:
    """The longest time, in whole seconds of the traffic window, in which requests were
    offered and none was acknowledged (by any attempt, in any region)."""
    seconds = sim.seconds
    longest = 0
    last_ack = -1  # the last second with an acknowledgement
    waiting = False  # requests were offered since then
    for second in range(min(seconds, math.ceil(window_s))):
        acked = sim.acked_per_s[second] + sim.acked_per_s[seconds + second]
        if acked:
            if waiting:
                longest = max(longest, second - last_ack - 1)
            last_ack, waiting = second, False
        elif sim.offered_per_s[second] + sim.offered_per_s[seconds + second]:
            waiting = True
    if waiting:
        longest = max(longest, min(seconds, math.ceil(window_s)) - last_ack - 1)
    return longest


def _latency(sim: Simulation) -> dict[str, Any]:
    buckets = simgen.LATENCY_BUCKETS
    starts = [0, *sim.phase_starts]
    ends = [*sim.phase_starts, None]
    phases = []
    faults = sim.resolved_faults()
    for index, (start, end) in enumerate(zip(starts, ends, strict=True)):
        active = [
            f"{fault.spec.kind}:{fault.spec.target}"
            for fault in faults
            if fault.start_ns <= start and (fault.end_ns > start)
        ]
        regions = {}
        for region in range(2):
            offset = (index * 2 + region) * buckets
            histogram = list(sim.hist_phase[offset : offset + buckets])
            name = sim.regions[region] if region < len(sim.regions) else f"r{region}"
            regions[name] = _percentiles(histogram)
        merged = [
            sim.hist_phase[(index * 2) * buckets + b]
            + sim.hist_phase[(index * 2 + 1) * buckets + b]
            for b in range(buckets)
        ]
        phases.append(
            {
                "phase": index,
                "name": "steady" if not active else "during " + ", ".join(active),
                "start_s": round(start / NS_PER_S, 3),
                "end_s": None if end is None else round(end / NS_PER_S, 3),
                "all": _percentiles(merged),
                "regions": regions,
            }
        )
    overall = [
        sum(sim.hist_phase[(p * 2 + r) * buckets + b] for p in range(len(starts)) for r in range(2))
        for b in range(buckets)
    ]
    return {
        "overall": _percentiles(overall),
        "phases": phases,
        "measured": "client-observed at the region's gateway, from the first attempt to the"
        " acknowledgement",
    }


def _lag(sim: Simulation) -> dict[str, Any]:
    window = int(sim.window_ns // NS_PER_S)
    result: dict[str, dict[str, float]] = {}
    for name, values in sim.lag_ms.items():
        finite = sorted(v for v in values[:window] if math.isfinite(v))
        if not finite:
            result[name] = {"samples": 0}
            continue
        result[name] = {
            "samples": len(finite),
            "mean_ms": round(sum(finite) / len(finite), 3),
            "p99_ms": round(finite[min(len(finite) - 1, int(0.99 * len(finite)))], 3),
            "max_ms": round(finite[-1], 3),
        }
    return result


def _throughput(sim: Simulation, window_s: float) -> dict[str, Any]:
    seconds = sim.seconds
    acked = [sim.acked_per_s[s] + sim.acked_per_s[seconds + s] for s in range(int(window_s))]
    offered = sim.request_count / window_s if window_s else 0.0
    return {
        "offered_per_s_mean": round(offered, 3),
        "acknowledged_per_s_mean": round(sum(acked) / max(1, len(acked)), 3),
        "acknowledged_per_s_peak": max(acked, default=0),
        "traffic_peak_per_s": round(sim.traffic.info.get("peak_per_s", 0.0), 3),
        "traffic_peak_to_average": round(sim.traffic.info.get("peak_to_average", 0.0), 3),
    }


# --- files -------------------------------------------------------------------------------


def write(report: dict[str, Any], sim: Simulation, out_dir: str) -> dict[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    files: dict[str, str] = {}
    rows = report["lost"]["rows"]
    rpo_ids = {row[0] for row in report["rpo"]["rows"]}
    lost_path = os.path.join(out_dir, "lost_transfers.csv")
    with open(lost_path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(
            [
                "request",
                "transfer_id",
                "acknowledged_result",
                "acknowledged_at_s",
                "amount_minor",
                "rpo",
            ]
        )
        for seq, transfer_id, acked, ack_ms, amount in rows:
            writer.writerow(
                [
                    seq,
                    f"{transfer_id:032x}",
                    _result_name(acked),
                    f"{ack_ms / 1000:.3f}",
                    amount,
                    "yes" if seq in rpo_ids else "no",
                ]
            )
    files["lost_transfers"] = lost_path
    chart_files = charts(sim, report)
    report["rpo"].pop("rows")
    report["lost"].pop("rows")
    for name, data in chart_files.items():
        path = os.path.join(out_dir, name)
        with open(path, "wb") as out:
            out.write(data)
        files[name] = path
    report["files"] = {key: os.path.basename(path) for key, path in files.items()} | {
        "report_json": "report.json",
        "report_html": "report.html",
    }
    json_path = os.path.join(out_dir, "report.json")
    with open(json_path + ".tmp", "w") as out:
        json.dump(report, out, indent=2, sort_keys=False, default=str)
        out.write("\n")
    os.replace(json_path + ".tmp", json_path)
    html_path = os.path.join(out_dir, "report.html")
    with open(html_path, "w") as out:
        out.write(render_html(report))
    return files | {"report_json": json_path, "report_html": html_path}


def time_series(sim: Simulation, lost_rows: list[tuple[int, int, int, int, int]]) -> dict[str, Any]:
    """The run over time, one value per bucket (about 720 buckets per run; None = no data)."""
    bucket_s = sim.series_bucket_ns / NS_PER_S
    window_s = sim.window_ns / NS_PER_S
    count = max(1, math.ceil(window_s / bucket_s))
    seconds = sim.seconds
    buckets = simgen.LATENCY_BUCKETS

    def per_bucket(values: Any, offset: int = 0, mode: str = "mean") -> list[float | None]:
        out: list[float | None] = []
        for index in range(count):
            start = int(index * bucket_s)
            end = min(int((index + 1) * bucket_s), seconds)
            chunk = [values[offset + s] for s in range(start, end)]
            if mode == "sum":
                out.append(float(sum(chunk)))
            elif mode == "max":
                finite = [v for v in chunk if math.isfinite(v)]
                out.append(round(max(finite), 3) if finite else None)
            else:
                out.append(round(sum(chunk) / max(1, len(chunk)), 3))
        return out

    acked_a = per_bucket(sim.acked_per_s, 0)
    acked_b = per_bucket(sim.acked_per_s, seconds)
    p99: list[float | None] = []
    for index in range(count):
        histogram = list(sim.hist_series[index * buckets : (index + 1) * buckets])
        total = sum(histogram)
        p99.append(_quantile_ms(histogram, total, 0.99) if total else None)
    lost = [0.0] * count
    for row in lost_rows:
        lost[min(count - 1, int(row[3] / 1000 / bucket_s))] += 1
    region_names = [
        sim.regions[region] if region < len(sim.regions) else f"r{region}" for region in range(2)
    ]
    return {
        "bucket_s": bucket_s,
        "acknowledged_per_s": [
            (a or 0.0) + (b or 0.0) for a, b in zip(acked_a, acked_b, strict=True)
        ],
        "acknowledged_per_s_by_region": {
            region_names[0]: acked_a,
            region_names[1]: acked_b,
        },
        "offered_per_s": [
            (a or 0.0) + (b or 0.0)
            for a, b in zip(
                per_bucket(sim.offered_per_s, 0),
                per_bucket(sim.offered_per_s, seconds),
                strict=True,
            )
        ],
        "latency_ms": latency_series(sim, count),
        "errors_per_s": error_series(sim, count),
        "p99_ms": p99,
        "replication_lag_ms": {
            name: per_bucket(values, 0, "max") for name, values in sim.lag_ms.items()
        },
        "retries": per_bucket(sim.retries_per_s, 0, "sum"),
        "gave_up": per_bucket(sim.gave_up_per_s, 0, "sum"),
        "acknowledged_lost": lost,
    }


PERCENTILES = (("p50", 500), ("p99", 990), ("p999", 999))  # per mille, nearest rank


def _rank(count: int, per_mille: int) -> int:
    """The nearest-rank index of a percentile among `count` sorted samples."""
    return max(0, (per_mille * count + 999) // 1000 - 1)


def _grouped_latencies(sim: Simulation) -> tuple[array[int], array[int]]:
    """(offsets, samples): the exact latencies (us) grouped by (region, series bucket of
    the acknowledgement) and sorted in each group (`simgen.group_latencies`)."""
    cached = getattr(sim, "_grouped_latencies", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    buckets = sim.series_count
    offsets = array("q", [0]) * (2 * buckets + 1)
    samples = array("I", [0]) * sim.clients.acked
    written = simgen.group_latencies(
        sim.latency_us,
        sim.ack_result,
        sim.ack_ms,
        sim.seed,
        sim.region_a_share,
        sim.series_bucket_ns // 1_000_000,
        buckets,
        offsets,
        samples,
    )
    assert written == len(samples), (written, len(samples))
    sim._grouped_latencies = (offsets, samples)  # type: ignore[attr-defined]
    return offsets, samples


def latency_series(sim: Simulation, count: int) -> dict[str, dict[str, list[float | None]]]:
    """Per region and series bucket (by the acknowledgement's time): p50/p99/p999 in ms of
    the exact latencies, and how many there were."""
    offsets, samples = _grouped_latencies(sim)
    buckets = sim.series_count
    result: dict[str, dict[str, list[float | None]]] = {}
    for region in range(2):
        name = sim.regions[region] if region < len(sim.regions) else f"r{region}"
        values: dict[str, list[float | None]] = {key: [] for key, _ in PERCENTILES}
        values["count"] = []
        for bucket in range(count):
            group = region * buckets + bucket
            first, end = offsets[group], offsets[group + 1]
            values["count"].append(float(end - first))
            for key, per_mille in PERCENTILES:
                values[key].append(
                    samples[first + _rank(end - first, per_mille)] / 1000 if end > first else None
                )
        result[name] = values
    return result


def kth_smallest(groups: list[memoryview], k: int) -> int:
    """The k-th smallest (0-based) value across sorted groups, without merging them: a
    binary search on the value, counting what each group holds at or below it."""
    low, high = 0, simgen.LATENCY_US_MAX
    while low < high:
        middle = (low + high) // 2
        if sum(bisect.bisect_right(group, middle) for group in groups) > k:
            high = middle
        else:
            low = middle + 1
    return low


def exact_latency(sim: Simulation) -> dict[str, Any]:
    """Exact percentiles per client region and overall (nearest rank, ms, 3 decimals: the
    samples are whole microseconds), from every acknowledged request's latency."""
    offsets, samples = _grouped_latencies(sim)
    view = memoryview(samples)
    buckets = sim.series_count
    per_region = [
        [
            view[offsets[group] : offsets[group + 1]]
            for group in range(region * buckets, (region + 1) * buckets)
            if offsets[group + 1] > offsets[group]
        ]
        for region in range(2)
    ]
    result: dict[str, Any] = {}

    def describe(groups: list[memoryview]) -> dict[str, Any]:
        count = sum(len(group) for group in groups)
        entry: dict[str, Any] = {"count": count}
        for key, per_mille in PERCENTILES:
            entry[f"{key}_ms"] = (
                kth_smallest(groups, _rank(count, per_mille)) / 1000 if count else None
            )
        entry["max_ms"] = max(group[-1] for group in groups) / 1000 if count else None
        return entry

    for region in range(2):
        name = sim.regions[region] if region < len(sim.regions) else f"r{region}"
        result[name] = describe(per_region[region])
    result["all"] = describe(per_region[0] + per_region[1])
    result["method"] = (
        "every acknowledged request's latency (first attempt to acknowledgement, whole"
        " microseconds), nearest-rank percentiles"
    )
    return result


def error_series(sim: Simulation, count: int) -> dict[str, Any]:
    """Refusals, timeouts and give-ups per second, per channel and client region, per series
    bucket (only the channels that had any)."""
    slots = simgen.ERROR_CHANNEL_SLOTS
    kinds = simgen.ERROR_KINDS
    bucket_s = sim.series_bucket_ns / NS_PER_S
    errors = sim.errors
    channel_names = _channel_names(sim)
    result: dict[str, Any] = {}
    for slot in range(slots):
        for region in range(2):
            values = {
                kind: [
                    round(
                        errors[((bucket * 2 + region) * slots + slot) * len(kinds) + k] / bucket_s,
                        3,
                    )
                    for bucket in range(count)
                ]
                for k, kind in enumerate(kinds)
            }
            totals = {
                kind: sum(
                    errors[((bucket * 2 + region) * slots + slot) * len(kinds) + k]
                    for bucket in range(sim.series_count)
                )
                for k, kind in enumerate(kinds)
            }
            if any(totals.values()):
                region_name = sim.regions[region] if region < len(sim.regions) else f"r{region}"
                result.setdefault(channel_names[slot], {})[region_name] = values | {
                    "total": totals  # the whole run, the drain included
                }
    return result


def _channel_names(sim: Simulation) -> list[str]:
    names = ["no channel"]
    channels = sim.rules.channels if sim.rules is not None else {}
    for channel in range(1, simgen.ERROR_CHANNEL_SLOTS - 1):
        rule = channels.get(channel)
        names.append(rule.name if rule is not None else f"channel {channel}")
    return [*names, "other channels"]


def clock(sim: Simulation) -> dict[str, Any]:
    """What simulated time 0 is on the clock: local midnight of the simulated day for
    generated traffic (the diurnal curve's hour 0), the first transfer's local time for a
    journal."""
    start_s = float(sim.traffic.info.get("clock_start_s", 0.0))
    return {
        "zone": "Asia/Shanghai (UTC+8)",
        "start_s_of_day": round(start_s, 3),
        "start": plot.clock_label(start_s, with_seconds=True),
    }


def _x_max_s(series: dict[str, Any]) -> float:
    return float(series["bucket_s"]) * len(series["acknowledged_per_s"])


def roles_of(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each DC's role over time: `report["roles"]` when the simulation gives it, else
    derived from the failovers and the faults that took DCs down."""
    if report.get("roles"):
        return list(report["roles"])
    topology = report["topology"]
    dcs = list(topology["data_centers"])
    regions = {
        region: [dc for dc, info in topology["data_centers"].items() if info["region"] == region]
        for region in topology["regions"]
    }
    initial = next(
        (dc for dc, info in topology["data_centers"].items() if info["initial_role"] == "primary"),
        dcs[0] if dcs else "",
    )
    end_s = float(report["simulated_s"]) + float(report.get("drained_s") or 0)
    down: dict[str, list[tuple[float, float]]] = {dc: [] for dc in dcs}
    for fault in report["faults"]:
        if fault["kind"] not in (
            "dc_outage",
            "region_outage",
            "primary_crash",
            "old_primary_returns",
        ):
            continue
        targets: list[str] = []
        for target in str(fault["target"]).split(","):
            targets += regions.get(target, [target] if target in down else [])
        for dc in targets:
            down[dc].append((float(fault["start_s"]), float(fault["end_s"])))
    failovers = sorted(report["failover_list"], key=lambda f: f["promoted_s"])
    cuts = {0.0, end_s}
    for intervals in down.values():
        for start, stop in intervals:
            cuts.update((start, stop))
    for failover in failovers:
        cuts.update((float(failover["decided_s"]), float(failover["promoted_s"])))
    points = sorted(cut for cut in cuts if 0 <= cut <= end_s)

    def role_at(dc: str, t: float) -> str:
        if any(start <= t < stop for start, stop in down[dc]):
            return "down"
        primary = initial
        for failover in failovers:
            if failover["decided_s"] <= t < failover["promoted_s"] and failover["to"] == dc:
                return "promoting"
            if failover["promoted_s"] <= t:
                primary = failover["to"]
        return "primary" if dc == primary else "replica"

    roles: list[dict[str, Any]] = []
    for dc in dcs:
        for start, stop in itertools.pairwise(points):
            if stop <= start:
                continue
            role = role_at(dc, (start + stop) / 2)
            if roles and roles[-1]["dc"] == dc and roles[-1]["role"] == role:
                roles[-1]["to_s"] = stop
            else:
                roles.append({"dc": dc, "role": role, "from_s": start, "to_s": stop})
    return roles


def charts(sim: Simulation, report: dict[str, Any]) -> dict[str, bytes]:
    del sim  # everything drawn is in the report
    series = report["series"]
    bucket_s = series["bucket_s"]
    clock_start_s = report.get("clock", {}).get("start_s_of_day", 0.0)

    def values(items: list[float | None]) -> list[float]:
        return [math.nan if item is None else item for item in items]

    spans = [plot.Span(f["start_s"], f["end_s"], f["kind"]) for f in report["faults"]]
    marks = [
        plot.Mark(item["promoted_s"], f"failover {item.get('from') or '?'}->{item['to']}")
        for item in report["failover_list"]
    ]
    common = {"clock_start_s": clock_start_s}
    out = {}
    rows = [plot.Row(dc) for dc in report["topology"]["data_centers"]]
    by_dc = {row.name: row for row in rows}
    for role in roles_of(report):
        row = by_dc.setdefault(role["dc"], plot.Row(role["dc"]))
        row.bars.append(
            plot.Bar(
                role["from_s"],
                role["to_s"],
                role["role"],
                plot.ROLE_COLORS.get(role["role"], plot.PALETTE[5]),
            )
        )
    for fault in report["faults"]:
        label = f"{fault['kind']} {fault['target']}"
        rows.append(
            plot.Row(label, [plot.Bar(fault["start_s"], fault["end_s"], "fault", "#d9534f")])
        )
    window_s = _x_max_s(series)
    out["gantt.png"] = plot.gantt(
        f"data center roles and faults ({report['scenario']})",
        rows,
        window_s,
        marks,
        **common,
    )
    regions = list(series.get("acknowledged_per_s_by_region", {}))
    throughput = [
        plot.Series(f"acknowledged/s, region {name}", values(items), plot.PALETTE[index])
        for index, (name, items) in enumerate(
            series.get("acknowledged_per_s_by_region", {}).items()
        )
    ]
    throughput.append(
        plot.Series(
            "offered/s (new requests)", values(series["offered_per_s"]), plot.PALETTE[5], style="--"
        )
    )
    out["throughput.png"] = plot.chart(
        "throughput: acknowledged and offered transfers per second",
        f"per s ({bucket_s:g} s buckets)",
        bucket_s,
        throughput,
        spans,
        marks,
        **common,
    )
    styles = {"p50": ":", "p99": "-", "p999": "--"}
    latency_panels = [
        plot.Panel(
            f"region {name}: client-observed latency (exact samples)",
            "ms, log",
            [
                plot.Series(key, values(per_region[key]), plot.PALETTE[1 + i], style=styles[key])
                for i, (key, _) in enumerate(PERCENTILES)
            ],
            log_y=True,
        )
        for name, per_region in series["latency_ms"].items()
    ]
    out["latency_p99.png"] = plot.panels(
        "latency percentiles per region (p50, p99, p999 of each bucket's acknowledgements)",
        bucket_s,
        latency_panels,
        spans,
        marks,
        **common,
    )
    error_panels = []
    for kind in simgen.ERROR_KINDS:
        lines = []
        index = 0
        for channel, per_region in series["errors_per_s"].items():
            for region, kinds in per_region.items():
                if any(kinds[kind]):
                    lines.append(
                        plot.Series(
                            f"{channel} / {region}",
                            values(kinds[kind]),
                            plot.PALETTE[index % len(plot.PALETTE)],
                            style="-" if regions and region == regions[0] else "--",
                            markers=True,
                        )
                    )
                index += 1
        error_panels.append(
            plot.Panel(
                f"{kind.replace('_', ' ')} per second, by channel / region",
                "per s, log",
                lines,
                log_y=True,
            )
        )
    out["errors.png"] = plot.panels(
        "client errors per channel and region (refusals, timeouts, requests given up)",
        bucket_s,
        error_panels,
        spans,
        marks,
        panel_height=200,
        **common,
    )
    lag_series = [
        plot.Series(f"{name}", values(lags), plot.PALETTE[index % len(plot.PALETTE)])
        for index, (name, lags) in enumerate(series["replication_lag_ms"].items())
    ]
    out["replication_lag.png"] = plot.chart(
        "replication lag behind the primary (max per bucket)",
        "ms, log",
        bucket_s,
        lag_series,
        spans,
        marks,
        log_y=True,
        **common,
    )
    out["lost_and_retried.png"] = plot.chart(
        "retried, given-up and lost transfers",
        f"per {bucket_s:g} s bucket, log",
        bucket_s,
        [
            plot.Series("retries", values(series["retries"]), plot.PALETTE[5], markers=True),
            plot.Series("gave up", values(series["gave_up"]), plot.PALETTE[3], markers=True),
            plot.Series(
                "acknowledged, then lost",
                values(series["acknowledged_lost"]),
                plot.PALETTE[4],
                bars=True,
            ),
        ],
        spans,
        marks,
        log_y=True,
        **common,
    )
    drill = report.get("drill")
    if drill:
        out["drill.png"] = plot.comparison(
            f"simulator ({report['scenario']}) beside the drill ({drill['section']})",
            [
                (
                    f"RTO s (simulator / drill: {drill['rto_ratio_sim_to_drill']})",
                    drill["sim"]["rto_s"],
                    drill["drill"]["rto_s"],
                ),
                (
                    "acknowledged lost",
                    drill["sim"]["acknowledged_lost"],
                    drill["drill"]["acknowledged_lost"],
                ),
                ("duplicates", drill["sim"]["duplicates"], drill["drill"]["duplicates"]),
            ],
            ("simulator", "drill"),
        )
    return out


# --- a real drill beside the simulation ------------------------------------------------------

DRILL_KEYS = ("rto_s", "acknowledged_lost", "duplicates", "customers_lost")


def load_drill(path: str) -> dict[str, Any]:
    """A `tally drill failover --json` report; SimError when it is not one."""
    from .model import SimError

    try:
        with open(path) as source:
            data = json.load(source)
    except OSError as error:
        raise SimError(f"--drill {path}: cannot read: {error.strerror or error}") from error
    except ValueError as error:
        raise SimError(f"--drill {path}: not JSON: {error}") from error
    if not isinstance(data, dict) or "rto_s" not in data or "acknowledged_lost" not in data:
        raise SimError(
            f"--drill {path}: not a drill report (a `tally drill failover --json` report has"
            " top-level rto_s and acknowledged_lost)"
        )
    return data


def drill_comparison(report: dict[str, Any], drill: dict[str, Any], path: str) -> dict[str, Any]:
    """The simulator's result beside the drill's for the same kind of failure: the drill's
    top level (the same-city failover) for a same-region failover, its region section
    (`scenario_dc3`) when the simulation's first failover crossed regions."""
    kinds = [item.get("kind") for item in report["failover_list"]]
    section, source = "same-city failover (top level)", drill
    if kinds and kinds[0] == "cross_region" and isinstance(drill.get("scenario_dc3"), dict):
        section, source = "region failover (scenario_dc3)", drill["scenario_dc3"]

    def number(value: Any) -> float | int | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return value

    sim_side = {
        "rto_s": report["rto_s"],
        "acknowledged_lost": report["acknowledged_lost"],
        "duplicates": report["duplicates"],
        "customers_lost": None,  # the simulator has no customers' state (not modelled)
    }
    drill_side = {key: number(source.get(key, drill.get(key))) for key in DRILL_KEYS}
    ratio = None
    if sim_side["rto_s"] is not None and drill_side["rto_s"]:
        ratio = round(float(sim_side["rto_s"]) / float(drill_side["rto_s"]), 3)
    return {
        "file": os.path.basename(path),
        "failover_manager": drill.get("failover_manager"),
        "passed": drill.get("passed"),
        "section": section,
        "sim": sim_side,
        "drill": drill_side,
        "rto_ratio_sim_to_drill": ratio,
        "rto_within_1_5x": None if ratio is None else (1 / 1.5 <= ratio <= 1.5),
        "both_lost_zero": sim_side["acknowledged_lost"] == 0
        and drill_side["acknowledged_lost"] == 0,
    }


def render_html(report: dict[str, Any]) -> str:
    def row(*cells: Any, header: bool = False) -> str:
        tag = "th" if header else "td"
        return (
            "<tr>" + "".join(f"<{tag}>{html.escape(str(cell))}</{tag}>" for cell in cells) + "</tr>"
        )

    verdict = report["verdict"]
    verdict_class = "pass" if verdict["pass"] else "fail"
    summary_keys = (
        "seed",
        "scenario",
        "users",
        "hours",
        "requests",
        "postings",
        "acknowledged",
        "retries",
        "gave_up",
        "acknowledged_lost",
        "unexpected_lost",
        "rpo_transfers",
        "duplicates",
        "result_mismatches",
        "money_conserved",
        "limits_respected",
        "dayends",
        "interest_postings",
        "maturities_paid",
        "interest_mismatches",
        "loans_disbursed",
        "loans_collected",
        "loans_overdue",
        "loan_mismatches",
        "converged",
        "failovers",
        "rto_s",
        "fenced",
        "stale_primary_acks",
        "digest",
        "wall_s",
        "simulated_to_wall_ratio",
        "peak_rss_gib",
        "code_version",
    )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>tally sim: "
        + html.escape(report["scenario"])
        + "</title><style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:13px}"
        ".pass{color:#080}.fail{color:#b00}"
        "img{max-width:100%;border:1px solid #eee;margin:.5em 0}code{font-size:12px}"
        "</style></head><body>",
        f"<h1>tally sim: {html.escape(report['scenario'])}</h1>",
        f"<p>{html.escape(report['scenario_description'])}</p>",
        f"<h2 class='{verdict_class}'>verdict: {verdict_class.upper()}</h2>",
        "<table>"
        + row("expectation", "expected", "actual", "ok", header=True)
        + "".join(
            row(item["key"], item["expected"], item["actual"], item["ok"])
            for item in verdict["expectations"]
        )
        + "".join(row(name, "invariant", "", ok) for name, ok in verdict["invariants"].items())
        + "".join(
            row(
                f"{t['failure_class']} {t['name']}",
                t["target"] or "(reported)",
                t["measured"],
                t["met"],
            )
            for t in verdict["targets"]
        )
        + "</table>",
        "<h2>summary</h2><table>"
        + "".join(row(key, report.get(key)) for key in summary_keys)
        + "</table>",
    ]
    parts += _targets_html(report, row)
    parts += _drill_html(report, row)
    clock_info = report.get("clock", {})
    parts.append(
        "<h2>charts</h2><p>Times are clock times of the simulated day"
        f" ({html.escape(str(clock_info.get('zone', '')))}; the run starts at"
        f" {html.escape(str(clock_info.get('start', '00:00:00')))}). Faults are shaded red;"
        " failovers are blue lines.</p>"
    )
    for name in CHART_FILES:
        parts.append(f"<img src='{name}' alt='{name}'>")
    parts += _latency_html(report, row)
    parts += _errors_html(report, row)
    parts += _replay_html(report, row)
    parts.append("<h2>faults</h2><table>" + row("kind", "target", "start s", "end s", header=True))
    parts += [row(f["kind"], f["target"], f["start_s"], f["end_s"]) for f in report["faults"]]
    parts.append(
        "</table><h2>failovers</h2><table>"
        + row(
            "#",
            "kind",
            "by",
            "from",
            "to",
            "epoch",
            "primary lost s",
            "promoted s",
            "first ack s",
            "RTO s",
            "acked lost",
            header=True,
        )
    )
    parts += [
        row(
            f["number"],
            f["kind"],
            f["decided_by"],
            f["from"],
            f["to"],
            f["epoch"],
            f["primary_lost_s"],
            f["promoted_s"],
            f["first_ack_s"],
            f["rto_s"],
            f["acknowledged_lost"],
        )
        for f in report["failover_list"]
    ]
    rpo = report["rpo"]
    parts.append(
        "</table><h2>RPO: acknowledged transfers lost on asynchronous failover</h2>"
        f"<p>{rpo['count']} transfers, {rpo['amount_minor'] / 100:.2f} CNY, acknowledged between "
        f"{rpo['window_start_s']} s and {rpo['window_end_s']} s (all in lost_transfers.csv).</p>"
        "<p>" + " ".join(f"<code>{html.escape(i)}</code>" for i in rpo["ids"][:200]) + "</p>"
    )
    parts.append(
        "<h2>latency (ms)</h2><table>"
        + row(
            "phase",
            "from s",
            "to s",
            "region",
            "count",
            "p50",
            "p90",
            "p99",
            "p999",
            "max",
            header=True,
        )
    )
    for phase in report["latency"]["phases"]:
        for region, values in phase["regions"].items():
            parts.append(
                row(
                    phase["name"],
                    phase["start_s"],
                    phase["end_s"],
                    region,
                    values["count"],
                    values.get("p50_ms"),
                    values.get("p90_ms"),
                    values.get("p99_ms"),
                    values.get("p999_ms"),
                    values.get("max_ms"),
                )
            )
    parts.append(
        "</table><h2>availability</h2><table>"
        + "".join(row(k, v) for k, v in report["availability"].items())
        + "</table>"
    )
    parts.append(
        "<h2>replication lag</h2><table>"
        + "".join(row(k, json.dumps(v)) for k, v in report["replication_lag_ms"].items())
        + "</table>"
    )
    parts.append("<h2>checks per data center</h2><table>")
    names = list(report["checks"])
    keys = list(report["checks"][names[0]]) if names else []
    parts.append(row("check", *names, header=True))
    parts += [row(key, *(report["checks"][name][key] for name in names)) for key in keys]
    parts.append("</table><h2>resyncs and fences</h2><table>")
    parts += [row(json.dumps(item)) for item in report["resyncs"] + report["fences"]]
    parts.append(
        "</table><h2>results</h2><table>"
        + "".join(row(k, v) for k, v in report["results"].items())
        + "</table>"
    )
    parts += _risk_html(report, row)
    parts += _onboarding_html(report, row)
    parts.append(
        "<h2>events</h2><table>"
        + "".join(
            row(
                e["at_s"],
                e["event"],
                json.dumps({k: v for k, v in e.items() if k not in ("at_s", "event")}),
            )
            for e in report["events"][:500]
        )
        + "</table>"
    )
    parts.append(
        "<h2>topology</h2><pre>"
        + html.escape(json.dumps(report["topology"], indent=2))
        + "</pre></body></html>\n"
    )
    return "".join(parts)


CHART_FILES = (
    "gantt.png",
    "throughput.png",
    "latency_p99.png",
    "errors.png",
    "replication_lag.png",
    "lost_and_retried.png",
)


def _targets_html(report: dict[str, Any], row: Any) -> list[str]:
    targets = report["verdict"].get("targets") or []
    if not targets:
        return ["<h2>targets</h2><p>No targets in this report's verdict.</p>"]
    parts = [
        "<h2>targets</h2><table>"
        + row("target", "failure class", "target value", "measured", "met", header=True)
    ]
    for target in targets:
        met = target.get("met")
        parts.append(
            row(
                target.get("name"),
                target.get("failure_class"),
                target.get("target"),
                target.get("measured"),
                "met" if met else "NOT MET",
            ).replace("<tr>", f"<tr class='{'pass' if met else 'fail'}'>", 1)
        )
    parts.append("</table>")
    return parts


def _drill_html(report: dict[str, Any], row: Any) -> list[str]:
    drill = report.get("drill")
    if not drill:
        return []
    sim_side, drill_side = drill["sim"], drill["drill"]
    parts = [
        "<h2>simulator beside the drill</h2>"
        f"<p>Drill report {html.escape(drill['file'])} (failover manager:"
        f" {html.escape(str(drill['failover_manager']))}, passed: {drill['passed']}),"
        f" compared for the {html.escape(drill['section'])}.</p><table>"
        + row("measure", "simulator", "drill", "simulator / drill", header=True)
    ]
    for key in DRILL_KEYS:
        ratio = drill["rto_ratio_sim_to_drill"] if key == "rto_s" else ""
        parts.append(row(key, sim_side.get(key), drill_side.get(key), ratio))
    parts.append(
        "</table>"
        f"<p>RTO within a factor of 1.5 of the drill's: {drill['rto_within_1_5x']};"
        f" both lost nothing: {drill['both_lost_zero']}.</p><img src='drill.png' alt='drill.png'>"
    )
    return parts


def _latency_html(report: dict[str, Any], row: Any) -> list[str]:
    exact = report["latency"].get("exact")
    if not exact:
        return []
    parts = [
        "<h2>latency from exact samples (ms)</h2><p>"
        + html.escape(exact.get("method", ""))
        + "</p><table>"
        + row("region", "count", "p50", "p99", "p999", "max", header=True)
    ]
    for name, values in exact.items():
        if isinstance(values, dict):
            parts.append(
                row(
                    name,
                    values["count"],
                    values.get("p50_ms"),
                    values.get("p99_ms"),
                    values.get("p999_ms"),
                    values.get("max_ms"),
                )
            )
    parts.append("</table>")
    return parts


def _errors_html(report: dict[str, Any], row: Any) -> list[str]:
    errors = report["series"].get("errors_per_s") or {}
    parts = [
        "<h2>client errors per channel and region (whole run, with the drain)</h2><table>"
        + row("channel", "region", *simgen.ERROR_KINDS, header=True)
    ]
    for channel, per_region in errors.items():
        for region, kinds in per_region.items():
            parts.append(row(channel, region, *(kinds["total"][k] for k in simgen.ERROR_KINDS)))
    parts.append("</table>")
    return parts


def _replay_html(report: dict[str, Any], row: Any) -> list[str]:
    diff = report.get("replay_diff")
    if not diff:
        return []
    parts = [
        "<h2>replay against the server's answers</h2><table>"
        + row("compared", "same", "same after a retry", "differ", "unexplained", header=True)
        + row(
            diff["compared"],
            diff["same"],
            diff["same_after_retry"],
            diff["differ"],
            diff["unexplained"],
        )
        + "</table><table>"
        + row("why it differs", "transfers", header=True)
        + "".join(row(name, count) for name, count in diff["by_class"].items())
        + "</table><table>"
        + row("transfer id", "server", "replay", "class", "arrived s", "answered s", header=True)
    ]
    parts += [
        row(
            item["transfer_id"],
            item["server"],
            item["replay"],
            item["class"],
            item["arrived_s"],
            item["answered_s"],
        )
        for item in diff["examples"]
    ]
    parts.append("</table>")
    return parts


def summary(report: dict[str, Any]) -> str:
    """The terminal summary table."""
    lines = []
    verdict = "PASS" if report["verdict"]["pass"] else "FAIL"
    latency = report["latency"]["overall"]
    rows = [
        ("scenario", report["scenario"]),
        ("seed", report["seed"]),
        ("users", report["users"]),
        ("simulated", f"{report['hours']:g} h (+{report['drained_s']:g} s drain)"),
        ("requests / postings", f"{report['requests']} / {report['postings']}"),
        ("acknowledged", f"{report['acknowledged']} ({report['answered_exists']} answered exists)"),
        ("retries / gave up", f"{report['retries']} / {report['gave_up']}"),
        ("failovers", report["failovers"]),
        ("RTO s (max)", report["rto_s"]),
        ("acknowledged lost", report["acknowledged_lost"]),
        ("  of which held by one DC only", report.get("lost_single_copy", 0)),
        (
            "  of which RPO (async failover)",
            f"{report['rpo_transfers']} ({report['rpo']['amount_minor'] / 100:.2f} CNY)",
        ),
        ("duplicates", report["duplicates"]),
        ("money conserved", report["money_conserved"]),
        ("limits respected", report["limits_respected"]),
        ("replicas converged", report["converged"]),
        ("old primary fenced", f"{report['fenced']} (stale acks: {report['stale_primary_acks']})"),
        ("availability", report["availability"].get("overall")),
        ("longest without an ack s", report.get("no_ack_s_max")),
        ("single-copy acks", single_copy_acks(report)),
        *_dayend_rows(report),
        *_loan_rows(report),
        ("latency p50/p99 ms", f"{latency.get('p50_ms')} / {latency.get('p99_ms')}"),
        ("wall s / sim:wall", f"{report['wall_s']} / {report['simulated_to_wall_ratio']}"),
        ("peak RSS GiB", report["peak_rss_gib"]),
        ("digest", report["digest"][:16]),
        ("verdict", verdict),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        lines.append(f"  {name:<{width}}  {value}")
    lines += targets_table(report["verdict"])
    lines += [f"  FAILED {reason}" for reason in report["verdict"].get("failures", [])]
    lines += _summary_extra(report)
    return "\n".join(lines)


def _dayend_rows(report: dict[str, Any]) -> list[tuple[str, Any]]:
    """The day-end lines of the summary, when the window crossed a business day's end."""
    deposits = report.get("deposits") or {}
    if not deposits.get("runs"):
        return []
    findings = deposits["findings"]
    return [
        (
            "day-ends (accrued / settled)",
            f"{report['dayends']} ({findings['accrued_accounts']} accounts /"
            f" {findings['settlement_postings']} postings,"
            f" {findings['settlement_fen'] / 100:.2f} CNY)",
        ),
        (
            "maturities (paid / rolled)",
            f"{findings['maturities_paid']} / {findings['rollovers']}"
            f" ({findings['maturity_interest_fen'] / 100:.2f} CNY interest)",
        ),
        ("interest mismatches", report["interest_mismatches"]),
    ]


def _loan_rows(report: dict[str, Any]) -> list[tuple[str, Any]]:
    """The loans' lines of the summary, when the run had a population."""
    loans = report.get("loans") or {}
    if not loans:
        return []
    findings, made = loans["findings"], loans["disbursements"]
    return [
        (
            "loans disbursed (acked / made)",
            f"{report['loans_disbursed']} / {made['made']} ({made['amount_fen'] / 100:.2f} CNY;"
            f" {made['retried']} retried, {made['gave_up']} gave up)",
        ),
        (
            "loan collections",
            f"{report['loans_collected']} ({findings['loans_touched']} loans touched by"
            f" {findings['runs']} runs, {findings['short_of_funds']} short of funds),"
            f" {report['loans_overdue']} overdue at the end",
        ),
        ("loan mismatches", report["loan_mismatches"]),
    ]


def _risk_html(report: dict[str, Any], row: Any) -> list[str]:
    """The risk stage's section (sim/risk.py), when the scenario ran it."""
    risk = report.get("risk") or {}
    if not risk.get("fraud"):
        return []
    fraud, legit = risk["fraud"], risk["legitimate"]
    rows = [
        row("rules", f"{risk['rules']} (version {risk['rules_version']})"),
        row("fraud stopped / total", f"{fraud['stopped']} / {fraud['total']}"),
        *(
            row(f"  {kind}", json.dumps(value, sort_keys=True))
            for kind, value in fraud["by_kind"].items()
        ),
        row(
            "legitimate challenged / held / blocked / total",
            f"{legit['challenged']} / {legit['held']} / {legit['blocked']} / {legit['total']}",
        ),
        row("decisions by outcome", json.dumps(risk["by_outcome"])),
        row("rules fired", json.dumps({k: v for k, v in risk["rules_fired"].items() if v})),
        row("large-value reports", risk["large_value_reports"]),
        row("checker mismatches", risk["mismatches"]),
        *(row("  ", line) for line in risk["mismatch_examples"]),
    ]
    return ["<h2>risk stage</h2><table>", *rows, "</table>"]


def _onboarding_html(report: dict[str, Any], row: Any) -> list[str]:
    """The day's applicants and their verification (sim/onboarding.py)."""
    section = report.get("onboarding")
    if not section:
        return []
    rows = [
        row("applicants", section["applicants"]),
        row("opened / rejected / binding rejected",
            f"{section['opened']} / {section['rejected']} / {section['binding_rejected']}"),
        row("by channel", json.dumps(section["by_channel"])),
        row("reasons", json.dumps(section["reasons"])),
        row("provider calls", json.dumps(section["provider_calls"])),
        row("first transfers", json.dumps(section["first_transfers"])),
        *(row(f"ledger {name}", json.dumps(held)) for name, held in section["ledgers"].items()),
    ]  # fmt: skip
    return ["<h2>applicants and verification</h2><table>", *rows, "</table>"]


def _summary_extra(report: dict[str, Any]) -> list[str]:
    lines = []
    onboarding = report.get("onboarding")
    if onboarding:
        lines.append(
            f"  applicants: {onboarding['applicants']} verified before an account:"
            f" {onboarding['opened']} opened, {onboarding['rejected']} rejected,"
            f" {onboarding['binding_rejected']} binding rejected; accounts of unverified"
            f" holders {report['onboarding_unverified_accounts']}, debited"
            f" {report['onboarding_unverified_debited']}"
        )
    risk = report.get("risk") or {}
    if risk.get("fraud"):
        fraud, legit = risk["fraud"], risk["legitimate"]
        kinds = ", ".join(
            f"{kind} {value['stopped']}/{value['total']}"
            for kind, value in fraud["by_kind"].items()
        )
        lines.append(
            f"  risk: fraud stopped {fraud['stopped']} / {fraud['total']} ({kinds}); legitimate"
            f" challenged {legit['challenged']}, held {legit['held']}, blocked {legit['blocked']}"
            f" of {legit['total']}; decisions {risk['by_outcome']}; checker mismatches"
            f" {risk['mismatches']}"
        )
    elif risk.get("note"):
        lines.append(f"  risk: {risk['note']}")
    diff = report.get("replay_diff")
    if diff:
        lines.append(
            f"  replay vs server: {diff['same']} same, {diff['differ']} differ"
            f" ({', '.join(f'{k} {v}' for k, v in diff['by_class'].items() if v) or 'none'})"
        )
    drill = report.get("drill")
    if drill:
        lines.append(
            f"  drill ({drill['file']}): RTO s sim {drill['sim']['rto_s']} vs drill"
            f" {drill['drill']['rto_s']} (ratio {drill['rto_ratio_sim_to_drill']}), acknowledged"
            f" lost sim {drill['sim']['acknowledged_lost']} vs drill"
            f" {drill['drill']['acknowledged_lost']}"
        )
    return lines
