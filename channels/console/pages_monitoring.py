# Chinese labels use Chinese (full-width) punctuation on purpose.
# ruff: noqa: RUF001
"""The console's monitoring page: live charts from the same figures as `/metrics`.

`Console.sampler.sample(app)` runs once a second (the HTTP app's housekeeping, through the
console's tick). It reads what `/metrics` reads, the plain counters of
`channels.http.metrics.Metrics` (requests by route, status and channel, the latency
histograms, the 4xx refusals by problem type and channel) and the engine's and the
store's own figures (queue depth, commit latencies, `core.store.CommitStats`), and keeps
the last `SAMPLES_MAX` one-second samples: deltas of the counters since the sample before,
so a sample costs a pass over a few hundred dict items and nothing on the request path.

Latency percentiles come from the histograms' buckets over the last `LATENCY_WINDOW_S`
samples, interpolated inside the bucket as Prometheus' `histogram_quantile` does, so the
page and a Grafana panel over `tally_http_request_duration_seconds` agree. Store commit
percentiles are exact, over the commits of the last second (at most the store's kept
samples).

Replication: the embedded journal has none ("embedded journal"); for the PostgreSQL
store the page shows what the store knows (its fencing epoch, reconnections, commits
resolved after a lost connection) and, at most every `PROBE_EVERY_S`, what the server
says: `pg_is_in_recovery()`, `synchronous_standby_names` and `pg_stat_replication`,
read on a connection of its own under a deadline (never one of the store's, which
carry the groups).

Routes (permission `read:monitoring`): `/console/monitoring` (the page: svg.chart
elements console.js draws, table#refusals) and `/console/monitoring/data` (Json, what
console.js polls every 2 s).
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import orjson

from channels.console import i18n
from channels.console.app import ConsoleRequest, ConsoleRoute, Html, Json
from channels.http.metrics import LATENCY_BUCKETS_S
from channels.http.routes import ROUTES as API_ROUTES
from core.dsn import redact_dsn
from core.engine import latency_quantile
from core.pg_store import PgStore, PgStoreError, split_hosts
from core.pg_store import connect as pg_connect
from core.services.operators import READ_MONITORING

SAMPLES_MAX: Final = 300  # five minutes of one-second samples
LATENCY_WINDOW_S: Final = 10  # latency percentiles over the requests of the last 10 samples
COMMITS_PER_SAMPLE_MAX: Final = 4096  # the store keeps as many commit latencies (CommitStats)
REFUSAL_ROWS_MAX: Final = 200  # rows of the refusals table (problem types x channels)
PROBE_EVERY_S: Final = 5.0  # the PostgreSQL replication query, at most this often
PROBE_TIMEOUT_S: Final = 2.0

# Route groups of the throughput chart: the first path segment of each /v1 route.
_GROUP_OF_SEGMENT: Final = {
    "customers": "customers",
    "sessions": "customers",
    "account-verifications": "customers",
    "accounts": "accounts",
    "transfers": "payments",
    "external-transfers": "payments",
    "incoming-transfers": "payments",
    "iso20022": "payments",
    "payments": "payments",
    "products": "deposits",
    "fixed-deposit-quotes": "deposits",
    "fixed-deposits": "deposits",
    "loan-quotes": "loans",
    "loan-applications": "loans",
    "loans": "loans",
    "risk": "risk",
    "admin": "admin",
}
GROUPS: Final = (
    "customers", "accounts", "payments", "deposits", "loans", "risk", "admin", "console", "other",
)  # fmt: skip
GROUP_OF_ROUTE: Final = {
    route.operation: _GROUP_OF_SEGMENT.get(route.path.split("/")[2], "other")
    for route in API_ROUTES
} | {"console": "console"}  # the console's own pages (channels/console/app.py)

i18n.register(
    {
        "monitoring.title": ("Monitoring", "运行监控"),
        "monitoring.throughput": (
            "Throughput (requests/s by route group)",
            "吞吐量（按路由组，每秒请求数）",
        ),
        "monitoring.latency": ("Latency (ms, p50 and p99)", "延迟（毫秒，p50 与 p99）"),
        "monitoring.refused": ("Refusals (4xx per second)", "拒绝（每秒 4xx 应答）"),
        "monitoring.queue": ("Engine queue depth", "引擎队列深度"),
        "monitoring.commit": (
            "Store commit latency (ms, p50 and p99)",
            "存储提交延迟（毫秒，p50 与 p99）",
        ),
        "monitoring.replication": ("Replication", "复制状态"),
        "monitoring.refusals": ("Refusals by code and channel", "按代码与渠道的拒绝"),
        "monitoring.code": ("Problem type", "问题类型"),
        "monitoring.channel": ("Channel", "渠道"),
        "monitoring.count": ("Since start", "启动以来"),
        "monitoring.recent": ("Last 5 minutes", "最近 5 分钟"),
        "monitoring.none": ("No refusal yet.", "暂无拒绝。"),
        "monitoring.store": ("Store", "存储"),
        "monitoring.state": ("State", "状态"),
        "monitoring.ready": ("Ready", "就绪"),
        "monitoring.updated": ("Updated", "更新时间"),
        "monitoring.samples": ("Samples", "样本数"),
        "monitoring.note": (
            "One sample a second, the last five minutes; the same figures as /metrics.",
            "每秒一个样本，保留最近五分钟；数据与 /metrics 相同。",
        ),
        "monitoring.embedded": ("embedded journal", "内嵌日志"),
        "monitoring.metrics_link": ("Prometheus metrics", "Prometheus 指标"),
    }
)


def bucket_quantile(bounds: tuple[float, ...], counts: list[int], quantile: float) -> float | None:
    """The `quantile` of observations counted per bucket (`counts[i]`: those at most
    `bounds[i]` and above `bounds[i-1]`; the last, above every bound), interpolated
    linearly inside the bucket as Prometheus' `histogram_quantile` does; None if empty."""
    total = sum(counts)
    if total == 0:
        return None
    rank = quantile * total
    cumulative = 0
    for index, count in enumerate(counts):
        if count and cumulative + count >= rank:
            if index == len(bounds):  # above the highest bound: that bound, as Prometheus
                return bounds[-1]
            lower = bounds[index - 1] if index else 0.0
            return lower + (bounds[index] - lower) * (rank - cumulative) / count
        cumulative += count
    return bounds[-1]


