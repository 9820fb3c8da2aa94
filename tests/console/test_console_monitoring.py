"""The console's monitoring and reports pages, and the Grafana dashboard over /metrics.

Unit tests (no server): the sampler turns the counters /metrics exports into per-second
samples (throughput by route group, latency percentiles, 4xx refusals by problem type
and channel); the bucket quantile interpolates as Prometheus does; the report file check
refuses every name that is not a plain file directly in the directory; the dashboard
queries only names /metrics exports.

Against a real `tally serve --console-reports DIR` (a supervisor logged in over httpx):
API requests move the sampled figures and a refusal shows in the refusals table (by
problem type and channel), the day's CSV has a header row and integer amounts, and the
reports directory is listed and served read-only, `..` and names outside it 404. Waits
poll until a figure shows up (the sampler runs once a second); nothing asserts a time.
"""

from __future__ import annotations

import csv
import http.client
import io
import json
import re
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from channels.console.pages_monitoring import (
    GROUP_OF_ROUTE,
    Sampler,
    bucket_quantile,
    probe_replication,
)
from channels.console.pages_reports import CSV_HEADER, Reports, csv_of, safe_report_path
from channels.http.metrics import LATENCY_BUCKETS_S, Iso8583Collector, Metrics, register_collectors
from core.dsn import redact_dsn
from core.services.bank import Bank
from core.services.dayend import DayEnd
from core.services.lifecycle import Settings
from ledger.interest import date_of_day
from limits.rules import load_rules
from tests.console.conftest import (
    CONSOLE,
    ConsoleSession,
    Sessions,
    business_day,
    console_login,
)
from tests.http_helpers import (
    REPO_ROOT,
    TallyServer,
    cash_deposit,
    free_port,
    open_class_i,
    register,
)
from tests.pg_helpers import fresh_database_dsn
from tests.services.test_deposits import Clock, customer_with_account, running_bank

DASHBOARD = REPO_ROOT / "docs" / "grafana-dashboard.json"
OPERATOR = "supervisor1"  # read:monitoring and read:reports
WAIT_S = 30.0  # the most a test waits for the sampler (it samples once a second)


# --- unit tests ---------------------------------------------------------------------------


def fake_app() -> SimpleNamespace:
    """What the sampler reads of the HTTP app: its Metrics and a core without a store."""
    core = SimpleNamespace(store=None, engine=None, ready=True, storage_failure=None)
    return SimpleNamespace(metrics=Metrics(), core=core)


def test_sampler_figures_move_with_requests() -> None:
    """Requests counted in Metrics between two samples show as requests/s of their route
    group and as latency percentiles; a 4xx refusal as a row by problem type and channel."""
    app = fake_app()
    sampler = Sampler()
    app.metrics.observe_request("read_products", 200, "app", 0.001)
    first = sampler.sample(app)  # counts what the app answered before its first sample
    assert first.requests_per_s["deposits"] > 0
    quiet = sampler.sample(app)
    assert sum(quiet.requests_per_s.values()) == 0
    # The percentiles are over the last LATENCY_WINDOW_S samples: the read is still in.
    assert quiet.latency_p50_ms == first.latency_p50_ms is not None
    for _ in range(20):
        app.metrics.observe_request("transfer", 201, "app", 0.003)
    app.metrics.observe_request("read_account", 404, "wechat", 0.001)
    app.metrics.observe_refusal("account-not-found", "wechat")
    busy = sampler.sample(app)
    assert GROUP_OF_ROUTE["transfer"] == "payments"
    assert busy.requests_per_s["payments"] > 0
    assert busy.requests_per_s["accounts"] > 0
    assert busy.latency_p50_ms is not None and busy.latency_p99_ms is not None
    # Over the last samples' requests: 20 transfers in (2, 5] ms and 2 reads in (0.5, 1] ms.
    assert 2.0 <= busy.latency_p50_ms <= 5.0
    assert busy.refusals == {("account-not-found", "wechat"): 1}
    rows = sampler.refusal_rows()
    assert rows == [{"code": "account-not-found", "channel": "wechat", "count": 1, "recent": 1}]
    series = sampler.series()
    assert len(series["t"]) == 3 and series["requests_per_s"]["payments"][-1] > 0
    replication = sampler.replication(app.core)
    assert replication["kind"] == "none"


