"""`/metrics`: the Prometheus exposition, rendered by `prometheus_client`.

The request path only touches plain ints in dicts (a dict increment and a
bisect: well under a microsecond); nothing of the client library runs per
request. At scrape time custom collectors turn those dicts, and the engine's
and the store's own counters, into metric families with the names Tally has
always exported.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from core.engine import latency_quantile

LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
)  # fmt: skip
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8189)
QUANTILES = (0.5, 0.9, 0.99)
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class Histogram:
    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative (le, count) pairs, +Inf last."""
        cumulative = 0
        pairs: list[tuple[str, float]] = []
        for bound, count in zip(self.bounds, self.counts[:-1], strict=True):
            cumulative += count
            pairs.append((f"{bound:g}", cumulative))
        pairs.append(("+Inf", self.count))
        return pairs


class Metrics:
    """The HTTP layer's counters: plain containers updated on the request path."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int, str], int] = {}
        self.latency: dict[str, Histogram] = {}
        self.results: dict[str, int] = {}  # replaced by the posting service's own dict
        self.batch_sizes = Histogram(SIZE_BUCKETS)
        self.rate_limited: dict[str, int] = {}
        # 4xx answers by (problem type slug, channel): the console's refusals table.
        self.refusals: dict[tuple[str, str], int] = {}
        self.in_flight = 0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_HttpCollector(self))

    def observe_request(self, route: str, status: int, channel: str, seconds: float) -> None:
        key = (route, status, channel)
        self.requests[key] = self.requests.get(key, 0) + 1
        histogram = self.latency.get(route)
        if histogram is None:
            histogram = self.latency[route] = Histogram(LATENCY_BUCKETS_S)
        histogram.observe(seconds)

    def observe_refusal(self, slug: str, channel: str) -> None:
        """A 4xx problem answer (one dict increment, after the response was sent)."""
        key = (slug, channel)
        self.refusals[key] = self.refusals.get(key, 0) + 1

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _HttpCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        requests = CounterMetricFamily(
            "tally_http_requests",
            "HTTP requests answered, by route, status, channel.",
            labels=("route", "status", "channel"),
        )
        for (route, status, channel), count in sorted(m.requests.items()):
            requests.add_metric((route, str(status), channel), count)
        yield requests
        latency = HistogramMetricFamily(
            "tally_http_request_duration_seconds",
            "Time from request to response, by route.",
            labels=("route",),
        )
        for route, histogram in sorted(m.latency.items()):
            latency.add_metric((route,), histogram.buckets(), histogram.sum)
        yield latency
        yield GaugeMetricFamily(
            "tally_http_requests_in_flight", "Requests being handled now.", value=m.in_flight
        )
        results = CounterMetricFamily(
            "tally_ledger_results",
            "Ledger result codes of transfers posted over HTTP.",
            labels=("result",),
        )
        for name, count in sorted(m.results.items()):
            results.add_metric((name,), count)
        yield results
        sizes = HistogramMetricFamily("tally_http_batch_size", "Transfers per batch request.")
        sizes.add_metric((), m.batch_sizes.buckets(), m.batch_sizes.sum)
        yield sizes
        limited = CounterMetricFamily(
            "tally_channel_rate_limited",
            "Requests refused for the channel's rate, by channel: 429 over HTTP, 91 over ISO 8583.",
            labels=("channel",),
        )
        for channel, count in sorted(m.rate_limited.items()):
            limited.add_metric((channel,), count)
        yield limited
        refusals = CounterMetricFamily(
            "tally_http_refusals",
            "Requests answered with a 4xx problem, by problem type and channel.",
            labels=("problem", "channel"),
        )
        for (slug, channel), count in sorted(m.refusals.items()):
            refusals.add_metric((slug, channel), count)
        yield refusals


def _summary(name: str, doc: str, samples: Sequence[float]) -> Metric:
    family = Metric(name, doc, "summary")
    for quantile in QUANTILES:
        value = latency_quantile(list(samples), quantile) if samples else math.nan
        family.add_sample(name, {"quantile": str(quantile)}, value)
    return family


def store_commit_latency(store: Any) -> Iterable[Metric]:
    """The commit-latency summaries of whichever store runs, from its `stats`.

    The one place that reads a store's latency figures: `tally_store_commit_seconds`
    (store-neutral), and the same figures under the name dashboards already know,
    `tally_journal_fsync_seconds` (the journal's write+fdatasync, PostgreSQL's COMMIT).
    """
    for name, doc in (
        ("tally_store_commit_seconds", "Store commit time per group (write+fdatasync, COMMIT)."),
        ("tally_journal_fsync_seconds", "Journal write+fdatasync time per group (alias)."),
    ):
        if store is None:
            yield Metric(name, doc, "summary")
            continue
        stats = store.stats
        family = _summary(name, doc, list(stats.commit_latency_s))
        family.add_sample(name + "_sum", {}, stats.commit_seconds_total)
        family.add_sample(name + "_count", {}, float(stats.commit_count))
        yield family


class _EngineCollector(Collector):
    """Engine and store figures, read from their own counters at scrape time."""

    def __init__(self, bank: Any) -> None:
        self.core = bank.core

    def collect(self) -> Iterable[Metric]:
        core = self.core
        engine = core.engine
        yield GaugeMetricFamily(
            "tally_ready",
            "1 once recovery is done and the engine runs.",
            value=1.0 if core.ready else 0.0,
        )
        yield GaugeMetricFamily(
            "tally_engine_queue_depth",
            "Requests waiting in the engine queue.",
            value=float(engine.queue_depth() if engine else 0),
        )
        counters = CounterMetricFamily(
            "tally_engine", "Engine batches, transfers, requests, overloads.", labels=("kind",)
        )
        if engine is not None:
            em = engine.metrics
            for kind in ("batches", "transfers", "requests", "overloaded"):
                counters.add_metric((kind,), getattr(em, kind))
        yield counters
        sizes = _summary(
            "tally_engine_batch_size",
            "Transfers per engine batch (recent batches).",
            [float(size) for size in engine.metrics.batch_sizes] if engine else [],
        )
        if engine is not None:
            sizes.add_sample("tally_engine_batch_size_count", {}, float(engine.metrics.batches))
        yield sizes
        yield from store_commit_latency(core.store)
        yield _summary(
            "tally_engine_durable_seconds",
            "Applied-to-durable time per group (recent).",
            engine.metrics.durable_latency_s if engine else [],
        )


class _PasswordCollector(Collector):
    """The password-hashing pool (`core.services.passwords.HashPool`): its bound holds."""

    def __init__(self, bank: Any) -> None:
        self.pool = bank.auth.pool

    def collect(self) -> Iterable[Metric]:
        pool = self.pool
        yield GaugeMetricFamily(
            "tally_password_hash_threads", "Threads that hash passwords.", value=pool.threads
        )
        yield GaugeMetricFamily(
            "tally_password_hash_running_max",
            "The most password hashes seen running at once (measured in the threads).",
            value=pool.running_max,
        )
        yield GaugeMetricFamily(
            "tally_password_hash_admitted_max",
            "The most password checks seen waiting or running at once.",
            value=pool.admitted_max,
        )
        yield CounterMetricFamily(
            "tally_password_hashes", "Password hashes computed.", value=pool.hashes
        )
        yield CounterMetricFamily(
            "tally_password_checks_busy",
            "Password checks refused because the pool's queue was full.",
            value=pool.refused_busy,
        )


def register_collectors(metrics: Metrics, bank: Any) -> None:
    """Expose `bank`'s engine, store and password-pool figures, and share its
    posting-result counts."""
    metrics.results = bank.payments.results
    metrics.registry.register(_EngineCollector(bank))
    metrics.registry.register(_PasswordCollector(bank))
    if getattr(bank, "risk", None) is not None:
        metrics.registry.register(_RiskCollector(bank))


class Iso8583Collector(Collector):
    """The ISO 8583 listener of `tally serve --iso8583`: its connections and messages
    (`channels.iso8583.server.ListenerStats`) and the responses by field 39 (the adapter's
    `answered`)."""

    def __init__(self, stats: Any, answered: dict[str, int]) -> None:
        self.stats = stats
        self.answered = answered

    def collect(self) -> Iterator[Metric]:
        stats = self.stats
        yield GaugeMetricFamily(
            "tally_iso8583_connections", "Terminal connections open now.",
            value=stats.connections_open,
        )  # fmt: skip
        for name, doc, value in (
            ("connections", "Terminal connections accepted.", stats.connections_total),
            (
                "connections_dropped",
                "Connections closed for a fault (framing lost, a deadline, a reset).",
                stats.dropped,
            ),
            ("messages", "ISO 8583 messages read.", stats.messages),
            ("unanswered", "Messages no response was sent for.", stats.unanswered),
        ):
            yield CounterMetricFamily(f"tally_iso8583_{name}", doc, value=value)
        responses = CounterMetricFamily(
            "tally_iso8583_responses", "Responses sent, by field 39.", labels=["code"]
        )
        for code, count in sorted(self.answered.items()):
            responses.add_metric([code], count)
        yield responses


class LinkCollector(Collector):
    """The core link's front-end connections and what they sent
    (`core.link.server.LinkStats`)."""

    def __init__(self, stats: Any) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self.stats
        yield GaugeMetricFamily(
            "tally_link_connections", "Front-end connections open now.", value=stats.connections
        )
        for name, doc, value in (
            ("accepted", "Front-end connections accepted (their hello good).", stats.accepted),
            ("refused_credentials", "Connections refused at the hello (credentials).",
             stats.refused_credentials),
            ("refused_frames", "Connections closed for a bad frame.", stats.refused_frames),
            ("refused_connections", "Connections closed at once: the most were open.",
             stats.refused_connections),
            ("requests", "Commands received from front-ends.", stats.requests),
            ("frames", "Request frames received (commands / frames: the batching).",
             stats.frames),
            ("overloaded", "Commands answered OVERLOADED (the window full).", stats.overloaded),
        ):  # fmt: skip
            yield CounterMetricFamily(f"tally_link_{name}", doc, value=value)


# The risk stage's figures (core/services/risk.py `Risk.stats`): counters and gauges.
_RISK_OUTCOMES = ("allow", "challenge", "challenge_met", "delay", "review", "block")
_RISK_COUNTERS = {
    "screened": "Postings the risk stage screened.",
    "fired": "Postings on which a rule fired.",
    "reports": "Large-value reports (decisions of report rules).",
    "reused": "Retries that met their recorded decision.",
    "released": "Risk holds released (captured) by the bank.",
    "returned": "Risk holds returned (voided) to the payer.",
}
_RISK_GAUGES = {
    "held": "Risk holds in place now (delayed or in review).",
    "rules": "Rules in the rule set in force.",
    "version": "The version of the rule set in force.",
    "kernel_entries": "Counter slots the risk kernel holds.",
    "kernel_bytes": "Memory of the risk kernel's tables, bytes.",
}


class _RiskCollector(Collector):
    """The risk stage: what it screened and decided, its holds, its rules and kernel."""

    def __init__(self, bank: Any) -> None:
        self.risk = bank.risk

    def collect(self) -> Iterable[Metric]:
        stats = self.risk.stats()
        for name, doc in _RISK_COUNTERS.items():
            yield CounterMetricFamily(f"tally_risk_{name}", doc, value=stats.get(name, 0))
        decisions = CounterMetricFamily(
            "tally_risk_decisions",
            "Risk decisions recorded, by outcome (challenge_met: a challenge the second "
            "factor met, posted).",
            labels=("outcome",),
        )
        for outcome in _RISK_OUTCOMES:
            decisions.add_metric((outcome,), stats.get(outcome, 0))
        yield decisions
        for name, doc in _RISK_GAUGES.items():
            yield GaugeMetricFamily(f"tally_risk_{name}", doc, value=stats.get(name, 0))
