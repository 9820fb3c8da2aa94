"""`tally bench page`: render BENCHMARKS.md from the saved benchmark reports.

Figures are never typed by hand: every `tally bench ... --save benchmarks`
writes a JSON report, and this command renders the newest report of each
benchmark (plus a history table of all of them) into the page.
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
from typing import Any

import orjson

TARGETS: dict[str, dict[str, tuple[str, float]]] = {
    "kernel": {
        "transfers_per_s": (">=", 5_000_000),
        "transfers_per_s_daily_channel_cap": (">=", 5_000_000),
        "bytes_per_account": ("<=", 100),
    },
    "pg": {
        "tally_pg_transfers_per_s": (">=", 100_000),
        "tally_over_naive": (">=", 20),
    },
    "sim": {
        "wall_s": ("<=", 600),
        "peak_rss_gib": ("<=", 16),
        "postings": (">=", 60_000_000),
        "acknowledged_lost": ("<=", 0),
        "duplicates": ("<=", 0),
        # Issue 17: no account of an applicant who is not verified, none debited.
        "onboarding_unverified_accounts": ("<=", 0),
        "onboarding_unverified_debited": ("<=", 0),
    },
    "http": {
        "batch_transfers_per_s": (">=", 500_000),
        "batch_transfers_per_s_uvicorn": (">=", 500_000),
        "batch_binary_transfers_per_s": (">=", 500_000),
        "batch_binary_transfers_per_s_uvicorn": (">=", 500_000),
        "single_vs_bare_percent": (">=", 70),
        "single_transfer_requests_per_s_uvicorn": (">=", 10_000),
        "latency_ms_p99_uvicorn": ("<=", 20),
        # Issue 15: single transfers with the shipped 20 risk rules within 10% of without.
        "risk_rate_ratio": (">=", 0.9),
        "risk_rate_ratio_uvicorn": (">=", 0.9),
    },
    "http_workers": {
        # Issue 19: front-end processes before one core (`tally bench http --workers 1,2`).
        "hypercorn_workers2_vs_single_process": (">=", 1.4),
        "hypercorn_workers1_core_cpu_us_per_request": ("<=", 20),
        "hypercorn_workers2_core_cpu_us_per_request": ("<=", 20),
        "uvicorn_workers1_core_cpu_us_per_request": ("<=", 20),
        "uvicorn_workers2_core_cpu_us_per_request": ("<=", 20),
    },
    "link": {
        # Issue 19: the core's CPU per single transfer forwarded over the core link.
        "core_cpu_us_per_request": ("<=", 20),
    },
    "iso8583": {
        # Issue 18: ATMs and POS terminals over ISO 8583, 200 terminals.
        "financial_messages_per_s": (">=", 5_000),
        "latency_ms_p99": ("<=", 20),
        "ledger_mismatches": ("<=", 0),
        "outcomes_unknown": ("<=", 0),
    },
    "iso20022": {
        # Issue 18: a partner bank's pacs.008 files of 1,000 credits over HTTP.
        "pacs008_transactions_per_s": (">=", 20_000),
        "ledger_mismatches": ("<=", 0),
        "outcomes_unknown": ("<=", 0),
    },
    "risk": {
        # Issue 15: per decision at the batch route's rate (open loop); capacity on full calls.
        "p99_us": ("<=", 1000),
        "decisions_per_s": (">=", 500_000),
    },
    "locust": {
        "failures": ("<=", 0),
        "money_unknown": ("<=", 0),
        "audit_errors": ("<=", 0),
        # Issue 17: no fraudster of the run is verified or binds another person's card.
        "verification_fraud_passed": ("<=", 0),
    },
    "sim_drill": {
        "rto_factor": ("<=", 1.5),
        "sim_acknowledged_lost": ("<=", 0),
        "drill_acknowledged_lost": ("<=", 0),
    },
    "drill": {
        "rto_s": ("<=", 30),
        "acknowledged_lost": ("<=", 0),
        "duplicates": ("<=", 0),
        "customers_lost": ("<=", 0),
    },
    "dayend": {
        "accrual_s": ("<=", 10),
        "settlement_s": ("<=", 60),
        "loan_collection_s": ("<=", 10),
        "peak_rss_gib": ("<=", 24),
    },
    "engine": {
        "durable_transfers_per_s": (">=", 1_000_000),
        "single_submit_transfers_per_s": (">=", 100_000),
        "commit_latency_ms_p99": ("<=", 10),
        "recovery_records_per_s": (">=", 2_000_000),
    },
}

# The scale a benchmark's targets are set at: a smaller run shows no verdict. A key of
# its own in TARGET_SCALE_OF_KEY has its own scale (the loans of the day-end bench).
TARGET_SCALE: dict[str, tuple[str, int]] = {"dayend": ("accounts", 30_000_000)}
TARGET_SCALE_OF_KEY: dict[tuple[str, str], tuple[str, int]] = {
    ("dayend", "loan_collection_s"): ("loans", 1_000_000),
}

NOTES = {
    "iso8583": (
        "ATMs and POS terminals over ISO 8583 (`loadtests/iso8583_bench.py`, docs/iso8583.md):"
        " a real `tally serve --iso8583` on a fresh journal (fdatasync on), N terminals (half"
        " ATMs sending 0200 cash withdrawals, half POS terminals sending 0200 purchases, one"
        " posting each) multiplexed over `connections` TCP connections from"
        " pre-built, signed messages (PIN block, MAC), 1% of them with an empty card"
        " (declined 51). `financial_messages_per_s` (target >= 5,000): the capacity, closed"
        " loop, each terminal sending its next message when the last is answered (its"
        " latency, `capacity_latency_ms_*`, is N / rate by Little's law: 200 terminals at"
        " 5,000/s wait 40 ms). `latency_ms_p50/p99` (target p99 <= 20 ms): the same terminals"
        " paced to `rate` messages a second in all, no terminal with two in flight, at"
        " `paced_messages_per_s` achieved. Then every unanswered message is repeated (a"
        " repeat gets the first answer) and every card's and the merchant's balance read"
        " over HTTP: each must have moved by exactly its approved amounts (`ledger_exact`)."
        " Client and server share the machine's two cores: `server_cpu_us_per_message` is"
        " the steadier figure; `other_cpu_percent` is CPU other processes used meanwhile."
        " The terminals' channels are unlimited in rate for the run, and the client's cyclic"
        " garbage collection is off while a phase is timed (docs/iso8583.md)."
    ),
    "iso20022": (
        "A partner bank over ISO 20022 (`loadtests/iso20022_bench.py`, docs/iso20022.md): a"
        " real `tally serve` on a fresh journal (fdatasync on), `accounts` Class I accounts,"
        " `messages` pacs.008 files of `transactions` credits each (a share, `unknown_share`,"
        " to an account number no account has: RJCT AC01), built ahead with the channel's"
        " codec, signed as the open_api channel and posted to `POST /v1/iso20022/pacs.008`"
        " over `connections` keep-alive connections, closed loop, each pacs.002 read."
        " `pacs008_transactions_per_s` (target >= 20,000): credits decided (ACSC or RJCT)"
        " over the timed phase's wall time; `latency_ms_p50/p99` per message, send to the"
        " whole pacs.002 read (closed loop: `connections` messages always in flight, so about"
        " connections / `messages_per_s` by Little's law). Then what was"
        " answered 503 or PDNG is sent again until decided (`outcomes_unknown`), one message"
        " is sent twice more (same MsgId; new MsgId, same TxIds: `repeat_consistent`), and"
        " every account's balance must equal its ACSC credits (`ledger_exact`). Client and"
        " server share the two cores: `server_cpu_us_per_transaction` is the steadier figure."
    ),
    "risk": (
        "The risk stage alone (`core/bench/risk.py`): the shipped rule set"
        " (core/data/risk.toml, 20 rules of every type) screening generated customer"
        " transfers between N holders (most small, a few percent large enough for the"
        " amount-gated rules) from the internal channel, on a simulated clock moving at"
        " `rate` postings a second. `p50_us`/`p99_us`/`max_us` (target: p99 <= 1 ms): the"
        " stage's latency at the batch route's rate, per decision: the service's path,"
        " `Risk.screen` (the context rows, one kernel call, the Screening of what fired),"
        " offered `rate` postings a second open loop on the wall clock, each call taking"
        " every posting that has arrived (at most `batch`, the internal channel's"
        " `batch_size_max`; `call_size_median` the postings a call took); a decision's"
        " latency runs from its posting's arrival to the end of its call, queueing"
        " included. `achieved_per_s`: the postings over the wall time to the last decision,"
        " `rate` if the stage kept up (a stage that falls behind has latencies that grow"
        " without bound). `decisions_per_s` (target >= 500,000): the same path's capacity,"
        " full calls of `batch` postings back to back; `batch_call_p50_us`/"
        "`batch_call_p99_us`/`batch_call_max_us`: the duration of one such call, counted"
        " once per decision (a posting of a full batch waits for its whole call; this"
        " scales with the batch size, not with the rate). `kernel_*`: `RiskKernel.screen`"
        " alone on prebuilt context rows, full calls. `single_*`: `Risk.screen` of one"
        " posting with a device, as every HTTP single transfer is screened. Medians of"
        " `repeat` passes (each listed, the open-loop ones as `stream`, their decisions/s"
        " the achieved rate) on one kernel per path, as in a running server: an untimed"
        " first round grows its tables, each later pass comes 8 simulated days after its"
        " path's pass before (velocity windows passed, histories kept). The bench freezes"
        " what it built before each open-loop pass and keeps its bookkeeping in arrays the"
        " garbage collector does not track, so a pass sees only the collections the"
        " stage's own allocations cause. Reports before this change named the per-call"
        " figures `p50_us`/`p99_us`/`max_us` and the open-loop ones `stream_*`."
        " The single-transfer cost over HTTP is `risk_rate_ratio` in `tally bench http`."
    ),
    "dayend": (
        "The day-end batch (`core/services/dayend.py`, `tally dayend`) on the embedded journal"
        " (fdatasync on), as production runs it: a `Lifecycle` and its engine over a ledger of"
        " N funded Class II accounts (built through the kernels, untimed; see"
        " `core/bench/dayend.py`), the day-end of a settlement day. `accrual_s`: one"
        " ACCRUE_INTEREST entry over every account, made durable. `settlement_s`: the check"
        " that the transfer log has room for the period (`settlement_sizing_s`), then N"
        " interest transfers (one per account: 1 fen, a day of 0.05% on 8,000 CNY) in"
        " SETTLE_INTEREST entries of 8189, each formed from the state in the engine's apply"
        " stage and made durable; the figure ends with the last answer. `peak_rss_gib`: the"
        " process's peak resident set, the ledger included (its transfer log sized for the"
        " whole settlement in the batch channel's 900-permille share). Targets at 30M"
        " accounts (a real bank core takes about 17 minutes): accrual <= 10 s, settlement"
        " <= 60 s, within the machine's 24 GiB. `loan_collection_s`: the day-end's loans"
        " step over `loans` loans (target <= 10 s at 1,000,000), each repaid from its own"
        " Class II account, every one with an instalment due on the day, a third short of"
        " funds (collected in part), one in 900 of those a month overdue (penalty): the"
        " terms table packed (`loan_terms_packed_s`, included), then chunks of 8189 loans,"
        " each formed by the collection kernel in the apply stage and made durable as one"
        " POST_WITH_ROWS entry; the figure ends with the last answer."
    ),
    "drill": (
        "`tally drill failover` on Patroni + etcd (`tally cluster up`'s topology, docs/ha.md):"
        " Tally on dc1 (a process on the PostgreSQL store) under load, then dc1's Tally,"
        " Patroni, PostgreSQL and etcd SIGKILLed; Patroni promotes dc2 (ttl 10 s, loop_wait"
        " 2 s, retry_timeout 4 s) and makes dc3 its synchronous standby; a Tally beside dc2"
        " opens the store through the multi-host DSN and posts a probe. `rto_s` is kill to"
        " the probe's acknowledgement; every acknowledged transfer is re-sent and must answer"
        " `exists` with its timestamp. `region_a_rpo_*`: what dc3 lacked at the kill. The"
        " machine's two cores are shared with other work: the RTO is noisy."
    ),
    "locust": (
        "Locust (`loadtests/locustfile.py`) against `tally serve` (hypercorn, embedded journal,"
        " fsync on) on the same 2-core machine as the load generator: customers on the wechat,"
        " app, counter, atm and open_api channels in the DOMAIN.md mix, with think times of"
        " 0.2-1.5 s, so requests/s follows the user count; every request signed, every money"
        " request idempotent. With `protocols` iso8583 and iso20022, ATM and POS terminals"
        " speak ISO 8583 over TCP to `tally serve --iso8583` (PIN blocks, MACs) and partner"
        " banks post signed pacs.008 files (`money_by_protocol`). Then `tally audit` replays"
        " the server's journal: every acknowledged transfer, ISO 8583 approval and ACSC credit"
        " booked exactly once, money conserved, no limit passed (see"
        " README, Load tests). A failure is a 5xx, a timeout, a 429 after the retries or an"
        " unexpected status; business refusals are listed apart. New app customers"
        " (`VerifyingCustomerUser`) walk the real-name verification against the provider"
        " simulator (identity 40 ms, OCR 120 ms, liveness 80 ms, issuer 60 ms, SMS 30 ms, +20 ms"
        " jitter, 1% provider failures, 3% photo and 2% card mismatches, 2% SMS lost; 10% of"
        " them fraudsters): `verifications_per_s` counts decided workflows,"
        " `verification_p99_ms_<step>` includes the provider's latency; the audit also proves"
        " every Class II holder and binding verified and no SMS code, image or liveness token"
        " in the log or the state (docs/loadtest.md)."
    ),
    "sim": (
        "The failover simulator (`tally sim run`): a whole 30M-user campaign day through the"
        " dual-region, three-DC topology, every DC running the real kernels, a DC1 outage then a"
        " region-link partition, checked by the independent checker (see `sim/README.md`)."
        " The day's account openings are applicants verified first (sim/onboarding.py: the"
        " verification service's steps against the provider simulator's world, 0.05% of the"
        " users a day, the default fraud): `onboarding_applicants`, `onboarding_rejected`, and"
        " on the worst data center the accounts of applicants not verified"
        " (`onboarding_unverified_accounts`) and those debited (`onboarding_unverified_debited`)."
        " `peak_rss_gib` grew with the loans (34.2M accounts at 30M users: the account index"
        " doubled) and is over its target."
    ),
    "sim_drill": (
        "The simulator's same-city failover beside the real drill's (`tally sim run --scenario"
        " dc1-outage --drill FILE`, FILE the median of the drill runs above): the production"
        " profile's Patroni (ttl 10 s, loop_wait 2 s, retry_timeout 4 s, as `tally cluster`"
        " runs it) against the measured one. `rto_factor` is max(sim/drill, drill/sim). The"
        " simulated ledger rebuild grows with the accounts (0.5 s per million, an estimate:"
        " the drill's store is small), so the comparison is at 1M users. Seeds 7, 8 and 9"
        " gave 11.666, 11.668 and 11.664 s (detection is quantized by loop_wait), 0 lost."
    ),
    "http": (
        "`tally serve` with the embedded journal (fsync on) driven by wrk on loopback with"
        " pre-signed, idempotent requests (see `channels/http/bench.py`); the bare-server ceiling"
        " (a minimal ASGI app parsing the same JSON) is measured in the same run with the same"
        " client. Each Tally server starts with `--prefault` (its 16M-transfer log and index"
        " backed by memory at start, as a production server would: a short run would"
        " otherwise pay the OS for a fresh page on most postings). uvicorn runs on uvloop"
        " (`uvicorn_loop`), Tally and its bare peer alike. The machine's two cores are"
        " shared with other work: `server_cpu_us_per_request` (from /proc) is the steadier"
        " figure, and the history below lists every run's single-transfer rate on uvicorn."
        " Targets: single transfers >= 70% of the same server's bare ceiling;"
        " >= 10,000/s with p99 <= 20 ms on the fastest server; batch >= 500,000/s."
        " `single_risk_*` / `single_no_risk_*` (issue 15, `--risk-pairs`): single transfers"
        " naming a device and an IP on two servers side by side, one with the shipped 20"
        " risk rules and one with an empty rule set, in pairs of passes alternating which"
        " goes first (medians; each pass listed); `risk_rate_ratio` is the median of the"
        " pairs' with / without ratios (target >= 0.9), `risk_server_cpu_us_added_per_request`"
        " the server CPU the rules add to a request, `risk_fired_in_passes` the timed"
        " postings a rule fired on (0: the traffic looks legitimate to the rules)."
    ),
    "http_workers": (
        "Signed single transfers driven by wrk (as `tally bench http`) through `tally serve"
        " --workers N` (N front-end processes on the listening socket, one core process"
        " behind the core link, docs/link.md), beside the one-process server in the same run"
        " (`*_single_process_*`). The CPU per request of the front-ends and of the core are"
        " read from /proc over the timed phase; `*_projected_single_per_s_16_cores` is"
        " min(15 cores / front-end CPU, 1 core / core CPU) by those costs. On this 2-core"
        " machine the front-ends, the core and wrk share two cores and wrk keeps 64 requests"
        " in flight, so the core's batches hold tens of requests (`*_requests_per_link_frame`,"
        " `*_requests_per_commit`, from /metrics around the run), where `tally bench link`"
        " at 512 in flight makes them hundreds; a journal group's and a frame's fixed cost"
        " is shared by fewer, so the core's CPU per request is that of a lightly loaded core"
        " (`tally bench link --concurrency 32` costs the core about as much)."
        " Targets: hypercorn with 2 front-ends >= 1.4x the one process; the core <= 20 us"
        " per forwarded transfer."
    ),
    "link": (
        "The core link alone (`channels/link_bench.py`, docs/link.md): a real `tally serve"
        " --link unix:...` on a fresh journal (fdatasync on) and Python client processes,"
        " each one link connection with many concurrent callers posting single transfers"
        " (the typed command a front-end forwards). `core_cpu_us_per_request` is the core"
        " process's CPU (from /proc) over the timed phase per acknowledged transfer: what"
        " one core process costs per forwarded request when front-ends keep it busy"
        " (target <= 20 us, i.e. >= 50,000/s on one core)."
    ),
    "pg": (
        "The engine on a throwaway PostgreSQL cluster (fsync on, synchronous_commit on,"
        " full_page_writes on), 100,000 accounts, uniform random transfers with random"
        " 128-bit ids, one transaction per engine group (entries, transfer records and"
        " account versions by binary COPY, compactions included), against the ledger most"
        " teams write first (one transaction per transfer, SELECT ... FOR UPDATE, 32"
        " connections) on the same cluster, in alternating passes of the two (each"
        " headline over all its passes; see `core/bench/pg.py`). PostgreSQL and Tally"
        " share the machine's two cores with other work: the CPU microseconds per"
        " transfer of each (from /proc) are the steadier figure; two dedicated cores"
        " bound throughput near 2 / (their sum). Target 100,000/s and 20x naive."
    ),
    "kernel": (
        "Posting generated Class II transfers in memory through `cext/ledger_kernel`"
        " (see `core/bench/kernel.py` for exactly what is timed). `transfers_per_s` checks"
        " the PBoC Class II buckets, the product cap and a per-transaction channel cap on"
        " every transfer, with the idempotency index on and 1% exact retries;"
        " `transfers_per_s_daily_channel_cap` adds a per-account daily channel cap, one"
        " more random memory access per transfer. The peer in the same run is the"
        " plain-Python reference ledger (`reference_transfers_per_s`)."
    ),
    "engine": (
        "The engine with the embedded journal on this machine's ext4 disk, fdatasync on"
        " (see `core/bench/engine.py`): batches of 8189 submitted in process, then batches"
        " offered at half that rate for the commit latency, then 2000 tasks each posting"
        " one transfer at a time; then recovery by journal replay (its digest must equal"
        " the engine's) and a snapshot of a 30M-account ledger. The peer in the same run"
        " on the same disk (`naive_durable_transfers_per_s`): one 128-byte record written"
        " and fdatasync'ed per transfer, with no ledger work, as a store without group"
        " commit would."
    ),
}

TITLES = {
    "sim": "tally sim run",
    "sim_drill": "tally sim run --drill (the simulator beside the drill)",
    "locust": "tally loadtest",
    "drill": "tally drill failover",
    "http_workers": "tally bench http --workers",
}
HEADLINES = {
    "dayend": "settlement_s",
    "drill": "rto_s",
    "sim_drill": "rto_factor",
    "locust": "requests_per_s",
    "pg": "tally_pg_transfers_per_s",
    "http": "single_transfer_requests_per_s_uvicorn",
    "risk": "decisions_per_s",
    "iso8583": "financial_messages_per_s",
    "http_workers": "hypercorn_workers2_single_per_s",
    "link": "transfers_per_s",
    "iso20022": "pacs008_transactions_per_s",
}

INTRO = """# Benchmarks