def test_sampler_starts_over_for_another_app() -> None:
    """The module-level sampler fed a new app (a new Metrics) drops the old samples."""
    sampler = Sampler()
    first = fake_app()
    sampler.sample(first)
    sampler.sample(first)
    assert len(sampler.samples) == 2
    sampler.sample(fake_app())
    assert len(sampler.samples) == 1


def test_bucket_quantile_interpolates_like_prometheus() -> None:
    """Linear interpolation inside the bucket; above the last bound, that bound; None when
    nothing was observed."""
    bounds = (1.0, 2.0, 4.0)
    assert bucket_quantile(bounds, [0, 0, 0, 0], 0.5) is None
    assert bucket_quantile(bounds, [10, 0, 0, 0], 0.5) == 0.5
    assert bucket_quantile(bounds, [0, 10, 0, 0], 0.5) == 1.5
    assert bucket_quantile(bounds, [0, 0, 0, 10], 0.99) == 4.0
    counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
    counts[3] = 100  # (0.002, 0.005]
    p99 = bucket_quantile(LATENCY_BUCKETS_S, counts, 0.99)
    assert p99 is not None and 0.002 < p99 <= 0.005


def test_report_file_names_are_checked(tmp_path: Path) -> None:
    """Only a plain *.json/*.html name that resolves to a regular file directly in the
    directory is served: not `..`, not a separator, not a dotfile, not a symlink out."""
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "failover.json").write_text("{}")
    (reports / "drill.html").write_text("<p>drill</p>")
    (reports / "notes.txt").write_text("no")
    (reports / ".hidden.json").write_text("{}")
    (reports / "sub").mkdir()
    (reports / "sub" / "inner.json").write_text("{}")
    outside = tmp_path / "secret.json"
    outside.write_text('{"secret": true}')
    (reports / "escape.json").symlink_to(outside)
    (reports / "dir.json").mkdir()
    assert safe_report_path(reports, "failover.json") == (reports / "failover.json").resolve()
    assert safe_report_path(reports, "drill.html") is not None
    for name in (
        "..",
        "../secret.json",
        "..json",
        "a..json",
        "sub/inner.json",
        "sub%2Finner.json",
        "/etc/passwd",
        ".hidden.json",
        "notes.txt",
        "escape.json",
        "dir.json",
        "missing.json",
        "",
        "failover.json\x00",
    ):
        assert safe_report_path(reports, name) is None, name


