"""The simulator's inputs: topology, scenarios and the run configuration.

Topology and scenario files are TOML written by QA engineers, so their
mistakes are operating errors: every problem of a file is reported at once,
one line each naming the file and the dotted key, and unknown keys are
refused (a misspelt `suspect_after_ms` would otherwise leave the default in
force without anyone noticing). Times in files are in the unit their key
names; inside the simulator everything is integer nanoseconds.
"""

from __future__ import annotations

import copy
import datetime
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import TallyError

NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000

SIM_DIRECTORY = Path(__file__).resolve().parent
DEFAULT_TOPOLOGY_PATH = SIM_DIRECTORY / "topology.toml"
SCENARIO_DIRECTORY = SIM_DIRECTORY / "scenarios"
REPO_ROOT = SIM_DIRECTORY.parent


class SimError(TallyError):
    """A topology, scenario, trace or journal the simulator cannot use."""


class _Problems:
    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: list[str] = []

    def add(self, key: str, reason: str) -> None:
        self.lines.append(f"{self.source}: `{key}`: {reason}")

    def raise_if_any(self) -> None:
        if self.lines:
            raise SimError("\n".join(self.lines))


class _Table:
    """Typed, checked reads from one TOML table; records what was read to refuse the rest."""

    def __init__(self, data: Any, prefix: str, problems: _Problems) -> None:
        self.prefix = prefix
        self.problems = problems
        if not isinstance(data, dict):
            problems.add(prefix, "expected a table")
            data = {}
        self.data: dict[str, Any] = data
        self.read: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def number(
        self, name: str, default: float | None = None, *, low: float = 0.0, high: float = 1e18
    ) -> float:
        self.read.add(name)
        if name not in self.data:
            if default is None:
                self.problems.add(self.key(name), "missing required key")
                return low
            return default
        value = self.data[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problems.add(self.key(name), f"expected a number, got {value!r}")
            return default if default is not None else low
        if not low <= value <= high:
            self.problems.add(self.key(name), f"{value} is outside {low}..{high}")
            return default if default is not None else low
        return float(value)

    def integer(
        self, name: str, default: int | None = None, *, low: int = 0, high: int = 1 << 62
    ) -> int:
        self.read.add(name)
        if name not in self.data:
            if default is None:
                self.problems.add(self.key(name), "missing required key")
                return low
            return default
        value = self.data[name]
        if isinstance(value, bool) or not isinstance(value, int):
            self.problems.add(self.key(name), f"expected an integer, got {value!r}")
            return default if default is not None else low
        if not low <= value <= high:
            self.problems.add(self.key(name), f"{value} is outside {low}..{high}")
            return default if default is not None else low
        return value

    def text(self, name: str, default: str | None = None, choices: tuple[str, ...] = ()) -> str:
        self.read.add(name)
        if name not in self.data:
            if default is None:
                self.problems.add(self.key(name), "missing required key")
                return choices[0] if choices else ""
            return default
        value = self.data[name]
        if not isinstance(value, str):
            self.problems.add(self.key(name), f"expected a string, got {value!r}")
            return default if default is not None else ""
        if choices and value not in choices:
            self.problems.add(self.key(name), f"{value!r} is not one of {', '.join(choices)}")
            return default if default is not None else choices[0]
        return value

    def boolean(self, name: str, default: bool) -> bool:
        self.read.add(name)
        value = self.data.get(name, default)
        if not isinstance(value, bool):
            self.problems.add(self.key(name), f"expected true or false, got {value!r}")
            return default
        return value

    def table(self, name: str) -> _Table:
        self.read.add(name)
        return _Table(self.data.get(name, {}), self.key(name), self.problems)

    def finish(self) -> None:
        for name in self.data:
            if name not in self.read:
                self.problems.add(self.key(name), "unknown key")


# --- topology ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkClass:
    latency_ns: int
    jitter_ns: int
    loss: float
    retransmit_ns: int
    bandwidth_bytes_per_s: float


@dataclass(frozen=True, slots=True)
class RegionSpec:
    name: str
    description: str
    client_share: float


@dataclass(frozen=True, slots=True)
class DataCenterSpec:
    name: str
    region: str
    replication: str  # "sync" | "async"
    priority: int
    initial_role: str  # "primary" | "replica"
    fsync_ns: int
    nofailover: bool = False  # Patroni's tag: never promoted automatically


LINK_CLASSES = ("intra_dc", "same_city", "cross_region")


@dataclass(frozen=True)
class Topology:
    source: str
    profile: str  # the default deployment profile (sim/profiles.py)
    regions: dict[str, RegionSpec]
    data_centers: dict[str, DataCenterSpec]
    links: dict[str, LinkClass]
    linger_ns: int
    backlog_max_ns: int
    log_retention_ns: int
    evict_interval_ns: int
    no_sync_standby: str | None  # None: the profile's own
    any_standby_when_no_sync: bool
    degrade_after_ns: int
    sync_ack_timeout_ns: int
    wal_keep_bytes: int
    heartbeat_ns: int
    suspect_ns: int
    lease_ns: int
    same_region: str
    cross_region: str
    operator_delay_ns: int
    promotion_ns: int
    discovery_ns: int
    patroni_ttl_ns: int
    loop_wait_ns: int
    retry_timeout_ns: int
    promote_base_ns: int
    rebuild_ns_per_million_accounts: int
    witness: bool
    client_timeout_ns: int
    backoff_base_ns: int
    backoff_cap_ns: int
    attempts_max: int
    reply_loss: float
    document: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def dc_names(self) -> list[str]:
        return list(self.data_centers)

    def link_class(self, first: str, second: str) -> LinkClass:
        if first == second:
            return self.links["intra_dc"]
        if self.data_centers[first].region == self.data_centers[second].region:
            return self.links["same_city"]
        return self.links["cross_region"]

    @property
    def primary(self) -> str:
        return next(name for name, dc in self.data_centers.items() if dc.initial_role == "primary")

    @property
    def client_lifetime_ns(self) -> int:
        """The longest a client keeps retrying one request (all attempts and backoffs)."""
        return self.attempts_max * (self.client_timeout_ns + self.backoff_cap_ns)


def load_topology(
    path: str | os.PathLike[str] | None = None, overrides: Mapping[str, Any] | None = None
) -> Topology:
    """Read a topology file (the default one when `path` is None), with a scenario's overrides."""
    source = os.fspath(path) if path is not None else str(DEFAULT_TOPOLOGY_PATH)
    document = _read_toml(source)
    if overrides:
        document = _merged(document, overrides)
    return parse_topology(document, source)


def parse_topology(document: dict[str, Any], source: str) -> Topology:
    problems = _Problems(source)
    root = _Table(document, "", problems)
    profile = root.text("profile", "production")
    regions: dict[str, RegionSpec] = {}
    region_tables = root.table("regions")
    for name in region_tables.data:
        region_tables.read.add(name)
        table = region_tables.table(name)
        regions[name] = RegionSpec(
            name, table.text("description", ""), table.number("client_share", high=1.0)
        )
        table.finish()
    if len(regions) < 1:
        problems.add("regions", "at least one region is needed")
    share_total = sum(region.client_share for region in regions.values())
    if regions and abs(share_total - 1.0) > 1e-9:
        problems.add("regions", f"client_share values must add up to 1, not {share_total}")
    data_centers: dict[str, DataCenterSpec] = {}
    dc_tables = root.table("data_centers")
    for name in dc_tables.data:
        dc_tables.read.add(name)
        table = dc_tables.table(name)
        region = table.text("region")
        if region not in regions:
            problems.add(f"data_centers.{name}.region", f"unknown region {region!r}")
        data_centers[name] = DataCenterSpec(
            name=name,
            region=region,
            replication=table.text("replication", choices=("sync", "async")),
            priority=table.integer("priority", low=0, high=1000),
            initial_role=table.text("initial_role", "replica", choices=("primary", "replica")),
            fsync_ns=round(table.number("fsync_ms", 1.0, high=10_000) * NS_PER_MS),
            nofailover=table.boolean("nofailover", False),
        )
        table.finish()
    primaries = [dc for dc in data_centers.values() if dc.initial_role == "primary"]
    if len(primaries) != 1:
        problems.add(
            "data_centers", f'exactly one initial_role = "primary", found {len(primaries)}'
        )
    if not 2 <= len(data_centers) <= 8:
        problems.add("data_centers", f"2..8 data centers are supported, found {len(data_centers)}")
    links: dict[str, LinkClass] = {}
    link_tables = root.table("links")
    for name in LINK_CLASSES:
        table = link_tables.table(name)
        links[name] = LinkClass(
            latency_ns=round(table.number("latency_ms", high=100_000) * NS_PER_MS),
            jitter_ns=round(table.number("jitter_ms", 0.0, high=100_000) * NS_PER_MS),
            loss=table.number("loss", 0.0, high=0.5),
            retransmit_ns=round(table.number("retransmit_ms", 200.0, high=100_000) * NS_PER_MS),
            bandwidth_bytes_per_s=table.number("bandwidth_mib_s", 100.0, low=0.001) * (1 << 20),
        )
        table.finish()
    link_tables.finish()
    engine = root.table("engine")
    replication = root.table("replication")
    detector = root.table("failure_detector")
    failover = root.table("failover")
    clients = root.table("clients")
    topology = Topology(
        source=source,
        profile=profile,
        regions=regions,
        data_centers=data_centers,
        links=links,
        linger_ns=round(engine.number("linger_ms", 2.0, low=0.01, high=1000) * NS_PER_MS),
        backlog_max_ns=round(engine.number("backlog_max_s", 2.0, low=0.01, high=3600) * NS_PER_S),
        log_retention_ns=round(
            engine.number("log_retention_s", 300, low=10, high=86400) * NS_PER_S
        ),
        evict_interval_ns=round(
            engine.number("evict_interval_s", 10, low=0.1, high=3600) * NS_PER_S
        ),
        no_sync_standby=replication.text("no_sync_standby", "", ("degrade", "block")) or None,
        any_standby_when_no_sync=replication.boolean("any_standby_when_no_sync", True),
        degrade_after_ns=round(replication.number("degrade_after_s", 5.0, high=86400) * NS_PER_S),
        sync_ack_timeout_ns=round(
            replication.number("sync_ack_timeout_s", 5.0, low=0.01, high=3600) * NS_PER_S
        ),
        wal_keep_bytes=round(
            replication.number("wal_keep_mib", 512, low=1, high=1 << 20) * (1 << 20)
        ),
        heartbeat_ns=round(
            detector.number("heartbeat_interval_ms", 500, low=1, high=60_000) * NS_PER_MS
        ),
        suspect_ns=round(
            detector.number("suspect_after_ms", 3000, low=1, high=600_000) * NS_PER_MS
        ),
        lease_ns=round(detector.number("lease_ms", 2500, low=1, high=600_000) * NS_PER_MS),
        same_region=failover.text("same_region", "automatic", ("automatic", "operator")),
        cross_region=failover.text("cross_region", "operator", ("automatic", "operator")),
        operator_delay_ns=round(failover.number("operator_delay_s", 300, high=86400) * NS_PER_S),
        promotion_ns=round(failover.number("promotion_s", 2.0, high=3600) * NS_PER_S),
        discovery_ns=round(failover.number("discovery_s", 1.0, high=3600) * NS_PER_S),
        patroni_ttl_ns=round(failover.number("patroni_ttl_s", 10, low=1, high=3600) * NS_PER_S),
        loop_wait_ns=round(failover.number("loop_wait_s", 2, low=0.1, high=3600) * NS_PER_S),
        retry_timeout_ns=round(
            failover.number("retry_timeout_s", 4, low=0.1, high=3600) * NS_PER_S
        ),
        promote_base_ns=round(failover.number("promote_base_s", 1.0, high=3600) * NS_PER_S),
        rebuild_ns_per_million_accounts=round(
            failover.number("rebuild_s_per_million_accounts", 0.5, high=3600) * NS_PER_S
        ),
        witness=failover.boolean("witness", False),
        client_timeout_ns=round(
            clients.number("timeout_ms", 2000, low=1, high=600_000) * NS_PER_MS
        ),
        backoff_base_ns=round(
            clients.number("backoff_base_ms", 200, low=1, high=600_000) * NS_PER_MS
        ),
        backoff_cap_ns=round(
            clients.number("backoff_cap_ms", 5000, low=1, high=600_000) * NS_PER_MS
        ),
        attempts_max=clients.integer("attempts_max", 8, low=1, high=255),
        reply_loss=clients.number("reply_loss", 0.005, high=0.5),
        document=document,
    )
    for table in (engine, replication, detector, failover, clients):
        table.finish()
    root.finish()
    if topology.lease_ns >= topology.suspect_ns:
        problems.add(
            "failure_detector.lease_ms",
            "must be below suspect_after_ms: an isolated primary must stop serving"
            " before a new one can be elected",
        )
    if topology.patroni_ttl_ns < topology.loop_wait_ns + 2 * topology.retry_timeout_ns:
        problems.add(
            "failover.patroni_ttl_s",
            "must be at least loop_wait_s + 2 x retry_timeout_s (Patroni's own rule: a leader"
            " that cannot reach etcd demotes itself before its key expires)",
        )
    from .profiles import PROFILES  # profiles imports this module

    if profile not in PROFILES:
        problems.add("profile", f"unknown profile {profile!r} (known: {', '.join(PROFILES)})")
    if topology.client_lifetime_ns * 2 > topology.log_retention_ns:
        problems.add(
            "engine.log_retention_s",
            "must be at least twice the clients' retry lifetime (attempts_max x (timeout + "
            "backoff_cap)): a retry must find its first attempt in the idempotency window",
        )
    problems.raise_if_any()
    return topology


# --- scenarios ---------------------------------------------------------------------

FAULT_KINDS: dict[str, tuple[str, ...]] = {
    # kind: the parameters it takes besides kind, target, at and duration
    "dc_outage": (),
    "region_outage": (),
    "primary_crash": (),
    "old_primary_returns": ("isolated_s", "stale_route_fraction", "stale_route_s"),
    "link_partition": ("direction",),
    "link_degradation": ("latency_ms", "loss"),
    "link_flapping": ("period_s", "down_s"),
    "slow_disk": ("fsync_ms",),
    "clock_skew": ("skew_ms",),
    "random": ("count",),
}
# What a fault's `target` names: a data center, a region, a link "x-y" between two data
# centers or regions, or nothing (primary_crash hits whoever leads; random draws its own).
FAULT_TARGETS: dict[str, str] = {
    "dc_outage": "dc",
    "region_outage": "region",
    "primary_crash": "none",
    "old_primary_returns": "dc",
    "link_partition": "link",
    "link_degradation": "link",
    "link_flapping": "link",
    "slow_disk": "dc",
    "clock_skew": "dc",
    "random": "none",
}
LINK_DIRECTIONS = ("both", "forward", "backward")
# Fault parameters: (low, high) for numbers; the simulator's default when absent.
FAULT_PARAMETERS: dict[str, tuple[float, float, float]] = {
    "isolated_s": (0, 86_400, 30),
    "stale_route_fraction": (0, 1, 0),
    "stale_route_s": (0, 86_400, 60),
    "latency_ms": (0, 100_000, 0),
    "loss": (0, 1, 0),
    "period_s": (0.001, 86_400, 10),
    "down_s": (0, 86_400, 3),
    "fsync_ms": (0, 10_000, 100),
    "skew_ms": (-86_400_000, 86_400_000, 1000),
}
RANDOM_FAULTS_MAX = 64
_TIME = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%|s|m|h)\s*$")