Every figure on this page comes from a command in this repository, run on the
machine named beside it, and saved with `--save benchmarks`; the page itself is
rendered by `tally bench page` from `benchmarks/*.json`. The machine is shared
and noisy: each figure is the median of several timed passes (the individual
passes are listed), and a peer measured in the same run stands beside it.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reports", default="benchmarks", help="directory of saved reports")
    parser.add_argument("--out", default="BENCHMARKS.md")


def load_reports(directory: str) -> list[dict[str, Any]]:
    reports = []
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        with open(path, "rb") as source:
            report = orjson.loads(source.read())
        report["_file"] = os.path.basename(path)
        reports.append(_current_names(report))
    return reports


def _current_names(report: dict[str, Any]) -> dict[str, Any]:
    """A saved report under today's key names: a risk report from before the open-loop
    figures were the headline named the full calls' durations `p50_us`/`p99_us`/`max_us`
    and the open-loop ones `stream_*` (renamed here, so one key means one thing on the
    page whatever the report's age)."""
    if report.get("benchmark") != "risk" or "stream_p99_us" not in report:
        return report
    for name in ("p50_us", "p99_us", "max_us"):
        report[f"batch_call_{name}"] = report.pop(name)
        report[name] = report.pop(f"stream_{name}")
    for name in ("achieved_per_s", "call_size_median"):
        report[name] = report.pop(f"stream_{name}")
    report.pop("stream_offered_per_s", None)
    if "passes_stream_p99_us" in report:
        report.setdefault("passes_p99_us", {})["stream"] = report.pop("passes_stream_p99_us")
    if "sweep_p99_us" in report:
        report["sweep_batch_call_p99_us"] = report.pop("sweep_p99_us")
    return report