@dataclass(frozen=True, slots=True)
class Sample:
    """One second of the server, from the counters' deltas since the sample before."""

    at_s: float  # wall clock (the charts' time axis)
    requests_per_s: dict[str, float]  # by route group
    latency_p50_ms: float | None  # over the last LATENCY_WINDOW_S samples
    latency_p99_ms: float | None
    refused_per_s: float
    refusals: dict[tuple[str, str], int]  # new 4xx answers by (problem type, channel)
    in_flight: int
    queue_depth: int
    commits_per_s: float
    commit_p50_ms: float | None  # over this second's commits
    commit_p99_ms: float | None
    ready: bool


@dataclass(slots=True)
class _Baseline:
    """The counters as the last sample saw them (one app's, one store's)."""

    metrics: Any = None
    store: Any = None
    at_monotonic: float = 0.0
    requests: dict[str, int] = field(default_factory=dict)  # by group
    latency: list[int] = field(default_factory=list)  # bucket counts, every route
    refusals: dict[tuple[str, str], int] = field(default_factory=dict)
    commit_count: int = 0


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


class Sampler:
    """The last `samples_max` one-second samples of an app (module docstring)."""

    def __init__(self, samples_max: int = SAMPLES_MAX) -> None:
        assert samples_max >= 1
        self.samples: collections.deque[Sample] = collections.deque(maxlen=samples_max)
        self.latency_window: collections.deque[list[int]] = collections.deque(
            maxlen=LATENCY_WINDOW_S
        )
        self.baseline = _Baseline()
        self.replication_probe: dict[str, Any] = {}
        self.probed_at_monotonic = -PROBE_EVERY_S
        self.probing = False

    def sample(self, app: Any, now_s: float | None = None) -> Sample:
        """Take one sample of `app` (the HTTP app: `.metrics`, `.core`): the first of an
        app (or after its metrics changed) counts everything since its counters began,
        as one second."""
        metrics = app.metrics
        core = app.core
        monotonic = time.monotonic()
        requests = self._requests_by_group(metrics.requests)
        latency = self._latency_counts(metrics.latency)
        refusals = dict(metrics.refusals)
        store = core.store
        commit_count = store.stats.commit_count if store is not None else 0
        before = self.baseline
        self.baseline = _Baseline(
            metrics, store, monotonic, requests, latency, refusals, commit_count
        )
        if before.metrics is not metrics:
            # A new app: start over, from its counters' start (all zero when it was made),
            # so what it answered before its first tick is in the first sample.
            self.samples.clear()
            self.latency_window.clear()
            before = _Baseline(metrics, store, monotonic - 1.0, {}, [0] * len(latency))
        interval_s = max(monotonic - before.at_monotonic, 1e-3)
        latency_delta = [now - then for now, then in zip(latency, before.latency, strict=True)]
        self.latency_window.append(latency_delta)
        window = [sum(column) for column in zip(*self.latency_window, strict=True)]
        new_refusals = {
            key: count - before.refusals.get(key, 0)
            for key, count in refusals.items()
            if count != before.refusals.get(key, 0)
        }
        commits = commit_count - before.commit_count if store is before.store else commit_count
        recent: list[float] = []
        if commits > 0 and store is not None:
            kept = store.stats.commit_latency_s
            taken = min(commits, COMMITS_PER_SAMPLE_MAX, len(kept))
            recent = [kept[index] for index in range(len(kept) - taken, len(kept))]
        engine = core.engine
        sample = Sample(
            at_s=round(time.time() if now_s is None else now_s, 3),
            requests_per_s={
                group: round((count - before.requests.get(group, 0)) / interval_s, 3)
                for group, count in requests.items()
            },
            latency_p50_ms=_ms(bucket_quantile(LATENCY_BUCKETS_S, window, 0.5)),
            latency_p99_ms=_ms(bucket_quantile(LATENCY_BUCKETS_S, window, 0.99)),
            refused_per_s=round(sum(new_refusals.values()) / interval_s, 3),
            refusals=new_refusals,
            in_flight=metrics.in_flight,
            queue_depth=engine.queue_depth() if engine is not None else 0,
            commits_per_s=round(max(commits, 0) / interval_s, 3),
            commit_p50_ms=_ms(latency_quantile(recent, 0.5)) if recent else None,
            commit_p99_ms=_ms(latency_quantile(recent, 0.99)) if recent else None,
            ready=bool(core.ready),
        )
        self.samples.append(sample)
        return sample

    @staticmethod
    def _requests_by_group(requests: dict[tuple[str, int, str], int]) -> dict[str, int]:
        totals = dict.fromkeys(GROUPS, 0)
        for (route, _status, _channel), count in list(requests.items()):
            group = GROUP_OF_ROUTE.get(route, "other")
            totals[group] += count
        return totals

    @staticmethod
    def _latency_counts(latency: dict[str, Any]) -> list[int]:
        totals = [0] * (len(LATENCY_BUCKETS_S) + 1)
        for route, histogram in list(latency.items()):
            if route == "console":  # the bank's answers, not the operators' pages
                continue
            for index, count in enumerate(histogram.counts):
                totals[index] += count
        return totals

    def refusal_rows(self) -> list[dict[str, Any]]:
        """One row per (problem type, channel): the count since start and over the kept
        samples, most refused first (at most REFUSAL_ROWS_MAX)."""
        recent: collections.Counter[tuple[str, str]] = collections.Counter()
        for sample in self.samples:
            recent.update(sample.refusals)
        totals = self.baseline.refusals
        rows: list[dict[str, Any]] = [
            {
                "code": code,
                "channel": channel,
                "count": count,
                "recent": recent.get((code, channel), 0),
            }
            for (code, channel), count in totals.items()
        ]
        rows.sort(key=lambda row: (-row["recent"], -row["count"], row["code"], row["channel"]))
        return rows[:REFUSAL_ROWS_MAX]

    def series(self, last: int = SAMPLES_MAX) -> dict[str, Any]:
        """The kept samples as columns (what console.js draws)."""
        samples = list(self.samples)[-last:]
        return {
            "t": [sample.at_s for sample in samples],
            "requests_per_s": {
                group: [sample.requests_per_s.get(group, 0.0) for sample in samples]
                for group in GROUPS
            },
            "latency_p50_ms": [sample.latency_p50_ms for sample in samples],
            "latency_p99_ms": [sample.latency_p99_ms for sample in samples],
            "refused_per_s": [sample.refused_per_s for sample in samples],
            "in_flight": [sample.in_flight for sample in samples],
            "queue_depth": [sample.queue_depth for sample in samples],
            "commits_per_s": [sample.commits_per_s for sample in samples],
            "commit_p50_ms": [sample.commit_p50_ms for sample in samples],
            "commit_p99_ms": [sample.commit_p99_ms for sample in samples],
        }

    def replication(self, core: Any) -> dict[str, Any]:
        """The store's replication state: its kind and what it (and the probe) know."""
        store = core.store
        failure = core.storage_failure
        if store is None:
            return {"kind": "none", "state": failure or "no store open (recovering)"}
        if not isinstance(store, PgStore):
            return {"kind": "journal", "state": "embedded journal", "failure": failure}
        stats = store.stats
        return {
            "kind": "postgresql",
            "state": "failed" if failure else "writing",
            "failure": failure,
            "hosts": [redact_dsn(host) for host in split_hosts(store.dsn)],
            "epoch": store.epoch,
            "reconnects": stats.reconnects,
            "resolved_committed": stats.resolved_committed,
            "resolved_rewritten": stats.resolved_rewritten,
            **self.replication_probe,
        }

    async def refresh_replication(self, core: Any) -> None:
        """Ask the PostgreSQL server about its standbys, at most every PROBE_EVERY_S (one
        probe at a time); nothing for the embedded journal."""
        store = core.store
        now = time.monotonic()
        if (
            not isinstance(store, PgStore)
            or self.probing
            or now - self.probed_at_monotonic < PROBE_EVERY_S
        ):
            return
        self.probing = True
        try:
            self.replication_probe = await probe_replication(store.dsn)
        finally:
            self.probing = False
            self.probed_at_monotonic = time.monotonic()