def exported_metric_names() -> set[str]:
    """Every series name /metrics can export: the families of the HTTP app's registry over
    a real (unstarted) bank, and the ISO 8583 listener's, with their sample suffixes."""
    with tempfile.TemporaryDirectory() as directory:
        bank = Bank(Settings(directory, scrypt_n=1 << 10), load_rules("examples/limits.toml"))
        metrics = Metrics()
        register_collectors(metrics, bank)
        text = metrics.render().decode()
    stats = SimpleNamespace(
        connections_open=0, connections_total=0, dropped=0, messages=0, unanswered=0
    )
    iso = CollectorRegistry(auto_describe=False)
    iso.register(Iso8583Collector(stats, {"00": 1}))
    text += generate_latest(iso).decode()
    suffixes = {
        "counter": ("", "_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
    }
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            base = name.removesuffix("_total") if kind == "counter" else name
            names.update(base + suffix for suffix in suffixes[kind])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def dashboard_expressions(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for name, value in node.items():
            if name in ("expr", "definition") and isinstance(value, str):
                yield value
            elif name == "query" and isinstance(value, str | dict):
                yield value if isinstance(value, str) else str(value.get("query", ""))
            else:
                yield from dashboard_expressions(value)
    elif isinstance(node, list):
        for item in node:
            yield from dashboard_expressions(item)


def test_dashboard_queries_only_exported_metrics() -> None:
    """docs/grafana-dashboard.json is a Grafana dashboard over a Prometheus datasource
    variable, and every metric name its queries name is one /metrics exports; it charts
    the console's figures (throughput, latency, refusals, queue depth, commit latency)."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panel_ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(panel_ids) == len(set(panel_ids))
    expressions = list(dashboard_expressions(dashboard["panels"]))
    expressions += list(dashboard_expressions(dashboard["templating"]))
    queried = {name for expr in expressions for name in re.findall(r"\btally_[a-z0-9_]+", expr)}
    exported = exported_metric_names()
    assert queried, "the dashboard queries nothing"
    assert queried <= exported, sorted(queried - exported)
    for name in (
        "tally_http_requests_total",
        "tally_http_request_duration_seconds_bucket",
        "tally_http_refusals_total",
        "tally_engine_queue_depth",
        "tally_store_commit_seconds",
    ):
        assert name in queried, name


# --- against a real server -------------------------------------------------------------


@pytest.fixture(scope="module")
def reports_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reports directory as the simulator and the drills leave one, and a secret
    beside it that no name may reach."""
    root = tmp_path_factory.mktemp("reports-root")
    directory = root / "reports"
    directory.mkdir()
    (directory / "failover-seed-7.json").write_text('{"seed": 7, "ok": true}')
    (directory / "drill.html").write_text("<!doctype html><p>drill report</p>")
    (directory / "ignored.txt").write_text("not a report")
    (root / "secret.json").write_text('{"secret": "outside"}')
    (directory / "escape.json").symlink_to(root / "secret.json")
    return directory


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, reports_dir: Path) -> Iterator[TallyServer]:
    """This module's `tally serve`, with --console-reports."""
    data = tmp_path_factory.mktemp("console-monitoring") / "data"
    running = TallyServer(data, extra=["--console-reports", str(reports_dir)]).start()
    yield running
    running.stop()


def monitoring_data(sessions: Sessions) -> dict[str, Any]:
    response = sessions[OPERATOR].get(CONSOLE + "/monitoring/data")
    assert response.status_code == 200, response.text[:2000]
    assert response.headers["content-type"].startswith("application/json")
    data: dict[str, Any] = response.json()
    return data


def wait_for(sessions: Sessions, condition: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Poll the monitoring data until `condition` holds (the sampler runs once a second)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        data = monitoring_data(sessions)
        if condition(data):
            return data
        assert time.monotonic() < deadline, json.dumps(data)[:4000]
        time.sleep(0.2)


def test_monitoring_page_and_live_figures(server: TallyServer, sessions: Sessions) -> None:
    """The page has the charts and table#refusals and loads console.js by <script src>;
    API requests move the sampled throughput; the store is the embedded journal."""
    page = sessions[OPERATOR].get(CONSOLE + "/monitoring")
    assert page.status_code == 200, page.text[:2000]
    for marker in (
        'id="refusals"',
        'id="chart-throughput"',
        'id="chart-latency"',
        'id="chart-queue"',
        'id="chart-commit"',
        'src="/console/static/console.js"',
    ):
        assert marker in page.text, marker  # fmt: skip
    assert "<script>" not in page.text
    script = sessions[OPERATOR].get(CONSOLE + "/static/console.js")
    assert script.status_code == 200 and "monitoring/data" in script.text
    with server.client("counter") as counter:
        for _ in range(5):
            assert counter.get("/v1/products").status_code == 200
    data = wait_for(
        sessions, lambda d: any(v > 0 for v in d["series"]["requests_per_s"]["deposits"])
    )
    assert data["replication"]["kind"] == "journal"
    assert data["replication"]["state"] == "embedded journal"
    assert any(p is not None for p in data["series"]["latency_p99_ms"])


def test_refusal_appears_by_code_and_channel(server: TallyServer, sessions: Sessions) -> None:
    """A 4xx answer to a channel shows in the refusals (JSON and table#refusals) under its
    problem type and the channel's name."""
    with server.client("app") as app:
        response = app.get("/v1/accounts/6222000000000000000")
    assert 400 <= response.status_code < 500, response.text
    slug = str(response.json()["type"]).rsplit("/", 1)[-1]
    data = wait_for(
        sessions,
        lambda d: any(r["code"] == slug and r["channel"] == "app" for r in d["refusals"]),
    )
    row = next(r for r in data["refusals"] if r["code"] == slug and r["channel"] == "app")
    assert row["count"] >= 1 and row["recent"] >= 1
    page = sessions[OPERATOR].get(CONSOLE + "/monitoring")
    table = page.text.split('id="refusals"', 1)[1].split("</table>", 1)[0]
    assert slug in table and ">app<" in table


def test_reports_csv_has_a_header_and_integer_amounts(
    server: TallyServer, sessions: Sessions
) -> None:
    """Today's figures count a cash deposit at the counter; the page links the day's CSV
    (a.csv), which is text/csv with the header row and integer amounts in fen."""
    with server.client("counter") as counter:
        account = open_class_i(counter, register(counter, "孙八"))
        cash_deposit(counter, account, 123_45)
    today = business_day()
    page = sessions[OPERATOR].get(CONSOLE + "/reports")
    assert page.status_code == 200, page.text[:2000]
    assert f'class="csv" href="/console/reports/{today}.csv"' in page.text
    response = sessions[OPERATOR].get(f"{CONSOLE}/reports/{today}.csv")
    assert response.status_code == 200, response.text[:2000]
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.text)))
    assert tuple(rows[0]) == CSV_HEADER
    body = [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]
    for row in body:
        assert row["date"] == today
        assert re.fullmatch(r"-?[0-9]+", row["amount_minor"]), row
        assert re.fullmatch(r"[0-9]+", row["count"]), row
    figures = {(row["section"], row["key"]): row for row in body}
    assert int(figures[("postings", "all")]["count"]) >= 1
    deposit = figures[("code", "cash_deposit")]
    assert int(deposit["amount_minor"]) >= 123_45
    assert ("channel", "counter") in figures