def verdict(benchmark: str, key: str, value: Any, report: dict[str, Any] | None = None) -> str:
    target = TARGETS.get(benchmark, {}).get(key)
    scale = TARGET_SCALE_OF_KEY.get((benchmark, key), TARGET_SCALE.get(benchmark))
    if target is not None and scale is not None and report is not None:
        field, at_least = scale
        if report.get(field, 0) < at_least:
            return f"(target at {field} {at_least:,})"
    if target is None or isinstance(value, bool) or not isinstance(value, int | float):
        return ""
    comparison, bound = target
    met = value >= bound if comparison == ">=" else value <= bound
    shown = f"{bound:,}" if isinstance(bound, int) else f"{bound:g}"
    return f"{comparison} {shown}: {'met' if met else 'NOT met'}"


# A report's per-pass figures (name -> values) and their unit, listed under its table.
PASSES_FIELDS = (
    ("passes_transfers_per_s", "transfers/s"),
    ("passes_requests_per_s", "requests/s"),
    ("passes_decisions_per_s", "decisions/s"),
    ("passes_messages_per_s", "messages/s"),
    ("passes_p99_us", "p99 per decision, us"),
)

WHERE_OPTIONS = ("--save", "--output", "--out")  # where a report goes: nothing measured


def measured_command(report: dict[str, Any]) -> str:
    """The report's command without `--save DIR` or `--output FILE`: where a report is kept
    changes nothing that was measured, so two runs saved to different places are the same
    command."""
    words = str(report.get("command", "")).split()
    kept = [
        word
        for index, word in enumerate(words)
        if word not in WHERE_OPTIONS and (index == 0 or words[index - 1] not in WHERE_OPTIONS)
    ]
    return " ".join(kept)