@dataclass(frozen=True, slots=True)
class TimeSpec:
    """A time in a scenario: a share of the traffic window ("30%") or absolute ("90s", "10m")."""

    fraction: float | None
    seconds: float | None

    def resolve_ns(self, window_ns: int) -> int:
        if self.fraction is not None:
            return round(self.fraction * window_ns)
        assert self.seconds is not None
        return round(self.seconds * NS_PER_S)

    def describe(self) -> str:
        if self.fraction is not None:
            return f"{self.fraction * 100:g}%"
        return f"{self.seconds:g}s"


@dataclass(frozen=True, slots=True)
class FaultSpec:
    kind: str
    target: str
    at: TimeSpec
    duration: TimeSpec | None  # None: until the end of the traffic window
    params: dict[str, Any]


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    traffic: str  # "normal" | "campaign"
    hours: float
    faults: tuple[FaultSpec, ...]
    expect: dict[str, Any]
    topology_overrides: dict[str, Any]
    source: str
    profile: str | None = None  # a deployment profile (sim/profiles.py); None: the topology's
    # [targets]: failure class ("" = every class) -> metric -> (operator, bound); see sim/verdict.py
    targets: dict[str, dict[str, tuple[str, float]]] = field(default_factory=dict)
    # When the window starts, on the bank's local clock (Asia/Shanghai): None, the default
    # campaign day's local midnight (DEFAULT_START). A window that crosses local midnight
    # runs the day-end there (sim/dayend.py).
    start: datetime.datetime | None = None
    # [risk]: the risk stage screens the traffic, with fraud in it (sim/risk.py); None: off.
    risk: Any = None
    # [onboarding]: how many people apply for an account and the fraud among them
    # (sim/onboarding.py OnboardingMix); None: the population's defaults.
    onboarding: Any = None