_REPLICATION_QUERY: Final = """
SELECT pg_is_in_recovery() AS in_recovery,
       current_setting('synchronous_standby_names') AS synchronous_standby_names,
       COALESCE((SELECT json_agg(json_build_object(
                    'name', application_name, 'state', state, 'sync_state', sync_state,
                    'replay_lag_s', EXTRACT(EPOCH FROM replay_lag)) ORDER BY application_name)
                 FROM pg_stat_replication), '[]'::json)::text AS standbys
"""


async def probe_replication(dsn: str) -> dict[str, Any]:
    """What the server that takes writes says of its replication, on a connection of its
    own under PROBE_TIMEOUT_S; `probe` says why not when it cannot be asked."""
    import asyncpg

    try:
        with anyio.fail_after(PROBE_TIMEOUT_S):
            connection = await pg_connect(dsn)
            try:
                row = await connection.fetchrow(_REPLICATION_QUERY)
            finally:
                await connection.close(timeout=PROBE_TIMEOUT_S)
    except (
        TimeoutError,
        OSError,
        PgStoreError,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
    ) as error:
        return {"probe": f"unanswered: {type(error).__name__}"}
    standbys = orjson.loads(row["standbys"])
    return {
        "probe": "answered",
        "in_recovery": bool(row["in_recovery"]),
        "synchronous_standby_names": row["synchronous_standby_names"],
        "standbys": standbys,
    }