def same_day_runs(reports: list[dict[str, Any]], newest: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs of the newest report's command on the same code, machine and day, oldest
    first (a report without its code version stands alone)."""
    version = newest.get("code_version", "unknown")
    if version == "unknown" or version.endswith("-dirty"):
        return [newest]
    return [
        report
        for report in reports
        if report["benchmark"] == newest["benchmark"]
        and report.get("code_version") == version
        and measured_command(report) == measured_command(newest)
        and report["machine"] == newest["machine"]
        and str(report["date"])[:10] == str(newest["date"])[:10]
    ]


def runs_table(benchmark: str, runs: list[dict[str, Any]]) -> list[str]:
    """The figures with a target across several runs of one command, with their median:
    the machine is shared and noisy, so a target is judged on the median, not on one run."""
    keys = [key for key in TARGETS.get(benchmark, {}) if all(key in run for run in runs)]
    if len(runs) < 2 or not keys:
        return []
    lines = [
        f"\nThe {len(runs)} runs of this command on this code and machine that day (targets"
        " judged on the median):\n",
        "| figure | " + " | ".join(f"`{run['_file']}`" for run in runs) + " | median | target |",
        "|---|" + "---:|" * (len(runs) + 1) + "---|",
    ]
    for key in keys:
        values = [run[key] for run in runs]
        median = statistics.median(values)
        shown = [f"{value:,}" for value in values]
        judged = verdict(benchmark, key, median, runs[0])
        lines.append(f"| `{key}` | {' | '.join(shown)} | {median:,} | {judged} |")
    return lines


def other_code_runs(
    reports: list[dict[str, Any]], newest: dict[str, Any]
) -> dict[str, list[dict[str, Any]]]:
    """Runs of the newest report's command on the same machine and day but on other
    (clean) code versions, by version: the "before" of a before/after comparison."""
    version = newest.get("code_version", "unknown")
    others: dict[str, list[dict[str, Any]]] = {}
    for report in reports:
        other = report.get("code_version", "unknown")
        if (
            other in (version, "unknown")
            or other.endswith("-dirty")
            or report["benchmark"] != newest["benchmark"]
            or measured_command(report) != measured_command(newest)
            or report["machine"] != newest["machine"]
            or str(report["date"])[:10] != str(newest["date"])[:10]
        ):
            continue
        others.setdefault(other, []).append(report)
    return others


def comparison_table(
    benchmark: str, runs: list[dict[str, Any]], others: dict[str, list[dict[str, Any]]]
) -> list[str]:
    """Medians of this code against each other code version measured the same day on the
    same machine with the same command (runs interleaved by whoever ran them), and the
    ratio: how a change moved the figures, with the machine's drift shared by both."""
    headline = HEADLINES.get(benchmark, "transfers_per_s")
    keys = [headline, *TARGETS.get(benchmark, {})]
    keys = [key for key in dict.fromkeys(keys) if all(key in run for run in runs)]
    lines: list[str] = []
    for version, before in sorted(others.items()):
        shared = [key for key in keys if all(key in run for run in before)]
        if not shared:
            continue
        this = runs[0].get("code_version")
        lines += [
            f"\nThis code (`{this}`, {len(runs)} runs) against `{version}` ({len(before)}"
            " runs), same command, machine and day (medians):\n",
            f"| figure | `{version}` | `{this}` | ratio |",
            "|---|---:|---:|---:|",
        ]
        for key in shared:
            old = statistics.median(run[key] for run in before)
            new = statistics.median(run[key] for run in runs)
            ratio = f"{new / old:.3f}" if old else ""
            lines.append(f"| `{key}` | {_figure(old)} | {_figure(new)} | {ratio} |")
    return lines


def _figure(value: float) -> str:
    """A median as the runs show it: the median of two integers is a float."""
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1000:
        value = int(value)
    return f"{value:,}"


# Options whose value makes another variant of a benchmark, each with its own section
# (its newest report): a uvicorn run saved after the hypercorn ones must not hide them.
# (option, its default, how the section's title names the variant).
VARIANT_OPTIONS = {
    "http_workers": ("--servers", "hypercorn,uvicorn", "{}"),
    "iso8583": ("--workers", "0", "--workers {}"),
}


def variant(report: dict[str, Any]) -> str:
    """The report's variant of its benchmark ("" for a benchmark that has none, and for
    the default of one that has: its earlier reports named none)."""
    option = VARIANT_OPTIONS.get(report["benchmark"])
    if option is None:
        return ""
    name, default, label = option
    words = str(report.get("command", "")).split()
    value = default
    for index, word in enumerate(words):
        if word == name and index + 1 < len(words):
            value = words[index + 1]
        elif word.startswith(name + "="):
            value = word.split("=", 1)[1]
    return "" if value == default and name == "--workers" else label.format(value)


def render(reports: list[dict[str, Any]]) -> str:
    lines = [INTRO]
    newest: dict[tuple[str, str], dict[str, Any]] = {}
    for report in reports:
        newest[(report["benchmark"], variant(report))] = report
    for (benchmark, kind), report in sorted(newest.items()):
        title = TITLES.get(benchmark, f"tally bench {benchmark}")
        lines.append(f"## `{title}`" + (f" ({kind})" if kind else "") + "\n")
        if benchmark in NOTES:
            lines.append(NOTES[benchmark] + "\n")
        lines.append(f"- date: {report['date']}")
        lines.append(f"- machine: {report['machine']}")
        lines.append(f"- command: `{report.get('command', 'tally bench ' + benchmark)}`")
        lines.append(f"- report: `benchmarks/{report['_file']}`\n")
        if benchmark == "locust":
            lines.append(locust_summary(report) + "\n")
        lines.append("| figure | value | target |")
        lines.append("|---|---:|---|")
        for key, value in report.items():
            if key.startswith("_") or key in ("benchmark", "date", "machine", "command"):
                continue
            if isinstance(value, dict | list):
                continue
            if isinstance(value, bool):
                shown = "yes" if value else "no"
            else:
                shown = f"{value:,}" if isinstance(value, int) else str(value)
            lines.append(f"| `{key}` | {shown} | {verdict(benchmark, key, value, report)} |")
        runs = same_day_runs(reports, report)
        lines.extend(runs_table(benchmark, runs))
        lines.extend(comparison_table(benchmark, runs, other_code_runs(reports, report)))
        for field, unit in PASSES_FIELDS:
            passes = report.get(field)
            if passes:
                lines.append(f"\nIndividual passes ({unit}):\n")
                for name, rates in passes.items():
                    lines.append(f"- {name}: {', '.join(f'{rate:,}' for rate in rates)}")
        for field, title, template in (
            ("refusals", "Expected business refusals (not failures)", "- {name}: {count:,}"),
            ("failures_by_error", "Failures", "- {count:,} x {name}"),
        ):
            counted = report.get(field)
            if counted:
                lines.append(f"\n{title}:\n")
                lines.extend(template.format(name=n, count=c) for n, c in counted.items())
        results = report.get("results")
        if results:
            lines.append("\nResult codes of the last pass of each kind:\n")
            for name, counts in results.items():
                shown = ", ".join(f"{code} {count:,}" for code, count in counts.items())
                lines.append(f"- {name}: {shown}")
        lines.append("")
    lines.append("## History\n")
    lines.append("| report | benchmark | date | headline |")
    lines.append("|---|---|---|---:|")
    for report in reports:
        headline = report.get(HEADLINES.get(report["benchmark"], "transfers_per_s"), "")
        shown = f"{headline:,}" if isinstance(headline, int | float) else str(headline)
        name, benchmark, date = report["_file"], report["benchmark"], report["date"]
        lines.append(f"| `{name}` | {benchmark} | {date} | {shown} |")
    return "\n".join(lines) + "\n"


def locust_summary(report: dict[str, Any]) -> str:
    """One sentence with the figures a reader looks for first."""
    audit = "clean" if report.get("audit_clean") else f"{report.get('audit_errors')} error(s)"
    return (
        f"**{report['users']} users for {report['seconds']:g} s ({report.get('shape', 'flat')}):"
        f" {report['requests']:,} requests, {report['requests_per_s']:,} requests/s, latency"
        f" p50 {report['latency_ms_p50']:g} ms, p95 {report['latency_ms_p95']:g} ms,"
        f" p99 {report['latency_ms_p99']:g} ms, {report['failures']:,} failures;"
        f" {report['money_acknowledged']:,} money movements acknowledged,"
        f" {report['money_refused']:,} refused by the bank's rules; audit {audit}"
        f" ({report['audit_acknowledged_found']:,} acknowledged transfers found in the"
        f" {report['audit_source']})."
        + (
            f" Real-name verification: {report['verifications_per_s']:g} workflows/s decided,"
            f" {report.get('verifications_verified', 0):,} verified,"
            f" {report.get('verifications_rejected', 0):,} rejected,"
            f" {report.get('verification_fraud_passed', 0):,} fraudsters passed."
            if "verifications_per_s" in report
            else ""
        )
        + "**"
        + "".join(
            f"\n- {protocol}: {counts.get('acknowledged', 0):,} acknowledged,"
            f" {counts.get('refused', 0):,} refused"
            for protocol, counts in report.get("money_by_protocol", {}).items()
        )
    )


def run(args: argparse.Namespace) -> int:
    reports = load_reports(args.reports)
    if not reports:
        print(f"tally bench page: no reports in {args.reports}/")
        return 1
    with open(args.out, "w") as out:
        out.write(render(reports))
    print(f"wrote {args.out} from {len(reports)} report(s)")
    return 0