def _parse_time(value: Any, key: str, problems: _Problems) -> TimeSpec | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value) or value < 0:
            problems.add(key, f"{value!r}: a time is a finite number of seconds >= 0")
            return None
        return TimeSpec(None, float(value))
    if isinstance(value, str):
        match = _TIME.match(value)
        if match:
            number, unit = float(match.group(1)), match.group(2)
            if unit == "%":
                if number > 100:
                    problems.add(key, f"{value!r}: a share of the window is at most 100%")
                    return None
                return TimeSpec(number / 100, None)
            return TimeSpec(None, number * {"s": 1, "m": 60, "h": 3600}[unit])
    problems.add(key, f'expected seconds or a string like "30%", "90s", "10m", got {value!r}')
    return None


def _parse_fault(table: _Table, problems: _Problems) -> FaultSpec | None:
    prefix = table.prefix
    kind = table.text("kind", choices=tuple(FAULT_KINDS))
    kind_known = kind in FAULT_KINDS and table.data.get("kind") == kind
    target = table.text("target", "")
    if kind_known and FAULT_TARGETS[kind] == "none" and target:
        problems.add(f"{prefix}.target", f"{kind} takes no target (got {target!r})")
    elif kind_known and FAULT_TARGETS[kind] != "none" and not target:
        problems.add(
            f"{prefix}.target", f"{kind} needs a target: {_TARGET_HELP[FAULT_TARGETS[kind]]}"
        )
    table.read.update({"at", "duration"})
    at = _parse_time(table.data.get("at", 0), f"{prefix}.at", problems)
    if at is not None and at.fraction is not None and at.fraction >= 1:
        problems.add(f"{prefix}.at", "a fault must start before the traffic window ends (< 100%)")
    duration = None
    if "duration" in table.data:
        duration = _parse_time(table.data["duration"], f"{prefix}.duration", problems)
        if duration is not None and not (duration.fraction or duration.seconds):
            problems.add(f"{prefix}.duration", "must be above 0 (leave it out: to the end)")
    params: dict[str, Any] = {}
    for param in FAULT_KINDS.get(kind, ()):
        if param not in table.data:
            continue
        if param == "direction":
            table.text(param, "both", LINK_DIRECTIONS)
        elif param == "count":
            table.integer(param, low=1, high=RANDOM_FAULTS_MAX)
        else:
            low, high, _ = FAULT_PARAMETERS[param]
            table.number(param, low=low, high=high)
        params[param] = table.data[param]
    if kind == "link_flapping":
        period = params.get("period_s", FAULT_PARAMETERS["period_s"][2])
        down = params.get("down_s", FAULT_PARAMETERS["down_s"][2])
        if _is_number(period) and _is_number(down) and down > period:
            problems.add(f"{prefix}.down_s", f"{down} is above period_s ({period})")
    table.finish()
    if at is None:
        return None
    return FaultSpec(kind, target, at, duration, params)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_TARGET_HELP = {
    "dc": "a data center",
    "region": "a region",
    "link": '"x-y", two data centers or regions',
}


