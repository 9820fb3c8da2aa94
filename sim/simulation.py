"""The failover simulator: one process, simulated time, every DC on the real kernels.

Time advances in fixed steps (`step_ms`, 50 ms by default) of simulated
nanoseconds. Within a step, in this order:

1. Scheduled events whose time falls in the step run: faults start and heal,
   heartbeats (failure detection, leases, elections, the operator), evictions,
   account openings, promotions, resyncs completing, metrics samples.
2. Replication: entries a primary shipped arrive at the replicas whose links
   are up, which apply them and acknowledge; acknowledgements arriving at the
   primary commit its waiting batches (with the synchronous standby's
   acknowledgement, or on local durability when degraded), and the clients of
   a committed batch get their answers (`Clients.settle`).
3. Clients: the step's new requests and the retries due now reach their
   gateway, which forwards them to the primary it knows; the primary forms one
   batch of them, applies it with the kernels and keeps it as a log entry.
   An unreachable or dead target times out; a DC that is not the primary (or
   a primary over its backlog) refuses at once; either way the client
   retries later with the same transfer id.
4. Shipping: each primary streams its new entries to the others; a message's
   arrival time is its link's latency plus jitter plus retransmissions.
5. Batches whose clients have all timed out are given up (their clients retry).

Causality is kept in continuous time: an entry committed 1.7 ms after its
step ends commits at that instant (the clients' latency says so) even though
the simulator processes it in the next step. Within a step the engine's own
batching is modelled by its linger window: each attempt's batch closes at the
end of its `linger_ms` window (`core.engine_policy.linger_close_ns`).

Every random choice comes from the seed (`random.Random` for control
decisions, the Cython generators for bulk traffic), so the same seed and code
give the same report digest.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import math
import random
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cext import simgen
from core import engine_policy as policy
from core.entries import EVICT_PAYLOAD, Entry, EntryKind, pack_post_with_rows_payload
from core.progress import progress_bar
from core.services.dayend import LOAN_COLLECTION_CHUNK_MAX
from ledger.interest import day_of_date, is_settlement_day
from ledger.kernel import KernelLedger
from ledger.types import TRANSFER_SIZE, CreateAccountResult
from limits.calendar import load_timezone
from limits.rules import RuleSet, parse_rules

from . import population as population_module
from . import traffic as traffic_module
from .checker import Checker, Verification
from .cluster import NEVER, Batch, DataCenter, Record, Stream, entry_size
from .dayend import (
    DayEndRun,
    LoanCollection,
    Maker,
    MaturityMaker,
    Settlement,
    accrual_maker,
    expire_holds_maker,
    purge_counters_maker,
)
from .interest import InterestChecker
from .loan_checker import LoanChecker
from .loans import DISBURSEMENT_INTERVAL_NS, Disbursements, LoanBook, disbursement_payloads
from .model import (
    DEFAULT_START,
    NS_PER_MS,
    NS_PER_S,
    FaultSpec,
    Scenario,
    SimConfig,
    SimError,
    Topology,
)
from .network import Network
from .onboarding import Onboarding, OnboardingMix
from .population import Population
from .profiles import profile_named
from .risk import USERS_MAX as RISK_USERS_MAX
from .risk import FraudPlan, RiskStage

# 2026-11-11 00:00 in Asia/Shanghai: a campaign day starts at local midnight.
START_NS = int(datetime(2026, 11, 10, 16, 0, tzinfo=UTC).timestamp()) * NS_PER_S
BANK_ZONE = "Asia/Shanghai"  # the example rules' zone: the business day's clock


def start_ns_of(local: datetime) -> int:
    """Simulated time 0 in Unix nanoseconds: `local` on the bank's clock."""
    return int(local.replace(tzinfo=load_timezone(BANK_ZONE)).timestamp()) * NS_PER_S


def seconds_of_day(local: datetime) -> int:
    return local.hour * 3600 + local.minute * 60 + local.second


OPENING_INTERVAL_NS = 600 * NS_PER_S
SAMPLE_INTERVAL_NS = NS_PER_S
WITNESS = "witness"
EMPTY = array("Q", [0])
RULES_FALLBACK = 'timezone = "Asia/Shanghai"\n'


@dataclass
class Failover:
    number: int
    kind: str  # "same_city" | "cross_region"
    decided_by: str  # "patroni" | "operator" | "majority" (consensus profile)
    old_primary: str | None
    new_primary: str
    epoch: int
    lost_primary_ns: int
    decided_ns: int
    promoted_ns: int = 0
    first_ack_ns: int | None = None
    sync_candidate: bool = False  # the new primary was a synchronous standby of the old
    decided_lsn: int = 0  # the new primary's log position when chosen
    promoted_lsn: int = 0  # and when it opened for writes (more only by a sibling catch-up)
    lost: list[int] = field(default_factory=list)
    verification: Verification | None = None

    @property
    def rto_ns(self) -> int | None:
        if self.first_ack_ns is None:
            return None
        return self.first_ack_ns - self.lost_primary_ns


@dataclass
class ActiveFault:
    spec: FaultSpec
    start_ns: int
    end_ns: int
    targets: list[str] = field(default_factory=list)
    pairs: list[tuple[str, str]] = field(default_factory=list)