def sampler_of(request: ConsoleRequest) -> Sampler:
    """The sampler of the console this request reached (one per app: `Console.sampler`)."""
    sampler: Sampler = request.app.console.sampler
    return sampler


def _snapshot(request: ConsoleRequest) -> dict[str, Any]:
    app = request.app
    core = app.core
    engine = core.engine
    sampler = sampler_of(request)
    latest = sampler.samples[-1] if sampler.samples else None
    return {
        "now_s": round(time.time(), 3),
        "groups": list(GROUPS),
        "series": sampler.series(),
        "refusals": sampler.refusal_rows(),
        "replication": sampler.replication(core),
        "ready": bool(core.ready),
        "queue_depth": engine.queue_depth() if engine is not None else 0,
        "latest": None
        if latest is None
        else {
            "latency_p50_ms": latest.latency_p50_ms,
            "latency_p99_ms": latest.latency_p99_ms,
            "commit_p50_ms": latest.commit_p50_ms,
            "commit_p99_ms": latest.commit_p99_ms,
            "in_flight": latest.in_flight,
        },
    }


CHARTS: Final = (
    ("chart-throughput", "monitoring.throughput"),
    ("chart-latency", "monitoring.latency"),
    ("chart-refused", "monitoring.refused"),
    ("chart-queue", "monitoring.queue"),
    ("chart-commit", "monitoring.commit"),
)


async def monitoring_page(request: ConsoleRequest) -> Html:
    sampler = sampler_of(request)
    await sampler.refresh_replication(request.app.core)
    snapshot = _snapshot(request)
    return Html(
        "monitoring.html",
        {
            "charts": CHARTS,
            "refusals": snapshot["refusals"],
            "replication": snapshot["replication"],
            "replication_detail": [
                (key, orjson.dumps(value).decode() if isinstance(value, list | dict) else value)
                for key, value in snapshot["replication"].items()
                if key not in ("kind", "state") and value is not None
            ],
            "snapshot": snapshot,
            "samples": len(sampler.samples),
        },
    )


async def monitoring_data(request: ConsoleRequest) -> Json:
    await sampler_of(request).refresh_replication(request.app.core)
    return Json(_snapshot(request))


ROUTES: Final = [
    ConsoleRoute("GET", "/console/monitoring", monitoring_page, READ_MONITORING, "monitoring"),
    ConsoleRoute(
        "GET", "/console/monitoring/data", monitoring_data, READ_MONITORING, "monitoring_data"
    ),
]