def parse_scenario(document: dict[str, Any], source: str) -> Scenario:
    problems = _Problems(source)
    root = _Table(document, "", problems)
    name = root.text("name")
    description = root.text("description", "")
    traffic = root.text("traffic", "normal", ("normal", "campaign"))
    hours = root.number("hours", 1.0, low=0.001, high=24 * 30)
    profile = root.text("profile", "") or None
    root.read.add("start")
    start = parse_start(document["start"], "start", problems) if "start" in document else None
    from .profiles import PROFILES  # profiles imports this module

    if profile is not None and profile not in PROFILES:
        problems.add("profile", f"unknown profile {profile!r} (known: {', '.join(PROFILES)})")
    faults: list[FaultSpec] = []
    root.read.add("faults")
    fault_list = document.get("faults", [])
    if not isinstance(fault_list, list):
        problems.add("faults", "expected an array of tables ([[faults]])")
        fault_list = []
    for index, item in enumerate(fault_list):
        fault = _parse_fault(_Table(item, f"faults[{index}]", problems), problems)
        if fault is not None:
            faults.append(fault)
    expect = root.table("expect")
    for key in expect.data:
        if key not in EXPECTATIONS:
            problems.add(f"expect.{key}", f"unknown expectation (known: {', '.join(EXPECTATIONS)})")
        expect.read.add(key)
    targets = _parse_targets(root.table("targets"), problems)
    risk = None
    if "risk" in document:
        from .risk import parse_risk_table  # risk imports this module

        root.read.add("risk")
        risk, risk_problems = parse_risk_table(document["risk"], source)
        for line in risk_problems:
            key, _, reason = line.partition(": ")
            problems.add(key, reason)
    onboarding = None
    if "onboarding" in document:
        from .onboarding import parse_onboarding_table  # it imports the population

        root.read.add("onboarding")
        onboarding, onboarding_problems = parse_onboarding_table(document["onboarding"])
        for line in onboarding_problems:
            key, _, reason = line.partition(": ")
            problems.add(key, reason)
    overrides = root.table("topology")
    overrides.read.update(overrides.data)
    root.finish()
    problems.raise_if_any()
    return Scenario(
        name=name,
        description=description,
        traffic=traffic,
        hours=hours,
        faults=tuple(faults),
        expect=dict(expect.data),
        topology_overrides=copy.deepcopy(overrides.data),
        source=source,
        profile=profile,
        targets=targets,
        start=start,
        risk=risk,
        onboarding=onboarding,
    )