@pytest.mark.parametrize("day", ["2026-13-45", "yesterday", "9999-01-01", "1999-12-31"])
def test_reports_refuse_bad_days(server: TallyServer, sessions: Sessions, day: str) -> None:
    """A day that is not a date, or after today, or before the calendar: 404, no 500."""
    response = sessions[OPERATOR].get(f"{CONSOLE}/reports/{day}.csv")
    assert response.status_code == 404, (day, response.status_code)
    page = sessions[OPERATOR].get(f"{CONSOLE}/reports", params={"day": day})
    assert page.status_code == 404, (day, page.status_code)


def test_reports_directory_listed_and_served_read_only(
    server: TallyServer, sessions: Sessions, reports_dir: Path
) -> None:
    """The *.json and *.html files of --console-reports are listed and served as they are;
    `..`, encoded separators, other types and a symlink out of the directory are 404."""
    session = sessions[OPERATOR]
    page = session.get(CONSOLE + "/reports")
    assert 'href="/console/reports/files/failover-seed-7.json"' in page.text
    assert 'href="/console/reports/files/drill.html"' in page.text
    assert "ignored.txt" not in page.text and "escape.json" not in page.text
    served = session.get(CONSOLE + "/reports/files/failover-seed-7.json")
    assert served.status_code == 200
    assert served.content == (reports_dir / "failover-seed-7.json").read_bytes()
    assert served.headers["content-type"].startswith("application/json")
    for name in (
        "..",
        "..%2Fsecret.json",
        "%2E%2E%2Fsecret.json",
        "escape.json",
        "ignored.txt",
        "missing.json",
        ".json",
        "..json",
    ):
        status, text = raw_get(session, CONSOLE + "/reports/files/" + name)
        assert status == 404, (name, status)
        assert "outside" not in text
    # A path that leaves the route, as sent (the client normalises nothing), never reaches
    # a file either.
    status, text = raw_get(session, CONSOLE + "/reports/files/../../secret.json")
    assert status == 404
    assert "outside" not in text