class Simulation:
    """One run. `run()` returns the raw results the report is made of."""

    def __init__(
        self,
        config: SimConfig,
        scenario: Scenario,
        topology: Topology,
        *,
        traffic: traffic_module.Traffic | None = None,
    ) -> None:
        config.check()
        if scenario.risk is not None and traffic is None and config.users > RISK_USERS_MAX:
            raise SimError(
                f"{scenario.source}: [risk] runs at most {RISK_USERS_MAX:,} users (its checker is"
                f" the rules' pure-Python twin), not {config.users:,}: pass --users"
            )
        if len(topology.regions) > 2:
            raise SimError(f"{topology.source}: the clients model at most two regions")
        self.config = config
        self.scenario = scenario
        self.topology = topology
        self.profile = profile_named(config.profile or scenario.profile or topology.profile)
        self.patroni = self.profile.has("dcs_leader_key")
        self.no_sync_standby = topology.no_sync_standby or self.profile.no_sync_standby
        # What a primary without a synchronous standby does. (A planted "strict mode off"
        # exposes nothing in the deployed topology: with DC3 a synchronous candidate, a
        # leader that has lost both standbys has lost its etcd majority too and demotes.)
        self.commit_without_standby = self.no_sync_standby
        self.seed = config.seed
        self.rng = random.Random(config.seed)
        self.network = Network(topology, random.Random(config.seed * 1_000_003 + 17))
        self.step_ns = round(config.step_ms * NS_PER_MS)
        hours = config.hours if config.hours is not None else scenario.hours
        self.timings: dict[str, float] = {}
        self.faults_cache: list[ActiveFault] | None = None
        started = time.perf_counter()
        # When simulated time 0 is on the bank's clock: the run's or the scenario's `start`,
        # else the campaign day's local midnight. Stored traffic keeps its own clock: a
        # trace the start it was generated with, a journal the server's times.
        if traffic is None:
            start = config.start_time() or scenario.start
        elif traffic.info.get("start"):
            start = datetime.fromisoformat(str(traffic.info["start"]))
        else:
            start = None
        self.start_local = start or DEFAULT_START
        self.start_ns = start_ns_of(self.start_local)
        if traffic is None:
            overrides = config.population_overrides()
            if scenario.onboarding is not None and scenario.onboarding.openings_per_user_day:
                overrides["openings_per_user_day"] = scenario.onboarding.openings_per_user_day
            self.population: Population | None = Population(
                config.users, seed=config.seed, **overrides
            )
            self.traffic = traffic_module.generated(
                self.population,
                scenario.traffic,
                config.postings_per_user,
                hours * 3600,
                self.step_ns,
                config.seed,
                clock_start_s=seconds_of_day(self.start_local),
            )
            if start is not None:
                self.traffic.info["start"] = self.start_local.isoformat()
        else:
            self.traffic = traffic
            self.population = traffic.population
        self.window_ns = self.traffic.steps * self.step_ns
        self.timings["traffic_s"] = time.perf_counter() - started
        self.regions = list(topology.regions)
        self.region_a_share = (
            topology.regions[self.regions[0]].client_share if len(self.regions) > 1 else 1.0
        )
        self.names = topology.dc_names
        self.voters = self.names + ([WITNESS] if topology.witness else [])
        self.majority = len(self.voters) // 2 + 1
        self._build_ledgers()
        self._build_clients()
        # The day's applicants go through real-name verification (sim/onboarding.py).
        self.onboarding: Onboarding | None = None
        if self.population is not None:
            self.onboarding = Onboarding(
                self.population,
                scenario.onboarding or OnboardingMix(),
                skip_gate=config.plant_bug == "kyc-gate-skipped",
            )
        self.risk: RiskStage | None = None
        self.risk_note = ""
        if scenario.risk is not None:
            self._build_risk(scenario)
        self.checker = Checker(self.request_count, self.names, self.account_capacity)
        for name in self.names:
            self.checker.skip_to(name, self.dcs[name].ledger)
        # Runtime state.
        self.events: list[tuple[int, int, Callable[..., None], tuple[Any, ...]]] = []
        self.event_order = itertools.count()
        self.wheel: dict[int, array[int]] = {}
        self.route = topology.primary
        self.stale_route: tuple[str, float, int] | None = None  # (dc, fraction, until ns)
        self.last_primary: str | None = topology.primary
        self.last_primary_region = topology.data_centers[topology.primary].region
        self.lost_primary_ns: int | None = None  # the serving primary crashed (fault time)
        self.orphaned_since_ns: int | None = None  # some voter stopped seeing a primary
        self.witness_heard: dict[str, int] = {name: 0 for name in self.names}
        self.path_cache: dict[tuple[int, int, str], tuple[bool, int]] = {}
        self.day_checks: list[dict[str, Any]] = []
        self.pending_promotion: tuple[str, int] | None = None
        self.operator_since_ns: int | None = None
        self.failovers: list[Failover] = []
        self.fault_log: list[dict[str, Any]] = []
        self.active_faults: list[ActiveFault] = []
        self.event_log: list[dict[str, Any]] = []
        self.resyncs: list[dict[str, Any]] = []
        self.fences: list[dict[str, Any]] = []
        self.stale_primary_acks = 0
        self.stale_primary_batches = 0
        self.single_copy_acks = 0  # acknowledged while the batch was durable on one DC only
        self.single_copy_acks_declared = 0  # of which by an operator-promoted primary alone
        self.batches = 0
        self.attempts_applied = 0
        self.degraded_commits = 0
        self.degraded_acks = 0
        self.degraded_ns = 0
        self.refused_backlog = 0
        self.openings_next = 0
        self.openings_created = 0
        self.admin_queue: collections.deque[tuple[int, Entry]] = collections.deque()
        self.admin_diffs: list[bool] = []  # per journal admin entry: not the server's results
        self.max_epoch = 1
        self.day_cache: tuple[int, int] = (-1, 0)
        self.in_dayend = False
        self.buffer = bytearray(TRANSFER_SIZE * 1024)
        self.timestamps_buffer = bytearray(8 * 1024)
        self.balances_buffer = bytearray(16 * 1024)
        self.retry_packed = array("Q", bytes(8 * 1024))
        self.retry_steps = array("q", bytes(8 * 1024))
        self.group_buffers = [array("Q", bytes(8 * 1024)) for _ in range(4)]
        seconds = self.seconds
        self.lag_ms = {name: array("d", [math.nan]) * seconds for name in self.names}
        self.primary_by_second = array("b", [-1]) * seconds
        self.dc_index = {name: index for index, name in enumerate(self.names)}
        self.sync_candidates = {
            name: [
                other.name
                for other in sorted(topology.data_centers.values(), key=lambda dc: dc.priority)
                if other.name != name
                and other.replication == "sync"
                and other.region == topology.data_centers[name].region
            ]
            for name in self.names
        }
        self.dcs[topology.primary].primary_since_ns = 0
        for name in self.names:
            dc = self.dcs[name]
            for other in self.voters:
                dc.last_heard[other] = 0
            if dc.role == "primary":
                dc.streams = {other: Stream(other) for other in self.names if other != name}
            else:
                dc.upstream = topology.primary
        # Roles over time, for the Gantt chart: closed intervals and each DC's open one.
        self.role_intervals: list[dict[str, Any]] = []
        self.role_open = {name: (self.dcs[name].role, 0) for name in self.names}
        self._schedule_faults()
        self._schedule(0, self._heartbeat)
        if self.patroni:
            self._patroni_setup()
        self._schedule(self.topology.evict_interval_ns, self._evict_tick)
        if self.population is not None:
            self._schedule(OPENING_INTERVAL_NS, self._opening_tick)
        if self.loan_book is not None:
            self._schedule(DISBURSEMENT_INTERVAL_NS, self._loan_tick)
        for at_ns, entry in self.traffic.admin_entries:
            self._schedule(at_ns, self._admin_entry, entry)
        self._schedule(self.window_ns, self._window_end)
        self._schedule(0, self._sample_tick)
        for midnight in self.midnights_ns(self.window_ns + 1):
            # Just before local midnight: the day's limit counters are complete.
            self._schedule(midnight - self.step_ns, self._day_end_check)
        for midnight in self.midnights_ns(self.window_ns + int(self.config.drain_max_s * NS_PER_S)):
            # Just after: the day-end, if no entry of the new day has run it yet.
            self._schedule(midnight + self.step_ns, self._midnight)

    # --- setup ---------------------------------------------------------------------

    @property
    def request_count(self) -> int:
        return self.traffic.request_count

    def midnights_ns(self, until_ns: int) -> list[int]:
        """The simulated times (> 0, < until_ns) of local midnight: business-day ends."""
        day_ns = 86_400 * NS_PER_S
        offset = int(self.traffic.info.get("clock_start_s", 0)) if self.population else 0
        first = day_ns - offset * NS_PER_S
        return list(range(first, until_ns, day_ns))

    def _build_ledgers(self) -> None:
        started = time.perf_counter()
        traffic = self.traffic
        days = self.window_ns / (86_400 * NS_PER_S)
        if self.population is not None:
            self.account_capacity = self.population.account_capacity(days) + traffic.account_count
            # None: the kernel's own default (tally serve's), two counter entries per account.
            # A day of the campaign profile keeps about 1.5 live keys per user (channel debit
            # and credit caps, the customer's daily cap, strong authentication); a table sized
            # by users alone fills up at 30M and every probe then walks the whole table.
            channel_capacity: int | None = None
        else:
            self.account_capacity = max(16, traffic.account_count * 2 + 64)
            channel_capacity = 1 << max(10, (self.account_capacity - 1).bit_length())
        steps = traffic.steps
        peak_per_step = max(
            (traffic.step_first_seq[i + 1] - traffic.step_first_seq[i] for i in range(steps)),
            default=1,
        )
        peak_per_s = peak_per_step * NS_PER_S / self.step_ns
        retention_s = self.topology.log_retention_ns / NS_PER_S
        wanted = max(1 << 16, int(peak_per_s * retention_s * 1.6))
        if self.population is not None and self._settles_in_window():
            # A settlement posts about one transfer an account, all within the retention.
            wanted += self.account_capacity
        if self.population is not None and self.midnights_ns(
            self.window_ns + int(self.config.drain_max_s * NS_PER_S)
        ):
            # A day-end's loan step posts at most one collection a loan.
            wanted += int(self.population.users * self.population.loan_fraction * 1.1) + 1024
        self.log_capacity = 1 << (wanted - 1).bit_length()
        primary = self.topology.primary
        ledgers = {
            primary: population_module.new_ledger(
                self.account_capacity, self.log_capacity, channel_capacity
            )
        }
        ledger = ledgers[primary]
        self.rules: RuleSet | None = None
        next_ns = self.start_ns - 3600 * NS_PER_S
        # The day-end and its checker run for a generated population (its deposits are
        # real rows); a journal's or a trace's ledger has no catalog of its own.
        self.catalog = None
        self.interest_checker: InterestChecker | None = None
        self.dayend_runs: list[DayEndRun] = []
        self.dayend_resume: set[str] = set()
        self.first_day = 0
        self.loan_book: LoanBook | None = None
        self.loan_checker: LoanChecker | None = None
        self.disbursements: Disbursements | None = None
        self.loan_chunk = LOAN_COLLECTION_CHUNK_MAX  # loans per collection entry
        if self.population is not None:
            self.rules = population_module.bank_rules()
            self.catalog = population_module.deposit_catalog()
            day = self.rules.business_day(self.start_ns)
            first, _ = population_module.accrued_span(self.catalog, day)
            if first < self.catalog.history[0].effective_day:
                raise SimError(
                    f"start {self.start_local.isoformat()}: its settlement period began before"
                    f" the deposit catalog's first rates ({population_module.CATALOG_PATH})"
                )
            self.first_day = day
            next_ns, self.population_counts = population_module.build(
                ledger,
                self.population,
                self.rules,
                next_ns,
                day,
                quiet=self.config.quiet,
                catalog=self.catalog,
            )
            next_ns = self._build_loans(ledger, day, next_ns)
            self.interest_checker = InterestChecker(self.catalog, self.rules)
            self.interest_checker.baseline(
                ledger, *population_module.accrued_span(self.catalog, day)
            )
        else:
            self.population_counts = {}
        for entry in traffic.setup_entries:
            self._apply_setup(ledger, entry)
        if self.rules is None:
            self.rules = parse_rules(RULES_FALLBACK, "fallback")
        built = time.perf_counter()
        self.timings["build_s"] = built - started
        for name in self.names:
            if name == primary:
                continue
            ledgers[name] = population_module.new_ledger(
                self.account_capacity, self.log_capacity, channel_capacity
            )
            population_module.copy_ledger(ledgers[name], ledger)
        self.timings["base_backup_s"] = time.perf_counter() - built
        self.dcs = {
            name: DataCenter(
                self.topology.data_centers[name], ledgers[name], self.topology.wal_keep_bytes
            )
            for name in self.names
        }
        for dc in self.dcs.values():
            dc.last_timestamp = max(next_ns, dc.ledger.timestamp_last())

    def _build_loans(self, ledger: KernelLedger, day: int, next_ns: int) -> int:
        """The population's loan book (sim/loans.py), its checker and the day's
        disbursements, after the population's accounts; returns the next free timestamp."""
        population = self.population
        assert population is not None
        book = LoanBook(
            population.seed,
            population.users,
            day,
            due_today_fraction=population.loan_due_today_fraction,
            overdue_fraction=population.loan_overdue_fraction,
        )
        self.loan_book = book
        self.loan_checker = LoanChecker(book)
        started = time.perf_counter()
        days = self.window_ns / (86_400 * NS_PER_S)
        next_ns = book.build(
            ledger,
            self.loan_checker,
            population,
            next_ns,
            reserve=population.loans_capacity(days),
            quiet=self.config.quiet,
        )
        self.timings["loans_build_s"] = time.perf_counter() - started
        self.population_counts["loans"] = book.population_count
        self.disbursements = Disbursements(
            book,
            population.users * population.loan_disbursements_per_user_day,
            self.seed,
            self.topology.log_retention_ns // 2,
        )
        return next_ns

    def _build_risk(self, scenario: Scenario) -> None:
        """The bank's risk stage (sim/risk.py), for a scenario with a [risk] table: the
        rules' kernel and checker, the fraud plan, every customer's device seen before."""
        spec = scenario.risk
        if self.population is None:
            # A journal's requests are what a real server was sent: no fraud to add, no
            # customers to give devices to.
            self.risk_note = "off: the traffic is a journal (no generated population)"
            return
        started = time.perf_counter()
        plan = FraudPlan(
            self.seed,
            self.population.seed,
            self.population.users,
            spec.fraud_share,
            spec.stolen_share,
            self.step_ns,
            self.traffic.step_first_seq,
        )
        self.risk = RiskStage(
            spec,
            plan,
            self.request_count,
            primary=self.topology.primary,
            plant_bug=self.config.plant_bug,
        )
        self.risk.warm_up(self.risk.warm_up_at(self.start_ns // NS_PER_S))
        self.timings["risk_build_s"] = time.perf_counter() - started

    def _settles_in_window(self) -> bool:
        """Whether a business day that ends in the run (window and drain) is a settlement
        day (the catalog's calendar; checked before the catalog is loaded)."""
        zone = load_timezone(BANK_ZONE)
        end_ns = self.window_ns + int(self.config.drain_max_s * NS_PER_S)
        for midnight in self.midnights_ns(end_ns):
            local = datetime.fromtimestamp((self.start_ns + midnight) // NS_PER_S - 1, zone)
            if is_settlement_day(day_of_date(local.date())):
                return True
        return False

    def _apply_setup(self, ledger: KernelLedger, entry: Entry) -> None:
        from core.entries import apply_entry

        apply_entry(ledger, entry)
        if entry.kind == EntryKind.SET_RULES and self.rules is None:
            self.rules = parse_rules(RULES_FALLBACK, "journal")

    def _build_clients(self) -> None:
        topology = self.topology
        count = self.request_count
        self.seconds = (
            math.ceil((self.window_ns + self.config.drain_max_s * NS_PER_S) / NS_PER_S) + 2
        )
        total_s = self.window_ns / NS_PER_S
        self.series_bucket_ns = max(NS_PER_S, math.ceil(total_s / 720) * NS_PER_S)
        self.series_count = self.seconds * NS_PER_S // self.series_bucket_ns + 1
        self.phase_starts = self._phase_starts()
        buckets = simgen.LATENCY_BUCKETS
        self.ack_result = bytearray([simgen.NOT_ACKED]) * count
        self.ack_ms = array("I", bytes(4 * count))
        self.hist_phase = array("q", bytes(8 * (len(self.phase_starts) + 1) * 2 * buckets))
        self.hist_series = array("q", bytes(8 * self.series_count * buckets))
        self.acked_per_s = array("q", bytes(8 * 2 * self.seconds))
        self.attempts_per_s = array("q", bytes(8 * 2 * self.seconds))
        self.offered_per_s = array("q", bytes(8 * 2 * self.seconds))
        self.retries_per_s = array("q", bytes(8 * self.seconds))
        self.gave_up_per_s = array("q", bytes(8 * self.seconds))
        self.result_counts = array("q", bytes(8 * 256))
        self.clients = simgen.Clients(
            seed=self.seed,
            request_count=count,
            step_first_seq=self.traffic.step_first_seq,
            arrivals=self.traffic.arrivals,
            phase_starts=array("q", self.phase_starts),
            step_ns=self.step_ns,
            linger_ns=topology.linger_ns,
            timeout_ns=topology.client_timeout_ns,
            backoff_base_ns=topology.backoff_base_ns,
            backoff_cap_ns=topology.backoff_cap_ns,
            attempts_max=topology.attempts_max,
            reply_loss=topology.reply_loss,
            region_a_share=self.region_a_share,
            seconds=self.seconds,
            series_bucket_ns=self.series_bucket_ns,
            series_count=self.series_count,
            ack_result_buffer=self.ack_result,
            ack_ms_buffer=self.ack_ms,
            hist_phase_buffer=self.hist_phase,
            hist_series_buffer=self.hist_series,
            acked_per_s_buffer=self.acked_per_s,
            attempts_per_s_buffer=self.attempts_per_s,
            offered_per_s_buffer=self.offered_per_s,
            retries_per_s_buffer=self.retries_per_s,
            gave_up_per_s_buffer=self.gave_up_per_s,
            result_counts_buffer=self.result_counts,
        )
        # Exact samples for the report: 4 bytes of latency per request, errors per bucket.
        self.latency_us = array("I", [0]) * count
        self.errors = array("q", [0]) * (
            self.series_count * 2 * simgen.ERROR_CHANNEL_SLOTS * len(simgen.ERROR_KINDS)
        )
        self.clients.record_samples(
            self.latency_us, self.errors, self.traffic.model, self.traffic.records
        )

    def _phase_starts(self) -> list[int]:
        """Phase boundaries: every fault's start and end cuts the timeline."""
        cuts: set[int] = set()
        for fault in self.resolved_faults():
            cuts.add(fault.start_ns)
            cuts.add(fault.end_ns)
        return sorted(cut for cut in cuts if cut > 0)

    # --- events ----------------------------------------------------------------------

    def _schedule(self, at_ns: int, function: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self.events, (at_ns, next(self.event_order), function, args))

    def _note(self, at_ns: int, event: str, **details: Any) -> None:
        self.event_log.append({"at_s": round(at_ns / NS_PER_S, 3), "event": event} | details)

    # --- the loop ----------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        window_steps = self.traffic.steps
        drain_steps = int(self.config.drain_max_s * NS_PER_S // self.step_ns)
        step = 0
        label = f"simulating {self.window_ns / 3600 / NS_PER_S:.2f} h"
        with progress_bar(window_steps, label) as progress:
            while step < window_steps:
                self._step(step)
                step += 1
                if not self.config.quiet and step & 255 == 0:
                    progress.update(256)
        self.drain_started_ns = step * self.step_ns
        while step < window_steps + drain_steps:
            self._step(step)
            step += 1
            if step % 20 == 0 and self._quiescent(step * self.step_ns):
                break
        self.end_ns = step * self.step_ns
        self.converged_in_drain = self._quiescent(self.end_ns)
        self.timings["simulate_s"] = time.perf_counter() - started
        return self._finish()

    def _step(self, step: int) -> None:
        step_ns = self.step_ns
        end_ns = (step + 1) * step_ns
        events = self.events
        while events and events[0][0] < end_ns:
            at_ns, _, function, args = heapq.heappop(events)
            function(at_ns, *args)
        for dc in self.dcs.values():
            if dc.role == "primary" and dc.alive:
                self._replicate(dc, end_ns)
        self._arrivals(step, end_ns)
        for dc in self.dcs.values():
            if dc.role == "primary" and dc.alive:
                self._ship(dc, end_ns)
        for dc in self.dcs.values():
            queue = dc.inflight
            while queue and queue[0].deadline_ns <= end_ns:
                self._settle(queue.popleft(), simgen.SETTLE_TIMEOUT, 0)

    def _quiescent(self, now_ns: int) -> bool:
        if self.wheel or any(dc.inflight for dc in self.dcs.values()):
            return False
        primary = self._serving_primary()
        if primary is None:
            return False
        for dc in self.dcs.values():
            if dc is primary:
                continue
            if not dc.alive or dc.resyncing(now_ns) or dc.applied_lsn != primary.applied_lsn:
                return False
            if dc.following != primary.name or dc.role != "replica":
                return False
        return True

    def _serving_primary(self) -> DataCenter | None:
        best = None
        for dc in self.dcs.values():
            if dc.is_primary and (best is None or dc.epoch > best.epoch):
                best = dc
        return best

    # --- replication -------------------------------------------------------------------

    def _replicate(self, primary: DataCenter, now_ns: int) -> None:
        network = self.network
        for stream in primary.streams.values():
            replica = self.dcs[stream.target]
            queue = stream.in_flight
            while queue and queue[0][0] <= now_ns:
                delivered_ns, record = queue.popleft()
                if (
                    not replica.alive
                    or replica.resyncing(delivered_ns)
                    or not network.up(primary.name, replica.name)
                    or replica.following != primary.name
                ):
                    stream.broken = True
                    queue.clear()
                    break
                if primary.epoch < replica.epoch:
                    # Fencing: a replica never takes entries from a primary older than the
                    # newest epoch it knows; the primary learns it has been replaced.
                    self._step_down(
                        primary,
                        replica.epoch,
                        delivered_ns,
                        f"{replica.name} rejected epoch {primary.epoch}",
                    )
                    return
                if record.lsn <= replica.applied_lsn:
                    continue
                if record.lsn != replica.applied_lsn + 1:
                    stream.broken = True
                    queue.clear()
                    break
                if record.entry.kind == EntryKind.EVICT:
                    self.checker.scan(replica.name, replica.ledger)
                replica.apply(record)
                done_ns = delivered_ns + replica.fsync_ns
                replica.apply_delay_ns = done_ns - record.created_ns
                stream.durable_log.append((done_ns, record.lsn))
                if network.up(replica.name, primary.name):
                    arrival = max(
                        stream.last_ack_ns, done_ns + network.sample_ns(replica.name, primary.name)
                    )
                    stream.last_ack_ns = arrival
                    stream.acks.append((arrival, record.lsn))
            acks = stream.acks
            while acks and acks[0][0] <= now_ns:
                arrival, lsn = acks.popleft()
                if lsn > stream.acked_lsn:
                    stream.acked_lsn = lsn
                    stream.ack_log.append((arrival, lsn))
                    sent = stream.sent
                    while sent and sent[0][0] <= lsn:
                        sent.popleft()
        if primary.role == "primary":
            self._commit(primary, now_ns)

    def _sync_standby(self, primary: DataCenter, now_ns: int) -> str | None:
        chosen = None
        timeout = self.topology.sync_ack_timeout_ns
        for name in self.sync_candidates[primary.name]:
            stream = primary.streams.get(name)
            replica = self.dcs[name]
            if (
                stream is None
                or not stream.connected
                or not replica.alive
                or replica.resyncing(now_ns)
                or self._suspects(primary, name, now_ns)
                or (stream.sent and now_ns - stream.sent[0][1] > timeout)
            ):
                continue
            chosen = name
            break
        self._set_sync_standby(primary, chosen, now_ns)
        return chosen

    def _set_sync_standby(self, primary: DataCenter, chosen: str | None, now_ns: int) -> None:
        if chosen != primary.sync_standby:
            self._note(now_ns, "sync_standby", primary=primary.name, standby=chosen)
            primary.sync_standby = chosen
            if chosen is not None:
                primary.sync_since_ns = now_ns
                primary.no_sync_since_ns = None
            elif primary.no_sync_since_ns is None:
                primary.no_sync_since_ns = now_ns

    def _commit(self, primary: DataCenter, now_ns: int) -> None:
        # Production: synchronous_standby_names as Patroni's loop set it.
        standby = primary.sync_standby if self.patroni else self._sync_standby(primary, now_ns)
        inflight = primary.inflight
        if not inflight:
            self._trim_ack_logs(primary)
            return
        planted_bug = self.config.plant_bug == "ack-before-sync-replica" or primary.local_commit
        degrade_from = None
        if standby is not None or primary.no_sync_since_ns is None:
            pass
        elif self.patroni:
            # Patroni's non-strict synchronous_mode empties synchronous_standby_names at its
            # loop; a person who promoted a DC alone has turned strict mode off (the runbook).
            if self.commit_without_standby == "degrade" or primary.operator_mandate:
                degrade_from = primary.no_sync_since_ns
        elif self.commit_without_standby == "degrade" and (
            primary.operator_mandate or self._holds_majority(primary, now_ns)
        ):
            degrade_from = primary.no_sync_since_ns + self.topology.degrade_after_ns
        stream = primary.streams[standby] if standby is not None else None
        step_ns = self.step_ns
        while inflight:
            batch = inflight[0]
            if planted_bug:
                commit_ns = batch.durable_ns
            elif stream is not None:
                if stream.acked_lsn < batch.lsn:
                    break
                log = stream.ack_log
                while log and log[0][1] < batch.lsn:
                    log.popleft()
                acked_ns = log[0][0] if log else primary.sync_since_ns
                commit_ns = max(batch.durable_ns, acked_ns, primary.sync_since_ns)
            elif degrade_from is not None:
                commit_ns = max(batch.durable_ns, degrade_from)
            else:
                break
            if commit_ns > now_ns:
                break
            inflight.popleft()
            acked = self._settle(
                batch, simgen.SETTLE_COMMIT, commit_ns - (batch.step + 1) * step_ns
            )
            if stream is None and not planted_bug:
                self.degraded_commits += 1
                self.degraded_acks += acked
            if (
                acked
                and (stream is None or planted_bug)
                and self._durable_copies(primary, batch.lsn, commit_ns) < 2
            ):
                self.single_copy_acks += acked
                if primary.operator_mandate:
                    self.single_copy_acks_declared += acked
            primary.last_commit_ns = commit_ns
            if acked and primary.epoch < self.max_epoch:
                self.stale_primary_acks += acked
            if acked and self.failovers and self.failovers[-1].new_primary == primary.name:
                failover = self.failovers[-1]
                if failover.first_ack_ns is None:
                    failover.first_ack_ns = commit_ns
        self._trim_ack_logs(primary)

    def _trim_ack_logs(self, primary: DataCenter) -> None:
        floor = primary.inflight[0].lsn if primary.inflight else primary.applied_lsn + 1
        for stream in primary.streams.values():
            log = stream.ack_log
            while len(log) > 1 and log[1][1] < floor:
                log.popleft()
            durable = stream.durable_log
            while durable and durable[0][1] < floor:
                durable.popleft()

    def _durable_copies(self, primary: DataCenter, lsn: int, at_ns: int) -> int:
        """On how many DCs record `lsn` was durable at `at_ns` (the primary's own included)."""
        copies = 1
        for stream in primary.streams.values():
            for done_ns, durable_lsn in stream.durable_log:
                if durable_lsn >= lsn:
                    copies += done_ns <= at_ns
                    break
        return copies

    def _holds_majority(self, dc: DataCenter, now_ns: int) -> bool:
        heard = 1 + sum(
            1
            for other in self.voters
            if other != dc.name
            and now_ns - dc.last_heard.get(other, NEVER) <= self.topology.suspect_ns
        )
        return heard >= self.majority

    def _ship(self, primary: DataCenter, now_ns: int) -> None:
        network = self.network
        for name, stream in primary.streams.items():
            replica = self.dcs[name]
            if not stream.connected or stream.broken:
                if (
                    replica.alive
                    and not replica.resyncing(now_ns)
                    and network.both_up(primary.name, name)
                    and not self._suspects(primary, name, now_ns)
                    and (not self.patroni or replica.upstream == primary.name)
                ):
                    self._handshake(primary, replica, stream, now_ns)
                    if primary.role != "primary":
                        return
                if not stream.connected or stream.broken:
                    continue
            while stream.next_lsn <= primary.applied_lsn:
                record = primary.wal_record(stream.next_lsn)
                if record is None:
                    stream.connected = False  # trimmed from the log: the next handshake resyncs
                    break
                delivery = max(
                    stream.last_delivery_ns, now_ns + network.sample_ns(primary.name, name)
                )
                stream.last_delivery_ns = delivery
                stream.in_flight.append((delivery, record))
                stream.sent.append((record.lsn, now_ns))
                stream.next_lsn += 1

    def _handshake(
        self, primary: DataCenter, replica: DataCenter, stream: Stream, now_ns: int
    ) -> None:
        if replica.epoch > primary.epoch:
            self._step_down(
                primary, replica.epoch, now_ns, f"{replica.name} is in epoch {replica.epoch}"
            )
            return
        if replica.role == "primary":
            self._step_down(
                replica,
                primary.epoch,
                now_ns,
                f"met primary {primary.name} of epoch {primary.epoch}",
            )
        replica.epoch = primary.epoch
        replica.following = primary.name
        position = replica.applied_lsn
        same_history = (
            position <= primary.applied_lsn and primary.epoch_at(position) == replica.last_epoch
        )
        if same_history and (
            position == primary.applied_lsn or primary.wal_record(position + 1) is not None
        ):
            stream.reset(position + 1, now_ns)
            self._role(replica.name, "replica", now_ns)
            return
        self._resync(
            primary,
            replica,
            stream,
            now_ns,
            "divergent log" if not same_history else "too far behind",
        )

    def _resync(
        self, primary: DataCenter, replica: DataCenter, stream: Stream, now_ns: int, reason: str
    ) -> None:
        started = time.perf_counter()
        self.checker.scan(primary.name, primary.ledger)
        discarded = max(0, replica.applied_lsn - self._common_prefix(primary, replica))
        self.checker.discard(replica.name, replica.ledger, primary.name)
        copied = population_module.copy_ledger(replica.ledger, primary.ledger)
        self.checker.take_over(replica.name, primary.name)
        replica.adopt(primary)
        duration = self.network.transfer_ns(primary.name, replica.name, copied)
        replica.resync_until_ns = now_ns + duration
        self._role(replica.name, "resyncing", now_ns)
        stream.connected = False
        stream.broken = False
        self._schedule(now_ns + duration, self._resync_done, replica.name)
        self.resyncs.append(
            {
                "at_s": round(now_ns / NS_PER_S, 3),
                "dc": replica.name,
                "from": primary.name,
                "reason": reason,
                "discarded_entries": discarded,
                "bytes": copied,
                "transfer_s": round(duration / NS_PER_S, 3),
            }
        )
        self.timings["resync_s"] = self.timings.get("resync_s", 0.0) + time.perf_counter() - started
        self._note(now_ns, "resync", dc=replica.name, source=primary.name, reason=reason)

    def _common_prefix(self, primary: DataCenter, replica: DataCenter) -> int:
        position = min(primary.applied_lsn, replica.applied_lsn)
        while position > 0 and primary.epoch_at(position) != replica.epoch_at(position):
            position -= 1
        return position

    def _resync_done(self, now_ns: int, name: str) -> None:
        self.dcs[name].resync_until_ns = 0
        if self.dcs[name].alive and self.dcs[name].role == "replica":
            self._role(name, "replica", now_ns)

    def _step_down(self, dc: DataCenter, epoch: int, now_ns: int, reason: str) -> None:
        was_primary = dc.role == "primary"
        stale = dc.stale
        fenced = epoch > dc.epoch
        dc.epoch = max(dc.epoch, epoch)
        if not was_primary:
            return
        dc.become_replica()
        self._role(dc.name, "demoted", now_ns)
        self._note(now_ns, "step_down", dc=dc.name, reason=reason)
        if fenced:
            self._fence(dc, now_ns, reason, stale)

    def _fence(self, dc: DataCenter, now_ns: int, reason: str, stale: bool) -> None:
        """`dc`, a primary, was stopped from serving writes (reported in `fences`)."""
        self.fences.append(
            {
                "at_s": round(now_ns / NS_PER_S, 3),
                "dc": dc.name,
                "epoch": dc.epoch,
                "reason": reason,
                "stale_restart": stale,
            }
        )

    # --- clients -----------------------------------------------------------------------

    def _arrivals(self, step: int, end_ns: int) -> None:
        traffic = self.traffic
        if step < traffic.steps:
            new_first = traffic.step_first_seq[step]
            new_count = traffic.step_first_seq[step + 1] - new_first
        else:
            new_first, new_count = 0, 0
        packed = self.wheel.pop(step, None)
        packed_count = len(packed) if packed is not None else 0
        if new_count + packed_count:
            packed_view = packed if packed is not None else EMPTY
            self.clients.count_attempts(step, new_first, new_count, packed_view, packed_count)
            self._route(step, end_ns, new_first, new_count, packed_view, packed_count)
        for dc in self.dcs.values():
            if dc.crash_pending:
                # It lives until its own fsync of this batch is done, answers whatever it
                # may answer by then, and dies before shipping the batch to anyone.
                dc.crash_pending = False
                self._commit(dc, end_ns + dc.fsync_ns)
                self._die(dc, end_ns)

    def _path(self, region_index: int, target: str) -> tuple[bool, int]:
        """(reachable, one-way latency ns) from a region's gateways to `target`.

        A region's gateways sit in its data centers and use whichever of them
        is up and can reach the target; a region with none left sends its
        customers to the other region's gateways.
        """
        key = (self.network.version, region_index, target)
        cached = self.path_cache.get(key)
        if cached is not None:
            return cached
        if len(self.path_cache) > 64:
            self.path_cache.clear()
        found = self._find_path(region_index, target)
        self.path_cache[key] = found
        return found

    def _find_path(self, region_index: int, target: str) -> tuple[bool, int]:
        if not self.dcs[target].alive:
            return False, 0
        region = self.regions[min(region_index, len(self.regions) - 1)]
        network = self.network
        local = [
            name for name in self.names if self.dcs[name].alive and self.dcs[name].region == region
        ]
        for gateway in local or [name for name in self.names if self.dcs[name].alive]:
            if network.both_up(gateway, target):
                return True, network.latency_ns(gateway, target)
        return False, 0

    def _route(
        self,
        step: int,
        end_ns: int,
        new_first: int,
        new_count: int,
        packed: array[int],
        packed_count: int,
    ) -> None:
        target = self.route
        reach_a, client_a = self._path(0, target)
        reach_b, client_b = self._path(1, target)
        stale = self.stale_route
        if stale is not None and stale[2] <= end_ns:
            self.stale_route = stale = None
        if stale is None and reach_a == reach_b:
            self._deliver(
                target,
                reach_a,
                step,
                end_ns,
                new_first,
                new_count,
                packed,
                packed_count,
                client_a,
                client_b,
            )
            return
        total = new_count + packed_count
        if len(self.group_buffers[0]) < total:
            self.group_buffers = [array("Q", bytes(8 * total * 2)) for _ in range(4)]
        groups = self.group_buffers
        counts = simgen.partition_requests(
            self.seed,
            self.region_a_share,
            stale[1] if stale else 0.0,
            new_first,
            new_count,
            packed,
            packed_count,
            groups[0],
            groups[1],
            groups[2],
            groups[3],
        )
        for group, count in enumerate(counts):
            if not count:
                continue
            region = group // 2
            name = stale[0] if (stale is not None and group % 2 == 1) else target
            reachable, client_ns = self._path(region, name)
            client_a = client_b = client_ns
            self._deliver(
                name,
                reachable,
                step,
                end_ns,
                0,
                0,
                array("Q", groups[group][:count]),
                count,
                client_a,
                client_b,
            )

    def _deliver(
        self,
        target: str,
        reachable: bool,
        step: int,
        end_ns: int,
        new_first: int,
        new_count: int,
        packed: array[int],
        packed_count: int,
        client_a: int,
        client_b: int,
    ) -> None:
        dc = self.dcs[target]
        mode = None
        if not reachable or not dc.alive:
            mode = simgen.SETTLE_TIMEOUT
        elif dc.role != "primary":
            mode = simgen.SETTLE_REFUSED
        elif dc.inflight and policy.backlog_exceeded(
            (dc.inflight[0].step + 1) * self.step_ns, end_ns, self.topology.backlog_max_ns
        ):
            mode = simgen.SETTLE_REFUSED
            self.refused_backlog += new_count + packed_count
        if mode is not None:
            batch = Batch(
                0,
                step,
                new_first,
                new_count,
                packed,
                packed_count,
                bytearray(),
                0,
                0,
                client_a,
                client_b,
                0,
            )
            self._settle(batch, mode, 0)
            return
        total = new_count + packed_count
        if len(self.buffer) < total * TRANSFER_SIZE:
            self.buffer = bytearray(total * TRANSFER_SIZE * 2)
            self.timestamps_buffer = bytearray(total * 16)
            self.balances_buffer = bytearray(total * 32)
        view = memoryview(self.buffer)[: total * TRANSFER_SIZE]
        if packed_count:
            self.traffic.fill_packed(self.buffer, 0, packed, packed_count)
        if new_count:
            self.traffic.fill_range(self.buffer, packed_count, new_first, new_count)
        self._dayend_if_due(dc, end_ns)
        timestamp = self._timestamp(dc, end_ns)
        day = self._business_day(dc, timestamp)
        results = bytearray(total)
        applied = total
        screened = None
        if self.risk is not None:
            # The risk stage, before the engine (core/services/payments.py's order): refused
            # requests never reach it; holds reach it rewritten as PENDING transfers.
            seqs = [packed[i] >> 8 for i in range(packed_count)]
            seqs.extend(range(new_first, new_first + new_count))
            started = time.perf_counter()
            screened = self.risk.screen(self.buffer, total, seqs, timestamp, dc)
            self.timings["risk_s"] = self.timings.get("risk_s", 0.0) + (
                time.perf_counter() - started
            )
            applied = screened.kept
            if applied < total:
                view = self._compact(screened.keep, total)
            if applied == 0:
                # Every attempt was refused by the stage: answered at once, nothing applied.
                refused = Batch(
                    0, step, new_first, new_count, packed, packed_count, screened.results,
                    0, 0, client_a, client_b, 0,
                )  # fmt: skip
                self._settle(refused, simgen.SETTLE_COMMIT, 0)
                return
            results = bytearray(applied)
        dc.ledger.create_transfers_into(
            view, timestamp, day, results, self.timestamps_buffer, self.balances_buffer
        )
        if screened is not None and applied < total:
            results = self._scatter(screened, results, total)
        entry = Entry(EntryKind.CREATE_TRANSFERS, timestamp, day, applied, bytes(view))
        record = self._append_own(dc, entry, end_ns, policy.last_timestamp(timestamp, applied))
        if screened is not None and self.risk is not None:
            self.risk.carried(screened, record.lsn, record.epoch)  # its decisions ride in it
        self.batches += 1
        self.attempts_applied += applied
        if dc.epoch < self.max_epoch:
            self.stale_primary_batches += 1
        dc.inflight.append(
            Batch(
                record.lsn,
                step,
                new_first,
                new_count,
                packed if packed_count else None,
                packed_count,
                results,
                end_ns + dc.fsync_ns,
                end_ns + self.topology.client_timeout_ns,
                client_a,
                client_b,
                dc.epoch,
            )
        )

    def _compact(self, keep: bytearray, total: int) -> memoryview:
        """The kept records of the batch buffer moved to its front, in order."""
        buffer = self.buffer
        kept = 0
        for index in range(total):
            if keep[index]:
                if kept != index:
                    buffer[kept * TRANSFER_SIZE : (kept + 1) * TRANSFER_SIZE] = buffer[
                        index * TRANSFER_SIZE : (index + 1) * TRANSFER_SIZE
                    ]
                kept += 1
        return memoryview(buffer)[: kept * TRANSFER_SIZE]

    @staticmethod
    def _scatter(screened: Any, applied: bytearray, total: int) -> bytearray:
        """Every attempt's answer in batch order: the engine's for the kept ones, the
        stage's refusal for the rest."""
        results = bytearray(screened.results)
        position = 0
        for index in range(total):
            if screened.keep[index]:
                results[index] = applied[position]
                position += 1
        return results

    def _settle(self, batch: Batch, mode: int, commit_delay_ns: int) -> int:
        if batch.loans is not None:
            # Disbursements: answered when committed; one timed out is retried by the loan
            # service at its next tick (`Disbursements.due`). No client counts them.
            if mode == simgen.SETTLE_COMMIT and self.disbursements is not None:
                at_ns = (batch.step + 1) * self.step_ns + commit_delay_ns
                self.disbursements.acknowledged(batch.loans, batch.results, at_ns)
            return 0
        total = batch.new_count + batch.packed_count
        if len(self.retry_packed) < total:
            self.retry_packed = array("Q", bytes(8 * total * 2))
            self.retry_steps = array("q", bytes(8 * total * 2))
        acked_before = self.clients.acked
        written = self.clients.settle(
            mode,
            batch.step,
            batch.new_first,
            batch.new_count,
            batch.packed if batch.packed is not None else EMPTY,
            batch.packed_count,
            batch.results if batch.results else EMPTY.tobytes(),
            commit_delay_ns,
            batch.client_a_ns,
            batch.client_b_ns,
            self.retry_packed,
            self.retry_steps,
        )
        if written:
            wheel = self.wheel
            packed, steps = self.retry_packed, self.retry_steps
            for index in range(written):
                slot = wheel.get(steps[index])
                if slot is None:
                    wheel[steps[index]] = slot = array("Q")
                slot.append(packed[index])
        return int(self.clients.acked - acked_before)

    # --- the primary's own entries ----------------------------------------------------

    def _timestamp(self, dc: DataCenter, now_ns: int) -> int:
        """A hybrid clock: the DC's (possibly skewed) wall clock, never below its last timestamp."""
        return policy.next_timestamp(self.start_ns + now_ns + dc.clock_skew_ns, dc.last_timestamp)

    def _business_day(self, dc: DataCenter, timestamp: int) -> int:
        minute = timestamp // (60 * NS_PER_S)
        if self.day_cache[0] != minute:
            assert self.rules is not None
            self.day_cache = (minute, self.rules.business_day(timestamp))
        return policy.entry_business_day(self.day_cache[1], dc.ledger.last_day)

    def _append_own(self, dc: DataCenter, entry: Entry, now_ns: int, last_timestamp: int) -> Record:
        record = Record(
            dc.applied_lsn + 1, dc.epoch, entry, now_ns, last_timestamp, entry_size(entry)
        )
        dc.record_applied(record)
        return record

    def _own_entry(
        self,
        dc: DataCenter,
        kind: EntryKind,
        count: int,
        payload: bytes,
        now_ns: int,
        *,
        check: bool = True,
        timestamps: int = 1,
    ) -> Any:
        """Form, apply and log an entry of the primary's own (not a client batch);
        `timestamps`: how many it takes (one a transfer it posts)."""
        from core.entries import apply_entry

        if kind not in (EntryKind.EVICT, EntryKind.EVICT_FAILED):
            self._dayend_if_due(dc, now_ns)
        timestamp = self._timestamp(dc, now_ns)
        entry = Entry(kind, timestamp, self._business_day(dc, timestamp), count, payload)
        if kind == EntryKind.EVICT:
            self.checker.scan(dc.name, dc.ledger)
        result = apply_entry(dc.ledger, entry)
        if kind == EntryKind.CREATE_ACCOUNTS and check:
            assert result.count(CreateAccountResult.OK) == count, result
        self._append_own(dc, entry, now_ns, policy.last_timestamp(timestamp, timestamps))
        return result

    # --- the day-end -------------------------------------------------------------------

    def _midnight(self, now_ns: int) -> None:
        primary = self._serving_primary()
        if primary is not None:
            self._dayend_if_due(primary, now_ns)

    def _dayend_if_due(self, dc: DataCenter, now_ns: int) -> None:
        """Before a primary forms an entry of a new business day, the day-end of each day
        that ended (sim/dayend.py); a newly promoted primary first finishes what its
        predecessor's day-end left undone (the steps resume from the ledger's state)."""
        if self.catalog is None or self.in_dayend:
            return
        ledger = dc.ledger
        resume = dc.name in self.dayend_resume
        self.dayend_resume.discard(dc.name)
        day = self._business_day(dc, self._timestamp(dc, now_ns))
        if not resume and ledger.accrued_day >= day - 1:
            return
        self.in_dayend = True
        started = time.perf_counter()
        try:
            if resume and self.first_day <= ledger.accrued_day < day:
                self._run_dayend(dc, ledger.accrued_day, now_ns, resumed=True)
            for ended in range(max(ledger.accrued_day + 1, self.first_day), day):
                self._run_dayend(dc, ended, now_ns, resumed=False)
        finally:
            self.in_dayend = False
            self.timings["dayend_s"] = self.timings.get("dayend_s", 0.0) + (
                time.perf_counter() - started
            )

    def _apply_made(self, dc: DataCenter, make: Maker, now_ns: int) -> tuple[bool, Any]:
        """Form the entry `make` makes of the primary's state now, apply and log it:
        (whether there was one, its outcome)."""
        made = make(dc.ledger)
        if made is None:
            return False, None
        kind, count, payload, timestamps = made
        return True, self._own_entry(dc, kind, count, payload, now_ns, timestamps=timestamps)

    def _run_dayend(self, dc: DataCenter, day: int, now_ns: int, *, resumed: bool) -> None:
        """The day-end of `day` on primary `dc`, step by step, each checked by the
        interest checker against what it read before the day-end began."""
        outer, self.in_dayend = self.in_dayend, True  # its own entries trigger nothing
        try:
            self._run_dayend_steps(dc, day, now_ns, resumed=resumed)
        finally:
            self.in_dayend = outer

    def _run_dayend_steps(self, dc: DataCenter, day: int, now_ns: int, *, resumed: bool) -> None:
        assert self.catalog is not None and self.rules is not None
        assert self.interest_checker is not None
        catalog, checker, ledger = self.catalog, self.interest_checker, dc.ledger
        run = DayEndRun(day, dc.name, now_ns, resumed)
        snapshot = checker.before(ledger, day)
        made, outcome = self._apply_made(dc, accrual_maker(catalog, self.rules, day), now_ns)
        run.entries += made
        run.accrued_accounts = int(outcome or 0)
        checker.after_accrual(snapshot, ledger)
        if catalog.is_settlement_day(day):
            period = catalog.settlement_period(day)
            settlement = Settlement(
                period, plant_extra_fen=self.config.plant_bug == "interest-one-fen-more"
            )
            start = ledger.log_count
            while True:
                made, outcome = self._apply_made(dc, settlement.make, now_ns)
                if not made:
                    break
                settlement.maker.count(outcome[0])
            checker.after_settlement(snapshot, ledger, start, ledger.log_count)
            run.settlement_period = period
            run.settlement_transfers = settlement.maker.posted
            run.settlement_entries = settlement.maker.chunks
            run.entries += settlement.maker.chunks
        maturing = MaturityMaker(catalog, day + 1)
        start = ledger.log_count
        while True:
            made, outcome = self._apply_made(dc, maturing.make, now_ns)
            if not made:
                break
            maturing.count(outcome[0])
            run.entries += 1
        checker.after_maturities(snapshot, ledger, day + 1, start, ledger.log_count)
        run.maturities_paid = maturing.paid_out
        run.rollovers = maturing.rolled_over
        run.maturity_interest_fen = maturing.interest_fen
        self._collect_loans(dc, day, now_ns, run)
        made, outcome = self._apply_made(dc, purge_counters_maker(day + 1), now_ns)
        run.entries += made
        run.counters_purged = int(outcome or 0)
        made, outcome = self._apply_made(dc, expire_holds_maker, now_ns)
        run.entries += made
        run.holds_expired = int(outcome or 0)
        checker.after_run(snapshot, ledger)
        self.dayend_runs.append(run)
        self._note(now_ns, "dayend", dc=dc.name, day=day, resumed=resumed, entries=run.entries)

    def _collect_loans(self, dc: DataCenter, day: int, now_ns: int, run: DayEndRun) -> None:
        """The day-end's loan step (sim/dayend.py `LoanCollection`) over the terms table
        of the loans `dc` holds, checked by the loan checker (sim/loan_checker.py)."""
        book, checker, ledger = self.loan_book, self.loan_checker, dc.ledger
        if book is None or checker is None:
            return
        terms = book.terms_table(ledger)
        snapshot = checker.before(ledger, day)
        collecting = LoanCollection(
            terms,
            day,
            self.loan_chunk,
            plant_row_not_written=self.config.plant_bug == "loan-row-not-written",
        )
        start = ledger.log_count
        while True:
            made, outcome = self._apply_made(dc, collecting.make, now_ns)
            if not made:
                break
            collecting.count(outcome[0])
        checker.after(snapshot, ledger, start, ledger.log_count)
        maker = collecting.maker
        run.loans_touched = maker.touched
        run.loans_collected = maker.collected
        run.loan_collected_fen = maker.principal_fen + maker.interest_fen + maker.penalty_fen
        run.loans_overdue = maker.overdue
        run.loans_closed = maker.closed
        run.loan_terms_skipped = maker.skipped
        run.loan_entries = collecting.entries
        run.entries += collecting.entries

    def _evict_tick(self, now_ns: int) -> None:
        """Each primary evicts by the engine's policy (`core.engine_policy`), due at every
        tick: the failures ride with a log eviction only, right behind it (the checker
        reads both rings before each EVICT, on every DC that applies it)."""
        interval_ns = self.topology.evict_interval_ns
        self._schedule(now_ns + interval_ns, self._evict_tick)
        retention_ns = self.topology.log_retention_ns
        eviction = policy.EvictionPolicy(retention_ns, retention_ns, interval_ns)
        for dc in list(self.dcs.values()):
            if not dc.is_primary:
                continue
            ledger = dc.ledger
            plan = eviction.plan(
                self._timestamp(dc, now_ns),
                0,
                window=ledger.log_count - ledger.log_tail,
                incoming=0,
                capacity=ledger.transfer_capacity,
                log_oldest_ns=ledger.log_timestamp_oldest(),
                failed_window=ledger.failed_count - ledger.failed_tail,
                failed_oldest_ns=ledger.failed_timestamp_oldest(),
            )
            if plan.log is None:
                continue
            payload = EVICT_PAYLOAD.pack(plan.log.before_ns, plan.log.count)
            self._own_entry(dc, EntryKind.EVICT, 0, payload, now_ns)
            if plan.failed is not None:
                payload = EVICT_PAYLOAD.pack(plan.failed.before_ns, plan.failed.count)
                self._own_entry(dc, EntryKind.EVICT_FAILED, 0, payload, now_ns)

    def _opening_tick(self, now_ns: int) -> None:
        self._schedule(now_ns + OPENING_INTERVAL_NS, self._opening_tick)
        primary = self._serving_primary()
        if primary is None or self.population is None or self.onboarding is None:
            return
        per_day = self.population.users * self.population.openings_per_user_day
        count = int(per_day * OPENING_INTERVAL_NS / (86_400 * NS_PER_S))
        count += (
            1
            if self.rng.random() < per_day * OPENING_INTERVAL_NS / (86_400 * NS_PER_S) - count
            else 0
        )
        if count <= 0 or self.openings_created + count > self.population.openings_capacity(
            self.window_ns / (86_400 * NS_PER_S)
        ):
            return
        # The applicants' verification (the services', against the providers' world), then
        # an account for each one verified with a bound card, then everybody's first
        # top-up and payment on the account they asked for (refused where there is none).
        first = self.openings_next
        day = self._business_day(primary, self._timestamp(primary, now_ns))
        started = time.perf_counter()
        opened = self.onboarding.apply(first, count, day, now_ns)
        self.timings["onboarding_s"] = self.timings.get("onboarding_s", 0.0) + (
            time.perf_counter() - started
        )
        self.openings_next += count
        if opened:
            payload = population_module.opening_accounts(self.population, opened)
            self.openings_created += len(opened)
            self._own_entry(primary, EntryKind.CREATE_ACCOUNTS, len(opened), payload, now_ns)
        transfers = self.onboarding.first_transfers_payload(first, count)
        results = self._own_entry(
            primary, EntryKind.CREATE_TRANSFERS, 2 * count, transfers, now_ns,
            check=False, timestamps=2 * count,
        )  # fmt: skip
        self.onboarding.count_results(results[0])

    def _loan_tick(self, now_ns: int) -> None:
        """The loan service: the interval's new loans (during the traffic window), and
        every disbursement not yet answered, sent to the serving primary as an account
        opening and a POST_WITH_ROWS entry, committed like a client batch (sim/loans.py)."""
        self._schedule(now_ns + DISBURSEMENT_INTERVAL_NS, self._loan_tick)
        book, tracker, checker = self.loan_book, self.disbursements, self.loan_checker
        assert book is not None and tracker is not None and checker is not None
        primary = self._serving_primary()
        if now_ns < self.window_ns:
            for _ in range(tracker.arrivals()):
                dc = primary or self.dcs[self.names[0]]
                day = self._business_day(dc, self._timestamp(dc, now_ns))
                loan = book.new_loan(tracker.made, day, dc.ledger)
                checker.register_new(loan, book.row_of(loan))
                tracker.add(loan, now_ns)
        if primary is None:
            return
        items = tracker.due(now_ns)
        if not items:
            return
        loans = [item.loan for item in items]
        openings, transfers, writes = disbursement_payloads(book, loans)
        self._own_entry(
            primary, EntryKind.CREATE_ACCOUNTS, len(loans), openings, now_ns, check=False
        )
        payload = pack_post_with_rows_payload(transfers, writes)
        outcome = self._own_entry(
            primary, EntryKind.POST_WITH_ROWS, len(loans), payload, now_ns, timestamps=len(loans)
        )
        deadline_ns = now_ns + self.topology.client_timeout_ns
        for item in items:
            item.attempts += 1
            item.deadline_ns = deadline_ns
        primary.inflight.append(
            Batch(
                primary.applied_lsn, now_ns // self.step_ns, 0, 0, None, 0,
                bytearray(outcome[0]), now_ns + primary.fsync_ns, deadline_ns, 0, 0,
                primary.epoch, loans,
            )
        )  # fmt: skip

    def _admin_entry(self, now_ns: int, entry: Entry | None) -> None:
        """A journal's own entry (an account opening, a rule change) at its time, applied
        by the serving primary in journal order: while there is none, entries wait in a
        queue, behind those held back before them, and the queue is retried every step
        (a Class II account must not be opened before the Class I it is bound to)."""
        if entry is not None:
            self.admin_queue.append((len(self.admin_diffs) + len(self.admin_queue), entry))
        elif not self.admin_queue:
            return
        primary = self._serving_primary()
        if primary is None:
            if entry is None or len(self.admin_queue) == 1:
                self._schedule(now_ns + self.step_ns, self._admin_entry, None)
            return
        while self.admin_queue:
            index, held = self.admin_queue.popleft()
            result = self._own_entry(
                primary, held.kind, held.count, held.payload, now_ns, check=False
            )
            server = self.traffic.admin_results[index] if self.traffic.admin_results else None
            self.admin_diffs.append(server is not None and bytes(result) != server)

    # --- failure detection and failover ---------------------------------------------

    def _suspects(self, observer: DataCenter, other: str, now_ns: int) -> bool:
        return now_ns - observer.last_heard.get(other, NEVER) > self.topology.suspect_ns

    def _heartbeat(self, now_ns: int) -> None:
        self._schedule(now_ns + self.topology.heartbeat_ns, self._heartbeat)
        network = self.network
        alive = [dc for dc in self.dcs.values() if dc.alive]
        for sender in alive:
            for receiver in alive:
                if sender is receiver or not network.up(sender.name, receiver.name):
                    continue
                receiver.last_heard[sender.name] = now_ns
                if sender.epoch > receiver.epoch and self.profile.has("epochs_in_heartbeats"):
                    if receiver.role == "primary":
                        self._step_down(
                            receiver,
                            sender.epoch,
                            now_ns,
                            f"heard epoch {sender.epoch} from {sender.name}",
                        )
                    receiver.epoch = sender.epoch
            if self.topology.witness:
                sender.last_heard[WITNESS] = now_ns
                self.witness_heard[sender.name] = now_ns
        for dc in alive:
            self.max_epoch = max(self.max_epoch, dc.epoch)
        # Leases: a primary that hears no other voter stops serving before anyone replaces it.
        for dc in alive:
            if (
                self.profile.has("leases")
                and dc.role == "primary"
                and not dc.ignores_lease
                and not dc.operator_mandate
                and not any(
                    now_ns - dc.last_heard.get(other, NEVER) <= self.topology.lease_ns
                    for other in self.voters
                    if other != dc.name
                )
            ):
                self._step_down(dc, dc.epoch, now_ns, "lease expired: no other voter heard")
        if self.profile.has("majority_failover"):
            self._elect(now_ns, alive)

    def _sees_primary(self, voter: str, primaries: list[DataCenter], now_ns: int) -> bool:
        """Whether `voter` still hears a primary at least as new as its own epoch.

        `primaries` are the DCs that act as primary, dead or not: a dead one is
        noticed the way a live peer would, by its heartbeats stopping.
        """
        if voter == WITNESS:
            return any(
                now_ns - self.witness_heard.get(primary.name, NEVER) <= self.topology.suspect_ns
                for primary in primaries
            )
        dc = self.dcs[voter]
        return any(
            primary.epoch >= dc.epoch
            and (primary is dc or not self._suspects(dc, primary.name, now_ns))
            for primary in primaries
        )

    def _connected(self, first: str, second: str, now_ns: int) -> bool:
        """Two voters can hold an election together: each heard the other within a lease."""
        if WITNESS in (first, second):
            return True
        lease = self.topology.lease_ns
        return (
            now_ns - self.dcs[first].last_heard.get(second, NEVER) <= lease
            and now_ns - self.dcs[second].last_heard.get(first, NEVER) <= lease
        )

    def _elect(self, now_ns: int, alive: list[DataCenter]) -> None:
        serving = [dc for dc in alive if dc.role == "primary"]
        if serving and self.operator_since_ns is not None:
            self.operator_since_ns = None
        if self.pending_promotion is not None:
            return
        primaries = [dc for dc in self.dcs.values() if dc.role == "primary"]
        voters = [dc.name for dc in alive] + ([WITNESS] if self.topology.witness else [])
        orphans = [voter for voter in voters if not self._sees_primary(voter, primaries, now_ns)]
        if not orphans:
            self.orphaned_since_ns = None
            return
        if self.orphaned_since_ns is None:
            self.orphaned_since_ns = now_ns - self.topology.suspect_ns
        clique = self._largest_clique(orphans, now_ns)
        if len(clique) >= self.majority:
            candidates = [
                self.dcs[name]
                for name in clique
                if name != WITNESS and not self.dcs[name].resyncing(now_ns)
            ]
            chosen = self._choose(candidates, automatic_only=True)
            if chosen is not None:
                # The epoch counter lives in the voters' shared state: any majority overlaps
                # the one that made the last epoch, so the new one is above every epoch yet.
                epoch = max(dc.epoch for dc in self.dcs.values()) + 1
                for name in clique:
                    if name != WITNESS:
                        self.dcs[name].epoch = epoch
                self._decide(now_ns, chosen, epoch, "majority")
                return
        if serving:
            return
        # No majority can act (or policy forbids it): a person decides, after the operator delay.
        if self.operator_since_ns is None:
            self.operator_since_ns = now_ns
            self._note(now_ns, "operator_paged")
        if now_ns - self.operator_since_ns >= self.topology.operator_delay_ns:
            candidates = [dc for dc in alive if not dc.resyncing(now_ns)]
            chosen = self._choose(candidates, automatic_only=False)
            if chosen is not None:
                epoch = max(dc.epoch for dc in self.dcs.values()) + 1
                chosen.epoch = epoch
                self._decide(now_ns, chosen, epoch, "operator")
                self.operator_since_ns = None

    def _largest_clique(self, names: list[str], now_ns: int) -> list[str]:
        for size in range(len(names), 0, -1):
            for group in itertools.combinations(names, size):
                if all(self._connected(a, b, now_ns) for a, b in itertools.combinations(group, 2)):
                    return list(group)
        return []

    def _choose(self, candidates: list[DataCenter], automatic_only: bool) -> DataCenter | None:
        region = self.last_primary_region
        eligible = []
        for dc in candidates:
            same_region = dc.region == region
            policy = self.topology.same_region if same_region else self.topology.cross_region
            if automatic_only and policy != "automatic":
                continue
            eligible.append(dc)
        if not eligible:
            return None

        def rank(dc: DataCenter) -> tuple[int, int, int]:
            if dc.region == region and dc.spec.replication == "sync":
                tier = 0
            elif dc.region == region:
                tier = 1
            else:
                tier = 2
            return (tier, -dc.applied_lsn, dc.spec.priority)

        return min(eligible, key=rank)

    def _decide(self, now_ns: int, chosen: DataCenter, epoch: int, decided_by: str) -> None:
        self.max_epoch = max(self.max_epoch, epoch)
        chosen.following = None
        old = self.last_primary
        old_region = (
            self.topology.data_centers[old].region if old is not None else self.last_primary_region
        )
        kind = "same_city" if chosen.region == old_region else "cross_region"
        if self.patroni:
            sync_candidate = chosen.name == self.sync_key and kind == "same_city"
        else:
            sync_candidate = (
                old is not None
                and chosen.name in self.sync_candidates.get(old, [])
                and kind == "same_city"
            )
        failover = Failover(
            number=len(self.failovers) + 1,
            kind=kind,
            decided_by=decided_by,
            old_primary=old,
            new_primary=chosen.name,
            epoch=epoch,
            lost_primary_ns=next(
                value
                for value in (self.lost_primary_ns, self.orphaned_since_ns, now_ns)
                if value is not None
            ),
            decided_ns=now_ns,
            sync_candidate=sync_candidate,
            decided_lsn=chosen.applied_lsn,
        )
        self.failovers.append(failover)
        self.pending_promotion = (chosen.name, epoch)
        self._note(now_ns, "failover_decided", to=chosen.name, epoch=epoch, by=decided_by)
        self._role(chosen.name, "promoting", now_ns)
        promotion_ns = self.topology.promotion_ns
        if self.profile.has("rebuild_scales_with_data"):
            # pg_ctl promote, then Tally rebuilds its ledger from the new primary.
            promotion_ns = self.topology.promote_base_ns + (
                self.topology.rebuild_ns_per_million_accounts
                * chosen.ledger.account_count
                // 1_000_000
            )
        self._schedule(now_ns + promotion_ns, self._promote, failover)

    def _promote(self, now_ns: int, failover: Failover) -> None:
        self.pending_promotion = None
        dc = self.dcs[failover.new_primary]
        if not dc.alive:
            self._note(now_ns, "promotion_abandoned", dc=dc.name)
            self.failovers.remove(failover)
            return
        # Catch up from any reachable DC that has more of the same history (consensus only:
        # PostgreSQL promotes a standby with exactly what it has).
        for peer in self.dcs.values() if self.profile.has("sibling_catch_up") else ():
            if peer is dc or not peer.alive or not self.network.both_up(peer.name, dc.name):
                continue
            if peer.applied_lsn > dc.applied_lsn and peer.epoch_at(dc.applied_lsn) == dc.last_epoch:
                while dc.applied_lsn < peer.applied_lsn:
                    record = peer.wal_record(dc.applied_lsn + 1)
                    if record is None:
                        break
                    if record.entry.kind == EntryKind.EVICT:
                        self.checker.scan(dc.name, dc.ledger)
                    dc.apply(record)
        dc.epoch = max(dc.epoch, failover.epoch)
        dc.role = "primary"
        self.dayend_resume.add(dc.name)  # finish a day-end its predecessor left undone
        dc.following = None
        dc.stale = False
        dc.ignores_lease = False
        # A person who promotes a DC without a majority has fenced the others by hand:
        # it needs no lease, and may commit without a synchronous standby.
        dc.operator_mandate = failover.decided_by == "operator"
        dc.streams = {other: Stream(other) for other in self.names if other != dc.name}
        dc.sync_standby = None
        dc.no_sync_since_ns = now_ns
        dc.primary_since_ns = now_ns
        failover.promoted_ns = now_ns
        failover.promoted_lsn = dc.applied_lsn
        if self.risk is not None:
            # Tally starts on the new primary: its risk counters rebuilt from its own log.
            self.risk.restart(dc, now_ns)
        self._role(dc.name, "primary", now_ns)
        self.last_primary = dc.name
        self.last_primary_region = dc.region
        self.lost_primary_ns = None
        self.orphaned_since_ns = None
        verification = self.checker.verify(dc.name, dc.ledger, self.ack_result, now_ns)
        failover.verification = verification
        already = {
            seq for earlier in self.failovers if earlier is not failover for seq in earlier.lost
        }
        failover.lost = [seq for seq in verification.missing if seq not in already]
        if self.loan_checker is not None and self.disbursements is not None:
            self.loan_checker.verify_disbursements(
                dc.name,
                dc.ledger,
                self.disbursements.acknowledged_loans(now_ns),
                failover.kind == "cross_region",
            )
        self._note(now_ns, "promoted", dc=dc.name, epoch=dc.epoch, lost=len(failover.lost))
        self._schedule(now_ns + self.topology.discovery_ns, self._set_route, dc.name)

    def _set_route(self, now_ns: int, name: str) -> None:
        self.route = name
        self._note(now_ns, "route", to=name)

    # --- production: Patroni with etcd ------------------------------------------------

    def _patroni_setup(self) -> None:
        """Patroni 3.0.2 with an etcd member in every DC: the leader key, /sync and each
        member's HA loop (every loop_wait, members out of phase)."""
        topology = self.topology
        primary = topology.primary
        self.etcd_members = list(self.names)
        self.leader_key: str | None = primary
        self.leader_expiry_ns = topology.patroni_ttl_ns
        self.sync_leader: str | None = primary  # /sync: the leader it was written for
        self.sync_key: str | None = None  # /sync: the synchronous standby
        # Synchronous candidates: members without the nosync tag, by priority.
        self.patroni_candidates = {
            name: [
                other.name
                for other in sorted(topology.data_centers.values(), key=lambda dc: dc.priority)
                if other.name != name and other.replication == "sync"
            ]
            for name in self.names
        }
        self.by_priority = [
            dc.name for dc in sorted(topology.data_centers.values(), key=lambda dc: dc.priority)
        ]
        candidates = self.patroni_candidates[primary]
        if candidates:
            self.sync_key = candidates[0]
            self.dcs[primary].sync_standby = candidates[0]
        else:
            self.dcs[primary].no_sync_since_ns = 0
        for index, name in enumerate(self.names):
            self.dcs[name].last_renew_ns = 0
            # Out of phase, the leader's first loop once its streams are connected.
            offset = (index + 1) * topology.loop_wait_ns // (len(self.names) + 1)
            self._schedule(offset, self._patroni_tick, name, None)

    def _reaches_dcs(self, name: str) -> bool:
        """Whether `name`'s Patroni reaches a majority of the etcd cluster's members."""
        network = self.network
        reached = sum(
            1
            for member in self.etcd_members
            if self.dcs[member].alive and (member == name or network.both_up(name, member))
        )
        members = len(self.etcd_members)
        if self.topology.witness:  # a fourth etcd member in a third place
            reached += 1
            members += 1
        return reached >= members // 2 + 1

    def _patroni_tick(self, now_ns: int, name: str, retry_since_ns: int | None) -> None:
        topology = self.topology
        dc = self.dcs[name]
        next_ns = now_ns + topology.loop_wait_ns
        if not dc.alive:
            self._schedule(next_ns, self._patroni_tick, name, None)
            return
        if name not in self.etcd_members and self._reaches_dcs(name):
            self.etcd_members.append(name)  # the operator re-adds it once it is reachable
        if not self._reaches_dcs(name):
            if retry_since_ns is None:
                # The etcd call is retried for retry_timeout before the loop gives up on it.
                self._schedule(now_ns + topology.retry_timeout_ns, self._patroni_tick, name, now_ns)
                return
            if (
                dc.role == "primary"
                and self.profile.has("demote_without_dcs")
                and not dc.local_commit
            ):
                self._demote(dc, now_ns, "cannot reach an etcd majority: demoted itself")
            self._patroni_operator(now_ns)
            self._schedule(next_ns, self._patroni_tick, name, None)
            return
        self._schedule(next_ns, self._patroni_tick, name, None)
        key_valid = self.leader_key is not None and self.leader_expiry_ns > now_ns
        promoting = self.pending_promotion is not None and self.pending_promotion[0] == name
        if self.leader_key == name and (dc.role == "primary" or promoting):
            self.leader_expiry_ns = now_ns + topology.patroni_ttl_ns
            dc.last_renew_ns = now_ns
            if dc.role == "primary":
                self._patroni_sync(dc, now_ns)
            return
        if dc.role == "primary":
            self._demote(dc, now_ns, f"the leader key is held by {self.leader_key}")
            return
        if key_valid and self.leader_key != name:
            dc.upstream = self.leader_key
        elif self.pending_promotion is None and self._patroni_eligible(dc, now_ns):
            # The key expired (or is still its own after it demoted): take it and promote.
            self.leader_key = name
            self.leader_expiry_ns = now_ns + topology.patroni_ttl_ns
            dc.last_renew_ns = now_ns
            epoch = max(other.epoch for other in self.dcs.values()) + 1
            dc.epoch = epoch
            self._decide(now_ns, dc, epoch, self.profile.decided_by)
            self.sync_leader = name
            self.sync_key = None
            return
        self._patroni_operator(now_ns)

    def _patroni_eligible(self, dc: DataCenter, now_ns: int) -> bool:
        if dc.resyncing(now_ns):
            return False
        if dc.spec.nofailover and self.profile.has("remote_never_automatic"):
            return False
        if self.profile.has("sync_only_failover"):
            return dc.name in (self.sync_key, self.sync_leader)
        return True

    def _streaming(self, primary: DataCenter, name: str, now_ns: int) -> bool:
        """Whether `name` streams from `primary` (pg_stat_replication shows it streaming)."""
        stream = primary.streams.get(name)
        replica = self.dcs[name]
        return (
            stream is not None
            and stream.connected
            and not stream.broken
            and replica.alive
            and replica.following == primary.name
            and not replica.resyncing(now_ns)
            and self.network.both_up(primary.name, name)
            and not (stream.sent and now_ns - stream.sent[0][1] > self.topology.sync_ack_timeout_ns)
        )

    def _patroni_sync(self, primary: DataCenter, now_ns: int) -> None:
        """The leader's loop: /sync and synchronous_standby_names (Patroni 3.0.2)."""
        if self.sync_key is not None and not self._streaming(primary, self.sync_key, now_ns):
            self.sync_key = None  # removed from /sync first, then from the configuration
        if self.sync_key is None:
            for name in self.patroni_candidates[primary.name]:
                if self._streaming(primary, name, now_ns):
                    self.sync_key = name
                    break
        self.sync_leader = primary.name
        chosen = self.sync_key
        if (
            chosen is None
            and self.commit_without_standby == "block"
            and self.topology.any_standby_when_no_sync
        ):
            # Strict mode with no candidate: synchronous_standby_names = '*', so any standby
            # that streams acknowledges, a nosync one too (it is not in /sync: never promoted).
            chosen = next(
                (
                    name
                    for name in self.by_priority
                    if name != primary.name and self._streaming(primary, name, now_ns)
                ),
                None,
            )
        self._set_sync_standby(primary, chosen, now_ns)

    def _demote(self, dc: DataCenter, now_ns: int, reason: str) -> None:
        """Patroni demotes its PostgreSQL: read-only, its waiting commits never answered."""
        if dc.role != "primary":
            return
        stale = dc.stale
        serving = dc.epoch >= self.max_epoch
        dc.become_replica()
        dc.upstream = None
        self._role(dc.name, "demoted", now_ns)
        self._note(now_ns, "demoted", dc=dc.name, reason=reason)
        if serving and self.orphaned_since_ns is None and self.lost_primary_ns is None:
            # The primary stopped serving writes: at its last commit (the link that cut it
            # from etcd usually cut its standbys first), at the latest now.
            self.orphaned_since_ns = min(now_ns, max(dc.last_commit_ns, dc.primary_since_ns))
        self._fence(dc, now_ns, reason, stale)

    def _patroni_operator(self, now_ns: int) -> None:
        """No primary and nobody Patroni may promote: a person promotes the best DC left,
        after operator_delay_s, re-bootstrapping etcd if its side has no majority."""
        if any(dc.alive and dc.role == "primary" for dc in self.dcs.values()):
            self.operator_since_ns = None
            return
        if self.pending_promotion is not None or self.leader_expiry_ns > now_ns:
            return
        if any(
            dc.alive and self._patroni_eligible(dc, now_ns) and self._reaches_dcs(dc.name)
            for dc in self.dcs.values()
        ):
            return  # Patroni promotes it at its next loop
        if self.operator_since_ns is None:
            self.operator_since_ns = now_ns
            self._note(now_ns, "operator_paged")
        if now_ns - self.operator_since_ns < self.topology.operator_delay_ns:
            return
        candidates = [dc for dc in self.dcs.values() if dc.alive and not dc.resyncing(now_ns)]
        if not candidates:
            return
        chosen = max(candidates, key=lambda dc: (dc.applied_lsn, -dc.spec.priority))
        if not self._reaches_dcs(chosen.name):
            self.etcd_members = [
                name
                for name in self.names
                if self.dcs[name].alive
                and (name == chosen.name or self.network.both_up(chosen.name, name))
            ]
            self._note(now_ns, "etcd_rebootstrapped", members=list(self.etcd_members))
        self.operator_since_ns = None
        self.leader_key = chosen.name
        self.leader_expiry_ns = now_ns + self.topology.patroni_ttl_ns
        chosen.last_renew_ns = now_ns
        epoch = max(dc.epoch for dc in self.dcs.values()) + 1
        chosen.epoch = epoch
        self._decide(now_ns, chosen, epoch, "operator")
        self.sync_leader = chosen.name
        self.sync_key = None

    def _role(self, name: str, role: str, now_ns: int) -> None:
        """`name` takes `role` from now on (the Gantt chart's intervals)."""
        current, since_ns = self.role_open[name]
        if current == role:
            return
        if now_ns > since_ns:
            self.role_intervals.append(
                {
                    "dc": name,
                    "role": current,
                    "from_s": round(since_ns / NS_PER_S, 3),
                    "to_s": round(now_ns / NS_PER_S, 3),
                }
            )
        self.role_open[name] = (role, now_ns)

    def roles(self) -> list[dict[str, Any]]:
        """Every DC's roles over the run, closed at its end, in time order."""
        end_s = round(self.end_ns / NS_PER_S, 3)
        intervals = self.role_intervals + [
            {"dc": name, "role": role, "from_s": round(since_ns / NS_PER_S, 3), "to_s": end_s}
            for name, (role, since_ns) in self.role_open.items()
        ]
        return sorted(intervals, key=lambda item: (item["from_s"], item["dc"]))

    # --- faults --------------------------------------------------------------------------

    def resolved_faults(self) -> list[ActiveFault]:
        if self.faults_cache is not None:
            return self.faults_cache
        faults: list[ActiveFault] = []
        window = self.window_ns
        rng = random.Random(self.seed * 7919 + 3)
        for spec in self.scenario.faults:
            start = spec.at.resolve_ns(window)
            end = spec.duration.resolve_ns(window) + start if spec.duration is not None else window
            end = min(max(end, start + self.step_ns), window)
            if spec.kind == "random":
                faults.extend(self._random_faults(spec, start, end, rng))
            else:
                faults.append(ActiveFault(spec, start, end))
        self.faults_cache = faults
        return faults

    def _random_faults(
        self, spec: FaultSpec, start: int, end: int, rng: random.Random
    ) -> list[ActiveFault]:
        """FoundationDB's swizzle: cut links one by one, restore them in random order; plus
        degradations, a flapping link, a slow disk, a skewed clock, maybe one DC of the
        primary's region going dark (a synchronous replica always survives)."""
        count = int(spec.params.get("count", 8))
        names = self.names
        pairs = [(a, b) for a in names for b in names if a != b]
        faults: list[ActiveFault] = []
        span = end - start
        middle = start + span // 2
        cuts = rng.sample(pairs, min(len(pairs), max(1, count // 2)))
        restore_times = sorted(rng.randrange(middle, end) for _ in cuts)
        rng.shuffle(restore_times)
        for (first, second), restore in zip(cuts, restore_times, strict=True):
            cut_at = rng.randrange(start, middle)
            faults.append(
                ActiveFault(
                    FaultSpec(
                        "link_partition",
                        f"{first}-{second}",
                        spec.at,
                        None,
                        {"direction": "forward"},
                    ),
                    cut_at,
                    restore,
                )
            )
        extras = ["link_degradation", "link_flapping", "slow_disk", "clock_skew", "dc_outage"]
        for _ in range(max(0, count - len(cuts))):
            kind = rng.choice(extras)
            at = rng.randrange(start, end - span // 10)
            until = min(end, at + rng.randrange(span // 20, span // 5))
            if kind == "dc_outage":
                region = self.topology.data_centers[self.topology.primary].region
                target = rng.choice(
                    [name for name in names if self.topology.data_centers[name].region == region]
                )
                params: dict[str, Any] = {}
                extras.remove("dc_outage")
            elif kind in ("slow_disk", "clock_skew"):
                target = rng.choice(names)
                params = (
                    {"fsync_ms": rng.choice([20, 80, 200])}
                    if kind == "slow_disk"
                    else {"skew_ms": rng.choice([-3000, -500, 800])}
                )
            else:
                first, second = rng.sample(names, 2)
                target = f"{first}-{second}"
                params = (
                    {"latency_ms": rng.choice([20, 100, 400]), "loss": rng.choice([0.0, 0.02, 0.1])}
                    if kind == "link_degradation"
                    else {"period_s": rng.choice([5, 15]), "down_s": rng.choice([1, 4])}
                )
            faults.append(ActiveFault(FaultSpec(kind, target, spec.at, None, params), at, until))
        return faults

    def _schedule_faults(self) -> None:
        for fault in self.resolved_faults():
            self._schedule(fault.start_ns, self._fault_start, fault)
            self._schedule(fault.end_ns, self._fault_end, fault)

    def _fault_start(self, now_ns: int, fault: ActiveFault) -> None:
        spec = fault.spec
        kind = spec.kind
        self.active_faults.append(fault)
        entry: dict[str, Any] = {
            "kind": kind,
            "target": spec.target,
            "start_s": round(fault.start_ns / NS_PER_S, 3),
            "end_s": round(fault.end_ns / NS_PER_S, 3),
        } | spec.params
        self.fault_log.append(entry)
        self._note(now_ns, "fault", kind=kind, target=spec.target)
        if kind in ("dc_outage", "region_outage", "primary_crash", "old_primary_returns"):
            if kind == "primary_crash":
                primary = self._serving_primary()
                fault.targets = [primary.name] if primary is not None else []
                entry["target"] = ",".join(fault.targets)
            else:
                fault.targets = self.network.side(spec.target)
            for name in fault.targets:
                dc = self.dcs[name]
                if not dc.alive:
                    continue
                if dc.is_primary and dc.epoch >= self.max_epoch:
                    self.lost_primary_ns = now_ns
                    dc.crash_pending = (
                        True  # dies after applying this step's batch, before shipping it
                    )
                else:
                    self._die(dc, now_ns)
        elif kind == "link_partition":
            fault.pairs = self.network.pairs(spec.target, str(spec.params.get("direction", "both")))
            self.network.cut(fault.pairs, 1)  # whether the primary is lost is for failover to find
        elif kind == "link_degradation":
            fault.pairs = self.network.pairs(spec.target, "both")
            self.network.degrade(
                fault.pairs,
                round(float(spec.params.get("latency_ms", 0)) * NS_PER_MS),
                float(spec.params.get("loss", 0.0)),
                1,
            )
        elif kind == "link_flapping":
            fault.pairs = self.network.pairs(spec.target, "both")
            period = round(float(spec.params.get("period_s", 10)) * NS_PER_S)
            down = round(float(spec.params.get("down_s", 3)) * NS_PER_S)
            at = now_ns
            while at < fault.end_ns:
                self._schedule(at, self._flap, fault.pairs, 1)
                self._schedule(min(at + down, fault.end_ns), self._flap, fault.pairs, -1)
                at += period
        elif kind == "slow_disk":
            fault.targets = [spec.target]
            self.dcs[spec.target].fsync_ns = round(
                float(spec.params.get("fsync_ms", 100)) * NS_PER_MS
            )
        elif kind == "clock_skew":
            fault.targets = [spec.target]
            self.dcs[spec.target].clock_skew_ns = round(
                float(spec.params.get("skew_ms", 1000)) * NS_PER_MS
            )

    def _flap(self, now_ns: int, pairs: list[tuple[str, str]], delta: int) -> None:
        self.network.cut(pairs, delta)

    def _fault_end(self, now_ns: int, fault: ActiveFault) -> None:
        if fault not in self.active_faults:
            return
        self.active_faults.remove(fault)
        spec = fault.spec
        kind = spec.kind
        self._note(now_ns, "heal", kind=kind, target=spec.target)
        if kind in ("dc_outage", "region_outage", "primary_crash"):
            for name in fault.targets:
                self._restart(self.dcs[name], now_ns, stale=False)
        elif kind == "old_primary_returns":
            for name in fault.targets:
                dc = self.dcs[name]
                self._restart(dc, now_ns, stale=True)
                isolated_ns = round(float(spec.params.get("isolated_s", 30)) * NS_PER_S)
                pairs = [(name, other) for other in self.names if other != name]
                pairs += [(other, name) for other in self.names if other != name]
                self.network.cut(pairs, 1)
                self._schedule(now_ns + isolated_ns, self._flap, pairs, -1)
                fraction = float(spec.params.get("stale_route_fraction", 0.0))
                if fraction > 0:
                    until = now_ns + round(float(spec.params.get("stale_route_s", 60)) * NS_PER_S)
                    self.stale_route = (name, fraction, until)
        elif kind == "link_partition":
            self.network.cut(fault.pairs, -1)
        elif kind == "link_degradation":
            self.network.degrade(
                fault.pairs,
                round(float(spec.params.get("latency_ms", 0)) * NS_PER_MS),
                float(spec.params.get("loss", 0.0)),
                -1,
            )
        elif kind == "slow_disk":
            dc = self.dcs[spec.target]
            dc.fsync_ns = dc.spec.fsync_ns
        elif kind == "clock_skew":
            self.dcs[spec.target].clock_skew_ns = 0

    def _window_end(self, now_ns: int) -> None:
        """Traffic stops: heal whatever is still broken and let the cluster converge."""
        for fault in list(self.active_faults):
            self._fault_end(now_ns, fault)
        self.stale_route = None
        self._note(now_ns, "window_end")

    def _die(self, dc: DataCenter, now_ns: int) -> None:
        dc.alive = False
        if self.risk is not None:
            self.risk.stop(dc.name)  # its Tally process, and the risk counters in it
        self.network.version += 1
        for stream in dc.streams.values():
            stream.in_flight.clear()
            stream.acks.clear()
        self._role(dc.name, "down", now_ns)
        self._note(now_ns, "down", dc=dc.name, role=dc.role, lsn=dc.applied_lsn)

    def _restart(self, dc: DataCenter, now_ns: int, *, stale: bool) -> None:
        if dc.alive:
            return
        dc.alive = True
        self.network.version += 1
        dc.crash_pending = False
        for other in self.voters:
            dc.last_heard[other] = now_ns
        dc.inflight.clear()
        zombie_bug = self.config.plant_bug == "old-primary-accepts-writes"
        if self.patroni and dc.name not in self.etcd_members:
            self.etcd_members.append(dc.name)  # the operator re-adds a returning etcd member
        if (
            stale
            and dc.role == "primary"
            and (not self.profile.has("returning_primary_read_only") or zombie_bug)
        ):
            # Restarted from a stale configuration: believes it still leads, ignores leases.
            dc.stale = True
            dc.ignores_lease = True
            dc.streams = {other: Stream(other) for other in self.names if other != dc.name}
            dc.sync_standby = None
            dc.no_sync_since_ns = now_ns
            # Planted bug: PostgreSQL started outside Patroni, with the configuration a
            # hand-made failover left (synchronous_standby_names = ''): local commits.
            dc.local_commit = self.patroni and zombie_bug
            if self.risk is not None:
                self.risk.restart(dc, now_ns)  # its Tally rebuilds the risk counters at start
            self._role(dc.name, "primary", now_ns)
            self._note(now_ns, "up", dc=dc.name, believes="primary", epoch=dc.epoch)
        else:
            was_primary = dc.role == "primary"
            dc.become_replica()
            dc.upstream = None  # until its Patroni reads the leader key
            self._role(dc.name, "replica", now_ns)
            self._note(now_ns, "up", dc=dc.name, believes="replica", epoch=dc.epoch)
            if stale and was_primary:
                # Patroni finds no leader key of its own: PostgreSQL starts read-only.
                self._fence(dc, now_ns, "no leader key: Patroni started it read-only", True)

    def _day_end_check(self, now_ns: int) -> None:
        for name, dc in self.dcs.items():
            if dc.alive:
                self.day_checks.append(
                    {"at_s": round(now_ns / NS_PER_S, 3), "dc": name}
                    | self.checker.limits(name, dc.ledger)
                )

    # --- metrics ------------------------------------------------------------------------

    def _sample_tick(self, now_ns: int) -> None:
        self._schedule(now_ns + SAMPLE_INTERVAL_NS, self._sample_tick)
        second = now_ns // NS_PER_S
        if second >= self.seconds:
            return
        primary = self._serving_primary()
        if primary is None:
            return
        self.primary_by_second[second] = self.dc_index[primary.name]
        for dc in self.dcs.values():
            if dc is primary:
                self.lag_ms[dc.name][second] = 0.0
            elif dc.alive and not dc.resyncing(now_ns):
                # Like PostgreSQL's replay lag: how long its last entry took from the primary
                # to being applied here, or, when it is further behind, how long ago the
                # oldest entry it has not applied was formed.
                lag_ns = dc.apply_delay_ns
                if dc.applied_lsn < primary.applied_lsn:
                    oldest = primary.wal_record(dc.applied_lsn + 1)
                    formed_ns = oldest.created_ns if oldest is not None else dc.applied_created_ns
                    lag_ns = max(lag_ns, now_ns - formed_ns)
                self.lag_ms[dc.name][second] = lag_ns / NS_PER_MS

    # --- the end ---------------------------------------------------------------------------

    def _finish(self) -> dict[str, Any]:
        started = time.perf_counter()
        primary = self._serving_primary()
        if primary is None:  # the drain ran out: judge the most advanced data center left
            primary = max(
                (dc for dc in self.dcs.values() if dc.alive),
                key=lambda dc: (dc.epoch, dc.applied_lsn),
                default=self.dcs[self.names[0]],
            )
        final = self.checker.verify(primary.name, primary.ledger, self.ack_result, self.end_ns)
        looked, found = self.checker.lookup_sample(primary.ledger, self.ack_result, 2000)
        ledgers = {name: dc.ledger for name, dc in self.dcs.items()}
        per_dc = self.checker.final(self.names, ledgers)
        interest_per_dc: dict[str, Any] = {}
        if self.interest_checker is not None:
            # A primary that applied a transfer of a later day ran the day-end before it.
            ended = primary.ledger.last_day - 1
            last_ended = ended if ended >= self.first_day else None
            for name in self.names:
                interest_per_dc[name] = self.interest_checker.final(name, ledgers[name], last_ended)
        loan_per_dc: dict[str, Any] = {}
        if self.loan_checker is not None and self.disbursements is not None:
            acknowledged = self.disbursements.acknowledged_loans()
            for name in self.names:
                loan_per_dc[name] = self.loan_checker.final(name, ledgers[name], acknowledged)
        kernel_digests: dict[str, str] = {}
        if primary.ledger.account_count <= 2_000_000:
            kernel_digests = {name: ledgers[name].digest() for name in self.names}
        self.timings["check_s"] = time.perf_counter() - started
        return {
            "primary": primary.name,
            "final_verification": final,
            "lookup_sample": (looked, found),
            "per_dc": per_dc,
            "kernel_digests": kernel_digests,
            "interest_per_dc": interest_per_dc,
            "loan_per_dc": loan_per_dc,
        }