# The default simulated day: 2026-11-11 (a campaign day) from local midnight.
DEFAULT_START = datetime.datetime(2026, 11, 11, 0, 0)
START_YEARS = (2001, 2170)  # day numbers are u16 from 2000-01-01; the population's history


def parse_start(value: Any, key: str, problems: _Problems) -> datetime.datetime | None:
    """A window's start on the local clock: a TOML local date-time (`2026-12-20T23:50:00`)
    or the same as a string; whole seconds, no offset (the bank's zone is the rules')."""
    parsed: datetime.datetime | None = None
    if isinstance(value, datetime.datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.datetime.fromisoformat(value)
        except ValueError:
            parsed = None
    if parsed is None:
        problems.add(key, f"expected a local date and time like 2026-12-20T23:50:00, got {value!r}")
        return None
    if parsed.tzinfo is not None:
        problems.add(key, f"{value!r}: give the bank's local time, without an offset")
        return None
    if parsed.microsecond:
        problems.add(key, f"{value!r}: whole seconds only")
        return None
    if not START_YEARS[0] <= parsed.year <= START_YEARS[1]:
        problems.add(key, f"{value!r}: the year must be in {START_YEARS[0]}..{START_YEARS[1]}")
        return None
    return parsed


# [targets]: what a run is judged against (sim/verdict.py). A metric's bound is a number
# (compared with the metric's own direction: at most, or at least for availability) or a
# string "<= 60", ">= 0.99". Top-level keys apply to every failure class of the scenario;
# a subtable [targets.CLASS] to that class only, over the top level.
TARGET_METRICS: dict[str, tuple[str, float, float]] = {
    # metric: (default operator, lowest bound, highest bound)
    "rpo_transfers": ("<=", 0, 1e15),
    "rpo_amount_minor": ("<=", 0, 1e18),
    "rpo_window_s": ("<=", 0, 86_400 * 30),
    "rto_s": ("<=", 0, 86_400 * 30),
    "availability": (">=", 0, 1),
    "no_ack_s_max": ("<=", 0, 86_400 * 30),
    "given_up_share": ("<=", 0, 1),
    "single_copy_acks": ("<=", 0, 1e15),
}
FAILURE_CLASSES = ("steady", "degradation", "link", "same_city", "region")
_BOUND = re.compile(r"^\s*(<=|>=|<|>|==)\s*([0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)\s*$")


def _parse_targets(table: _Table, problems: _Problems) -> dict[str, dict[str, tuple[str, float]]]:
    targets: dict[str, dict[str, tuple[str, float]]] = {}
    for key, value in table.data.items():
        table.read.add(key)
        if key in FAILURE_CLASSES:
            if not isinstance(value, dict):
                problems.add(table.key(key), "expected a table of metric bounds")
                continue
            for metric, bound in value.items():
                parsed = _parse_bound(f"{table.key(key)}.{metric}", metric, bound, problems)
                if parsed is not None:
                    targets.setdefault(key, {})[metric] = parsed
        elif key in TARGET_METRICS:
            parsed = _parse_bound(table.key(key), key, value, problems)
            if parsed is not None:
                targets.setdefault("", {})[key] = parsed
        else:
            problems.add(
                table.key(key),
                f"unknown target (metrics: {', '.join(TARGET_METRICS)};"
                f" failure classes: {', '.join(FAILURE_CLASSES)})",
            )
    return targets


def _parse_bound(
    key: str, metric: str, value: Any, problems: _Problems
) -> tuple[str, float] | None:
    if metric not in TARGET_METRICS:
        problems.add(key, f"unknown target metric (known: {', '.join(TARGET_METRICS)})")
        return None
    operator, low, high = TARGET_METRICS[metric]
    if _is_number(value):
        number = float(value)
    elif isinstance(value, str) and (match := _BOUND.match(value)):
        operator, number = match.group(1), float(match.group(2))
    else:
        problems.add(key, f'expected a number or a bound like "<= 60" or ">= 0.99", got {value!r}')
        return None
    if not (math.isfinite(number) and low <= number <= high):
        problems.add(key, f"{value!r} is outside {low:g}..{high:g}")
        return None
    return operator, number


def check_scenario_against(
    scenario: Scenario, topology: Topology, window_s: float | None = None
) -> None:
    """Every fault target must exist in the topology, and every fault start fall inside the
    traffic window (`window_s`, when known): refused before the run, not mid-run."""
    problems = _Problems(scenario.source)
    dcs, regions = topology.data_centers, topology.regions
    known = f"data centers: {', '.join(dcs)}; regions: {', '.join(regions)}"
    for index, fault in enumerate(scenario.faults):
        key = f"faults[{index}].target"
        wanted = FAULT_TARGETS[fault.kind]
        if wanted == "dc" and fault.target not in dcs:
            problems.add(key, f"unknown data center {fault.target!r} (known: {', '.join(dcs)})")
        elif wanted == "region" and fault.target not in regions:
            problems.add(key, f"unknown region {fault.target!r} (known: {', '.join(regions)})")
        elif wanted == "link":
            first, dash, second = fault.target.partition("-")
            if not dash or not first or not second:
                problems.add(key, f'{fault.target!r}: a link is "x-y" ({known})')
            else:
                for end in (first, second):
                    if end not in dcs and end not in regions:
                        problems.add(key, f"{fault.target!r}: unknown end {end!r} ({known})")
                sides = [
                    {end} if end in dcs else {n for n, dc in dcs.items() if dc.region == end}
                    for end in (first, second)
                ]
                if all(sides) and not any(a != b for a in sides[0] for b in sides[1]):
                    problems.add(key, f"{fault.target!r}: both ends are the same data centers")
        if window_s is not None and fault.at.seconds is not None and fault.at.seconds >= window_s:
            problems.add(
                f"faults[{index}].at",
                f"{fault.at.describe()} is not inside the {window_s:g} s traffic window",
            )
    problems.raise_if_any()


# Report keys a scenario may state expectations on: an integer or boolean must be
# equal; a string compares (">0", ">=1", "<=10", "==rpo_transfers").
EXPECTATIONS = (
    "acknowledged_lost",
    "unexpected_lost",
    "rpo_transfers",
    "duplicates",
    "failovers",
    "converged",
    "money_conserved",
    "limits_respected",
    "fenced",
    "stale_primary_acks",
    "result_mismatches",
    "lost_single_copy",
    "single_copy_acks",
    # The day-end (sim/dayend.py) and the interest checker (sim/interest.py).
    "dayends",
    "interest_accrued_accounts",
    "interest_postings",
    "maturities_paid",
    "interest_mismatches",
    # The risk stage (sim/risk.py), in scenarios with a [risk] table.
    "risk_fraud_total",
    "risk_fraud_stopped",
    "risk_legit_challenged",
    "risk_legit_held",
    "risk_mismatches",
    # The loans (sim/loans.py) and the loan checker (sim/loan_checker.py).
    "loans_disbursed",
    "loans_collected",
    "loans_overdue",
    "loan_mismatches",
    # The day's applicants (sim/onboarding.py): verified before any account.
    "onboarding_applicants",
    "onboarding_rejected",
    "onboarding_unverified_accounts",
    "onboarding_unverified_debited",
)


def builtin_scenarios() -> dict[str, Path]:
    """Built-in scenario names and their files, in name order."""
    return {path.stem: path for path in sorted(SCENARIO_DIRECTORY.glob("*.toml"))}


def load_scenario(name_or_path: str) -> Scenario:
    """A built-in scenario by name, or a scenario file by path."""
    builtin = builtin_scenarios()
    if name_or_path in builtin:
        source = str(builtin[name_or_path])
    elif os.path.exists(name_or_path):
        source = name_or_path
    else:
        raise SimError(
            f"unknown scenario {name_or_path!r}: not a file, and the built-in ones are "
            f"{', '.join(builtin)}"
        )
    scenario = parse_scenario(_read_toml(source), source)
    if source in (str(path) for path in builtin.values()) and scenario.name != Path(source).stem:
        raise SimError(f"{source}: `name` must be {Path(source).stem!r}, the file's name")
    return scenario


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except OSError as error:
        raise SimError(f"{path}: cannot read: {error.strerror or error}") from error
    except tomllib.TOMLDecodeError as error:
        raise SimError(f"{path}: not valid TOML: {error}") from error


def _merged(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), dict):
            result[key] = _merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