def raw_get(session: ConsoleSession, path: str) -> tuple[int, str]:
    """GET `path` byte for byte as given (status, body): httpx removes dot segments, the
    standard library's client sends the path as it is."""
    address = urllib.parse.urlsplit(session.url)
    connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=30)
    try:
        connection.request("GET", path, headers=session.headers())
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        connection.close()


def test_replication_state_of_the_postgresql_store(tmp_path: Path) -> None:
    """With the PostgreSQL store the monitoring data says so, with the store's own figures
    and what the server answers of its replication (a lone primary: no standby)."""
    dsn = fresh_database_dsn()
    running = TallyServer(tmp_path / "data", extra=["--store", dsn]).start()
    session = console_login(running, OPERATOR)
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            response = session.get(CONSOLE + "/monitoring/data")
            assert response.status_code == 200, response.text[:2000]
            replication = response.json()["replication"]
            if replication.get("probe") == "answered":
                break
            assert time.monotonic() < deadline, replication
            time.sleep(0.5)
        assert replication["kind"] == "postgresql"
        assert replication["state"] == "writing"
        assert replication["in_recovery"] is False
        assert replication["standbys"] == []
        assert isinstance(replication["epoch"], int)
        assert replication["hosts"] == [redact_dsn(dsn)]  # a password would show as ***
        page = session.get(CONSOLE + "/monitoring")
        assert page.status_code == 200 and "postgresql" in page.text
    finally:
        session.close()
        running.stop()


def test_replication_probe_of_an_unreachable_server() -> None:
    """A server that does not answer is said so, within the probe's deadline, not raised."""
    port = free_port()  # nothing listens there
    answer = anyio.run(probe_replication, f"postgresql://tally@127.0.0.1:{port}/tally")
    assert answer["probe"].startswith("unanswered: "), answer


def test_report_figures_of_a_day_and_its_dayend(tmp_path: Path) -> None:
    """In-process, with a moved clock: a day's cash deposit is counted by code, channel
    and the products of both sides (debits and credits add up to the same amount), the
    day-end's record shows once it ran (accrual), and the finished day's figures are kept."""

    async def scenario() -> None:
        clock = Clock()
        async with running_bank(tmp_path, clock) as bank:
            await customer_with_account(bank, 1_000_00)
            day = bank.core.today()
            reports = Reports()
            before = await reports.figures(bank, day)
            assert before.coverage == "complete" and not before.dayend_done
            clock.advance_days(1)
            await DayEnd(bank.core).run(date_of_day(day))
            figures = await reports.figures(bank, day)
            assert figures.dayend_done and "accrual" in figures.dayend
            assert figures.by_code["cash_deposit"].amount_minor == 1_000_00
            assert figures.by_channel["counter"].count == 1
            total = figures.postings.amount_minor
            assert sum(t.amount_minor for t in figures.by_product_debit.values()) == total
            assert sum(t.amount_minor for t in figures.by_product_credit.values()) == total
            assert await reports.figures(bank, day) is figures  # a finished day is kept
            rows = list(csv.reader(io.StringIO(csv_of(figures).decode())))
            assert tuple(rows[0]) == CSV_HEADER
            keys = {(row[1], row[2]) for row in rows[1:]}
            assert ("dayend", "accrual_accounts") in keys and ("dayend", "done") in keys
            accrued = await reports.accrued_now(bank)
            assert isinstance(accrued, int) and accrued >= 0

    anyio.run(scenario)
