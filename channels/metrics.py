"""Prometheus text exposition (format 0.0.4), with no client library.

Counters and histograms are plain dicts and lists updated on the request
path (a dict increment and a bisect: well under a microsecond), rendered
only when `/metrics` is scraped. Engine and journal figures are read from
their own counters at scrape time.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Sequence

LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
)  # fmt: skip
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8189)


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

    def render(self, name: str, labels: str) -> Iterable[str]:
        cumulative = 0
        sep = "," if labels else ""
        for bound, count in zip(self.bounds, self.counts[:-1], strict=True):
            cumulative += count
            yield f'{name}_bucket{{{labels}{sep}le="{bound:g}"}} {cumulative}'
        yield f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}'
        yield f"{name}_sum{{{labels}}} {self.sum:.9g}"
        yield f"{name}_count{{{labels}}} {self.count}"


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, int, str], int] = {}
        self.latency: dict[str, Histogram] = {}
        self.results: dict[str, int] = {}
        self.batch_sizes = Histogram(SIZE_BUCKETS)
        self.rate_limited: dict[str, int] = {}
        self.in_flight = 0
        self.gauges: list[tuple[str, str, Callable[[], Iterable[tuple[str, float]]]]] = []

    def observe_request(self, route: str, status: int, channel: str, seconds: float) -> None:
        key = (route, status, channel)
        self.requests[key] = self.requests.get(key, 0) + 1
        histogram = self.latency.get(route)
        if histogram is None:
            histogram = self.latency[route] = Histogram(LATENCY_BUCKETS_S)
        histogram.observe(seconds)

    def count_result(self, name: str, count: int = 1) -> None:
        self.results[name] = self.results.get(name, 0) + count

    def add_collector(
        self, name: str, help_text: str, collect: Callable[[], Iterable[tuple[str, float]]]
    ) -> None:
        """A family computed at scrape time: `collect` yields (label text, value) pairs.

        `help_text` starts with the type ("gauge: ...", "counter: ...", "summary: ...").
        """
        self.gauges.append((name, help_text, collect))

    def render(self) -> bytes:
        lines: list[str] = []
        lines += [
            "# HELP tally_http_requests_total HTTP requests answered, by route, status, channel.",
            "# TYPE tally_http_requests_total counter",
        ]
        for (route, status, channel), count in sorted(self.requests.items()):
            lines.append(
                f'tally_http_requests_total{{route="{route}",status="{status}",'
                f'channel="{channel}"}} {count}'
            )
        lines += [
            "# HELP tally_http_request_duration_seconds Time from request to response, by route.",
            "# TYPE tally_http_request_duration_seconds histogram",
        ]
        for route, histogram in sorted(self.latency.items()):
            lines += histogram.render("tally_http_request_duration_seconds", f'route="{route}"')
        lines += [
            "# HELP tally_http_requests_in_flight Requests being handled now.",
            "# TYPE tally_http_requests_in_flight gauge",
            f"tally_http_requests_in_flight {self.in_flight}",
            "# HELP tally_ledger_results_total Ledger result codes of transfers posted over HTTP.",
            "# TYPE tally_ledger_results_total counter",
        ]
        for name, count in sorted(self.results.items()):
            lines.append(f'tally_ledger_results_total{{result="{name}"}} {count}')
        lines += [
            "# HELP tally_http_batch_size Transfers per batch request.",
            "# TYPE tally_http_batch_size histogram",
            *self.batch_sizes.render("tally_http_batch_size", ""),
            "# HELP tally_channel_rate_limited_total Requests refused with 429, by channel.",
            "# TYPE tally_channel_rate_limited_total counter",
        ]
        for channel, count in sorted(self.rate_limited.items()):
            lines.append(f'tally_channel_rate_limited_total{{channel="{channel}"}} {count}')
        for name, help_text, collect in self.gauges:
            kind, _, text = help_text.partition(": ")
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in collect():
                suffix = ""
                if labels.startswith("_"):  # "_sum", "_count" or '_x{...}' for summaries
                    suffix, _, labels = labels.partition("{")
                    labels = labels.rstrip("}")
                shown = "NaN" if isinstance(value, float) and math.isnan(value) else f"{value:.9g}"
                lines.append(
                    f"{name}{suffix}{{{labels}}} {shown}" if labels else f"{name}{suffix} {shown}"
                )
        lines.append("")
        return "\n".join(lines).encode()