# --- the run ---------------------------------------------------------------------------


USERS_MAX = 200_000_000
SEED_MAX = (1 << 63) - 1  # the generators take the seed as an unsigned 64-bit integer
LOAN_SHARE_MAX = 0.5  # of the users holding a loan


@dataclass
class SimConfig:
    """One simulator run. The defaults are the headline: a whole day of 30M users."""

    users: int = 30_000_000
    hours: float | None = None  # None: the scenario's own
    seed: int = 7
    scenario: str = "dc1-outage"  # a built-in name or a file
    topology: str | None = None  # a topology file; None: sim/topology.toml
    step_ms: float = 50.0
    postings_per_user: float | None = None  # None: the traffic profile's (1.0 normal, 2.4 campaign)
    out: str | None = None
    save_trace: str | None = None
    drain_max_s: float = 1800.0
    quiet: bool = False
    # Mutation runs: the name of a planted bug the checker must catch (sim/bugs.py).
    plant_bug: str | None = None
    # The deployment profile (sim/profiles.py); None: the scenario's, else the topology's.
    profile: str | None = None
    # When the window starts on the bank's local clock ("2026-12-20T23:50"); None: the
    # scenario's `start`, else DEFAULT_START.
    start: str | None = None
    # Loans (sim/loans.py): the share of the users holding one before the day, and new
    # loans disbursed a user and day; None: the population's defaults (3%, 0.0001).
    loan_share: float | None = None
    loans_per_user_day: float | None = None

    def population_overrides(self) -> dict[str, Any]:
        """The population parameters this run sets (sim/population.py `Population`)."""
        overrides: dict[str, Any] = {}
        if self.loan_share is not None:
            overrides["loan_fraction"] = self.loan_share
        if self.loans_per_user_day is not None:
            overrides["loan_disbursements_per_user_day"] = self.loans_per_user_day
        return overrides

    def check(self) -> None:
        """Refuse a bad run before anything is built: one line naming the option and its range."""
        if not 2 <= self.users <= USERS_MAX:
            raise SimError(f"--users must be in 2..{USERS_MAX}, not {self.users}")
        if not 0 <= self.seed <= SEED_MAX:
            raise SimError(f"--seed must be in 0..{SEED_MAX}, not {self.seed}")
        if self.plant_bug is not None:
            from .bugs import planted_bug  # bugs imports this module

            planted_bug(self.plant_bug)
        if self.profile is not None:
            from .profiles import profile_named  # profiles imports this module

            profile_named(self.profile, "--profile")
        if self.hours is not None and not 0 < self.hours <= 24 * 30:
            raise SimError("--hours must be in (0, 720]")
        if not 1 <= self.step_ms <= 1000:
            raise SimError("--step-ms must be in 1..1000")
        if self.postings_per_user is not None and not 0 < self.postings_per_user <= 10_000:
            raise SimError("--postings-per-user must be in (0, 10000]")
        if not 0 < self.drain_max_s <= 86_400:
            raise SimError(f"--drain-max-s must be in (0, 86400], not {self.drain_max_s}")
        if self.start is not None:
            self.start_time()
        if self.loan_share is not None and not 0 <= self.loan_share <= LOAN_SHARE_MAX:
            raise SimError(f"--loan-share must be in 0..{LOAN_SHARE_MAX}, not {self.loan_share}")
        if self.loans_per_user_day is not None and not 0 <= self.loans_per_user_day <= 1:
            raise SimError(f"--loans-per-user-day must be in 0..1, not {self.loans_per_user_day}")

    def start_time(self) -> datetime.datetime | None:
        """`start` parsed (None when not given); a SimError naming --start when bad."""
        if self.start is None:
            return None
        problems = _Problems("--start")
        parsed = parse_start(self.start, "start", problems)
        if parsed is None:
            raise SimError(f"--start: {problems.lines[0].split(': ', 2)[-1]}")
        return parsed
